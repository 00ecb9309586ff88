//! `mipctl status`: one screen per daemon from its admin address (`GET /status`, see `mip_io::daemon` and
//! docs/metrics.md "`/status`"): role, version, uptime, readiness, bindings, replication peers (proxy), recent
//! registrations with their codes, last errors and the drop counters above zero.
//!
//! With `--json` every daemon's `/status` object is printed on one line with `"admin"` added (JSON lines, in the
//! order of the `--admin` arguments); a daemon that could not be reached is `{"admin": ..., "error": ...}`. The
//! exit status is 3 ([`crate::cli::EXIT_UNREACHABLE`]) when any daemon could not be reached, 0 otherwise.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Map, Value, json};

/// Entries of each list the text screen shows (the JSON has every entry the daemon keeps).
pub const SHOWN: usize = 10;

/// The `/status` object of the daemon at `admin`.
pub fn fetch(admin: SocketAddr, timeout: Duration) -> Result<Value, String> {
    let body = crate::register::admin_get(admin, "/status", timeout)?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{admin}/status: not JSON: {e}"))?;
    if !v.is_object() {
        return Err(format!("{admin}/status: not a JSON object"));
    }
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(format!("{admin}/status: {e}"));
    }
    Ok(v)
}

/// One daemon's result as a `--json` line: the status with `admin` added, or `{"admin", "error"}`.
pub fn json_line(admin: SocketAddr, result: &Result<Value, String>) -> Value {
    match result {
        Ok(Value::Object(fields)) => {
            let mut m = Map::new();
            m.insert("admin".into(), json!(admin.to_string()));
            for (k, v) in fields {
                if k != "admin" {
                    m.insert(k.clone(), v.clone());
                }
            }
            Value::Object(m)
        }
        Ok(other) => json!({"admin": admin.to_string(), "error": format!("not a JSON object: {other}")}),
        Err(e) => json!({"admin": admin.to_string(), "error": e}),
    }
}

/// The binary behind a role.
fn program(role: &str) -> String {
    match role {
        "proxy" | "ha" | "fa" | "mn" => format!("mip-{role}"),
        other => other.to_string(),
    }
}

/// `1h 02m 03s`, `2d 3h 04m`, `45s`.
pub fn duration_text(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d {h}h {m:02}m")
    } else if h > 0 {
        format!("{h}h {m:02}m {s:02}s")
    } else if m > 0 {
        format!("{m}m {s:02}s")
    } else {
        format!("{s}s")
    }
}

