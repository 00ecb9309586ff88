//! Metrics and `mipctl status` after a short run of the whole system in the namespace lab (issue 7): the MN
//! registers through the proxy (two-box, behind NAT C1: RFC 3519 UDP tunnel), traffic crosses the tunnels, one
//! forged registration (wrong MN-HA authenticator) is injected from the Internet; then the proxy's and the HA's
//! `/metrics` must show the accepted registrations by role and code, the drop of the forged request by reason,
//! one binding each, nonzero tunnel counters in both directions, and `mipctl status --json` on the proxy must
//! show the node's registration and the drop.
//!
//! Needs root, the Debian tools of `scripts/setup.sh` and the workspace binaries built with the same profile
//! (`cargo build --workspace --bins`; `mipctl` is run inside the proxy's namespace).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use mip_e2e::system::{self, ADMIN, System, SystemOptions, admin_get, metric, metric_sum};
use mip_e2e::{Lab, LabOptions, Mode, plan};
use serde_json::Value;

/// Polls `/metrics` of the daemon in `ns` until `ok` holds (3 s at most); returns the last scrape.
fn scrape_until(lab: &Lab, ns: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let end = Instant::now() + Duration::from_secs(3);
    loop {
        let text = admin_get(&lab.ns(ns), "/metrics").unwrap();
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < end, "[{ns}] {what}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn two_box_metrics_and_status_after_registration_bad_input_and_traffic() {
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
    let mut lab = Lab::up(LabOptions {
        mode: Mode::TwoBox,
        e2e_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_e2e"))),
        keep_run_dir: std::env::var_os("MLAB_KEEP").is_some(),
        ..LabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    let opts = SystemOptions {
        foreign_agents: false,
        ..SystemOptions::default()
    };
    // Starts the daemons and the VPN; returns once the MN is registered (through NAT C1) and the VPN is up.
    let sys = System::start(&mut lab, opts).unwrap_or_else(|e| panic!("system start: {e}"));
    let proxy = sys.proxy_ns();

    // Traffic both ways through the tunnels (inside the VPN: MN → CN, and the CN's replies via the HA).
    let st = lab.ping("mn", plan::CN, 3).unwrap();
    assert_eq!(st.received, 3, "ping MN → CN {st:?}");
    // One forged registration from the Internet.
    send_udp(
        &lab,
        "inet",
        SocketAddrV4::new(plan::PROXY_PUBLIC, 434),
        &plan::forged_request(),
    );

    let bad_auth = "mip_drops_total{path=\"control\",reason=\"bad_authenticator\"}";
    let p = scrape_until(&lab, proxy, "the forged request counted", |t| {
        metric(t, bad_auth) >= 1.0
    });
    let ha = admin_get(&lab.ns("ha"), "/metrics").unwrap();
    eprintln!("proxy /metrics (excerpt):");
    for l in p.lines().filter(|l| {
        !l.starts_with('#') && !l.ends_with(" 0") && !l.contains("_bucket") && !l.starts_with("mip_build_info")
    }) {
        eprintln!("  {l}");
    }

    // Accepted registrations by role and code, at the proxy (toward the MN) and the HA (toward the proxy).
    assert!(
        metric(&p, "mip_registrations_total{role=\"proxy\",code=\"0\"}") >= 1.0,
        "{p}"
    );
    assert!(
        metric(&ha, "mip_registrations_total{role=\"ha\",code=\"0\"}") >= 1.0,
        "{ha}"
    );
    assert_eq!(
        metric_sum(&p, "mip_registrations_total", &["code=\"131\""]),
        0.0,
        "dropped, not answered"
    );
    assert!(metric(&p, "mip_relay_latency_seconds_count") >= 1.0, "{p}");
    // The forged request: one drop for its reason, nothing else counted as an authentication failure at the HA.
    assert_eq!(metric(&p, bad_auth), 1.0, "{p}");
    assert_eq!(metric(&ha, bad_auth), 0.0, "never relayed: {ha}");
    // One binding each: the MN's at the proxy, the proxy's (care-of proxy_private) at the HA.
    assert_eq!(metric(&p, "mip_bindings"), 1.0, "{p}");
    assert_eq!(metric(&ha, "mip_bindings"), 1.0, "{ha}");
    // The data path: the MN's UDP tunnel both ways at the proxy, the HA's tunnel toward the proxy.
    let tunnel = |t: &str, name: &str, labels: &[&str]| metric_sum(t, name, labels);
    for dir in ["direction=\"up\"", "direction=\"down\""] {
        let packets = tunnel(&p, "mip_tunnel_packets_total", &[dir, "encapsulation=\"udp\""]);
        let bytes = tunnel(&p, "mip_tunnel_bytes_total", &[dir, "encapsulation=\"udp\""]);
        assert!(
            packets >= 3.0 && bytes > packets * 20.0,
            "proxy {dir}: {packets} packets, {bytes} bytes"
        );
    }
    assert!(metric(&p, "mip_ha_tunnel_packets_total") >= 3.0, "{p}");
    assert!(
        tunnel(&ha, "mip_tunnel_packets_total", &["direction=\"down\""]) >= 3.0,
        "{ha}"
    );
    assert_eq!(metric(&p, "mip_tunnel_mtu_bytes{encapsulation=\"udp\"}"), 1468.0, "{p}");
    assert_eq!(metric(&p, "mip_up"), 1.0);
    assert!(
        p.lines()
            .any(|l| l.starts_with("mip_build_info{role=\"proxy\",version=\"") && l.ends_with(" 1"))
    );
    assert!(
        ha.lines()
            .any(|l| l.starts_with("mip_build_info{role=\"ha\",version=\"") && l.ends_with(" 1"))
    );

    // `mipctl status --json` inside the proxy's namespace: the registration with its code, and the drop.
    let mipctl = system::find_bin("mipctl").unwrap();
    let mipctl = mipctl.to_str().unwrap();
    let out = lab
        .exec(proxy, &[mipctl, "status", "--json", "--admin", ADMIN])
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("mipctl status --json: {text}");
    let st: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(st["role"], "proxy", "{st}");
    assert_eq!(st["ready"], true, "{st}");
    assert_eq!(st["bindings"], 1, "{st}");
    assert_eq!(st["mode"], "two_box", "{st}");
    let regs = st["recent_registrations"].as_array().unwrap();
    let accepted = regs
        .iter()
        .find(|r| r["home_address"] == plan::HOA.to_string() && r["code"] == 0)
        .unwrap_or_else(|| panic!("an accepted registration of the HoA: {st}"));
    assert_eq!(accepted["accepted"], true);
    assert_eq!(accepted["nat_detected"], true, "C1 is behind a NAT: {st}");
    assert_eq!(accepted["home_agent"], plan::HA_HOME.to_string(), "{st}");
    let drop = st["last_errors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["kind"] == "drop" && e["what"] == "bad_authenticator")
        .unwrap_or_else(|| panic!("the forged request among the last errors: {st}"));
    assert!(drop["peer"].as_str().is_some(), "the sender's address and port: {st}");
    assert!(
        st["drops"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["path"] == "control" && d["reason"] == "bad_authenticator" && d["count"] == 1),
        "{st}"
    );
    // The text screen, as an operator reads it.
    let out = lab.exec(proxy, &[mipctl, "status", "--admin", ADMIN]).unwrap();
    let screen = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("mipctl status:\n{screen}");
    assert!(
        screen.starts_with(&format!("mip-proxy (proxy) at {ADMIN}: version ")),
        "{screen}"
    );
    assert!(screen.contains(&format!(" {}  care-of ", plan::HOA)), "{screen}");
    assert!(screen.contains(" drop bad_authenticator ("), "{screen}");
    sys.stop();
}

/// One UDP datagram with exactly `payload` from namespace `ns` ([`Lab::send_udp`]).
fn send_udp(lab: &Lab, ns: &str, dst: SocketAddrV4, payload: &[u8]) {
    lab.send_udp(ns, dst, payload).unwrap();
}
