//! Proxy relay behaviour, one test per conformance case of spec §10 where the proxy is the actor. Addresses,
//! key and vectors are the spec's (§10, §11.2).

use core::net::{Ipv4Addr, SocketAddrV4};

use super::*;
use crate::auth::{Algorithm, Key};
use crate::config::{KeysFile, from_yaml};
use crate::time::NtpTimestamp;
use crate::wire::{Reply, UdpTunnelReply, UdpTunnelRequest};

const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const OTHER_HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 99);
const PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const PRIV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
const PUBLIC_COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const PRIVATE_COA: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 77);
const NAT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const FA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const KEY: &str = "000102030405060708090a0b0c0d0e0f";
const SPI: u32 = 0x100;
const ID: u64 = 0xec4e5a00_12345678;

const V1: &str = "012202580a0a0132c633640ac000024dec4e5a0012345678201400000100869d33adee786a3be9b795c8cafb1d71";
const V2: &str = "012002580a0a01320a0a01010a0a000aec4e5a0012345678201400000100c823dffc3899875509ed4d1b15084e46";
const V2B_MAC: &str = "c9bb72a39ee0249c1da1b51b23e1d721";
const V3: &str = "030002580a0a01320a0a0101ec4e5a00123456782014000001006b17bf7f0f1322f9a1153dec5925c42d";
const V4: &str = "030002580a0a0132c633640aec4e5a001234567820140000010070e2cee90091976e0fac5350cebf59c8";
const V5: &str =
    "012202580a0a0132c633640ac0a8014dec4e5a001234567890060000000400002014000001009bcd0d4218bd0833ec9236954b4a9027";
const V6: &str = "030002580a0a0132c633640aec4e5a00123456782c0600000000006e201400000100e6a5219b9bda226f058144d658a16c75";
const V8: &str = "010000000a0a0132c633640a0a0a0132ec4e5c00000000012014000001004ab4bd7a9bd5909ef324037d2f974776";

fn h(s: &str) -> Vec<u8> {
    hex::decode(s).unwrap()
}

fn sa() -> SecurityAssociation {
    SecurityAssociation::new(
        Spi::new(SPI).unwrap(),
        Algorithm::HmacMd5,
        Key::from_hex(KEY).unwrap(),
        ReplayStyle::default(),
    )
}

/// The proxy's clock: the second V1's timestamp names, so V1 is fresh.
fn at(secs_after: u64) -> Now {
    Now::new(
        Instant::from_secs(1000 + secs_after),
        NtpTimestamp::new(0xec4e_5a00 + secs_after as u32, 0),
    )
}

fn keys() -> KeyStore {
    let text = format!(
        "security_associations:\n  - {{home_address: {HOA}, nai: joe@example.com, spi: {SPI}, key: {KEY}}}\n  - {{nai: ann@example.com, spi: {SPI}, key: {KEY}}}\n  - {{peer: {FA}, spi: 0x300, key: 0f0e0d0c0b0a09080706050403020100}}\n"
    );
    from_yaml::<KeysFile>(&text).unwrap().to_keystore().unwrap()
}

fn config() -> ProxyConfig {
    let mut c = ProxyConfig::new(
        PUB,
        PRIV,
        vec![
            HomeAgentEntry {
                address: HA,
                home_networks: vec!["10.10.1.0/24".parse().unwrap()],
                dynamic_assignment: true,
            },
            HomeAgentEntry {
                address: OTHER_HA,
                home_networks: vec![],
                dynamic_assignment: false,
            },
        ],
    );
    c.nat.max_lifetime = 600;
    c
}

fn proxy_with(c: ProxyConfig) -> Proxy {
    assert!(c.validate().is_empty(), "{:?}", c.validate());
    Proxy::new(c, keys(), 7)
}

fn proxy() -> Proxy {
    proxy_with(config())
}

fn from_mn(payload: &[u8], src: SocketAddrV4) -> Datagram<'_> {
    Datagram {
        src,
        dst: SocketAddrV4::new(PUB, 434),
        ttl: 64,
        payload,
    }
}

fn from_ha(payload: &[u8]) -> Datagram<'_> {
    Datagram {
        src: SocketAddrV4::new(HA, 434),
        dst: SocketAddrV4::new(PRIV, 434),
        ttl: 64,
        payload,
    }
}

fn mn_src() -> SocketAddrV4 {
    SocketAddrV4::new(PUBLIC_COA, 434)
}

fn run(p: &mut Proxy, now: Now, input: ProxyInput<'_>) -> Vec<ProxyOutput> {
    let mut out = Vec::new();
    p.handle(now, input, &mut out);
    out
}

fn sends(out: &[ProxyOutput]) -> Vec<&Transmit> {
    out.iter()
        .filter_map(|o| if let ProxyOutput::Send(t) = o { Some(t) } else { None })
        .collect()
}

fn only_send(out: &[ProxyOutput]) -> &Transmit {
    let s = sends(out);
    assert_eq!(s.len(), 1, "exactly one datagram expected: {out:?}");
    s[0]
}

fn drops(out: &[ProxyOutput]) -> Vec<DropReason> {
    out.iter()
        .filter_map(|o| if let ProxyOutput::Drop(d) = o { Some(*d) } else { None })
        .collect()
}

fn reply_of(t: &Transmit) -> Reply<'_> {
    let r = Reply::parse(&t.payload, &Dialect::default()).unwrap();
    // Every reply the proxy sends carries one valid MN-HA.
    assert_eq!(r.auth_count(AuthKind::MobileHome), 1);
    sa().verify(&t.payload, &r.auth(AuthKind::MobileHome).unwrap()).unwrap();
    r
}

fn request_of(t: &Transmit) -> Request<'_> {
    let r = Request::parse(&t.payload, &Dialect::default()).unwrap();
    sa().verify(&t.payload, &r.auth(AuthKind::MobileHome).unwrap()).unwrap();
    r
}

/// Builds a request the way a node would: fixed part, `exts` before MN-HA, MN-HA, then `after`.
fn request(repr: RequestRepr, exts: &[ExtensionBody<'_>], after: &[ExtensionBody<'_>]) -> Vec<u8> {
    let mut buf = vec![0u8; 512];
    let mut w = MessageWriter::request(&mut buf, &repr, &Dialect::default()).unwrap();
    for e in exts {
        w.push(e).unwrap();
    }
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    for e in after {
        w.push(e).unwrap();
    }
    let n = w.len();
    buf.truncate(n);
    buf
}

fn req(flags: u8, lifetime: u16, coa: Ipv4Addr, id: u64) -> RequestRepr {
    RequestRepr {
        flags: RequestFlags(flags),
        lifetime,
        home_address: HOA,
        home_agent: PUB,
        care_of_address: coa,
        identification: id,
    }
}

/// The HA's reply to a relayed request: `code`, `lifetime`, Identification echoed (timestamps), `exts` before MN-HA.
fn ha_reply(relayed: &Transmit, code: u8, lifetime: u16, exts: &[ExtensionBody<'_>]) -> Vec<u8> {
    let r = Request::parse(&relayed.payload, &Dialect::default()).unwrap().repr;
    let repr = ReplyRepr {
        code: ReplyCode::from(code),
        lifetime,
        home_address: if r.home_address.is_unspecified() {
            Ipv4Addr::new(10, 10, 1, 77)
        } else {
            r.home_address
        },
        home_agent: r.home_agent,
        identification: r.identification,
    };
    let mut buf = vec![0u8; 512];
    let mut w = MessageWriter::reply(&mut buf, &repr, &Dialect::default()).unwrap();
    for e in exts {
        w.push(e).unwrap();
    }
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    let n = w.len();
    buf.truncate(n);
    buf
}

/// Registers V1-like request `bytes` from `src` and has the HA accept with `lifetime`; returns the reply to the node.
fn register(p: &mut Proxy, now: Now, bytes: &[u8], src: SocketAddrV4, lifetime: u16) -> Vec<ProxyOutput> {
    let out = run(p, now, ProxyInput::FromMobile(from_mn(bytes, src)));
    let relayed = only_send(&out).clone();
    let reply = ha_reply(&relayed, 0, lifetime, &[]);
    run(p, now, ProxyInput::FromHomeAgent(from_ha(&reply)))
}

fn binding_of(p: &Proxy, coa: Ipv4Addr) -> Binding {
    *p.bindings().get_by_home(HOA).unwrap().binding(coa).unwrap()
}

#[test]
fn case_32_relay_rewrite_v1_to_v2() {
    let mut p = proxy();
    let v1 = h(V1);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&v1, mn_src())));
    let t = only_send(&out);
    assert_eq!(t.dst, SocketAddrV4::new(HA, 434));
    assert_eq!(*t.src.ip(), PRIV);
    assert_eq!(hex::encode(&t.payload), V2);
    assert!(out.iter().any(|o| matches!(
        o,
        ProxyOutput::Relayed {
            home_agent: HA,
            identification: ID,
            ..
        }
    )));
    assert_eq!(p.pending_count(), 1);
}

