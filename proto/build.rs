//! Compiles every proto under proto/mesh once, with the protoc shipped in
//! protoc-bin-vendored, so no system protoc is needed.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY of intent: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe_env_set("PROTOC", protoc.as_os_str());
    let include = protoc_bin_vendored::include_path()?;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    collect_protos(&root.join("mesh"), &mut files)?;
    files.sort();
    // The directory too, so that a new .proto file triggers a rebuild.
    println!("cargo:rerun-if-changed={}", root.join("mesh").display());
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("mesh_descriptor.bin"))
        .compile_protos(&files, &[root.clone(), include])?;
    Ok(())
}

fn collect_protos(dir: &std::path::Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}

#[allow(unsafe_code)]
fn unsafe_env_set(key: &str, value: &std::ffi::OsStr) {
    // Edition 2024 marks set_var unsafe because other threads may read the
    // environment; a build script runs this before starting any thread.
    unsafe { std::env::set_var(key, value) }
}
