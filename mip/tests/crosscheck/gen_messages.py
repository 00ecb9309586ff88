#!/usr/bin/env python3
"""Independent generator of random, valid Mobile IPv4 registration messages.

Written from the protocol digest (/work/shared/spec/mobile-ip.md §2, §3) only; it shares no
code with the Rust implementation and uses nothing but the Python 3.11 standard library.
Rust tests feed each "hex" to the Rust decoder and compare its JSON with "expected".

Usage: gen_messages.py [--count N] [--seed S]

Output: N lines, each one JSON object
  {"hex": <UDP payload, lowercase hex>,
   "keys": [{"spi": n, "key": <hex>, "algorithm": "hmac-md5"|"keyed-md5"}, ...],  # one per auth ext, wire order
   "expected": <the JSON a decoder must print>}

"expected" contract
  type                "registration_request" | "registration_reply" | "tunnel_data"
  request             flags{S,B,D,M,G,r,T,x: bool}, lifetime, home_address, home_agent, care_of_address,
                      identification (16 lowercase hex digits), extensions
  reply               code, lifetime, home_address, home_agent, identification, extensions
  tunnel_data         next_header, payload_length (bytes after the 4-byte header)
  extensions[]        wire order; each has "type" and "offset" (offset of its Type byte in the payload), plus
                        32/33/34  spi, authenticator (hex)
                        131       nai (string)
                        144       F, R (bool), encapsulation (int)
                        44        code, F (bool), keepalive
                        255/sub 1 subtype (1), home_agent (dotted quad), data (hex of body after Type, Length)
                        others    data (hex of body after Type and Length; "" for one-byte padding and 130)
"""

import argparse
import hashlib
import hmac
import ipaddress
import json
import random
import struct

# ---------------------------------------------------------------------------------------------
# Constants straight from the digest
# ---------------------------------------------------------------------------------------------

TYPE_RRQ = 1  # §2.1
TYPE_RRP = 3  # §2.1
TYPE_TUNNEL_DATA = 4  # §2.8 (RFC 3519 §3.3)

EXT_PAD = 0  # one-byte padding, no Length (§2.1)
EXT_MN_HA = 32  # §2.4
EXT_MN_FA = 33
EXT_FA_HA = 34
EXT_UDP_TUNNEL_REPLY = 44  # §2.7
EXT_ENCAP_DELIVERY = 130  # §2.10
EXT_NAI = 131  # §2.5
EXT_UDP_TUNNEL_REQUEST = 144  # §2.6
EXT_TRUSTED_NETWORKS = 149  # §2.12
EXT_HA_PARAM = 255  # §2.11 project default (type 255, sub-type 1)
HA_PARAM_SUBTYPE = 1

# Request flag bits (§2.2)
REQ_FLAGS = [("S", 0x80), ("B", 0x40), ("D", 0x20), ("M", 0x10),
             ("G", 0x08), ("r", 0x04), ("T", 0x02), ("x", 0x01)]

# Reply codes (§2.3), as listed in the brief
REPLY_CODES = ([0, 1] + list(range(64, 83)) + [88] + list(range(96, 100))
               + list(range(128, 143)) + [192, 194] + list(range(200, 207)))

# Unknown skippable extension types: 128..254 minus the ones given meaning here.
# 139 (RFC 4433 Dynamic HA, "optional alternative input" in §2.11) is also excluded so that a
# decoder that chooses to understand it is not contradicted.
KNOWN_SKIPPABLE = {EXT_ENCAP_DELIVERY, EXT_NAI, EXT_UDP_TUNNEL_REQUEST, EXT_TRUSTED_NETWORKS, 139}
UNKNOWN_SKIPPABLE = [t for t in range(128, 255) if t not in KNOWN_SKIPPABLE]

NAI_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_+!#$%&'*/=?^`{|}~"


# ---------------------------------------------------------------------------------------------
# Authenticator (§3)
# ---------------------------------------------------------------------------------------------

def authenticator(algorithm, key, data):
    if algorithm == "hmac-md5":  # RFC 2104, §3.2 default
        return hmac.new(key, data, hashlib.md5).digest()
    if algorithm == "keyed-md5":  # RFC 2002 prefix+suffix, §3.2
        return hashlib.md5(key + data + key).digest()
    raise ValueError(algorithm)