/// Scale-out: a replica with its own node address relays from it, with care-of address proxy_private and D = 0
/// (an agent's care-of address: an RFC 3519 HA would take a co-located one from another source for a NAT),
/// and takes the HA's reply on it.
#[test]
fn node_address_relays_from_it_with_d_clear_and_the_reply_completes() {
    const NODE: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 11);
    let mut c = config();
    c.node_address = Some(NODE);
    let mut p = proxy_with(c);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    let t = only_send(&out).clone();
    assert_eq!(t.src, SocketAddrV4::new(NODE, 434));
    let r = request_of(&t).repr;
    assert_eq!(r.care_of_address, PRIV);
    assert!(!r.flags.decapsulation_by_mn(), "D clear: {:#04x}", r.flags.0);
    let reply = ha_reply(&t, 0, 600, &[]);
    let mut dg = from_ha(&reply);
    dg.dst = SocketAddrV4::new(NODE, 434);
    let out = run(&mut p, at(1), ProxyInput::FromHomeAgent(dg));
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::Accepted);
    assert_eq!(p.bindings().len(), 1);
}

#[test]
fn case_33_vt02_mobility_subnet_relays_t() {
    let mut c = config();
    c.mobility_subnet_forwarding = true;
    let mut p = proxy_with(c);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    let t = only_send(&out);
    assert_eq!(t.payload[1], 0x22);
    assert_eq!(hex::encode(&t.payload[30..]), V2B_MAC);
}

#[test]
fn case_34_ha_reply_v3_to_v4_binding_first() {
    let mut p = proxy();
    let src = SocketAddrV4::new(PUBLIC_COA, 40500);
    run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&h(V1), src)));
    let out = run(&mut p, at(1), ProxyInput::FromHomeAgent(from_ha(&h(V3))));
    let binding_at = out
        .iter()
        .position(|o| matches!(o, ProxyOutput::Binding(c) if c.kind == BindingChangeKind::Created))
        .unwrap();
    let send_at = out.iter().position(|o| matches!(o, ProxyOutput::Send(_))).unwrap();
    assert!(
        binding_at < send_at,
        "binding installed before the reply is relayed: {out:?}"
    );
    let t = only_send(&out);
    assert_eq!(hex::encode(&t.payload), V4);
    assert_eq!(t.dst, src, "reply goes to the request's source IP:port");
    assert_eq!(t.src, SocketAddrV4::new(PUB, 434));
    let b = binding_of(&p, PUBLIC_COA);
    assert_eq!(
        b.tunnel,
        TunnelEndpoint {
            addr: PUBLIC_COA,
            port: 0,
            encapsulation: Encapsulation::IpInIp
        }
    );
    assert!(b.reverse_tunnel);
    assert_eq!(p.pending_count(), 0);
}

#[test]
fn case_35_t_bit_clear_is_refused_with_138() {
    let mut p = proxy();
    let bytes = request(req(0x20, 600, PUBLIC_COA, ID), &[], &[]);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
    let r = reply_of(only_send(&out));
    assert_eq!(r.repr.code, ReplyCode::HaReverseTunnelMandatory);
    assert_eq!(p.pending_count(), 0);
}

#[test]
fn case_36_wrong_home_agent_field_gives_136_with_proxy_address() {
    let mut p = proxy();
    let mut r = req(0x22, 600, PUBLIC_COA, ID);
    r.home_agent = HA;
    let out = run(
        &mut p,
        at(0),
        ProxyInput::FromMobile(from_mn(&request(r, &[], &[]), mn_src())),
    );
    let reply = reply_of(only_send(&out));
    assert_eq!(reply.repr.code, ReplyCode::UnknownHomeAgent);
    assert_eq!(reply.repr.home_agent, PUB);
    // Sent to a broadcast address: the same, with the unicast address.
    let bytes = request(req(0x22, 600, PUBLIC_COA, ID), &[], &[]);
    let mut dg = from_mn(&bytes, mn_src());
    dg.dst = SocketAddrV4::new(Ipv4Addr::BROADCAST, 434);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(dg));
    assert_eq!(reply_of(only_send(&out)).repr.home_agent, PUB);
}

#[test]
fn case_37_home_agent_undetermined() {
    let mut c = config();
    c.home_agents[0].home_networks.clear();
    let mut p = proxy_with(c.clone());
    let bytes = h(V1);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::UnknownHomeAgent);
    c.reply_codes = CodeSet::Vt02;
    let mut p = proxy_with(c);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::ProxyMissingHaParameter);
    // HA Parameter 0.0.0.0 without an NAI: 201 in VT02 mode.
    let zero = ExtensionBody::HaParameter(HaParameter {
        reserved: 0,
        home_agent: Ipv4Addr::UNSPECIFIED,
    });
    let bytes = request(req(0x22, 600, PUBLIC_COA, ID + 1), &[zero], &[]);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::ProxyNonzeroHaRequired);
}

#[test]
fn case_38_ha_parameter_outside_allow_list_is_refused() {
    let mut p = proxy();
    let rogue = ExtensionBody::HaParameter(HaParameter {
        reserved: 0,
        home_agent: Ipv4Addr::new(10, 10, 9, 9),
    });
    let bytes = request(req(0x22, 600, PUBLIC_COA, ID), &[rogue], &[]);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
    let t = only_send(&out);
    assert_eq!(t.dst, mn_src(), "only the denial is sent, nothing toward 10.10.9.9");
    assert_eq!(reply_of(t).repr.code, ReplyCode::HaProhibited);
    assert_eq!(p.pending_count(), 0);
}

#[test]
fn ha_parameter_selects_an_allowed_ha_and_is_stripped_and_echoed() {
    let mut p = proxy();
    let param = ExtensionBody::HaParameter(HaParameter {
        reserved: 0,
        home_agent: OTHER_HA,
    });
    let nai = ExtensionBody::Nai(b"joe@example.com");
    let bytes = request(req(0x22, 600, PUBLIC_COA, ID), &[nai, param], &[]);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
    let t = only_send(&out);
    assert_eq!(t.dst, SocketAddrV4::new(OTHER_HA, 434));
    let relayed = request_of(t);
    let kinds: Vec<u8> = relayed.extensions().map(|e| e.ext_type()).collect();
    assert_eq!(kinds, vec![131, 32], "NAI kept, HA Parameter stripped");
    let reply = {
        let r = relayed.repr;
        let repr = ReplyRepr {
            code: ReplyCode::Accepted,
            lifetime: 600,
            home_address: HOA,
            home_agent: OTHER_HA,
            identification: r.identification,
        };
        let mut buf = vec![0u8; 256];
        let mut w = MessageWriter::reply(&mut buf, &repr, &Dialect::default()).unwrap();
        w.push(&ExtensionBody::Nai(b"joe@example.com")).unwrap();
        w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
        let n = w.len();
        buf.truncate(n);
        buf
    };
    let mut dg = from_ha(&reply);
    dg.src = SocketAddrV4::new(OTHER_HA, 434);
    let out = run(&mut p, at(0), ProxyInput::FromHomeAgent(dg));
    let r = reply_of(only_send(&out));
    let exts: Vec<ExtensionBody<'_>> = r.extensions().map(|e| e.body).collect();
    assert_eq!(exts[0], ExtensionBody::Nai(b"joe@example.com"));
    assert_eq!(
        exts[1],
        ExtensionBody::HaParameter(HaParameter {
            reserved: 0,
            home_agent: OTHER_HA
        })
    );
}

