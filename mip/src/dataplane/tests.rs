//! Data-plane cases of spec §10 (58, 59, 63, 66–72; 12's Next Header rule) with the spec's addresses.

use core::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::binding::TunnelEndpoint;
use crate::time::Instant;
use crate::wire::icmp::IcmpRepr;

const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
const OTHER_HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 51);
const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const PRIV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
const VPNGW: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 20);
const COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const NAT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const CN: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 99);

fn plane() -> DataPlane {
    DataPlane::new(DataPlaneConfig {
        proxy_public: PUB,
        proxy_private: PRIV,
        vpn_gateways: vec![VPNGW],
        home_agents: vec![HA],
        outer_ttl: DEFAULT_OUTER_TTL,
        path_mtu: 1500,
    })
}

fn cache_with(tunnel: TunnelEndpoint, half_bound: bool) -> BindingCache {
    let mut c = BindingCache::new();
    let mut b = Binding::new(COA, tunnel, HA, 1, 600, Instant::ZERO);
    b.half_bound = half_bound;
    c.upsert(HOA, None, b, false).unwrap();
    c
}

fn ipip_binding() -> BindingCache {
    cache_with(
        TunnelEndpoint {
            addr: COA,
            port: 0,
            encapsulation: Encapsulation::IpInIp,
        },
        false,
    )
}

fn udp_binding(half_bound: bool) -> BindingCache {
    cache_with(
        TunnelEndpoint {
            addr: NAT,
            port: 40001,
            encapsulation: Encapsulation::UdpIpInIp,
        },
        half_bound,
    )
}

/// An IPv4 packet with `payload`.
fn ip(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, ttl: u8, tos: u8, df: bool, payload: &[u8]) -> Vec<u8> {
    let r = Ipv4Repr {
        src_addr: src,
        dst_addr: dst,
        protocol: proto,
        payload_len: payload.len(),
        ttl,
        tos,
        ident: 7,
        dont_frag: df,
    };
    let mut b = vec![0u8; 20 + payload.len()];
    r.emit(&mut b).unwrap();
    b[20..].copy_from_slice(payload);
    b
}

fn esp(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    ip(
        src,
        dst,
        protocol::ESP,
        64,
        0,
        false,
        &[0, 0, 1, 0, 0, 0, 0, 1, 0xee, 0xee],
    )
}

fn udp_to(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    let mut u = vec![0u8; 12];
    UdpRepr {
        src_port: 4500,
        dst_port: dport,
    }
    .emit(&mut u, 4, src, dst)
    .unwrap();
    ip(src, dst, protocol::UDP, 64, 0, false, &u)
}

fn tunnel_data(next_header: u8, inner: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8; 4 + inner.len()];
    TunnelDataRepr { next_header }.emit(&mut b).unwrap();
    b[4..].copy_from_slice(inner);
    b
}

fn echo_request() -> Vec<u8> {
    let icmp = IcmpRepr::EchoRequest {
        ident: 9,
        seq: 3,
        data: b"keepalive",
    };
    let mut b = vec![0u8; icmp.buffer_len()];
    icmp.emit(&mut b).unwrap();
    ip(HOA, PUB, protocol::ICMP, 64, 0, false, &b)
}

/// Runs `downlink` on `inner` the way the I/O layer would: the packet read into the buffer at the offset.
fn down(p: &mut DataPlane, inner: &[u8], c: &BindingCache) -> (Downlink, Vec<u8>) {
    let mut buf = vec![0u8; 2048];
    let at = p.downlink_offset();
    buf[at..at + inner.len()].copy_from_slice(inner);
    let v = p.downlink(&mut buf, inner.len(), c);
    (v, buf)
}

#[test]
fn case_66_ipip_from_bound_coa_is_decapsulated_unchanged() {
    let p = plane();
    let inner = esp(HOA, VPNGW);
    let outer = ip(COA, PUB, protocol::IPIP, 60, 0, false, &inner);
    assert_eq!(
        p.uplink_ipip(&outer, &ipip_binding()),
        Uplink::ToVpnGateway {
            packet: &inner,
            gateway: VPNGW
        }
    );
}

