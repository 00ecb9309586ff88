//! A very short `e2e bench throughput`: every measurement runs once for a fraction of a second. It checks that
//! each path carries traffic and that the JSON has its shape; it asserts no speed (see e2e/README.md for the
//! figures of a real run). Needs root, the Debian tools of `scripts/setup.sh` and the daemons built with the
//! same profile (`cargo test --workspace` builds them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::time::{Duration, Instant};

use mip_e2e::throughput::{self, ThroughputOptions};

#[test]
fn short_throughput_bench_measures_every_path() {
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
    let start = Instant::now();
    let opts = ThroughputOptions {
        seconds: 0.4,
        runs: 1,
        warmup: Duration::from_millis(100),
        ..ThroughputOptions::default()
    };
    let report = throughput::bench_throughput(&opts, &mut |l| eprintln!("{l}")).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}\n(took {:?})", report.table(), start.elapsed());

    let v: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    let tcp = &v["tcp"];
    for k in ["vpn_alone_mbps", "proxy_vpn_mbps", "ratio"] {
        assert!(tcp[k].as_f64().unwrap() > 0.0, "tcp.{k} = {}", tcp[k]);
    }
    assert_eq!(tcp["runs"], 1);

    let fwd = v["forwarding"].as_array().unwrap();
    let mut cases: Vec<(String, u64)> = fwd
        .iter()
        .map(|f| {
            (
                f["tunnel"].as_str().unwrap().to_owned(),
                f["inner_bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    cases.sort();
    let want: Vec<(String, u64)> = ["ipip", "udp"]
        .iter()
        .flat_map(|t| [64u64, 1400].map(|s| ((*t).to_owned(), s)))
        .collect();
    assert_eq!(cases, want);
    for f in fwd {
        for k in ["proxy_pps", "kernel_pps", "ratio"] {
            assert!(
                f[k].as_f64().unwrap() > 0.0,
                "{} {}: {k} = {}",
                f["tunnel"],
                f["inner_bytes"],
                f[k]
            );
        }
        assert_eq!(f["runs"], 1);
    }
}
