#!/usr/bin/env bash
# Benchmarks Mast against etcd 3.4 on this machine, in one run, and writes BENCHMARKS.md and
# benchmarks.svg at the repository root.
#
#   bash scripts/bench-compare.sh                    # full run (well under 30 min on 2 cores)
#   BENCH_SCALE=small bash scripts/bench-compare.sh  # a few minutes
#   BENCH_SCALE=tiny  bash scripts/bench-compare.sh  # about a minute: checks the script itself
#
# What it does:
#   1. installs etcd-server + etcd-client (Debian's etcd 3.4), curl and jq when missing;
#   2. builds `mast` and `mast-bench` in release mode;
#   3. starts etcd and `mast serve` on loopback, each on an empty data directory on the same
#      disk, both durable (etcd fsyncs its WAL before answering a write; Mast fsyncs its Raft
#      log for every entry, a batch of writes, before answering);
#   4. runs every workload against both, one after the other (which server goes first
#      alternates), recording each server's CPU time (utime + stime from /proc/PID/stat), RSS
#      (VmRSS) and fsync count (from its /metrics) around each run;
#   5. loads 1,000,000 keys (8-byte keys, 256-byte values) into a fresh instance of each, then
#      measures RSS, the data directory's size, and the restart time (SIGTERM, start, first
#      answered range);
#   6. measures the disk's fsync rate in the same directory;
#   7. runs `mast-bench report`, which writes BENCHMARKS.md and benchmarks.svg.
#
# Environment:
#   BENCH_SCALE   full (default) | small | tiny
#   BENCH_DIR     where data directories and results go (default: target/bench-compare; must
#                 be on a real disk, not tmpfs, for the fsync numbers to mean anything)
#   BENCH_OUT     the Markdown file to write (default: BENCHMARKS.md at the repository root)
#   BENCH_KEYS    keys for the load measurement (default by scale: 1000000 / 100000 / 10000)
#   BENCH_SKIP_BUILD=1  use the release binaries already in target/release
#
# Every process this script starts is stopped by its PID when it exits, however it exits.
# All traffic goes to 127.0.0.1.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

scale="${BENCH_SCALE:-full}"
bench_dir="${BENCH_DIR:-$repo/target/bench-compare}"
out_md="${BENCH_OUT:-$repo/BENCHMARKS.md}"
mast_bin="$repo/target/release/mast"
bench_bin="$repo/target/release/mast-bench"

log() { printf '[bench-compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Sizes per scale.
case "$scale" in
  full)
    dur=10s long=15s
    watchers=1000 watch_rate=100 watch_puts=1000
    leases=10000 lease_dur=20s
    reg_instances=1000 reg_services=10 reg_watchers=100 reg_subscribers=1000 reg_rate=20 reg_dur=15s
    load_keys="${BENCH_KEYS:-1000000}"
    fsync_dur=10s
    ;;
  small)
    dur=3s long=5s
    watchers=200 watch_rate=100 watch_puts=300
    leases=2000 lease_dur=6s
    reg_instances=200 reg_services=4 reg_watchers=20 reg_subscribers=200 reg_rate=20 reg_dur=5s
    load_keys="${BENCH_KEYS:-100000}"
    fsync_dur=3s
    ;;
  tiny)
    dur=1s long=1s
    watchers=20 watch_rate=100 watch_puts=50
    leases=100 lease_dur=2s
    reg_instances=20 reg_services=2 reg_watchers=4 reg_subscribers=10 reg_rate=10 reg_dur=2s
    load_keys="${BENCH_KEYS:-10000}"
    fsync_dur=1s
    ;;
  *) die "BENCH_SCALE=$scale: expected full, small or tiny" ;;
esac

# ---------------------------------------------------------------------------------------------
# 1. Tools.
sudo_cmd=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then sudo_cmd=(sudo -n); fi
missing=()
[ -x /usr/bin/etcd ] || missing+=(etcd-server)
[ -x /usr/bin/etcdctl ] || missing+=(etcd-client)
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v jq >/dev/null 2>&1 || missing+=(jq)
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq >/dev/null
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
etcd_version="$(/usr/bin/etcd --version | sed -n 's/^etcd Version: //p')"  # sed reads it all: no SIGPIPE under pipefail
case "$etcd_version" in
  3.4.*) ;;
  *) log "warning: etcd $etcd_version is not 3.4" ;;
esac

