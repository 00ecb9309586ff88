//! End-to-end tests of the `mipctl decode` binary: spec §11.2 vectors V1–V8, authenticator checks, malformed
//! messages (spec §10 cases 1–6), standard input, and pcap / pcapng captures.
// Test helpers outside `#[test]` functions fail the test by panicking.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::indexing_slicing)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use mip_agents::pcap::{ipv4_udp_packet, write_pcap, write_pcap_to};
use serde_json::{Value, json};

const KEY: &str = "000102030405060708090a0b0c0d0e0f";

const V1: &str = "012202580a0a0132c633640ac000024dec4e5a0012345678201400000100869d33adee786a3be9b795c8cafb1d71";
const V2: &str = "012002580a0a01320a0a01010a0a000aec4e5a0012345678201400000100c823dffc3899875509ed4d1b15084e46";
const V3: &str = "030002580a0a01320a0a0101ec4e5a00123456782014000001006b17bf7f0f1322f9a1153dec5925c42d";
const V4: &str = "030002580a0a0132c633640aec4e5a001234567820140000010070e2cee90091976e0fac5350cebf59c8";
const V5: &str =
    "012202580a0a0132c633640ac0a8014dec4e5a001234567890060000000400002014000001009bcd0d4218bd0833ec9236954b4a9027";
const V6: &str = "030002580a0a0132c633640aec4e5a00123456782c0600000000006e201400000100e6a5219b9bda226f058144d658a16c75";
const V7: &str = "038502580a0a0132c633640aec4e5b10123456782014000001005441519f1295b0d5007b4c3e4bff77ff";
const V8: &str = "010000000a0a0132c633640a0a0a0132ec4e5c0000000001201400000100\
                  4ab4bd7a9bd5909ef324037d2f974776";

fn mipctl(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_mipctl"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mipctl");
    let mut input = child.stdin.take().expect("stdin");
    input.write_all(stdin.unwrap_or_default()).expect("write stdin");
    drop(input);
    child.wait_with_output().expect("mipctl output")
}

fn stdout_lines(o: &Output) -> Vec<Value> {
    String::from_utf8(o.stdout.clone())
        .expect("utf-8 stdout")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8 stderr")
}

/// Decodes one hex message with the spec key and SPI; asserts success and one line of output.
fn decode(hex: &str) -> Value {
    let o = mipctl(&["decode", "--key", KEY, "--spi", "0x100", hex], None);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(o.stderr.is_empty());
    let mut lines = stdout_lines(&o);
    assert_eq!(lines.len(), 1);
    lines.remove(0)
}

fn mn_ha(offset: u64, mac: &str) -> Value {
    json!({"type": 32, "offset": offset, "spi": 256, "authenticator": mac, "valid": true})
}

/// Asserts every field of `want` (recursively for objects, element-wise for arrays of objects) is in `got`.
fn assert_subset(got: &Value, want: &Value, path: &str) {
    match (got, want) {
        (Value::Object(g), Value::Object(w)) => {
            for (k, wv) in w {
                let gv = g.get(k).unwrap_or_else(|| panic!("{path}.{k} missing in {got}"));
                assert_subset(gv, wv, &format!("{path}.{k}"));
            }
        }
        (Value::Array(g), Value::Array(w)) => {
            assert_eq!(g.len(), w.len(), "{path}: {got}");
            for (i, (gv, wv)) in g.iter().zip(w).enumerate() {
                assert_subset(gv, wv, &format!("{path}[{i}]"));
            }
        }
        _ => assert_eq!(got, want, "{path}"),
    }
}

/// The `flags` object from a pattern like `--D---T-` (letters in wire order S B D M G r T x, `-` = clear).
fn flags(pattern: &str) -> Value {
    let names = ["S", "B", "D", "M", "G", "r", "T", "x"];
    let map: serde_json::Map<String, Value> = names
        .iter()
        .zip(pattern.chars())
        .map(|(n, c)| ((*n).to_owned(), Value::Bool(c != '-')))
        .collect();
    Value::Object(map)
}

