//! Splitting a document into chunks for embedding and search.
//!
//! A pure function of the text and the token counter, so that an ingestion
//! resumed after a restart (or by another replica) cuts exactly the same
//! chunks and only stores the missing ones.
//!
//! The text is read as pages (form feeds), then blocks: paragraphs (lines up
//! to a blank line) and, in Markdown, ATX headings (`## Title`; fenced code
//! is one block whatever it holds). Blocks become units, each within the
//! target size: a paragraph that fits is one unit, a larger one is cut into
//! sentences (and a sentence that alone is too large into runs of words).
//! Headings are glued to the text that follows them, so a heading never ends
//! a chunk. Units are then packed greedily into chunks of at most the target,
//! except that a chunk at least half full ends before a heading (chunks
//! follow sections where that costs little); each chunk after the first
//! starts with the last sentences of the one before (up to the overlap) when
//! they belong to the same section.

use std::{borrow::Cow, collections::VecDeque};

/// How large chunks are, in tokens of the embedder's tokenizer.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The most tokens a chunk holds (a single word longer than this is the
    /// only exception: it cannot be cut).
    pub target: usize,
    /// The most tokens a chunk repeats from the end of the previous one.
    pub overlap: usize,
}

/// The sizes documents are chunked with, for an embedder that reads at
/// least 400 tokens.
pub const LIMITS: Limits = Limits {
    target: 400,
    overlap: 50,
};

impl Limits {
    /// [`LIMITS`], with chunks no longer than the embedder reads (`max_tokens`):
    /// a token past it would not shape the chunk's vector, so a semantic
    /// search could not find what it says. The overlap shrinks in proportion.
    pub fn for_embedder(max_tokens: usize) -> Self {
        let target = LIMITS.target.min(max_tokens.max(1));
        Self {
            target,
            overlap: LIMITS.overlap * target / LIMITS.target,
        }
    }
}

/// How the text is read: Markdown has headings, plain text does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Plain,
    Markdown,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chunk {
    pub content: String,
    /// 1-based: the page the chunk's first character is on.
    pub page: u32,
    /// The Markdown headings above the chunk's start, outermost first,
    /// joined by " > " (empty for plain text).
    pub section_title: String,
    /// What the counter says of `content`.
    pub token_count: usize,
}

/// The pages of `text`: form-feed separated, where a form feed that ends the
/// text (as PDF-to-text tools write after every page) starts no new page.
fn pages(text: &str) -> Vec<&str> {
    let mut pages: Vec<&str> = text.split('\u{c}').collect();
    if pages.len() > 1 && pages.last().is_some_and(|page| page.trim().is_empty()) {
        pages.pop();
    }
    pages
}

/// How many pages `text` has (at least one).
pub fn page_count(text: &str) -> usize {
    pages(text).len()
}

/// How many whitespace-separated words `text` has.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

/// Cuts `text` into chunks of at most `limits.target` tokens as `count`
/// measures them. The same input always gives the same chunks.
pub fn split(
    text: &str,
    format: Format,
    limits: Limits,
    count: &dyn Fn(&str) -> usize,
) -> Vec<Chunk> {
    // Most texts have no carriage return: no copies of megabytes for them.
    let text = if text.contains('\r') {
        Cow::Owned(text.replace("\r\n", "\n").replace('\r', "\n"))
    } else {
        Cow::Borrowed(text)
    };
    // What the counter adds to any text (special tokens such as [CLS] and
    // [SEP]): counted once per chunk, not once per unit.
    let base = count("");
    let measure = |text: &str| count(text).saturating_sub(base);
    let blocks = blocks(&text, format);
    let units = units(&blocks, limits, base, &measure);
    pack(units, limits, base, count, &measure)
}

#[derive(Debug)]
enum BlockKind {
    Heading { level: usize, title: String },
    Text,
}

#[derive(Debug)]
struct Block {
    text: String,
    page: u32,
    kind: BlockKind,
}

