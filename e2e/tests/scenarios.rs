//! The whole system end to end in the namespace lab: the real daemons (mip-proxy, mip-ha, mip-fa, mip-mn)
//! with unmodified strongSwan as VPN client and gateway and nftables as NAT. Needs root, the Debian tools of
//! `scripts/setup.sh` and the daemons built with the same profile (`cargo test --workspace` builds them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use mip_e2e::system::{System, SystemOptions};
use mip_e2e::{Lab, LabOptions, Mode, plan};

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn lab(mode: Mode) -> Lab {
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
    Lab::up(LabOptions {
        mode,
        e2e_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_e2e"))),
        keep_run_dir: std::env::var_os("MLAB_KEEP").is_some(),
        ..LabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab up: {e}"))
}

#[test]
fn smoke_two_box() {
    let _g = serial();
    let mut lab = lab(Mode::TwoBox);
    let sys = System::start(&mut lab, SystemOptions::default()).unwrap_or_else(|e| panic!("{e}"));
    let st = lab.ping("mn", plan::CN, 3).unwrap();
    eprintln!("{st:?}");
    drop(sys);
}
