//! Property tests: parse ∘ emit = identity over generated messages, and the parsers never panic on any
//! input.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing, clippy::panic)]

use std::net::Ipv4Addr;

use mip::auth::{Algorithm, Key, SecurityAssociation, Spi};
use mip::replay::ReplayStyle;
use mip::wire::{
    AuthKind, Dialect, Extension, ExtensionBody, HaParameter, Message, MessageWriter, Reply, ReplyCode, ReplyRepr,
    Request, RequestFlags, RequestRepr, UdpTunnelReply, UdpTunnelRequest,
};
use proptest::prelude::*;

/// An extension with owned data, so strategies can generate it.
#[derive(Debug, Clone)]
enum OwnedExt {
    Padding,
    Nai(Vec<u8>),
    Utrq(UdpTunnelRequest),
    Utrp(UdpTunnelReply),
    Eds,
    Tnc(u8),
    HaParam(u8, Ipv4Addr),
    Skippable(u8, Vec<u8>),
    Auth(AuthKind, u32, Vec<u8>),
}

impl OwnedExt {
    fn body(&self) -> ExtensionBody<'_> {
        match self {
            OwnedExt::Padding => ExtensionBody::Padding,
            OwnedExt::Nai(n) => ExtensionBody::Nai(n),
            OwnedExt::Utrq(r) => ExtensionBody::UdpTunnelRequest(*r),
            OwnedExt::Utrp(r) => ExtensionBody::UdpTunnelReply(*r),
            OwnedExt::Eds => ExtensionBody::EncapsulatingDeliveryStyle,
            OwnedExt::Tnc(r) => ExtensionBody::TrustedNetworksConfigured { reserved: *r },
            OwnedExt::HaParam(r, a) => ExtensionBody::HaParameter(HaParameter {
                reserved: *r,
                home_agent: *a,
            }),
            OwnedExt::Skippable(t, d) => ExtensionBody::Skippable { ty: *t, data: d },
            OwnedExt::Auth(k, spi, a) => ExtensionBody::Auth {
                kind: *k,
                spi: *spi,
                authenticator: a,
            },
        }
    }
}

fn addr() -> impl Strategy<Value = Ipv4Addr> {
    any::<u32>().prop_map(Ipv4Addr::from)
}

fn ext() -> impl Strategy<Value = OwnedExt> {
    let utrq = (
        any::<bool>(),
        any::<bool>(),
        any::<u8>(),
        any::<u8>(),
        0u8..64,
        any::<u16>(),
    )
        .prop_map(
            |(force, registered_via_fa, encapsulation, reserved1, reserved2, reserved3)| {
                OwnedExt::Utrq(UdpTunnelRequest {
                    force,
                    registered_via_fa,
                    encapsulation,
                    reserved1,
                    reserved2,
                    reserved3,
                })
            },
        );
    let utrp =
        (any::<u8>(), any::<bool>(), 0u16..0x8000, any::<u16>()).prop_map(|(code, forced, reserved, keepalive)| {
            OwnedExt::Utrp(UdpTunnelReply {
                code,
                forced,
                reserved,
                keepalive,
            })
        });
    // Skippable types other than those with their own meaning (and other than 255/sub-type 1).
    let skippable = (128u8..=254, proptest::collection::vec(any::<u8>(), 0..40))
        .prop_filter("types with their own layout", |(t, d)| match t {
            130 | 131 | 144 | 149 => false,
            255 => d.first() != Some(&1),
            _ => true,
        })
        .prop_map(|(t, d)| OwnedExt::Skippable(t, d));
    let auth = (
        prop_oneof![
            Just(AuthKind::MobileHome),
            Just(AuthKind::MobileForeign),
            Just(AuthKind::ForeignHome)
        ],
        any::<u32>(),
        proptest::collection::vec(any::<u8>(), 0..32),
    )
        .prop_map(|(k, s, a)| OwnedExt::Auth(k, s, a));
    prop_oneof![
        Just(OwnedExt::Padding),
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(OwnedExt::Nai),
        utrq,
        utrp,
        Just(OwnedExt::Eds),
        any::<u8>().prop_map(OwnedExt::Tnc),
        (any::<u8>(), addr()).prop_map(|(r, a)| OwnedExt::HaParam(r, a)),
        skippable,
        auth,
    ]
}

fn request_repr() -> impl Strategy<Value = RequestRepr> {
    (any::<u8>(), any::<u16>(), addr(), addr(), addr(), any::<u64>()).prop_map(|(f, l, hoa, ha, coa, id)| RequestRepr {
        flags: RequestFlags(f),
        lifetime: l,
        home_address: hoa,
        home_agent: ha,
        care_of_address: coa,
        identification: id,
    })
}

