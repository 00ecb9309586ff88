//! Byte-exact vectors (spec §11.2) and the codec/authenticator conformance cases 1–24 and 31 of spec §10,
//! at the library level. Role behaviour for the same cases (who replies what) is tested with the roles.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::Ipv4Addr;

use mip::auth::{self, Algorithm, AuthError, Key, SecurityAssociation, Spi};
use mip::keystore::KeyStore;
use mip::replay::ReplayStyle;
use mip::wire::advertisement::AddrList;
use mip::wire::{
    AgentAdvertisementRepr, AuthKind, Dialect, ErrorKind, ExtensionBody, Message, MessageWriter, MobilityAgentExt,
    MobilityAgentFlags, Reply, ReplyCode, ReplyRepr, Request, RequestFlags, RequestRepr, UdpTunnelReply,
    UdpTunnelRequest,
};

const KEY: &str = "000102030405060708090a0b0c0d0e0f";
const HOA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 50);
const HA: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 1);
const MIPP_PUB: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const MIPP_PRIV: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 10);
const PUBLIC_COA: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const PRIVATE_COA: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 77);
const ID: u64 = 0xec4e5a00_12345678;

const V1: &str = "012202580a0a0132c633640ac000024dec4e5a0012345678201400000100869d33adee786a3be9b795c8cafb1d71";
const V2: &str = "012002580a0a01320a0a01010a0a000aec4e5a0012345678201400000100c823dffc3899875509ed4d1b15084e46";
const V3: &str = "030002580a0a01320a0a0101ec4e5a00123456782014000001006b17bf7f0f1322f9a1153dec5925c42d";
const V4: &str = "030002580a0a0132c633640aec4e5a001234567820140000010070e2cee90091976e0fac5350cebf59c8";
const V5: &str = "012202580a0a0132c633640ac0a8014dec4e5a00123456789006000000040000201400000100\
                  9bcd0d4218bd0833ec9236954b4a9027";
const V6: &str = "030002580a0a0132c633640aec4e5a00123456782c060000\
                  0000006e201400000100e6a5219b9bda226f058144d658a16c75";
const V7: &str = "038502580a0a0132c633640aec4e5b10123456782014000001005441519f1295b0d5007b4c3e4bff77ff";
const V8: &str = "010000000a0a0132c633640a0a0a0132ec4e5c0000000001201400000100\
                  4ab4bd7a9bd5909ef324037d2f974776";

fn h(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).expect("hex")
}

fn sa() -> SecurityAssociation {
    SecurityAssociation::new(
        Spi::new(0x100).unwrap(),
        Algorithm::HmacMd5,
        Key::from_hex(KEY).unwrap(),
        ReplayStyle::default(),
    )
}

fn request(flags: u8, lifetime: u16, ha: Ipv4Addr, coa: Ipv4Addr, id: u64) -> RequestRepr {
    RequestRepr {
        flags: RequestFlags(flags),
        lifetime,
        home_address: HOA,
        home_agent: ha,
        care_of_address: coa,
        identification: id,
    }
}

fn reply(code: u8, ha: Ipv4Addr, id: u64) -> ReplyRepr {
    ReplyRepr {
        code: ReplyCode::from(code),
        lifetime: 600,
        home_address: HOA,
        home_agent: ha,
        identification: id,
    }
}

