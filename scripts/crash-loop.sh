#!/usr/bin/env bash
# Crash loop: 100 `kill -9` trials of a release Mast under a mixed load (puts, txns, leases
# with keys, deletes, /mast/v1 registrations and config publishes), with a ledger of every
# acknowledged write checked after each restart and, at the end, the whole history replayed
# into a fresh Mast and compared by HashKV (crates/mast-conformance/tests/crash_loop.rs; CI
# runs the same test with 3 trials).
#
#   bash scripts/crash-loop.sh                  # 100 trials, about 6 minutes here
#   CRASH_TRIALS=10 bash scripts/crash-loop.sh  # fewer
#
# Writes benchmarks/crash-loop.md (one row per trial and the summary) unless CRASH_OUT says
# otherwise. Exits non-zero, without writing, when any trial finds a lost write.
set -euo pipefail

cd "$(dirname "$0")/.."
TRIALS="${CRASH_TRIALS:-100}"
OUT="${CRASH_OUT:-benchmarks/crash-loop.md}"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT

cargo build --release --bin mast
MAST_BIN="$PWD/target/release/mast" MAST_CRASH_TRIALS="$TRIALS" \
  cargo test -p mast-conformance --test crash_loop -- --nocapture 2>&1 | tee "$LOG" | grep -E '^CRASH-LOOP|^test |panicked' || true
if ! grep -q '^test mast_keeps_every_acknowledged_write_across_kill_9_loops ... ok' "$LOG"; then
  grep -A20 panicked "$LOG" >&2 || true
  echo "crash loop FAILED; see the output above" >&2
  exit 1
fi

{
  echo "## Crash loop"
  echo
  echo "\`bash scripts/crash-loop.sh\` on $(date -u +%Y-%m-%d), $(nproc) cores, release build,"
  echo "commit $(git rev-parse --short HEAD). Each trial runs the mixed load for the time shown,"
  echo "then \`kill -9\`, restarts on the same data directory and checks every acknowledged write"
  echo "so far (at the revision its answer reported). At the end the whole history is replayed"
  echo "into a fresh Mast: equal HashKV means the rows on disk are exactly what their history says."
  echo
  grep '^CRASH-LOOP summary' "$LOG" | sed 's/^CRASH-LOOP summary /**Summary:** /'
  echo
  echo "| trial | load ms | acknowledged (by kind) | ledger total | revision | restart ms |"
  echo "|---|---|---|---|---|---|"
  grep '^CRASH-LOOP trial=' "$LOG" | sed -E \
    's/^CRASH-LOOP trial=([0-9]+) load_ms=([0-9]+) acked=(\{[^}]*\}) ledger=([0-9]+) revision=([0-9]+) restart_ms=([0-9]+)$/| \1 | \2 | `\3` | \4 | \5 | \6 |/'
} > "$OUT"
echo "wrote $OUT"
