//! The keyword half of hybrid search, shared by memories and chunks: which
//! rows match the query's words, and how well, in [0, 1].
//!
//! A row matches on any of the query's words (Postgres full text, English
//! stemming and stop words). Its score is the share of the query's distinct
//! words it holds; for a short query on memories, the trigram word similarity
//! when higher, so that a misspelt name still scores.

/// The most query words the keyword score matches on.
const MAX_QUERY_WORDS: usize = 64;
/// Trigram matching finds misspelt names and numbers in short queries; for a
/// long text every row shares trigrams with it, so it is skipped.
const MAX_TRIGRAM_QUERY_CHARS: usize = 100;

/// The query's distinct words (letters and digits) as an OR-query that
/// `websearch_to_tsquery` reads without any operator of the caller's; None
/// without words.
pub fn words(text: &str) -> Option<String> {
    let mut seen = std::collections::HashSet::new();
    let words: Vec<String> = text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_lowercase)
        // "or" is the parser's operator (and an English stop word).
        .filter(|word| word != "or" && seen.insert(word.clone()))
        .take(MAX_QUERY_WORDS)
        .collect();
    (!words.is_empty()).then(|| words.join(" or "))
}

/// Whether a query this long is also matched by trigrams.
pub fn use_trigram(text: &str) -> bool {
    let chars = text.trim().chars().count();
    chars > 0 && chars <= MAX_TRIGRAM_QUERY_CHARS
}

/// A CTE body giving `tsq` (the OR-query) and `lexemes` (its distinct
/// lexemes), from the parameter holding [`words`] (NULL without words).
pub fn query_cte(words_param: &str) -> String {
    format!(
        "SELECT websearch_to_tsquery('english', {words_param}) AS tsq,
                tsvector_to_array(to_tsvector('english', coalesce({words_param}, ''))) AS lexemes"
    )
}

/// SQL true for a row of `alias` (with `search_tsv` and `content`) that
/// matches the query of CTE `q`; with `trigram`, also a close trigram match
/// of the query text parameter.
pub fn matches(alias: &str, trigram: Option<&str>) -> String {
    match trigram {
        Some(text) => format!("({alias}.search_tsv @@ q.tsq OR {text} <% {alias}.content)"),
        None => format!("{alias}.search_tsv @@ q.tsq"),
    }
}

/// The row's keyword score in [0, 1] against CTE `q` (see the module).
pub fn score(alias: &str, trigram: Option<&str>) -> String {
    let share = format!(
        "CASE WHEN {alias}.search_tsv @@ q.tsq AND cardinality(q.lexemes) > 0 THEN
             cardinality(ARRAY(SELECT unnest(q.lexemes)
                               INTERSECT SELECT unnest(tsvector_to_array({alias}.search_tsv))))::real
             / cardinality(q.lexemes)
         ELSE 0 END"
    );
    match trigram {
        Some(text) => format!("greatest({share}, word_similarity({text}, {alias}.content))"),
        None => share,
    }
}

/// The ids of the `limit` rows of `table` (as `alias`, which `filter` names)
/// that match the query of CTE `q` (see [`matches`]), best full-text rank
/// first: a subquery the full-text (and with `trigram`, the trigram) index
/// serves. The rank is far cheaper than [`score`] on every matching row;
/// the candidates are scored afterwards.
pub fn best_matches(
    table: &str,
    alias: &str,
    filter: &str,
    trigram: Option<&str>,
    limit: &str,
) -> String {
    format!(
        "(SELECT {alias}.id FROM {table} {alias}, q WHERE {filter} AND {matches}
          ORDER BY ts_rank_cd({alias}.search_tsv, q.tsq, 32) DESC LIMIT {limit})",
        matches = matches(alias, trigram),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyword_queries_keep_words_only_once_and_no_operators() {
        assert_eq!(
            words("Where's the \"API\" key -- or the API token?").as_deref(),
            Some("where or s or the or api or key or token")
        );
        assert_eq!(words("  ?! "), None);
        assert_eq!(words("café 2024").as_deref(), Some("café or 2024"));
    }

    #[test]
    fn trigrams_only_for_short_queries() {
        assert!(use_trigram("Zylberstein"));
        assert!(!use_trigram("  "));
        assert!(!use_trigram(&"word ".repeat(30)));
    }
}
