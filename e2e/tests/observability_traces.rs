//! Traces of the whole system in the namespace lab (issue 7), received by a real OpenTelemetry collector: rotel
//! (`rotel-agent` from PyPI, `scripts/otel-tools.sh`) listens for OTLP/gRPC in ns `cn` (10.10.0.100:4317) and
//! prints every span it receives (`--debug-log traces --debug-log-verbosity detailed`). The proxy and the HA reach
//! it over the intranet LAN, the MN through its VPN (inside the Mobile IP tunnel).
//!
//! Two-box, the MN behind NAT C1 (RFC 3519 UDP tunnel), `daemon.tracing.endpoint` set for proxy, HA and MN. The
//! test reads the collector's output and asserts:
//! * the proxy's registration is one trace: `registration` (root) with `receive`, `authenticate`, `relay`,
//!   `ha_reply`, `reply` as its children, and the attributes home address 10.10.1.50, care-of address
//!   192.168.1.10, NAT detected, home agent 10.10.1.1, reply code 0; resource `service.name` = mip-proxy;
//! * the HA's own `registration` span (service mip-ha) with code 0 exists, in another trace (Mobile IP carries
//!   no trace context);
//! * no span per data packet: pings through the tunnel add no span;
//! * after a hand-off to A, the MN's `registration` span says `mip.handoff` with code 0, and the proxy's new
//!   trace has NAT not detected.
//!
//! Fails (does not skip) without rotel: run `scripts/otel-tools.sh`. Needs root, the Debian tools of
//! `scripts/setup.sh` and the workspace binaries built with the same profile. The collector is started by
//! `mip_e2e::otel::collector`; what tracing costs under a registration storm is `e2e bench traces`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mip_e2e::system::{self, System, SystemOptions};
use mip_e2e::{Access, Lab, LabOptions, Mode, otel, plan};

static LOCK: Mutex<()> = Mutex::new(());

