#!/usr/bin/env python3
"""Self-check for the crosscheck generators (stdlib only; not used by the Rust tests).

1. RFC 2202 HMAC-MD5 test cases 1-7 (spec §11.1) against hashlib/hmac.
2. gen_vectors.py output == the hex/MAC values printed in spec §11.2 and §10 (copied below as the
   oracle), and == the committed vectors.json.
3. gen_messages.py: every line is JSON; a separate minimal decoder written here reproduces
   "expected" exactly from "hex"; every auth extension's authenticator recomputes with its key;
   exactly one MN-HA per registration message; output is deterministic per seed.
Exit status 0 on success.
"""

import hashlib
import hmac
import ipaddress
import json
import os
import subprocess
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- oracle values copied verbatim from /work/shared/spec/mobile-ip.md §11.2 / §10 ----
SPEC = {
    "V1": ("01220258 0a0a0132 c633640a c000024d ec4e5a00 12345678 20140000 0100869d 33adee78 6a3be9b7 95c8cafb 1d71",
           "869d33adee786a3be9b795c8cafb1d71"),
    "V2": ("01200258 0a0a0132 0a0a0101 0a0a000a ec4e5a00 12345678 20140000 0100c823 dffc3899 875509ed 4d1b1508 4e46",
           "c823dffc3899875509ed4d1b15084e46"),
    "V2b": (None, "c9bb72a39ee0249c1da1b51b23e1d721"),
    "V3": ("03000258 0a0a0132 0a0a0101 ec4e5a00 12345678 20140000 01006b17 bf7f0f13 22f9a115 3dec5925 c42d",
           "6b17bf7f0f1322f9a1153dec5925c42d"),
    "V4": ("03000258 0a0a0132 c633640a ec4e5a00 12345678 20140000 010070e2 cee90091 976e0fac 5350cebf 59c8",
           "70e2cee90091976e0fac5350cebf59c8"),
    "V5": ("01220258 0a0a0132 c633640a c0a8014d ec4e5a00 12345678 90060000 00040000 20140000 01009bcd 0d4218bd "
           "0833ec92 36954b4a 9027", "9bcd0d4218bd0833ec9236954b4a9027"),
    "V6": ("03000258 0a0a0132 c633640a ec4e5a00 12345678 2c060000 0000006e 20140000 0100e6a5 219b9bda 226f0581 "
           "44d658a1 6c75", "e6a5219b9bda226f058144d658a16c75"),
    "V7": ("03850258 0a0a0132 c633640a ec4e5b10 12345678 20140000 01005441 519f1295 b0d5007b 4c3e4bff 77ff",
           "5441519f1295b0d5007b4c3e4bff77ff"),
    "V8": ("01000000 0a0a0132 c633640a 0a0a0132 ec4e5c00 00000001 20140000 01004ab4 bd7a9bd5 909ef324 037d2f97 4776",
           "4ab4bd7a9bd5909ef324037d2f974776"),
}
SPEC_LEN = {"V1": 46, "V2": 46, "V3": 42, "V4": 42, "V5": 54, "V6": 50, "V7": 42, "V8": 46}
SPEC_KEYED_MD5 = "c70b7b4de64f1ce3d251055f41ed603c"
SPEC_FRAGMENTS = {
    "nai": "830f6a6f 65406578 616d706c 652e636f 6d",
    "tunnel_data": "04040000",
    "utrq_f": "90060000 80000000",
    "utrp_f": "2c060000 80000000",
    "agent_adv_ext": "100a0007 07081180 c0000201",
}
# §10 items 10, 11, 13, 14 (written with spaces per byte there)
SPEC_S10 = {
    "utrq_f": "90 06 00 00 80 00 00 00",
    "utrp_v6": "2c 06 00 00 00 00 00 6e",
    "nai": "83 0f 6a 6f 65 40 65 78 61 6d 70 6c 65 2e 63 6f 6d",
    "agent_adv_ext": "10 0a 00 07 07 08 11 80 c0 00 02 01",
    "tunnel_data": "04 04 00 00",
}

