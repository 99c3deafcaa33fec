//! A span for every SQL statement run inside a traced span, made in one
//! place rather than around every query: sqlx logs each statement when it
//! ends (target `sqlx::query`, at DEBUG, WARN when slow) with its text and
//! how long it took, which is all a span needs. The span is named and
//! attributed after OpenTelemetry's database conventions (`SELECT users`,
//! `db.system.name`, `db.operation.name`, `db.collection.name`).
//!
//! Bound values never reach the event. The statement's text is not exported
//! either: not every statement is parameterized (identifiers and a few
//! literals are spliced in with `format!`), and the operation and table are
//! what reading a trace needs.
//!
//! Statements outside any traced span (health checks, migrations, untraced
//! background loops) make no span: a trace of its own for the health check's
//! `SELECT 1` every five seconds would bury the traces that matter.

use std::time::{Duration, SystemTime};

use opentelemetry::{
    KeyValue,
    trace::{Span as _, SpanKind, TraceContextExt, Tracer as _},
};
use opentelemetry_sdk::trace::SdkTracer;
use tracing::{
    Event, Level, Subscriber,
    field::{Field, Visit},
};
use tracing_subscriber::{Layer, filter::Targets, layer::Context, registry::LookupSpan};

/// Where sqlx logs every statement it has run.
pub(super) const TARGET: &str = "sqlx::query";

/// What `db.system.name` says, and a span's name when nothing else is known.
const SYSTEM: &str = "postgresql";

/// The layer that turns sqlx's statement events into spans of `tracer`.
/// sqlx formats the event only when some layer wants it, so this layer
/// enables its target at DEBUG for itself alone: logs still follow RUST_LOG.
pub(super) fn layer<S>(tracer: SdkTracer) -> impl Layer<S> + Send + Sync
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    StatementSpans { tracer }.with_filter(Targets::new().with_target(TARGET, Level::DEBUG))
}

struct StatementSpans {
    tracer: SdkTracer,
}

impl<S: Subscriber> Layer<S> for StatementSpans {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        // tracing-opentelemetry makes the innermost entered span the current
        // OpenTelemetry context: the request (or handler) the statement ran in.
        let parent = opentelemetry::Context::current();
        if !parent.span().span_context().is_valid() {
            return;
        }
        let mut fields = StatementFields::default();
        event.record(&mut fields);
        let (operation, table) = describe(fields.text());
        let name = match (&table, operation.is_empty()) {
            (Some(table), _) => format!("{operation} {table}"),
            (None, false) => operation.clone(),
            (None, true) => SYSTEM.to_owned(),
        };
        let mut attributes = vec![KeyValue::new("db.system.name", SYSTEM)];
        if !operation.is_empty() {
            attributes.push(KeyValue::new("db.operation.name", operation));
        }
        if let Some(table) = table {
            attributes.push(KeyValue::new("db.collection.name", table));
        }
        if let Some(rows) = fields.rows_returned {
            attributes.push(KeyValue::new(
                "db.response.returned_rows",
                i64::try_from(rows).unwrap_or(i64::MAX),
            ));
        }
        // The event comes when the statement has ended: it began `elapsed` ago.
        let end = SystemTime::now();
        let elapsed = Duration::try_from_secs_f64(fields.elapsed_secs).unwrap_or_default();
        let start = end.checked_sub(elapsed).unwrap_or(end);
        self.tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_start_time(start)
            .with_attributes(attributes)
            .start_with_context(&self.tracer, &parent)
            .end_with_timestamp(end);
    }
}

/// The fields of sqlx's statement event this layer reads.
#[derive(Default)]
struct StatementFields {
    /// The first words of the statement (the whole of a short one).
    summary: String,
    /// The whole statement, when the summary is not all of it.
    statement: String,
    elapsed_secs: f64,
    rows_returned: Option<u64>,
}

impl StatementFields {
    fn text(&self) -> &str {
        if self.statement.trim().is_empty() {
            &self.summary
        } else {
            &self.statement
        }
    }
}

impl Visit for StatementFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => value.clone_into(&mut self.summary),
            "db.statement" => value.clone_into(&mut self.statement),
            _ => {}
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.elapsed_secs = value;
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "rows_returned" {
            self.rows_returned = Some(value);
        }
    }

    fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
}

/// The operations a statement's name is made of.
const OPERATIONS: [&str; 5] = ["SELECT", "INSERT", "UPDATE", "DELETE", "MERGE"];

