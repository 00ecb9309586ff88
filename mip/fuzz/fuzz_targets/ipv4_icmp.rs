//! IPv4, UDP and ICMP views and Reprs (what the tunnels and agents parse from the network).
//!
//! Properties:
//! * `Ipv4Packet::new_checked` only accepts buffers whose IHL and Total Length fit; header/payload are the
//!   matching slices; `Ipv4Repr::parse` succeeds exactly when the header checksum verifies;
//! * `decrement_ttl` on a copy lowers TTL by one (0 stays 0, untouched), changes nothing but TTL and checksum,
//!   keeps a valid checksum valid and agrees with a full recomputation (up to the ±0 checksum encodings);
//! * an option-less, unfragmented header re-emits from its Repr byte for byte (up to ±0);
//! * UDP on the IPv4 payload: length checks, payload slice, `UdpRepr::parse` iff the checksum verifies, and a
//!   datagram with a nonzero checksum re-emits byte for byte; UDP 434 payloads go through `Message::parse`;
//! * ICMP on the IPv4 payload and on the raw input: `IcmpRepr::parse` iff the checksum verifies, emit → parse
//!   gives the same Repr, and echo / unknown messages (whose header is fully kept) re-emit byte for byte.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use mip::wire::icmp::{IcmpPacket, IcmpRepr};
use mip::wire::ipv4::{Ipv4Packet, Ipv4Repr};
use mip::wire::udp::{MIP_PORT, UdpPacket, UdpRepr};
use mip::wire::{Dialect, ErrorKind, Message};

/// Two checksum fields that both verify: equal, or the two encodings of zero (0x0000 and 0xffff).
fn same_checksum(a: &[u8], b: &[u8]) -> bool {
    a == b || (matches!(a, [0, 0] | [0xff, 0xff]) && matches!(b, [0, 0] | [0xff, 0xff]))
}

fn check_icmp(bytes: &[u8]) {
    let Ok(p) = IcmpPacket::new_checked(bytes) else {
        assert!(bytes.len() < 8);
        return;
    };
    let valid = p.verify_checksum();
    let repr = match IcmpRepr::parse(&p) {
        Ok(r) => r,
        Err(e) => {
            assert!(!valid);
            assert_eq!(e.kind, ErrorKind::BadChecksum);
            return;
        }
    };
    assert!(valid);
    let len = repr.buffer_len();
    assert_eq!(len, bytes.len());
    let mut buf = vec![0u8; len];
    assert_eq!(repr.emit(&mut buf), Ok(len));
    let q = IcmpPacket::new_checked(&buf[..]).expect("len");
    assert!(q.verify_checksum());
    assert_eq!(IcmpRepr::parse(&q), Ok(repr), "ICMP emit/parse round trip");
    if matches!(
        repr,
        IcmpRepr::EchoRequest { .. } | IcmpRepr::EchoReply { .. } | IcmpRepr::Other { .. }
    ) {
        assert_eq!(&buf[..2], &bytes[..2]);
        assert!(same_checksum(&buf[2..4], &bytes[2..4]));
        assert_eq!(&buf[4..], &bytes[4..]);
    }
    assert_eq!(
        repr.emit(&mut vec![0u8; len - 1]).expect_err("short").kind,
        ErrorKind::BufferTooSmall
    );
}

fn check_udp(payload: &[u8], src: Ipv4Addr, dst: Ipv4Addr) {
    let Ok(u) = UdpPacket::new_checked(payload) else { return };
    let len = usize::from(u.len());
    assert!((8..=payload.len()).contains(&len));
    assert_eq!(u.payload(), &payload[8..len]);
    assert_eq!(u.is_empty(), len == 8);
    let valid = u.verify_checksum(src, dst);
    match UdpRepr::parse(&u, src, dst) {
        Ok(r) => {
            assert!(valid);
            let mut buf = payload[..len].to_vec();
            buf[6] ^= 0x5a; // the emitter must not depend on the old checksum
            r.emit(&mut buf, len - 8, src, dst).expect("emit");
            let q = UdpPacket::new_checked(&buf[..]).expect("len");
            assert!(q.verify_checksum(src, dst));
            assert_ne!(q.checksum(), 0, "a computed UDP checksum is never sent as 0");
            if u.checksum() != 0 {
                assert_eq!(buf.as_slice(), &payload[..len], "UDP emit round trip");
            }
        }
        Err(e) => {
            assert!(!valid);
            assert_eq!(e.kind, ErrorKind::BadChecksum);
        }
    }
    if u.src_port() == MIP_PORT || u.dst_port() == MIP_PORT {
        let _ = Message::parse(u.payload(), &Dialect::default());
    }
}

fuzz_target!(|data: &[u8]| {
    check_icmp(data);

    let Ok(p) = Ipv4Packet::new_checked(data) else { return };
    let hl = p.header_len();
    let total = usize::from(p.total_len());
    assert!(20 <= hl && hl <= total && total <= data.len());
    assert_eq!(p.version(), 4);
    assert_eq!(p.header(), &data[..hl]);
    assert_eq!(p.payload(), &data[hl..total]);
    assert_eq!(p.is_fragment(), p.more_frags() || p.frag_offset() != 0);
    let valid = p.verify_checksum();
    let ttl = p.ttl();

    match Ipv4Repr::parse(&p) {
        Ok(r) => {
            assert!(valid);
            assert_eq!(r.payload_len, total - hl);
            assert_eq!(
                (r.src_addr, r.dst_addr, r.protocol, r.ttl),
                (p.src_addr(), p.dst_addr(), p.protocol(), ttl)
            );
            let _ = format!("{r}");
            // Option-less, unfragmented, reserved flag clear: the Repr holds every header field.
            if hl == 20 && !p.is_fragment() && data[6] & 0x80 == 0 {
                let mut out = [0u8; 20];
                r.emit(&mut out).expect("emit");
                assert_eq!(&out[..10], &data[..10]);
                assert!(same_checksum(&out[10..12], &data[10..12]));
                assert_eq!(&out[12..], &data[12..20]);
            }
        }
        Err(e) => {
            assert!(!valid);
            assert_eq!(e.kind, ErrorKind::BadChecksum);
        }
    }

    // decrement_ttl on a copy.
    let mut copy = data.to_vec();
    let mut q = Ipv4Packet::new_unchecked(&mut copy[..]);
    q.decrement_ttl();
    if ttl == 0 {
        assert_eq!(copy.as_slice(), data, "decrement_ttl must not touch a TTL-0 packet");
    } else {
        assert_eq!(q.ttl(), ttl - 1);
        if valid {
            assert!(q.verify_checksum(), "decrement_ttl broke a valid checksum (ttl {ttl})");
            let mut full = copy.clone();
            Ipv4Packet::new_unchecked(&mut full[..]).fill_checksum();
            assert!(
                same_checksum(&copy[10..12], &full[10..12]),
                "incremental vs full checksum"
            );
        }
        for (i, (a, b)) in copy.iter().zip(data).enumerate() {
            if !matches!(i, 8 | 10 | 11) {
                assert_eq!(a, b, "decrement_ttl changed byte {i}");
            }
        }
    }

    let payload = p.payload();
    check_udp(payload, p.src_addr(), p.dst_addr());
    check_icmp(payload);
});
