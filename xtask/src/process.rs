//! Child processes and signals: the little OS plumbing the subcommands share.
//!
//! Every child that could outlive xtask is started in its own process group so
//! that xtask, not the terminal, decides when it stops, and so that one signal
//! reaches the child and anything it spawned (cargo's test binaries, say).

use std::{
    future::Future,
    io::{BufRead, BufReader, Read, Seek, SeekFrom},
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context, Result, bail};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// True when running as root, where Postgres must be handed to another user.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    #[allow(unsafe_code)]
    unsafe {
        libc::geteuid() == 0
    }
}

/// Sends `signal` to the process group led by `pid` (started with
/// `process_group(0)`), so grandchildren get it too.
pub fn signal_group(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers; a group that is gone yields ESRCH,
    // which is exactly "nothing left to stop", so the result is ignored.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(-pid, signal);
    }
}

/// Makes the kernel send SIGTERM to the child if xtask dies without cleaning
/// up (SIGKILL, a panic in the wrong place), so no service is left orphaned.
/// The parent "thread" that counts is the spawning one: xtask runs a
/// current-thread runtime, so that is the main thread, alive until exit.
pub fn die_with_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs between fork and exec and only calls prctl,
    // which is async-signal-safe and touches no memory of the parent.
    #[allow(unsafe_code)]
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// SIGINT, SIGTERM and SIGHUP, however xtask is asked to stop. Creating this
/// replaces the default "die at once" for those signals, so xtask gets to
/// clean up; create it only once there is something to clean up.
pub struct Signals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl Signals {
    pub fn new() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listening for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listening for SIGTERM")?,
            hangup: signal(SignalKind::hangup()).context("listening for SIGHUP")?,
        })
    }

    /// Waits for the next stop request and names it.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// Runs the future `work` makes on a multi-threaded runtime of its own, on a blocking thread
/// that lives until `work` ends. xtask's own runtime is single-threaded
/// (see main.rs), which would cap a load generator and stall it whenever a
/// step blocks (pg_ctl, a child's exit). Children spawned inside `work`
/// from its own task stay tied to that thread (see [`die_with_parent`]).
pub async fn on_multi_thread_runtime<T, Work>(
    work: impl FnOnce() -> Work + Send + 'static,
) -> Result<T>
where
    T: Send + 'static,
    Work: Future<Output = Result<T>>,
{
    tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(work())
    })
    .await?
}

/// Runs a short command to completion, capturing its output; on failure the
/// error carries what it printed, because that is the only useful clue.
pub fn run_captured(command: &mut Command, what: &str) -> Result<Output> {
    let output = command
        .output()
        .with_context(|| format!("{what}: could not run {:?}", command.get_program()))?;
    if !output.status.success() {
        bail!(
            "{what} failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output)
}

/// The last `lines` lines of a log file, for error messages.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    // Logs can grow large; the end is all that is wanted.
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut text = String::new();
    let _ = BufReader::new(file)
        .take(64 * 1024)
        .read_to_string(&mut text);
    let all: Vec<&str> = text.lines().collect();
    let start = all.len().saturating_sub(lines);
    let shown = all[start..].join("\n");
    if shown.is_empty() {
        format!("(log {} is empty)", path.display())
    } else {
        shown
    }
}

/// Finds `name` on PATH, as a shell would.
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// Quotes `text` for a POSIX shell, so printed commands can be pasted as-is.
pub fn shell_quote(text: &str) -> String {
    let plain = !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=+@,%".contains(c));
    if plain {
        text.to_owned()
    } else {
        format!("'{}'", text.replace('\'', r"'\''"))
    }
}

/// Copies each line of `reader` to stdout with a `name | ` prefix and to
/// `log`, on a thread of its own, until the writer closes it.
pub fn pump_lines(
    reader: impl Read + Send + 'static,
    name: &'static str,
    log: std::fs::File,
) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    std::thread::spawn(move || {
        let mut log = std::io::LineWriter::new(log);
        for line in BufReader::new(reader).lines() {
            let Ok(line) = line else { break };
            println!("{name:>13} | {line}");
            let _ = writeln!(log, "{}", strip_ansi(&line));
        }
    })
}

/// Removes terminal colour sequences (`ESC [ ... letter`): a log file should
/// be plain text whatever a child prints (the mesh's services colour only on a
/// terminal, but RUST_LOG-style tools and future children may not).
fn strip_ansi(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip '[' and parameters up to the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_only_what_needs_it() {
        assert_eq!(shell_quote("dev-token"), "dev-token");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn log_files_get_plain_text() {
        assert_eq!(
            strip_ansi("\u{1b}[2m12:00\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m listening"),
            "12:00  INFO listening"
        );
    }
}
