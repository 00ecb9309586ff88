#!/usr/bin/env bash
# Fails when docs/conformance.md names a test that does not exist, so the map cannot drift from the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
list=$(cargo test --workspace --locked -q -- --list 2>/dev/null | sed -n 's/: test$//p')
missing=0
rows=0
while IFS= read -r name; do
  rows=$((rows + 1))
  bare=${name#mip::}          # unit tests: listed without the crate prefix
  bare=${bare#vectors::}      # integration tests: listed without the file prefix
  if ! grep -qxF -- "$bare" <<<"$list"; then
    echo "docs/conformance.md: no test named '$name'" >&2
    missing=1
  fi
done < <(grep -o '`[a-z0-9_:]*case_[0-9]*_[a-z0-9_]*`' docs/conformance.md | tr -d '`')
[ "$rows" -gt 0 ] || { echo "docs/conformance.md: no test names found" >&2; exit 1; }
[ "$missing" = 0 ] && echo "conformance map: $rows test names, all present"