RFC2202 = [
    (b"\x0b" * 16, b"Hi There", "9294727a3638bb1c13f48ef8158bfc9d"),
    (b"Jefe", b"what do ya want for nothing?", "750c783e6ab0b503eaa86e310a5db738"),
    (b"\xaa" * 16, b"\xdd" * 50, "56be34521d144c88dbb8c733f0e8b3f6"),
    (bytes(range(1, 26)), b"\xcd" * 50, "697eaf0aca3a3aea3a75164746ffaa79"),
    (b"\x0c" * 16, b"Test With Truncation", "56461ef2342edc00f9bab995690efd4c"),
    (b"\xaa" * 80, b"Test Using Larger Than Block-Size Key - Hash Key First", "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd"),
    (b"\xaa" * 80, b"Test Using Larger Than Block-Size Key and Larger Than One Block-Size Data",
     "6f630fad67cda0ee1fb1f562db3aa53e"),
]

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def h(s):
    return s.replace(" ", "").lower()


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=HERE, check=True, capture_output=True, text=True).stdout


# ---------------------------------------------------------------------------------------------
# Independent minimal decoder (byte-offset based; deliberately not using struct or the generator)
# ---------------------------------------------------------------------------------------------

def u16(b, i):
    return b[i] << 8 | b[i + 1]


def u32(b, i):
    return u16(b, i) << 16 | u16(b, i + 2)


def dq(b, i):
    return "%d.%d.%d.%d" % (b[i], b[i + 1], b[i + 2], b[i + 3])


def decode_exts(b, start):
    out = []
    i = start
    while i < len(b):
        t = b[i]
        if t == 0:
            out.append({"type": 0, "offset": i, "data": ""})
            i += 1
            continue
        if i + 2 > len(b):
            raise ValueError("truncated extension header at %d" % i)
        ln = b[i + 1]
        body = b[i + 2:i + 2 + ln]
        if len(body) != ln:
            raise ValueError("extension overruns message at %d" % i)
        e = {"type": t, "offset": i}
        if t in (32, 33, 34):
            e["spi"] = u32(body, 0)
            e["authenticator"] = body[4:].hex()
        elif t == 131:
            e["nai"] = body.decode("ascii")
        elif t == 144:
            e["F"] = bool(body[2] & 0x80)
            e["R"] = bool(body[2] & 0x40)
            e["encapsulation"] = body[3]
        elif t == 44:
            e["code"] = body[1]
            e["F"] = bool(u16(body, 2) & 0x8000)
            e["keepalive"] = u16(body, 4)
        elif t == 255 and ln >= 1 and body[0] == 1:
            e["subtype"] = 1
            e["home_agent"] = dq(body, 2)
            e["data"] = body.hex()
        elif t < 128 and t != 0:
            raise ValueError("unknown non-skippable extension %d" % t)
        else:
            e["data"] = body.hex()
        out.append(e)
        i += 2 + ln
    return out


def decode(b):
    if b[0] == 1:
        fl = b[1]
        names = "SBDMGrTx"
        return {
            "type": "registration_request",
            "flags": {names[k]: bool(fl & (0x80 >> k)) for k in range(8)},
            "lifetime": u16(b, 2),
            "home_address": dq(b, 4),
            "home_agent": dq(b, 8),
            "care_of_address": dq(b, 12),
            "identification": b[16:24].hex(),
            "extensions": decode_exts(b, 24),
        }
    if b[0] == 3:
        return {
            "type": "registration_reply",
            "code": b[1],
            "lifetime": u16(b, 2),
            "home_address": dq(b, 4),
            "home_agent": dq(b, 8),
            "identification": b[12:20].hex(),
            "extensions": decode_exts(b, 20),
        }
    if b[0] == 4:
        return {"type": "tunnel_data", "next_header": b[1], "payload_length": len(b) - 4}
    raise ValueError("unknown message type %d" % b[0])


def mac(alg, key, data):
    if alg == "hmac-md5":
        return hmac.new(key, data, hashlib.md5).hexdigest()
    if alg == "keyed-md5":
        return hashlib.md5(key + data + key).hexdigest()
    raise ValueError(alg)


# ---------------------------------------------------------------------------------------------

def check_rfc2202():
    for n, (k, d, want) in enumerate(RFC2202, 1):
        check(hmac.new(k, d, hashlib.md5).hexdigest() == want, "RFC 2202 case %d" % n)


