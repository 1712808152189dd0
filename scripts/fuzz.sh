#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for FUZZ_SECONDS each (default 120),
# growing the committed corpus in fuzz/corpus/<target>/ and minimizing it afterwards, and
# writes the figures to benchmarks/fuzz.md. An input that makes a target fail is copied to
# fuzz/regressions/<target>/, where `cargo test -p mast --test fuzz_corpus` replays it on
# the stable toolchain until it is fixed; the script then exits 1.
#
#   bash scripts/fuzz.sh                          # every target, 120 s each
#   FUZZ_SECONDS=600 FUZZ_TARGETS="server" bash scripts/fuzz.sh
#
# Needs a nightly toolchain (libFuzzer's sanitizer coverage) and cargo-fuzz (installed here
# from crates.io when missing). Builds with debug assertions (`-a`), so an integer overflow
# is a finding too. Everything a target starts listens on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
secs=${FUZZ_SECONDS:-120}
targets=${FUZZ_TARGETS:-"entry_codec apply bolt snapshot_chunks authority server"}

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz: needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 2
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

cd fuzz
mkdir -p target
echo "fuzz: building the targets (nightly, release with debug assertions)"
cargo +nightly fuzz build -a >target/build.log 2>&1 || {
    tail -30 target/build.log >&2
    exit 2
}

rows=()
failed=0
for t in $targets; do
    mkdir -p "corpus/$t" "artifacts/$t"
    rm -f "artifacts/$t"/*
    log="target/fuzz-$t.log"
    before=$(find "corpus/$t" -type f | wc -l)
    echo "fuzz: $t for ${secs}s (corpus: $before inputs)"
    status=0
    cargo +nightly fuzz run -a "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -print_final_stats=1 \
        >"$log" 2>&1 || status=$?
    crashes=$(find "artifacts/$t" -type f | wc -l)
    if [ "$status" -ne 0 ] || [ "$crashes" -gt 0 ]; then
        failed=1
        mkdir -p "regressions/$t"
        cp "artifacts/$t"/* "regressions/$t/" 2>/dev/null || true
        echo "fuzz: $t FAILED (exit $status); inputs in fuzz/regressions/$t, log in fuzz/$log" >&2
        grep -E "panicked|ERROR|SUMMARY" "$log" | head -5 >&2 || true
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    ft=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | cut -d' ' -f2)
    # Keep the committed corpus small: only inputs that add coverage.
    cargo +nightly fuzz cmin -a "$t" "corpus/$t" >"target/cmin-$t.log" 2>&1 || true
    files=$(find "corpus/$t" -type f | wc -l)
    bytes=$(du -sb "corpus/$t" | cut -f1)
    rows+=("| \`$t\` | $secs | ${runs:-?} | ${rate:-?} | ${cov:-?} | ${ft:-?} | $before → $files ($bytes bytes) | ${rss:-?} | $crashes |")
done

cd "$root"
# Rows of targets not run this time are kept from the last results.
kept=()
if [ -f benchmarks/fuzz.md ]; then
    while IFS= read -r line; do
        t=$(printf '%s' "$line" | sed -n 's/^| `\([a-z_]*\)` |.*/\1/p')
        if [ -n "$t" ] && ! printf ' %s ' "$targets" | grep -q " $t "; then
            kept+=("$line")
        fi
    done <benchmarks/fuzz.md
fi
{
    echo "## Fuzzing"
    echo
    echo "\`bash scripts/fuzz.sh\` (FUZZ_SECONDS per target as shown; last run $(date -u +%Y-%m-%d),"
    echo "commit $(git rev-parse --short HEAD)), $(nproc) cores, $(rustup run nightly rustc --version)."
    echo "libFuzzer through cargo-fuzz, release build with debug assertions. Coverage is"
    echo "libFuzzer's count of covered edges (cov) and features (ft); the corpus is minimized"
    echo "(\`cargo fuzz cmin\`) after each run and committed, and"
    echo "\`cargo test -p mast --test fuzz_corpus\` replays it with every regression input."
    echo
    echo "| target | seconds | runs | execs/s | cov | ft | corpus (inputs) | peak RSS MB | crashes |"
    echo "|---|---:|---:|---:|---:|---:|---|---:|---:|"
    for r in "${kept[@]}" "${rows[@]}"; do echo "$r"; done
} >benchmarks/fuzz.md
cat benchmarks/fuzz.md
exit "$failed"
