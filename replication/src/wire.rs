//! Conversion between the store's records and the protobuf messages of `mip-proto`.

use core::net::Ipv4Addr;

use mip::binding::{Encapsulation, MAX_SIMULTANEOUS_BINDINGS, TunnelEndpoint};
use mip_proto as pb;

use crate::record::{BindingRecord, BindingState, CareOf, Delta, ReplayRecord, ReplayValue};
use crate::store::{DIGEST_BUCKETS, Digest};
use crate::version::Version;

/// Why a received record was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// A required field is missing.
    #[error("missing field `{0}`")]
    Missing(&'static str),
    /// A field is out of range.
    #[error("field `{0}` out of range")]
    Range(&'static str),
}

fn enc_to_pb(e: Encapsulation) -> pb::Encapsulation {
    match e {
        Encapsulation::IpInIp => pb::Encapsulation::Ipip,
        Encapsulation::Gre => pb::Encapsulation::Gre,
        Encapsulation::Minimal => pb::Encapsulation::Minimal,
        Encapsulation::UdpIpInIp => pb::Encapsulation::UdpIpip,
        Encapsulation::UdpGre => pb::Encapsulation::UdpGre,
        Encapsulation::UdpMinimal => pb::Encapsulation::UdpMinimal,
    }
}

fn enc_from_pb(v: i32) -> Result<Encapsulation, WireError> {
    Ok(match pb::Encapsulation::try_from(v) {
        Ok(pb::Encapsulation::Ipip) => Encapsulation::IpInIp,
        Ok(pb::Encapsulation::Gre) => Encapsulation::Gre,
        Ok(pb::Encapsulation::Minimal) => Encapsulation::Minimal,
        Ok(pb::Encapsulation::UdpIpip) => Encapsulation::UdpIpInIp,
        Ok(pb::Encapsulation::UdpGre) => Encapsulation::UdpGre,
        Ok(pb::Encapsulation::UdpMinimal) => Encapsulation::UdpMinimal,
        Ok(pb::Encapsulation::Unspecified) | Err(_) => return Err(WireError::Range("encapsulation")),
    })
}

fn u16_field(v: u32, name: &'static str) -> Result<u16, WireError> {
    u16::try_from(v).map_err(|_| WireError::Range(name))
}

/// Protobuf form of a version.
pub fn version_to_pb(v: Version) -> pb::Version {
    pb::Version {
        identification: v.identification,
        hlc: v.hlc,
        replica: v.replica,
    }
}

fn version_from_pb(v: Option<&pb::Version>) -> Result<Version, WireError> {
    let v = v.ok_or(WireError::Missing("version"))?;
    Ok(Version {
        identification: v.identification,
        hlc: v.hlc,
        replica: v.replica,
    })
}

fn care_of_to_pb(c: &CareOf) -> pb::CareOfBinding {
    pb::CareOfBinding {
        care_of_address: c.care_of_address.to_bits(),
        tunnel: Some(pb::TunnelEndpoint {
            addr: c.tunnel.addr.to_bits(),
            port: u32::from(c.tunnel.port),
            encapsulation: enc_to_pb(c.tunnel.encapsulation) as i32,
        }),
        home_agent: c.home_agent.to_bits(),
        identification: c.identification,
        lifetime: u32::from(c.lifetime),
        remaining_ms: c.remaining_ms,
        keepalive_interval: u32::from(c.keepalive_interval),
        reverse_tunnel: c.reverse_tunnel,
        half_bound: c.half_bound,
    }
}

fn care_of_from_pb(c: &pb::CareOfBinding) -> Result<CareOf, WireError> {
    let t = c.tunnel.as_ref().ok_or(WireError::Missing("tunnel"))?;
    Ok(CareOf {
        care_of_address: Ipv4Addr::from_bits(c.care_of_address),
        tunnel: TunnelEndpoint {
            addr: Ipv4Addr::from_bits(t.addr),
            port: u16_field(t.port, "tunnel.port")?,
            encapsulation: enc_from_pb(t.encapsulation)?,
        },
        home_agent: Ipv4Addr::from_bits(c.home_agent),
        identification: c.identification,
        lifetime: u16_field(c.lifetime, "lifetime")?,
        remaining_ms: c.remaining_ms,
        keepalive_interval: u16_field(c.keepalive_interval, "keepalive_interval")?,
        reverse_tunnel: c.reverse_tunnel,
        half_bound: c.half_bound,
    })
}

/// Protobuf form of a record.
pub fn delta_to_pb(d: &Delta) -> pb::Record {
    let kind = match d {
        Delta::Binding(r) => {
            let (tombstone, bindings, tombstone_remaining_ms) = match &r.state {
                BindingState::Live(list) => (false, list.iter().map(care_of_to_pb).collect(), 0),
                BindingState::Tombstone { remaining_ms } => (true, Vec::new(), *remaining_ms),
            };
            pb::record::Kind::Binding(pb::BindingRecord {
                home_address: r.home_address.to_bits(),
                nai: r.nai.as_deref().map(str::to_string),
                version: Some(version_to_pb(r.version)),
                tombstone,
                bindings,
                tombstone_remaining_ms,
            })
        }
        Delta::Replay(r) => pb::record::Kind::Replay(pb::ReplayRecord {
            home_address: r.home_address.to_bits(),
            nai: r.nai.as_deref().map(str::to_string),
            spi: r.spi,
            last_accepted: r.state.last_accepted,
            nonce_issued: r.state.nonce_issued,
            version: Some(version_to_pb(r.version)),
        }),
    };
    pb::Record {
        kind: Some(kind),
        traceparent: String::new(),
    }
}

/// The longest `traceparent` kept from a record (version 00 has 55 characters; later versions may append).
pub const MAX_TRACEPARENT: usize = 128;

/// The record's `traceparent`, if it has a plausible one: non-empty, at most [`MAX_TRACEPARENT`] printable ASCII
/// characters (the trace library parses it).
pub fn traceparent_of(r: &pb::Record) -> Option<&str> {
    let t = r.traceparent.as_str();
    (!t.is_empty() && t.len() <= MAX_TRACEPARENT && t.bytes().all(|b| b.is_ascii_graphic())).then_some(t)
}

/// A record from its protobuf form; refuses missing fields, out-of-range values, a live record without bindings
/// or with more than `MAX_SIMULTANEOUS_BINDINGS`, and a record without key.
pub fn delta_from_pb(r: &pb::Record) -> Result<Delta, WireError> {
    let delta = match r.kind.as_ref().ok_or(WireError::Missing("kind"))? {
        pb::record::Kind::Binding(b) => {
            let state = if b.tombstone {
                BindingState::Tombstone {
                    remaining_ms: b.tombstone_remaining_ms,
                }
            } else {
                if b.bindings.is_empty() || b.bindings.len() > MAX_SIMULTANEOUS_BINDINGS {
                    return Err(WireError::Range("bindings"));
                }
                BindingState::Live(b.bindings.iter().map(care_of_from_pb).collect::<Result<_, _>>()?)
            };
            let rec = BindingRecord {
                home_address: Ipv4Addr::from_bits(b.home_address),
                nai: b.nai.as_deref().map(Into::into),
                version: version_from_pb(b.version.as_ref())?,
                state,
            };
            rec.id().ok_or(WireError::Missing("home_address or nai"))?;
            Delta::Binding(rec)
        }
        pb::record::Kind::Replay(p) => {
            let rec = ReplayRecord {
                home_address: Ipv4Addr::from_bits(p.home_address),
                nai: p.nai.as_deref().map(Into::into),
                spi: p.spi,
                state: ReplayValue {
                    last_accepted: p.last_accepted,
                    nonce_issued: p.nonce_issued,
                },
                version: version_from_pb(p.version.as_ref())?,
            };
            rec.id().ok_or(WireError::Missing("home_address or nai"))?;
            Delta::Replay(rec)
        }
    };
    Ok(delta)
}

/// Protobuf form of a digest.
pub fn digest_to_pb(d: &Digest) -> pb::Digest {
    pb::Digest {
        buckets: d.buckets.to_vec(),
        records: d.records,
    }
}

/// A digest from its protobuf form (exactly 256 buckets).
pub fn digest_from_pb(d: &pb::Digest) -> Result<Digest, WireError> {
    let buckets: [u64; DIGEST_BUCKETS] = d
        .buckets
        .as_slice()
        .try_into()
        .map_err(|_| WireError::Range("buckets"))?;
    Ok(Digest {
        buckets: Box::new(buckets),
        records: d.records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let v = Version {
            identification: 5,
            hlc: 77,
            replica: 3,
        };
        let live = Delta::Binding(BindingRecord {
            home_address: Ipv4Addr::new(10, 10, 1, 50),
            nai: None,
            version: v,
            state: BindingState::Live(vec![CareOf {
                care_of_address: Ipv4Addr::new(192, 0, 2, 1),
                tunnel: TunnelEndpoint {
                    addr: Ipv4Addr::new(203, 0, 113, 9),
                    port: 4500,
                    encapsulation: Encapsulation::UdpGre,
                },
                home_agent: Ipv4Addr::new(10, 10, 1, 1),
                identification: 5,
                lifetime: 600,
                remaining_ms: 1234,
                keepalive_interval: 20,
                reverse_tunnel: true,
                half_bound: true,
            }]),
        });
        let tomb = Delta::Binding(BindingRecord {
            home_address: Ipv4Addr::UNSPECIFIED,
            nai: Some("n@x".into()),
            version: v,
            state: BindingState::Tombstone { remaining_ms: 9 },
        });
        let replay = Delta::Replay(ReplayRecord {
            home_address: Ipv4Addr::new(10, 10, 1, 50),
            nai: None,
            spi: 256,
            state: ReplayValue {
                last_accepted: Some(5),
                nonce_issued: None,
            },
            version: v,
        });
        for d in [live, tomb, replay] {
            assert_eq!(delta_from_pb(&delta_to_pb(&d)).unwrap(), d);
        }
        // The trace context travels beside the record; only a plausible one is kept.
        let mut r = delta_to_pb(&Delta::Binding(BindingRecord {
            home_address: Ipv4Addr::new(10, 10, 1, 50),
            nai: None,
            version: v,
            state: BindingState::Tombstone { remaining_ms: 1 },
        }));
        assert_eq!(traceparent_of(&r), None);
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        r.traceparent = tp.into();
        assert_eq!(traceparent_of(&r), Some(tp));
        r.traceparent = "00 bad".into();
        assert_eq!(traceparent_of(&r), None);
        r.traceparent = "0".repeat(MAX_TRACEPARENT + 1);
        assert_eq!(traceparent_of(&r), None);
        let mut digest = Digest::default();
        digest.buckets[7] = 99;
        digest.records = 1;
        assert_eq!(digest_from_pb(&digest_to_pb(&digest)).unwrap(), digest);
    }

    #[test]
    fn invalid_records_are_refused() {
        let mut r = pb::Record {
            kind: Some(pb::record::Kind::Binding(pb::BindingRecord {
                home_address: 0,
                nai: None,
                version: Some(pb::Version::default()),
                tombstone: true,
                bindings: vec![],
                tombstone_remaining_ms: 0,
            })),
            traceparent: String::new(),
        };
        assert_eq!(delta_from_pb(&r), Err(WireError::Missing("home_address or nai")));
        if let Some(pb::record::Kind::Binding(b)) = &mut r.kind {
            b.home_address = 1;
            b.tombstone = false;
        }
        assert_eq!(delta_from_pb(&r), Err(WireError::Range("bindings")));
        assert_eq!(
            delta_from_pb(&pb::Record {
                kind: None,
                traceparent: String::new()
            }),
            Err(WireError::Missing("kind"))
        );
        assert!(
            digest_from_pb(&pb::Digest {
                buckets: vec![1],
                records: 0
            })
            .is_err()
        );
    }
}