#[test]
fn case_67_only_esp_and_ike_to_a_vpn_gateway() {
    let p = plane();
    let c = ipip_binding();
    let wrap = |inner: &[u8]| ip(COA, PUB, protocol::IPIP, 60, 0, false, inner);
    assert_eq!(
        p.uplink_ipip(&wrap(&esp(HOA, CN)), &c),
        Uplink::Drop(DataDrop::InnerDestination)
    );
    let tcp = ip(HOA, VPNGW, protocol::TCP, 64, 0, false, &[0; 20]);
    assert_eq!(p.uplink_ipip(&wrap(&tcp), &c), Uplink::Drop(DataDrop::InnerDestination));
    for port in [500, 4500] {
        let ike = udp_to(HOA, VPNGW, port);
        assert_eq!(
            p.uplink_ipip(&wrap(&ike), &c),
            Uplink::ToVpnGateway {
                packet: &ike,
                gateway: VPNGW
            }
        );
    }
    let dns = udp_to(HOA, VPNGW, 53);
    assert_eq!(p.uplink_ipip(&wrap(&dns), &c), Uplink::Drop(DataDrop::InnerDestination));
}

#[test]
fn case_68_inner_source_must_be_the_bound_home_address() {
    let p = plane();
    let outer = ip(COA, PUB, protocol::IPIP, 60, 0, false, &esp(OTHER_HOA, VPNGW));
    assert_eq!(p.uplink_ipip(&outer, &ipip_binding()), Uplink::Drop(DataDrop::NotBound));
    // The right inner source from another outer source is no better.
    let outer = ip(
        Ipv4Addr::new(192, 0, 2, 99),
        PUB,
        protocol::IPIP,
        60,
        0,
        false,
        &esp(HOA, VPNGW),
    );
    assert_eq!(p.uplink_ipip(&outer, &ipip_binding()), Uplink::Drop(DataDrop::NotBound));
}

#[test]
fn case_69_ha_tunnel_in_and_vpn_packets_out() {
    let mut p = plane();
    let c = ipip_binding();
    // HA → proxy_private IPIP carrying a packet for the home address: the inner packet goes to the gateway.
    let cn_to_mn = ip(CN, HOA, protocol::TCP, 63, 0, false, &[1; 20]);
    let from_ha = ip(HA, PRIV, protocol::IPIP, 64, 0, false, &cn_to_mn);
    assert_eq!(
        p.from_home_agent(&from_ha, &c),
        FromHomeAgent::ToVpnGateway { packet: &cn_to_mn }
    );
    // ESP from the gateway to the home address: IPIP(proxy_public → CoA), TOS and DF copied. The inner TTL − 1
    // is the kernel's, forwarding the packet into the TUN (63 is what the TUN hands over): the data plane
    // leaves it alone, so the hop counts once.
    let inner = ip(VPNGW, HOA, protocol::ESP, 63, 0xb8, true, &[0, 0, 1, 0, 0, 0, 0, 2]);
    let (v, buf) = down(&mut p, &inner, &c);
    let Downlink::Encapsulated { len, dst } = v else {
        panic!("{v:?}")
    };
    assert_eq!(dst, COA);
    let outer = Ipv4Packet::new_checked(&buf[..len]).unwrap();
    assert!(outer.verify_checksum());
    assert_eq!(
        (outer.src_addr(), outer.dst_addr(), outer.protocol()),
        (PUB, COA, protocol::IPIP)
    );
    assert_eq!(outer.tos(), 0xb8);
    assert!(outer.dont_frag());
    assert_eq!(outer.ttl(), DEFAULT_OUTER_TTL);
    let got = Ipv4Packet::new_checked(outer.payload()).unwrap();
    assert_eq!(outer.payload(), &inner[..], "inner packet unchanged, TTL included");
    assert_eq!(got.ttl(), 63);
}

#[test]
fn from_home_agent_filters() {
    let p = plane();
    let c = ipip_binding();
    let cn_to_mn = ip(CN, HOA, protocol::TCP, 63, 0, false, &[1; 20]);
    let rogue = ip(
        Ipv4Addr::new(10, 10, 9, 9),
        PRIV,
        protocol::IPIP,
        64,
        0,
        false,
        &cn_to_mn,
    );
    assert_eq!(
        p.from_home_agent(&rogue, &c),
        FromHomeAgent::Drop(DataDrop::OuterAddress)
    );
    let unbound = ip(
        HA,
        PRIV,
        protocol::IPIP,
        64,
        0,
        false,
        &ip(CN, OTHER_HOA, protocol::TCP, 63, 0, false, &[1; 20]),
    );
    assert_eq!(p.from_home_agent(&unbound, &c), FromHomeAgent::Drop(DataDrop::NotBound));
}