/// What a statement does and to which table, read from its text as the
/// conventions ask: the first operation in it (a CTE's own, for a `WITH`)
/// and the first table that operation names, as written. Anything else
/// (`BEGIN`, `COMMIT`, `SET`) is its first word, with no table.
fn describe(sql: &str) -> (String, Option<String>) {
    let code: Vec<&str> = sql
        .lines()
        .map(|line| line.split("--").next().unwrap_or_default())
        .collect();
    let code = code.join(" ");
    let tokens = tokens(&code);
    let is = |token: &str, word: &str| token.eq_ignore_ascii_case(word);
    let Some(at) = tokens
        .iter()
        .position(|t| OPERATIONS.iter().any(|op| is(t, op)))
    else {
        let first = tokens.first().copied().unwrap_or_default();
        return (first.to_owned(), None);
    };
    let operation = tokens[at];
    let rest = &tokens[at + 1..];
    let table = if is(operation, "UPDATE") {
        rest.iter()
            .find(|t| !is(t, "ONLY"))
            .copied()
            .filter(|t| is_name(t))
    } else {
        let keyword = if is(operation, "INSERT") || is(operation, "MERGE") {
            "INTO"
        } else {
            "FROM"
        };
        // A name after FROM that is followed by `(` is a function
        // (`unnest($1)`, `EXTRACT(EPOCH FROM now())`): look further on.
        (0..rest.len())
            .filter(|&i| is(rest[i], keyword))
            .filter_map(|i| rest.get(i + 1).map(|name| (name, rest.get(i + 2))))
            .find(|(name, next)| is_name(name) && (keyword == "INTO" || *next != Some(&"(")))
            .map(|(name, _)| *name)
    };
    (operation.to_owned(), table.map(str::to_owned))
}

/// Words (names, keywords, `$1`) and every other character but spaces, one
/// token each.
fn tokens(code: &str) -> Vec<&str> {
    let word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '.' | '$' | '"');
    let mut tokens = Vec::new();
    let mut start = None;
    for (i, c) in code.char_indices() {
        match (word(c), start) {
            (true, None) => start = Some(i),
            (true, Some(_)) => {}
            (false, begun) => {
                if let Some(s) = begun {
                    tokens.push(&code[s..i]);
                    start = None;
                }
                if !c.is_whitespace() {
                    tokens.push(&code[i..i + c.len_utf8()]);
                }
            }
        }
    }
    if let Some(s) = start {
        tokens.push(&code[s..]);
    }
    tokens
}

/// Whether `token` can be a table: a name that is no keyword of its own.
fn is_name(token: &str) -> bool {
    token
        .chars()
        .next()
        .is_some_and(|c| c.is_alphabetic() || matches!(c, '_' | '"'))
        && !OPERATIONS.iter().any(|op| token.eq_ignore_ascii_case(op))
        && !["LATERAL", "ONLY"]
            .iter()
            .any(|kw| token.eq_ignore_ascii_case(kw))
}

#[cfg(test)]
mod tests {
    use super::describe;

    #[test]
    fn statements_are_named_by_operation_and_first_table() {
        for (sql, operation, table) in [
            (
                "SELECT * FROM users WHERE phone = $1",
                "SELECT",
                Some("users"),
            ),
            (
                "INSERT INTO users (id, phone) VALUES ($1, $2)\n ON CONFLICT (phone) DO NOTHING RETURNING *",
                "INSERT",
                Some("users"),
            ),
            (
                "UPDATE users SET name = $2 WHERE id = $1",
                "UPDATE",
                Some("users"),
            ),
            (
                "DELETE FROM billing.usage WHERE id = $1",
                "DELETE",
                Some("billing.usage"),
            ),
            (
                "SELECT extract(epoch FROM now() - t.at) FROM quotas t",
                "SELECT",
                Some("quotas"),
            ),
            (
                "WITH moved AS (UPDATE quotas SET used = used + $2 RETURNING *) SELECT * FROM moved",
                "UPDATE",
                Some("quotas"),
            ),
            (
                "-- the newest first\nSELECT EXISTS (SELECT 1 FROM messages WHERE id = $1)",
                "SELECT",
                Some("messages"),
            ),
            ("select id from \"order\"", "select", Some("\"order\"")),
            ("SELECT * FROM unnest($1::uuid[])", "SELECT", None),
            ("SELECT 1", "SELECT", None),
            ("BEGIN", "BEGIN", None),
            ("COMMIT", "COMMIT", None),
            ("", "", None),
        ] {
            assert_eq!(
                describe(sql),
                (operation.to_owned(), table.map(str::to_owned)),
                "{sql}"
            );
        }
    }
}