#[test]
fn vector_v1() {
    let v = decode(V1);
    let want = json!({
        "type": "registration_request",
        "flags": flags("--D---T-"),
        "lifetime": 600,
        "home_address": "10.10.1.50",
        "home_agent": "198.51.100.10",
        "care_of_address": "192.0.2.77",
        "identification": "ec4e5a0012345678",
        "extensions": [mn_ha(24, "869d33adee786a3be9b795c8cafb1d71")],
    });
    assert_subset(&v, &want, "V1");
    assert!(v.get("code").is_none());
}

#[test]
fn vector_v2() {
    let v = decode(V2);
    let want = json!({
        "type": "registration_request",
        "flags": flags("--D-----"),
        "lifetime": 600,
        "home_address": "10.10.1.50",
        "home_agent": "10.10.1.1",
        "care_of_address": "10.10.0.10",
        "identification": "ec4e5a0012345678",
        "extensions": [mn_ha(24, "c823dffc3899875509ed4d1b15084e46")],
    });
    assert_subset(&v, &want, "V2");
}

#[test]
fn vector_v3() {
    let v = decode(V3);
    let want = json!({
        "type": "registration_reply",
        "code": 0,
        "lifetime": 600,
        "home_address": "10.10.1.50",
        "home_agent": "10.10.1.1",
        "identification": "ec4e5a0012345678",
        "extensions": [mn_ha(20, "6b17bf7f0f1322f9a1153dec5925c42d")],
    });
    assert_subset(&v, &want, "V3");
    assert!(v.get("flags").is_none() && v.get("care_of_address").is_none());
    assert_eq!(v["code_name"], "registration accepted");
}

#[test]
fn vector_v4() {
    let v = decode(V4);
    let want = json!({
        "type": "registration_reply",
        "code": 0,
        "lifetime": 600,
        "home_address": "10.10.1.50",
        "home_agent": "198.51.100.10",
        "identification": "ec4e5a0012345678",
        "extensions": [mn_ha(20, "70e2cee90091976e0fac5350cebf59c8")],
    });
    assert_subset(&v, &want, "V4");
}

#[test]
fn vector_v5() {
    let v = decode(V5);
    let want = json!({
        "type": "registration_request",
        "flags": flags("--D---T-"),
        "care_of_address": "192.168.1.77",
        "identification": "ec4e5a0012345678",
        "extensions": [
            {"type": 144, "offset": 24, "F": false, "R": false, "encapsulation": 4, "reserved3": 0},
            mn_ha(32, "9bcd0d4218bd0833ec9236954b4a9027"),
        ],
    });
    assert_subset(&v, &want, "V5");
}

#[test]
fn vector_v6() {
    let v = decode(V6);
    let want = json!({
        "type": "registration_reply",
        "code": 0,
        "lifetime": 600,
        "home_agent": "198.51.100.10",
        "extensions": [
            {"type": 44, "offset": 20, "code": 0, "F": false, "keepalive": 110},
            mn_ha(28, "e6a5219b9bda226f058144d658a16c75"),
        ],
    });
    assert_subset(&v, &want, "V6");
}

#[test]
fn vector_v7() {
    let v = decode(V7);
    let want = json!({
        "type": "registration_reply",
        "code": 133,
        "lifetime": 600,
        "home_agent": "198.51.100.10",
        "identification": "ec4e5b1012345678",
        "extensions": [mn_ha(20, "5441519f1295b0d5007b4c3e4bff77ff")],
    });
    assert_subset(&v, &want, "V7");
}

#[test]
fn vector_v8() {
    let v = decode(V8);
    let want = json!({
        "type": "registration_request",
        "flags": flags("--------"),
        "lifetime": 0,
        "home_address": "10.10.1.50",
        "home_agent": "198.51.100.10",
        "care_of_address": "10.10.1.50",
        "identification": "ec4e5c0000000001",
        "extensions": [mn_ha(24, "4ab4bd7a9bd5909ef324037d2f974776")],
    });
    assert_subset(&v, &want, "V8");
}

