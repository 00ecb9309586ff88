//! The reference agents' side of the registration traces (issue 7; exported like the proxy's, see
//! [`mip_io::telemetry`]: `daemon.tracing` or `OTEL_EXPORTER_OTLP_ENDPOINT`).
//!
//! * `mip-ha`: one `registration` span per Registration Request it handles (server side), with the reply code
//!   it answered or the reason it dropped the request ([`ha_request`], [`ha_output`]).
//! * `mip-mn`: one `registration` span per registration attempt (client side: a request and its
//!   retransmissions), from the first request to the reply, or to the give-up (code 78), with `mip.handoff`
//!   when the care-of address differs from the last registered one ([`MnTraces`]).
//!
//! Mobile IP carries no trace context, so these are traces of their own, not children of the proxy's: the
//! attributes (`mip.home_address`, `mip.identification`, ...) are what joins them in a query. Nothing is traced
//! per data packet.

use core::net::Ipv4Addr;

use mip::roles::ha::{HaInput, HaOutput};
use mip::roles::mn::MnOutput;
use mip::roles::{DropReason, RegistrationOutcome, Transmit};
use tracing::Span;
use tracing::field::{Empty, display};

/// Registration Request message type.
const TYPE_REQUEST: u8 = 1;

/// The fixed part of a Registration Request: (lifetime, home address, home agent, care-of address,
/// Identification).
fn request_fields(payload: &[u8]) -> Option<(u16, Ipv4Addr, Ipv4Addr, Ipv4Addr, u64)> {
    if payload.first() != Some(&TYPE_REQUEST) {
        return None;
    }
    let addr = |at: usize| {
        payload
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(Ipv4Addr::from)
    };
    let lifetime = u16::from_be_bytes(payload.get(2..4)?.try_into().ok()?);
    let ident = u64::from_be_bytes(payload.get(16..24)?.try_into().ok()?);
    Some((lifetime, addr(4)?, addr(8)?, addr(12)?, ident))
}

/// Records the outcome on `span`, whose `mip.home_address` is `known` already (recorded again only when the
/// reply assigned another: an OpenTelemetry span keeps every value recorded).
fn record_outcome(span: &Span, known: Ipv4Addr, o: &RegistrationOutcome) {
    span.record("mip.reply_code", i64::from(o.code.value()));
    span.record("mip.lifetime", i64::from(o.lifetime));
    span.record("mip.nat_detected", o.nat_detected);
    if !o.home_address.is_unspecified() && o.home_address != known {
        span.record("mip.home_address", display(o.home_address));
    }
    if !o.code.is_accepted() {
        span.record("otel.status_code", "error");
    }
}

fn record_drop(span: &Span, r: DropReason) {
    span.record("mip.drop_reason", r.as_str());
    span.record("otel.status_code", "error");
}

/// The home agent's span of one Registration Request, and the home address it claims.
#[derive(Debug)]
pub struct HaTrace {
    span: Span,
    home_address: Ipv4Addr,
}

/// The home agent's span for `input` when it is a Registration Request and traces are exported: hold it
/// while the request is handled and its reply sent, pass every output to [`ha_output`].
pub fn ha_request(input: &HaInput<'_>) -> Option<HaTrace> {
    let HaInput::Request(d) = input else { return None };
    if !mip_io::telemetry::active() || !mip_io::telemetry::sample_root() {
        return None;
    }
    let (lifetime, home_address, _, care_of_address, ident) = request_fields(d.payload)?;
    let span = tracing::info_span!(target: "mip_trace", "registration",
        otel.kind = "server",
        otel.status_code = Empty,
        network.peer.address = %d.src.ip(),
        network.peer.port = i64::from(d.src.port()),
        mip.home_address = %home_address,
        mip.care_of_address = %care_of_address,
        mip.identification = %format_args!("{ident:016x}"),
        mip.requested_lifetime = i64::from(lifetime),
        mip.reply_code = Empty,
        mip.lifetime = Empty,
        mip.nat_detected = Empty,
        mip.drop_reason = Empty,
        mip.binding_change = Empty,
    );
    mip_io::telemetry::is_sampled(&span).then_some(HaTrace { span, home_address })
}

