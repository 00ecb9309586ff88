//! Agent Advertisements and Solicitations (ICMP types 9 and 10, IP header excluded).
//!
//! Properties:
//! * `AgentAdvertisementRepr::parse` accepts only a type-9 message with a valid checksum and entry size 2;
//! * parse → emit → parse gives the same Repr, the emitted message has a valid ICMP checksum and is exactly
//!   `buffer_len()` bytes, and emitting into a buffer one byte short fails cleanly;
//! * the router entries and care-of address lists are consistent with their byte slices;
//! * a Solicitation that parses re-emits to a message that parses, and an 8-byte one with zero reserved bytes
//!   re-emits byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mip::wire::icmp::IcmpPacket;
use mip::wire::{AgentAdvertisementRepr, AgentSolicitation, ErrorKind};

fuzz_target!(|data: &[u8]| {
    match AgentAdvertisementRepr::parse(data) {
        Ok(repr) => {
            assert_eq!(data[0], 9);
            assert!(IcmpPacket::new_checked(data).expect("len").verify_checksum());
            assert_eq!(repr.code, data[1]);
            assert_eq!(repr.routers.len(), usize::from(data[4]) * 8);
            assert_eq!(repr.router_entries().count(), usize::from(data[4]));
            if let Some(m) = repr.mobility {
                assert_eq!(m.care_of_addresses.len() * 4, m.care_of_addresses.as_bytes().len());
                assert_eq!(m.care_of_addresses.iter().count(), m.care_of_addresses.len());
                let _ = (m.flags.sender_rules_hold(), format!("{:?}", m.flags));
            }
            let len = repr.buffer_len();
            assert!(
                len <= data.len(),
                "a re-emitted advertisement can only lose padding and unknown extensions"
            );
            let mut buf = vec![0u8; len];
            let n = repr.emit(&mut buf).expect("a parsed advertisement emits");
            assert_eq!(n, len);
            assert!(IcmpPacket::new_checked(&buf[..]).expect("len").verify_checksum());
            let back = AgentAdvertisementRepr::parse(&buf).expect("an emitted advertisement parses");
            assert_eq!(back, repr);
            let mut short = vec![0u8; len - 1];
            assert_eq!(
                repr.emit(&mut short).expect_err("short").kind,
                ErrorKind::BufferTooSmall
            );
        }
        Err(e) => {
            assert!(e.offset <= data.len(), "error offset {} past the end: {e:?}", e.offset);
            let _ = format!("{e}");
        }
    }

    match AgentSolicitation::parse(data) {
        Ok(s) => {
            assert_eq!((data[0], data[1]), (10, 0));
            let mut buf = [0u8; AgentSolicitation::LEN];
            assert_eq!(s.emit(&mut buf), Ok(AgentSolicitation::LEN));
            assert_eq!(AgentSolicitation::parse(&buf), Ok(s));
            if data.len() == AgentSolicitation::LEN && data[4..8] == [0; 4] {
                assert_eq!(&buf[..], data);
            }
            assert_eq!(
                s.emit(&mut [0u8; 7]).expect_err("short").kind,
                ErrorKind::BufferTooSmall
            );
        }
        Err(e) => {
            assert!(e.offset <= data.len());
            let _ = format!("{e}");
        }
    }
});
