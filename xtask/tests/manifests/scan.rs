//! What each process reads from its environment, taken from its Rust sources.
//!
//! No regex and no parser: a small tokenizer turns a file into identifiers,
//! string literals, numbers and punctuation (comments dropped), and a few
//! token patterns find the configuration call sites:
//!
//! - `READER("NAME", ...)` and `READER::<T>("NAME", ...)` for each reader in
//!   [`READERS`] (the loaders of `mesh_runtime::config`, and local helpers
//!   that pass their first argument straight to one), and
//!   `env::var("NAME")` / `env::var_os("NAME")`. `required` marks the name
//!   as required. Only UPPER_SNAKE names count: `wire::channel::optional("channel", ..)`
//!   is a proto enum helper, not configuration.
//! - `ServiceConfig::from_env("PREFIX", ...)` expands to the names the shared
//!   loader builds with `format!("{prefix}_...")` ([`SERVICE_SUFFIXES`]).
//! - The string literals in the body of a `fn *_var(...)` helper (users'
//!   `Context::url_var`, whose result goes to `http_url`).
//! - `const NAME: &str = "..."` for the default addresses.
//! - `.route("/path", ...)` for the HTTP routes.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Tok {
    Ident(String),
    Str(String),
    Num(String),
    Punct(char),
}

/// The functions whose first argument is the name of an environment variable.
/// `from_file` is the runtime's, which hands its name to `config::optional`.
pub const READERS: &[&str] = &[
    "optional",
    "required",
    "parsed_or",
    "positive",
    "positive_seconds",
    "http_url",
    "from_file",
];

/// The variables `ServiceConfig::from_env(prefix, ..)` reads besides the shared
/// ones it names by literal (`MESH_AUTH_TOKEN`, ...): `(suffix, required)`.
/// A unit test checks this list against the `"{prefix}_..."` literals of
/// crates/runtime/src/config.rs, so the runtime cannot grow one unnoticed.
pub const SERVICE_SUFFIXES: &[(&str, bool)] = &[
    ("ADDR", false),
    ("DATABASE_URL", true),
    ("DB_MAX_CONNECTIONS", false),
];

/// Splits Rust source into tokens, dropping whitespace and comments.
pub fn tokenize(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch.is_whitespace() {
            i += 1;
        } else if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == '"' {
            let (s, next) = quoted(&c, i + 1);
            out.push(Tok::Str(s));
            i = next;
        } else if (ch == 'r' || ch == 'b') && raw_start(&c, i).is_some() {
            let (hashes, body) = raw_start(&c, i).unwrap();
            let mut j = body;
            let close: Vec<char> = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            while j < c.len() && c[j..].iter().take(close.len()).ne(close.iter()) {
                j += 1;
            }
            out.push(Tok::Str(c[body..j.min(c.len())].iter().collect()));
            i = j + close.len();
        } else if ch == 'b' && c.get(i + 1) == Some(&'"') {
            let (s, next) = quoted(&c, i + 2);
            out.push(Tok::Str(s));
            i = next;
        } else if ch == '\'' {
            // A char literal ('a', '\n', '\u{..}') or a lifetime ('static).
            if c.get(i + 1) == Some(&'\\') {
                let mut j = i + 3; // past the escaped character, which may be a quote
                while j < c.len() && c[j] != '\'' {
                    j += 1;
                }
                i = j + 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1; // the lifetime's name follows as an identifier
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else if ch.is_ascii_digit() {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Num(c[start..i].iter().collect()));
        } else {
            out.push(Tok::Punct(ch));
            i += 1;
        }
    }
    out
}

/// `r"`, `r#"`, `br"`...: the number of hashes and where the body starts.
fn raw_start(c: &[char], i: usize) -> Option<(usize, usize)> {
    let mut j = i;
    if c[j] == 'b' {
        j += 1;
    }
    if c.get(j) != Some(&'r') {
        return None;
    }
    // Not the tail of an identifier such as `for`.
    if i > 0 && (c[i - 1].is_alphanumeric() || c[i - 1] == '_') {
        return None;
    }
    j += 1;
    let mut hashes = 0;
    while c.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    (c.get(j) == Some(&'"')).then_some((hashes, j + 1))
}

/// A "..." literal's content from `i` (just past the quote), and the index past its end.
fn quoted(c: &[char], mut i: usize) -> (String, usize) {
    let mut s = String::new();
    while i < c.len() && c[i] != '"' {
        if c[i] == '\\' && i + 1 < c.len() {
            s.push(c[i]);
            i += 1;
        }
        s.push(c[i]);
        i += 1;
    }
    (s, i + 1)
}

