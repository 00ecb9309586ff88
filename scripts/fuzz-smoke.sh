#!/usr/bin/env bash
# Short fuzzing pass over every mip parser (cargo-fuzz targets in mip/fuzz).
#
#   scripts/fuzz-smoke.sh                 # every target, FUZZ_SECONDS (default 20) each
#   FUZZ_SECONDS=300 scripts/fuzz-smoke.sh registration extensions
#
# Builds all targets once, then runs each for FUZZ_SECONDS with mip/fuzz/corpus/<target> (kept between runs,
# git-ignored) as the working corpus and mip/fuzz/seeds/<target> (committed spec vectors) as an extra input
# directory. Exits non-zero if any target crashes, fails an assertion, leaks, times out or hits the RSS limit;
# the reproducer is in mip/fuzz/artifacts/<target>/ and the full log in target/fuzz-smoke/<target>.log.
# Reproduce one: RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir mip/fuzz <target> mip/fuzz/artifacts/<target>/crash-…
#
# Environment: FUZZ_SECONDS (per target, default 20), FUZZ_MAX_LEN (default 2048 bytes), FUZZ_SANITIZER
# (default address; "none" runs faster). Targets run one after another: one process fits a 2-core machine.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(git -C "$here" rev-parse --show-toplevel 2>/dev/null || (cd "$here/.." && pwd))"
cd "$root"

seconds="${FUZZ_SECONDS:-20}"
max_len="${FUZZ_MAX_LEN:-2048}"
sanitizer="${FUZZ_SANITIZER:-address}"
fuzz_dir="mip/fuzz"
all_targets=(registration extensions advertisement tunnel_data ipv4_icmp)
if [[ $# -gt 0 ]]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

# The fuzz targets need nightly-only rustc flags; RUSTC_BOOTSTRAP lets the stable toolchain accept them.
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz-smoke: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked || cargo install cargo-fuzz
fi

logs="target/fuzz-smoke"
mkdir -p "$logs"

start=$SECONDS
echo "fuzz-smoke: building ${#targets[@]} target(s) (sanitizer: $sanitizer)"
build_args=(--fuzz-dir "$fuzz_dir" --sanitizer "$sanitizer")
if [[ $# -eq 0 ]]; then
    cargo fuzz build "${build_args[@]}"
else
    for t in "${targets[@]}"; do cargo fuzz build "${build_args[@]}" "$t"; done
fi
echo "fuzz-smoke: build took $((SECONDS - start)) s; fuzzing ${seconds} s per target"

failed=()
for t in "${targets[@]}"; do
    corpus="$fuzz_dir/corpus/$t"
    seeds="$fuzz_dir/seeds/$t"
    mkdir -p "$corpus" "$fuzz_dir/artifacts/$t"
    corpora=("$corpus")
    [[ -d "$seeds" ]] && corpora+=("$seeds")
    log="$logs/$t.log"
    rc=0
    cargo fuzz run "${build_args[@]}" "$t" "${corpora[@]}" -- \
        -max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 -artifact_prefix="$fuzz_dir/artifacts/$t/" >"$log" 2>&1 || rc=$?
    execs="$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)"
    rss="$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -n1)"
    cov="$(grep -oE 'cov: [0-9]+' "$log" | tail -n1 | cut -d' ' -f2)"
    units="$(find "$corpus" -type f | wc -l)"
    if [[ $rc -eq 0 ]]; then
        printf 'fuzz-smoke: %-14s ok     %10s execs  %8s exec/s  %4ss  cov %-5s corpus %-5s rss %s MB\n' \
            "$t" "${execs:-?}" "${rate:-?}" "$seconds" "${cov:-?}" "$units" "${rss:-?}"
    else
        failed+=("$t")
        printf 'fuzz-smoke: %-14s FAILED (exit %s) after %s execs; log %s\n' "$t" "$rc" "${execs:-?}" "$log"
        grep -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' "$log" | head -n 8 | sed 's/^/    /' || true
    fi
done

echo "fuzz-smoke: total $((SECONDS - start)) s"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzz-smoke: FAILED: ${failed[*]}" >&2
    exit 1
fi