#[test]
fn flipped_authenticator_bit_is_invalid() {
    for (vector, ext) in [(V1, 0), (V3, 0), (V5, 1), (V6, 1)] {
        let mut b = hex::decode(vector).unwrap();
        let last = b.len() - 1;
        b[last] ^= 0x01;
        let v = decode(&hex::encode(&b));
        assert_eq!(v["extensions"][ext]["valid"], false, "{vector}");
    }
    // A bit flipped in the covered bytes (the lifetime) also fails.
    let mut b = hex::decode(V1).unwrap();
    b[3] ^= 0x80;
    assert_eq!(decode(&hex::encode(&b))["extensions"][0]["valid"], false);
}

#[test]
fn no_key_no_valid_and_key_for_other_spi() {
    let o = mipctl(&["decode", V1], None);
    assert_eq!(o.status.code(), Some(0));
    let v = &stdout_lines(&o)[0];
    assert!(v["extensions"][0].get("valid").is_none());
    let o = mipctl(&["decode", "--key", KEY, "--spi", "257", V1], None);
    assert!(stdout_lines(&o)[0]["extensions"][0].get("valid").is_none());
    // Without --spi the key applies to any SPI.
    let o = mipctl(&["decode", "--key", KEY, V1], None);
    assert_eq!(stdout_lines(&o)[0]["extensions"][0]["valid"], true);
}

/// Runs a malformed message; asserts exit 1, no stdout, and exactly one stderr line.
fn malformed(hex: &str) -> String {
    let o = mipctl(&["decode", hex], None);
    assert_eq!(
        o.status.code(),
        Some(1),
        "stdout: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    err.trim_end().to_owned()
}

#[test]
fn malformed_23_byte_request() {
    assert_eq!(malformed(&V1[..46]), "error: truncated at byte offset 23");
}

#[test]
fn malformed_truncated_mn_ha() {
    // Fixed part, then MN-HA with Length 20 but only 10 bytes after the Length byte.
    let msg = format!("{}2014{}", &V1[..48], "00000100aabbccddeeff");
    assert_eq!(
        malformed(&msg),
        "error: extension type 32 runs past the end of the message at byte offset 24"
    );
}

#[test]
fn malformed_unknown_non_skippable() {
    let msg = format!("{}64020000{}", &V1[..48], &V1[48..]);
    assert_eq!(
        malformed(&msg),
        "error: unknown non-skippable extension type 100 (message must be discarded) at byte offset 24"
    );
}

#[test]
fn unknown_skippable_is_kept_and_covered() {
    // Spec §10 case 7 shape: type 200 before MN-HA is shown as data; the MN-HA is computed over it.
    let mut b = hex::decode(&V1[..48]).unwrap();
    b.extend_from_slice(&[200, 2, 0xab, 0xcd]);
    b.extend_from_slice(&[0x20, 0x14, 0, 0, 1, 0]);
    let mac = mip::auth::compute(mip::auth::Algorithm::HmacMd5, &hex::decode(KEY).unwrap(), &b);
    b.extend_from_slice(&mac);
    let v = decode(&hex::encode(&b));
    assert_eq!(v["extensions"][0]["data"], "abcd");
    assert_eq!(v["extensions"][1]["offset"], 28);
    assert_eq!(v["extensions"][1]["valid"], true);
}

#[test]
fn stdin_input() {
    let input = format!("  0x{}\n{} \n", &V3[..40], &V3[40..]);
    for args in [&["decode", "--key", KEY, "-"][..], &["decode", "--key", KEY][..]] {
        let o = mipctl(args, Some(input.as_bytes()));
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let v = stdout_lines(&o);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0]["type"], "registration_reply");
        assert_eq!(v[0]["extensions"][0]["valid"], true);
    }
}

#[test]
fn bad_hex_is_a_usage_error() {
    let o = mipctl(&["decode", "0x0122zz"], None);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1);
    assert!(err.contains("'z'") && err.contains("position 6"), "{err}");
    let o = mipctl(&["decode", "-"], Some(b"012"));
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("odd number of hex digits"));
}

