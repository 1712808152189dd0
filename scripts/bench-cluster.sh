#!/usr/bin/env bash
# Benchmarks a 3-member Mast cluster against a 3-member etcd 3.4 cluster on this machine, in one
# run, with the same tool, and writes benchmarks/cluster.md (BENCHMARKS.md includes it).
#
#   bash scripts/bench-cluster.sh                     # full run (about 10 minutes)
#   BENCH_SCALE=tiny bash scripts/bench-cluster.sh    # a minute or two: checks the script itself
#
# What it does:
#   1. builds `mast` and `mast-bench` in release mode (BENCH_SKIP_BUILD=1 skips it);
#   2. starts three etcd members and three Mast members on loopback, each on its own data
#      directory on the same disk, with each server's default timing (etcd: heartbeat 100 ms,
#      election timeout 1000 ms; Mast: the same flags and values);
#   3. runs put (100 clients over 10 connections), linearizable range and serializable range
#      against each cluster, clients spread over the three members' endpoints, alternating
#      which cluster goes first, recording the three members' CPU seconds and the Raft term
#      before and after (a term that moved under load is a spurious election);
#   4. measures failover ROUNDS times per cluster: `mast-bench failover` kills the leader with
#      `kill -9` under a write load on the other members and reports the time to the first
#      acknowledged write sent after the kill; the killed member is restarted on its data
#      directory before the next round;
#   5. writes benchmarks/cluster.md.
#
# Every process this script starts is stopped by its PID when it exits. Traffic goes to
# 127.0.0.1 only.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
scale="${BENCH_SCALE:-full}"
bench_dir="${BENCH_DIR:-$repo/target/bench-cluster}"
out_md="${BENCH_OUT:-$repo/benchmarks/cluster.md}"
mast_bin="$repo/target/release/mast"
bench_bin="$repo/target/release/mast-bench"

case "$scale" in
  full) dur=10s rounds=5 ;;
  small) dur=3s rounds=3 ;;
  tiny) dur=1s rounds=1 ;;
  *) echo "BENCH_SCALE=$scale: expected full, small or tiny" >&2; exit 1 ;;
esac

log() { printf '[bench-cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --bin mast --bin mast-bench"
  cargo build --release --bin mast --bin mast-bench >&2
fi
[ -x /usr/bin/etcd ] || { log "etcd missing: bash scripts/install-test-deps.sh"; exit 1; }
command -v jq >/dev/null || { log "jq missing: apt-get install jq"; exit 1; }

mkdir -p "$bench_dir"
work="$(mktemp -d "$bench_dir/run.XXXXXX")"
declare -A pid
all_pids=()
cleanup() {
  local p
  for p in "${all_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${all_pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"/data-* 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

declare -A cport pport
for kind in etcd mast; do
  for i in 0 1 2; do
    cport[$kind$i]="$(free_port)"
    pport[$kind$i]="$(free_port)"
  done
done

initial() { # KIND
  local i out=()
  for i in 0 1 2; do out+=("m$i=http://127.0.0.1:${pport[$1$i]}"); done
  (IFS=,; echo "${out[*]}")
}

endpoints() { # KIND
  echo "127.0.0.1:${cport[${1}0]},127.0.0.1:${cport[${1}1]},127.0.0.1:${cport[${1}2]}"
}

start_member() { # KIND I
  local kind="$1" i="$2" bin
  if [ "$kind" = etcd ]; then bin=/usr/bin/etcd; else bin="$mast_bin serve"; fi
  # shellcheck disable=SC2086 # $bin is a command and its first argument
  $bin --name "m$i" --data-dir "$work/data-$kind-$i" \
    --listen-client-urls "http://127.0.0.1:${cport[$kind$i]}" \
    --advertise-client-urls "http://127.0.0.1:${cport[$kind$i]}" \
    --listen-peer-urls "http://127.0.0.1:${pport[$kind$i]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${pport[$kind$i]}" \
    --initial-cluster "$(initial "$kind")" --initial-cluster-token "bench-$kind" \
    >>"$work/$kind-$i.log" 2>&1 &
  pid[$kind$i]=$!
  all_pids+=("$!")
}

wait_member() { # KIND I
  "$bench_bin" wait --endpoints "127.0.0.1:${cport[$1$2]}" --timeout 60s --json >/dev/null
}

cpu_seconds() { # KIND: the three members' user + system seconds
  local i total=0 s
  for i in 0 1 2; do
    s="$(awk -v tck="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / tck }' "/proc/${pid[$1$i]}/stat")"
    total="$(echo "$total + $s" | bc -l)"
  done
  echo "$total"
}

term() { # KIND: the highest Raft term any member reports
  local i best=0 t
  for i in 0 1 2; do
    t="$(ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:${cport[$1$i]}" endpoint status -w json 2>/dev/null \
      | jq -r '.[0].Status.header.raft_term // 0')" || t=0
    [ "$t" -gt "$best" ] && best="$t"
  done
  echo "$best"
}

for kind in etcd mast; do
  log "starting 3 $kind members"
  for i in 0 1 2; do start_member "$kind" "$i"; done
done
for kind in etcd mast; do
  for i in 0 1 2; do wait_member "$kind" "$i"; done
done