def check_vectors():
    out = json.loads(run("gen_vectors.py"))
    with open(os.path.join(HERE, "vectors.json")) as f:
        check(json.load(f) == out, "vectors.json is not the current gen_vectors.py output")
    key = bytes(range(16))
    for name, (hexs, m) in SPEC.items():
        got = out[name]
        check(got["mac"] == m, "%s mac %s != spec %s" % (name, got["mac"], m))
        b = bytes.fromhex(got["hex"])
        check(got["hex"].endswith(got["mac"]), "%s hex does not end with its mac" % name)
        check(mac("hmac-md5", key, b[:-16]) == got["mac"], "%s mac does not recompute" % name)
        if hexs is not None:
            check(got["hex"] == h(hexs), "%s hex differs from spec" % name)
            check(len(b) == SPEC_LEN[name], "%s length %d != %d" % (name, len(b), SPEC_LEN[name]))
    check(out["V1_keyed_md5"] == SPEC_KEYED_MD5, "V1 keyed-MD5")
    for k, v in SPEC_FRAGMENTS.items():
        check(out["fragments"][k] == h(v), "fragment %s: %s != spec %s" % (k, out["fragments"][k], h(v)))
    for k in ("utrq_f", "nai", "agent_adv_ext", "tunnel_data"):
        check(out["fragments"][k] == h(SPEC_S10[k]), "§10 fragment %s" % k)
    check(h(SPEC_S10["utrp_v6"]) in out["V6"]["hex"], "§10 item 11 UTRP bytes not inside V6")


def check_messages(count, seed):
    text = run("gen_messages.py", "--count", str(count), "--seed", str(seed))
    check(text == run("gen_messages.py", "--count", str(count), "--seed", str(seed)),
          "gen_messages not deterministic for seed %d" % seed)
    lines = text.splitlines()
    check(len(lines) == count, "line count %d != %d" % (len(lines), count))
    kinds = Counter()
    ext_types = Counter()
    algs = Counter()
    for n, line in enumerate(lines):
        obj = json.loads(line)
        check(set(obj) == {"hex", "keys", "expected"}, "line %d keys" % n)
        check(obj["hex"] == obj["hex"].lower(), "line %d hex not lowercase" % n)
        b = bytes.fromhex(obj["hex"])
        exp = obj["expected"]
        kinds[exp["type"]] += 1
        try:
            got = decode(b)
        except Exception as e:  # noqa: BLE001
            check(False, "line %d: decode error %s" % (n, e))
            continue
        check(got == exp, "line %d: decoded != expected\n  got %s\n  exp %s" % (n, got, exp))
        if exp["type"] == "tunnel_data":
            check(obj["keys"] == [], "line %d tunnel data with keys" % n)
            continue
        check(len(exp["identification"]) == 16, "line %d identification length" % n)
        exts = exp["extensions"]
        auths = [e for e in exts if e["type"] in (32, 33, 34)]
        check(sum(1 for e in exts if e["type"] == 32) == 1, "line %d: not exactly one MN-HA" % n)
        check(len(auths) == len(obj["keys"]), "line %d: keys/auth count" % n)
        for e, k in zip(auths, obj["keys"]):
            check(e["spi"] == k["spi"] and k["spi"] >= 256, "line %d: spi order/range" % n)
            covered = b[:e["offset"] + 6]
            check(mac(k["algorithm"], bytes.fromhex(k["key"]), covered) == e["authenticator"],
                  "line %d: authenticator of ext %d at %d does not recompute" % (n, e["type"], e["offset"]))
            check(b[e["offset"] + 1] == 20, "line %d auth length" % n)
            algs[k["algorithm"]] += 1
        for e in exts:
            ext_types[e["type"]] += 1
            if exp["type"] == "registration_request":
                check(e["type"] != 44, "line %d: UTRP in request" % n)
            else:
                check(e["type"] != 144, "line %d: UTRQ in reply" % n)
        # MN-HA precedes any MN-FA / FA-HA; only 130 may sit between them
        i32 = next(i for i, e in enumerate(exts) if e["type"] == 32)
        check(all(e["type"] in (130, 33, 34) for e in exts[i32 + 1:]), "line %d: ext after MN-HA" % n)
    return kinds, ext_types, algs


def main():
    check_rfc2202()
    check_vectors()
    kinds, ext_types, algs = check_messages(300, 1)
    print("seed 1, 300 msgs:", dict(kinds))
    print("  extension types:", dict(sorted(ext_types.items())))
    print("  algorithms:", dict(algs))
    for seed in (2, 3, 12345):
        check_messages(2000, seed)
    if failures:
        print("%d failure(s)" % len(failures))
        sys.exit(1)
    print("selfcheck OK")


if __name__ == "__main__":
    main()
