#!/usr/bin/env bash
# Where a three-member Mast cluster spends its CPU under the put load of
# scripts/bench-cluster.sh: starts 3 members (release build) on loopback, runs
# `mast-bench put` with 100 clients over all endpoints, and records the leader and one
# follower with `perf record` for 8 s. Prints perf's per-thread and per-symbol tables.
#
#   bash scripts/profile-cluster.sh          # needs perf; builds target/release first
#   PROFILE_SKIP_BUILD=1 bash scripts/profile-cluster.sh
#
# Every process it starts is stopped by its PID on exit.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
bin="$repo/target/release"
command -v perf >/dev/null || { echo "perf is needed (Debian: linux-perf)" >&2; exit 1; }
[ -n "${PROFILE_SKIP_BUILD:-}" ] || cargo build --release --bin mast --bin mast-bench --manifest-path "$repo/Cargo.toml"
work="$(mktemp -d)"
base="${PROFILE_PORT_BASE:-24700}"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
initial=""
for i in 0 1 2; do initial+="${initial:+,}m$i=http://127.0.0.1:$((base + 10 + i))"; done
for i in 0 1 2; do
  "$bin/mast" serve --name "m$i" --data-dir "$work/d$i" \
    --listen-client-urls "http://127.0.0.1:$((base + i))" --advertise-client-urls "http://127.0.0.1:$((base + i))" \
    --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
    --initial-cluster "$initial" --initial-cluster-token profile > "$work/m$i.log" 2>&1 &
  pids+=($!)
done
endpoints="127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))"
for i in 0 1 2; do "$bin/mast-bench" wait --endpoints "127.0.0.1:$((base + i))" --timeout 30s --json > /dev/null; done
# The leader's index, from each member's own /metrics.
leader=""
for i in 0 1 2; do
  if curl -s "127.0.0.1:$((base + i))/metrics" | grep -q '^etcd_server_is_leader 1'; then leader=$i; fi
done
[ -n "$leader" ] || { echo "no leader" >&2; exit 1; }
follower=$(( (leader + 1) % 3 ))
echo "leader m$leader (pid ${pids[$leader]}), follower m$follower (pid ${pids[$follower]})"
"$bin/mast-bench" put --clients 100 --conns 10 --val-size 256 --endpoints "$endpoints" --duration 12s &
bench=$!
pids+=("$bench")
# Record 8 s of the 12 s run (perf's window is its `sleep`).
perf record -F 397 -o "$work/leader.data" -p "${pids[$leader]}" -- sleep 8 > /dev/null 2>&1 &
rec=$!
perf record -F 397 -o "$work/follower.data" -p "${pids[$follower]}" -- sleep 8 > /dev/null 2>&1
wait "$rec"
wait "$bench"
for who in leader follower; do
  echo "== $who: CPU by thread"
  perf report -i "$work/$who.data" --sort comm --stdio 2>/dev/null | grep '%' | head -8
  echo "== $who: CPU by symbol"
  perf report -i "$work/$who.data" --sort dso,sym --stdio 2>/dev/null | grep '%' | head -25
done