# ---------------------------------------------------------------------------------------------
# Random helpers
# ---------------------------------------------------------------------------------------------

def rand_addr(rng):
    a = ipaddress.IPv4Address(rng.getrandbits(32))
    return a.packed, str(a)


def rand_key(rng):
    n = 16 if rng.random() < 0.75 else rng.randint(5, 64)
    return rng.randbytes(n)


def rand_nai(rng):
    total = rng.randint(3, 60)  # user@realm, both parts non-empty
    user_len = rng.randint(1, total - 2)
    realm_len = total - 1 - user_len
    user = "".join(rng.choice(NAI_CHARS) for _ in range(user_len))
    realm = "".join(rng.choice(NAI_CHARS) for _ in range(realm_len))
    return user + "@" + realm


# ---------------------------------------------------------------------------------------------
# Non-auth extension builders: each returns (bytes, expected-dict-without-offset)
# ---------------------------------------------------------------------------------------------

def ext_pad(rng):
    return bytes([EXT_PAD]), {"type": EXT_PAD, "data": ""}


def ext_nai(rng):
    nai = rand_nai(rng).encode("ascii")
    return bytes([EXT_NAI, len(nai)]) + nai, {"type": EXT_NAI, "nai": nai.decode("ascii")}


def ext_utrq(rng):
    f = rng.random() < 0.5
    r = rng.random() < 0.5
    flags = (0x80 if f else 0) | (0x40 if r else 0) | rng.getrandbits(6)  # low 6 = Reserved 2
    encap = rng.choice([0, 4, 47, 55])
    # Type, Length 6, Sub-Type 0, Reserved 1, Flags, Encapsulation, Reserved 3 (16 bits, 0)
    b = struct.pack("!BBBBBBH", EXT_UDP_TUNNEL_REQUEST, 6, 0, 0, flags, encap, 0)
    return b, {"type": EXT_UDP_TUNNEL_REQUEST, "F": f, "R": r, "encapsulation": encap}


def ext_utrp(rng):
    code = rng.randint(0, 255)
    f = rng.random() < 0.5
    keepalive = rng.randint(0, 65535)
    # Type 44, Length 6, Sub-Type 0, Reply Code, Flags/Reserved (16), Keepalive (16)
    b = struct.pack("!BBBBHH", EXT_UDP_TUNNEL_REPLY, 6, 0, code, 0x8000 if f else 0, keepalive)
    return b, {"type": EXT_UDP_TUNNEL_REPLY, "code": code, "F": f, "keepalive": keepalive}


def ext_encap_delivery(rng):
    return bytes([EXT_ENCAP_DELIVERY, 0]), {"type": EXT_ENCAP_DELIVERY, "data": ""}


def ext_trusted_networks(rng):
    body = bytes([0, 0])  # Sub-Type 0, Reserved 0
    return bytes([EXT_TRUSTED_NETWORKS, len(body)]) + body, {"type": EXT_TRUSTED_NETWORKS, "data": body.hex()}


def ext_ha_param(rng):
    packed, dotted = rand_addr(rng)
    body = bytes([HA_PARAM_SUBTYPE, 0]) + packed  # Sub-Type 1, Reserved 0, HA address
    return (bytes([EXT_HA_PARAM, len(body)]) + body,
            {"type": EXT_HA_PARAM, "subtype": HA_PARAM_SUBTYPE, "home_agent": dotted, "data": body.hex()})


def ext_unknown_skippable(rng):
    t = rng.choice(UNKNOWN_SKIPPABLE)
    body = rng.randbytes(rng.randint(0, 40))
    return bytes([t, len(body)]) + body, {"type": t, "data": body.hex()}


# ---------------------------------------------------------------------------------------------
# Message builders
# ---------------------------------------------------------------------------------------------

