//! The extension walkers over arbitrary bytes with an arbitrary dialect.
//!
//! Input: byte 0 and 1 pick the HA Parameter type and sub-type (`Dialect::new`; the default dialect when that
//! code point is refused), byte 2 picks the base offset, the rest is the extension region.
//!
//! Properties:
//! * `RawExtensions`: extensions tile the region from `base` (offsets contiguous, `bytes` is the region slice,
//!   `data` is `bytes` minus the header of its format); the walk stops right after the first error, and the
//!   error sits at the offset where the next extension would start; a clean walk consumes the whole region;
//! * `Extensions` sees the same items as the raw walker, and fails only where the raw walker fails or with a
//!   typed error (unknown non-skippable, bad length) on an extension the raw walker accepted;
//! * every typed extension emits (`ExtensionBody::emit` into `buffer_len()` bytes) to exactly the bytes it was
//!   parsed from, and those bytes parse back to the same body;
//! * emitting into a buffer one byte short fails with `BufferTooSmall` (no panic, no partial success).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mip::wire::extension::is_skippable;
use mip::wire::{Dialect, ErrorKind, ExtFormat, ExtensionBody, Extensions, RawExtension, RawExtensions};

fuzz_target!(|data: &[u8]| {
    let [t, st, b, region @ ..] = data else { return };
    let dialect = Dialect::new(*t, *st).unwrap_or_default();
    let base = usize::from(*b);

    // Raw walk.
    let mut raw_items: Vec<Result<RawExtension<'_>, mip::wire::Error>> = Vec::new();
    let mut raw = RawExtensions::new(region, base);
    let mut next_off = base;
    for r in raw.by_ref() {
        match r {
            Ok(x) => {
                assert_eq!(x.offset, next_off, "raw extensions must be contiguous");
                let rel = x.offset - base;
                assert_eq!(x.bytes, &region[rel..rel + x.bytes.len()]);
                assert_eq!(x.ty, x.bytes[0]);
                assert_eq!(x.format, ExtFormat::of(x.ty));
                let h = x.format.header_len();
                assert_eq!(x.data, &x.bytes[h..]);
                assert_eq!(x.long_subtype.is_some(), x.format == ExtFormat::Long);
                match x.format {
                    ExtFormat::Padding => assert_eq!(x.bytes.len(), 1),
                    ExtFormat::Tlv => assert_eq!(usize::from(x.bytes[1]), x.data.len()),
                    ExtFormat::Long => {
                        assert_eq!(x.long_subtype, Some(x.bytes[1]));
                        assert_eq!(usize::from(u16::from_be_bytes([x.bytes[2], x.bytes[3]])), x.data.len());
                    }
                }
                next_off += x.bytes.len();
                raw_items.push(Ok(x));
            }
            Err(e) => {
                assert_eq!(
                    e.offset, next_off,
                    "raw error must sit where the failing extension starts"
                );
                assert!(matches!(e.kind, ErrorKind::ExtensionTruncated(ty) if ty == region[next_off - base]));
                let _ = format!("{e}");
                raw_items.push(Err(e));
            }
        }
    }
    assert!(raw.next().is_none(), "raw walker must stay finished");
    if matches!(raw_items.last(), Some(Ok(_)) | None) {
        assert_eq!(next_off - base, region.len(), "a clean walk consumes the whole region");
    }

    // Typed walk.
    let mut typed = Extensions::new(region, base, dialect);
    let mut n = 0;
    for (i, r) in typed.by_ref().enumerate() {
        n = i + 1;
        let raw_i = raw_items
            .get(i)
            .expect("typed walker yields no more than the raw walker");
        match (r, raw_i) {
            (Ok(e), Ok(rx)) => {
                assert_eq!((e.offset, e.bytes), (rx.offset, rx.bytes));
                assert_eq!(e.ext_type(), rx.ty);
                assert_eq!(e.body.ext_type(&dialect), rx.ty);
                assert_eq!(ExtensionBody::parse(rx, &dialect), Ok(e.body));
                if let ExtensionBody::Skippable { ty, data } = e.body {
                    assert!(is_skippable(ty));
                    assert_eq!(data, rx.data);
                }
                let _ = format!("{e}");

                // Typed round trip.
                let len = e.body.buffer_len();
                let mut buf = vec![0u8; len];
                let written = e.body.emit(&mut buf, &dialect).expect("a parsed extension emits");
                assert_eq!(written, len);
                assert_eq!(buf.as_slice(), e.bytes, "emit(parse(x)) != x for {:?}", e.body);
                let back = Extensions::new(&buf, e.offset, dialect)
                    .next()
                    .expect("one")
                    .expect("re-parses");
                assert_eq!(back, e);
                if len > 0 {
                    let mut short = vec![0u8; len - 1];
                    let err = e.body.emit(&mut short, &dialect).expect_err("short buffer must fail");
                    assert_eq!(err.kind, ErrorKind::BufferTooSmall);
                }
            }
            (Err(e), Ok(rx)) => {
                assert_eq!(
                    e.offset,
                    rx.offset + usize::from(matches!(e.kind, ErrorKind::ExtensionLength(..)))
                );
                match e.kind {
                    ErrorKind::UnknownNonSkippable(ty) => {
                        assert_eq!(ty, rx.ty);
                        // Only types 0-127 can make a message undecodable (RFC 5944 §1.8).
                        assert!(!is_skippable(ty), "skippable type {ty} reported as non-skippable");
                    }
                    ErrorKind::ExtensionLength(ty, _) => assert_eq!(ty, rx.ty),
                    other => panic!("unexpected typed error {other:?}"),
                }
                let _ = format!("{e} {}", e.kind.as_str());
            }
            (Err(e), Err(re)) => assert_eq!(&e, re),
            (Ok(e), Err(re)) => panic!("typed walker accepted {e:?} where the raw walker failed with {re:?}"),
        }
    }
    assert!(typed.next().is_none(), "typed walker must stay finished");
    // The typed walker stops at its first error, otherwise it sees every raw item.
    assert!(n <= raw_items.len());
});