#[test]
fn tunnel_data_message() {
    let v = &stdout_lines(&mipctl(&["decode", "04040000450000"], None))[0];
    assert_eq!(
        v,
        &json!({"type": "tunnel_data", "next_header": 4, "payload_length": 3})
    );
}

#[test]
fn keyed_md5_algorithm() {
    // Spec §11.2: legacy keyed-MD5 prefix+suffix over V1's 30 covered bytes.
    let msg = format!("{}c70b7b4de64f1ce3d251055f41ed603c", &V1[..60]);
    let o = mipctl(
        &["decode", "--key", KEY, "--spi", "256", "--algorithm", "keyed-md5", &msg],
        None,
    );
    assert_eq!(stdout_lines(&o)[0]["extensions"][0]["valid"], true);
    let o = mipctl(&["decode", "--key", KEY, &msg], None);
    assert_eq!(stdout_lines(&o)[0]["extensions"][0]["valid"], false);
}

#[test]
fn ha_parameter_code_point() {
    // HA Parameter as type 120 / sub-type 3 (a deployment's dialect), then V1's MN-HA bytes.
    let msg = format!("{}780603000a0a0101{}", &V1[..48], &V1[48..]);
    let o = mipctl(
        &["decode", "--ha-param-type", "120", "--ha-param-subtype", "3", &msg],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ext = &stdout_lines(&o)[0]["extensions"][0];
    assert_eq!(
        ext,
        &json!({"type": 120, "offset": 24, "name": "ha_parameter", "subtype": 3,
        "home_agent": "10.10.1.1", "data": "03000a0a0101"})
    );
    // Without the dialect, 120 is an unknown non-skippable type.
    assert_eq!(
        malformed(&msg),
        "error: unknown non-skippable extension type 120 (message must be discarded) at byte offset 24"
    );
    // The default code point is 255 / 1.
    let msg = format!("{}ff0601000a0a0101{}", &V1[..48], &V1[48..]);
    let o = mipctl(&["decode", &msg], None);
    assert_eq!(stdout_lines(&o)[0]["extensions"][0]["home_agent"], "10.10.1.1");
    // A code point that collides with a standard extension is a usage error.
    let o = mipctl(&["decode", "--ha-param-type", "32", &msg], None);
    assert_eq!(o.status.code(), Some(2));
}

// === captures ===

fn sock(a: [u8; 4], port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(a), port)
}

fn tmp(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("mipctl-{}-{name}", std::process::id()))
}

/// Frames: 1 = V1 MN→proxy, 2 = DNS (not 434), 3 = V3 HA→proxy, 4 = V5 from behind a NAT.
fn capture_packets() -> Vec<Vec<u8>> {
    vec![
        ipv4_udp_packet(
            sock([192, 0, 2, 77], 40001),
            sock([198, 51, 100, 10], 434),
            &hex::decode(V1).unwrap(),
        ),
        ipv4_udp_packet(
            sock([192, 0, 2, 77], 5353),
            sock([198, 51, 100, 53], 53),
            b"\x12\x34\x01\x00",
        ),
        ipv4_udp_packet(
            sock([10, 10, 1, 1], 434),
            sock([10, 10, 0, 10], 434),
            &hex::decode(V3).unwrap(),
        ),
        ipv4_udp_packet(
            sock([203, 0, 113, 5], 40001),
            sock([198, 51, 100, 10], 434),
            &hex::decode(V5).unwrap(),
        ),
    ]
}