/// One output of the home agent for the request whose span is `span`.
pub fn ha_output(trace: Option<&HaTrace>, o: &HaOutput) {
    let Some(t) = trace else { return };
    match o {
        HaOutput::Outcome(o) => record_outcome(&t.span, t.home_address, o),
        HaOutput::Drop(r) => record_drop(&t.span, *r),
        HaOutput::Binding(c) => {
            t.span
                .record("mip.binding_change", display(format_args!("{:?}", c.kind)));
        }
        HaOutput::Send(_) | HaOutput::Intercept { .. } => {}
    }
}

/// The mobile node's registration attempts.
#[derive(Debug, Default)]
pub struct MnTraces {
    /// Traces are exported ([`mip_io::telemetry::active`]).
    enabled: bool,
    /// The attempt waiting for its reply: its span, Identification and home address.
    open: Option<(Span, u64, Ipv4Addr)>,
    /// The care-of address of the last accepted registration (a hand-off is a registration from another).
    registered_at: Option<Ipv4Addr>,
}

impl MnTraces {
    /// Traces the node's registrations if `enabled` (traces are exported: [`mip_io::telemetry::active`]).
    pub fn new(enabled: bool) -> Self {
        MnTraces {
            enabled,
            ..MnTraces::default()
        }
    }

    /// One output of the node. `replied`: the same turn has an [`MnOutput::Outcome`] (a
    /// [`MnOutput::RegistrationFailed`] beside it is the same reply).
    pub fn output(&mut self, o: &MnOutput, replied: bool) {
        if !self.enabled {
            return;
        }
        match o {
            MnOutput::Send(t) => self.sent(t),
            MnOutput::Outcome(o) => {
                if let Some((span, _, home)) = self.open.take() {
                    record_outcome(&span, home, o);
                }
                if o.code.is_accepted() {
                    self.registered_at = (o.lifetime != 0).then_some(o.care_of_address);
                }
            }
            MnOutput::RegistrationFailed { code } if !replied => {
                if let Some((span, ..)) = self.open.take() {
                    span.record("mip.reply_code", i64::from(code.value()));
                    span.record("otel.status_code", "error");
                    tracing::info!(target: "mip_trace", parent: &span, "gave up: {}", code.description());
                }
            }
            MnOutput::Deregistered => self.registered_at = None,
            _ => {}
        }
    }

    fn sent(&mut self, t: &Transmit) {
        let Some((lifetime, home_address, home_agent, care_of_address, ident)) = request_fields(&t.payload) else {
            return;
        };
        if let Some((span, open, _)) = &self.open {
            if *open == ident {
                tracing::info!(target: "mip_trace", parent: span, "retransmitted");
                return;
            }
            // A new Identification: a retransmission with a fresh timestamp, or a new registration.
            tracing::info!(target: "mip_trace", parent: span, "superseded by a newer request");
        }
        if !mip_io::telemetry::sample_root() {
            // Not in the sample: no span (its retransmissions draw again, as the comment below says).
            self.open = None;
            return;
        }
        let handoff = self.registered_at.is_some_and(|c| c != care_of_address) && lifetime != 0;
        let span = tracing::info_span!(target: "mip_trace", "registration",
            otel.kind = "client",
            otel.status_code = Empty,
            mip.home_address = %home_address,
            mip.home_agent = %home_agent,
            mip.care_of_address = %care_of_address,
            mip.previous_care_of_address = Empty,
            mip.identification = %format_args!("{ident:016x}"),
            mip.requested_lifetime = i64::from(lifetime),
            mip.deregistration = lifetime == 0,
            mip.handoff = handoff,
            mip.reply_code = Empty,
            mip.lifetime = Empty,
            mip.nat_detected = Empty,
        );
        if handoff && let Some(prev) = self.registered_at {
            span.record("mip.previous_care_of_address", display(prev));
        }
        // Not in the sample: nothing kept (its retransmissions then start spans of their own, unsampled too
        // unless the ratio picks them).
        self.open = mip_io::telemetry::is_sampled(&span).then_some((span, ident, home_address));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::net::SocketAddrV4;
    use mip::roles::mn::MnTunnel;
    use mip::wire::ReplyCode;
    use opentelemetry_sdk::trace::{Sampler, SpanData};

    const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
    const PROXY: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);

