#!/usr/bin/env bash
# The main job: the lab demo. On a fresh Debian 12 machine, as root:
#   1. scripts/setup.sh installs what is missing (strongSwan, nftables, tcpdump, tshark, ...);
#   2. cargo build --release --workspace --bins builds the four daemons, mipctl and the lab driver (e2e);
#   3. a short check: mipctl decodes the protocol's reference vectors (spec §11.2) and verifies every
#      authenticator;
#   4. the lab demo (`e2e demo`, docs/lab.md): network namespaces with the real daemons (mip-ha, mip-proxy,
#      mip-fa x2, mip-mn) and unmodified strongSwan as VPN client and gateway; a 1 ms UDP stream MN -> CN runs
#      through the VPN inside the Mobile IP tunnel while the MN roams A -> C1 -> B -> D (routable, behind NAT 1,
#      through foreign agent 1, through foreign agent 2 behind NAT 3). One line per hand-off with its
#      interruption, then a summary; the lab is torn down at the end, on Ctrl-C and on errors.
# The demo itself takes about 10 s after the build. Extra arguments go to `e2e demo` (e.g. --mode one-box).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "demo: run as root (the lab creates network namespaces)" >&2
  exit 1
fi

scripts/setup.sh
echo "== build =="
cargo build --release --locked --workspace --bins

echo
echo "== reference vectors: decode and authenticate (mipctl) =="
MIPCTL=target/release/mipctl
KEY=000102030405060708090a0b0c0d0e0f
python3 mip/tests/crosscheck/gen_vectors.py > target/vectors.json
ok=0
total=0
for v in V1 V2 V2b V3 V4 V5 V6 V7 V8; do
  hex=$(python3 -c "import json; print(json.load(open('target/vectors.json'))['$v']['hex'])")
  total=$((total + 1))
  if "$MIPCTL" decode --key "$KEY" --spi 0x100 "$hex" | python3 -c '
import json, sys
m = json.load(sys.stdin)
auth = [e for e in m["extensions"] if e["type"] == 32]
sys.exit(0 if auth and all(e.get("valid") for e in auth) else 1)'; then
    ok=$((ok + 1))
  else
    echo "vector $v: MN-HA authenticator NOT valid" >&2
  fi
done
echo "$ok of $total vectors decoded with a valid MN-HA authenticator"
[ "$ok" = "$total" ]

echo
echo "== lab demo: MN roams A -> C1 -> B -> D while a 1 ms stream MN -> CN runs through the VPN =="
start=$(date +%s)
target/release/e2e demo "$@"
echo "demo: done in $(( $(date +%s) - start )) s (after the build)"
