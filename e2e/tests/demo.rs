//! The lab demo end to end (`e2e demo`): the whole product in a lab, a 1 ms stream MN -> CN through the VPN while
//! the MN roams A -> C1 -> B -> D. Every hand-off must recover with both charons' SAs unchanged and no IKE
//! message; no timing figure is asserted (the machine may be busy). Needs root, the tools of `scripts/setup.sh`
//! and the daemons built with the same profile (`cargo test --workspace` builds them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use mip_e2e::demo::{DemoOptions, DemoReport, run_demo};
use mip_e2e::{Access, Mode};

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn demo(mode: Mode) -> DemoReport {
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
    let opts = DemoOptions {
        mode,
        e2e_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_e2e"))),
        keep_run_dir: std::env::var_os("MLAB_KEEP").is_some(),
        ..DemoOptions::default()
    };
    run_demo(&opts, &mut |line| eprintln!("{line}")).unwrap_or_else(|e| panic!("demo: {e}"))
}

fn check(report: &DemoReport) {
    let route: Vec<(Access, Access)> = report.hand_offs.iter().map(|h| (h.from, h.to)).collect();
    assert_eq!(
        route,
        [(Access::A, Access::C1), (Access::C1, Access::B), (Access::B, Access::D)],
        "the roam A -> C1 -> B -> D"
    );
    for h in &report.hand_offs {
        assert!(h.stream.recovered, "{}: the stream did not recover", h.line());
        assert!(h.stream.interruption_ms.is_some(), "{}", h.line());
        assert!(h.registered_ms.is_some(), "{}: no registration logged", h.line());
        assert!(h.sas_unchanged, "{}: the VPN's SPIs changed", h.line());
        assert_eq!(h.ike_messages, 0, "{}: IKE messages during the hand-off", h.line());
    }
    assert!(report.sas_unchanged_overall, "{}", report.summary());
    assert!(report.ok(), "{}", report.summary());
    assert!(report.probes_sent > 0 && report.probes_lost < report.probes_sent);
}

#[test]
fn demo_two_box_every_hand_off_keeps_the_vpn() {
    let _g = serial();
    check(&demo(Mode::TwoBox));
}

#[test]
fn demo_one_box_every_hand_off_keeps_the_vpn() {
    let _g = serial();
    let r = demo(Mode::OneBox);
    assert_eq!(r.mode, "one-box");
    check(&r);
}
