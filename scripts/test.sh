#!/usr/bin/env bash
# Runs every test: the README's test command. Installs what is missing first (scripts/setup.sh).
#   FUZZ_SECONDS=N   seconds per fuzz target (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s ===\n' "$*"; }

step setup
scripts/setup.sh

step "format"
cargo fmt --all -- --check

step "clippy (every target: libraries, binaries, tests, benchmarks, examples)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "docs (broken links are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked -q

step "tests (unit, vectors, property, Python and tshark cross-checks)"
cargo test --workspace --locked

step "Kubernetes: CRDs generated, chart lint/render, manifests and samples validated, deploy/ up to date"
scripts/k8s-checks.sh

step "conformance map matches the tests"
scripts/gen-conformance.py --check

step "fuzz smoke"
scripts/fuzz-smoke.sh

echo
echo "all tests passed"
