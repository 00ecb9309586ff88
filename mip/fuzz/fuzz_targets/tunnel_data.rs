//! MIP Tunnel Data (type 4, RFC 3519 §3.3).
//!
//! Properties:
//! * `TunnelDataPacket::new_checked` fails exactly on inputs shorter than 4 bytes (Truncated at the length);
//! * `TunnelDataRepr::parse` accepts exactly type 4; its Next Header and the view's payload are the input's;
//! * emitting the Repr over a copy of the input rewrites only the header (Reserved becomes 0), and the result
//!   parses back to the same Repr; an input with Reserved 0 round-trips byte for byte;
//! * `Message::parse` agrees on type-4 inputs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mip::wire::tunnel::{HEADER_LEN, TunnelDataPacket, TunnelDataRepr};
use mip::wire::{Dialect, Error, ErrorKind, Message};

fuzz_target!(|data: &[u8]| {
    let p = match TunnelDataPacket::new_checked(data) {
        Ok(p) => p,
        Err(e) => {
            assert!(data.len() < HEADER_LEN);
            assert_eq!(e, Error::new(ErrorKind::Truncated, data.len()));
            return;
        }
    };
    assert_eq!(p.msg_type(), data[0]);
    assert_eq!(p.next_header(), data[1]);
    assert_eq!(p.reserved(), u16::from_be_bytes([data[2], data[3]]));
    assert_eq!(p.payload(), &data[HEADER_LEN..]);

    let repr = match TunnelDataRepr::parse(&p) {
        Ok(r) => r,
        Err(e) => {
            assert_ne!(data[0], 4);
            assert_eq!(e, Error::new(ErrorKind::WrongType(data[0]), 0));
            assert!(matches!(
                Message::parse(data, &Dialect::default()).map(|m| m.message_type()),
                Err(_) | Ok(mip::wire::MessageType::RegistrationRequest | mip::wire::MessageType::RegistrationReply)
            ));
            return;
        }
    };
    assert_eq!(data[0], 4);
    assert_eq!(repr.next_header, data[1]);
    assert_eq!(repr.buffer_len(), HEADER_LEN);

    let mut copy = data.to_vec();
    repr.emit(&mut copy).expect("emit over the input");
    assert_eq!(&copy[..2], &data[..2]);
    assert_eq!(&copy[2..4], &[0, 0]);
    assert_eq!(&copy[HEADER_LEN..], &data[HEADER_LEN..]);
    if p.reserved() == 0 {
        assert_eq!(copy.as_slice(), data);
    }
    let back = TunnelDataPacket::new_checked(&copy[..]).expect("len");
    assert_eq!(TunnelDataRepr::parse(&back), Ok(repr));
    assert_eq!(
        repr.emit(&mut [0u8; 3]).expect_err("short").kind,
        ErrorKind::BufferTooSmall
    );

    match Message::parse(data, &Dialect::default()) {
        Ok(Message::TunnelData(td)) => {
            assert_eq!(td.repr, repr);
            assert_eq!(td.payload, p.payload());
        }
        other => panic!("Message::parse disagrees on a Tunnel Data message: {other:?}"),
    }
});