#[test]
fn case_39_simultaneous_bindings_relay_s_clear_and_longest_lifetime() {
    let mut p = proxy();
    let first = request(req(0xa2, 500, PUBLIC_COA, ID), &[], &[]);
    register(&mut p, at(0), &first, mn_src(), 500);
    let second_coa = Ipv4Addr::new(192, 0, 2, 78);
    let second = request(req(0xa2, 300, second_coa, ID + 0x1_0000_0000), &[], &[]);
    let out = run(
        &mut p,
        at(1),
        ProxyInput::FromMobile(from_mn(&second, SocketAddrV4::new(second_coa, 434))),
    );
    let relayed = request_of(only_send(&out));
    assert!(!relayed.repr.flags.simultaneous(), "relayed S = 0");
    assert_eq!(
        relayed.repr.lifetime, 499,
        "max(remaining of the other binding, requested)"
    );
}

#[test]
fn case_40_ha_shortens_lifetime() {
    let mut p = proxy();
    let out = register(&mut p, at(0), &h(V1), mn_src(), 300);
    assert_eq!(reply_of(only_send(&out)).repr.lifetime, 300);
    assert_eq!(binding_of(&p, PUBLIC_COA).lifetime, 300);
}

#[test]
fn case_41_ha_133_relayed_unchanged_state_not_advanced() {
    let mut p = proxy();
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    let relayed = only_send(&out).clone();
    let mut reply = ha_reply(&relayed, 133, 600, &[]);
    // The HA puts its own time in the high 32 bits (V7 shape) and re-signs.
    let resync = 0xec4e5b10_12345678u64;
    reply[12..20].copy_from_slice(&resync.to_be_bytes());
    let n = reply.len() - 22;
    reply.truncate(n);
    let mut buf = vec![0u8; 64];
    let repr = ReplyRepr::parse(&crate::wire::RegistrationReply::new_checked(&reply[..]).unwrap()).unwrap();
    let mut w = MessageWriter::reply(&mut buf, &repr, &Dialect::default()).unwrap();
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    let reply = w.as_bytes().to_vec();
    let out = run(&mut p, at(0), ProxyInput::FromHomeAgent(from_ha(&reply)));
    let r = reply_of(only_send(&out));
    assert_eq!(r.repr.code, ReplyCode::IdentificationMismatch);
    assert_eq!(r.repr.identification, resync);
    assert!(p.bindings().is_empty());
    // Not advanced: the same Identification is still fresh at the proxy.
    let out = run(&mut p, at(1), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    assert_eq!(only_send(&out).dst, SocketAddrV4::new(HA, 434));
}

#[test]
fn case_42_ha_reply_with_bad_authenticator_dropped() {
    let mut p = proxy();
    run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    let mut v3 = h(V3);
    let last = v3.len() - 1;
    v3[last] ^= 1;
    let out = run(&mut p, at(1), ProxyInput::FromHomeAgent(from_ha(&v3)));
    assert!(sends(&out).is_empty());
    assert_eq!(drops(&out), vec![DropReason::BadReplyAuthentication]);
    assert!(p.bindings().is_empty());
    assert_eq!(p.pending_count(), 1, "the entry waits for a genuine reply");
}

#[test]
fn case_43_ha_reply_matching_no_pending_dropped() {
    let mut p = proxy();
    run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    let relayed = Transmit {
        src: mn_src(),
        dst: mn_src(),
        ttl: None,
        payload: request(
            RequestRepr {
                home_agent: HA,
                ..req(0x20, 600, PRIV, ID + 1)
            },
            &[],
            &[],
        ),
    };
    let reply = ha_reply(&relayed, 0, 600, &[]);
    let out = run(&mut p, at(1), ProxyInput::FromHomeAgent(from_ha(&reply)));
    assert!(sends(&out).is_empty());
    assert_eq!(drops(&out), vec![DropReason::NoPendingRequest]);
    // A reply from an address that is not an allowed HA is dropped before parsing.
    let v3 = h(V3);
    let mut dg = from_ha(&v3);
    dg.src = SocketAddrV4::new(Ipv4Addr::new(10, 10, 9, 9), 434);
    assert_eq!(
        drops(&run(&mut p, at(1), ProxyInput::FromHomeAgent(dg))),
        vec![DropReason::UnknownHomeAgent]
    );
}

#[test]
fn case_44_no_room_for_the_binding_gives_130() {
    let mut p = proxy();
    for i in 0..crate::binding::MAX_SIMULTANEOUS_BINDINGS as u32 {
        let coa = Ipv4Addr::new(192, 0, 2, 100 + i as u8);
        let bytes = request(req(0xa2, 600, coa, ID + u64::from(i) * 0x1_0000_0000), &[], &[]);
        let out = register(&mut p, at(u64::from(i)), &bytes, SocketAddrV4::new(coa, 434), 600);
        assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::Accepted);
    }
    let coa = Ipv4Addr::new(192, 0, 2, 200);
    let bytes = request(req(0xa2, 600, coa, ID + 9 * 0x1_0000_0000), &[], &[]);
    let out = register(&mut p, at(9), &bytes, SocketAddrV4::new(coa, 434), 600);
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::HaInsufficientResources);
}

fn nai_request(id: u64) -> Vec<u8> {
    let mut r = req(0x22, 600, PUBLIC_COA, id);
    r.home_address = Ipv4Addr::UNSPECIFIED;
    let zero = ExtensionBody::HaParameter(HaParameter {
        reserved: 0,
        home_agent: Ipv4Addr::UNSPECIFIED,
    });
    request(r, &[ExtensionBody::Nai(b"ann@example.com"), zero], &[])
}

#[test]
fn case_45_reply_without_nai_gives_97_or_203() {
    for (codes, want) in [
        (CodeSet::Standard, ReplyCode::MissingNai),
        (CodeSet::Vt02, ReplyCode::ProxyMissingNai),
    ] {
        let mut c = config();
        c.reply_codes = codes;
        let mut p = proxy_with(c);
        let out = run(
            &mut p,
            at(0),
            ProxyInput::FromMobile(from_mn(&nai_request(ID), mn_src())),
        );
        let relayed = only_send(&out).clone();
        assert_eq!(
            relayed.dst,
            SocketAddrV4::new(HA, 434),
            "dynamic assignment picks the HA that assigns"
        );
        let reply = ha_reply(&relayed, 0, 600, &[]);
        let out = run(&mut p, at(0), ProxyInput::FromHomeAgent(from_ha(&reply)));
        assert_eq!(reply_of(only_send(&out)).repr.code, want);
        assert!(p.bindings().is_empty());
    }
}

#[test]
fn nai_registration_with_assigned_home_address() {
    let mut p = proxy();
    let out = run(
        &mut p,
        at(0),
        ProxyInput::FromMobile(from_mn(&nai_request(ID), mn_src())),
    );
    let relayed = only_send(&out).clone();
    let reply = ha_reply(&relayed, 0, 600, &[ExtensionBody::Nai(b"ann@example.com")]);
    let out = run(&mut p, at(0), ProxyInput::FromHomeAgent(from_ha(&reply)));
    let r = reply_of(only_send(&out));
    assert_eq!(r.repr.code, ReplyCode::Accepted);
    assert_eq!(r.repr.home_address, Ipv4Addr::new(10, 10, 1, 77));
    assert!(p.bindings().get_by_nai("ann@example.com").is_some());
    assert!(p.bindings().get_by_home(Ipv4Addr::new(10, 10, 1, 77)).is_some());
}

