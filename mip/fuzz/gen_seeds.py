#!/usr/bin/env python3
"""Regenerates seeds/<target>/*.bin: spec §11.2 vectors V1-V8 (MACs re-checked with Python hmac) plus a few
hand-built messages (IPv4/UDP/ICMP framing, advertisements, extension regions). Run: python3 mip/fuzz/gen_seeds.py"""
import os, struct, hmac, hashlib
os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds"))
V = {
 "v1_rrq": "01220258 0a0a0132 c633640a c000024d ec4e5a00 12345678 20140000 0100869d 33adee78 6a3be9b7 95c8cafb 1d71",
 "v2_rrq_relay": "01200258 0a0a0132 0a0a0101 0a0a000a ec4e5a00 12345678 20140000 0100c823 dffc3899 875509ed 4d1b1508 4e46",
 "v3_rrp": "03000258 0a0a0132 0a0a0101 ec4e5a00 12345678 20140000 01006b17 bf7f0f13 22f9a115 3dec5925 c42d",
 "v4_rrp": "03000258 0a0a0132 c633640a ec4e5a00 12345678 20140000 010070e2 cee90091 976e0fac 5350cebf 59c8",
 "v5_rrq_udp_tunnel": "01220258 0a0a0132 c633640a c0a8014d ec4e5a00 12345678 90060000 00040000 20140000 01009bcd 0d4218bd 0833ec92 36954b4a 9027",
 "v6_rrp_udp_tunnel": "03000258 0a0a0132 c633640a ec4e5a00 12345678 2c060000 0000006e 20140000 0100e6a5 219b9bda 226f0581 44d658a1 6c75",
 "v7_rrp_133": "03850258 0a0a0132 c633640a ec4e5b10 12345678 20140000 01005441 519f1295 b0d5007b 4c3e4bff 77ff",
 "v8_dereg": "01000000 0a0a0132 c633640a 0a0a0132 ec4e5c00 00000001 20140000 01004ab4 bd7a9bd5 909ef324 037d2f97 4776",
}
B = {k: bytes.fromhex(v.replace(" ", "")) for k, v in V.items()}
KEY = bytes(range(16))
# Self-check against the spec MACs.
for k, b in B.items():
    assert hmac.new(KEY, b[:-16], hashlib.md5).digest() == b[-16:], k

NAI = bytes.fromhex("830f6a6f65406578616d706c652e636f6d")
UTRQ_F = bytes.fromhex("9006000080000000")
UTRP_F = bytes.fromhex("2c06000080000000")
HA_PARAM = bytes([0xff, 6, 1, 0, 10, 10, 1, 1])

def signed(prefix):
    body = prefix + bytes([0x20, 0x14, 0, 0, 1, 0])
    return body + hmac.new(KEY, body, hashlib.md5).digest()

def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b)//2), b))
    while s > 0xffff: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def icmp(t, code, rest, data=b""):
    m = bytearray(struct.pack("!BBHI", t, code, 0, rest) + data)
    struct.pack_into("!H", m, 2, csum(bytes(m)))
    return bytes(m)

def ipv4(proto, src, dst, payload, ttl=64, ident=0x1234, df=True):
    h = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident, 0x4000 if df else 0, ttl, proto, 0,
                              bytes(src), bytes(dst)))
    struct.pack_into("!H", h, 10, csum(bytes(h)))
    return bytes(h) + payload

def udp(sport, dport, payload, src, dst):
    l = 8 + len(payload)
    u = bytearray(struct.pack("!HHHH", sport, dport, l, 0) + payload)
    ph = bytes(src) + bytes(dst) + struct.pack("!BBH", 0, 17, l)
    c = csum(ph + bytes(u)) or 0xffff
    struct.pack_into("!H", u, 6, c)
    return bytes(u)

def adv(code, lifetime, routers, mob=None, prefix=None, pad=False):
    body = struct.pack("!BBHBBH", 9, code, 0, len(routers), 2, lifetime)
    for a, pref in routers: body += bytes(a) + struct.pack("!i", pref)
    if mob:
        seq, life, flags, coas = mob
        body += struct.pack("!BBHHH", 16, 6 + 4 * len(coas), seq, life, flags) + b"".join(bytes(c) for c in coas)
    if pad: body += b"\0"
    if prefix is not None: body += bytes([19, len(prefix)]) + prefix
    m = bytearray(body)
    struct.pack_into("!H", m, 2, csum(bytes(m)))
    return bytes(m)

