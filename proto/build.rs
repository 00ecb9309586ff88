//! Generates the Rust code of `proto/replication.proto` into `OUT_DIR` with tonic-prost-build. Needs `protoc`
//! (Debian `protobuf-compiler`, installed by `scripts/setup.sh`); no network access.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `protoc` from `PROTOC` if set, else the first one on `PATH`.
fn find_protoc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PROTOC") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join("protoc"))
        .find(|p| p.is_file())
}

fn main() -> ExitCode {
    let proto = Path::new("replication.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    let Some(protoc) = find_protoc() else {
        eprintln!(
            "error: mip-proto needs `protoc` to generate its gRPC code and none was found (neither `PROTOC` names a file nor is `protoc` on PATH): \
             install protobuf-compiler: scripts/setup.sh (or `apt-get install -y \
             protobuf-compiler`)"
        );
        return ExitCode::FAILURE;
    };
    // Passed to prost-build directly (setting PROTOC would need `unsafe` `set_var` in edition 2024).
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc);
    let result = tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &[proto], &[Path::new(".")]);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "error: generating code from {}: {e} (install protobuf-compiler: scripts/setup.sh)",
                proto.display()
            );
            ExitCode::FAILURE
        }
    }
}