#[test]
fn case_46_icmp_unreachable_maps_to_81_or_202() {
    for (codes, want) in [
        (CodeSet::Standard, ReplyCode::FaHaHostUnreachable),
        (CodeSet::Vt02, ReplyCode::ProxyHaUnreachable),
    ] {
        let mut c = config();
        c.reply_codes = codes;
        let mut p = proxy_with(c);
        run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
        let out = run(
            &mut p,
            at(0),
            ProxyInput::HomeAgentUnreachable {
                home_agent: HA,
                icmp_code: 1,
            },
        );
        let t = only_send(&out);
        assert_eq!(t.dst, mn_src());
        assert_eq!(reply_of(t).repr.code, want);
        assert_eq!(p.pending_count(), 0);
    }
    let mut p = proxy();
    let out = run(
        &mut p,
        at(0),
        ProxyInput::HomeAgentUnreachable {
            home_agent: HA,
            icmp_code: 3,
        },
    );
    assert_eq!(drops(&out), vec![DropReason::StaleIcmpError]);
}

#[test]
fn case_47_pending_timeout_sends_nothing() {
    let mut p = proxy();
    run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    assert_eq!(p.next_timer(), Some(at(0).instant + Duration::from_secs(7)));
    let out = run(
        &mut p,
        Now::new(at(0).instant + Duration::from_millis(6999), at(6).ntp),
        ProxyInput::Tick,
    );
    assert!(out.is_empty());
    let out = run(&mut p, at(7), ProxyInput::Tick);
    assert_eq!(
        out,
        vec![
            ProxyOutput::PendingDone {
                home_address: HOA,
                nai: None,
                identification: ID,
                home_agent: HA,
                end: PendingEnd::Timeout,
            },
            ProxyOutput::Drop(DropReason::PendingTimeout)
        ]
    );
    assert_eq!(p.pending_count(), 0);
    // A late HA reply then matches nothing.
    let out = run(&mut p, at(8), ProxyInput::FromHomeAgent(from_ha(&h(V3))));
    assert_eq!(drops(&out), vec![DropReason::NoPendingRequest]);
}

#[test]
fn case_48_location_detection_answers_206() {
    let mut c = config();
    c.reply_codes = CodeSet::Vt02;
    c.intranet_prefixes = vec!["10.10.0.0/16".parse().unwrap()];
    let mut p = proxy_with(c);
    let inside = Ipv4Addr::new(10, 10, 5, 9);
    let bytes = request(req(0x22, 600, inside, ID), &[], &[]);
    let out = run(
        &mut p,
        at(0),
        ProxyInput::FromMobile(from_mn(&bytes, SocketAddrV4::new(inside, 434))),
    );
    let r = reply_of(only_send(&out));
    assert_eq!(r.repr.code, ReplyCode::ProxyAssignedHomeAgent);
    let param = r.extensions().find_map(|e| {
        if let ExtensionBody::HaParameter(h) = e.body {
            Some(h.home_agent)
        } else {
            None
        }
    });
    assert_eq!(param, Some(HA));
    assert_eq!(p.pending_count(), 0);
}

#[test]
fn case_49_nat_detected_v5_to_v6_udp_binding() {
    let mut p = proxy();
    let nat_src = SocketAddrV4::new(NAT, 40001);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&h(V5), nat_src)));
    let relayed = request_of(only_send(&out));
    assert!(
        relayed.extensions().all(|e| e.ext_type() != 144),
        "UDP Tunnel Request is not relayed"
    );
    let reply = ha_reply(only_send(&out), 0, 600, &[]);
    let out = run(&mut p, at(0), ProxyInput::FromHomeAgent(from_ha(&reply)));
    let t = only_send(&out);
    assert_eq!(t.dst, nat_src);
    let mut c = config();
    c.nat.keepalive = 110;
    let mut p2 = proxy_with(c);
    run(&mut p2, at(0), ProxyInput::FromMobile(from_mn(&h(V5), nat_src)));
    let out = run(&mut p2, at(0), ProxyInput::FromHomeAgent(from_ha(&reply)));
    assert_eq!(hex::encode(&only_send(&out).payload), V6);
    let b = binding_of(&p2, PRIVATE_COA);
    assert_eq!(
        b.tunnel,
        TunnelEndpoint {
            addr: NAT,
            port: 40001,
            encapsulation: Encapsulation::UdpIpInIp
        }
    );
    assert_eq!(b.keepalive_interval, 110);
    assert!(
        out.iter()
            .any(|o| matches!(o, ProxyOutput::Outcome(x) if x.nat_detected))
    );
}

#[test]
fn nat_lifetime_is_capped_by_default() {
    let mut p = proxy_with(ProxyConfig {
        nat: NatConfig::default(),
        ..config()
    });
    let out = run(
        &mut p,
        at(0),
        ProxyInput::FromMobile(from_mn(&h(V5), SocketAddrV4::new(NAT, 40001))),
    );
    assert_eq!(
        request_of(only_send(&out)).repr.lifetime,
        60,
        "RFC 3519 §5.2 suggested maximum"
    );
}

fn utrq(force: bool, encapsulation: u8, reserved3: u16, r: bool) -> ExtensionBody<'static> {
    ExtensionBody::UdpTunnelRequest(UdpTunnelRequest {
        force,
        registered_via_fa: r,
        encapsulation,
        reserved3,
        ..Default::default()
    })
}

fn utrp_of(t: &Transmit) -> Option<UdpTunnelReply> {
    reply_of(t).extensions().find_map(|e| {
        if let ExtensionBody::UdpTunnelReply(u) = e.body {
            Some(u)
        } else {
            None
        }
    })
}

#[test]
fn case_50_no_nat_declines_with_64_and_uses_ipip() {
    let mut p = proxy();
    let src = SocketAddrV4::new(PRIVATE_COA, 434);
    let out = register(&mut p, at(0), &h(V5), src, 600);
    let u = utrp_of(only_send(&out)).unwrap();
    assert_eq!(u.code, 64);
    assert_eq!(
        binding_of(&p, PRIVATE_COA).tunnel,
        TunnelEndpoint {
            addr: PRIVATE_COA,
            port: 0,
            encapsulation: Encapsulation::IpInIp
        }
    );
}

#[test]
fn case_51_forced_tunnelling() {
    let bytes = request(req(0x22, 600, PUBLIC_COA, ID), &[utrq(true, 4, 0, false)], &[]);
    let mut c = config();
    c.nat.allow_forced = true;
    let mut p = proxy_with(c);
    let out = register(&mut p, at(0), &bytes, mn_src(), 600);
    let u = utrp_of(only_send(&out)).unwrap();
    assert_eq!((u.code, u.forced), (0, true));
    assert_eq!(
        binding_of(&p, PUBLIC_COA).tunnel.encapsulation,
        Encapsulation::UdpIpInIp
    );
    let mut p = proxy();
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::HaProhibited);
}

#[test]
fn case_52_nat_traversal_disabled_gives_129() {
    let mut c = config();
    c.nat.traversal = false;
    let mut p = proxy_with(c);
    let out = run(
        &mut p,
        at(0),
        ProxyInput::FromMobile(from_mn(&h(V5), SocketAddrV4::new(NAT, 40001))),
    );
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::HaProhibited);
}

#[test]
fn case_53_misplaced_udp_tunnel_request_gives_134() {
    let mut p = proxy();
    // The node's own (before MN-HA) with D = 0 (from an FA the proxy shares no SA with).
    let other_fa = Ipv4Addr::new(192, 0, 2, 5);
    let bytes = request(req(0x02, 600, other_fa, ID), &[utrq(false, 4, 0, false)], &[]);
    let out = run(
        &mut p,
        at(0),
        ProxyInput::FromMobile(from_mn(&bytes, SocketAddrV4::new(other_fa, 434))),
    );
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::HaPoorlyFormedRequest);
    // An FA's (after MN-HA) with D = 1.
    let bytes = request(req(0x22, 600, PUBLIC_COA, ID + 1), &[], &[utrq(false, 4, 0, false)]);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::HaPoorlyFormedRequest);
}