#[test]
fn case_70_no_binding_no_icmp() {
    let mut p = plane();
    let (v, _) = down(&mut p, &esp(VPNGW, OTHER_HOA), &ipip_binding());
    assert_eq!(v, Downlink::Drop(DataDrop::NotBound));
    // Only packets from a VPN gateway are tunnelled to nodes.
    let (v, _) = down(&mut p, &esp(CN, HOA), &ipip_binding());
    assert_eq!(v, Downlink::Drop(DataDrop::NotFromVpnGateway));
}

/// The kernel forwarding a packet into the TUN answers TTL ≤ 1 with Time Exceeded itself and hands over the
/// decremented TTL (≥ 1); the data plane must not decrement a second time. TTL 0 (never from the kernel) gets
/// Time Exceeded and is never encapsulated; TTL 1 (2 at the gateway's interface) goes out as 1.
#[test]
fn case_71_ttl_0_gets_time_exceeded_and_is_never_encapsulated_ttl_1_is_not_decremented_again() {
    let mut p = plane();
    let inner = ip(VPNGW, HOA, protocol::ESP, 0, 0, false, &[0; 8]);
    let (v, buf) = down(&mut p, &inner, &ipip_binding());
    let Downlink::Icmp { len, dst } = v else {
        panic!("ttl 0: {v:?}")
    };
    assert_eq!(dst, VPNGW);
    let err = Ipv4Packet::new_checked(&buf[..len]).unwrap();
    assert_eq!(err.src_addr(), PUB);
    let icmp = IcmpRepr::parse(&IcmpPacket::new_checked(err.payload()).unwrap()).unwrap();
    let IcmpRepr::TimeExceeded { code: 0, data } = icmp else {
        panic!("{icmp:?}")
    };
    assert_eq!(data, &inner[..], "quotes the packet");

    for enc in [ipip_binding(), udp_binding(false)] {
        let inner = ip(VPNGW, HOA, protocol::ESP, 1, 0, false, &[0; 8]);
        let (v, buf) = down(&mut p, &inner, &enc);
        let Downlink::Encapsulated { len, .. } = v else {
            panic!("ttl 1: {v:?}")
        };
        assert!(
            buf[..len].ends_with(&inner),
            "inner packet carried unchanged, TTL 1 (not 0)"
        );
    }
}

#[test]
fn too_big_with_df_gets_frag_needed_with_tunnel_mtu() {
    let mut p = plane();
    let inner = ip(VPNGW, HOA, protocol::ESP, 64, 0, true, &vec![0u8; 1480]);
    let (v, buf) = down(&mut p, &inner, &udp_binding(false));
    let Downlink::Icmp { len, .. } = v else { panic!("{v:?}") };
    let err = Ipv4Packet::new_checked(&buf[..len]).unwrap();
    let icmp = IcmpRepr::parse(&IcmpPacket::new_checked(err.payload()).unwrap()).unwrap();
    assert!(
        matches!(
            icmp,
            IcmpRepr::DstUnreachable {
                code: 4,
                next_hop_mtu: 1468,
                ..
            }
        ),
        "{icmp:?}"
    );
    assert_eq!(p.tunnel_mtu(NAT, Encapsulation::UdpIpInIp), 1468);
    assert_eq!(p.tunnel_mtu(COA, Encapsulation::IpInIp), 1480);
}

/// An ICMP error from a router on the tunnel path about a packet we sent, quoting `quoted`.
fn icmp_about(quoted: &[u8], msg: IcmpRepr<'_>) -> Vec<u8> {
    let mut b = vec![0u8; msg.buffer_len()];
    msg.emit(&mut b).unwrap();
    let _ = quoted;
    ip(Ipv4Addr::new(192, 0, 2, 254), PUB, protocol::ICMP, 64, 0, false, &b)
}