class Builder:
    def __init__(self, rng, fixed):
        self.rng = rng
        self.msg = bytearray(fixed)
        self.exts = []
        self.keys = []
        self.used_spis = set()

    def add(self, ext_bytes, exp):
        exp = dict(exp)
        off = len(self.msg)
        self.msg += ext_bytes
        # put "type" and "offset" first for readability
        self.exts.append({"type": exp.pop("type"), "offset": off, **exp})

    def add_auth(self, ext_type):
        rng = self.rng
        while True:
            spi = rng.randint(256, 2**32 - 1)  # 0..255 reserved (§2.4)
            if spi not in self.used_spis:
                break
        self.used_spis.add(spi)
        key = rand_key(rng)
        algorithm = "keyed-md5" if rng.random() < 0.2 else "hmac-md5"
        off = len(self.msg)
        head = struct.pack("!BBI", ext_type, 4 + 16, spi)
        # §3.1: everything before this extension + its Type, Length, SPI
        mac = authenticator(algorithm, key, bytes(self.msg) + head)
        self.msg += head + mac
        self.exts.append({"type": ext_type, "offset": off, "spi": spi, "authenticator": mac.hex()})
        self.keys.append({"spi": spi, "key": key.hex(), "algorithm": algorithm})

    def add_pre_auth(self, pool):
        """0..6 random non-auth extensions; known types at most once, padding/unknown may repeat."""
        rng = self.rng
        used = set()
        for _ in range(rng.randint(0, 6)):
            choices = [f for f in pool if f not in used]
            fn = rng.choice(choices)
            if fn not in (ext_pad, ext_unknown_skippable):
                used.add(fn)
            self.add(*fn(rng))

    def add_auth_tail(self):
        rng = self.rng
        self.add_auth(EXT_MN_HA)  # exactly one MN-HA per message
        if rng.random() < 0.3:
            self.add(*ext_encap_delivery(rng))
        if rng.random() < 0.4:
            self.add_auth(rng.choice([EXT_MN_FA, EXT_FA_HA]))


def gen_request(rng):
    flags = rng.getrandbits(8)
    lifetime = rng.randint(0, 65535)
    hoa, hoa_s = rand_addr(rng)
    ha, ha_s = rand_addr(rng)
    coa, coa_s = rand_addr(rng)
    ident = rng.getrandbits(64)
    fixed = struct.pack("!BBH4s4s4sQ", TYPE_RRQ, flags, lifetime, hoa, ha, coa, ident)
    assert len(fixed) == 24
    b = Builder(rng, fixed)
    b.add_pre_auth([ext_pad, ext_nai, ext_utrq, ext_encap_delivery, ext_trusted_networks,
                    ext_ha_param, ext_unknown_skippable])
    b.add_auth_tail()
    expected = {
        "type": "registration_request",
        "flags": {name: bool(flags & mask) for name, mask in REQ_FLAGS},
        "lifetime": lifetime,
        "home_address": hoa_s,
        "home_agent": ha_s,
        "care_of_address": coa_s,
        "identification": "%016x" % ident,
        "extensions": b.exts,
    }
    return bytes(b.msg), b.keys, expected


def gen_reply(rng):
    code = rng.choice(REPLY_CODES)
    lifetime = rng.randint(0, 65535)
    hoa, hoa_s = rand_addr(rng)
    ha, ha_s = rand_addr(rng)
    ident = rng.getrandbits(64)
    fixed = struct.pack("!BBH4s4sQ", TYPE_RRP, code, lifetime, hoa, ha, ident)
    assert len(fixed) == 20
    b = Builder(rng, fixed)
    b.add_pre_auth([ext_pad, ext_nai, ext_utrp, ext_encap_delivery, ext_trusted_networks,
                    ext_ha_param, ext_unknown_skippable])
    b.add_auth_tail()
    expected = {
        "type": "registration_reply",
        "code": code,
        "lifetime": lifetime,
        "home_address": hoa_s,
        "home_agent": ha_s,
        "identification": "%016x" % ident,
        "extensions": b.exts,
    }
    return bytes(b.msg), b.keys, expected


def gen_tunnel_data(rng):
    nh = rng.choice([4, 47, 55])
    payload = rng.randbytes(rng.randint(0, 64))
    msg = struct.pack("!BBH", TYPE_TUNNEL_DATA, nh, 0) + payload
    return msg, [], {"type": "tunnel_data", "next_header": nh, "payload_length": len(payload)}


def generate(count, seed):
    rng = random.Random(seed)
    for _ in range(count):
        r = rng.random()
        if r < 0.45:
            msg, keys, exp = gen_request(rng)
        elif r < 0.90:
            msg, keys, exp = gen_reply(rng)
        else:
            msg, keys, exp = gen_tunnel_data(rng)
        yield {"hex": msg.hex(), "keys": keys, "expected": exp}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    for obj in generate(args.count, args.seed):
        print(json.dumps(obj, separators=(",", ":")))


if __name__ == "__main__":
    main()