#[test]
fn case_54_unsupported_encapsulation_gives_142() {
    let mut p = proxy();
    let bytes = request(req(0x22, 600, PRIVATE_COA, ID), &[utrq(false, 55, 0, false)], &[]);
    let out = run(
        &mut p,
        at(0),
        ProxyInput::FromMobile(from_mn(&bytes, SocketAddrV4::new(NAT, 40001))),
    );
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::HaUdpEncapUnavailable);
}

#[test]
fn case_55_reserved3_nonzero_gives_134() {
    let mut p = proxy();
    let bytes = request(req(0x22, 600, PRIVATE_COA, ID), &[utrq(false, 4, 1, false)], &[]);
    let out = run(
        &mut p,
        at(0),
        ProxyInput::FromMobile(from_mn(&bytes, SocketAddrV4::new(NAT, 40001))),
    );
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::HaPoorlyFormedRequest);
}

#[test]
fn case_56_reregistration_from_new_port_switches_binding() {
    let mut p = proxy();
    register(&mut p, at(0), &h(V5), SocketAddrV4::new(NAT, 40001), 600);
    let again = request(
        req(0x22, 600, PRIVATE_COA, ID + 0x1_0000_0000),
        &[utrq(false, 4, 0, false)],
        &[],
    );
    let out = register(&mut p, at(1), &again, SocketAddrV4::new(NAT, 40002), 600);
    assert_eq!(only_send(&out).dst, SocketAddrV4::new(NAT, 40002));
    assert_eq!(binding_of(&p, PRIVATE_COA).tunnel.port, 40002);
    assert!(out.iter().any(|o| matches!(o, ProxyOutput::Binding(c) if c.kind == BindingChangeKind::Refreshed && c.binding.tunnel.port == 40002)));
}

#[test]
fn case_57_r_flag_half_bound_until_keepalive_from_same_address() {
    let mut p = proxy();
    let bytes = request(req(0x22, 600, PRIVATE_COA, ID), &[utrq(false, 4, 0, true)], &[]);
    let src = SocketAddrV4::new(NAT, 40003);
    register(&mut p, at(0), &bytes, src, 600);
    assert!(binding_of(&p, PRIVATE_COA).half_bound);
    let out = run(
        &mut p,
        at(1),
        ProxyInput::Keepalive {
            src: SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 6), 5000),
            home_address: HOA,
        },
    );
    assert_eq!(drops(&out), vec![DropReason::UnexpectedKeepalive]);
    assert!(binding_of(&p, PRIVATE_COA).half_bound);
    let out = run(
        &mut p,
        at(1),
        ProxyInput::Keepalive {
            src: SocketAddrV4::new(NAT, 5000),
            home_address: HOA,
        },
    );
    assert!(matches!(&out[..], [ProxyOutput::Binding(c)] if c.kind == BindingChangeKind::Refreshed));
    let b = binding_of(&p, PRIVATE_COA);
    assert!(!b.half_bound);
    assert_eq!(b.tunnel.port, 5000, "the keepalive's port becomes the tunnel's");
}

#[test]
fn case_61_deregister_all_v8() {
    let mut p = proxy();
    register(&mut p, at(0), &h(V1), mn_src(), 600);
    let v8 = h(V8);
    let now = Now::new(at(0).instant, NtpTimestamp::new(0xec4e_5c00, 0));
    let out = run(
        &mut p,
        now,
        ProxyInput::FromMobile(from_mn(&v8, SocketAddrV4::new(HOA, 434))),
    );
    let relayed = request_of(only_send(&out));
    assert_eq!((relayed.repr.lifetime, relayed.repr.care_of_address), (0, PRIV));
    let reply = ha_reply(only_send(&out), 0, 0, &[]);
    let out = run(&mut p, now, ProxyInput::FromHomeAgent(from_ha(&reply)));
    assert_eq!(reply_of(only_send(&out)).repr.lifetime, 0);
    assert!(p.bindings().is_empty());
    assert!(
        out.iter()
            .any(|o| matches!(o, ProxyOutput::Binding(c) if c.kind == BindingChangeKind::Removed))
    );
}

#[test]
fn case_62_deregister_one_of_two_simultaneous() {
    let mut p = proxy();
    let second = Ipv4Addr::new(192, 0, 2, 78);
    register(
        &mut p,
        at(0),
        &request(req(0xa2, 600, PUBLIC_COA, ID), &[], &[]),
        mn_src(),
        600,
    );
    register(
        &mut p,
        at(1),
        &request(req(0xa2, 400, second, ID + 0x1_0000_0000), &[], &[]),
        SocketAddrV4::new(second, 434),
        600,
    );
    assert_eq!(p.bindings().len(), 2);
    let dereg = request(req(0x22, 0, PUBLIC_COA, ID + 0x2_0000_0000), &[], &[]);
    let out = run(&mut p, at(2), ProxyInput::FromMobile(from_mn(&dereg, mn_src())));
    let relayed = request_of(only_send(&out));
    assert_eq!(
        relayed.repr.lifetime, 399,
        "the other binding's remaining lifetime keeps the HA's binding"
    );
    let reply = ha_reply(only_send(&out), 0, 399, &[]);
    let out = run(&mut p, at(2), ProxyInput::FromHomeAgent(from_ha(&reply)));
    assert_eq!(reply_of(only_send(&out)).repr.lifetime, 0);
    assert_eq!(p.bindings().len(), 1);
    assert!(p.bindings().get_by_home(HOA).unwrap().binding(second).is_some());
}

#[test]
fn case_63_expiry_removes_binding_without_message() {
    let mut p = proxy();
    register(&mut p, at(0), &h(V1), mn_src(), 30);
    let out = run(&mut p, at(29), ProxyInput::Tick);
    assert!(out.is_empty());
    let out = run(&mut p, at(30), ProxyInput::Tick);
    assert!(sends(&out).is_empty(), "expiry sends nothing");
    assert!(
        matches!(&out[..], [ProxyOutput::Binding(c)] if c.kind == BindingChangeKind::Expired && c.home_address == HOA)
    );
    assert!(p.bindings().is_empty());
}

#[test]
fn case_64_infinite_lifetime_capped() {
    let mut c = config();
    c.max_lifetime = 600;
    let mut p = proxy_with(c);
    let bytes = request(req(0x22, 0xffff, PUBLIC_COA, ID), &[], &[]);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
    let relayed = only_send(&out).clone();
    assert_eq!(request_of(&relayed).repr.lifetime, 600);
    // Even an HA that grants more than relayed cannot make the proxy grant more than its cap.
    let reply = ha_reply(&relayed, 0, 0xffff, &[]);
    let out = run(&mut p, at(0), ProxyInput::FromHomeAgent(from_ha(&reply)));
    assert!(reply_of(only_send(&out)).repr.lifetime <= 600);
}