fn reply_repr() -> impl Strategy<Value = ReplyRepr> {
    (any::<u8>(), any::<u16>(), addr(), addr(), any::<u64>()).prop_map(|(c, l, hoa, ha, id)| ReplyRepr {
        code: ReplyCode::from(c),
        lifetime: l,
        home_address: hoa,
        home_agent: ha,
        identification: id,
    })
}

fn sa(spi: u32, key: &[u8], keyed: bool) -> SecurityAssociation {
    let alg = if keyed {
        Algorithm::KeyedMd5PrefixSuffix
    } else {
        Algorithm::HmacMd5
    };
    SecurityAssociation::new(Spi::new(spi).unwrap(), alg, Key::new(key), ReplayStyle::default())
}

fn last_mn_ha<'a>(r: &Request<'a>) -> Option<Extension<'a>> {
    r.extensions()
        .filter(|e| {
            matches!(
                e.body,
                ExtensionBody::Auth {
                    kind: AuthKind::MobileHome,
                    ..
                }
            )
        })
        .last()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn request_parse_emit_identity(repr in request_repr(), exts in proptest::collection::vec(ext(), 0..8)) {
        let mut buf = vec![0u8; 4096];
        let mut w = MessageWriter::request(&mut buf, &repr, &Dialect::default()).unwrap();
        for e in &exts {
            w.push(&e.body()).unwrap();
        }
        let bytes = w.as_bytes().to_vec();
        let r = Request::parse(&bytes, &Dialect::default()).unwrap();
        prop_assert_eq!(r.repr, repr);
        let got: Vec<_> = r.extensions().map(|e| e.body).collect();
        let want: Vec<_> = exts.iter().map(OwnedExt::body).collect();
        prop_assert_eq!(got, want);
        // Re-emitting the parsed message reproduces the bytes.
        let mut again = vec![0u8; 4096];
        let mut w2 = MessageWriter::request(&mut again, &r.repr, &Dialect::default()).unwrap();
        for e in r.extensions() {
            w2.push(&e.body).unwrap();
        }
        prop_assert_eq!(w2.as_bytes(), &bytes[..]);
    }

    #[test]
    fn reply_parse_emit_identity(repr in reply_repr(), exts in proptest::collection::vec(ext(), 0..8)) {
        let mut buf = vec![0u8; 4096];
        let mut w = MessageWriter::reply(&mut buf, &repr, &Dialect::default()).unwrap();
        for e in &exts {
            w.push(&e.body()).unwrap();
        }
        let bytes = w.as_bytes().to_vec();
        let r = Reply::parse(&bytes, &Dialect::default()).unwrap();
        prop_assert_eq!(r.repr, repr);
        let got: Vec<_> = r.extensions().map(|e| e.body).collect();
        let want: Vec<_> = exts.iter().map(OwnedExt::body).collect();
        prop_assert_eq!(got, want);
    }

    /// Whatever precedes it, an authenticator written by `push_auth` verifies, and any change to a covered
    /// byte breaks it.
    #[test]
    fn signed_messages_verify(
        repr in request_repr(),
        exts in proptest::collection::vec(ext(), 0..6),
        spi in 256u32..,
        key in proptest::collection::vec(any::<u8>(), 1..64),
        keyed in any::<bool>(),
        flip in any::<prop::sample::Index>(),
    ) {
        let sa = sa(spi, &key, keyed);
        let mut buf = vec![0u8; 4096];
        let mut w = MessageWriter::request(&mut buf, &repr, &Dialect::default()).unwrap();
        for e in &exts {
            w.push(&e.body()).unwrap();
        }
        w.push_auth(AuthKind::MobileHome, &sa).unwrap();
        let bytes = w.as_bytes().to_vec();
        let r = Request::parse(&bytes, &Dialect::default()).unwrap();
        let mn_ha = last_mn_ha(&r).unwrap();
        prop_assert_eq!(sa.verify(&bytes, &mn_ha), Ok(()));
        let covered = mn_ha.offset + 6;
        let i = flip.index(covered);
        let mut t = bytes.clone();
        t[i] ^= 0x01;
        if let Ok(Message::Request(r2)) = Message::parse(&t, &Dialect::default())
            && let Some(e) = last_mn_ha(&r2)
        {
            prop_assert!(sa.verify(&t, &e).is_err());
        }
    }

    /// No input makes the message parser panic; errors point inside the buffer.
    #[test]
    fn parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), ty in prop_oneof![Just(1u8), Just(3u8), Just(4u8), any::<u8>()]) {
        let mut d = data;
        if let Some(first) = d.first_mut() {
            *first = ty;
        }
        match Message::parse(&d, &Dialect::default()) {
            Ok(Message::Request(r)) => { let _ = r.extensions().count(); }
            Ok(Message::Reply(r)) => { let _ = r.extensions().count(); }
            Ok(Message::TunnelData(t)) => prop_assert_eq!(t.payload.len() + 4, d.len()),
            Err(e) => prop_assert!(e.offset <= d.len(), "offset {} beyond {}", e.offset, d.len()),
        }
    }
}