fn blocks(text: &str, format: Format) -> Vec<Block> {
    let mut blocks = Vec::new();
    for (number, page) in pages(text).into_iter().enumerate() {
        let page_number = u32::try_from(number + 1).unwrap_or(u32::MAX);
        let mut paragraph: Vec<&str> = Vec::new();
        let mut in_fence = false;
        let end_paragraph = |paragraph: &mut Vec<&str>, blocks: &mut Vec<Block>| {
            let text = paragraph.join("\n");
            paragraph.clear();
            let text = text.trim();
            if !text.is_empty() {
                blocks.push(Block {
                    text: text.to_owned(),
                    page: page_number,
                    kind: BlockKind::Text,
                });
            }
        };
        for line in page.lines() {
            let line = line.trim_end();
            if format == Format::Markdown {
                if in_fence {
                    paragraph.push(line);
                    if is_fence(line) {
                        in_fence = false;
                    }
                    continue;
                }
                if is_fence(line) {
                    in_fence = true;
                    paragraph.push(line);
                    continue;
                }
                if let Some((level, title)) = heading(line) {
                    end_paragraph(&mut paragraph, &mut blocks);
                    blocks.push(Block {
                        text: line.trim().to_owned(),
                        page: page_number,
                        kind: BlockKind::Heading {
                            level,
                            title: title.to_owned(),
                        },
                    });
                    continue;
                }
            }
            if line.trim().is_empty() {
                end_paragraph(&mut paragraph, &mut blocks);
            } else {
                paragraph.push(line);
            }
        }
        end_paragraph(&mut paragraph, &mut blocks);
    }
    blocks
}

fn is_fence(line: &str) -> bool {
    let trimmed = line.trim_start();
    line.len() - trimmed.len() <= 3 && (trimmed.starts_with("```") || trimmed.starts_with("~~~"))
}

/// An ATX heading: up to 3 spaces, 1 to 6 `#`, then a space or the line's
/// end. Returns its level and its title without the optional closing `#`s.
fn heading(line: &str) -> Option<(usize, &str)> {
    let rest = line.trim_start_matches(' ');
    if line.len() - rest.len() > 3 {
        return None;
    }
    let level = rest.bytes().take_while(|b| *b == b'#').count();
    if !(1..=6).contains(&level) {
        return None;
    }
    let after = &rest[level..];
    if !(after.is_empty() || after.starts_with([' ', '\t'])) {
        return None;
    }
    let title = after.trim();
    let without_closing = title.trim_end_matches('#');
    let title = if without_closing.is_empty() {
        ""
    } else if without_closing.ends_with([' ', '\t']) {
        without_closing.trim_end()
    } else {
        title
    };
    Some((level, title))
}

/// A piece of text that is never cut again: a paragraph, a sentence or a run
/// of words, with any headings that lead into it.
#[derive(Clone, Debug)]
struct Unit {
    text: String,
    /// Measured without the counter's base.
    tokens: usize,
    page: u32,
    section: String,
    /// Whether the unit starts with a heading.
    opens_section: bool,
    /// What goes between the previous unit and this one in a chunk: a blank
    /// line before a new paragraph, else what the text had (a space or a line
    /// break between sentences).
    joiner: &'static str,
}

const PARAGRAPH: &str = "\n\n";

fn units(
    blocks: &[Block],
    limits: Limits,
    base: usize,
    measure: &dyn Fn(&str) -> usize,
) -> Vec<Unit> {
    let budget = limits.target.saturating_sub(base).max(1);
    let mut units = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    // Headings waiting for the text they lead into: their lines and the page
    // of the first.
    let mut pending: Vec<&str> = Vec::new();
    let mut pending_page = 0;
    let section = |path: &[(usize, String)]| {
        path.iter()
            .map(|(_, title)| title.as_str())
            .filter(|title| !title.is_empty())
            .collect::<Vec<_>>()
            .join(" > ")
    };
    for block in blocks {
        match &block.kind {
            BlockKind::Heading { level, title } => {
                while path.last().is_some_and(|(open, _)| open >= level) {
                    path.pop();
                }
                path.push((*level, title.clone()));
                if pending.is_empty() {
                    pending_page = block.page;
                }
                pending.push(&block.text);
            }
            BlockKind::Text => {
                let section = section(&path);
                let prefix = pending.join(PARAGRAPH);
                let page = if pending.is_empty() {
                    block.page
                } else {
                    pending_page
                };
                pending.clear();
                paragraph_units(
                    &mut units,
                    &prefix,
                    &block.text,
                    page,
                    &section,
                    budget,
                    measure,
                );
            }
        }
    }
    if !pending.is_empty() {
        // Headings that end the document: nothing follows to glue them to.
        let prefix = pending.join(PARAGRAPH);
        let section = section(&path);
        for (index, (text, joiner)) in cut_words(&prefix, budget, budget, measure)
            .into_iter()
            .enumerate()
        {
            units.push(Unit {
                tokens: measure(&text),
                text,
                page: pending_page,
                section: section.clone(),
                opens_section: index == 0,
                joiner: if index == 0 { PARAGRAPH } else { joiner },
            });
        }
    }
    units
}

