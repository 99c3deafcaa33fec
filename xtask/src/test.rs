//! `cargo xtask test`: what CI runs. Lints the protos, checks the compose
//! file and the Kubernetes manifests offline, then runs `cargo test --workspace` against a throwaway
//! Postgres (or the server DATABASE_URL names), stopped on every exit path,
//! with the memory service's embedding model (or the one MEMORY_MODEL_DIR
//! names); then, when no arguments narrowed the tests, the chaos suite.

use std::{
    io::{BufRead, IsTerminal},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{
    postgres::{self, Source},
    process::{Signals, is_root, run_captured, signal_group, which},
    tools::{self, Paths},
};

/// How long `cargo test` gets to stop after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

pub async fn run(args: &[String]) -> Result<()> {
    let paths = Paths::discover()?;
    println!("xtask: tools (cached in {})", paths.tools.display());
    let grpcurl = tools::ensure(&paths, &tools::GRPCURL)?;
    let buf = tools::ensure(&paths, &tools::BUF)?;
    buf_lint(&paths, &buf)?;
    compose_check(&paths)?;
    kubernetes_check(&paths)?;
    // After the checks: a lint failure costs no Postgres or model install.
    let source = Source::from_env(&paths)?;
    let tools = TestTools {
        grpcurl,
        model_dir: tools::model_dir(&paths)?,
    };

    let mut signals = Signals::new()?;
    let (server, url) = source.throwaway()?;
    match &server {
        None => println!(
            "xtask: using the server of DATABASE_URL={}",
            postgres::redact(&url)
        ),
        Some(server) => println!(
            "xtask: throwaway Postgres 18 on 127.0.0.1:{}",
            server.port()
        ),
    }
    // On a throwaway server the tests need not drop their databases: the
    // whole cluster goes (dropping forces a checkpoint each, which is slow).
    let throwaway = server.is_some();
    let outcome = cargo_test(&paths, &url, &tools, throwaway, args, &mut signals).await;
    // Stop the server before reporting, whatever happened to the tests.
    drop(server);
    let tally = outcome?;
    // The whole suite (no filter) goes on to the faults the mesh must
    // survive, once the tests pass; a filtered run is someone iterating.
    let chaos = if tally.success && args.is_empty() {
        Some(crate::chaos::run(crate::chaos::Binaries::AlreadyBuilt).await)
    } else {
        None
    };
    // The closing line, after everything else xtask prints.
    println!(
        "tests: {} passed, {} failed, {} skipped",
        tally.passed, tally.failed, tally.ignored
    );
    if !tally.success {
        bail!("cargo test failed");
    }
    if let Some(chaos) = chaos {
        chaos?;
    }
    Ok(())
}

/// What the tests are given besides the database.
struct TestTools {
    /// `MESH_GRPCURL`: the README's grpcurl lines run with it.
    grpcurl: PathBuf,
    /// `MEMORY_MODEL_DIR`: all-MiniLM-L6-v2, for the memory service's tests.
    model_dir: PathBuf,
}

/// `buf lint` (STANDARD, per proto/buf.yaml). It has no deps, so no network.
fn buf_lint(paths: &Paths, buf: &Path) -> Result<()> {
    println!("xtask: buf lint proto/");
    let status = Command::new(buf)
        .arg("lint")
        .current_dir(paths.repo.join("proto"))
        // Keep buf's cache with the other tools, not in $HOME.
        .env("BUF_CACHE_DIR", paths.tools.join("buf-cache"))
        .stdin(Stdio::null())
        .status()
        .context("running buf lint")?;
    if !status.success() {
        bail!("buf lint found problems (listed above)");
    }
    Ok(())
}

/// `docker-compose config -q`: validates docker-compose.yml without an engine.
/// Debian's docker-compose (1.29) is used: the PyPI release of the same
/// version no longer installs (its PyYAML<6 pin fails to build on Python 3.11).
fn compose_check(paths: &Paths) -> Result<()> {
    let file = paths.repo.join("docker-compose.yml");
    if !file.is_file() {
        println!("xtask: compose check skipped: there is no docker-compose.yml");
        return Ok(());
    }
    let Some(compose) = find_or_install_compose()? else {
        return Ok(());
    };
    println!("xtask: docker-compose config -q");
    run_captured(
        Command::new(compose)
            .arg("-f")
            .arg(&file)
            .args(["config", "-q"])
            .current_dir(&paths.repo)
            .stdin(Stdio::null()),
        "docker-compose -f docker-compose.yml config -q",
    )?;
    Ok(())
}

/// The Kubernetes version the manifests are checked against: the oldest
/// the README promises (gRPC probes are GA from 1.27, autoscaling/v2 from
/// 1.23, policy/v1 from 1.21).
const KUBERNETES_VERSION: &str = "1.31";

/// kubernetes-validate --strict over every manifest in deploy/kubernetes/
/// (unknown fields, wrong types, missing required fields, unknown
/// apiVersion/kind) against the schemas it bundles: no cluster, no network
/// once installed. Also checks that kustomization.yaml lists exactly the
/// manifests that `kubectl apply -k` should apply.
fn kubernetes_check(paths: &Paths) -> Result<()> {
    let dir = paths.repo.join("deploy/kubernetes");
    let manifests = kubernetes_manifests(&dir)?;
    if manifests.is_empty() {
        bail!("{} holds no manifests", dir.display());
    }
    kustomization_check(&dir, &manifests)?;
    println!(
        "xtask: kubernetes-validate --strict (Kubernetes {KUBERNETES_VERSION}) deploy/kubernetes/ ({} files)",
        manifests.len()
    );
    let output = tools::python_module(paths, &tools::KUBERNETES_VALIDATE, "kubernetes_validate")?
        .args([
            "--kubernetes-version",
            KUBERNETES_VERSION,
            "--strict",
            "--quiet",
        ])
        .args(&manifests)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .context("running kubernetes-validate")?;
    // --quiet prints only problems. A kind or apiVersion it has no schema for
    // is only a WARN with exit status 0: count that as a failure too.
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() || !report.trim().is_empty() {
        bail!(
            "kubernetes-validate found problems in deploy/kubernetes/ ({}):\n{report}",
            output.status
        );
    }
    Ok(())
}

/// The file names of the manifests in `dir`: every `*.yaml` but
/// kustomization.yaml (kustomize's own file, not a Kubernetes object), sorted.
fn kubernetes_manifests(dir: &Path) -> Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Manifests that are in the directory but deliberately not applied by
/// `kubectl apply -k`.
const NOT_KUSTOMIZED: &[&str] = &["secrets.example.yaml"];

/// kustomization.yaml's `resources:` must name every manifest but the
/// example Secret, and nothing else.
fn kustomization_check(dir: &Path, manifests: &[String]) -> Result<()> {
    let file = dir.join("kustomization.yaml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut listed = kustomization_resources(&text);
    listed.sort();
    let expected: Vec<&str> = manifests
        .iter()
        .map(String::as_str)
        .filter(|name| !NOT_KUSTOMIZED.contains(name))
        .collect();
    if listed != expected {
        bail!(
            "deploy/kubernetes/kustomization.yaml lists resources {listed:?}, \
             but the manifests to apply are {expected:?} (every *.yaml but {NOT_KUSTOMIZED:?})"
        );
    }
    Ok(())
}

/// The `- entry` lines of the top-level `resources:` list.
fn kustomization_resources(text: &str) -> Vec<&str> {
    let mut in_resources = false;
    let mut listed = Vec::new();
    for line in text.lines() {
        let content = line.split(" #").next().unwrap_or("").trim_end();
        if content.trim_start().starts_with('#') || content.is_empty() {
            continue;
        }
        if !line.starts_with([' ', '-']) {
            in_resources = content == "resources:";
            continue;
        }
        if in_resources && let Some(item) = content.trim_start().strip_prefix("- ") {
            listed.push(item.trim().trim_matches(['"', '\'']));
        }
    }
    listed
}

/// The docker-compose binary; installed with apt when root, else a skip.
fn find_or_install_compose() -> Result<Option<std::path::PathBuf>> {
    if let Some(compose) = which("docker-compose") {
        return Ok(Some(compose));
    }
    if !is_root() || which("apt-get").is_none() {
        println!(
            "xtask: compose check skipped: docker-compose is not installed \
             (sudo apt-get install docker-compose to enable it)"
        );
        return Ok(None);
    }
    println!("xtask: installing Debian's docker-compose (apt-get)");
    let apt = |args: &[&str]| {
        run_captured(
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdin(Stdio::null()),
            "apt-get",
        )
    };
    apt(&["update", "-qq"])?;
    // No recommends: they would pull in the Docker engine, which is not needed.
    apt(&[
        "install",
        "-y",
        "-qq",
        "--no-install-recommends",
        "docker-compose",
    ])?;
    which("docker-compose")
        .context("apt-get installed docker-compose, but it is not on PATH")
        .map(Some)
}

/// Counts from libtest's "test result:" lines.
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
    success: bool,
}

impl Tally {
    /// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; ...`
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim_start().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split([';', '.']) {
            let mut words = part.split_whitespace();
            let (Some(count), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match what {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// Runs `cargo test` with the database and tools the tests need, echoing
/// its output and counting results; stops it (all of it) on a signal.
async fn cargo_test(
    paths: &Paths,
    url: &str,
    tools: &TestTools,
    throwaway: bool,
    args: &[String],
    signals: &mut Signals,
) -> Result<Tally> {
    // One pipe for stdout and stderr: cargo's "Running ..." lines (stderr)
    // and the tests' results (stdout) then arrive in the order written.
    let (reader, writer) = std::io::pipe().context("creating a pipe for cargo test")?;
    let mut command = cargo_test_command(paths, url, tools, args);
    if throwaway {
        command.env("MESH_TEST_SERVER_IS_THROWAWAY", "1");
    }
    command.stdout(writer.try_clone()?).stderr(writer);
    println!("xtask: cargo test {}", describe(args));
    let spawned = command.spawn().context("running cargo test");
    // Drop our copies of the pipe's write end, or the reader never sees EOF.
    drop(command);
    let mut child = spawned?;
    let counter = tokio::task::spawn_blocking(move || echo_and_count(reader));
    let status = tokio::select! {
        status = child.wait() => status?,
        signal = signals.recv() => {
            println!("xtask: {signal}: stopping the tests");
            stop(&mut child).await;
            bail!("interrupted by {signal}");
        }
    };
    let mut tally = counter.await?;
    tally.success = status.success();
    Ok(tally)
}

fn cargo_test_command(
    paths: &Paths,
    url: &str,
    tools: &TestTools,
    args: &[String],
) -> tokio::process::Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = tokio::process::Command::new(cargo);
    command.arg("test");
    if !names_packages(args) {
        command.arg("--workspace");
    }
    command
        .args(args)
        .env("DATABASE_URL", url)
        .env("MESH_GRPCURL", &tools.grpcurl)
        .env("MEMORY_MODEL_DIR", &tools.model_dir)
        .current_dir(&paths.repo)
        .stdin(Stdio::null())
        // Its own group, so one signal reaches cargo and the test binaries.
        .process_group(0);
    // Through a pipe cargo would drop its colours; keep them for a terminal.
    if std::io::stdout().is_terminal() && std::env::var_os("CARGO_TERM_COLOR").is_none() {
        command.env("CARGO_TERM_COLOR", "always");
    }
    command
}

/// Copies cargo's output to ours line by line, counting test results.
fn echo_and_count(reader: std::io::PipeReader) -> Tally {
    let mut tally = Tally::default();
    for line in std::io::BufReader::new(reader).lines() {
        let Ok(line) = line else { break };
        println!("{line}");
        tally.add(&line);
    }
    tally
}

/// True when the caller picked packages, which `--workspace` would override.
fn names_packages(args: &[String]) -> bool {
    args.iter()
        .take_while(|a| *a != "--")
        .any(|a| a == "-p" || a == "--package" || a.starts_with("--package="))
}

fn describe(args: &[String]) -> String {
    if args.is_empty() {
        "--workspace".to_owned()
    } else {
        args.join(" ")
    }
}

async fn stop(child: &mut tokio::process::Child) {
    let Some(pid) = child.id() else { return };
    signal_group(pid, libc::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, child.wait())
        .await
        .is_err()
    {
        signal_group(pid, libc::SIGKILL);
        let _ = child.wait().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_adds_up_every_result_line() {
        let mut tally = Tally::default();
        tally.add("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s");
        tally.add("test result: FAILED. 2 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.20s");
        tally.add("running 3 tests");
        assert_eq!((tally.passed, tally.failed, tally.ignored), (5, 1, 1));
    }

    #[test]
    fn kustomization_resources_are_read() {
        let text = "# top\napiVersion: v1\nresources:\n  - a.yaml\n  # skip\n  - \"b.yaml\" # why\nimages:\n  - name: x\n";
        assert_eq!(kustomization_resources(text), ["a.yaml", "b.yaml"]);
    }

    #[test]
    fn the_kubernetes_manifests_are_all_kustomized() {
        let dir = Paths::discover().unwrap().repo.join("deploy/kubernetes");
        let manifests = kubernetes_manifests(&dir).unwrap();
        assert!(manifests.iter().any(|m| m == "gateway.yaml"));
        kustomization_check(&dir, &manifests).unwrap();
    }

    #[test]
    fn package_selection_is_noticed() {
        let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(names_packages(&args(&["-p", "mesh-users"])));
        assert!(!names_packages(&args(&["filter", "--", "-p"])));
    }
}
