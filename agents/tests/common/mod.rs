//! What the namespace tests of `mip-ha`/`mip-mn` (`daemons.rs`) and `mip-fa` (`fa_daemon.rs`) share.

use std::process::{Command, Stdio};

/// Runs `program args…` and returns its stdout; panics with its stderr when it fails.
pub fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(
        out.status.success(),
        "`{program} {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
