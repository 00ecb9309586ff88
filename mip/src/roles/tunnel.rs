//! The RFC 3519 decision an agent in the home-agent role makes about a request's tunnel: IP-in-IP to the
//! care-of address, or a UDP tunnel to the address and port the request came from (spec §5.1 step 9; RFC 3519
//! §4.6, §4.6.1). The proxy (toward mobile nodes) and the reference home agent share it.

use core::net::SocketAddrV4;

use crate::binding::{Encapsulation, TunnelEndpoint};
use crate::wire::{ExtensionBody, ReplyCode, Request, UdpTunnelReply, UdpTunnelRequest};

/// What the agent allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelPolicy {
    /// Accept UDP tunnelling when a NAT is detected (else 129, spec §5.1 step 9).
    pub nat_traversal: bool,
    /// Accept the F flag (forced UDP tunnelling without a NAT; else 129).
    pub allow_forced: bool,
    /// Keepalive interval announced in the UDP Tunnel Reply (0 = the MN's default of 110 s; RFC 3519 §3.2).
    pub keepalive: u16,
}

impl Default for TunnelPolicy {
    fn default() -> Self {
        TunnelPolicy {
            nat_traversal: true,
            allow_forced: false,
            keepalive: 0,
        }
    }
}

/// Where a UDP Tunnel Request sat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UtrqOrigin {
    /// Before the MN-HA extension: the mobile node's own (co-located care-of address, RFC 3519 §4.4).
    MobileNode,
    /// After the MN-HA extension: added by a foreign agent behind a NAT (RFC 3519 §4.5).
    ForeignAgent,
}

/// The outcome for an acceptable request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelDecision {
    /// Where to tunnel packets for this binding.
    pub tunnel: TunnelEndpoint,
    /// RFC 3519 R-flag tunnel: send nothing until the first keepalive completes it (RFC 3519 §4.6).
    pub half_bound: bool,
    /// The UDP Tunnel Reply to put in the reply, when the request carried a UDP Tunnel Request.
    pub reply: Option<UdpTunnelReply>,
    /// The UDP Tunnel Request was a foreign agent's (after MN-HA): its reply is FA-only and goes after MN-HA,
    /// before FA-HA, so the FA consumes it (RFC 5944 §3.8.3.3 ordering, spec §2.13).
    pub reply_to_foreign_agent: bool,
    /// The request's IP source differs from its care-of address: a NAT is in the path.
    pub nat_detected: bool,
}

/// RFC 3519 §3.1 encapsulation 0 means "as the M and G bits say"; only IP-in-IP (neither set) is implemented.
const fn supported_encapsulation(encap: u8, m: bool, g: bool) -> bool {
    match encap {
        0 => !m && !g,
        4 => true,
        _ => false,
    }
}

/// Decides the tunnel for `req`, which arrived from `src`. `mn_ha_offset` is the offset of its MN-HA extension
/// (to tell a mobile node's UDP Tunnel Request from a foreign agent's). `Err` is the reply code to deny with.
pub fn decide(
    req: &Request<'_>,
    mn_ha_offset: usize,
    src: SocketAddrV4,
    policy: &TunnelPolicy,
) -> Result<TunnelDecision, ReplyCode> {
    let r = &req.repr;
    let flags = r.flags;
    let co_located = flags.decapsulation_by_mn();
    let coa = r.care_of_address;
    let nat_detected = *src.ip() != coa;
    let utrq = req.extensions().find_map(|e| match e.body {
        ExtensionBody::UdpTunnelRequest(u) => {
            let origin = if e.offset < mn_ha_offset {
                UtrqOrigin::MobileNode
            } else {
                UtrqOrigin::ForeignAgent
            };
            Some((u, origin))
        }
        _ => None,
    });
    let ipip = |nat_detected: bool, reply: Option<UdpTunnelReply>| TunnelDecision {
        tunnel: TunnelEndpoint {
            addr: coa,
            port: 0,
            encapsulation: Encapsulation::IpInIp,
        },
        half_bound: false,
        reply,
        reply_to_foreign_agent: false,
        nat_detected,
    };

    let Some((u, origin)) = utrq else {
        // Without a UDP Tunnel Request: a co-located node whose source is not its care-of address is behind a
        // NAT we were not asked to traverse, which an RFC 3519 agent refuses (§4.6.1; no code given: 134 [G]).
        // Through an FA (D = 0) the source is the FA's routed address and differs from the FA care-of address
        // by design (VT02 flows): not a NAT indication.
        if co_located && nat_detected {
            return Err(ReplyCode::HaPoorlyFormedRequest);
        }
        return Ok(ipip(false, None));
    };
    check_request(&u, origin, co_located)?;
    if !supported_encapsulation(u.encapsulation, flags.minimal_encap(), flags.gre()) {
        return Err(ReplyCode::HaUdpEncapUnavailable);
    }
    let assent = |forced: bool| UdpTunnelReply {
        code: 0,
        forced,
        reserved: 0,
        keepalive: policy.keepalive,
    };
    let by_fa = origin == UtrqOrigin::ForeignAgent;
    let udp = |reply: UdpTunnelReply, half_bound: bool| TunnelDecision {
        tunnel: TunnelEndpoint {
            addr: *src.ip(),
            port: src.port(),
            encapsulation: Encapsulation::UdpIpInIp,
        },
        half_bound,
        reply: Some(reply),
        reply_to_foreign_agent: by_fa,
        nat_detected,
    };
    if u.registered_via_fa {
        // R: a co-located node behind an FA that set R and U. The tunnel ends at the node, through the FA's
        // NAT; it is only complete when the first keepalive shows the node's mapping (RFC 3519 §4.6, §4.11).
        if !policy.nat_traversal {
            return Err(ReplyCode::HaProhibited);
        }
        return Ok(udp(assent(false), true));
    }
    match (nat_detected, u.force) {
        (true, _) if !policy.nat_traversal => Err(ReplyCode::HaProhibited),
        (true, _) => Ok(udp(assent(false), false)),
        (false, true) if !policy.allow_forced => Err(ReplyCode::HaProhibited),
        (false, true) => Ok(udp(assent(true), false)),
        // No NAT, not forced: decline with code 64 and use plain IP-in-IP (RFC 3519 §4.6).
        (false, false) => Ok(TunnelDecision {
            reply_to_foreign_agent: by_fa,
            ..ipip(
                false,
                Some(UdpTunnelReply {
                    code: 64,
                    forced: false,
                    reserved: 0,
                    keepalive: 0,
                }),
            )
        }),
    }
}

/// Structural rules of RFC 3519 §3.1/§4.6.1 (spec §5.1 step 9): 134 when broken.
fn check_request(u: &UdpTunnelRequest, origin: UtrqOrigin, co_located: bool) -> Result<(), ReplyCode> {
    let misplaced = match origin {
        UtrqOrigin::MobileNode => !co_located,
        UtrqOrigin::ForeignAgent => co_located,
    };
    // Reserved 3 must be zero: RFC 3519 §4.6.1 says reply 134, §3.1 says skip; the later, specific rule wins
    // (spec §2.6, §12 item 13).
    if misplaced || u.reserved3 != 0 {
        return Err(ReplyCode::HaPoorlyFormedRequest);
    }
    Ok(())
}