results="$work/results.jsonl"
: >"$results"
workloads=(
  "put-100c|put --clients 100 --conns 10 --val-size 256"
  "range-l-100c|range --clients 100 --conns 10 --consistency l --val-size 256"
  "range-s-100c|range --clients 100 --conns 10 --consistency s --val-size 256"
)
n=0
for w in "${workloads[@]}"; do
  name="${w%%|*}" flags="${w#*|}"
  if [ $((n % 2)) -eq 0 ]; then order=(etcd mast); else order=(mast etcd); fi
  n=$((n + 1))
  for kind in "${order[@]}"; do
    log "$name on $kind"
    t0="$(term "$kind")" c0="$(cpu_seconds "$kind")"
    # shellcheck disable=SC2086 # flags are words
    "$bench_bin" $flags --endpoints "$(endpoints "$kind")" --duration "$dur" --json >"$work/out.json"
    c1="$(cpu_seconds "$kind")" t1="$(term "$kind")"
    jq -c --arg k "$kind" --arg n "$name" --arg cpu "$(echo "$c1 - $c0" | bc -l)" \
      --arg t0 "$t0" --arg t1 "$t1" \
      '{kind: $k, name: $n, ops: .ops_per_sec, p50: .latency_ms.p50_ms, p99: .latency_ms.p99_ms, errors: .errors, total: .ops, cpu: ($cpu|tonumber), term_before: ($t0|tonumber), term_after: ($t1|tonumber)}' \
      "$work/out.json" >>"$results"
  done
done

failovers="$work/failover.jsonl"
: >"$failovers"
for r in $(seq 1 "$rounds"); do
  for kind in etcd mast; do
    log "failover round $r on $kind"
    pids="${pid[${kind}0]},${pid[${kind}1]},${pid[${kind}2]}"
    "$bench_bin" failover --endpoints "$(endpoints "$kind")" --pids "$pids" --json >"$work/fo.json"
    killed="$(jq -r '.extra.killed' "$work/fo.json")"
    jq -c --arg k "$kind" '{kind: $k, ms: .extra.failover_ms}' "$work/fo.json" >>"$failovers"
    wait "${pid[$kind$killed]}" 2>/dev/null || true
    start_member "$kind" "$killed"
    wait_member "$kind" "$killed"
    # Let the restarted member catch up and the cluster settle before the next kill.
    sleep 2
  done
done

median() { sort -n | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
fmt() { printf '%.*f' "$1" "$2"; }

{
  echo "## 3-member clusters: Mast vs etcd"
  echo
  echo "Three Mast members and three etcd 3.4 members, all on this machine (2 cores) on loopback,"
  echo "each member with its own data directory on the same disk, driven by \`mast-bench\` with"
  echo "its clients spread over the three members' endpoints. Generated by"
  echo "\`scripts/bench-cluster.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') (scale \`$scale\`, $dur per"
  echo "workload, git $(git rev-parse --short HEAD))."
  echo
  echo "| workload | etcd ops/s | Mast ops/s | ratio | etcd p99 ms | Mast p99 ms | ratio p99 | etcd CPU µs/op | Mast CPU µs/op | errors etcd / Mast | term moved under load (etcd / Mast) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for w in "${workloads[@]}"; do
    name="${w%%|*}"
    e="$(jq -c --arg n "$name" 'select(.kind == "etcd" and .name == $n)' "$results")"
    m="$(jq -c --arg n "$name" 'select(.kind == "mast" and .name == $n)' "$results")"
    eo="$(jq -r .ops <<<"$e")" mo="$(jq -r .ops <<<"$m")"
    ep="$(jq -r .p99 <<<"$e")" mp="$(jq -r .p99 <<<"$m")"
    ecpu="$(jq -r '.cpu / (.total + 0.000001) * 1000000' <<<"$e")"
    mcpu="$(jq -r '.cpu / (.total + 0.000001) * 1000000' <<<"$m")"
    emoved="$(jq -r 'if .term_after > .term_before then "yes" else "no" end' <<<"$e")"
    mmoved="$(jq -r 'if .term_after > .term_before then "yes" else "no" end' <<<"$m")"
    echo "| $name | $(fmt 0 "$eo") | $(fmt 0 "$mo") | $(fmt 2 "$(echo "$mo / $eo" | bc -l)")× | $(fmt 2 "$ep") | $(fmt 2 "$mp") | $(fmt 2 "$(echo "$mp / $ep" | bc -l)")× | $(fmt 0 "$ecpu") | $(fmt 0 "$mcpu") | $(jq -r .errors <<<"$e") / $(jq -r .errors <<<"$m") | $emoved / $mmoved |"
  done
  echo
  ef="$(jq -r 'select(.kind == "etcd") | .ms' "$failovers" | tr '\n' ' ')"
  mf="$(jq -r 'select(.kind == "mast") | .ms' "$failovers" | tr '\n' ' ')"
  em="$(tr ' ' '\n' <<<"$ef" | grep . | median)"
  mm="$(tr ' ' '\n' <<<"$mf" | grep . | median)"
  echo "Failover: \`kill -9\` of the leader under a write load on the other two members, to the first"
  echo "acknowledged write sent after the kill, $rounds rounds each (the killed member restarted"
  echo "between rounds)."
  echo
  echo "| | median ms | every round (ms) |"
  echo "|---|---:|---|"
  echo "| etcd | $(fmt 0 "$em") | $(for x in $ef; do printf '%.0f ' "$x"; done)|"
  echo "| Mast | $(fmt 0 "$mm") | $(for x in $mf; do printf '%.0f ' "$x"; done)|"
  echo
  echo "Mast / etcd failover median: $(fmt 2 "$(echo "$mm / $em" | bc -l)")×."
} >"$out_md"
log "wrote $out_md"