# 2. Build.
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --bin mast --bin mast-bench"
  cargo build --release --bin mast --bin mast-bench >&2
fi
[ -x "$mast_bin" ] || die "$mast_bin missing"
[ -x "$bench_bin" ] || die "$bench_bin missing"

# ---------------------------------------------------------------------------------------------
# Processes: every server started here is remembered and stopped by PID on exit.
mkdir -p "$bench_dir"
work="$(mktemp -d "$bench_dir/run.XXXXXX")"
results="$work/results"
mkdir -p "$results/runs"
pids=()
cleanup() {
  local pid
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  # Data directories can be large (1M keys); results stay for reference.
  rm -rf "$work"/data-* 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

etcd_port="$(free_port)"
etcd_peer="$(free_port)"
mast_port="$(free_port)"
[ "$etcd_port" != "$mast_port" ] || mast_port="$(free_port)"

etcd_cmd() { # DATA_DIR
  echo /usr/bin/etcd --name bench --data-dir "$1" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" \
    --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "bench=http://127.0.0.1:$etcd_peer"
}
mast_cmd() { # DATA_DIR
  echo "$mast_bin" serve --name bench --data-dir "$1" \
    --listen-client-urls "http://127.0.0.1:$mast_port"
}

# start SERVER DATA_DIR LOG: starts it in the background; sets started_pid.
start() {
  local server="$1" dir="$2" logf="$3" cmd
  if [ "$server" = etcd ]; then cmd="$(etcd_cmd "$dir")"; else cmd="$(mast_cmd "$dir")"; fi
  # shellcheck disable=SC2086 # the command line is built above from paths without spaces
  $cmd >>"$logf" 2>&1 &
  started_pid=$!
  pids+=("$started_pid")
}

port_of() { if [ "$1" = etcd ]; then echo "$etcd_port"; else echo "$mast_port"; fi; }

# wait_ready SERVER: until it answers a range (60 s at most).
wait_ready() {
  "$bench_bin" wait --endpoints "127.0.0.1:$(port_of "$1")" --timeout 60s --json >/dev/null
}

# stop PID: SIGTERM, then SIGKILL after 30 s.
stop() {
  local pid="$1" _
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "pid $pid did not stop in 30 s: SIGKILL"
    kill -9 "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
}

cpu_seconds() { # PID: user + system CPU seconds so far
  awk -v tck="$(getconf CLK_TCK)" '{ sub(/^.*\) /, ""); print ($12 + $13) / tck }' "/proc/$1/stat"
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
fsync_count() { # SERVER: fsyncs so far, from its /metrics (empty if not exposed)
  local metric
  if [ "$1" = etcd ]; then metric=etcd_disk_wal_fsync_duration_seconds_count; else metric=mast_fsyncs_total; fi
  # A metric not yet recorded (no write so far) counts as 0; an unreachable /metrics as unknown.
  local text
  text="$(curl -s --max-time 5 "http://127.0.0.1:$(port_of "$1")/metrics")" || return 0
  awk -v m="$metric" '$1 == m { n = $2 } END { print n + 0 }' <<<"$text"
}

commands="$results/commands.txt"
: >"$commands"
show_cmd() { # the command as a reader would type it from the repository root
  local shown
  shown="$(printf '%q ' "$@")"
  shown="${shown//$repo\//}"
  echo "${shown% }"
}
record_cmd() { show_cmd "$@" >>"$commands"; }

load_start="$(cut -d' ' -f1-3 /proc/loadavg)"

# ---------------------------------------------------------------------------------------------
# 3. Servers for the workloads.
log "etcd $etcd_version on 127.0.0.1:$etcd_port, Mast on 127.0.0.1:$mast_port, data in $work"
start etcd "$work/data-etcd" "$work/etcd.log"
etcd_pid=$started_pid
start mast "$work/data-mast" "$work/mast.log"
mast_pid=$started_pid
wait_ready etcd || die "etcd did not start: $(tail -5 "$work/etcd.log")"
wait_ready mast || die "mast did not start: $(tail -5 "$work/mast.log")"
{
  echo "# servers"
  # shellcheck disable=SC2046 # split into words on purpose, to quote each one
  show_cmd $(etcd_cmd "$work/data-etcd")
  # shellcheck disable=SC2046
  show_cmd $(mast_cmd "$work/data-mast")
  echo "# workloads (each on etcd, then on Mast, or the other way round: the order alternates)"
} >>"$commands"

pid_of() { if [ "$1" = etcd ]; then echo "$etcd_pid"; else echo "$mast_pid"; fi; }

# run_one LABEL SERVER ARGS...: one workload on one server, with its resource usage.
run_one() {
  local label="$1" server="$2"
  shift 2
  local pid port out cpu0 cpu1 f0 f1 fs rss
  pid="$(pid_of "$server")"
  port="$(port_of "$server")"
  out="$results/runs/$label.$server"
  local cmd=("$bench_bin" "$@" --endpoints "127.0.0.1:$port" --json)
  record_cmd "${cmd[@]}"
  cpu0="$(cpu_seconds "$pid")"
  f0="$(fsync_count "$server")"
  if ! "${cmd[@]}" >"$out.json" 2>"$out.err"; then
    log "  $server: FAILED: $(tail -3 "$out.err")"
    rm -f "$out.json"
    return 0
  fi
  cpu1="$(cpu_seconds "$pid")"
  f1="$(fsync_count "$server")"
  rss="$(rss_kb "$pid")"
  fs=null
  if [ -n "$f0" ] && [ -n "$f1" ]; then fs="$(awk -v a="$f0" -v b="$f1" 'BEGIN { print b - a }')"; fi
  printf '{"cpu_s": %s, "rss_kb": %s, "fsyncs": %s}\n' \
    "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { print b - a }')" "$rss" "$fs" >"$out.proc.json"
  jq -r --arg s "$server" '"  \($s): \(.ops) ops, \(.ops_per_sec | floor) ops/s, p99 \(.latency_ms.p99_ms) ms, errors \(.errors)"
    + (if .watch then ", events missing \(.watch.missing)/\(.watch.events_expected), delivery p99 \(.watch.delivery_ms.p99_ms) ms" else "" end)' \
    "$out.json" >&2
}

n=0
# workload LABEL ARGS...: the same workload on both servers, alternating which goes first.
workload() {
  local label="$1"
  shift
  n=$((n + 1))
  local tag
  tag="$(printf '%02d-%s' "$n" "$label")"
  log "$tag: mast-bench $*"
  if [ $((n % 2)) -eq 1 ]; then
    run_one "$tag" etcd "$@"
    run_one "$tag" mast "$@"
  else
    run_one "$tag" mast "$@"
    run_one "$tag" etcd "$@"
  fi
}

# 4. Workloads.
workload put-1c put --conns 1 --clients 1 --duration "$dur"
workload put-100c put --conns 10 --clients 100 --duration "$long"
workload put-seq-100c put --conns 10 --clients 100 --duration "$dur" --sequential-keys --prefix /seq/
workload txn-put-100c txn-put --conns 10 --clients 100 --duration "$dur"
workload range-l-100c range --conns 10 --clients 100 --duration "$dur" --consistency l
workload range-s-100c range --conns 10 --clients 100 --duration "$dur" --consistency s
workload range-l-scan100 range --conns 10 --clients 100 --duration "$dur" --consistency l --scan 100
workload range-s-scan100 range --conns 10 --clients 100 --duration "$dur" --consistency s --scan 100
workload "watch-${watchers}w" watch --conns 10 --clients 10 --watchers "$watchers" --streams 10 \
  --put-rate "$watch_rate" --total "$watch_puts"
workload "lease-${leases}" lease-keepalive --conns 10 --clients 100 --leases "$leases" --ttl 30 \
  --duration "$lease_dur"
workload registry registry --conns 10 --clients 50 --instances "$reg_instances" \
  --services "$reg_services" --watchers "$reg_watchers" --subscribers "$reg_subscribers" \
  --config-rate "$reg_rate" --duration "$reg_dur"

log "stopping the workload servers"
stop "$etcd_pid"
stop "$mast_pid"
rm -rf "$work/data-etcd" "$work/data-mast"

# 5. Load N keys into a fresh instance of each; RSS, disk, restart.
echo "# load: $load_keys keys into a fresh data directory of each server" >>"$commands"
for server in etcd mast; do
  dir="$work/data-load-$server"
  log "load: $load_keys keys into $server"
  start "$server" "$dir" "$work/$server-load.log"
  pid=$started_pid
  wait_ready "$server" || die "$server did not start"
  cmd=("$bench_bin" load --keys "$load_keys" --key-size 8 --val-size 256 --conns 10 --clients 100
    --endpoints "127.0.0.1:$(port_of "$server")" --json)
  record_cmd "${cmd[@]}"
  "${cmd[@]}" >"$work/load-report.$server.json" 2>"$work/load.$server.err" ||
    die "load into $server failed: $(tail -3 "$work/load.$server.err")"
  sleep 2 # let background work (etcd's backend commit, Mast's page cache) settle
  rss="$(rss_kb "$pid")"
  disk="$(du -sb "$dir" | cut -f1)"
  stop "$pid"
  t0="$(date +%s.%N)"
  start "$server" "$dir" "$work/$server-load.log"
  pid=$started_pid
  wait_ready "$server" || die "$server did not restart"
  t1="$(date +%s.%N)"
  sleep 1
  rss2="$(rss_kb "$pid")"
  stop "$pid"
  restart="$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')"
  jq -n --slurpfile load "$work/load-report.$server.json" --argjson rss "$rss" \
    --argjson disk "$disk" --argjson restart "$restart" --argjson rss2 "$rss2" \
    '{load: $load[0], rss_kb: $rss, disk_bytes: $disk, restart_s: $restart, rss_after_restart_kb: $rss2}' \
    >"$results/load.$server.json"
  log "  $server: $(jq -r '.ops_per_sec | floor' "$work/load-report.$server.json") keys/s, RSS $((rss / 1024)) MiB, disk $((disk / 1048576)) MiB, restart ${restart} s"
  rm -rf "$dir"
done

# 6. The disk's fsync rate, where the data directories were.
log "fsync rate in $work"
record_cmd "$bench_bin" fsync --dir "$work" --duration "$fsync_dur" --json
"$bench_bin" fsync --dir "$work" --duration "$fsync_dur" --json >"$results/fsync.json"
log "  $(jq -r '.ops_per_sec | floor' "$results/fsync.json") fsyncs/s"

# 7. Document.
mem="$(free -h | awk '/^Mem:/ { print $2 }')"
fs_type="$(df -T "$work" | awk 'NR == 2 { print $2 " on " $1 }')"
jq -n \
  --arg date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --arg scale "$scale" \
  --arg cpu "$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | sed -n 1p)" \
  --arg cores "$(nproc)" \
  --arg memory "$mem" \
  --arg kernel "$(uname -sr)" \
  --arg os "$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release | tr -d '"')" \
  --arg disk "$fs_type" \
  --arg load "1/5/15-min load average before the run: $load_start; after: $(cut -d' ' -f1-3 /proc/loadavg) (anything else running on the machine skews the numbers)" \
  --arg etcd "etcd $etcd_version ($(/usr/bin/etcd --version | sed -n 's/^Go Version: //p'), Debian package)" \
  --arg mast "$("$mast_bin" --version) (git $(git -C "$repo" describe --always --dirty 2>/dev/null || echo unknown), release build)" \
  --arg rustc "$(rustc --version)" \
  --arg durability "Both servers are single members with a data directory on the same disk, and both answer a write only once it is on disk: etcd appends it to its WAL and fsyncs (fdatasync) before replying (its default; no --unsafe-no-fsync), Mast (a one-voter Raft cluster, the same write path as a 3-member one) appends each Raft entry (a batch of writes) to its Raft log and fsyncs it (fdatasync) before replying, applying the entry to redb without an fsync and committing redb durably every 8 MiB of applied commands (a checkpoint). Both batch concurrent writes under one fsync (group commit)." \
  --arg etcd_command "$(etcd_cmd DATA_DIR)" \
  --arg mast_command "$(mast_cmd DATA_DIR | sed "s|$repo/||")" \
  '$ARGS.named' >"$results/meta.json"

mkdir -p "$(dirname "$out_md")"
plot="$(dirname "$out_md")/benchmarks.svg"
# The 3-member comparison (scripts/bench-cluster.sh), the r-nacos comparison
# (scripts/nacos-compare.sh), the soak (scripts/soak.sh), the crash loop
# (scripts/crash-loop.sh), the fuzzing figures (scripts/fuzz.sh) and the hand-written profile
# notes are kept in benchmarks/ and appended as they are.
"$bench_bin" report --results "$results" --out "$out_md" --plot "$plot" \
  --include benchmarks/cluster.md --include benchmarks/nacos.md \
  --include benchmarks/soak.md --include benchmarks/crash-loop.md --include benchmarks/fuzz.md \
  --include benchmarks/console.md \
  --include benchmarks/notes.md
log "results in $results; wrote $out_md and $plot"
