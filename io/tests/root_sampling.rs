//! `telemetry::sample_root`, the daemons' root sampling decision, through its process-wide setting (its own test
//! binary: the setting is global).
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

use mip_io::telemetry::{sample_root, set_root_sampling};

fn share(n: u32) -> f64 {
    f64::from(u32::try_from((0..n).filter(|_| sample_root()).count()).unwrap()) / f64::from(n)
}

#[test]
fn roots_are_drawn_at_the_configured_ratio() {
    assert_eq!(share(10_000), 1.0, "every root until a ratio is set (the default, 1.0)");
    set_root_sampling(0.0);
    assert_eq!(share(10_000), 0.0);
    set_root_sampling(0.25);
    let got = share(100_000);
    assert!((got - 0.25).abs() < 0.01, "{got}");
    set_root_sampling(1.0);
    assert_eq!(share(10_000), 1.0);
}
