//! One trace per registration (issue 7), built from the relay's outputs ([`ProxyOutput`]): the sans-IO relay
//! knows nothing of traces, the service tells this module what arrived and what the relay did.
//!
//! ```text
//! registration            root, from the request's arrival to the reply to the node (or the drop);
//! │                       mip.home_address, mip.nai, mip.care_of_address, mip.nat_detected, mip.home_agent,
//! │                       mip.identification, mip.reply_code, mip.drop_reason
//! ├── receive             the request's turn: parsed, authenticated, checked, relayed request built
//! ├── authenticate        the MN-HA verdict (mip.authenticated); absent when the request was refused before
//! ├── relay               relayed request → the home agent's reply (mip.home_agent; mip.relay_end)
//! ├── ha_reply            the reply's turn: authenticated, binding installed (mip.ha_reply_code)
//! ├── replicate           one per binding change published to peer replicas (their `apply` spans are children)
//! └── reply               the reply to the node (mip.reply_code, mip.lifetime)
//! ```
//!
//! The HA's reply arrives in a later turn of the loop: the root and `relay` spans wait in a table keyed like the
//! relay's pending requests (node + Identification), bounded like it (`max_pending`, at most 65,536); the relay's
//! [`ProxyOutput::PendingDone`] takes them out (reply, ICMP error, timeout). An entry older than the pending
//! timeout (it should never be) is ended with an event. Nothing here runs unless traces are exported
//! ([`mip_io::telemetry::active`]), and nothing is traced per data packet: only Registration Requests (type 1)
//! start a trace.

use core::net::{Ipv4Addr, SocketAddrV4};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use mip::roles::proxy::{PendingEnd, ProxyOutput};
use mip::roles::{BindingChange, DropReason, RegistrationOutcome};
use tracing::Span;
use tracing::field::Empty;

/// Registration Request message type.
const TYPE_REQUEST: u8 = 1;

/// How a pending trace is found: as the relay matches its pending requests.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    identification: u64,
    home_address: Ipv4Addr,
    nai: Option<Box<str>>,
}

/// The spans of one registration.
#[derive(Debug)]
struct Trace {
    root: Span,
    /// The span of the turn being handled: `receive` or `ha_reply`.
    step: Option<Span>,
    /// `relay`, open while the request waits for its home agent.
    relay: Option<Span>,
    /// `reply`, open until the turn's datagrams are sent.
    reply: Option<Span>,
    /// This turn handles the node's request (an `authenticate` span is due).
    request_turn: bool,
    authenticated: bool,
    /// Parked for the HA's reply under this key at the end of the turn.
    park: Option<Key>,
    since: Instant,
    /// What the root has recorded (an OpenTelemetry span keeps every value recorded: each once, unless it
    /// changes).
    recorded: Recorded,
}

/// The root's attributes recorded so far.
#[derive(Debug, Default)]
struct Recorded {
    home_address: Option<Ipv4Addr>,
    care_of_address: Option<Ipv4Addr>,
    home_agent: Option<Ipv4Addr>,
    nat_detected: Option<bool>,
}

impl Recorded {
    /// Records `value` as `key` on `span` unless `slot` holds it already.
    fn set<T: PartialEq + Copy + std::fmt::Display>(span: &Span, slot: &mut Option<T>, key: &str, value: T) {
        if *slot != Some(value) {
            *slot = Some(value);
            span.record(key, tracing::field::display(value));
        }
    }
}

impl Trace {
    /// Ends the spans children first, so each closes before its parent.
    fn end(mut self) {
        drop(self.reply.take());
        drop(self.step.take());
        drop(self.relay.take());
        drop(self.root);
    }

    fn authenticate(&mut self, ok: bool) {
        if self.request_turn && !self.authenticated {
            self.authenticated = true;
            let _span = tracing::info_span!(target: "mip_trace", parent: &self.root, "authenticate",
                mip.authenticated = ok);
        }
    }
}

