//! The whole system end to end in the namespace lab (docs/lab.md): the real daemons (mip-proxy, mip-ha, mip-fa,
//! mip-mn) with unmodified strongSwan 5.9.8 as VPN client and gateway and nftables as NAT. The MN's VPN runs
//! from its home address through the Mobile IP tunnel; every test checks what a user depends on: registration,
//! ping and checksummed TCP both ways between MN and CN, only IPsec inside Mobile IP tunnels on the Internet
//! side, the same IPsec SAs and no IKE exchange across hand-offs, deregistration, proxy restart, bad input.
//!
//! Needs root, the Debian tools of `scripts/setup.sh` and the daemons built with the same profile
//! (`cargo test --workspace` builds them). The tests share the machine, so they run one at a time, each in its
//! own lab; the lab and every process are torn down when a test ends, also when it fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mip_e2e::capture::{self, Capture};
use mip_e2e::probe;
use mip_e2e::strongswan::IkeSa;
use mip_e2e::system::{self, System, SystemOptions, admin_get, care_of_address, metric_sum};
use mip_e2e::{Access, Lab, LabOptions, Mode, ProcessGuard, plan};
use serde_json::Value;

static LOCK: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    // A failed test poisons the lock; the next one still runs.
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// A lab with the whole system running and the echo server on the CN. Field order is drop order: the system's
/// processes stop before the lab's namespaces go.
struct Env {
    sys: System,
    _echo: ProcessGuard,
    lab: Lab,
}

fn env(mode: Mode) -> Env {
    env_with(mode, SystemOptions::default())
}

fn env_with(mode: Mode, opts: SystemOptions) -> Env {
    mip_e2e::require_lab_tools().unwrap_or_else(|e| panic!("{e}"));
    let mut lab = Lab::up(LabOptions {
        mode,
        e2e_bin: Some(PathBuf::from(env!("CARGO_BIN_EXE_e2e"))),
        keep_run_dir: std::env::var_os("MLAB_KEEP").is_some(),
        ..LabOptions::default()
    })
    .unwrap_or_else(|e| panic!("lab up: {e}"));
    let echo = lab.spawn_echo().unwrap();
    let sys = System::start(&mut lab, opts).unwrap_or_else(|e| panic!("system start: {e}"));
    Env { sys, _echo: echo, lab }
}

impl Env {
    fn ns(&self, n: &str) -> String {
        self.lab.ns(n)
    }

    fn echo_target() -> SocketAddrV4 {
        SocketAddrV4::new(plan::CN, plan::ECHO_PORT)
    }

    /// Hands the MN off to `access`; returns (registered, traffic back) times from the switch.
    fn hand_off(&mut self, access: Access) -> (Duration, Duration) {
        let marks = self.lab.mn_attach(access, false).unwrap();
        system::wait_registered_on(&self.lab, access, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("hand-off to {access}: {e}\n{}", self.mn_log_tail()));
        let registered = marks.switched.elapsed();
        probe::wait_echo(&self.ns("mn"), Self::echo_target(), Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("traffic after the hand-off to {access}: {e}"));
        (registered, marks.switched.elapsed())
    }

    fn mn_log_tail(&self) -> String {
        self.sys.mn.log_tail(3000)
    }

