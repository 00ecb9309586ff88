#!/usr/bin/env python3
"""Recompute the project vectors V1-V8, V2b (spec §11.2) and the listed fragments from their field values.

Independent of the Rust code; Python 3.11 stdlib only. Prints one JSON object:
  {"V1": {"hex": ..., "mac": ...}, ..., "V8": {...}, "V2b": {...},
   "V1_keyed_md5": <hex>,
   "fragments": {"nai": ..., "tunnel_data": ..., "utrq_f": ..., "utrp_f": ..., "agent_adv_ext": ...}}
The committed golden copy is vectors.json next to this script (regenerate with
`python3 gen_vectors.py > vectors.json`).
"""

import hashlib
import hmac
import ipaddress
import json
import struct

KEY = bytes(range(16))  # 00 01 .. 0f
SPI = 0x00000100

# §10 addresses
MN_PERM = "10.10.1.50"
ACTUAL_HA = "10.10.1.1"
MIPP_PUB = "198.51.100.10"
MIPP_PRIV = "10.10.0.10"
PUBLIC_COA = "192.0.2.77"
PRIVATE_COA = "192.168.1.77"

# Request flag bits (§2.2)
F_D = 0x20
F_T = 0x02


def ip(s):
    return ipaddress.IPv4Address(s).packed


def hmac_md5(key, data):
    return hmac.new(key, data, hashlib.md5).digest()


def keyed_md5(key, data):
    return hashlib.md5(key + data + key).digest()


def rrq(flags, lifetime, hoa, ha, coa, ident):  # §2.2, 24 bytes
    return struct.pack("!BBH4s4s4sQ", 1, flags, lifetime, ip(hoa), ip(ha), ip(coa), ident)


def rrp(code, lifetime, hoa, ha, ident):  # §2.3, 20 bytes
    return struct.pack("!BBH4s4sQ", 3, code, lifetime, ip(hoa), ip(ha), ident)


def utrq(f, r, encap):  # §2.6
    return struct.pack("!BBBBBBH", 144, 6, 0, 0, (0x80 if f else 0) | (0x40 if r else 0), encap, 0)


def utrp(code, f, keepalive):  # §2.7
    return struct.pack("!BBBBHH", 44, 6, 0, code, 0x8000 if f else 0, keepalive)


def nai(s):  # §2.5
    b = s.encode("ascii")
    return bytes([131, len(b)]) + b


def tunnel_data_header(next_header):  # §2.8
    return struct.pack("!BBH", 4, next_header, 0)


def agent_adv_ext(seq, reg_lifetime, flags, coas):  # §2.9
    body = struct.pack("!HHH", seq, reg_lifetime, flags) + b"".join(ip(c) for c in coas)
    return bytes([16, len(body)]) + body


def with_mn_ha(msg, key=KEY, spi=SPI):
    """Append MN-HA auth ext (type 32, Length 20); MAC over msg + Type + Length + SPI (§3.1)."""
    head = struct.pack("!BBI", 32, 20, spi)
    mac = hmac_md5(key, msg + head)
    return msg + head + mac, mac


def vec(msg):
    full, mac = with_mn_ha(msg)
    return {"hex": full.hex(), "mac": mac.hex()}


def main():
    id1 = 0xEC4E5A00_12345678
    out = {}
    # V1: MN -> proxy RRQ, D+T, life 600, HoA MN-Perm, HA MIPP-Pub, CoA public
    out["V1"] = vec(rrq(F_D | F_T, 600, MN_PERM, MIPP_PUB, PUBLIC_COA, id1))
    # V2: proxy -> HA relay (NV01: flags D only), HA actual, CoA MIPP-Priv
    out["V2"] = vec(rrq(F_D, 600, MN_PERM, ACTUAL_HA, MIPP_PRIV, id1))
    # V2b: as V2 but D+T (VT02)
    out["V2b"] = vec(rrq(F_D | F_T, 600, MN_PERM, ACTUAL_HA, MIPP_PRIV, id1))
    # V3: HA -> proxy RRP code 0, life 600, HA actual
    out["V3"] = vec(rrp(0, 600, MN_PERM, ACTUAL_HA, id1))
    # V4: proxy -> MN RRP, HA field MIPP-Pub
    out["V4"] = vec(rrp(0, 600, MN_PERM, MIPP_PUB, id1))
    # V5: MN behind NAT, private CoA, UDP Tunnel Request (F=0, R=0, encap 4) before MN-HA
    out["V5"] = vec(rrq(F_D | F_T, 600, MN_PERM, MIPP_PUB, PRIVATE_COA, id1) + utrq(False, False, 4))
    # V6: proxy -> MN RRP with UDP Tunnel Reply code 0, F=0, keepalive 110
    out["V6"] = vec(rrp(0, 600, MN_PERM, MIPP_PUB, id1) + utrp(0, False, 110))
    # V7: RRP code 133 with resync ID ec4e5b10 12345678
    out["V7"] = vec(rrp(133, 600, MN_PERM, MIPP_PUB, 0xEC4E5B10_12345678))
    # V8: deregister all: flags 0, life 0, CoA = HoA, ID ec4e5c00 00000001
    out["V8"] = vec(rrq(0, 0, MN_PERM, MIPP_PUB, MN_PERM, 0xEC4E5C00_00000001))

    # Legacy keyed-MD5 prefix+suffix over V1's 30 covered bytes (fixed part + Type, Length, SPI)
    v1_covered = bytes.fromhex(out["V1"]["hex"])[:30]
    out["V1_keyed_md5"] = keyed_md5(KEY, v1_covered).hex()

    out["fragments"] = {
        "nai": nai("joe@example.com").hex(),
        "tunnel_data": tunnel_data_header(4).hex(),
        "utrq_f": utrq(True, False, 0).hex(),
        "utrp_f": utrp(0, True, 0).hex(),
        # flags F 0x1000 | T 0x0100 | U 0x0080 (§2.9)
        "agent_adv_ext": agent_adv_ext(7, 1800, 0x1000 | 0x0100 | 0x0080, ["192.0.2.1"]).hex(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