/// The registration traces of one proxy ([`crate::service`] calls it around the relay).
#[derive(Debug)]
pub struct RegistrationTraces {
    enabled: bool,
    /// The registration of the input being handled.
    current: Option<Trace>,
    /// Registrations waiting for their home agent.
    pending: HashMap<Key, Trace>,
    cap: usize,
    max_age: Duration,
    last_prune: Instant,
}

/// Drop reasons that leave a request unauthenticated (before or at the MN-HA check).
fn before_authentication(r: DropReason) -> Option<bool> {
    match r {
        DropReason::Malformed(_)
        | DropReason::UnexpectedMessage
        | DropReason::NoAuthExtension
        | DropReason::NoSecurityAssociation
        | DropReason::NoIdentity => None,
        DropReason::BadAuthenticator => Some(false),
        _ => Some(true),
    }
}

impl RegistrationTraces {
    /// Traces registrations if `enabled` (traces are exported: [`mip_io::telemetry::active`]); keeps at most
    /// `cap` waiting for their home agent, none longer than `max_age` (the relay's pending timeout) plus a second.
    pub fn new(enabled: bool, cap: usize, max_age: Duration) -> Self {
        RegistrationTraces {
            enabled,
            current: None,
            pending: HashMap::new(),
            cap: cap.max(1),
            max_age: max_age + Duration::from_secs(1),
            last_prune: Instant::now(),
        }
    }

    /// Registrations waiting for their home agent.
    pub fn waiting(&self) -> usize {
        self.pending.len()
    }

    /// A datagram for the relay arrived at `proxy_public` from `src`: a Registration Request starts a trace
    /// (the claimed home address, care-of address and Identification are recorded at once, so a request
    /// dropped unauthenticated still says whose it claimed to be).
    pub fn receive(&mut self, src: SocketAddrV4, payload: &[u8]) {
        if !self.enabled || payload.first() != Some(&TYPE_REQUEST) {
            return;
        }
        if let Some(t) = self.current.take() {
            t.end();
        }
        if !mip_io::telemetry::sample_root() {
            // Not in the sample: no span at all (the draw is the whole cost of an unsampled registration).
            return;
        }
        let addr = |at: usize| {
            payload
                .get(at..at + 4)
                .and_then(|b| <[u8; 4]>::try_from(b).ok())
                .map(Ipv4Addr::from)
        };
        let ident = payload
            .get(16..24)
            .and_then(|b| <[u8; 8]>::try_from(b).ok())
            .map(u64::from_be_bytes);
        let root = tracing::info_span!(target: "mip_trace", "registration",
            otel.kind = "server",
            otel.status_code = Empty,
            mip.home_address = Empty,
            mip.nai = Empty,
            mip.care_of_address = Empty,
            mip.identification = Empty,
            mip.nat_detected = Empty,
            mip.home_agent = Empty,
            mip.reply_code = Empty,
            mip.drop_reason = Empty,
        );
        let mut recorded = Recorded::default();
        if let Some(a) = addr(4) {
            Recorded::set(&root, &mut recorded.home_address, "mip.home_address", a);
        }
        if let Some(a) = addr(12) {
            Recorded::set(&root, &mut recorded.care_of_address, "mip.care_of_address", a);
        }
        if let Some(i) = ident {
            root.record("mip.identification", tracing::field::display(format_args!("{i:016x}")));
        }
        if !mip_io::telemetry::is_sampled(&root) {
            // The SDK did not keep it after all (no exporter in this subscriber): no children, nothing kept.
            return;
        }
        let step = tracing::info_span!(target: "mip_trace", parent: &root, "receive",
            network.transport = "udp",
            network.peer.address = %src.ip(),
            network.peer.port = i64::from(src.port()),
            mip.message_bytes = i64::try_from(payload.len()).unwrap_or(i64::MAX));
        self.current = Some(Trace {
            root,
            step: Some(step),
            relay: None,
            reply: None,
            request_turn: true,
            authenticated: false,
            park: None,
            since: Instant::now(),
            recorded,
        });
    }