/// The units of one paragraph led by `prefix` (its headings, maybe empty).
fn paragraph_units(
    units: &mut Vec<Unit>,
    prefix: &str,
    paragraph: &str,
    page: u32,
    section: &str,
    budget: usize,
    measure: &dyn Fn(&str) -> usize,
) {
    let prefix_tokens = if prefix.is_empty() {
        0
    } else {
        measure(prefix)
    };
    let whole_tokens = measure(paragraph);
    let unit = |text: String, tokens: usize, joiner: &'static str| Unit {
        text,
        tokens,
        page,
        section: section.to_owned(),
        opens_section: false,
        joiner,
    };
    if prefix_tokens + whole_tokens <= budget {
        let text = if prefix.is_empty() {
            paragraph.to_owned()
        } else {
            format!("{prefix}{PARAGRAPH}{paragraph}")
        };
        units.push(Unit {
            opens_section: !prefix.is_empty(),
            ..unit(text, prefix_tokens + whole_tokens, PARAGRAPH)
        });
        return;
    }
    // Each piece with its measure, taken once: the tokenizer is the costly part.
    let mut pieces: Vec<(String, usize, &'static str)> = Vec::new();
    let mut first_budget = budget;
    if !prefix.is_empty() {
        if prefix_tokens < budget {
            first_budget = budget - prefix_tokens;
        } else {
            // Headings larger than a chunk: they go alone, cut by words.
            for (index, (text, joiner)) in cut_words(prefix, budget, budget, measure)
                .into_iter()
                .enumerate()
            {
                let tokens = measure(&text);
                units.push(Unit {
                    opens_section: index == 0,
                    ..unit(text, tokens, if index == 0 { PARAGRAPH } else { joiner })
                });
            }
        }
    }
    for (start, end, joiner) in sentences(paragraph) {
        let sentence = &paragraph[start..end];
        let limit = if pieces.is_empty() {
            first_budget
        } else {
            budget
        };
        let tokens = measure(sentence);
        if tokens <= limit {
            pieces.push((sentence.to_owned(), tokens, joiner));
        } else {
            let first = pieces.is_empty();
            for (index, (text, word_joiner)) in cut_words(sentence, limit, budget, measure)
                .into_iter()
                .enumerate()
            {
                let joiner = if index == 0 && !first {
                    joiner
                } else {
                    word_joiner
                };
                let tokens = measure(&text);
                pieces.push((text, tokens, joiner));
            }
        }
    }
    for (index, (text, tokens, joiner)) in pieces.into_iter().enumerate() {
        if index == 0 {
            let glued = !prefix.is_empty() && prefix_tokens < budget;
            let (text, tokens) = if glued {
                (format!("{prefix}{PARAGRAPH}{text}"), prefix_tokens + tokens)
            } else {
                (text, tokens)
            };
            units.push(Unit {
                opens_section: glued,
                ..unit(text, tokens, PARAGRAPH)
            });
        } else {
            units.push(unit(text, tokens, joiner));
        }
    }
}

/// Byte spans of the sentences of `text` (trimmed), each with what separated
/// it from the one before: a line break ends a sentence too (list items,
/// table rows, code lines), and `.`, `!`, `?` or `…` followed by whitespace
/// (after any closing quotes or brackets) ends one.
fn sentences(text: &str) -> Vec<(usize, usize, &'static str)> {
    let mut spans = Vec::new();
    let mut start = 0;
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    let mut i = 0;
    while i < chars.len() {
        let (at, c) = chars[i];
        let end = if c == '\n' {
            Some(at)
        } else if matches!(c, '.' | '!' | '?' | '…') {
            let mut j = i + 1;
            while j < chars.len() && matches!(chars[j].1, '"' | '\'' | '”' | '’' | ')' | ']') {
                j += 1;
            }
            match chars.get(j) {
                Some((next, c)) if c.is_whitespace() => {
                    i = j;
                    Some(*next)
                }
                _ => None,
            }
        } else {
            None
        };
        if let Some(end) = end {
            push_span(text, &mut spans, start, end);
            start = end;
        }
        i += 1;
    }
    push_span(text, &mut spans, start, text.len());
    spans
}