/// Emits a request: fixed part, `exts`, then MN-HA with the spec SA.
fn emit_request(repr: &RequestRepr, exts: &[ExtensionBody<'_>]) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let mut w = MessageWriter::request(&mut buf, repr, &Dialect::default()).unwrap();
    for e in exts {
        w.push(e).unwrap();
    }
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    w.as_bytes().to_vec()
}

fn emit_reply(repr: &ReplyRepr, exts: &[ExtensionBody<'_>]) -> Vec<u8> {
    let mut buf = [0u8; 512];
    let mut w = MessageWriter::reply(&mut buf, repr, &Dialect::default()).unwrap();
    for e in exts {
        w.push(e).unwrap();
    }
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    w.as_bytes().to_vec()
}

fn verify_request(bytes: &[u8]) -> Result<(), AuthError> {
    let r = Request::parse(bytes, &Dialect::default()).unwrap();
    sa().verify(bytes, &r.auth(AuthKind::MobileHome).unwrap())
}

fn utrq_encap4() -> ExtensionBody<'static> {
    ExtensionBody::UdpTunnelRequest(UdpTunnelRequest {
        encapsulation: 4,
        ..Default::default()
    })
}

#[test]
fn vectors_v1_to_v8_byte_exact() {
    assert_eq!(
        hex::encode(emit_request(&request(0x22, 600, MIPP_PUB, PUBLIC_COA, ID), &[])),
        V1
    );
    assert_eq!(
        hex::encode(emit_request(&request(0x20, 600, HA, MIPP_PRIV, ID), &[])),
        V2
    );
    assert_eq!(hex::encode(emit_reply(&reply(0, HA, ID), &[])), V3);
    assert_eq!(hex::encode(emit_reply(&reply(0, MIPP_PUB, ID), &[])), V4.to_string());
    assert_eq!(
        emit_request(&request(0x22, 600, MIPP_PUB, PRIVATE_COA, ID), &[utrq_encap4()]),
        h(V5)
    );
    let utrp = ExtensionBody::UdpTunnelReply(UdpTunnelReply {
        keepalive: 110,
        ..Default::default()
    });
    assert_eq!(emit_reply(&reply(0, MIPP_PUB, ID), &[utrp]), h(V6));
    assert_eq!(emit_reply(&reply(133, MIPP_PUB, 0xec4e5b10_12345678), &[]), h(V7));
    assert_eq!(
        emit_request(&request(0, 0, MIPP_PUB, HOA, 0xec4e5c00_00000001), &[]),
        h(V8)
    );
}

#[test]
fn vector_v2b_vt02_relay_flags() {
    let v2b = emit_request(&request(0x22, 600, HA, MIPP_PRIV, ID), &[]);
    assert_eq!(hex::encode(&v2b[30..]), "c9bb72a39ee0249c1da1b51b23e1d721");
}

#[test]
fn every_vector_parses_and_verifies() {
    for (name, v) in [
        ("V1", h(V1)),
        ("V2", h(V2)),
        ("V3", h(V3)),
        ("V4", h(V4)),
        ("V5", h(V5)),
        ("V6", h(V6)),
        ("V7", h(V7)),
        ("V8", h(V8)),
    ] {
        let msg = Message::parse(&v, &Dialect::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let mn_ha = match msg {
            Message::Request(r) => r.auth(AuthKind::MobileHome),
            Message::Reply(r) => r.auth(AuthKind::MobileHome),
            Message::TunnelData(_) => None,
        };
        assert_eq!(sa().verify(&v, &mn_ha.unwrap()), Ok(()), "{name}");
    }
}

#[test]
fn case_01_encode_decode_v1() {
    let v1 = h(V1);
    let repr = request(0x22, 600, MIPP_PUB, PUBLIC_COA, ID);
    assert_eq!(emit_request(&repr, &[]), v1);
    let r = Request::parse(&v1, &Dialect::default()).unwrap();
    assert_eq!(r.repr, repr);
    assert_eq!(v1.len(), 46);
}

#[test]
fn case_02_all_flags_round_trip_and_new_requests_clear_r_x() {
    let mut v = h(V1);
    v[1] = 0xff;
    let r = Request::parse(&v, &Dialect::default()).unwrap();
    let f = r.repr.flags;
    assert!(f.simultaneous() && f.broadcast() && f.decapsulation_by_mn() && f.minimal_encap() && f.gre());
    assert!(f.reverse_tunnel() && f.reserved_set());
    assert!(f.named().iter().all(|(_, on)| *on));
    // Re-encoding preserves r and x as received...
    let mut buf = [0u8; 24];
    r.repr.emit(&mut buf).unwrap();
    assert_eq!(buf[1], 0xff);
    // ...but a new request never sends them.
    assert_eq!(f.for_new_request().0, 0xfa);
}

#[test]
fn case_03_request_fixed_part_of_23_bytes() {
    let v = h(V1);
    let e = Message::parse(&v[..23], &Dialect::default()).unwrap_err();
    assert_eq!((e.kind, e.offset), (ErrorKind::Truncated, 23));
}

#[test]
fn case_04_reply_fixed_part_of_19_bytes() {
    let v = h(V3);
    let e = Message::parse(&v[..19], &Dialect::default()).unwrap_err();
    assert_eq!((e.kind, e.offset), (ErrorKind::Truncated, 19));
}

#[test]
fn case_05_extension_runs_past_end() {
    let v = h(V1);
    let e = Message::parse(&v[..24 + 2 + 10], &Dialect::default()).unwrap_err();
    assert_eq!((e.kind, e.offset), (ErrorKind::ExtensionTruncated(32), 24));
}

#[test]
fn case_06_unknown_non_skippable_before_mn_ha() {
    let skip = ExtensionBody::Skippable { ty: 200, data: &[1, 2] };
    let mut v = emit_request(&request(0x22, 600, MIPP_PUB, PUBLIC_COA, ID), &[skip]);
    v[24] = 100; // turn the skippable 200 into unknown non-skippable 100
    let e = Message::parse(&v, &Dialect::default()).unwrap_err();
    assert_eq!((e.kind, e.offset), (ErrorKind::UnknownNonSkippable(100), 24));
}

#[test]
fn case_07_unknown_skippable_is_authenticated() {
    let skip = ExtensionBody::Skippable {
        ty: 200,
        data: &[1, 2, 3],
    };
    let v = emit_request(&request(0x22, 600, MIPP_PUB, PUBLIC_COA, ID), &[skip]);
    let r = Request::parse(&v, &Dialect::default()).unwrap();
    assert_eq!(r.extensions().next().unwrap().body, skip);
    assert_eq!(verify_request(&v), Ok(()));
    // The authenticator covers it: change one byte of the skipped extension and verification fails.
    let mut t = v.clone();
    t[26] ^= 1;
    assert_eq!(verify_request(&t), Err(AuthError::Mismatch));
}

#[test]
fn case_08_padding_in_registration_message() {
    let v = emit_request(
        &request(0x22, 600, MIPP_PUB, PUBLIC_COA, ID),
        &[ExtensionBody::Padding, ExtensionBody::Padding],
    );
    let r = Request::parse(&v, &Dialect::default()).unwrap();
    let offsets: Vec<_> = r.extensions().map(|e| e.offset).collect();
    assert_eq!(offsets, vec![24, 25, 26]);
    assert_eq!(verify_request(&v), Ok(()));
}

#[test]
fn case_09_long_format_type_36_discards_message() {
    let mut v = h(V1)[..24].to_vec();
    v.extend_from_slice(&[36, 1, 0x01, 0x2c]);
    v.extend(std::iter::repeat_n(0, 300));
    let e = Message::parse(&v, &Dialect::default()).unwrap_err();
    assert_eq!(e.kind, ErrorKind::UnknownNonSkippable(36));
}

#[test]
fn case_18_any_flipped_bit_fails_authentication() {
    let v = h(V1);
    // Bytes 0–29 are covered by the authenticator, bytes 30–45 are the authenticator itself: every single-bit
    // change either makes the message unparsable (dropped) or fails verification.
    for bit in 0..(46 * 8) {
        let mut t = v.clone();
        t[bit / 8] ^= 1 << (bit % 8);
        let Ok(r) = Request::parse(&t, &Dialect::default()) else {
            continue;
        };
        let Some(ext) = r.auth(AuthKind::MobileHome) else {
            continue;
        };
        assert!(sa().verify(&t, &ext).is_err(), "bit {bit} flipped yet verified");
    }
}

#[test]
fn case_19_fa_extensions_after_mn_ha_do_not_matter() {
    let mut buf = [0u8; 128];
    let mut w = MessageWriter::request(
        &mut buf,
        &request(0x22, 600, MIPP_PUB, PUBLIC_COA, ID),
        &Dialect::default(),
    )
    .unwrap();
    w.push_auth(AuthKind::MobileHome, &sa()).unwrap();
    w.push(&ExtensionBody::EncapsulatingDeliveryStyle).unwrap();
    let v = w.as_bytes().to_vec();
    assert_eq!(&v[..46], &h(V1)[..]);
    assert_eq!(verify_request(&v), Ok(()));
}

#[test]
fn case_20_reserved_spi_has_no_sa() {
    let mut v = h(V1);
    v[26..30].copy_from_slice(&0xffu32.to_be_bytes());
    let r = Request::parse(&v, &Dialect::default()).unwrap();
    let ext = r.auth(AuthKind::MobileHome).unwrap();
    let mut ks = KeyStore::new();
    ks.insert_peer(HOA, sa()).unwrap();
    let ExtensionBody::Auth { spi, .. } = ext.body else {
        panic!()
    };
    assert!(ks.get(HOA, spi).is_none());
    assert_eq!(sa().verify(&v, &ext), Err(AuthError::ReservedSpi));
}

#[test]
fn case_21_unknown_spi_has_no_sa() {
    let mut ks = KeyStore::new();
    ks.insert_peer(HOA, sa()).unwrap();
    assert!(ks.get(HOA, 0x200).is_none());
    assert!(ks.get(HOA, 0x100).is_some());
}

#[test]
fn case_22_request_without_authorization_extension() {
    let v = h(V1);
    let r = Request::parse(&v[..24], &Dialect::default()).unwrap();
    assert!(r.auth(AuthKind::MobileHome).is_none());
}

#[test]
fn case_23_reply_with_two_mn_ha_extensions() {
    let mut v = h(V3);
    let second = v[20..].to_vec();
    v.extend_from_slice(&second);
    let r = Reply::parse(&v, &Dialect::default()).unwrap();
    assert_eq!(r.auth_count(AuthKind::MobileHome), 2);
}

/// Case 31 at the codec level: a relay that keeps the Identification reproduces the spec's relayed vectors
/// (V1 → V2 toward the HA, V3 → V4 toward the MN).
#[test]
fn case_31_identification_relayed_unchanged() {
    let v1 = Request::parse(&h(V1), &Dialect::default()).unwrap().repr;
    let relayed = RequestRepr {
        flags: RequestFlags(RequestFlags::D),
        home_agent: HA,
        care_of_address: MIPP_PRIV,
        ..v1
    };
    assert_eq!(emit_request(&relayed, &[]), h(V2));
    let v3 = Reply::parse(&h(V3), &Dialect::default()).unwrap().repr;
    let to_mn = ReplyRepr {
        home_agent: MIPP_PUB,
        ..v3
    };
    assert_eq!(hex::encode(emit_reply(&to_mn, &[])), V4.to_string());
    assert_eq!(to_mn.identification, v1.identification);
}

/// The spec vectors recomputed from their field values by an independent Python implementation (stdlib `hmac`
/// and `struct`, `tests/crosscheck/gen_vectors.py`) match both the committed golden file and what the Rust writer
/// emits, so a Rust bug cannot silently rewrite its own expectations (spec §11.2 recommendation).
#[test]
fn golden_vectors_agree_with_independent_python() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/crosscheck");
    let out = std::process::Command::new("python3")
        .arg(dir.join("gen_vectors.py"))
        .output()
        .expect("python3 must be installed (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "gen_vectors.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fresh: serde_json::Value = serde_json::from_slice(&out.stdout).expect("gen_vectors.py prints JSON");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("vectors.json")).unwrap()).unwrap();
    assert_eq!(
        fresh, golden,
        "vectors.json drifted from gen_vectors.py: regenerate it and review the diff"
    );

    let rust = [
        ("V1", emit_request(&request(0x22, 600, MIPP_PUB, PUBLIC_COA, ID), &[])),
        ("V2", emit_request(&request(0x20, 600, HA, MIPP_PRIV, ID), &[])),
        ("V2b", emit_request(&request(0x22, 600, HA, MIPP_PRIV, ID), &[])),
        ("V3", emit_reply(&reply(0, HA, ID), &[])),
        ("V4", emit_reply(&reply(0, MIPP_PUB, ID), &[])),
        (
            "V5",
            emit_request(&request(0x22, 600, MIPP_PUB, PRIVATE_COA, ID), &[utrq_encap4()]),
        ),
        (
            "V6",
            emit_reply(
                &reply(0, MIPP_PUB, ID),
                &[ExtensionBody::UdpTunnelReply(UdpTunnelReply {
                    keepalive: 110,
                    ..Default::default()
                })],
            ),
        ),
        ("V7", emit_reply(&reply(133, MIPP_PUB, 0xec4e5b10_12345678), &[])),
        (
            "V8",
            emit_request(&request(0, 0, MIPP_PUB, HOA, 0xec4e5c00_00000001), &[]),
        ),
    ];
    for (name, bytes) in rust {
        assert_eq!(
            golden[name]["hex"].as_str(),
            Some(hex::encode(&bytes).as_str()),
            "{name}"
        );
        assert_eq!(
            golden[name]["mac"].as_str(),
            Some(hex::encode(&bytes[bytes.len() - 16..]).as_str()),
            "{name}"
        );
    }
    let v1 = h(V1);
    let keyed = auth::compute(
        Algorithm::KeyedMd5PrefixSuffix,
        Key::from_hex(KEY).unwrap().expose(),
        &v1[..30],
    );
    assert_eq!(golden["V1_keyed_md5"].as_str(), Some(hex::encode(keyed).as_str()));
    let f = &golden["fragments"];
    let frag = |body: ExtensionBody<'_>| {
        let mut b = vec![0u8; body.buffer_len()];
        body.emit(&mut b, &Dialect::default()).unwrap();
        hex::encode(b)
    };
    assert_eq!(
        f["nai"].as_str(),
        Some(frag(ExtensionBody::Nai(b"joe@example.com")).as_str())
    );
    assert_eq!(
        f["utrq_f"].as_str(),
        Some(
            frag(ExtensionBody::UdpTunnelRequest(UdpTunnelRequest {
                force: true,
                ..Default::default()
            }))
            .as_str()
        )
    );
    assert_eq!(
        f["utrp_f"].as_str(),
        Some(
            frag(ExtensionBody::UdpTunnelReply(UdpTunnelReply {
                forced: true,
                ..Default::default()
            }))
            .as_str()
        )
    );
    let mut td = [0u8; 4];
    mip::wire::tunnel::TunnelDataRepr { next_header: 4 }
        .emit(&mut td)
        .unwrap();
    assert_eq!(f["tunnel_data"].as_str(), Some(hex::encode(td).as_str()));
    let coa = [192, 0, 2, 1];
    let adv = AgentAdvertisementRepr {
        code: 16,
        lifetime: 1800,
        routers: &[],
        mobility: Some(MobilityAgentExt {
            sequence: 7,
            registration_lifetime: 1800,
            flags: MobilityAgentFlags(MobilityAgentFlags::F | MobilityAgentFlags::T | MobilityAgentFlags::U),
            care_of_addresses: AddrList::new(&coa).unwrap(),
        }),
        prefix_lengths: None,
    };
    let mut icmp = [0u8; 20];
    let n = adv.emit(&mut icmp).unwrap();
    assert_eq!(f["agent_adv_ext"].as_str(), Some(hex::encode(&icmp[8..n]).as_str()));
}
