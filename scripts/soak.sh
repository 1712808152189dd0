#!/usr/bin/env bash
# Soak: a release Mast under half of its measured maximum put throughput for an hour, with
# watchers matching every event and leases kept alive throughout; RSS, CPU and p99 sampled
# every window. Writes benchmarks/soak.md and benchmarks/soak.svg (mast-bench soak-report)
# and fails when RSS grew 10 % or more after the warm-up or anything failed.
#
#   bash scripts/soak.sh                          # 60 minutes
#   SOAK_MINUTES=5 SOAK_WARMUP_MIN=1 bash scripts/soak.sh   # a short check of the script
#
# Environment:
#   SOAK_MINUTES      length of the soak (default 60)
#   SOAK_WINDOW_S     seconds per window (default 60): each window is one `mast-bench watch`
#                     run at the soak rate, then a sample of the server and a compaction
#   SOAK_WARMUP_MIN   minutes before RSS growth is measured (default 5)
#   SOAK_WATCHERS     watchers on the written prefix, each getting every event (default 10)
#   SOAK_LEASES       leases kept alive (default 1000)
#   SOAK_DIR          results and data (default target/soak; a real disk, not tmpfs)
#   SOAK_OUT          the Markdown section (default benchmarks/soak.md)
#   SOAK_SKIP_BUILD=1 use the release binaries already built
#
# The server and the lease run are stopped by their PIDs when the script exits, however it
# exits. All traffic goes to 127.0.0.1.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
minutes="${SOAK_MINUTES:-60}"
window="${SOAK_WINDOW_S:-60}"
warmup="${SOAK_WARMUP_MIN:-5}"
watchers="${SOAK_WATCHERS:-10}"
leases="${SOAK_LEASES:-1000}"
dir="${SOAK_DIR:-$repo/target/soak}"
out="${SOAK_OUT:-$repo/benchmarks/soak.md}"
mast="$repo/target/release/mast"
bench="$repo/target/release/mast-bench"
log() { printf '[soak %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

for tool in jq etcdctl curl; do
  command -v "$tool" >/dev/null || { log "needs $tool (apt-get install jq etcd-client curl)"; exit 2; }
done
if [ -z "${SOAK_SKIP_BUILD:-}" ]; then
  log "building release mast and mast-bench"
  cargo build --release --bin mast --bin mast-bench >&2
fi

rm -rf "$dir"
mkdir -p "$dir/results"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
ep="127.0.0.1:$port"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

"$mast" serve --data-dir "$dir/data" --listen-client-urls "http://$ep" \
  --advertise-client-urls "http://$ep" --nacos-addr off >"$dir/server.log" 2>&1 &
server=$!
pids+=("$server")
"$bench" wait --endpoints "$ep" --timeout 30s >/dev/null
log "server pid $server on $ep"

cpu_s() { awk '{ printf "%.2f", ($14 + $15) / 100 }' "/proc/$server/stat"; }
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$server/status"; }
# The allocator's live heap from /metrics (KiB), or null when the server exports none.
heap_kb() {
  curl -fsS "http://$ep/metrics" | awk '$1 == "mast_allocator_allocated_bytes" { printf "%d", $2 / 1024; found = 1 }
    END { if (!found) print "null" }'
}
compact() {
  local rev
  rev=$(etcdctl --endpoints "$ep" get soak-probe -w json | jq '.header.revision')
  etcdctl --endpoints "$ep" compact "$rev" >/dev/null
}

# The maximum under the soak's own mix: the same watchers, puts as fast as 256 in flight
# allow, while the leases are kept alive.
"$bench" lease-keepalive --endpoints "$ep" --leases "$leases" --ttl 10 --conns 2 \
  --duration "$((minutes * 60 + 120))s" --json >"$dir/results/lease.json" 2>"$dir/lease.err" &
lease=$!
pids+=("$lease")
log "measuring the maximum put throughput with $watchers watchers and $leases leases"
"$bench" watch --endpoints "$ep" --watchers "$watchers" --streams 10 --put-rate 1000000 \
  --total 300000 --clients 256 --conns 4 --json >"$dir/results/max.json"
max=$(jq '.ops_per_sec' "$dir/results/max.json")
rate=$(jq -n --argjson m "$max" '($m / 2) | floor')
log "maximum $max puts/s; soaking at $rate puts/s for $minutes min"
compact

commands="mast serve --data-dir $dir/data --listen-client-urls http://$ep --nacos-addr off
mast-bench lease-keepalive --leases $leases --ttl 10 --conns 2 --duration <soak + 2 min>
mast-bench watch --watchers $watchers --streams 10 --put-rate 1000000 --total 300000 --clients 256 --conns 4   # the maximum
# then every ${window} s, for $minutes minutes:
mast-bench watch --watchers $watchers --streams 10 --put-rate $rate --clients 256 --conns 4 --duration ${window}s
etcdctl compact <current revision>"
jq -n --arg when "$(date -u +%Y-%m-%d), $(nproc) cores, commit $(git describe --always --dirty)" \
  --arg commands "$commands" '{when: $when, commands: $commands}' >"$dir/results/meta.json"

start=$(date +%s)
n=0
while [ $(( $(date +%s) - start )) -lt $((minutes * 60)) ] && [ "$n" -lt 10000 ]; do
  name=$(printf 'window-%03d' "$n")
  "$bench" watch --endpoints "$ep" --watchers "$watchers" --streams 10 --put-rate "$rate" \
    --clients 256 --conns 4 --duration "${window}s" --drain-timeout 10s --json \
    >"$dir/results/$name.json"
  kill -0 "$server" 2>/dev/null || { log "the server exited; see $dir/server.log"; exit 1; }
  jq -n --argjson t "$(( $(date +%s) - start ))" --argjson rss "$(rss_kb)" \
    --argjson cpu "$(cpu_s)" --argjson heap "$(heap_kb)" \
    '{t_s: $t, rss_kb: $rss, cpu_s: $cpu, heap_kb: $heap}' >"$dir/results/$name.proc.json"
  compact
  log "$name: $(jq -r '"\(.ops_per_sec | floor) puts/s, p99 \(.latency_ms.p99_ms) ms, errors \(.errors), missing \(.watch.missing)"' "$dir/results/$name.json"), RSS $(( $(rss_kb) / 1024 )) MiB, heap $(jq '.heap_kb / 1024 | floor' "$dir/results/$name.proc.json") MiB"
  n=$((n + 1))
done

log "waiting for the lease run to end"
wait "$lease" || log "lease-keepalive exited non-zero: $(tail -3 "$dir/lease.err")"
status=0
"$bench" soak-report --results "$dir/results" --out "$out" --warmup-min "$warmup" || status=$?
log "wrote $out"
# Replace the included copy in BENCHMARKS.md (see `mast-bench report --include`).
if [ "$out" = "$repo/benchmarks/soak.md" ]; then
  python3 scripts/update-include.py BENCHMARKS.md benchmarks/soak.md
fi
exit "$status"