    /// One output of the relay, before the service acts on it.
    pub fn output(&mut self, o: &ProxyOutput) {
        if !self.enabled {
            return;
        }
        match o {
            ProxyOutput::Relayed {
                home_address,
                home_agent,
                identification,
                nai,
                care_of_address,
                nat_detected,
            } => {
                let Some(t) = self.current.as_mut() else { return };
                t.authenticate(true);
                let (r, rec) = (&t.root, &mut t.recorded);
                Recorded::set(r, &mut rec.home_address, "mip.home_address", *home_address);
                if let Some(n) = nai {
                    r.record("mip.nai", &**n);
                }
                Recorded::set(r, &mut rec.care_of_address, "mip.care_of_address", *care_of_address);
                if rec.nat_detected != Some(*nat_detected) {
                    rec.nat_detected = Some(*nat_detected);
                    r.record("mip.nat_detected", *nat_detected);
                }
                Recorded::set(r, &mut rec.home_agent, "mip.home_agent", *home_agent);
                t.relay = Some(tracing::info_span!(target: "mip_trace", parent: &t.root, "relay",
                    otel.kind = "client",
                    mip.home_agent = %home_agent,
                    mip.relay_end = Empty));
                t.park = Some(Key {
                    identification: *identification,
                    home_address: *home_address,
                    nai: nai.clone(),
                });
            }
            ProxyOutput::PendingDone {
                home_address,
                nai,
                identification,
                end,
                ..
            } => {
                // Several in one turn (an ICMP error about a home agent ends all its requests): one at a time.
                self.finish_current();
                let key = Key {
                    identification: *identification,
                    home_address: *home_address,
                    nai: nai.clone(),
                };
                let Some(mut t) = self.pending.remove(&key) else { return };
                if let Some(relay) = t.relay.take() {
                    let how = match end {
                        PendingEnd::Reply(_) => "reply",
                        PendingEnd::Unreachable(_) => "unreachable",
                        PendingEnd::Timeout => "timeout",
                    };
                    relay.record("mip.relay_end", how);
                    match end {
                        PendingEnd::Unreachable(code) => {
                            let icmp_code = i64::from(*code);
                            tracing::info!(target: "mip_trace", parent: &relay, icmp_code, "home agent unreachable");
                        }
                        PendingEnd::Timeout => {
                            tracing::info!(target: "mip_trace", parent: &relay, "no reply from the home agent")
                        }
                        PendingEnd::Reply(_) => {}
                    }
                }
                if let PendingEnd::Reply(code) = end {
                    t.step = Some(tracing::info_span!(target: "mip_trace", parent: &t.root, "ha_reply",
                        mip.ha_reply_code = i64::from(code.value())));
                }
                t.request_turn = false;
                self.current = Some(t);
            }
            ProxyOutput::Outcome(o) => {
                let Some(t) = self.current.as_mut() else { return };
                t.authenticate(o.code != mip::wire::ReplyCode::HaMnAuthFailed);
                Self::record_outcome(t, o);
            }
            ProxyOutput::Drop(reason) => {
                let Some(t) = self.current.as_mut() else { return };
                if let Some(ok) = before_authentication(*reason) {
                    t.authenticate(ok);
                }
                t.root.record("mip.drop_reason", reason.as_str());
                t.root.record("otel.status_code", "error");
            }
            ProxyOutput::Send(_) | ProxyOutput::Binding(_) => {}
        }
    }