fn push_span(text: &str, spans: &mut Vec<(usize, usize, &'static str)>, start: usize, end: usize) {
    let span = &text[start..end];
    let trimmed_start = start + (span.len() - span.trim_start().len());
    let trimmed_end = start + span.trim_end().len();
    if trimmed_start >= trimmed_end {
        return;
    }
    let gap_start = spans.last().map_or(0, |(_, end, _)| *end);
    let joiner = if text[gap_start..trimmed_start].contains('\n') {
        "\n"
    } else {
        " "
    };
    spans.push((trimmed_start, trimmed_end, joiner));
}

/// `text` cut into runs of whole words: the first within `first_budget`
/// tokens, the others within `budget`. A word larger than the budget is a
/// run of its own. Words are joined by single spaces.
fn cut_words(
    text: &str,
    first_budget: usize,
    budget: usize,
    measure: &dyn Fn(&str) -> usize,
) -> Vec<(String, &'static str)> {
    let mut runs: Vec<(String, &'static str)> = Vec::new();
    let mut current = String::new();
    let mut tokens = 0;
    for word in text.split_whitespace() {
        let word_tokens = measure(word);
        let limit = if runs.is_empty() {
            first_budget
        } else {
            budget
        };
        if !current.is_empty() && tokens + word_tokens > limit {
            runs.push((std::mem::take(&mut current), " "));
            tokens = 0;
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(word);
        tokens += word_tokens;
    }
    if !current.is_empty() {
        runs.push((current, " "));
    }
    runs
}

/// Packs units greedily into chunks, each after the first led by the end of
/// the previous one (same section only), and checks every chunk's real size.
fn pack(
    units: Vec<Unit>,
    limits: Limits,
    base: usize,
    count: &dyn Fn(&str) -> usize,
    measure: &dyn Fn(&str) -> usize,
) -> Vec<Chunk> {
    let budget = limits.target.saturating_sub(base).max(1);
    let mut queue: VecDeque<Unit> = units.into();
    let mut chunks = Vec::new();
    // The chunk being filled: `lead` units repeated from the previous chunk,
    // then its own.
    let mut current: Vec<Unit> = Vec::new();
    let mut lead = 0;
    let mut tokens = 0;
    loop {
        let full = match queue.front() {
            None => true,
            Some(next) => {
                current.len() > lead
                    && (tokens + next.tokens > budget
                        || (next.opens_section && 2 * tokens >= budget))
            }
        };
        if !full {
            let unit = queue.pop_front().expect("looked at above");
            tokens += unit.tokens;
            current.push(unit);
            continue;
        }
        let mut previous = Vec::new();
        if current.len() > lead {
            let closed = close(std::mem::take(&mut current), lead, count, limits.target);
            chunks.push(closed.chunk);
            for unit in closed.requeue.into_iter().rev() {
                queue.push_front(unit);
            }
            previous = closed.own;
        }
        let Some(next) = queue.front() else {
            break;
        };
        let room = budget.saturating_sub(next.tokens).min(limits.overlap);
        current = overlap(&previous, next, room, measure);
        lead = current.len();
        tokens = current.iter().map(|unit| unit.tokens).sum();
    }
    chunks
}

struct Closed {
    chunk: Chunk,
    /// The chunk's own units (not those repeated from the one before).
    own: Vec<Unit>,
    /// Units taken off its end because the whole was over the target.
    requeue: Vec<Unit>,
}

/// Turns `units` (the first `lead` of them repeated from the previous chunk)
/// into a chunk of at most `target` tokens counted on the whole text: sums of
/// unit counts are only an estimate, as a tokenizer may merge across joins.
/// While over, the last own unit goes back to the queue, or with a single
/// own unit left, the repeated lead is dropped; a single unit still over is a
/// word that cannot be cut.
fn close(
    mut units: Vec<Unit>,
    mut lead: usize,
    count: &dyn Fn(&str) -> usize,
    target: usize,
) -> Closed {
    let mut requeue = Vec::new();
    let (content, token_count) = loop {
        let content = join(&units);
        let token_count = count(&content);
        if token_count <= target {
            break (content, token_count);
        }
        if units.len() - lead > 1 {
            requeue.push(units.pop().expect("more than one own unit"));
        } else if lead > 0 {
            units.drain(..lead);
            lead = 0;
        } else {
            break (content, token_count);
        }
    };
    requeue.reverse();
    let own = units.split_off(lead);
    let chunk = Chunk {
        content,
        page: units.first().unwrap_or(&own[0]).page,
        section_title: own[0].section.clone(),
        token_count,
    };
    Closed {
        chunk,
        own,
        requeue,
    }
}

fn join(units: &[Unit]) -> String {
    let mut content = String::new();
    for (index, unit) in units.iter().enumerate() {
        if index > 0 {
            content.push_str(unit.joiner);
        }
        content.push_str(&unit.text);
    }
    content
}

/// The end of the previous chunk to repeat before `next`: whole units from
/// the end while they fit in `room` tokens, then the last sentences of the
/// unit that does not fit whole. Nothing when `next` starts another section.
fn overlap(
    previous: &[Unit],
    next: &Unit,
    room: usize,
    measure: &dyn Fn(&str) -> usize,
) -> Vec<Unit> {
    let mut taken: Vec<Unit> = Vec::new();
    let mut left = room;
    for unit in previous.iter().rev() {
        if unit.section != next.section || left == 0 {
            break;
        }
        if unit.tokens <= left {
            left -= unit.tokens;
            taken.push(unit.clone());
            continue;
        }
        // The last sentences of this unit that fit.
        let spans = sentences(&unit.text);
        let mut best: Option<(usize, usize)> = None;
        for (start, _, _) in spans.iter().rev() {
            let tokens = measure(&unit.text[*start..]);
            if tokens > left {
                break;
            }
            best = Some((*start, tokens));
        }
        if let Some((start, tokens)) = best {
            taken.push(Unit {
                text: unit.text[start..].to_owned(),
                tokens,
                page: unit.page,
                section: unit.section.clone(),
                opens_section: false,
                joiner: unit.joiner,
            });
        }
        break;
    }
    taken.reverse();
    taken
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_fit_what_the_embedder_reads() {
        let local = Limits::for_embedder(254);
        assert_eq!((local.target, local.overlap), (254, 31));
        let wide = Limits::for_embedder(8191);
        assert_eq!((wide.target, wide.overlap), (400, 50));
        assert_eq!(Limits::for_embedder(0).target, 1);
    }

    /// One token a word: easy to reason about in tests.
    fn words(text: &str) -> usize {
        text.split_whitespace().count()
    }

    fn limits(target: usize, overlap: usize) -> Limits {
        Limits { target, overlap }
    }

    /// `n` sentences of five words each, numbered so every one is distinct.
    fn sentences_of(tag: &str, n: usize) -> String {
        (0..n)
            .map(|i| format!("{tag} sentence {i} goes here."))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn a_short_text_is_one_chunk() {
        let chunks = split(
            "Hello there.\n\nSecond paragraph.",
            Format::Plain,
            LIMITS,
            &words,
        );
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].content, "Hello there.\n\nSecond paragraph.");
        assert_eq!(chunks[0].page, 1);
        assert_eq!(chunks[0].section_title, "");
        assert_eq!(chunks[0].token_count, 4);
    }

    #[test]
    fn paragraphs_are_kept_whole_when_they_fit() {
        let paragraphs: Vec<String> = (0..6).map(|i| sentences_of(&format!("p{i}"), 3)).collect();
        let text = paragraphs.join("\n\n");
        // 15 words a paragraph, 40 a chunk: two paragraphs each, never a cut one.
        let chunks = split(&text, Format::Plain, limits(40, 0), &words);
        assert_eq!(chunks.len(), 3);
        for (index, chunk) in chunks.iter().enumerate() {
            assert_eq!(
                chunk.content,
                format!("{}\n\n{}", paragraphs[2 * index], paragraphs[2 * index + 1])
            );
        }
    }

    #[test]
    fn no_chunk_is_over_the_target_and_nothing_is_lost() {
        let text = (0..20)
            .map(|i| sentences_of(&format!("p{i}"), 1 + i % 7))
            .collect::<Vec<_>>()
            .join("\n\n");
        for (target, overlap) in [(12, 0), (12, 4), (30, 8), (400, 50)] {
            let chunks = split(&text, Format::Plain, limits(target, overlap), &words);
            for chunk in &chunks {
                assert!(chunk.token_count <= target, "{chunk:?} over {target}");
                assert_eq!(chunk.token_count, words(&chunk.content));
            }
            // Every sentence is somewhere, and they come in order.
            let mut last_position = (0, 0);
            for i in 0..20 {
                for s in 0..(1 + i % 7) {
                    let sentence = format!("p{i} sentence {s} goes here.");
                    let position = chunks
                        .iter()
                        .enumerate()
                        .find_map(|(c, chunk)| chunk.content.find(&sentence).map(|at| (c, at)))
                        .unwrap_or_else(|| panic!("{sentence} lost at target {target}"));
                    assert!(position >= last_position || position.0 > last_position.0);
                    last_position = position;
                }
            }
        }
    }

    #[test]
    fn a_large_paragraph_is_cut_at_sentences() {
        let text = sentences_of("big", 20); // 100 words
        let chunks = split(&text, Format::Plain, limits(23, 0), &words);
        // Four sentences (20 words) fit under 23.
        assert_eq!(chunks.len(), 5);
        for chunk in &chunks {
            assert!(chunk.content.ends_with("goes here."), "{:?}", chunk.content);
            assert_eq!(chunk.token_count, 20);
        }
    }

    #[test]
    fn a_huge_sentence_is_cut_at_words_and_a_huge_word_stands_alone() {
        let sentence = (0..25)
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = split(&sentence, Format::Plain, limits(10, 0), &words);
        assert_eq!(chunks.len(), 3);
        assert_eq!(chunks[0].content, "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9");
        assert_eq!(chunks[2].content, "w20 w21 w22 w23 w24");

        // Counted by characters, a 40-character word is over a 5-token target
        // and cannot be cut: it is the only chunk allowed over.
        let chars = |text: &str| {
            text.chars()
                .filter(|c| !c.is_whitespace())
                .count()
                .div_ceil(4)
        };
        let long = "x".repeat(40);
        let text = format!("ab cd {long} ef gh");
        let chunks = split(&text, Format::Plain, limits(5, 0), &chars);
        let contents: Vec<&str> = chunks.iter().map(|c| c.content.as_str()).collect();
        assert_eq!(contents, ["ab cd", long.as_str(), "ef gh"]);
        assert!(
            chunks
                .iter()
                .filter(|c| c.token_count > 5)
                .all(|c| !c.content.contains(' '))
        );
    }

    #[test]
    fn overlap_repeats_the_last_sentences_of_the_previous_chunk() {
        let text = sentences_of("s", 12); // 60 words, 5 a sentence
        let chunks = split(&text, Format::Plain, limits(25, 10), &words);
        assert!(chunks.len() > 2);
        for pair in chunks.windows(2) {
            let (before, after) = (&pair[0].content, &pair[1].content);
            // The first two sentences of a chunk are the last two of the one before.
            let lead: Vec<&str> = after.splitn(3, ". ").take(2).collect();
            let repeated = format!("{}. {}.", lead[0], lead[1]);
            assert!(before.ends_with(&repeated), "{before:?} / {after:?}");
        }
        for chunk in &chunks {
            assert!(chunk.token_count <= 25);
        }
    }

    #[test]
    fn overlap_is_never_larger_than_asked() {
        // Sentences of 8 words: none fits in an overlap of 5.
        let text = (0..10)
            .map(|i| format!("number {i} is a sentence of eight words."))
            .collect::<Vec<_>>()
            .join(" ");
        let chunks = split(&text, Format::Plain, limits(20, 5), &words);
        for pair in chunks.windows(2) {
            let first_sentence = pair[1].content.split(". ").next().unwrap();
            assert!(!pair[0].content.contains(first_sentence), "{pair:?}");
        }
    }

    #[test]
    fn headings_stay_with_their_text_and_name_the_section() {
        let text = format!(
            "# Guide\n\n{}\n\n## Setup\n\n{}\n\n## Usage\n### Details\n{}\n",
            sentences_of("intro", 3),
            sentences_of("setup", 6),
            sentences_of("usage", 2),
        );
        let chunks = split(&text, Format::Markdown, limits(20, 0), &words);
        for chunk in &chunks {
            let last_line = chunk.content.lines().last().unwrap();
            assert!(!last_line.starts_with('#'), "a heading ends {chunk:?}");
        }
        let summary: Vec<(&str, &str)> = chunks
            .iter()
            .map(|c| {
                (
                    &c.content[..c.content.len().min(30)],
                    c.section_title.as_str(),
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("# Guide\n\nintro sentence 0 goes", "Guide"),
                ("## Setup\n\nsetup sentence 0 goe", "Guide > Setup"),
                // A continuation of the Setup section keeps its title.
                ("setup sentence 3 goes here. se", "Guide > Setup"),
                (
                    "## Usage\n\n### Details\n\nusage s",
                    "Guide > Usage > Details"
                ),
            ]
        );
    }

    #[test]
    fn a_chunk_half_full_ends_before_a_heading() {
        // Sections of 12 words under a target of 20: one chunk each, though
        // the first half of the next would fit.
        let text = "# A\n\none two three four five six seven eight nine ten\n\n\
                    # B\n\nalpha beta gamma delta\n\nepsilon zeta eta theta iota kappa";
        let chunks = split(text, Format::Markdown, limits(20, 0), &words);
        let titles: Vec<&str> = chunks.iter().map(|c| c.section_title.as_str()).collect();
        assert_eq!(titles, ["A", "B"]);
        // Under half full, the next section joins.
        let chunks = split(text, Format::Markdown, limits(40, 0), &words);
        assert_eq!(chunks.len(), 1);
    }

    #[test]
    fn small_sections_share_a_chunk_titled_by_where_it_starts() {
        let text = "# A\n\nshort a.\n\n# B\n\nshort b.";
        let chunks = split(text, Format::Markdown, LIMITS, &words);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].content, text);
        assert_eq!(chunks[0].section_title, "A");
    }

    #[test]
    fn overlap_does_not_cross_into_another_section() {
        let text = format!(
            "# One\n\n{}\n\n# Two\n\n{}",
            sentences_of("one", 3),
            sentences_of("two", 3)
        );
        let chunks = split(&text, Format::Markdown, limits(20, 10), &words);
        let two = chunks.iter().find(|c| c.content.contains("# Two")).unwrap();
        assert!(two.content.starts_with("# Two"), "{two:?}");
        assert_eq!(two.section_title, "Two");
    }

    #[test]
    fn heading_levels_close_deeper_sections() {
        // Headings and text of 8, 7 and 4 words: one chunk each under 8.
        let text = "# A\n## B\n### C\ntext c\n## D\ntext d d d d\n# E\ntext e";
        let chunks = split(text, Format::Markdown, limits(8, 0), &words);
        let titles: Vec<(&str, &str)> = chunks
            .iter()
            .map(|c| (c.content.lines().last().unwrap(), c.section_title.as_str()))
            .collect();
        assert_eq!(
            titles,
            [
                ("text c", "A > B > C"),
                ("text d d d d", "A > D"),
                ("text e", "E")
            ]
        );
    }

    #[test]
    fn fenced_code_is_not_read_as_headings_and_plain_text_has_none() {
        let text = "# Real\n\n```\n# not a heading\n\nstill code\n```\n\nafter";
        let chunks = split(text, Format::Markdown, LIMITS, &words);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].section_title, "Real");
        let plain = split(text, Format::Plain, LIMITS, &words);
        assert_eq!(plain[0].section_title, "");
    }

    #[test]
    fn heading_syntax() {
        assert_eq!(heading("# Title"), Some((1, "Title")));
        assert_eq!(heading("### Title ###"), Some((3, "Title")));
        assert_eq!(heading("## C#"), Some((2, "C#")));
        assert_eq!(heading("   ## Indented"), Some((2, "Indented")));
        assert_eq!(heading("#"), Some((1, "")));
        assert_eq!(heading("    # code"), None);
        assert_eq!(heading("#hashtag"), None);
        assert_eq!(heading("####### seven"), None);
    }

    #[test]
    fn pages_are_counted_from_form_feeds() {
        assert_eq!(page_count("one page"), 1);
        assert_eq!(page_count("a\u{c}b\u{c}c"), 3);
        // A form feed at the very end (after the last page) starts no page.
        assert_eq!(page_count("a\u{c}b\u{c}"), 2);
        assert_eq!(page_count("a\u{c}\u{c}b"), 3);
        let text = format!(
            "{}\u{c}{}\u{c}\u{c}{}",
            sentences_of("first", 4),
            sentences_of("second", 4),
            sentences_of("fourth", 4)
        );
        let chunks = split(&text, Format::Plain, limits(20, 0), &words);
        let pages: Vec<u32> = chunks.iter().map(|c| c.page).collect();
        assert_eq!(pages, [1, 2, 4]);
        assert!(chunks[1].content.starts_with("second"));
        // With overlap, a chunk that starts with the end of page 1 starts on page 1.
        let chunks = split(&text, Format::Plain, limits(25, 5), &words);
        assert!(chunks[1].content.starts_with("first sentence 3"));
        assert_eq!(chunks[1].page, 1);
    }

    #[test]
    fn words_are_whitespace_separated() {
        assert_eq!(word_count("  one two\tthree\nfour\u{c}five  "), 5);
        assert_eq!(word_count(""), 0);
    }

    #[test]
    fn the_counters_base_is_counted_once_per_chunk() {
        // A tokenizer that adds two special tokens to every text.
        let special = |text: &str| words(text) + 2;
        let text = sentences_of("s", 12);
        let chunks = split(&text, Format::Plain, limits(22, 0), &special);
        assert_eq!(chunks.len(), 3);
        for chunk in &chunks {
            assert!(chunk.token_count <= 22);
            // 20 words + 2 special tokens: four sentences a chunk, not fewer.
            assert!(chunk.token_count >= 17, "{chunk:?}");
        }
    }

    #[test]
    fn a_counter_that_merges_across_joins_is_checked_on_the_whole() {
        // Counts the joined text as more than its parts: the chunk is cut again.
        let greedy = |text: &str| words(text) + text.matches("\n\n").count() * 3;
        let text = (0..8)
            .map(|i| format!("para {i} has five words."))
            .collect::<Vec<_>>()
            .join("\n\n");
        let chunks = split(&text, Format::Plain, limits(16, 0), &greedy);
        for chunk in &chunks {
            assert!(chunk.token_count <= 16, "{chunk:?}");
        }
        assert_eq!(
            chunks
                .iter()
                .map(|c| c.content.matches("para").count())
                .sum::<usize>(),
            8
        );
    }

    #[test]
    fn the_same_text_gives_the_same_chunks() {
        let text = format!(
            "# T\n\n{}\n\n## U\n\n{}\u{c}{}",
            sentences_of("a", 30),
            sentences_of("b", 17),
            sentences_of("c", 9)
        );
        let first = split(
            &text,
            Format::Markdown,
            LIMITS,
            &crate::embed::estimate_tokens,
        );
        let again = split(
            &text,
            Format::Markdown,
            LIMITS,
            &crate::embed::estimate_tokens,
        );
        assert_eq!(first, again);
        let small = split(&text, Format::Markdown, limits(40, 10), &words);
        assert_eq!(
            small,
            split(&text, Format::Markdown, limits(40, 10), &words)
        );
    }

    #[test]
    fn windows_line_endings_read_like_unix_ones() {
        let unix = split("# A\n\none.\n\ntwo.", Format::Markdown, LIMITS, &words);
        let windows = split(
            "# A\r\n\r\none.\r\n\r\ntwo.",
            Format::Markdown,
            LIMITS,
            &words,
        );
        assert_eq!(unix, windows);
    }

    #[test]
    fn sentence_spans() {
        let text = "One. Two!  \"Three?\" Four\nFive e.g.x six…";
        let spans: Vec<&str> = sentences(text)
            .into_iter()
            .map(|(s, e, _)| &text[s..e])
            .collect();
        assert_eq!(
            spans,
            ["One.", "Two!", "\"Three?\"", "Four", "Five e.g.x six…"]
        );
        let joiners: Vec<&str> = sentences(text).into_iter().map(|(_, _, j)| j).collect();
        assert_eq!(joiners[4], "\n");
        assert_eq!(joiners[1], " ");
    }
}