pub fn is_env_name(s: &str) -> bool {
    s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

fn punct(t: Option<&Tok>, p: char) -> bool {
    t == Some(&Tok::Punct(p))
}

fn ident(t: Option<&Tok>, name: &str) -> bool {
    matches!(t, Some(Tok::Ident(s)) if s == name)
}

/// Past an optional `::<...>` at `i`.
fn skip_turbofish(t: &[Tok], mut i: usize) -> usize {
    if punct(t.get(i), ':') && punct(t.get(i + 1), ':') && punct(t.get(i + 2), '<') {
        i += 3;
        let mut depth = 1;
        while i < t.len() && depth > 0 {
            match t[i] {
                Tok::Punct('<') => depth += 1,
                Tok::Punct('>') => depth -= 1,
                _ => {}
            }
            i += 1;
        }
    }
    i
}

/// One variable read at a call site.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    pub name: String,
    pub required: bool,
    /// The second argument's first token, when it is a literal or a name
    /// (`10`, `DEFAULT_ADDR`).
    pub default: Option<Tok>,
}

/// Every read in one file's tokens.
pub fn reads(t: &[Tok]) -> Vec<Read> {
    let mut out = Vec::new();
    for i in 0..t.len() {
        let Tok::Ident(id) = &t[i] else { continue };
        // `.fetch_optional(..)` is another identifier; `x.optional(..)` is a method.
        if i > 0 && punct(t.get(i - 1), '.') {
            continue;
        }
        let is_env_var = (id == "var" || id == "var_os")
            && i >= 3
            && punct(t.get(i - 1), ':')
            && punct(t.get(i - 2), ':')
            && ident(t.get(i - 3), "env");
        if !(READERS.contains(&id.as_str()) || is_env_var) {
            continue;
        }
        let open = skip_turbofish(t, i + 1);
        if !punct(t.get(open), '(') {
            continue;
        }
        let Some(Tok::Str(name)) = t.get(open + 1) else {
            continue;
        };
        if !is_env_name(name) {
            continue;
        }
        let default = if punct(t.get(open + 2), ',') {
            t.get(open + 3).cloned()
        } else {
            None
        };
        out.push(Read {
            name: name.clone(),
            required: id == "required",
            default,
        });
    }
    out
}

/// The prefixes given to `ServiceConfig::from_env("PREFIX", ..)`.
pub fn service_prefixes(t: &[Tok]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..t.len().saturating_sub(5) {
        if ident(t.get(i), "ServiceConfig")
            && punct(t.get(i + 1), ':')
            && punct(t.get(i + 2), ':')
            && ident(t.get(i + 3), "from_env")
            && punct(t.get(i + 4), '(')
            && let Some(Tok::Str(prefix)) = t.get(i + 5)
        {
            out.push(prefix.clone());
        }
    }
    out
}

/// The UPPER_SNAKE literals in the bodies of `fn *_var(..)` helpers.
pub fn var_helpers(t: &[Tok]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 0..t.len() {
        let is_helper = ident(t.get(i), "fn")
            && matches!(t.get(i + 1), Some(Tok::Ident(name)) if name.ends_with("_var"));
        if !is_helper {
            continue;
        }
        let Some(open) = (i..t.len()).find(|&j| punct(t.get(j), '{')) else {
            continue;
        };
        let mut depth = 0;
        for tok in &t[open..] {
            match tok {
                Tok::Punct('{') => depth += 1,
                Tok::Punct('}') => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                Tok::Str(s) if is_env_name(s) => out.push(s.clone()),
                _ => {}
            }
        }
    }
    out
}

/// `const NAME: &str = "value";`
pub fn const_str(t: &[Tok], name: &str) -> Option<String> {
    (0..t.len()).find_map(|i| {
        if !(ident(t.get(i), "const") && ident(t.get(i + 1), name)) {
            return None;
        }
        let eq = (i..t.len().min(i + 8)).find(|&j| punct(t.get(j), '='))?;
        match t.get(eq + 1) {
            Some(Tok::Str(s)) => Some(s.clone()),
            _ => None,
        }
    })
}

/// The paths given to `.route("/path", ..)`.
pub fn routes(t: &[Tok]) -> Vec<String> {
    let mut out = Vec::new();
    for i in 1..t.len() {
        if punct(t.get(i - 1), '.')
            && ident(t.get(i), "route")
            && punct(t.get(i + 1), '(')
            && let Some(Tok::Str(path)) = t.get(i + 2)
        {
            out.push(path.clone());
        }
    }
    out
}

/// A port to scrape: where the process serves `/metrics`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Metrics {
    /// On its main listener (the gateway's router has `/metrics`).
    Main,
    /// On the address in `var`, else `default`.
    Addr { var: String, default: String },
}

/// What one process reads, from its sources and the runtime's.
#[derive(Clone, Debug, Default)]
pub struct Process {
    pub reads: BTreeSet<String>,
    pub required: BTreeSet<String>,
    /// The variable of the address it listens on, and its default.
    pub listen_var: Option<String>,
    pub default_addr: Option<String>,
    /// A tonic gRPC service (probed with `grpc:`) rather than the HTTP gateway.
    pub grpc: bool,
    pub routes: BTreeSet<String>,
    pub metrics: Vec<Metrics>,
    /// `MESH_DRAIN_SECONDS`' default in the code.
    pub drain_default: Option<u64>,
    /// Variables the image sets itself (the Dockerfile's last stage's `ENV`):
    /// a required one is met there when the Deployment leaves it out.
    pub image_env: BTreeSet<String>,
}