    fn record_outcome(t: &mut Trace, o: &RegistrationOutcome) {
        let (r, rec) = (&t.root, &mut t.recorded);
        let code = i64::from(o.code.value());
        r.record("mip.reply_code", code);
        if !o.home_address.is_unspecified() {
            Recorded::set(r, &mut rec.home_address, "mip.home_address", o.home_address);
        }
        Recorded::set(r, &mut rec.care_of_address, "mip.care_of_address", o.care_of_address);
        if rec.nat_detected != Some(o.nat_detected) {
            rec.nat_detected = Some(o.nat_detected);
            r.record("mip.nat_detected", o.nat_detected);
        }
        if let Some(ha) = o.home_agent {
            Recorded::set(r, &mut rec.home_agent, "mip.home_agent", ha);
        }
        if !o.code.is_accepted() {
            r.record("otel.status_code", "error");
        }
        // The HA's reply is handled: what follows is the answer to the node.
        drop(t.step.take());
        t.reply = Some(tracing::info_span!(target: "mip_trace", parent: &t.root, "reply",
            mip.reply_code = code,
            mip.lifetime = i64::from(o.lifetime)));
    }

    /// A binding change of the current registration is about to be published to the peer replicas: its
    /// `replicate` span (keep it until the publication is done) and the span's `traceparent` for the deltas.
    /// `None` outside a registration (expiry, keepalive) or without traces.
    pub fn replicate(&mut self, change: &BindingChange) -> Option<(Span, String)> {
        let t = self.current.as_ref()?;
        let span = tracing::info_span!(target: "mip_trace", parent: &t.root, "replicate",
            mip.binding_change = ?change.kind,
            mip.care_of_address = %change.binding.care_of_address);
        let tp = mip_io::telemetry::traceparent(&span)?;
        Some((span, tp))
    }

    /// The turn's outputs were acted on and its datagrams sent: a relayed registration waits for its home agent,
    /// any other ends.
    pub fn end_turn(&mut self) {
        if !self.enabled {
            return;
        }
        self.finish_current();
        if self.last_prune.elapsed() >= self.max_age {
            self.prune();
        }
    }

    fn finish_current(&mut self) {
        let Some(mut t) = self.current.take() else { return };
        let Some(key) = t.park.take() else {
            t.end();
            return;
        };
        drop(t.step.take());
        if self.pending.len() >= self.cap && !self.pending.contains_key(&key) {
            self.prune();
        }
        if self.pending.len() >= self.cap && !self.pending.contains_key(&key) {
            tracing::info!(target: "mip_trace", parent: &t.root, "trace table full: not followed further");
            t.end();
            return;
        }
        t.request_turn = false;
        if let Some(old) = self.pending.insert(key, t) {
            // A retransmission (same node, same Identification) was relayed again: the relay replaced the first.
            tracing::info!(target: "mip_trace", parent: &old.root, "superseded by a retransmission");
            old.end();
        }
    }

