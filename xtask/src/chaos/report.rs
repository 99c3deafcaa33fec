//! The suite's table, and the checks that decide its exit code.

use std::{collections::BTreeMap, time::Duration};

/// One line of the table.
pub struct Row {
    pub fault: String,
    /// Requests sent, retries included.
    pub sent: usize,
    /// Items acknowledged (a 200, an OK), when the row has items.
    pub acknowledged: Option<usize>,
    /// Of those, found in the database.
    pub stored: Option<usize>,
    pub duplicates: Option<usize>,
    /// Answers other than success, by code.
    pub errors: BTreeMap<String, usize>,
    pub recovery: String,
}

/// Everything the scenarios found: rows for the table, failed checks.
#[derive(Default)]
pub struct Report {
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub failures: Vec<String>,
}

impl Report {
    /// Records a failed check unless `ok`.
    pub fn check(&mut self, ok: bool, failure: impl FnOnce() -> String) {
        if !ok {
            let failure = failure();
            println!("xtask: chaos: CHECK FAILED: {failure}");
            self.failures.push(failure);
        }
    }

    pub fn print(&self, elapsed: Duration) {
        println!("\n### cargo xtask chaos\n");
        println!(
            "| fault | requests sent | acknowledged | stored | duplicates | errors by code | recovery time |"
        );
        println!("|---|---:|---:|---:|---:|---|---|");
        for row in &self.rows {
            let optional = |n: Option<usize>| n.map_or("–".to_owned(), |n| n.to_string());
            println!(
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.fault,
                row.sent,
                optional(row.acknowledged),
                optional(row.stored),
                optional(row.duplicates),
                by_code(&row.errors),
                row.recovery
            );
        }
        println!();
        for note in &self.notes {
            println!("- {note}");
        }
        println!(
            "- checks: {} failed; the whole run took {:.0} s",
            self.failures.len(),
            elapsed.as_secs_f64()
        );
        println!("- machine: {}", crate::host::machine());
        for failure in &self.failures {
            println!("- FAILED: {failure}");
        }
    }
}

/// `HTTP 503 × 12, UNAVAILABLE × 3`, or `none`.
pub fn by_code(codes: &BTreeMap<String, usize>) -> String {
    if codes.is_empty() {
        return "none".into();
    }
    codes
        .iter()
        .map(|(code, n)| format!("{code} × {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Seconds with one decimal: `2.3 s`.
pub fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_listed_in_order() {
        let mut codes = BTreeMap::new();
        assert_eq!(by_code(&codes), "none");
        codes.insert("UNAVAILABLE".to_owned(), 3);
        codes.insert("HTTP 503".to_owned(), 12);
        assert_eq!(by_code(&codes), "HTTP 503 × 12, UNAVAILABLE × 3");
    }

    #[test]
    fn a_failed_check_is_kept() {
        let mut report = Report::default();
        report.check(true, || unreachable!());
        report.check(false, || "lost 1".into());
        assert_eq!(report.failures, ["lost 1"]);
    }
}