    /// Ping both ways and a checksummed TCP transfer both ways between MN (home address) and CN.
    fn check_traffic(&self, what: &str) {
        let st = self.lab.ping("mn", plan::CN, 3).unwrap();
        assert_eq!(st.received, 3, "{what}: ping MN → CN {st:?}");
        let st = self.lab.ping("cn", plan::HOA, 3).unwrap();
        assert_eq!(st.received, 3, "{what}: ping CN → MN {st:?}");
        let up = probe::tcp_transfer(
            &self.ns("mn"),
            &self.ns("cn"),
            SocketAddrV4::new(plan::CN, 7001),
            2_000_000,
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{what}: TCP MN → CN: {e}"));
        assert!(up.matched && up.bytes == 2_000_000, "{what}: TCP MN → CN {up:?}");
        let down = probe::tcp_transfer(
            &self.ns("cn"),
            &self.ns("mn"),
            SocketAddrV4::new(plan::HOA, 7002),
            2_000_000,
            Duration::from_secs(20),
        )
        .unwrap_or_else(|e| panic!("{what}: TCP CN → MN: {e}"));
        assert!(down.matched && down.bytes == 2_000_000, "{what}: TCP CN → MN {down:?}");
        eprintln!(
            "{what}: TCP MN→CN {:.0} Mbit/s, CN→MN {:.0} Mbit/s, sha256 equal",
            up.mbit_s, down.mbit_s
        );
    }

    fn sas(&self) -> (Vec<IkeSa>, Vec<IkeSa>) {
        self.sys.sas().unwrap()
    }

    /// The proxy's binding for the home address: (care-of address, encapsulation, tunnel address).
    fn proxy_binding(&self) -> (String, String, String) {
        let ns = self.ns(self.sys.proxy_ns());
        let v: Value = serde_json::from_str(&admin_get(&ns, "/bindings").unwrap()).unwrap();
        let rows = v.as_array().unwrap();
        assert_eq!(rows.len(), 1, "one binding at the proxy: {v}");
        let b = &rows[0];
        assert_eq!(b["home_address"], plan::HOA.to_string());
        (
            b["care_of_address"].as_str().unwrap().to_owned(),
            b["tunnel"]["encapsulation"].as_str().unwrap().to_owned(),
            b["tunnel"]["address"].as_str().unwrap().to_owned(),
        )
    }

    /// Where both charon logs end now.
    fn ike_cursors(&self) -> (u64, u64) {
        (self.sys.client.log_cursor(), self.sys.gateway.log_cursor())
    }

    /// Neither charon logged an IKE message since `cursors`.
    fn assert_no_ike(&self, cursors: (u64, u64), what: &str) {
        let mn = self.sys.client.ike_counts_since(cursors.0).unwrap();
        let gw = self.sys.gateway.ike_counts_since(cursors.1).unwrap();
        assert_eq!(
            (mn.messages(), gw.messages()),
            (0, 0),
            "IKE during {what}: {mn:?} {gw:?}"
        );
    }

    fn metrics(&self, ns: &str) -> String {
        admin_get(&self.ns(ns), "/metrics").unwrap()
    }
}

/// Asserts the IKE and CHILD SPIs on both ends are what they were, and that both are still up.
fn assert_same_sas(before: &(Vec<IkeSa>, Vec<IkeSa>), after: &(Vec<IkeSa>, Vec<IkeSa>), what: &str) {
    assert_eq!(before.0.len(), 1, "{what}: one IKE_SA on the MN before: {:?}", before.0);
    assert_eq!(
        before.1.len(),
        1,
        "{what}: one IKE_SA on the gateway before: {:?}",
        before.1
    );
    for (b, a, side) in [(&before.0, &after.0, "MN"), (&before.1, &after.1, "gateway")] {
        assert_eq!(a.len(), 1, "{what}: one IKE_SA on the {side} after: {a:?}");
        assert!(a[0].is_up(), "{what}: {side} SA up after: {:?}", a[0]);
        assert_eq!(b[0].spis(), a[0].spis(), "{what}: {side} SPIs changed");
    }
}

/// The expected proxy binding per access network: (care-of address, encapsulation, tunnel endpoint address).
fn expected_binding(access: Access) -> (String, &'static str, String) {
    let coa = care_of_address(access).to_string();
    match access {
        // Co-located on a routable address: IP-in-IP to the care-of address.
        Access::A => (coa.clone(), "ipip", coa),
        // Behind a NAT: RFC 3519 UDP tunnel to the NAT's public address.
        Access::C1 | Access::C2 => (coa, "udp_ipip", access.public_addr().to_string()),
        // FA care-of address: IP-in-IP to the FA.
        Access::B => (coa.clone(), "ipip", coa),
        // FA behind NAT 3: UDP tunnel to NAT 3's public address.
        Access::D => (coa, "udp_ipip", plan::NAT3_PUBLIC.to_string()),
    }
}

/// Scenarios C (behind NAT 1, where the MN starts), A, B, D: registration, the proxy's binding, ping and TCP both
/// ways, and an Internet-side capture that holds nothing but Mobile IP registrations and tunnels carrying IPsec.
fn scenarios(mode: Mode, accesses: &[Access]) {
    let _g = serial();
    let mut e = env(mode);
    let pcap = e.lab.run_dir().join("inet.pcap");
    let cap = Capture::start(&e.lab, "inet", "any", "", &pcap).unwrap();
    let before = e.sas();
    let cursors = e.ike_cursors();
    for (i, &access) in accesses.iter().enumerate() {
        if i > 0 || e.lab.attached() != Some(access) {
            let (reg, back) = e.hand_off(access);
            eprintln!("{mode:?} hand-off to {access}: registered after {reg:?}, traffic after {back:?}");
        }
        let (coa, encap, endpoint) = expected_binding(access);
        assert_eq!(
            e.proxy_binding(),
            (coa, encap.to_owned(), endpoint),
            "{mode:?} {access}: proxy binding"
        );
        e.check_traffic(&format!("{mode:?} scenario {access}"));
    }
    let pcap = cap.stop().unwrap();
    let c = capture::classify_pcap(&pcap).unwrap();
    eprintln!("{mode:?} Internet side: {c:?}");
    assert!(
        c.only_ipsec_in_mip_tunnel(),
        "{mode:?}: something other than IPsec in a MIP tunnel: {c:?}"
    );
    assert!(c.mip_rrq > 0 && c.mip_rrp > 0, "{c:?}");
    if accesses.contains(&Access::A) || accesses.contains(&Access::B) {
        assert!(c.ipip_esp > 0, "IP-in-IP tunnels carried ESP: {c:?}");
    }
    assert!(c.mip_data_esp > 0, "UDP tunnels carried ESP: {c:?}");
    // Wireshark agrees that no TCP and no bare ESP crossed the Internet side.
    assert_eq!(capture::tshark_count(&pcap, "tcp || ip.proto == 50").unwrap(), 0);
    assert_same_sas(&before, &e.sas(), &format!("{mode:?} scenarios"));
    e.assert_no_ike(cursors, "the scenarios");
}

#[test]
fn two_box_scenarios_c_a_b_d_registration_traffic_and_internet_side() {
    scenarios(Mode::TwoBox, &[Access::C1, Access::A, Access::B, Access::D]);
}

#[test]
fn one_box_scenarios_c_a_registration_traffic_and_internet_side() {
    scenarios(Mode::OneBox, &[Access::C1, Access::A]);
}

/// Every ordered pair of the five access networks once (an Eulerian circuit of the complete directed graph,
/// starting and ending at C1), with the same IPsec SAs and no IKE message on either end.
#[test]
fn two_box_hand_offs_between_every_pair_keep_the_same_sas() {
    use Access::{A, B, C1, C2, D};
    let _g = serial();
    let mut e = env(Mode::TwoBox);
    let circuit = [A, C1, B, C1, C2, C1, D, A, B, A, C2, A, D, B, C2, B, D, C2, D, C1];
    let mut pairs = std::collections::BTreeSet::new();
    let before = e.sas();
    let cursors = e.ike_cursors();
    let mut from = C1;
    for to in circuit {
        let (reg, back) = e.hand_off(to);
        let (coa, encap, endpoint) = expected_binding(to);
        assert_eq!(e.proxy_binding(), (coa, encap.to_owned(), endpoint), "{from} → {to}");
        eprintln!("{from} → {to}: registered {reg:?}, first echo {back:?}");
        assert!(
            pairs.insert((from.to_string(), to.to_string())),
            "pair {from} → {to} twice"
        );
        from = to;
    }
    assert_eq!(pairs.len(), 20, "every ordered pair of 5 networks");
    e.check_traffic("after 20 hand-offs");
    assert_same_sas(&before, &e.sas(), "20 hand-offs");
    e.assert_no_ike(cursors, "hand-offs");
}

/// C1 ↔ C2: the MN keeps its address (192.168.1.10) and gateway address; only the NAT (public address, MAC)
/// changes. The MN re-registers on the new link, and the proxy's UDP tunnel follows the NAT's public address.
#[test]
fn two_box_nat_change_while_the_address_stays_the_same() {
    let _g = serial();
    let mut e = env(Mode::TwoBox);
    let before = e.sas();
    let handoffs = metric_sum(&e.metrics("mn"), "mip_handoffs_total", &[]);
    for (to, public) in [(Access::C2, plan::NAT2_PUBLIC), (Access::C1, plan::NAT1_PUBLIC)] {
        let (_, back) = e.hand_off(to);
        let (coa, _, endpoint) = e.proxy_binding();
        assert_eq!(coa, "192.168.1.10", "the care-of address did not change");
        assert_eq!(endpoint, public.to_string(), "the tunnel follows the NAT");
        eprintln!("NAT change to {to}: traffic after {back:?}");
    }
    let after = metric_sum(&e.metrics("mn"), "mip_handoffs_total", &[]);
    assert_eq!(after, handoffs + 2.0, "the MN registered each NAT change as a hand-off");
    e.check_traffic("after two NAT changes");
    assert_same_sas(&before, &e.sas(), "NAT changes");
}

/// The MN deregisters (here with `mipctl register --deregister`, the operator's tool, after mip-mn stopped):
/// the proxy and the HA drop their bindings and the HA stops intercepting the home address.
#[test]
fn two_box_deregistration_removes_every_binding() {
    let _g = serial();
    let mut e = env(Mode::TwoBox);
    let ha_bindings =
        |e: &Env| -> Value { serde_json::from_str(&admin_get(&e.ns("ha"), "/bindings").unwrap()).unwrap() };
    assert_eq!(
        ha_bindings(&e).as_array().unwrap().len(),
        1,
        "the HA holds the proxy's binding"
    );
    assert!(
        e.lab
            .ip("ha", &["route", "show", &format!("{}/32", plan::HOA)])
            .unwrap()
            .contains("dev")
    );
    e.sys.mn.stop();
    let mipctl = system::find_bin("mipctl").unwrap();
    let cfg = e.sys.dir().join("mn.yaml");
    let out = e
        .lab
        .exec(
            "mn",
            &[
                mipctl.to_str().unwrap(),
                "register",
                "--config",
                cfg.to_str().unwrap(),
                "--deregister",
            ],
        )
        .unwrap_or_else(|err| panic!("mipctl register --deregister: {err}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|err| panic!("{err}: {text}"));
    assert_eq!(v["deregistered"], true, "{v}");
    let proxy_ns = e.ns(e.sys.proxy_ns());
    let proxy: Value = serde_json::from_str(&admin_get(&proxy_ns, "/bindings").unwrap()).unwrap();
    assert_eq!(proxy, Value::Array(vec![]), "no binding left at the proxy");
    assert_eq!(ha_bindings(&e), Value::Array(vec![]), "no binding left at the HA");
    assert!(
        e.lab
            .ip("ha", &["route", "show", &format!("{}/32", plan::HOA)])
            .unwrap()
            .trim()
            .is_empty(),
        "the HA no longer intercepts the home address"
    );
}

/// The proxy restarts (no replication yet, so its bindings are gone): the MN notices with its RFC 3519
/// keepalives and re-registers within one keepalive interval plus the three 1 s keepalive reply timeouts; the
/// IPsec SAs survive.
#[test]
fn two_box_proxy_restart_mn_re_registers_within_one_keepalive_interval() {
    let _g = serial();
    let mut e = env(Mode::TwoBox);
    let keepalive = Duration::from_secs(u64::from(e.sys.options().nat_keepalive_secs));
    let state = system::mn_state(&e.lab).unwrap();
    assert_eq!(
        state["tunnel"]["type"], "udp",
        "behind NAT 1 the MN has a UDP tunnel with keepalives: {state}"
    );
    let before = e.sas();
    let mn_regs = |e: &Env| metric_sum(&e.metrics("mn"), "mip_registrations_total", &["code=\"0\""]);
    let regs = mn_regs(&e);
    let status = e.sys.stop_proxy().expect("mip-proxy was running");
    assert!(status.success(), "mip-proxy exits cleanly on SIGTERM: {status:?}");
    let stopped = Instant::now();
    e.sys.start_proxy(&e.lab).unwrap();
    let back = probe::wait_echo(&e.ns("mn"), Env::echo_target(), keepalive + Duration::from_secs(8))
        .unwrap_or_else(|err| panic!("traffic after the proxy restart: {err}\n{}", e.mn_log_tail()));
    let outage = stopped.elapsed();
    eprintln!("proxy restart: traffic back {outage:?} after the stop (last probe RTT {back:?})");
    assert!(mn_regs(&e) > regs, "the MN re-registered");
    assert!(
        outage <= keepalive + Duration::from_secs(3) + Duration::from_millis(500),
        "re-registered within one keepalive interval ({keepalive:?}) + 3 reply timeouts: {outage:?}"
    );
    assert_same_sas(&before, &e.sas(), "proxy restart");
}

/// Sends one raw IPv4 payload of protocol `proto` from namespace `ns` to `dst` (python3's raw socket, so the
/// bytes are exactly what the test wrote, independent of our encoder).
fn send_raw(lab: &Lab, ns: &str, proto: u8, dst: Ipv4Addr, payload: &[u8]) {
    let script = format!(
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_RAW, {proto}); s.sendto(bytes.fromhex('{}'), \
         ('{dst}', 0))",
        hex::encode(payload)
    );
    lab.exec(ns, &["python3", "-c", &script]).unwrap();
}

/// An IPv4 header + UDP, checksums zero (UDP checksum 0 = none), for inner packets.
fn ipv4_udp(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    mip_agents::pcap::ipv4_udp_packet(SocketAddrV4::new(src, sport), SocketAddrV4::new(dst, dport), payload)
}

/// Garbage, truncated and forged packets on every port the daemons listen on: UDP 434 and IP-in-IP at the
/// proxy, the HA, the FA and the MN, and open-relay attempts through the proxy's tunnels. Nothing crashes,
/// nothing is relayed, the drop counters move, and the VPN still works afterwards.
#[test]
fn two_box_bad_input_on_every_listening_port_is_dropped_and_counted() {
    let _g = serial();
    let mut e = env(Mode::TwoBox);
    // The MN on the routable network, so the Internet can reach its own UDP 434 and IP-in-IP.
    e.hand_off(Access::A);
    let drops = |e: &Env, ns: &str| metric_sum(&e.metrics(ns), "mip_drops_total", &[]);
    let daemons = [e.sys.proxy_ns(), "ha", "fa1", "mn"];
    let before: Vec<f64> = daemons.iter().map(|d| drops(&e, d)).collect();

    let forged_rrq = plan::forged_request();
    let garbage: Vec<Vec<u8>> = vec![
        vec![],
        vec![1],
        vec![1, 0, 0],
        vec![3; 10],
        vec![4, 4, 0],
        vec![0xff; 300],
        forged_rrq,
    ];
    // Open-relay attempts: tunnel data from a stranger whose inner packet goes to the CN (port 9999), and a
    // stranger's "IPsec" toward the VPN gateway. Captures on the CN and the gateway must never see either.
    let relay = ipv4_udp(plan::HOA, plan::CN, 4500, 9999, b"relay me");
    let stranger = Ipv4Addr::new(10, 10, 1, 77);
    let cn_cap = Capture::start(
        &e.lab,
        "cn",
        "lan",
        "udp dst port 9999",
        &e.lab.run_dir().join("cn-relay.pcap"),
    )
    .unwrap();
    let gw_cap = Capture::start(
        &e.lab,
        "vpngw",
        "any",
        &format!("host {stranger}"),
        &e.lab.run_dir().join("gw-relay.pcap"),
    )
    .unwrap();
    let mut relay_udp = vec![4u8, 4, 0, 0];
    relay_udp.extend(&relay);
    let public = |ip| SocketAddrV4::new(ip, 434);
    for g in garbage.iter().chain([&relay_udp]) {
        send_udp(&e.lab, "inet", public(plan::PROXY_PUBLIC), g);
        send_udp(&e.lab, "inet", public(plan::FA1_COA), g);
        send_udp(&e.lab, "inet", public(care_of_address(Access::A)), g);
        send_udp(&e.lab, "cn", public(plan::HA_HOME), g);
    }
    // IP-in-IP: truncated, and inner packets that are not the bound node's IPsec (open relay attempts).
    for inner in [
        vec![0x45u8, 0, 0],
        relay.clone(),
        ipv4_udp(stranger, plan::VPNGW_PUBLIC, 4500, 4500, b"x"),
    ] {
        send_raw(&e.lab, "inet", 4, plan::PROXY_PUBLIC, &inner);
        send_raw(&e.lab, "inet", 4, plan::FA1_COA, &inner);
        send_raw(&e.lab, "inet", 4, care_of_address(Access::A), &inner);
        send_raw(&e.lab, "cn", 4, plan::PROXY_PRIVATE, &inner);
    }
    // The admin port: garbage and unknown paths get an error, not a crash.
    let (status, _) = system::admin_request(&e.ns(e.sys.proxy_ns()), "/../../etc/passwd").unwrap();
    assert_eq!(status, 404);
    // Give the daemons a moment, then check each one counted drops and is still serving.
    std::thread::sleep(Duration::from_millis(300));
    let relayed = (
        capture::classify_pcap(&cn_cap.stop().unwrap()).unwrap().frames,
        capture::classify_pcap(&gw_cap.stop().unwrap()).unwrap().frames,
    );
    assert_eq!(relayed, (0, 0), "nothing relayed to the CN or the gateway");
    for (d, b) in daemons.iter().zip(&before) {
        let after = drops(&e, d);
        assert!(after > *b, "{d}: drop counters moved ({b} → {after})");
        assert_eq!(
            admin_get(&e.ns(d), "/healthz").map(|_| ()).ok(),
            Some(()),
            "{d} healthy"
        );
    }
    for guard in [&mut e.sys.ha, &mut e.sys.mn] {
        assert!(guard.is_running(), "still running");
    }
    assert!(e.sys.replica(0).unwrap().is_running());
    for fa in &mut e.sys.fas {
        assert!(fa.is_running());
    }
    // The binding is still the MN's real one.
    let (coa, encap, endpoint) = expected_binding(Access::A);
    assert_eq!(e.proxy_binding(), (coa, encap.to_owned(), endpoint));
    e.check_traffic("after bad input");

    // The visited side of FA 1: the MN's link (UDP 434 bound to the visited interface, agent solicitations),
    // and the MN's own ICMP socket (agent advertisements) from a stranger on the Internet side.
    let mn_drops = drops(&e, "mn");
    for icmp in [
        vec![9u8, 0],
        vec![9, 0, 0, 0, 1, 0, 0, 0],
        vec![9, 0, 0, 0, 1, 2, 0, 3, 198, 51, 100, 99],
    ] {
        send_raw(&e.lab, "inet", 1, care_of_address(Access::A), &icmp);
    }
    e.hand_off(Access::B);
    let fa_drops = drops(&e, "fa1");
    for g in &garbage {
        send_udp(&e.lab, "mn", SocketAddrV4::new(plan::FA1_VISITED, 434), g);
    }
    for icmp in [vec![10u8, 0], vec![10, 0, 0, 0], vec![10, 1, 0xff, 0xff, 0, 0, 0, 0, 1]] {
        send_raw(&e.lab, "mn", 1, plan::FA1_VISITED, &icmp);
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(drops(&e, "fa1") > fa_drops, "FA 1 counted the visited-side garbage");
    assert!(drops(&e, "mn") > mn_drops, "the MN counted the forged advertisements");
    assert!(e.sys.fas.iter_mut().all(ProcessGuard::is_running) && e.sys.mn.is_running());
    e.check_traffic("after bad input on the visited side");
}

/// Replaces `old` by `new` in a keys file, atomically (write + rename, as a Secret update does).
fn rewrite_key(path: &std::path::Path, old: &str, new: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(old), "{} holds the old key", path.display());
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text.replace(old, new)).unwrap();
    // Keys files readable by every user are refused (mip-io keys.rs).
    std::fs::set_permissions(&tmp, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The MN-HA key changes in the MN's, the proxy's and the HA's keys files while the VPN runs: each daemon
/// reloads it on its own (file change, no signal), keeps its bindings, and the next registration (a hand-off)
/// is authenticated with the new key end to end.
#[test]
fn two_box_key_rotation_keeps_bindings_and_the_next_registration_uses_the_new_key() {
    let _g = serial();
    let mut e = env(Mode::TwoBox);
    let reloads = |e: &Env, ns: &str| metric_sum(&e.metrics(ns), "mip_key_reloads_total", &["result=\"ok\""]);
    let daemons = [e.sys.proxy_ns(), "ha", "mn"];
    let before: Vec<f64> = daemons.iter().map(|d| reloads(&e, d)).collect();
    let binding = e.proxy_binding();
    let new_key = "6d6c61622d6e65772d6b65792d323032";
    for name in ["proxy", "ha", "mn"] {
        rewrite_key(
            &e.sys.dir().join(format!("{name}.keys.yaml")),
            system::MN_HA_KEY,
            new_key,
        );
    }
    for (d, b) in daemons.iter().zip(&before) {
        mip_e2e::cmd::poll_until(
            &format!("{d} to reload its keys"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || Ok((reloads(&e, d) > *b).then_some(())),
        )
        .unwrap();
    }
    assert_eq!(e.proxy_binding(), binding, "the binding survived the reload");
    let ha: Value = serde_json::from_str(&admin_get(&e.ns("ha"), "/bindings").unwrap()).unwrap();
    assert_eq!(ha.as_array().map(Vec::len), Some(1), "the HA kept its binding: {ha}");
    probe::wait_echo(&e.ns("mn"), Env::echo_target(), Duration::from_secs(2)).unwrap();
    // The old key no longer works: a registration signed with it gets no reply (silent drop) and moves nothing.
    let old_keys = e.sys.dir().join("old.keys.yaml");
    std::fs::write(
        &old_keys,
        format!(
            "security_associations:\n  - home_address: {}\n    spi: {}\n    key: {}\n",
            plan::HOA,
            system::MN_HA_SPI,
            system::MN_HA_KEY
        ),
    )
    .unwrap();
    std::fs::set_permissions(&old_keys, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let mipctl = system::find_bin("mipctl").unwrap();
    let cfg = e.sys.dir().join("mn.yaml");
    let out = e
        .lab
        .try_exec(
            "mn",
            &[
                mipctl.to_str().unwrap(),
                "register",
                "--config",
                cfg.to_str().unwrap(),
                "--keys",
                old_keys.to_str().unwrap(),
                "--timeout",
                "2",
            ],
        )
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "no authenticated reply to the old key (exit 3): {out:?}"
    );
    assert_eq!(e.proxy_binding(), binding, "a request with the old key moved nothing");
    // A hand-off registers MN → proxy → HA with the new key.
    let regs = metric_sum(&e.metrics("ha"), "mip_registrations_total", &["code=\"0\""]);
    e.hand_off(Access::A);
    assert!(metric_sum(&e.metrics("ha"), "mip_registrations_total", &["code=\"0\""]) > regs);
    e.check_traffic("after the key rotation");
}

/// One UDP datagram with exactly `payload` from namespace `ns` ([`Lab::send_udp`]).
fn send_udp(lab: &Lab, ns: &str, dst: SocketAddrV4, payload: &[u8]) {
    lab.send_udp(ns, dst, payload).unwrap();
}