    /// Ends the traces older than `max_age` (their pending request is gone without a `PendingDone`).
    fn prune(&mut self) {
        let max_age = self.max_age;
        self.last_prune = Instant::now();
        let old: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, t)| t.since.elapsed() > max_age)
            .map(|(k, _)| k.clone())
            .collect();
        for k in old {
            if let Some(t) = self.pending.remove(&k) {
                tracing::info!(target: "mip_trace", parent: &t.root, "forgotten: no end from the relay");
                t.end();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mip::auth::{Algorithm, Key, SecurityAssociation, Spi};
    use mip::keystore::KeyStore;
    use mip::replay::ReplayStyle;
    use mip::roles::proxy::{HomeAgentEntry, Proxy, ProxyConfig, ProxyInput};
    use mip::roles::{Datagram, Now};
    use mip::time::{Instant as MipInstant, NtpTimestamp};
    use mip::wire::{AuthKind, Dialect, MessageWriter, ReplyCode, ReplyRepr, RequestFlags, RequestRepr};
    use opentelemetry_sdk::trace::{Sampler, SpanData};

    const PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
    const PRIV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
    const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
    const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
    const COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
    const SECONDS: u32 = 0xec4e_5a00;

    fn sa(key: &str) -> SecurityAssociation {
        SecurityAssociation::new(
            Spi::new(0x100).unwrap(),
            Algorithm::HmacMd5,
            Key::from_hex(key).unwrap(),
            ReplayStyle::default(),
        )
    }
    const KEY: &str = "000102030405060708090a0b0c0d0e0f";

    fn proxy() -> Proxy {
        let mut keys = KeyStore::new();
        keys.insert_peer(HOA, sa(KEY)).unwrap();
        let ha = HomeAgentEntry {
            address: HA,
            home_networks: vec!["10.10.1.0/24".parse().unwrap()],
            dynamic_assignment: false,
        };
        Proxy::new(ProxyConfig::new(PUB, PRIV, vec![ha]), keys, 1)
    }

    fn request(id: u64, key: &str) -> Vec<u8> {
        let req = RequestRepr {
            flags: RequestFlags(RequestFlags::D | RequestFlags::T),
            lifetime: 600,
            home_address: HOA,
            home_agent: PUB,
            care_of_address: COA,
            identification: id,
        };
        let mut a = vec![0u8; 64];
        let mut w = MessageWriter::request(&mut a, &req, &Dialect::default()).unwrap();
        w.push_auth(AuthKind::MobileHome, &sa(key)).unwrap();
        w.as_bytes().to_vec()
    }

    fn reply(id: u64) -> Vec<u8> {
        let rep = ReplyRepr {
            code: ReplyCode::Accepted,
            lifetime: 600,
            home_address: HOA,
            home_agent: HA,
            identification: id,
        };
        let mut b = vec![0u8; 64];
        let mut w = MessageWriter::reply(&mut b, &rep, &Dialect::default()).unwrap();
        w.push_auth(AuthKind::MobileHome, &sa(KEY)).unwrap();
        w.as_bytes().to_vec()
    }

    fn at(secs: u64) -> Now {
        Now::new(
            MipInstant::from_secs(1000 + secs),
            NtpTimestamp::new(SECONDS + secs as u32, 0),
        )
    }

    /// What the service does for one input: the trace hooks around the relay.
    fn turn(p: &mut Proxy, t: &mut RegistrationTraces, now: Now, input: ProxyInput<'_>) -> Vec<ProxyOutput> {
        if let ProxyInput::FromMobile(d) = &input {
            t.receive(d.src, d.payload);
        }
        let mut out = Vec::new();
        p.handle(now, input, &mut out);
        for o in &out {
            t.output(o);
            if let ProxyOutput::Binding(c) = o {
                drop(t.replicate(c));
            }
        }
        t.end_turn();
        out
    }

    fn from_mn(payload: &[u8]) -> ProxyInput<'_> {
        ProxyInput::FromMobile(Datagram {
            src: SocketAddrV4::new(COA, 434),
            dst: SocketAddrV4::new(PUB, 434),
            ttl: 64,
            payload,
        })
    }

    fn from_ha(payload: &[u8]) -> ProxyInput<'_> {
        ProxyInput::FromHomeAgent(Datagram {
            src: SocketAddrV4::new(HA, 434),
            dst: SocketAddrV4::new(PRIV, 434),
            ttl: 64,
            payload,
        })
    }

    /// Runs `f` with a subscriber exporting spans of `mip_trace` into memory; returns the finished spans.
    fn traced(f: impl FnOnce()) -> Vec<SpanData> {
        traced_with(Sampler::AlwaysOn, f)
    }

    fn traced_with(sampler: Sampler, f: impl FnOnce()) -> Vec<SpanData> {
        mip_io::telemetry::capture_spans(sampler, f).1
    }

    fn attr(s: &SpanData, key: &str) -> Option<String> {
        s.attributes
            .iter()
            .find(|kv| kv.key.as_str() == key)
            .map(|kv| kv.value.to_string())
    }

    fn named<'a>(spans: &'a [SpanData], name: &str) -> Vec<&'a SpanData> {
        spans.iter().filter(|s| s.name == name).collect()
    }

    /// An accepted registration is one trace: the root with the node's attributes, and receive, authenticate,
    /// relay (open across the two turns), ha_reply, replicate and reply as its children.
    #[test]
    fn an_accepted_registration_is_one_trace() {
        let id = (u64::from(SECONDS) << 32) | 1;
        let mut waiting = 0;
        let spans = traced(|| {
            let mut p = proxy();
            let mut t = RegistrationTraces::new(true, 16, Duration::from_secs(7));
            let rq = request(id, KEY);
            turn(&mut p, &mut t, at(0), from_mn(&rq));
            waiting = t.waiting();
            let out = turn(&mut p, &mut t, at(0), from_ha(&reply(id)));
            assert!(out.iter().any(|o| matches!(o, ProxyOutput::Outcome(_))), "{out:?}");
            assert_eq!(t.waiting(), 0);
        });
        assert_eq!(waiting, 1, "the relayed registration waits for the HA");
        let names: Vec<&str> = spans.iter().map(|s| &*s.name).collect();
        for n in [
            "registration",
            "receive",
            "authenticate",
            "relay",
            "ha_reply",
            "replicate",
            "reply",
        ] {
            assert_eq!(named(&spans, n).len(), 1, "{n} in {names:?}");
        }
        assert_eq!(spans.len(), 7, "{names:?}");
        let root = named(&spans, "registration")[0];
        for s in &spans {
            assert_eq!(s.span_context.trace_id(), root.span_context.trace_id(), "{}", s.name);
            if s.name != "registration" {
                assert_eq!(
                    s.parent_span_id,
                    root.span_context.span_id(),
                    "{} is the root's child",
                    s.name
                );
            }
        }
        let a = |k| attr(root, k);
        assert_eq!(a("mip.home_address").as_deref(), Some("10.10.1.50"));
        assert_eq!(a("mip.care_of_address").as_deref(), Some("192.0.2.10"));
        assert_eq!(a("mip.home_agent").as_deref(), Some("10.10.1.1"));
        assert_eq!(a("mip.nat_detected").as_deref(), Some("false"));
        assert_eq!(a("mip.reply_code").as_deref(), Some("0"));
        assert_eq!(a("mip.identification").as_deref(), Some(format!("{id:016x}").as_str()));
        assert_eq!(a("mip.drop_reason"), None);
        for key in [
            "mip.home_address",
            "mip.care_of_address",
            "mip.home_agent",
            "mip.nat_detected",
        ] {
            let n = root.attributes.iter().filter(|kv| kv.key.as_str() == key).count();
            assert_eq!(n, 1, "{key} recorded once: {:?}", root.attributes);
        }
        assert!(
            root.attributes
                .iter()
                .any(|kv| kv.key.as_str() == "mip.reply_code" && kv.value == opentelemetry::Value::I64(0)),
            "numbers are numbers"
        );
        let relay = named(&spans, "relay")[0];
        assert_eq!(attr(relay, "mip.relay_end").as_deref(), Some("reply"));
        assert_eq!(
            attr(named(&spans, "authenticate")[0], "mip.authenticated").as_deref(),
            Some("true")
        );
        assert_eq!(
            attr(named(&spans, "ha_reply")[0], "mip.ha_reply_code").as_deref(),
            Some("0")
        );
        assert_eq!(attr(named(&spans, "reply")[0], "mip.reply_code").as_deref(), Some("0"));
        assert_eq!(
            attr(named(&spans, "replicate")[0], "mip.binding_change").as_deref(),
            Some("Created")
        );
        // The root ends last: it covers the whole registration.
        assert!(spans.iter().all(|s| s.end_time <= root.end_time));
        assert!(relay.start_time >= named(&spans, "receive")[0].start_time);
    }

    /// A forged request is traced with its drop reason and a failed authentication, and nothing more.
    #[test]
    fn a_forged_request_ends_with_its_drop_reason() {
        let spans = traced(|| {
            let mut p = proxy();
            let mut t = RegistrationTraces::new(true, 16, Duration::from_secs(7));
            let rq = request((u64::from(SECONDS) << 32) | 1, "ffffffffffffffffffffffffffffffff");
            turn(&mut p, &mut t, at(0), from_mn(&rq));
            assert_eq!(t.waiting(), 0);
            // Tunnel data and other messages start no trace.
            turn(&mut p, &mut t, at(0), from_mn(&[4, 4, 0, 0]));
        });
        let names: Vec<&str> = spans.iter().map(|s| &*s.name).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let root = named(&spans, "registration")[0];
        assert_eq!(attr(root, "mip.drop_reason").as_deref(), Some("bad_authenticator"));
        assert_eq!(
            attr(root, "mip.home_address").as_deref(),
            Some("10.10.1.50"),
            "as claimed"
        );
        assert_eq!(
            attr(named(&spans, "authenticate")[0], "mip.authenticated").as_deref(),
            Some("false")
        );
        assert_eq!(named(&spans, "receive").len(), 1);
    }

    /// A relayed request the HA never answers ends with the timeout; a retransmission replaces the first trace.
    #[test]
    fn timeouts_and_retransmissions_end_the_waiting_trace() {
        let id = (u64::from(SECONDS) << 32) | 1;
        let spans = traced(|| {
            let mut p = proxy();
            let mut t = RegistrationTraces::new(true, 16, Duration::from_secs(7));
            let rq = request(id, KEY);
            turn(&mut p, &mut t, at(0), from_mn(&rq));
            turn(&mut p, &mut t, at(1), from_mn(&rq));
            assert_eq!(t.waiting(), 1);
            turn(&mut p, &mut t, at(9), ProxyInput::Tick);
            assert_eq!(t.waiting(), 0);
        });
        let roots = named(&spans, "registration");
        assert_eq!(roots.len(), 2);
        let superseded = roots
            .iter()
            .find(|r| r.events.iter().any(|e| e.name == "superseded by a retransmission"));
        assert!(superseded.is_some(), "{roots:?}");
        let timed_out = roots
            .iter()
            .find(|r| attr(r, "mip.drop_reason").as_deref() == Some("pending_timeout"))
            .expect("the retransmission's trace ends with the timeout");
        let relay = named(&spans, "relay")
            .into_iter()
            .find(|s| s.span_context.trace_id() == timed_out.span_context.trace_id())
            .unwrap();
        assert_eq!(attr(relay, "mip.relay_end").as_deref(), Some("timeout"));
        assert_eq!(
            relay.events.first().map(|e| &*e.name),
            Some("no reply from the home agent")
        );
    }

    /// A root the SDK does not keep (a subscriber whose sampler drops it; the daemons' own draw,
    /// `telemetry::sample_root`, creates none at all: `mip-io/tests/root_sampling.rs`) leaves nothing behind: no
    /// children, nothing waits for the HA.
    #[test]
    fn unsampled_registrations_keep_nothing() {
        let id = (u64::from(SECONDS) << 32) | 1;
        let spans = traced_with(Sampler::TraceIdRatioBased(0.0), || {
            let mut p = proxy();
            let mut t = RegistrationTraces::new(true, 16, Duration::from_secs(7));
            let rq = request(id, KEY);
            turn(&mut p, &mut t, at(0), from_mn(&rq));
            assert_eq!(t.waiting(), 0);
            let out = turn(&mut p, &mut t, at(0), from_ha(&reply(id)));
            assert!(out.iter().any(|o| matches!(o, ProxyOutput::Outcome(_))), "{out:?}");
            assert!(t.current.is_none());
        });
        assert!(spans.is_empty(), "{spans:?}");
    }

    /// Disabled (no exporter): nothing is kept.
    #[test]
    fn disabled_keeps_nothing() {
        let mut p = proxy();
        let mut t = RegistrationTraces::new(false, 16, Duration::from_secs(7));
        let rq = request((u64::from(SECONDS) << 32) | 1, KEY);
        turn(&mut p, &mut t, at(0), from_mn(&rq));
        assert_eq!(t.waiting(), 0);
        assert!(t.current.is_none());
    }
}
