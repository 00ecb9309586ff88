#!/usr/bin/env bash
# Installs what the tests and the demo need on a fresh Debian 12 machine, idempotently: only what is missing
# is installed. Run as root (CI and the lab need root anyway).
set -euo pipefail

need_apt=()
# has_pkg PKG: true when dpkg has PKG fully installed (for packages that ship no command of their own).
has_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }
command -v tshark >/dev/null 2>&1 || need_apt+=(tshark)
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
command -v git >/dev/null 2>&1 || need_apt+=(git)
# protoc for mip-proto (tonic-prost-build generates the gRPC code at build time and bundles no protoc).
command -v protoc >/dev/null 2>&1 || need_apt+=(protobuf-compiler)
# The namespace lab (e2e/, docs/lab.md): strongSwan with kernel-libipsec as VPN client and gateway,
# nftables masquerade as NAT, captures, the probe/transfer helpers, and openssl for the replicas' mTLS
# certificates (Replicas mode).
for pkg in strongswan-charon strongswan-swanctl libcharon-extra-plugins libstrongswan-standard-plugins \
           nftables iproute2 tcpdump socat netcat-openbsd iputils-ping openssl; do
  has_pkg "$pkg" || need_apt+=("$pkg")
done

# python3 venv for scripts/k8s-tools.sh (Debian's system python needs python3-venv for ensurepip).
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need_apt+=(python3-venv)

if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark asks whether non-root users may capture; answer no without a prompt (lab README §3).
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; this project needs the machine's Rust toolchain (1.95)" >&2
  exit 1
fi

# Kubernetes tooling (helm 3.19.0, kubectl 1.34.5, a venv with kubernetes-validate and kmock) in
# ${MIP_TOOLS_DIR:-/opt/mip-tools}; needed by the operator's kmock test and scripts/k8s-checks.sh.
"$(dirname "$0")/k8s-tools.sh"
# The OpenTelemetry collector of the trace lab test (rotel, PyPI) in ${MIP_TOOLS_DIR:-/opt/mip-tools}/otel-venv.
"$(dirname "$0")/otel-tools.sh" --quiet > /dev/null

echo "setup: ok ($(tshark --version 2>/dev/null | head -n1); $(python3 --version); $(cargo --version))"