MN = [192, 168, 1, 77]; PROXY = [198, 51, 100, 10]; HA = [10, 10, 1, 1]; PRIV = [10, 10, 0, 10]

seeds = {
 "registration": dict(B, **{
   "rrq_nai_hoa0": signed(bytes.fromhex("01220258 00000000 c633640a c000024d ec4e5a00 12345679".replace(" ", "")) + NAI),
   "rrq_ha_param_utrq_pad": signed(B["v1_rrq"][:24] + b"\0" + HA_PARAM + UTRQ_F + bytes([130, 0])),
   "rrp_utrp_f": signed(B["v4_rrp"][:20] + UTRP_F),
   "rrq_skippable_mnfa": signed(B["v1_rrq"][:24] + bytes([200, 3, 1, 2, 3])) + bytes([0x21, 0x14, 0, 0, 1, 1]) + bytes(16),
   "tunnel_data_ipip": bytes.fromhex("04040000") + ipv4(50, MN, PROXY, b"\0\0\0\1" * 4),
 }),
 "extensions": {
   "v5_exts_default": b"\xff\x01\x18" + B["v5_rrq_udp_tunnel"][24:],
   "v6_exts_default": b"\xff\x01\x14" + B["v6_rrp_udp_tunnel"][20:],
   "nai_ha_param": b"\xff\x01\x18" + NAI + HA_PARAM + bytes([149, 2, 0, 0]) + bytes([130, 0]) + b"\0",
   "custom_dialect_120": bytes([120, 3, 0x18]) + bytes([120, 6, 3, 0, 1, 2, 3, 4]) + UTRQ_F + UTRP_F,
   "long_format": b"\xff\x01\x18" + bytes([36, 1, 0, 8]) + bytes(8) + bytes([131, 1]) + b"x",
 },
 "advertisement": {
   "spec_fa_tu": adv(16, 1800, [], (7, 1800, 0x1180, [[192, 0, 2, 1]])),
   "routers_prefix_pad": adv(0, 1800, [([10, 0, 0, 1], 0), ([10, 0, 0, 2], -1)], (0, 600, 0x2000 | 0x1000 | 0x0100, [[192, 0, 2, 1], [192, 0, 2, 2]]), b"\x18\x18", pad=True),
   "solicitation": icmp(10, 0, 0),
 },
 "tunnel_data": {
   "ipip": bytes.fromhex("04040000") + ipv4(50, MN, PROXY, b"ESP!" * 6),
   "header_only": bytes.fromhex("04040000"),
   "gre": bytes.fromhex("042f0000") + bytes.fromhex("00000800") + ipv4(1, MN, PROXY, icmp(8, 0, 0x00070001, b"ping")),
 },
 "ipv4_icmp": {
   "udp434_v1": ipv4(17, MN, PROXY, udp(40001, 434, B["v1_rrq"], MN, PROXY)),
   "udp434_v6": ipv4(17, PROXY, MN, udp(434, 40001, B["v6_rrp_udp_tunnel"], PROXY, MN)),
   "udp434_tunnel_data": ipv4(17, MN, PROXY, udp(40001, 434, bytes.fromhex("04040000") + ipv4(50, MN, PROXY, b"ESP!"), MN, PROXY)),
   "icmp_echo": ipv4(1, MN, PROXY, icmp(8, 0, 0x00070001, b"mip-keepalive")),
   "icmp_frag_needed": ipv4(1, PRIV, MN, icmp(3, 4, 1400, ipv4(50, MN, PROXY, b"")[:20] + b"\0" * 8)),
   "icmp_time_exceeded": ipv4(1, PRIV, MN, icmp(11, 0, 0, ipv4(17, MN, PROXY, b"")[:20] + b"\0" * 8), ttl=1),
   "icmp_adv": ipv4(1, HA, [255, 255, 255, 255], adv(16, 1800, [], (7, 1800, 0x1180, [[192, 0, 2, 1]])), ttl=1, df=False),
   "ipip_ttl255": ipv4(4, PROXY, MN, ipv4(50, PRIV, MN, b"ESP!"), ttl=255),
 },
}
for target, files in seeds.items():
    os.makedirs(target, exist_ok=True)
    for name, b in files.items():
        with open(os.path.join(target, name + ".bin"), "wb") as f:
            f.write(b)
print({t: len(f) for t, f in seeds.items()})