#[test]
fn case_72_datagram_too_big_relayed_with_reduced_mtu_port_unreachable_not() {
    let mut p = plane();
    let c = udp_binding(false);
    let inner = ip(VPNGW, HOA, protocol::ESP, 64, 0, true, &[0; 100]);
    let (v, buf) = down(&mut p, &inner, &c);
    let Downlink::Encapsulated { len, .. } = v else {
        panic!("{v:?}")
    };
    let sent = buf[..len].to_vec();
    let quote = &sent[..(20 + 8 + 4 + 28)];
    let frag = icmp_about(
        quote,
        IcmpRepr::DstUnreachable {
            code: 4,
            next_hop_mtu: 1400,
            data: quote,
        },
    );
    let mut out = vec![0u8; 1024];
    let v = p.icmp_from_tunnel(&frag, &mut out);
    let Downlink::Icmp { len, dst } = v else {
        panic!("{v:?}")
    };
    assert_eq!(dst, VPNGW, "relayed to the original sender");
    let err = Ipv4Packet::new_checked(&out[..len]).unwrap();
    let icmp = IcmpRepr::parse(&IcmpPacket::new_checked(err.payload()).unwrap()).unwrap();
    let IcmpRepr::DstUnreachable {
        code: 4,
        next_hop_mtu,
        data,
    } = icmp
    else {
        panic!("{icmp:?}")
    };
    assert_eq!(next_hop_mtu, 1400 - 32, "reduced by IPv4 + UDP + Tunnel Data overhead");
    assert_eq!(Ipv4Packet::new_unchecked(data).src_addr(), VPNGW);
    assert_eq!(p.tunnel_mtu(NAT, Encapsulation::UdpIpInIp), 1368, "soft state learnt");
    let port = icmp_about(
        quote,
        IcmpRepr::DstUnreachable {
            code: 3,
            next_hop_mtu: 0,
            data: quote,
        },
    );
    assert_eq!(
        p.icmp_from_tunnel(&port, &mut out),
        Downlink::Drop(DataDrop::IcmpNotRelayed)
    );
    let host = icmp_about(
        quote,
        IcmpRepr::DstUnreachable {
            code: 1,
            next_hop_mtu: 0,
            data: quote,
        },
    );
    assert!(matches!(
        p.icmp_from_tunnel(&host, &mut out),
        Downlink::Icmp { dst: VPNGW, .. }
    ));
    // An error about somebody else's packet is not ours to relay.
    let foreign = ip(COA, NAT, protocol::IPIP, 64, 0, false, &inner);
    let q = &foreign[..48];
    let stray = icmp_about(
        q,
        IcmpRepr::DstUnreachable {
            code: 4,
            next_hop_mtu: 1400,
            data: q,
        },
    );
    assert_eq!(
        p.icmp_from_tunnel(&stray, &mut out),
        Downlink::Drop(DataDrop::OuterAddress)
    );
}

#[test]
fn udp_tunnel_downlink_layout() {
    let mut p = plane();
    let inner = esp(VPNGW, HOA);
    let (v, buf) = down(&mut p, &inner, &udp_binding(false));
    let Downlink::Encapsulated { len, dst } = v else {
        panic!("{v:?}")
    };
    assert_eq!(dst, NAT);
    let outer = Ipv4Packet::new_checked(&buf[..len]).unwrap();
    let u = UdpPacket::new_checked(outer.payload()).unwrap();
    assert_eq!((u.src_port(), u.dst_port()), (434, 40001));
    assert!(u.verify_checksum(PUB, NAT));
    assert_eq!(&u.payload()[..4], &[4, 4, 0, 0]);
    assert_eq!(
        &u.payload()[4..],
        &inner[..],
        "inner packet unchanged (TTL 64 as handed over)"
    );
}

use crate::wire::udp::UdpPacket;

#[test]
fn case_58_tunnel_data_only_from_the_bound_endpoint() {
    let mut p = plane();
    let c = udp_binding(false);
    let data = tunnel_data(4, &esp(HOA, VPNGW));
    let mut out = [0u8; 256];
    assert!(matches!(
        p.uplink_udp(SocketAddrV4::new(NAT, 40001), &data, &c, &mut out),
        Uplink::ToVpnGateway { .. }
    ));
    for src in [
        SocketAddrV4::new(NAT, 40002),
        SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 6), 40001),
    ] {
        assert_eq!(
            p.uplink_udp(src, &data, &c, &mut out),
            Uplink::Drop(DataDrop::NotBound),
            "{src}"
        );
    }
}