#[test]
fn case_65_nonce_retransmission_does_not_extend_lifetime() {
    let keys = {
        let text =
            format!("security_associations:\n  - {{home_address: {HOA}, spi: {SPI}, key: {KEY}, replay: nonce}}\n");
        from_yaml::<KeysFile>(&text).unwrap().to_keystore().unwrap()
    };
    let mut p = Proxy::new(config(), keys, 1);
    let nonce_sa = SecurityAssociation::new(
        Spi::new(SPI).unwrap(),
        Algorithm::HmacMd5,
        Key::from_hex(KEY).unwrap(),
        ReplayStyle::Nonce,
    );
    let sign = |repr: RequestRepr| {
        let mut buf = vec![0u8; 64];
        let mut w = MessageWriter::request(&mut buf, &repr, &Dialect::default()).unwrap();
        w.push_auth(AuthKind::MobileHome, &nonce_sa).unwrap();
        w.as_bytes().to_vec()
    };
    let bytes = sign(req(0x22, 600, PUBLIC_COA, 0x1111_2222_0000_0001));
    let accept = |p: &mut Proxy, now: Now| {
        let out = run(p, now, ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
        let relayed = only_send(&out).clone();
        let mut reply = ha_reply(&relayed, 0, 600, &[]);
        // The HA issues nonce 0xaaaa0001 (high 32 bits) and re-signs.
        reply[12..16].copy_from_slice(&0xaaaa_0001u32.to_be_bytes());
        let repr = ReplyRepr::parse(&crate::wire::RegistrationReply::new_checked(&reply[..]).unwrap()).unwrap();
        let mut buf = vec![0u8; 64];
        let mut w = MessageWriter::reply(&mut buf, &repr, &Dialect::default()).unwrap();
        w.push_auth(AuthKind::MobileHome, &nonce_sa).unwrap();
        let reply = w.as_bytes().to_vec();
        run(p, now, ProxyInput::FromHomeAgent(from_ha(&reply)))
    };
    accept(&mut p, at(0));
    let first = binding_of(&p, PUBLIC_COA).expires_at;
    // The identical request again (a nonce retransmission after a lost reply): relayed, answered, not extended.
    let out = accept(&mut p, at(100));
    assert_eq!(
        Reply::parse(&only_send(&out).payload, &Dialect::default())
            .unwrap()
            .repr
            .code,
        ReplyCode::Accepted
    );
    assert_eq!(binding_of(&p, PUBLIC_COA).expires_at, first);
    // The next request must carry the HA's nonce; another one gets 133 with that nonce.
    let stale = sign(req(0x22, 600, PUBLIC_COA, 0x1111_2222_0000_0002));
    let out = run(&mut p, at(101), ProxyInput::FromMobile(from_mn(&stale, mn_src())));
    let r = Reply::parse(&only_send(&out).payload, &Dialect::default()).unwrap();
    assert_eq!(r.repr.code, ReplyCode::IdentificationMismatch);
    assert_eq!(r.repr.identification >> 32, 0xaaaa_0001);

    // Scale-out: replica B installs A's state for the node, issued nonce included. The node's next request,
    // carrying the HA's nonce, is relayed at B; the old request replayed at B is refused with that nonce.
    assert_eq!(p.issued_nonce(HOA, None), Some(0xaaaa_0001));
    let keys = {
        let text =
            format!("security_associations:\n  - {{home_address: {HOA}, spi: {SPI}, key: {KEY}, replay: nonce}}\n");
        from_yaml::<KeysFile>(&text).unwrap().to_keystore().unwrap()
    };
    let bindings: Vec<Binding> = p.bindings().get_by_home(HOA).unwrap().bindings().to_vec();
    let mut b = Proxy::new(config(), keys, 2);
    b.apply_replicated(&ReplicatedNode {
        home_address: HOA,
        nai: None,
        bindings: &bindings,
        last_accepted: p.last_accepted(HOA, None),
        nonce_issued: p.issued_nonce(HOA, None),
    })
    .unwrap();
    assert_eq!(b.issued_nonce(HOA, None), Some(0xaaaa_0001));
    let out = run(&mut b, at(102), ProxyInput::FromMobile(from_mn(&stale, mn_src())));
    let r = Reply::parse(&only_send(&out).payload, &Dialect::default()).unwrap();
    assert_eq!(r.repr.code, ReplyCode::IdentificationMismatch);
    assert_eq!(
        r.repr.identification >> 32,
        0xaaaa_0001,
        "B asks for the nonce A's HA issued"
    );
    let next = sign(req(0x22, 600, PUBLIC_COA, 0xaaaa_0001_0000_0003));
    let out = run(&mut b, at(103), ProxyInput::FromMobile(from_mn(&next, mn_src())));
    assert_eq!(only_send(&out).dst, SocketAddrV4::new(HA, 434), "relayed at B: {out:?}");
}

#[test]
fn case_18_bad_authenticator_dropped_or_131_by_policy() {
    let mut v1 = h(V1);
    v1[3] ^= 1; // a covered byte (the lifetime)
    let mut p = proxy();
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&v1, mn_src())));
    assert_eq!(out, vec![ProxyOutput::Drop(DropReason::BadAuthenticator)]);
    let mut c = config();
    c.reply_on_auth_failure = true;
    let mut p = proxy_with(c);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&v1, mn_src())));
    let r = reply_of(only_send(&out));
    assert_eq!(r.repr.code, ReplyCode::HaMnAuthFailed);
}

#[test]
fn cases_20_21_22_silent_drops() {
    let mut p = proxy();
    let mut reserved = h(V1);
    reserved[26..30].copy_from_slice(&0xffu32.to_be_bytes());
    let mut unknown = h(V1);
    unknown[26..30].copy_from_slice(&0x200u32.to_be_bytes());
    let no_auth = h(V1)[..24].to_vec();
    for (bytes, why) in [
        (reserved, DropReason::NoSecurityAssociation),
        (unknown, DropReason::NoSecurityAssociation),
        (no_auth, DropReason::NoAuthExtension),
    ] {
        let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, mn_src())));
        assert_eq!(out, vec![ProxyOutput::Drop(why)]);
    }
    // Malformed: no reply either (cases 3, 5, 6).
    let v1 = h(V1);
    for bytes in [&v1[..23], &v1[..36]] {
        let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(bytes, mn_src())));
        assert!(
            matches!(&out[..], [ProxyOutput::Drop(DropReason::Malformed(_))]),
            "{out:?}"
        );
    }
    // Home address 0 without NAI.
    let mut r = req(0x22, 600, PUBLIC_COA, ID);
    r.home_address = Ipv4Addr::UNSPECIFIED;
    let out = run(
        &mut p,
        at(0),
        ProxyInput::FromMobile(from_mn(&request(r, &[], &[]), mn_src())),
    );
    assert_eq!(out, vec![ProxyOutput::Drop(DropReason::NoIdentity)]);
}

#[test]
fn case_25_timestamp_replay_answered_133_with_proxy_time() {
    let mut p = proxy();
    register(&mut p, at(0), &h(V1), mn_src(), 600);
    // The same request again (a replay): 133, high 32 bits = proxy time, low 32 bits copied.
    let out = run(&mut p, at(2), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    let r = reply_of(only_send(&out));
    assert_eq!(r.repr.code, ReplyCode::IdentificationMismatch);
    assert_eq!(r.repr.identification, (u64::from(0xec4e_5a02u32) << 32) | 0x1234_5678);
    // A fresh timestamp afterwards is relayed.
    let next = request(
        req(0x22, 600, PUBLIC_COA, (u64::from(0xec4e_5a02u32) << 32) | 0x1234_5679),
        &[],
        &[],
    );
    let out = run(&mut p, at(2), ProxyInput::FromMobile(from_mn(&next, mn_src())));
    assert_eq!(only_send(&out).dst, SocketAddrV4::new(HA, 434));
}

#[test]
fn case_26_timestamp_too_far_ahead() {
    let mut p = proxy();
    let ahead = request(req(0x22, 600, PUBLIC_COA, u64::from(0xec4e_5a08u32) << 32), &[], &[]);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&ahead, mn_src())));
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::IdentificationMismatch);
}

#[test]
fn case_31_identifications_relayed_unchanged_both_ways() {
    let mut p = proxy();
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    assert_eq!(request_of(only_send(&out)).repr.identification, ID);
    let out = run(&mut p, at(0), ProxyInput::FromHomeAgent(from_ha(&h(V3))));
    assert_eq!(reply_of(only_send(&out)).repr.identification, ID);
}