/// How long before `now_ms` the entry's `at_unix_ms` was: `3s ago`.
fn age(now_ms: Option<u64>, entry: &Value) -> String {
    match (now_ms, entry.get("at_unix_ms").and_then(Value::as_u64)) {
        (Some(now), Some(at)) => format!("{} ago", duration_text(now.saturating_sub(at) / 1000)),
        _ => "?".into(),
    }
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn num(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// A scalar as plain text (strings unquoted), anything else as compact JSON.
fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

/// Fields the screen shows in its own lines; others the daemon adds are listed as `key: value`.
const KNOWN: &[&str] = &[
    "role",
    "version",
    "pid",
    "admin",
    "started_at_unix_ms",
    "now_unix_ms",
    "uptime_seconds",
    "ready",
    "phase",
    "recent_registrations",
    "last_errors",
    "drops",
    "key_reloads",
    "bindings",
    "pending_requests",
    "visitors",
    "mode",
    "replication",
    "mobile_node",
];

/// One daemon's screen.
pub fn render(admin: SocketAddr, result: &Result<Value, String>, out: &mut String) {
    let v = match result {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(out, "{admin}: unreachable: {e}");
            return;
        }
    };
    let role = text(v, "role").unwrap_or("?");
    let _ = writeln!(
        out,
        "{} ({role}) at {admin}: version {}, pid {}",
        program(role),
        text(v, "version").unwrap_or("?"),
        v.get("pid").map_or_else(|| "?".into(), plain),
    );
    let uptime = v
        .get("uptime_seconds")
        .and_then(Value::as_f64)
        .map_or_else(|| "?".into(), |s| duration_text(s as u64));
    let ready = match v.get("ready").and_then(Value::as_bool) {
        Some(true) => "ready",
        Some(false) => "NOT READY",
        None => "readiness unknown",
    };
    let _ = writeln!(out, "  up {uptime}, {ready} ({})", text(v, "phase").unwrap_or("?"));

    let mut counts = Vec::new();
    if let Some(b) = v.get("bindings") {
        counts.push(format!("bindings {}", plain(b)));
    }
    if let Some(n) = v.get("visitors") {
        counts.push(format!("visitors {}", plain(n)));
    }
    if let Some(n) = v.get("pending_requests") {
        counts.push(format!("pending requests {}", plain(n)));
    }
    if let Some(m) = text(v, "mode") {
        counts.push(format!("mode {m}"));
    }
    if !counts.is_empty() {
        let _ = writeln!(out, "  {}", counts.join(", "));
    }
    if let Some(mn) = v.get("mobile_node") {
        mobile_node(mn, out);
    }
    if let Some(r) = v.get("replication") {
        replication(r, out);
    }
    if let Some(fields) = v.as_object() {
        for (k, val) in fields.iter().filter(|(k, _)| !KNOWN.contains(&k.as_str())) {
            let _ = writeln!(out, "  {k}: {}", plain(val));
        }
    }

    let now = num(v, "now_unix_ms");
    registrations(now, v.get("recent_registrations"), out);
    errors(now, v.get("last_errors"), out);
    let drops: Vec<String> = v
        .get("drops")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|d| {
            format!(
                "{}/{} {}",
                text(d, "path").unwrap_or("?"),
                text(d, "reason").unwrap_or("?"),
                num(d, "count").unwrap_or(0)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "  drops since start: {}",
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(", ")
        }
    );
    if let Some(k) = v.get("key_reloads") {
        let _ = writeln!(
            out,
            "  key reloads: {} ok, {} failed",
            num(k, "ok").unwrap_or(0),
            num(k, "error").unwrap_or(0)
        );
    }
}

fn mobile_node(mn: &Value, out: &mut String) {
    let mut parts = vec![format!("state {}", text(mn, "state").unwrap_or("?"))];
    if let Some(h) = text(mn, "home_address") {
        parts.push(format!("home address {h}"));
    }
    if let Some(c) = text(mn, "care_of_address") {
        parts.push(format!("care-of {c}"));
    }
    if let Some(t) = mn.get("tunnel").filter(|t| !t.is_null()) {
        parts.push(format!("tunnel {}", plain(t)));
    }
    let _ = writeln!(out, "  mobile node: {}", parts.join(", "));
}

fn replication(r: &Value, out: &mut String) {
    if r.get("enabled").and_then(Value::as_bool) != Some(true) {
        let _ = writeln!(out, "  replication: off");
        return;
    }
    let peers = r.get("peers").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    let connected = peers
        .iter()
        .filter(|p| p.get("connected").and_then(Value::as_bool) == Some(true))
        .count();
    let caught_up = if r.get("caught_up").and_then(Value::as_bool) == Some(true) {
        "caught up"
    } else {
        "NOT caught up"
    };
    let _ = writeln!(
        out,
        "  replication: replica {}, {caught_up}, {} peers ({connected} connected), {} subscribers, {} published, {} overflows",
        r.get("replica_id").map_or_else(|| "?".into(), plain),
        peers.len(),
        num(r, "subscribers").unwrap_or(0),
        num(r, "published").unwrap_or(0),
        num(r, "overflows").unwrap_or(0),
    );
    for p in peers {
        let flag = |key: &str, yes: &str, no: &str| {
            if p.get(key).and_then(Value::as_bool) == Some(true) {
                yes.to_string()
            } else {
                no.to_string()
            }
        };
        let lag = match (num(p, "lag_ms_p50"), num(p, "lag_ms_p99")) {
            (Some(a), Some(b)) => format!("lag p50 {a} ms, p99 {b} ms"),
            _ => "lag -".into(),
        };
        let mut line = format!(
            "    peer {} replica {}: {}, {}, {lag}",
            text(p, "addr").unwrap_or("?"),
            p.get("replica_id").map_or_else(|| "?".into(), plain),
            flag("connected", "connected", "DISCONNECTED"),
            flag("snapshot_received", "snapshot received", "no snapshot yet"),
        );
        if let Some(e) = text(p, "last_error") {
            let _ = write!(line, ", last error: {e}");
        }
        let _ = writeln!(out, "{line}");
    }
}

fn registrations(now: Option<u64>, list: Option<&Value>, out: &mut String) {
    let list = list.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    if list.is_empty() {
        let _ = writeln!(out, "  recent registrations: none");
        return;
    }
    let _ = writeln!(out, "  recent registrations (newest first):");
    for r in list.iter().take(SHOWN) {
        let node = match text(r, "nai") {
            Some(nai) => format!("{} ({nai})", text(r, "home_address").unwrap_or("?")),
            None => text(r, "home_address").unwrap_or("?").to_string(),
        };
        let code = num(r, "code").map_or_else(|| "?".into(), |c| c.to_string());
        let mut line = format!(
            "    {:<10} {node}  care-of {}  HA {}  code {code} {}",
            age(now, r),
            text(r, "care_of_address").unwrap_or("?"),
            text(r, "home_agent").unwrap_or("-"),
            text(r, "code_text").unwrap_or(""),
        );
        if r.get("accepted").and_then(Value::as_bool) == Some(true) {
            let _ = write!(line, ", lifetime {} s", num(r, "lifetime").unwrap_or(0));
        }
        if r.get("nat_detected").and_then(Value::as_bool) == Some(true) {
            line.push_str(", NAT");
        }
        let _ = writeln!(out, "{line}");
    }
    if list.len() > SHOWN {
        let _ = writeln!(out, "    … {} more (--json)", list.len() - SHOWN);
    }
}

fn errors(now: Option<u64>, list: Option<&Value>, out: &mut String) {
    let list = list.and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    if list.is_empty() {
        let _ = writeln!(out, "  last errors: none");
        return;
    }
    let _ = writeln!(out, "  last errors (newest first):");
    for e in list.iter().take(SHOWN) {
        let mut line = format!(
            "    {:<10} {} {}",
            age(now, e),
            text(e, "kind").unwrap_or("?"),
            text(e, "what").unwrap_or("?")
        );
        if let Some(p) = text(e, "peer") {
            let _ = write!(line, " ({p})");
        }
        if let Some(d) = text(e, "detail") {
            let _ = write!(line, ": {d}");
        }
        if let Some(n) = num(e, "count").filter(|n| *n > 1) {
            let _ = write!(line, " ×{n}");
        }
        let _ = writeln!(out, "{line}");
    }
    if list.len() > SHOWN {
        let _ = writeln!(out, "    … {} more (--json)", list.len() - SHOWN);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn proxy_status() -> Value {
        json!({
            "role": "proxy", "version": "0.1.0", "pid": 42, "admin": "0.0.0.0:9434",
            "started_at_unix_ms": 1_700_000_000_000u64, "now_unix_ms": 1_700_003_723_000u64,
            "uptime_seconds": 3723.4, "ready": true, "phase": "serving",
            "bindings": 1, "pending_requests": 0, "mode": "two_box",
            "replication": {
                "enabled": true, "replica_id": 7, "caught_up": true, "subscribers": 1, "published": 12,
                "overflows": 0, "snapshots_sent": 1,
                "peers": [
                    {"addr": "10.0.0.2:7000", "replica_id": 8, "connected": true, "snapshot_received": true,
                     "lag_ms_p50": 1, "lag_ms_p99": 3, "last_error": null},
                    {"addr": "10.0.0.3:7000", "replica_id": null, "connected": false,
                     "snapshot_received": false, "lag_ms_p50": null, "lag_ms_p99": null,
                     "last_error": "connection refused"}
                ]
            },
            "recent_registrations": [
                {"at_unix_ms": 1_700_003_720_000u64, "home_address": "10.10.1.50", "nai": "joe@example.com",
                 "care_of_address": "192.0.2.10", "home_agent": "10.10.1.1", "code": 0,
                 "code_text": "accepted", "accepted": true, "lifetime": 600, "nat_detected": true},
                {"at_unix_ms": 1_700_003_600_000u64, "home_address": "10.10.1.50", "nai": null,
                 "care_of_address": "192.0.2.10", "home_agent": "10.10.1.1", "code": 131,
                 "code_text": "home agent: mobile node failed authentication", "accepted": false,
                 "lifetime": 0, "nat_detected": false}
            ],
            "last_errors": [
                {"at_unix_ms": 1_700_003_722_000u64, "first_unix_ms": 1_700_003_700_000u64, "count": 3,
                 "kind": "drop", "what": "bad_authenticator", "peer": "203.0.113.9:434", "detail": null},
                {"at_unix_ms": 1_700_000_100_000u64, "first_unix_ms": 1_700_000_100_000u64, "count": 1,
                 "kind": "error", "what": "keys_reload", "peer": null, "detail": "keys.yaml: bad key"}
            ],
            "drops": [{"path": "control", "reason": "bad_authenticator", "count": 3},
                      {"path": "data", "reason": "not_bound", "count": 1}],
            "key_reloads": {"ok": 2, "error": 1},
            "extra_field": "shown too"
        })
    }

    const ADMIN: &str = "127.0.0.1:9434";

    #[test]
    fn durations() {
        assert_eq!(duration_text(0), "0s");
        assert_eq!(duration_text(59), "59s");
        assert_eq!(duration_text(61), "1m 01s");
        assert_eq!(duration_text(3723), "1h 02m 03s");
        assert_eq!(duration_text(2 * 86_400 + 3 * 3600 + 4 * 60 + 5), "2d 3h 04m");
    }

    #[test]
    fn text_screen_of_a_proxy() {
        let mut out = String::new();
        render(ADMIN.parse().unwrap(), &Ok(proxy_status()), &mut out);
        let expected = "\
mip-proxy (proxy) at 127.0.0.1:9434: version 0.1.0, pid 42
  up 1h 02m 03s, ready (serving)
  bindings 1, pending requests 0, mode two_box
  replication: replica 7, caught up, 2 peers (1 connected), 1 subscribers, 12 published, 0 overflows
    peer 10.0.0.2:7000 replica 8: connected, snapshot received, lag p50 1 ms, p99 3 ms
    peer 10.0.0.3:7000 replica -: DISCONNECTED, no snapshot yet, lag -, last error: connection refused
  extra_field: shown too
  recent registrations (newest first):
    3s ago     10.10.1.50 (joe@example.com)  care-of 192.0.2.10  HA 10.10.1.1  code 0 accepted, lifetime 600 s, NAT
    2m 03s ago 10.10.1.50  care-of 192.0.2.10  HA 10.10.1.1  code 131 home agent: mobile node failed authentication
  last errors (newest first):
    1s ago     drop bad_authenticator (203.0.113.9:434) ×3
    1h 00m 23s ago error keys_reload: keys.yaml: bad key
  drops since start: control/bad_authenticator 3, data/not_bound 1
  key reloads: 2 ok, 1 failed
";
        assert_eq!(out, expected, "\n{out}");
    }

    #[test]
    fn text_screen_of_a_mobile_node_and_of_an_unreachable_daemon() {
        let v = json!({
            "role": "mn", "version": "0.1.0", "pid": 9, "uptime_seconds": 5.0, "ready": false,
            "phase": "draining", "now_unix_ms": 10_000, "bindings": 1,
            "mobile_node": {"home_address": "10.10.1.50", "state": "registered",
                            "care_of_address": "192.0.2.10", "tunnel": {"type": "ipip"}},
            "recent_registrations": [], "last_errors": [], "drops": [], "key_reloads": {"ok": 0, "error": 0}
        });
        let mut out = String::new();
        render(ADMIN.parse().unwrap(), &Ok(v), &mut out);
        assert!(
            out.starts_with("mip-mn (mn) at 127.0.0.1:9434: version 0.1.0, pid 9\n"),
            "{out}"
        );
        assert!(out.contains("  up 5s, NOT READY (draining)\n"), "{out}");
        assert!(
            out.contains(
                "  mobile node: state registered, home address 10.10.1.50, care-of 192.0.2.10, tunnel {\"type\":\"ipip\"}\n"
            ),
            "{out}"
        );
        assert!(out.contains("  recent registrations: none\n  last errors: none\n  drops since start: none\n"));
        let mut out = String::new();
        render(
            ADMIN.parse().unwrap(),
            &Err("connect 127.0.0.1:9434: refused".into()),
            &mut out,
        );
        assert_eq!(out, "127.0.0.1:9434: unreachable: connect 127.0.0.1:9434: refused\n");
    }

    #[test]
    fn long_lists_are_cut_on_screen_not_in_json() {
        let mut v = proxy_status();
        let one = v["recent_registrations"][0].clone();
        v["recent_registrations"] = Value::Array(vec![one; SHOWN + 5]);
        let mut out = String::new();
        render(ADMIN.parse().unwrap(), &Ok(v.clone()), &mut out);
        assert_eq!(out.matches("joe@example.com").count(), SHOWN);
        assert!(out.contains("    … 5 more (--json)\n"), "{out}");
        let line = json_line(ADMIN.parse().unwrap(), &Ok(v));
        assert_eq!(line["recent_registrations"].as_array().unwrap().len(), SHOWN + 5);
    }

    #[test]
    fn json_lines_name_the_admin_address() {
        let a: SocketAddr = ADMIN.parse().unwrap();
        let line = json_line(a, &Ok(proxy_status()));
        assert_eq!(
            line["admin"], "127.0.0.1:9434",
            "the address asked, not the one the daemon listens on"
        );
        assert_eq!(line["role"], "proxy");
        assert_eq!(line["recent_registrations"][0]["code"], 0);
        let keys: Vec<&String> = line.as_object().unwrap().keys().collect();
        assert_eq!(keys[0], "admin", "admin first");
        let line = json_line(a, &Err("refused".into()));
        assert_eq!(line, json!({"admin": "127.0.0.1:9434", "error": "refused"}));
    }
}