#[test]
fn case_12_next_header_mismatch_dropped() {
    let mut p = plane();
    let data = tunnel_data(47, &esp(HOA, VPNGW));
    let mut out = [0u8; 64];
    assert_eq!(
        p.uplink_udp(SocketAddrV4::new(NAT, 40001), &data, &udp_binding(false), &mut out),
        Uplink::Drop(DataDrop::WrongNextHeader)
    );
}

#[test]
fn case_59_keepalive_answered_to_the_same_address_and_port() {
    let mut p = plane();
    let src = SocketAddrV4::new(NAT, 40001);
    let data = tunnel_data(4, &echo_request());
    let mut out = [0u8; 256];
    let Uplink::Reply { len } = p.uplink_udp(src, &data, &udp_binding(false), &mut out) else {
        panic!()
    };
    let outer = Ipv4Packet::new_checked(&out[..len]).unwrap();
    assert_eq!((outer.src_addr(), outer.dst_addr()), (PUB, NAT));
    let u = UdpPacket::new_checked(outer.payload()).unwrap();
    assert_eq!(u.dst_port(), 40001);
    assert!(u.verify_checksum(PUB, NAT));
    let inner = Ipv4Packet::new_checked(&u.payload()[4..]).unwrap();
    assert_eq!((inner.src_addr(), inner.dst_addr()), (PUB, HOA));
    let icmp = IcmpRepr::parse(&IcmpPacket::new_checked(inner.payload()).unwrap()).unwrap();
    assert_eq!(
        icmp,
        IcmpRepr::EchoReply {
            ident: 9,
            seq: 3,
            data: b"keepalive"
        }
    );
}

#[test]
fn case_57_half_bound_waits_for_a_keepalive_from_the_registered_address() {
    let mut p = plane();
    let c = udp_binding(true);
    let mut out = [0u8; 256];
    let data = tunnel_data(4, &esp(HOA, VPNGW));
    assert_eq!(
        p.uplink_udp(SocketAddrV4::new(NAT, 5000), &data, &c, &mut out),
        Uplink::Drop(DataDrop::HalfBound)
    );
    let ka = tunnel_data(4, &echo_request());
    assert_eq!(
        p.uplink_udp(SocketAddrV4::new(NAT, 5000), &ka, &c, &mut out),
        Uplink::CompleteHalfBound {
            src: SocketAddrV4::new(NAT, 5000),
            home_address: HOA
        }
    );
    let other = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 6), 5000);
    assert_eq!(p.uplink_udp(other, &ka, &c, &mut out), Uplink::Drop(DataDrop::NotBound));
    // Nothing goes to a half-bound node.
    let (v, _) = down(&mut p, &esp(VPNGW, HOA), &c);
    assert_eq!(v, Downlink::Drop(DataDrop::HalfBound));
}

#[test]
fn case_63_packets_from_an_expired_binding_are_dropped() {
    let p = plane();
    let mut c = ipip_binding();
    let outer = ip(COA, PUB, protocol::IPIP, 60, 0, false, &esp(HOA, VPNGW));
    assert!(matches!(p.uplink_ipip(&outer, &c), Uplink::ToVpnGateway { .. }));
    c.expire(Instant::from_secs(600), |_| {});
    assert_eq!(p.uplink_ipip(&outer, &c), Uplink::Drop(DataDrop::NotBound));
}

#[test]
fn malformed_packets_never_panic() {
    let mut p = plane();
    let c = udp_binding(false);
    let mut out = vec![0u8; 2048];
    let mut rng = crate::roles::Rng::new(1);
    for len in 0..120 {
        for _ in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|_| rng.next_u32() as u8).collect();
            let _ = p.uplink_ipip(&bytes, &c);
            let _ = p.uplink_udp(SocketAddrV4::new(NAT, 40001), &bytes, &c, &mut out);
            let _ = p.from_home_agent(&bytes, &c);
            let _ = p.icmp_from_tunnel(&bytes, &mut out);
            let at = p.downlink_offset();
            out[at..at + bytes.len()].copy_from_slice(&bytes);
            let _ = p.downlink(&mut out, bytes.len(), &c);
        }
    }
}