/// The names the last stage of a Dockerfile sets with `ENV NAME=value ...`
/// (or the older `ENV NAME value`), continuation lines included.
pub fn dockerfile_env(text: &str) -> BTreeSet<String> {
    let joined = text.replace("\\\n", " ");
    let lines: Vec<&str> = joined.lines().collect();
    let from = lines
        .iter()
        .rposition(|l| l.trim_start().to_ascii_uppercase().starts_with("FROM "))
        .unwrap_or(0);
    let last_stage = &lines[from..];
    let mut out = BTreeSet::new();
    for line in last_stage {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("ENV ") else {
            continue;
        };
        if rest.contains('=') {
            for word in rest.split_whitespace() {
                if let Some((name, _)) = word.split_once('=')
                    && is_env_name(name)
                {
                    out.insert(name.to_owned());
                }
            }
        } else if let Some(name) = rest.split_whitespace().next() {
            out.insert(name.to_owned());
        }
    }
    out
}

/// Builds a process's configuration from its sources (`(path, text)`), the
/// runtime's included.
pub fn process(sources: &[(String, String)]) -> Process {
    let mut p = Process::default();
    let mut all_reads = Vec::new();
    let mut consts = BTreeMap::new();
    for (_, text) in sources {
        let t = tokenize(text);
        for prefix in service_prefixes(&t) {
            p.grpc = true;
            for (suffix, required) in SERVICE_SUFFIXES {
                let name = format!("{prefix}_{suffix}");
                if *required {
                    p.required.insert(name.clone());
                }
                p.reads.insert(name);
            }
            p.listen_var = Some(format!("{prefix}_ADDR"));
        }
        p.reads.extend(var_helpers(&t));
        p.routes.extend(routes(&t));
        for name in ["DEFAULT_ADDR", "DEFAULT_METRICS_ADDR"] {
            if let Some(v) = const_str(&t, name) {
                consts.insert(name, v);
            }
        }
        all_reads.extend(reads(&t));
    }
    p.default_addr = consts.get("DEFAULT_ADDR").cloned();
    for read in &all_reads {
        p.reads.insert(read.name.clone());
        if read.required {
            p.required.insert(read.name.clone());
        }
        // The gateway: the variable whose default is DEFAULT_ADDR.
        if p.listen_var.is_none() && read.default == Some(Tok::Ident("DEFAULT_ADDR".into())) {
            p.listen_var = Some(read.name.clone());
        }
        if read.name == "MESH_DRAIN_SECONDS"
            && let Some(Tok::Num(n)) = &read.default
        {
            p.drain_default = n.parse().ok();
        }
        if read.name.ends_with("_METRICS_ADDR") {
            let default = match &read.default {
                Some(Tok::Str(s)) => Some(s.clone()),
                Some(Tok::Ident(c)) if c == "DEFAULT_METRICS_ADDR" => {
                    consts.get("DEFAULT_METRICS_ADDR").cloned()
                }
                _ => None,
            };
            p.metrics.push(Metrics::Addr {
                var: read.name.clone(),
                default: default.unwrap_or_default(),
            });
        }
    }
    if p.routes.contains("/metrics") && !p.grpc {
        p.metrics.push(Metrics::Main);
    }
    p
}

/// Every `.rs` file under `dir`, with its text.
pub fn rust_files(dir: &Path, skip: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if skip.iter().any(|s| name == *s) {
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                out.push((path.display().to_string(), text));
            }
        }
    }
    out.sort();
    out
}

/// The six processes: users, conversations, memory, scheduler, billing, gateway.
pub const PROCESSES: &[(&str, &str)] = &[
    ("users", "services/users/src"),
    ("conversations", "services/conversations/src"),
    ("memory", "services/memory/src"),
    ("scheduler", "services/scheduler/src"),
    ("billing", "services/billing/src"),
    ("gateway", "gateway/src"),
];

/// Each process's configuration, read from the workspace at `root`. The
/// runtime's `testing` module (behind its `testing` feature, for tests only)
/// is left out: no deployed process reads `DATABASE_URL` or `MESH_DB_PASSWORD`.
pub fn workspace(root: &Path) -> BTreeMap<String, Process> {
    let runtime = rust_files(&root.join("crates/runtime/src"), &["testing.rs", "testing"]);
    let image_env =
        dockerfile_env(&std::fs::read_to_string(root.join("Dockerfile")).unwrap_or_default());
    PROCESSES
        .iter()
        .map(|(name, dir)| {
            let mut sources = rust_files(&root.join(dir), &[]);
            sources.extend(runtime.iter().cloned());
            let mut p = process(&sources);
            p.image_env = image_env.clone();
            (name.to_string(), p)
        })
        .collect()
}