fn check_capture_lines(lines: &[Value]) {
    assert_eq!(lines.len(), 3, "{lines:?}");
    let want = [
        (1, "192.0.2.77:40001", "198.51.100.10:434", "registration_request"),
        (3, "10.10.1.1:434", "10.10.0.10:434", "registration_reply"),
        (4, "203.0.113.5:40001", "198.51.100.10:434", "registration_request"),
    ];
    for (line, (frame, src, dst, ty)) in lines.iter().zip(want) {
        assert_eq!(line["frame"], frame);
        assert_eq!(line["src"], src);
        assert_eq!(line["dst"], dst);
        assert_eq!(line["type"], ty);
        assert_eq!(line["udp_checksum_ok"], true);
        let exts = line["extensions"].as_array().unwrap();
        assert_eq!(exts.last().unwrap()["valid"], true, "{line}");
    }
    assert_eq!(lines[2]["extensions"][0]["encapsulation"], 4);
}

#[test]
fn pcap_written_by_our_writer() {
    let pkts = capture_packets();
    let refs: Vec<(u64, &[u8])> = pkts
        .iter()
        .enumerate()
        .map(|(i, p)| (1_700_000_000_000_000 + i as u64, &p[..]))
        .collect();
    let path = tmp("written.pcap");
    write_pcap(&path, &refs).unwrap();
    let o = mipctl(
        &["decode", "--key", KEY, "--spi", "256", "--pcap", path.to_str().unwrap()],
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    check_capture_lines(&stdout_lines(&o));
    std::fs::remove_file(&path).ok();
}

/// A big-endian pcapng built by hand: SHB, two IDBs (Ethernet, raw IPv4), a Name Resolution Block, the four
/// packets as EPBs on alternating interfaces (the Ethernet ones 802.1Q-tagged), and an ARP frame.
fn hand_made_pcapng() -> Vec<u8> {
    fn block(out: &mut Vec<u8>, ty: u32, body: &[u8]) {
        let mut b = body.to_vec();
        b.resize(body.len().div_ceil(4) * 4, 0);
        let len = (b.len() + 12) as u32;
        out.extend_from_slice(&ty.to_be_bytes());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&b);
        out.extend_from_slice(&len.to_be_bytes());
    }
    fn epb(out: &mut Vec<u8>, iface: u32, data: &[u8]) {
        let mut b = Vec::new();
        for v in [iface, 0x0006_0000, 0x1234_5678, data.len() as u32, data.len() as u32] {
            b.extend_from_slice(&v.to_be_bytes());
        }
        b.extend_from_slice(data);
        block(out, 6, &b);
    }
    let mut f = Vec::new();
    let mut shb = 0x1a2b_3c4du32.to_be_bytes().to_vec();
    shb.extend_from_slice(&[0, 1, 0, 0]);
    shb.extend_from_slice(&[0xff; 8]);
    block(&mut f, 0x0a0d_0d0a, &shb);
    block(&mut f, 1, &[0, 1, 0, 0, 0, 0, 0xff, 0xff]); // IDB 0: Ethernet
    block(&mut f, 1, &[0, 228, 0, 0, 0, 0, 0, 0]); // IDB 1: raw IPv4
    block(&mut f, 4, &[0, 0, 0, 0]); // NRB, skipped
    for (i, p) in capture_packets().iter().enumerate() {
        if i % 2 == 0 {
            let mut eth = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x81, 0x00, 0x00, 0x07, 0x08, 0x00];
            eth.extend_from_slice(p);
            epb(&mut f, 0, &eth);
        } else {
            epb(&mut f, 1, p);
        }
    }
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06]);
    arp.extend_from_slice(&[0; 28]);
    epb(&mut f, 0, &arp);
    f
}