#[test]
fn fa_relayed_request_needs_valid_fa_ha_and_gets_one_back() {
    let fa_sa = SecurityAssociation::new(
        Spi::new(0x300).unwrap(),
        Algorithm::HmacMd5,
        Key::from_hex("0f0e0d0c0b0a09080706050403020100").unwrap(),
        ReplayStyle::default(),
    );
    let mut p = proxy();
    let fa_src = SocketAddrV4::new(FA, 434);
    // Without FA-HA: 132.
    let bytes = request(req(0x02, 600, FA, ID), &[], &[]);
    let out = run(&mut p, at(0), ProxyInput::FromMobile(from_mn(&bytes, fa_src)));
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::HaFaAuthFailed);
    // With a valid FA-HA: relayed; the reply carries FA-HA after MN-HA.
    let mut buf = vec![0u8; 128];
    let mut w = MessageWriter::request(&mut buf, &req(0x02, 600, FA, ID + 1), &Dialect::default()).unwrap();
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    w.push_auth(AuthKind::ForeignHome, &fa_sa).unwrap();
    let bytes = w.as_bytes().to_vec();
    let out = register(&mut p, at(0), &bytes, fa_src, 600);
    let t = only_send(&out);
    let r = reply_of(t);
    let fa_ha = r.auth(AuthKind::ForeignHome).unwrap();
    fa_sa.verify(&t.payload, &fa_ha).unwrap();
    assert_eq!(
        binding_of(&p, FA).tunnel,
        TunnelEndpoint {
            addr: FA,
            port: 0,
            encapsulation: Encapsulation::IpInIp
        }
    );
    // FA-HA with an SPI the proxy has no SA for: silent drop.
    let stranger = SecurityAssociation::new(
        Spi::new(0x301).unwrap(),
        Algorithm::HmacMd5,
        Key::new(&[9; 16]),
        ReplayStyle::default(),
    );
    let mut buf = vec![0u8; 128];
    let mut w = MessageWriter::request(&mut buf, &req(0x02, 600, FA, ID + 0x1_0000_0000), &Dialect::default()).unwrap();
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    w.push_auth(AuthKind::ForeignHome, &stranger).unwrap();
    let unknown = w.as_bytes().to_vec();
    let out = run(&mut p, at(1), ProxyInput::FromMobile(from_mn(&unknown, fa_src)));
    assert_eq!(drops(&out), vec![DropReason::UnknownFaHaSpi]);
}

/// A request as the FA at `FA` relays it: the node's request, then FA-HA with the SA the FA shares with us.
fn via_fa(repr: RequestRepr) -> Vec<u8> {
    let fa_sa = SecurityAssociation::new(
        Spi::new(0x300).unwrap(),
        Algorithm::HmacMd5,
        Key::from_hex("0f0e0d0c0b0a09080706050403020100").unwrap(),
        ReplayStyle::default(),
    );
    let mut buf = vec![0u8; 128];
    let mut w = MessageWriter::request(&mut buf, &repr, &Dialect::default()).unwrap();
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    if repr.lifetime != 0 {
        w.push_auth(AuthKind::ForeignHome, &fa_sa).unwrap();
    }
    w.as_bytes().to_vec()
}

/// Whether `t` carries an FA-HA extension that the FA's SA verifies.
fn fa_ha_valid(t: &Transmit) -> bool {
    let fa_sa = keys().agent(FA, 0x300).unwrap().clone();
    let r = Reply::parse(&t.payload, &Dialect::default()).unwrap();
    r.auth(AuthKind::ForeignHome)
        .is_some_and(|e| fa_sa.verify(&t.payload, &e).is_ok())
}

#[test]
fn own_denials_to_an_fa_carry_fa_ha() {
    // Simulation finding: an FA that shares an SA with the proxy turns a reply without FA-HA into 68 (RFC 5944
    // §3.7.3.1). The proxy's own denials lacked FA-HA, so e.g. a 133 resync through an FA always reached the node
    // as 68 and the node gave up.
    let mut p = proxy();
    let fa_src = SocketAddrV4::new(FA, 434);
    let first = via_fa(req(0x02, 600, FA, ID));
    let out = register(&mut p, at(0), &first, fa_src, 600);
    assert!(fa_ha_valid(only_send(&out)));
    // The same request again: 133 from the proxy itself, with FA-HA.
    let out = run(&mut p, at(1), ProxyInput::FromMobile(from_mn(&first, fa_src)));
    let t = only_send(&out);
    assert_eq!(reply_of(t).repr.code, ReplyCode::IdentificationMismatch);
    assert!(fa_ha_valid(t), "133 without FA-HA");
    // A T-bit denial (138) likewise.
    let out = run(
        &mut p,
        at(1),
        ProxyInput::FromMobile(from_mn(&via_fa(req(0x00, 600, FA, ID + (2 << 32))), fa_src)),
    );
    let t = only_send(&out);
    assert_eq!(reply_of(t).repr.code, ReplyCode::HaReverseTunnelMandatory);
    assert!(fa_ha_valid(t));
    // An ICMP error on the relay (81).
    run(
        &mut p,
        at(2),
        ProxyInput::FromMobile(from_mn(&via_fa(req(0x02, 600, FA, ID + (3 << 32))), fa_src)),
    );
    let out = run(
        &mut p,
        at(2),
        ProxyInput::HomeAgentUnreachable {
            home_agent: HA,
            icmp_code: 1,
        },
    );
    let t = only_send(&out);
    assert_eq!(reply_of(t).repr.code, ReplyCode::FaHaHostUnreachable);
    assert!(fa_ha_valid(t));
    // Never on a deregistration (RFC 5944 §3.5.4): a replayed one is answered 133 without FA-HA.
    let dereg = via_fa(req(0x00, 0, HOA, ID));
    let out = run(&mut p, at(3), ProxyInput::FromMobile(from_mn(&dereg, fa_src)));
    let t = only_send(&out);
    assert_eq!(reply_of(t).repr.code, ReplyCode::IdentificationMismatch);
    assert!(reply_of(t).auth(AuthKind::ForeignHome).is_none());
    // A co-located node's own request (D = 1) gets none either.
    let out = run(&mut p, at(3), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    assert!(reply_of(only_send(&out)).auth(AuthKind::ForeignHome).is_none());
}

#[test]
fn crossed_ha_replies_do_not_move_the_binding_back() {
    // Simulation finding: the node moves while a registration is in flight; the HA accepts the old request, then
    // the new one, and their replies cross on the way back. The late reply to the old request used to move the
    // proxy's binding back to the old care-of address while the node stayed registered at the new one.
    let mut p = proxy();
    let new_coa = Ipv4Addr::new(192, 0, 2, 99);
    let old = request(req(0x22, 600, PUBLIC_COA, ID), &[], &[]);
    let new = request(req(0x22, 600, new_coa, ID + (1 << 32) + 1), &[], &[]);
    let out = run(&mut p, at(1), ProxyInput::FromMobile(from_mn(&old, mn_src())));
    let relayed_old = only_send(&out).clone();
    let new_src = SocketAddrV4::new(new_coa, 434);
    let out = run(&mut p, at(1), ProxyInput::FromMobile(from_mn(&new, new_src)));
    let relayed_new = only_send(&out).clone();
    // The HA accepted both, in order; the replies arrive newest first.
    let out = run(
        &mut p,
        at(1),
        ProxyInput::FromHomeAgent(from_ha(&ha_reply(&relayed_new, 0, 600, &[]))),
    );
    assert_eq!(only_send(&out).dst, new_src);
    let out = run(
        &mut p,
        at(1),
        ProxyInput::FromHomeAgent(from_ha(&ha_reply(&relayed_old, 0, 600, &[]))),
    );
    assert!(
        matches!(
            &out[..],
            [
                ProxyOutput::PendingDone {
                    end: PendingEnd::Reply(ReplyCode::Accepted),
                    ..
                },
                ProxyOutput::Drop(DropReason::IdentificationMismatch)
            ]
        ),
        "{out:?}"
    );
    assert_eq!(p.pending_count(), 0);
    let e = p.bindings().get_by_home(HOA).unwrap();
    assert_eq!(e.bindings().len(), 1);
    assert_eq!(e.bindings()[0].care_of_address, new_coa);
    // In order, both are installed as before.
    let mut p = proxy();
    let out = run(&mut p, at(1), ProxyInput::FromMobile(from_mn(&old, mn_src())));
    let relayed_old = only_send(&out).clone();
    let out = run(&mut p, at(1), ProxyInput::FromMobile(from_mn(&new, new_src)));
    let relayed_new = only_send(&out).clone();
    run(
        &mut p,
        at(1),
        ProxyInput::FromHomeAgent(from_ha(&ha_reply(&relayed_old, 0, 600, &[]))),
    );
    run(
        &mut p,
        at(1),
        ProxyInput::FromHomeAgent(from_ha(&ha_reply(&relayed_new, 0, 600, &[]))),
    );
    assert_eq!(binding_of(&p, new_coa).identification, ID + (1 << 32) + 1);
}

#[test]
fn s_bit_without_support_answers_code_1() {
    let mut c = config();
    c.simultaneous_bindings = false;
    let mut p = proxy_with(c);
    let out = register(
        &mut p,
        at(0),
        &request(req(0xa2, 600, PUBLIC_COA, ID), &[], &[]),
        mn_src(),
        600,
    );
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::AcceptedNoSimultaneous);
}