/// One lab at a time (they share the machine's two cores).
fn serial() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One span as rotel printed it.
#[derive(Debug, Clone, Default)]
struct Span {
    service: String,
    /// The resource's `service.instance.id` (a proxy replica's node address).
    instance: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_id: String,
    /// Start time, Unix nanoseconds.
    start: u128,
    attributes: BTreeMap<String, String>,
    /// Attribute keys rotel printed more than once for this span.
    repeated: Vec<String>,
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// Parses rotel's detailed debug output (the OpenTelemetry collector's debug exporter format):
/// `Resource attributes:` / `-> key: Type(value)` lines, then per span `Span #n`, `Trace ID : ...`,
/// `Parent ID : ...`, `ID : ...`, `Name : ...`, `Attributes:` with `-> key: Type(value)`.
fn parse_rotel(text: &str) -> Vec<Span> {
    let mut spans = Vec::new();
    let mut service = String::new();
    let mut instance = String::new();
    let mut cur: Option<Span> = None;
    let mut in_resource = false;
    let value = |v: &str| -> String {
        let v = v.trim();
        match (v.find('('), v.ends_with(')')) {
            (Some(i), true) => v[i + 1..v.len() - 1].to_string(),
            _ => v.to_string(),
        }
    };
    for line in text.lines() {
        let l = line.trim();
        if l.starts_with("Resource attributes") || l.starts_with("ResourceSpans #") {
            in_resource = l.starts_with("Resource attributes");
            if let Some(s) = cur.take() {
                spans.push(s);
            }
            if l.starts_with("ResourceSpans #") {
                service.clear();
                instance.clear();
            }
            continue;
        }
        if l.starts_with("ScopeSpans #") || l.starts_with("InstrumentationScope") {
            in_resource = false;
            continue;
        }
        if l.starts_with("Span #") {
            in_resource = false;
            if let Some(s) = cur.take() {
                spans.push(s);
            }
            cur = Some(Span {
                service: service.clone(),
                instance: instance.clone(),
                ..Span::default()
            });
            continue;
        }
        if let Some(kv) = l.strip_prefix("-> ") {
            let Some((k, v)) = kv.split_once(": ") else { continue };
            if in_resource {
                match k {
                    "service.name" => service = value(v),
                    "service.instance.id" => instance = value(v),
                    _ => {}
                }
            } else if let Some(s) = cur.as_mut()
                && s.attributes.insert(k.to_string(), value(v)).is_some()
            {
                s.repeated.push(k.to_string());
            }
            continue;
        }
        let Some(s) = cur.as_mut() else { continue };
        if let Some((k, v)) = l.split_once(':') {
            let v = v.trim().to_string();
            match k.trim() {
                "Trace ID" => s.trace_id = v,
                "Parent ID" => s.parent_id = v,
                "ID" => s.span_id = v,
                "Name" => s.name = v,
                "Start time" => s.start = v.parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    if let Some(s) = cur.take() {
        spans.push(s);
    }
    spans
}

/// The spans rotel printed so far.
fn spans(log: &Path) -> Vec<Span> {
    parse_rotel(&std::fs::read_to_string(log).unwrap_or_default())
}

/// Polls rotel's output until `ok` holds (15 s at most: the daemons export every second); returns the spans.
fn spans_until(log: &Path, what: &str, ok: impl Fn(&[Span]) -> bool) -> Vec<Span> {
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        let s = spans(log);
        if ok(&s) {
            return s;
        }
        if Instant::now() >= end {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: String = text
                .chars()
                .rev()
                .take(6000)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            panic!(
                "{what}: not in the collector's output ({} spans parsed); its tail:\n{tail}",
                s.len()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn of<'a>(spans: &'a [Span], service: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.service == service).collect()
}

/// The proxy's registration traces whose root has `attr` = `value`: (root, the trace's spans).
fn proxy_traces<'a>(spans: &'a [Span], attr: &str, value: &str) -> Vec<(&'a Span, Vec<&'a Span>)> {
    of(spans, "mip-proxy")
        .into_iter()
        .filter(|s| s.name == "registration" && s.attr(attr) == Some(value))
        .map(|root| {
            let members = spans.iter().filter(|s| s.trace_id == root.trace_id).collect();
            (root, members)
        })
        .collect()
}

/// A tree of one trace as text (for the test log and docs/observability.md).
fn render(root: &Span, members: &[&Span]) -> String {
    fn line(out: &mut String, s: &Span, depth: usize) {
        let attrs: Vec<String> = s
            .attributes
            .iter()
            .filter(|(k, _)| k.starts_with("mip.") || k.starts_with("network.") || k.starts_with("otel."))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        out.push_str(&format!(
            "{}{} [{}] {}\n",
            "  ".repeat(depth),
            s.name,
            s.service,
            attrs.join(" ")
        ));
    }
    let mut out = String::new();
    line(&mut out, root, 0);
    let mut children: Vec<&&Span> = members.iter().filter(|s| s.parent_id == root.span_id).collect();
    children.sort_by_key(|s| s.start);
    for s in children {
        line(&mut out, s, 1);
        for c in members.iter().filter(|c| c.parent_id == s.span_id) {
            line(&mut out, c, 2);
        }
    }
    out
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
fn two_box_registration_traces_reach_a_real_collector() {
    let _serial = serial();
    let mut lab = lab(Mode::TwoBox);
    let (_collector, out) = otel::collector(&lab, true).unwrap_or_else(|e| panic!("rotel: {e}"));
    let opts = SystemOptions {
        foreign_agents: false,
        tracing_endpoint: Some(otel::collector_endpoint()),
        ..SystemOptions::default()
    };
    // Returns once the MN is registered (through NAT C1) and its VPN is up.
    let sys = System::start(&mut lab, opts).unwrap_or_else(|e| panic!("system start: {e}"));
    let hoa = plan::HOA.to_string();

    // The proxy's first registration: one trace with every step.
    let all = spans_until(&out, "the proxy's registration trace (root and reply)", |s| {
        proxy_traces(s, "mip.home_address", &hoa)
            .iter()
            .any(|(_, m)| m.iter().any(|x| x.name == "reply"))
    });
    let (root, members) = proxy_traces(&all, "mip.home_address", &hoa)
        .into_iter()
        .find(|(_, m)| m.iter().any(|x| x.name == "reply"))
        .unwrap();
    let tree = render(root, &members);
    eprintln!("the proxy's registration trace, as rotel received it:\n{tree}");
    let names: BTreeSet<&str> = members.iter().map(|s| s.name.as_str()).collect();
    for step in ["registration", "receive", "authenticate", "relay", "ha_reply", "reply"] {
        assert!(names.contains(step), "{step} missing: {tree}");
    }
    assert!(!names.contains("replicate"), "no replication in two-box: {tree}");
    for s in &members {
        assert!(s.repeated.is_empty(), "attributes recorded twice: {s:?}");
    }
    for s in members.iter().filter(|s| s.name != "registration") {
        assert_eq!(s.parent_id, root.span_id, "{} is a child of the root: {tree}", s.name);
        assert_eq!(s.service, "mip-proxy");
    }
    assert_eq!(root.attr("mip.care_of_address"), Some("192.168.1.10"), "{tree}");
    assert_eq!(
        root.attr("mip.nat_detected"),
        Some("true"),
        "C1 is behind NAT 1: {tree}"
    );
    assert_eq!(
        root.attr("mip.home_agent"),
        Some(plan::HA_HOME.to_string().as_str()),
        "{tree}"
    );
    assert_eq!(root.attr("mip.reply_code"), Some("0"), "{tree}");
    assert_eq!(root.attr("mip.drop_reason"), None, "{tree}");
    let step = |n: &str| members.iter().find(|s| s.name == n).unwrap();
    assert_eq!(step("authenticate").attr("mip.authenticated"), Some("true"));
    assert_eq!(step("relay").attr("mip.relay_end"), Some("reply"));
    assert_eq!(step("ha_reply").attr("mip.ha_reply_code"), Some("0"));
    assert_eq!(step("reply").attr("mip.reply_code"), Some("0"));

    // The HA's own span: another trace (no context crosses Mobile IP), service mip-ha, code 0.
    let all = spans_until(&out, "the HA's registration span", |s| {
        of(s, "mip-ha")
            .iter()
            .any(|x| x.name == "registration" && x.attr("mip.reply_code") == Some("0"))
    });
    let ha = of(&all, "mip-ha")
        .into_iter()
        .find(|x| x.name == "registration" && x.attr("mip.reply_code") == Some("0"))
        .unwrap();
    eprintln!("the HA's span: {ha:?}");
    assert!(ha.repeated.is_empty(), "attributes recorded twice: {ha:?}");
    assert_eq!(ha.attr("mip.home_address"), Some(hoa.as_str()));
    assert_eq!(
        ha.attr("mip.care_of_address"),
        Some(plan::PROXY_PRIVATE.to_string().as_str())
    );
    assert_ne!(ha.trace_id, root.trace_id, "Mobile IP carries no trace context");

    // No span per data packet: 20 pings through the tunnels add no proxy or HA span.
    std::thread::sleep(Duration::from_millis(2500));
    let count = |s: &[Span]| {
        s.iter()
            .filter(|x| x.service == "mip-proxy" || x.service == "mip-ha")
            .count()
    };
    let before = count(&spans(&out));
    let st = lab.ping("mn", plan::CN, 20).unwrap();
    assert_eq!(st.received, 20, "ping MN → CN {st:?}");
    std::thread::sleep(Duration::from_millis(2500));
    let after_spans = spans(&out);
    let after = count(&after_spans);
    let roots = of(&after_spans, "mip-proxy")
        .iter()
        .filter(|s| s.name == "registration")
        .count();
    // A re-registration of the MN (NAT lifetime) may fall in between: whole traces only, never one per packet.
    assert!(after - before < 20, "{before} spans before 20 pings, {after} after");
    let known = ["registration", "receive", "authenticate", "relay", "ha_reply", "reply"];
    for s in of(&after_spans, "mip-proxy") {
        assert!(known.contains(&s.name.as_str()), "unexpected proxy span {s:?}");
    }
    eprintln!("spans of proxy and HA: {before} before 20 pings, {after} after; proxy registration traces: {roots}");

    // A hand-off to A (routable care-of address): the MN's span says so; the proxy's new trace has no NAT.
    lab.mn_attach(Access::A, false).unwrap();
    system::wait_registered_on(&lab, Access::A, Duration::from_secs(10)).unwrap();
    let coa_a = system::care_of_address(Access::A).to_string();
    let all = spans_until(&out, "the MN's hand-off span and the proxy's trace from A", |s| {
        let mn = of(s, "mip-mn").iter().any(|x| {
            x.name == "registration" && x.attr("mip.handoff") == Some("true") && x.attr("mip.reply_code") == Some("0")
        });
        mn && proxy_traces(s, "mip.care_of_address", &coa_a)
            .iter()
            .any(|(r, _)| r.attr("mip.reply_code") == Some("0"))
    });
    let mn = of(&all, "mip-mn")
        .into_iter()
        .find(|x| x.name == "registration" && x.attr("mip.handoff") == Some("true"))
        .unwrap();
    eprintln!("the MN's hand-off span: {mn:?}");
    assert_eq!(mn.attr("mip.care_of_address"), Some(coa_a.as_str()));
    assert_eq!(mn.attr("mip.previous_care_of_address"), Some("192.168.1.10"));
    assert_eq!(mn.attr("mip.nat_detected"), Some("false"));
    let (root_a, members_a) = proxy_traces(&all, "mip.care_of_address", &coa_a)
        .into_iter()
        .next()
        .unwrap();
    eprintln!("the proxy's trace after the hand-off:\n{}", render(root_a, &members_a));
    assert_eq!(root_a.attr("mip.nat_detected"), Some("false"));
    assert_eq!(
        root_a.attr("mip.identification"),
        mn.attr("mip.identification"),
        "the same request"
    );
    sys.stop();
}

/// An accepted registration trace of `hoa` with an `apply` span of another replica, child of its `replicate`.
fn joined<'a>(s: &'a [Span], hoa: &str) -> Option<(&'a Span, Vec<&'a Span>)> {
    proxy_traces(s, "mip.home_address", hoa).into_iter().find(|(root, m)| {
        root.attr("mip.reply_code") == Some("0")
            && m.iter().any(|a| {
                a.name == "apply"
                    && m.iter()
                        .any(|r| r.name == "replicate" && r.span_id == a.parent_id && r.instance != a.instance)
            })
    })
}

/// Replicas mode with two replicas behind ECMP: the replica that handles the MN's registration publishes the
/// binding change in its `replicate` span, the delta carries the span's `traceparent`, and the other replica's
/// `apply` span joins the same trace as that span's child.
#[test]
fn replicas_apply_spans_join_the_registration_trace() {
    let _serial = serial();
    let mut lab = lab(Mode::Replicas);
    let (_collector, out) = otel::collector(&lab, true).unwrap_or_else(|e| panic!("rotel: {e}"));
    let opts = SystemOptions {
        replicas: 2,
        foreign_agents: false,
        tracing_endpoint: Some(otel::collector_endpoint()),
        ..SystemOptions::default()
    };
    let sys = System::start(&mut lab, opts).unwrap_or_else(|e| panic!("system start: {e}"));
    let hoa = plan::HOA.to_string();
    let all = spans_until(&out, "a registration trace with another replica's apply span", |s| {
        joined(s, &hoa).is_some()
    });
    let (root, members) = joined(&all, &hoa).unwrap();
    let tree = render(root, &members);
    eprintln!(
        "a registration through replica {}, as rotel received it:\n{tree}",
        root.instance
    );
    let names: BTreeSet<&str> = members.iter().map(|s| s.name.as_str()).collect();
    for step in [
        "receive",
        "authenticate",
        "relay",
        "ha_reply",
        "replicate",
        "reply",
        "apply",
    ] {
        assert!(names.contains(step), "{step} missing: {tree}");
    }
    let applies: Vec<&&Span> = members.iter().filter(|s| s.name == "apply").collect();
    for a in &applies {
        let parent = members.iter().find(|s| s.span_id == a.parent_id).unwrap();
        assert_eq!(parent.name, "replicate", "{tree}");
        assert_ne!(a.instance, root.instance, "applied at the other replica: {tree}");
        assert_eq!(a.attr("mip.home_address"), Some(hoa.as_str()), "{a:?}");
    }
    // Both the binding and the replay record of the registration reach the peer.
    let kinds: BTreeSet<&str> = applies.iter().filter_map(|a| a.attr("mip.replicated")).collect();
    assert!(
        kinds.contains("bindings") && kinds.contains("replay"),
        "{kinds:?}: {tree}"
    );
    sys.stop();
}