#[test]
fn pcapng_made_by_hand() {
    let path = tmp("hand.pcapng");
    std::fs::write(&path, hand_made_pcapng()).unwrap();
    let o = mipctl(&["decode", "--key", KEY, "--pcap", path.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    check_capture_lines(&stdout_lines(&o));
    std::fs::remove_file(&path).ok();
}

#[test]
fn pcap_with_ethernet_and_malformed_message() {
    // Ethernet link type; frame 2 carries the unknown-type-100 message, frame 3 has a corrupted UDP checksum.
    let bad = hex::decode(format!("{}64020000{}", &V1[..48], &V1[48..])).unwrap();
    let a = ipv4_udp_packet(
        sock([192, 0, 2, 77], 40001),
        sock([198, 51, 100, 10], 434),
        &hex::decode(V1).unwrap(),
    );
    let b = ipv4_udp_packet(sock([192, 0, 2, 77], 40001), sock([198, 51, 100, 10], 434), &bad);
    let mut c = ipv4_udp_packet(
        sock([10, 10, 1, 1], 434),
        sock([10, 10, 0, 10], 434),
        &hex::decode(V3).unwrap(),
    );
    c[26] ^= 0xff;
    let eth = |p: &[u8]| {
        let mut e = vec![0u8; 12];
        e.extend_from_slice(&[0x08, 0x00]);
        e.extend_from_slice(p);
        e
    };
    let frames = [eth(&a), eth(&b), eth(&c)];
    let refs: Vec<(u64, &[u8])> = frames.iter().map(|f| (0, &f[..])).collect();
    let mut file = Vec::new();
    write_pcap_to(&mut file, 1, &refs).unwrap();
    let path = tmp("eth.pcap");
    std::fs::write(&path, file).unwrap();
    let o = mipctl(&["decode", "--pcap", path.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[0]["type"], "registration_request");
    assert_eq!(
        lines[1],
        json!({
            "frame": 2, "src": "192.0.2.77:40001", "dst": "198.51.100.10:434", "udp_checksum_ok": true,
            "error": "unknown non-skippable extension type 100 (message must be discarded) at byte offset 24",
            "offset": 24,
        })
    );
    assert_eq!(lines[2]["frame"], 3);
    assert_eq!(lines[2]["udp_checksum_ok"], false);
    std::fs::remove_file(&path).ok();
}

#[test]
fn fragments_are_noted() {
    let mut first = ipv4_udp_packet(
        sock([192, 0, 2, 77], 40001),
        sock([198, 51, 100, 10], 434),
        &hex::decode(V1).unwrap(),
    );
    first[6] = 0x20; // MF
    let mut later = first.clone();
    later[6] = 0x00;
    later[7] = 0x03; // offset 24 bytes
    // Header checksums are not checked by the decoder; fix them anyway for realism.
    for p in [&mut first, &mut later] {
        mip::wire::ipv4::Ipv4Packet::new_unchecked(&mut p[..]).fill_checksum();
    }
    let path = tmp("frag.pcap");
    write_pcap(&path, &[(0, &first[..]), (0, &later[..])]).unwrap();
    let o = mipctl(&["decode", "--pcap", path.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["skipped"], "fragment");
    assert_eq!(lines[0]["frame"], 1);
    assert_eq!(lines[1], json!({"frame": 2, "skipped": "fragment"}));
    std::fs::remove_file(&path).ok();
}

#[test]
fn unreadable_captures_exit_2() {
    // Garbage.
    let path = tmp("garbage.pcap");
    std::fs::write(&path, b"this is not a capture file at all").unwrap();
    let o = mipctl(&["decode", "--pcap", path.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1);
    assert!(
        err.contains(path.to_str().unwrap()) && err.contains("byte offset 0"),
        "{err}"
    );
    std::fs::remove_file(&path).ok();

    // Truncated inside the third record: the two complete frames are still printed.
    let pkts = capture_packets();
    let refs: Vec<(u64, &[u8])> = pkts.iter().map(|p| (0, &p[..])).collect();
    let mut file = Vec::new();
    write_pcap_to(&mut file, 101, &refs).unwrap();
    let third = 24 + 16 + pkts[0].len() + 16 + pkts[1].len();
    file.truncate(third + 20);
    let path = tmp("truncated.pcap");
    std::fs::write(&path, &file).unwrap();
    let o = mipctl(&["decode", "--pcap", path.to_str().unwrap()], None);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(err.contains(&format!("byte offset {}", third + 16)), "{err}");
    assert_eq!(stdout_lines(&o).len(), 1);
    std::fs::remove_file(&path).ok();

    // Missing file.
    let o = mipctl(&["decode", "--pcap", "/nonexistent/capture.pcap"], None);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/capture.pcap"));
}
