#!/usr/bin/env bash
# Installs the OpenTelemetry collector the trace lab test uses, idempotently, into
# ${MIP_TOOLS_DIR:-/opt/mip-tools}/otel-venv (a cache dir: nothing goes to /usr/local):
#   rotel 0.0.1a15 (PyPI, Apache-2.0): a lightweight OTLP collector written in Rust; its manylinux wheel ships the
#   binary rotel-agent ("rotel 0.0.1-alpha10"), which receives OTLP/gRPC on :4317 and prints what it receives with
#   --debug-log traces --debug-log-verbosity detailed (e2e/tests/observability_traces.rs reads that).
# The wheel is sha256-checked. A venv already at the right version is kept, so a second run takes well under a
# second. Needs python3 with venv/ensurepip (Debian: python3-venv) and access to PyPI.
# Prints the rotel-agent path last. Usage: scripts/otel-tools.sh [--quiet]   (--quiet: only the path)
set -euo pipefail

DIR="${MIP_TOOLS_DIR:-/opt/mip-tools}"
VENV="$DIR/otel-venv"
quiet=false
[ "${1:-}" = "--quiet" ] && quiet=true
say() { $quiet || echo "otel-tools: $*" >&2; }

ROTEL='rotel==0.0.1a15'
# The only wheel of 0.0.1a15 for CPython 3.11 on x86_64 (Debian 12's python3).
WHEEL='rotel-0.0.1a15-cp311-cp311-manylinux_2_34_x86_64.whl'
WHEEL_SHA256='2f4117e58410c933e0dc042a268ef738dab2e3a5d63b5831209acdac2a6ddcb7'
# rotel's one dependency, pinned.
TYPING_EXTENSIONS='typing_extensions==4.16.0'

agent() { "$VENV/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))'; }

stamp="$VENV/.mip-otel"
want="$(python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])') $ROTEL $WHEEL_SHA256 $TYPING_EXTENSIONS"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$(agent 2>/dev/null)" ]; then
  say "rotel present ($VENV)"
else
  say "creating $VENV with $ROTEL"
  rm -rf "$VENV"
  mkdir -p "$DIR"
  if ! python3 -m venv "$VENV"; then
    echo "otel-tools: python3 -m venv failed (on Debian: apt-get install python3-venv)" >&2
    exit 1
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  "$VENV/bin/pip" download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$ROTEL"
  if [ ! -f "$tmp/$WHEEL" ] || [ "$(sha256sum "$tmp/$WHEEL" | cut -d' ' -f1)" != "$WHEEL_SHA256" ]; then
    echo "otel-tools: $WHEEL: missing or sha256 mismatch (expected $WHEEL_SHA256); got: $(ls "$tmp")" >&2
    exit 1
  fi
  "$VENV/bin/pip" install --quiet --no-deps --disable-pip-version-check "$tmp/$WHEEL" "$TYPING_EXTENSIONS"
  rm -rf "$tmp"
  trap - EXIT
  printf '%s\n' "$want" > "$stamp"
fi

RA="$(agent)"
[ -x "$RA" ] || { echo "otel-tools: $RA is not executable" >&2; exit 1; }
say "$("$RA" --version)"
echo "$RA"