#[test]
fn hand_off_replaces_the_binding() {
    let mut p = proxy();
    register(&mut p, at(0), &h(V1), mn_src(), 600);
    let new_coa = Ipv4Addr::new(192, 0, 2, 99);
    let bytes = request(req(0x22, 600, new_coa, ID + 0x1_0000_0000), &[], &[]);
    let out = register(&mut p, at(1), &bytes, SocketAddrV4::new(new_coa, 434), 600);
    let kinds: Vec<_> = out
        .iter()
        .filter_map(|o| {
            if let ProxyOutput::Binding(c) = o {
                Some((c.kind, c.binding.care_of_address))
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        kinds,
        vec![
            (BindingChangeKind::Removed, PUBLIC_COA),
            (BindingChangeKind::Created, new_coa)
        ]
    );
    assert_eq!(p.bindings().len(), 1);
}

#[test]
fn key_reload_keeps_bindings() {
    let mut p = proxy();
    register(&mut p, at(0), &h(V1), mn_src(), 600);
    p.set_keys(KeyStore::new());
    assert_eq!(p.bindings().len(), 1);
    // Without keys every request is dropped.
    let next = request(req(0x22, 600, PUBLIC_COA, ID + 0x1_0000_0000), &[], &[]);
    assert_eq!(
        drops(&run(&mut p, at(1), ProxyInput::FromMobile(from_mn(&next, mn_src())))),
        vec![DropReason::NoSecurityAssociation]
    );
}

#[test]
fn config_yaml_and_validation() {
    let text = "proxy_public: 198.51.100.10\nproxy_private: 10.10.0.10\nhome_agents:\n  - address: 10.10.1.1\n    home_networks: [10.10.1.0/24]\n";
    let c: ProxyConfig = from_yaml(text).unwrap();
    assert_eq!(c.max_lifetime, 1800);
    assert_eq!(c.nat.max_lifetime, 60);
    assert_eq!(c.node_address(), PRIV);
    let bad = "proxy_public: 198.51.100.10\nproxy_private: 198.51.100.10\nhome_agents: []\nnat: {keepalive: 5}\n";
    let errs = from_yaml::<ProxyConfig>(bad).unwrap_err();
    let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, vec!["proxy_private", "home_agents", "nat.keepalive"]);
    let dialect =
        "proxy_public: 198.51.100.10\nproxy_private: 10.10.0.10\nhome_agents: []\ndialect: {ha_parameter_type: 32}\n";
    let errs = from_yaml::<ProxyConfig>(dialect).unwrap_err();
    assert_eq!(errs[0].field, "dialect");
    assert!(errs[0].message.contains("collides"), "{}", errs[0].message);
    let typo = "proxy_public: 198.51.100.10\nproxy_private: 10.10.0.10\nhome_agents: []\nnat: {travresal: true}\n";
    assert_eq!(from_yaml::<ProxyConfig>(typo).unwrap_err()[0].field, "nat.travresal");
}

/// Scenario D: an FA behind a NAT adds its own UDP Tunnel Request after MN-HA and signs FA-HA; the proxy finds
/// the FA's SA by its care-of address, tunnels over UDP to the NAT mapping, and answers the FA's request after
/// MN-HA so the FA consumes it.
#[test]
fn scenario_d_fa_behind_nat() {
    let fa_sa = SecurityAssociation::new(
        Spi::new(0x300).unwrap(),
        Algorithm::HmacMd5,
        Key::from_hex("0f0e0d0c0b0a09080706050403020100").unwrap(),
        ReplayStyle::default(),
    );
    let mut p = proxy();
    let mut buf = vec![0u8; 128];
    let mut w = MessageWriter::request(&mut buf, &req(0x02, 600, FA, ID), &Dialect::default()).unwrap();
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    w.push(&utrq(false, 4, 0, false)).unwrap();
    w.push_auth(AuthKind::ForeignHome, &fa_sa).unwrap();
    let bytes = w.as_bytes().to_vec();
    let nat_src = SocketAddrV4::new(NAT, 41000);
    let out = register(&mut p, at(0), &bytes, nat_src, 600);
    let t = only_send(&out);
    assert_eq!(t.dst, nat_src);
    let r = reply_of(t);
    let order: Vec<u8> = r.extensions().map(|e| e.ext_type()).collect();
    assert_eq!(order, vec![32, 44, 34], "MN-HA, the FA's UDP Tunnel Reply, FA-HA");
    fa_sa
        .verify(&t.payload, &r.auth(AuthKind::ForeignHome).unwrap())
        .unwrap();
    assert_eq!(
        binding_of(&p, FA).tunnel,
        TunnelEndpoint {
            addr: NAT,
            port: 41000,
            encapsulation: Encapsulation::UdpIpInIp
        }
    );
}

// --- scale-out: state installed from a peer replica ---

#[test]
fn replicated_state_serves_data_and_refuses_a_replay_at_another_replica() {
    // Replica A accepts V1; replica B gets A's state for the node.
    let mut a = proxy();
    let out = register(&mut a, at(0), &h(V1), mn_src(), 600);
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::Accepted);
    let bindings: Vec<Binding> = a.bindings().get_by_home(HOA).unwrap().bindings().to_vec();
    let last = a.last_accepted(HOA, None);
    assert_eq!(last, Some(ID));
    let mut b = proxy();
    b.apply_replicated(&ReplicatedNode {
        home_address: HOA,
        nai: None,
        bindings: &bindings,
        last_accepted: last,
        nonce_issued: None,
    })
    .unwrap();
    assert_eq!(binding_of(&b, bindings[0].care_of_address), bindings[0]);
    assert_eq!(b.last_accepted(HOA, None), Some(ID));
    // The same request replayed at B: refused with 133 (Identification mismatch), nothing relayed.
    let out = run(&mut b, at(1), ProxyInput::FromMobile(from_mn(&h(V1), mn_src())));
    assert_eq!(reply_of(only_send(&out)).repr.code, ReplyCode::IdentificationMismatch);
    assert_eq!(b.pending_count(), 0);
    // Applying again is idempotent; an empty set removes the node.
    b.apply_replicated(&ReplicatedNode {
        home_address: HOA,
        nai: None,
        bindings: &bindings,
        last_accepted: last,
        nonce_issued: None,
    })
    .unwrap();
    assert_eq!(b.bindings().len(), 1);
    b.apply_replicated(&ReplicatedNode {
        home_address: HOA,
        nai: None,
        bindings: &[],
        last_accepted: last,
        nonce_issued: None,
    })
    .unwrap();
    assert!(b.bindings().is_empty());
    // An older Identification from a late peer message never moves the replay state back.
    b.apply_replicated(&ReplicatedNode {
        home_address: HOA,
        nai: None,
        bindings: &[],
        last_accepted: Some(ID - (1 << 32)),
        nonce_issued: None,
    })
    .unwrap();
    assert_eq!(b.last_accepted(HOA, None), Some(ID));
    // No key at all is an error.
    assert_eq!(
        b.apply_replicated(&ReplicatedNode {
            home_address: Ipv4Addr::UNSPECIFIED,
            nai: None,
            bindings: &[],
            last_accepted: None,
            nonce_issued: None,
        }),
        Err(BindingError::NoKey)
    );
}