    fn request(coa: Ipv4Addr, ident: u64, lifetime: u16) -> MnOutput {
        let mut p = vec![1u8, 0x22];
        p.extend(lifetime.to_be_bytes());
        p.extend(HOA.octets());
        p.extend(PROXY.octets());
        p.extend(coa.octets());
        p.extend(ident.to_be_bytes());
        MnOutput::Send(Transmit {
            src: SocketAddrV4::new(coa, 434),
            dst: SocketAddrV4::new(PROXY, 434),
            ttl: None,
            payload: p,
        })
    }

    fn outcome(coa: Ipv4Addr, code: ReplyCode, lifetime: u16) -> MnOutput {
        MnOutput::Outcome(RegistrationOutcome {
            home_address: HOA,
            care_of_address: coa,
            home_agent: Some(PROXY),
            code,
            lifetime,
            nat_detected: false,
        })
    }

    fn traced(f: impl FnOnce()) -> Vec<SpanData> {
        mip_io::telemetry::capture_spans(Sampler::AlwaysOn, f).1
    }

    fn attr(s: &SpanData, key: &str) -> Option<String> {
        let mut v = s.attributes.iter().filter(|kv| kv.key.as_str() == key);
        let first = v.next().map(|kv| kv.value.to_string());
        assert!(v.next().is_none(), "{key} recorded twice");
        first
    }

    /// One span per attempt: the reply code, retransmissions as events, the hand-off to another care-of
    /// address, the give-up.
    #[test]
    fn mobile_node_attempts() {
        let a = Ipv4Addr::new(192, 168, 1, 10);
        let b = Ipv4Addr::new(192, 0, 2, 10);
        let spans = traced(|| {
            let mut t = MnTraces::new(true);
            t.output(&request(a, 1, 600), false);
            t.output(&request(a, 1, 600), false);
            t.output(&outcome(a, ReplyCode::Accepted, 60), true);
            t.output(
                &MnOutput::Registered {
                    care_of_address: a,
                    tunnel: MnTunnel::ForeignAgent { agent: a },
                    lifetime: 60,
                    home_agent: PROXY,
                },
                true,
            );
            t.output(&request(b, 2, 600), false);
            t.output(&outcome(b, ReplyCode::Accepted, 600), true);
            t.output(&request(a, 3, 600), false);
            t.output(
                &MnOutput::RegistrationFailed {
                    code: ReplyCode::FaRegistrationTimeout,
                },
                false,
            );
            // Disabled: nothing.
            let mut off = MnTraces::new(false);
            off.output(&request(a, 4, 600), false);
            off.output(&outcome(a, ReplyCode::Accepted, 60), true);
        });
        assert_eq!(spans.len(), 3, "{spans:?}");
        let first = &spans[0];
        assert_eq!(attr(first, "mip.reply_code").as_deref(), Some("0"));
        assert_eq!(attr(first, "mip.handoff").as_deref(), Some("false"));
        assert_eq!(attr(first, "mip.home_address").as_deref(), Some("10.10.1.50"));
        assert_eq!(first.events.len(), 1, "the retransmission");
        let second = &spans[1];
        assert_eq!(attr(second, "mip.handoff").as_deref(), Some("true"));
        assert_eq!(
            attr(second, "mip.previous_care_of_address").as_deref(),
            Some("192.168.1.10")
        );
        assert_eq!(attr(second, "mip.care_of_address").as_deref(), Some("192.0.2.10"));
        let third = &spans[2];
        assert_eq!(attr(third, "mip.handoff").as_deref(), Some("true"));
        assert_eq!(
            attr(third, "mip.reply_code"),
            Some(ReplyCode::FaRegistrationTimeout.value().to_string())
        );
        assert_eq!(third.status, opentelemetry::trace::Status::error(""));
    }
}
