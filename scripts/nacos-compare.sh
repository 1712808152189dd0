#!/usr/bin/env bash
# Compares Mast's registry/config HTTP API (/mast/v1) with r-nacos 0.8.x's Nacos v1 open API
# on this machine, with the same four workloads driven by wrk (issue 6):
#
#   publish   publish distinct configs    (POST /nacos/v1/cs/configs   | PUT  /mast/v1/configs/{ns}/{group}/{id})
#   read      read one config             (GET  /nacos/v1/cs/configs   | GET  /mast/v1/configs/{ns}/{group}/{id})
#   register  register distinct instances (POST /nacos/v1/ns/instance  | POST /mast/v1/services/{svc}/instances)
#   list      list a service of 10        (GET  /nacos/v1/ns/instance/list | GET /mast/v1/services/{svc}/instances)
#
#   bash scripts/nacos-compare.sh                     # 4 workloads x 3 rounds x 2 servers x 15 s
#   NACOS_BENCH_TINY=1 bash scripts/nacos-compare.sh  # quick check of the script (2 s, 1 round)
#
# What it does:
#   1. installs wrk (apt) and r-nacos (`cargo install rnacos --version '^0.8' --locked`) if
#      missing, and builds `mast` in release mode (a no-op when target/release/mast is current);
#   2. starts r-nacos and `mast serve` on 127.0.0.1 (free ports, fresh temp data dirs).
#      r-nacos: RUST_LOG=warn, HTTP/gRPC/raft on loopback, no separate console, health and
#      instance timeouts of 10/20 hours so instances registered without heartbeats stay listed;
#      both are checked by a write + read-back before anything is measured;
#   3. records idle RSS (VmRSS), loads NACOS_BENCH_LOAD (10,000) configs + as many instances
#      into each, verifies a sample read back, and records RSS again;
#   4. runs each workload alternating r-nacos, Mast, r-nacos, Mast ... (NACOS_BENCH_ROUNDS
#      rounds), reading each server's CPU time (utime+stime, /proc/PID/stat) around each run
#      and wrk's own CPU time (bash `time`);
#   5. writes a Markdown table to stdout and NACOS_BENCH_OUT.
#
# Every response is checked by scripts/nacos/bench.lua (status and body). Results per workload:
# median req/s, median p50/p99 over the rounds, non-2xx and bad-body totals, CPU µs/request
# (all rounds' CPU / all rounds' requests) of the server and of wrk, and the ratio the CPU per
# request alone allows on this machine.
#
# Environment:
#   NACOS_BENCH_SECS     seconds per run (default 15; tiny: 2)
#   NACOS_BENCH_ROUNDS   rounds (default 3; tiny: 1)
#   NACOS_BENCH_CONNS    wrk connections (default 50, as issue 6 measured r-nacos)
#   NACOS_BENCH_THREADS  wrk threads (default 2, wrk's own default. With one, wrk's single
#                        thread was the limit for the faster server: three busy threads on two
#                        cores get two thirds of a core each, and wrk needs about 11 µs a
#                        request, so reads stopped near 64k/s with a sixth of the CPU idle)
#   NACOS_BENCH_SERVER_THREADS  request-serving threads of both servers: r-nacos's
#                        RNACOS_HTTP_WORKERS (actix workers) and Mast's MAST_WORKER_THREADS
#                        (connection threads); default: unset, each server's own default (one per core)
#   NACOS_BENCH_MAST_API nacos (default): Mast is driven through its own Nacos v1 API, the same
#                        requests as r-nacos, like for like; native: through /mast/v1 (the
#                        comparison of issue 6)
#   NACOS_BENCH_PUSH_CLIENTS     Nacos 2.x gRPC clients listening to one config (default 1000)
#   NACOS_BENCH_PUSH_PUBLISHES   publishes timed to every one of them (default 20)
#   NACOS_BENCH_LOAD     configs and instances loaded for the RSS measurement (default 10000)
#   NACOS_BENCH_OUT      Markdown output (default: benchmarks/nacos.md for a full run, which
#                        is also spliced into BENCHMARKS.md between its include markers;
#                        target/nacos-compare/RESULTS.md when seconds/rounds are overridden)
#   NACOS_BENCH_DIR      where data dirs and logs go (default target/nacos-compare; a real disk)
#   NACOS_BENCH_TINY=1   quick mode
#   NACOS_BENCH_SKIP_BUILD=1  use target/release/mast as is
#   NACOS_BENCH_KEEP=1   keep the servers' data directories (logs and wrk outputs are always kept)
#   RNACOS_BIN           r-nacos binary (default: `rnacos` on PATH or ~/.cargo/bin/rnacos)
#
# Every process this script starts is stopped by its PID when it exits. All traffic is loopback.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

tiny="${NACOS_BENCH_TINY:-0}"
if [ "$tiny" = 1 ]; then
  secs="${NACOS_BENCH_SECS:-2}" rounds="${NACOS_BENCH_ROUNDS:-1}"
else
  secs="${NACOS_BENCH_SECS:-15}" rounds="${NACOS_BENCH_ROUNDS:-3}"
fi
conns="${NACOS_BENCH_CONNS:-50}"
wthreads="${NACOS_BENCH_THREADS:-2}"
load_n="${NACOS_BENCH_LOAD:-10000}"
mast_api="${NACOS_BENCH_MAST_API:-nacos}"
case "$mast_api" in nacos | native) ;; *) echo "nacos-compare: NACOS_BENCH_MAST_API is nacos or native" >&2; exit 1 ;; esac
server_threads="${NACOS_BENCH_SERVER_THREADS:-}"
# Extra environment for each server when NACOS_BENCH_SERVER_THREADS is set (same for both).
nacos_threads_env=() mast_threads_env=()
if [ -n "$server_threads" ]; then
  [[ "$server_threads" =~ ^[1-9][0-9]*$ ]] || { echo "nacos-compare: NACOS_BENCH_SERVER_THREADS must be a positive integer" >&2; exit 1; }
  nacos_threads_env=("RNACOS_HTTP_WORKERS=$server_threads")
  mast_threads_env=("MAST_WORKER_THREADS=$server_threads")
fi
bench_dir="${NACOS_BENCH_DIR:-$repo/target/nacos-compare}"
# A full run writes benchmarks/nacos.md (committed; BENCHMARKS.md includes it); quick runs
# write under target/.
if [ "$tiny" = 1 ] || [ -n "${NACOS_BENCH_SECS:-}" ] || [ -n "${NACOS_BENCH_ROUNDS:-}" ]; then
  out_md="${NACOS_BENCH_OUT:-$bench_dir/RESULTS.md}"
else
  out_md="${NACOS_BENCH_OUT:-$repo/benchmarks/nacos.md}"
fi
lua="$repo/scripts/nacos/bench.lua"
mast_bin="$repo/target/release/mast"
bench_bin="$repo/target/release/mast-bench"
push_clients="${NACOS_BENCH_PUSH_CLIENTS:-1000}"
push_rounds="${NACOS_BENCH_PUSH_PUBLISHES:-20}"

log() { printf '[nacos-compare %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

# ---------------------------------------------------------------------------------------------
# Processes we start, stopped by PID on exit.
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    wait "$p" 2>/dev/null || true
  done
  if [ -n "${run_dir:-}" ] && [ "${NACOS_BENCH_KEEP:-0}" != 1 ]; then
    rm -rf "$run_dir"/nacos*/data "$run_dir/mast/data"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# 1. Tools.
need_apt=()
command -v wrk >/dev/null || need_apt+=(wrk)
command -v curl >/dev/null || need_apt+=(curl)
if [ "${#need_apt[@]}" -gt 0 ]; then
  log "installing ${need_apt[*]} with apt"
  sudo_cmd=()
  [ "$(id -u)" = 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get install -y "${need_apt[@]}" >&2 ||
    { "${sudo_cmd[@]}" apt-get update >&2 && "${sudo_cmd[@]}" apt-get install -y "${need_apt[@]}" >&2; }
fi

rnacos_bin="${RNACOS_BIN:-}"
if [ -z "$rnacos_bin" ]; then
  rnacos_bin="$(command -v rnacos || true)"
  [ -n "$rnacos_bin" ] || rnacos_bin="${CARGO_HOME:-$HOME/.cargo}/bin/rnacos"
fi
if [ ! -x "$rnacos_bin" ]; then
  log "r-nacos not found: cargo install rnacos --version '^0.8' --locked (several minutes)"
  cargo install rnacos --version '^0.8' --locked >&2
  rnacos_bin="${CARGO_HOME:-$HOME/.cargo}/bin/rnacos"
fi
[ -x "$rnacos_bin" ] || die "no rnacos binary at $rnacos_bin"
rnacos_version="$("$rnacos_bin" --version 2>/dev/null | head -n1 || true)"
[ -n "$rnacos_version" ] || rnacos_version="rnacos (version not reported)"

if [ "${NACOS_BENCH_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --bin mast --bin mast-bench"
  cargo build --release --bin mast --bin mast-bench >&2
fi
[ -x "$mast_bin" ] || die "no $mast_bin"

# ---------------------------------------------------------------------------------------------
# 2. Servers.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
distinct_port() {
  local p
  while :; do
    p="$(free_port)"
    case " $* " in *" $p "*) ;; *) echo "$p"; return ;; esac
  done
}

mkdir -p "$bench_dir"
run_dir="$(mktemp -d "$bench_dir/run.XXXXXX")"
nacos_port="$(distinct_port)"
nacos_grpc="$(distinct_port "$nacos_port")"
mast_port="$(distinct_port "$nacos_port" "$nacos_grpc")"
nacos_url="http://127.0.0.1:$nacos_port"
mast_url="http://127.0.0.1:$mast_port"
# Mast's Nacos HTTP port (its gRPC port, 1000 above, must be free too).
mast_nacos_port=""
for _ in $(seq 1 50); do
  p="$(distinct_port "$nacos_port" "$nacos_grpc" "$mast_port")"
  q=$((p + 1000))
  if [ "$q" -lt 65536 ] && ! (exec 3<>"/dev/tcp/127.0.0.1/$q") 2>/dev/null; then
    mast_nacos_port="$p"
    break
  fi
done
[ -n "$mast_nacos_port" ] || die "no free port pair for Mast's Nacos API"
# What the workloads talk to on Mast, and the request shape bench.lua / load.py use for it.
if [ "$mast_api" = nacos ]; then
  mast_bench_url="http://127.0.0.1:$mast_nacos_port" mast_shape=nacos
else
  mast_bench_url="$mast_url" mast_shape=mast
fi

mkdir -p "$run_dir/mast"
start_nacos() { # attempt: a fresh data dir per attempt; sets nacos_pid
  local dir="$run_dir/nacos$([ "$1" = 1 ] || echo ".$1")"
  mkdir -p "$dir"
  log "starting r-nacos on $nacos_url (data $dir)"
  # cwd = its data dir, so no stray .env is read and nothing is written elsewhere.
  (
    cd "$dir"
    exec env RUST_LOG=warn \
      RNACOS_SDK_HOST=127.0.0.1 RNACOS_CONSOLE_HOST=127.0.0.1 \
      RNACOS_HTTP_PORT="$nacos_port" RNACOS_GRPC_PORT="$nacos_grpc" \
      RNACOS_RAFT_NODE_ADDR="127.0.0.1:$nacos_grpc" RNACOS_HTTP_CONSOLE_PORT=0 \
      RNACOS_DATA_DIR="$dir/data" \
      RNACOS_NAMING_HEALTH_TIMEOUT_SECOND=36000 RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND=72000 \
      RNACOS_ENABLE_OPEN_API_AUTH=false "${nacos_threads_env[@]}" \
      "$rnacos_bin"
  ) >"$run_dir/nacos.log" 2>&1 &
  nacos_pid=$!
  pids+=("$nacos_pid")
}
start_nacos 1

log "starting mast on $mast_url (data $run_dir/mast)"
env RUST_LOG=warn "${mast_threads_env[@]}" "$mast_bin" serve --name nacos-compare --data-dir "$run_dir/mast/data" \
  --listen-client-urls "$mast_url" --nacos-addr "127.0.0.1:$mast_nacos_port" >"$run_dir/mast.log" 2>&1 &
mast_pid=$!
pids+=("$mast_pid")

wait_http() { # name url pid
  local i
  for i in $(seq 1 200); do
    kill -0 "$3" 2>/dev/null || die "$1 exited; see $run_dir/$1.log"
    if curl -s -o /dev/null "$2"; then return 0; fi
    sleep 0.1
  done
  die "$1 did not answer at $2"
}
wait_http nacos "$nacos_url/nacos/v1/cs/configs?dataId=x&group=x" "$nacos_pid"
# r-nacos 0.8.8 sometimes panics on its first write when that write races its single-node raft
# start-up (an unwrap in raftapply.rs): probe with a write, and on a panic start it again on a
# fresh data directory (at most 3 attempts).
for attempt in 1 2 3; do
  for _ in $(seq 1 20); do
    curl -sf -XPOST "$nacos_url/nacos/v1/cs/configs" -d dataId=startup-probe -d group=probe \
      -d content=ok >/dev/null 2>&1 && break
    sleep 0.1
  done
  # r-nacos applies writes asynchronously: read back for up to 5 s unless it panicked.
  probed=0
  for _ in $(seq 1 50); do
    grep -q panicked "$run_dir/nacos.log" && break
    if [ "$(curl -sf "$nacos_url/nacos/v1/cs/configs?dataId=startup-probe&group=probe" || true)" = ok ]; then
      probed=1
      break
    fi
    sleep 0.1
  done
  [ "$probed" = 1 ] && break
  [ "$attempt" = 3 ] && die "r-nacos failed its start-up probe 3 times; see $run_dir/nacos.log"
  log "r-nacos failed its start-up probe (attempt $attempt); restarting it on a fresh data dir"
  cp "$run_dir/nacos.log" "$run_dir/nacos.attempt$attempt.log"
  kill "$nacos_pid" 2>/dev/null || true
  wait "$nacos_pid" 2>/dev/null || true
  start_nacos "$((attempt + 1))"
  wait_http nacos "$nacos_url/nacos/v1/cs/configs?dataId=x&group=x" "$nacos_pid"
done
curl -sf -XDELETE "$nacos_url/nacos/v1/cs/configs?dataId=startup-probe&group=probe" >/dev/null ||
  die "r-nacos: deleting the start-up probe failed"
wait_http mast "$mast_url/mast/v1/openapi.json" "$mast_pid"

# Both must listen on loopback only.
if command -v ss >/dev/null; then
  for p in "$nacos_pid" "$mast_pid"; do
    listeners="$(ss -Hltnp 2>/dev/null | grep "pid=$p," | awk '{ print $4 }' || true)"
    [ -n "$listeners" ] || log "warning: could not list pid $p's listeners"
    if grep -qv '^127\.0\.0\.1:' <<<"$listeners"; then
      die "pid $p listens beyond loopback: $(tr '\n' ' ' <<<"$listeners")"
    fi
    log "pid $p listens on $(tr '\n' ' ' <<<"$listeners")"
  done
fi

# Names shared with scripts/nacos/bench.lua.
ns=bench group=DEFAULT_GROUP
read_id=read-target read_content=read-target-content-0123456789
list_svc=list-svc

# Through the Nacos v1 API at a base URL.
publish_at() { # url dataId content
  curl -sf -XPOST "$1/nacos/v1/cs/configs" \
    --data-urlencode "dataId=$2" --data-urlencode "group=$group" \
    --data-urlencode "content=$3" --data-urlencode "tenant=$ns"
}
get_at() { curl -sf "$1/nacos/v1/cs/configs?dataId=$2&group=$group&tenant=$ns"; }
count_at() { # url service
  curl -sf "$1/nacos/v1/ns/instance/list?serviceName=$2&namespaceId=$ns" |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["hosts"]))'
}
register_at() { # url service ip
  [ "$(curl -sf -XPOST "$1/nacos/v1/ns/instance" -d "serviceName=$2" \
    -d "ip=$3" -d "port=9000" -d "ephemeral=true" -d "namespaceId=$ns" \
    --data-urlencode 'metadata={"preserved.heart.beat.timeout":"36000000","preserved.ip.delete.timeout":"72000000"}')" = ok ]
}
nacos_publish() { publish_at "$nacos_url" "$@"; }
nacos_get() { get_at "$nacos_url" "$@"; }
nacos_count() { count_at "$nacos_url" "$@"; }
# Mast through the API the workloads use.
mast_publish() {
  if [ "$mast_api" = nacos ]; then
    [ "$(publish_at "$mast_bench_url" "$@")" = true ]
  else
    curl -sf -XPUT "$mast_url/mast/v1/configs/$ns/$group/$1" -H 'content-type: application/json' \
      -d "{\"content\":\"$2\",\"format\":\"text\"}"
  fi
}
mast_get_content() {
  if [ "$mast_api" = nacos ]; then
    get_at "$mast_bench_url" "$1"
  else
    curl -sf "$mast_url/mast/v1/configs/$ns/$group/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["content"])'
  fi
}
mast_count() {
  if [ "$mast_api" = nacos ]; then
    count_at "$mast_bench_url" "$1"
  else
    curl -sf "$mast_url/mast/v1/services/$1/instances" |
      python3 -c 'import json,sys; print(len(json.load(sys.stdin)["instances"]))'
  fi
}
mast_register() { # service ip id
  if [ "$mast_api" = nacos ]; then
    register_at "$mast_bench_url" "$1" "$2"
  else
    curl -sf -XPOST "$mast_url/mast/v1/services/$1/instances" -H 'content-type: application/json' \
      -d "{\"id\":\"$3\",\"host\":\"$2\",\"port\":9000,\"ttl\":3600}" >/dev/null
  fi
}

# Read-back check after start, and the fixtures the read and list workloads use.
log "setup: publish $read_id, register $list_svc x 10, read back"
[ "$(nacos_publish "$read_id" "$read_content")" = true ] || die "r-nacos publish failed"
mast_publish "$read_id" "$read_content" >/dev/null || die "mast publish failed"
for i in $(seq 1 10); do
  register_at "$nacos_url" "$list_svc" "192.168.0.$i" || die "r-nacos register failed"
  mast_register "$list_svc" "192.168.0.$i" "l$i" || die "mast register failed"
done
# r-nacos applies writes asynchronously: wait (bounded, 10 s) until the read-back matches.
for _ in $(seq 1 50); do
  [ "$(nacos_get "$read_id" || true)" = "$read_content" ] && [ "$(nacos_count "$list_svc" 2>/dev/null || echo 0)" = 10 ] && break
  sleep 0.2
done
[ "$(nacos_get "$read_id")" = "$read_content" ] || die "r-nacos read-back mismatch$(grep -q panicked "$run_dir/nacos.log" && echo " (r-nacos panicked; see $run_dir/nacos.log)")"
[ "$(mast_get_content "$read_id")" = "$read_content" ] || die "mast read-back mismatch"
[ "$(nacos_count "$list_svc")" = 10 ] || die "r-nacos lists $(nacos_count "$list_svc") instances, expected 10"
[ "$(mast_count "$list_svc")" = 10 ] || die "mast lists $(mast_count "$list_svc") instances, expected 10"

# ---------------------------------------------------------------------------------------------
# Measurements.
clk_tck="$(getconf CLK_TCK)"
cpu_us() { # pid -> utime+stime in µs
  awk -v t="$clk_tck" '{ sub(/^.*\) /, ""); printf "%d\n", ($12 + $13) * 1000000 / t }' "/proc/$1/stat"
}
rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# run_wrk target workload tag duration -> RESULT line (stdout); wrk output kept in run_dir
run_wrk() {
  local url pid out
  local shape
  if [ "$1" = nacos ]; then
    url="$nacos_url" pid="$nacos_pid" shape=nacos
  else
    url="$mast_bench_url" pid="$mast_pid" shape="$mast_shape"
  fi
  kill -0 "$pid" 2>/dev/null || die "$1 is not running; see $run_dir/$1.log"
  out="$run_dir/wrk-$1-$2-$3.txt"
  # bash's `time` gives wrk's own CPU (user and system seconds): on 2 cores the load generator
  # shares the machine with the server, so its CPU per request is reported too.
  local TIMEFORMAT='%3U %3S'
  { time BENCH_TARGET="$shape" BENCH_WORKLOAD="$2" BENCH_TAG="$3" \
    wrk -t"$wthreads" -c"$conns" -d"$4" --timeout 10s -s "$lua" "$url" >"$out" 2>&1; } 2>"$out.time" ||
    die "wrk failed: $(tail -n 5 "$out")"
  grep -q '^RESULT ' "$out" || die "no RESULT in $out: $(tail -n 5 "$out")"
  if grep -q '^bad body\|^non-2xx' "$out"; then grep '^bad body\|^non-2xx' "$out" | sed -n 1,3p >&2; fi
  echo "$(grep '^RESULT ' "$out" | tail -n 1) wrk_cpu_us=$(awk '{ printf "%d", ($1 + $2) * 1000000 }' "$out.time")"
}
field() { # "RESULT k=v ..." key
  tr ' ' '\n' <<<"$1" | awk -F= -v k="$2" '$1 == k { print $2 }'
}

# 3. RSS idle, then after loading configs + instances.
sleep 1
nacos_rss_idle="$(rss_kb "$nacos_pid")" mast_rss_idle="$(rss_kb "$mast_pid")"
log "idle RSS: r-nacos $(mib "$nacos_rss_idle"), mast $(mib "$mast_rss_idle")"
for t in nacos mast; do
  if [ "$t" = nacos ]; then url="$nacos_url" shape=nacos; else url="$mast_bench_url" shape="$mast_shape"; fi
  for kind in configs instances; do
    log "loading $load_n $kind into $t"
    python3 "$repo/scripts/nacos/load.py" "$shape" "$kind" "$url" "$load_n" 8 >&2 ||
      die "loading $kind into $t failed"
  done
done
# Sample read-back of the load.
[ "$(nacos_get load-1 | cut -c1-7)" = "v-load-" ] || die "r-nacos: load-1 not readable"
[ "$(nacos_get "load-$load_n" | cut -c1-7)" = "v-load-" ] || die "r-nacos: load-$load_n not readable"
[ "$(mast_get_content load-1 | cut -c1-7)" = "v-load-" ] || die "mast: load-1 not readable"
[ "$(mast_get_content "load-$load_n" | cut -c1-7)" = "v-load-" ] || die "mast: load-$load_n not readable"
per_svc=$((load_n / 100))
n1="$(nacos_count load-1)" m1="$(mast_count load-1)"
[ "$n1" -ge "$per_svc" ] || die "r-nacos lists $n1 instances in load-1, expected $per_svc"
[ "$m1" -ge "$per_svc" ] || die "mast lists $m1 instances in load-1, expected $per_svc"
sleep 2
nacos_rss_load="$(rss_kb "$nacos_pid")" mast_rss_load="$(rss_kb "$mast_pid")"
log "RSS after $load_n configs + $load_n instances: r-nacos $(mib "$nacos_rss_load"), mast $(mib "$mast_rss_load")"

# 4. Workloads, alternating r-nacos, Mast, r-nacos, Mast ...
workloads=(publish read register list)
declare -A rps p50 p99 non2xx badb sock cpu wcpu reqs
for w in "${workloads[@]}"; do
  for t in nacos mast; do
    rps[$t.$w]="" p50[$t.$w]="" p99[$t.$w]=""
    non2xx[$t.$w]=0 badb[$t.$w]=0 sock[$t.$w]=0 cpu[$t.$w]=0 wcpu[$t.$w]=0 reqs[$t.$w]=0
  done
  for r in $(seq 1 "$rounds"); do
    for t in nacos mast; do
      if [ "$t" = nacos ]; then pid="$nacos_pid"; else pid="$mast_pid"; fi
      c0="$(cpu_us "$pid")"
      res="$(run_wrk "$t" "$w" "r$r" "${secs}s")"
      c1="$(cpu_us "$pid")"
      log "$w round $r $t: $res cpu_us=$((c1 - c0))"
      rps[$t.$w]+="$(field "$res" rps) "
      p50[$t.$w]+="$(field "$res" p50_us) "
      p99[$t.$w]+="$(field "$res" p99_us) "
      non2xx[$t.$w]=$((non2xx[$t.$w] + $(field "$res" non2xx)))
      badb[$t.$w]=$((badb[$t.$w] + $(field "$res" bad_body)))
      sock[$t.$w]=$((sock[$t.$w] + $(field "$res" sock_errors)))
      cpu[$t.$w]=$((cpu[$t.$w] + c1 - c0))
      wcpu[$t.$w]=$((wcpu[$t.$w] + $(field "$res" wrk_cpu_us)))
      reqs[$t.$w]=$((reqs[$t.$w] + $(field "$res" requests)))
      sleep 1
    done
  done
done

# 5. Pushes over the 2.x gRPC protocol: N clients listen to one config, each publish is timed
# until it reached every one (mast-bench nacos-push; the same requests to both servers).
need_fds=$((push_clients * 2 + 256))
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt "$need_fds" ]; then
  ulimit -n "$need_fds" 2>/dev/null || die "open files limit $(ulimit -n) is below the $need_fds $push_clients clients need"
fi
declare -A push push_cpu
for t in nacos mast; do
  if [ "$t" = nacos ]; then grpc="127.0.0.1:$nacos_grpc" pid="$nacos_pid"; else grpc="127.0.0.1:$((mast_nacos_port + 1000))" pid="$mast_pid"; fi
  log "push: $push_clients gRPC clients on $t ($grpc), $push_rounds publishes"
  c0="$(cpu_us "$pid")"
  push[$t]="$("$bench_bin" nacos-push --grpc "$grpc" --clients "$push_clients" --publishes "$push_rounds" \
    --tenant bench --data-id "push-$t" --json 2>"$run_dir/push-$t.err")" ||
    die "nacos-push against $t failed: $(tail -n 5 "$run_dir/push-$t.err")"
  push_cpu[$t]=$(($(cpu_us "$pid") - c0))
  echo "${push[$t]}" >"$run_dir/push-$t.json"
  log "push $t: ${push[$t]}"
  sleep 1
done
push_field() { # target dotted path into the JSON report: latency_ms.p50_ms, extra.missed, ...
  python3 -c 'import json,sys; v=json.loads(sys.argv[1])
for k in sys.argv[2].split("."): v=v[k]
print(v)' "${push[$1]}" "$2"
}

# 6. Report.
median() { tr ' ' '\n' <<<"$1" | awk 'NF' | sort -g | awk '{ a[NR] = $1 } END { if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ms() { awk -v u="$1" 'BEGIN { printf "%.2f", u / 1000 }'; }
per_req() { awk -v c="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.1f", c / n; else print "-" }'; }

label() {
  case "$1" in
    publish) echo "publish distinct configs" ;;
    read) echo "read one config" ;;
    register) echo "register distinct instances" ;;
    list) echo "list a service of 10" ;;
  esac
}

{
  if [ "$mast_api" = nacos ]; then
    echo "## r-nacos vs Mast: the same Nacos v1 open API on both"
  else
    echo "## r-nacos vs Mast: Nacos v1 open API vs /mast/v1"
  fi
  echo
  echo "$(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $(uname -sr); $rnacos_version; mast $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '?')."
  echo "Request-serving threads: ${server_threads:-the default of each server (one per core)}${server_threads:+ for both (r-nacos RNACOS_HTTP_WORKERS, Mast MAST_WORKER_THREADS)}."
  echo "wrk $wthreads thread(s), $conns connections, ${secs}s per run, $rounds round(s), runs alternating r-nacos, Mast, r-nacos, Mast …;"
  echo "req/s and p50/p99 are medians over the rounds; non-2xx / bad body / socket errors are totals;"
  echo "CPU µs/req is the server's utime+stime over all rounds divided by all rounds' requests; wrk's"
  echo "own CPU per request (user+system, same division) is shown too, since it runs on the same cores."
  echo
  echo "| workload | r-nacos req/s | Mast req/s | Mast / r-nacos | r-nacos p50 / p99 ms | Mast p50 / p99 ms | r-nacos non-2xx / bad / sock | Mast non-2xx / bad / sock | r-nacos CPU µs/req | Mast CPU µs/req | wrk CPU µs/req (r-nacos / Mast) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
  for w in "${workloads[@]}"; do
    nr="$(median "${rps[nacos.$w]}")" mr="$(median "${rps[mast.$w]}")"
    ratio="$(awk -v a="$mr" -v b="$nr" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')"
    printf '| %s | %.0f | %.0f | %s | %s / %s | %s / %s | %s / %s / %s | %s / %s / %s | %s | %s | %s / %s |\n' \
      "$(label "$w")" "$nr" "$mr" "$ratio" \
      "$(ms "$(median "${p50[nacos.$w]}")")" "$(ms "$(median "${p99[nacos.$w]}")")" \
      "$(ms "$(median "${p50[mast.$w]}")")" "$(ms "$(median "${p99[mast.$w]}")")" \
      "${non2xx[nacos.$w]}" "${badb[nacos.$w]}" "${sock[nacos.$w]}" \
      "${non2xx[mast.$w]}" "${badb[mast.$w]}" "${sock[mast.$w]}" \
      "$(per_req "${cpu[nacos.$w]}" "${reqs[nacos.$w]}")" "$(per_req "${cpu[mast.$w]}" "${reqs[mast.$w]}")" \
      "$(per_req "${wcpu[nacos.$w]}" "${reqs[nacos.$w]}")" "$(per_req "${wcpu[mast.$w]}" "${reqs[mast.$w]}")"
  done
  echo
  echo "- RSS idle (after start and setup): r-nacos $(mib "$nacos_rss_idle"), Mast $(mib "$mast_rss_idle")"
  echo "- RSS after $load_n configs + $load_n instances (before the workloads): r-nacos $(mib "$nacos_rss_load"), Mast $(mib "$mast_rss_load")"
  echo "- RSS at the end: r-nacos $(mib "$(rss_kb "$nacos_pid")"), Mast $(mib "$(rss_kb "$mast_pid")")"
  echo "- CPU per request, server + wrk (µs), and the ratio CPU alone allows when both runs keep the"
  echo "  $(nproc) cores busy (r-nacos's sum / Mast's sum; a run waiting on the disk or on wakeups stays below it):"
  for w in "${workloads[@]}"; do
    awk -v l="$(label "$w")" -v nc="${cpu[nacos.$w]}" -v nw="${wcpu[nacos.$w]}" -v nn="${reqs[nacos.$w]}" \
      -v mc="${cpu[mast.$w]}" -v mw="${wcpu[mast.$w]}" -v mn="${reqs[mast.$w]}" 'BEGIN {
        if (nn > 0 && mn > 0) {
          n = (nc + nw) / nn; m = (mc + mw) / mn
          printf "  - %s: r-nacos %.1f, Mast %.1f, %.2f×\n", l, n, m, n / m
        }
      }'
  done
  echo
  echo "### Config pushes to $push_clients Nacos 2.x gRPC clients"
  echo
  echo "$push_clients clients (one connection each: ServerCheck, ConnectionSetup, ConfigBatchListen) listen to"
  echo "one config; $push_rounds publishes (ConfigPublishRequest over gRPC), each waited for until every client"
  echo "got its ConfigChangeNotifyRequest; latency is from the publish sent to the notification received."
  echo
  echo "| server | push p50 ms | push p99 ms | push max ms | all reached, p50 / max ms | missed | set-up of the clients s | server CPU s |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|"
  for t in nacos mast; do
    printf '| %s | %.2f | %.2f | %.2f | %.2f / %.2f | %s | %.1f | %.2f |\n' \
      "$([ "$t" = nacos ] && echo r-nacos || echo Mast)" \
      "$(push_field "$t" latency_ms.p50_ms)" "$(push_field "$t" latency_ms.p99_ms)" "$(push_field "$t" latency_ms.max_ms)" \
      "$(push_field "$t" extra.reach_all_p50_ms)" "$(push_field "$t" extra.reach_all_max_ms)" \
      "$(push_field "$t" extra.missed)" "$(awk -v m="$(push_field "$t" extra.setup_ms)" 'BEGIN { printf "%.1f", m / 1000 }')" \
      "$(awk -v c="${push_cpu[$t]}" 'BEGIN { printf "%.2f", c / 1000000 }')"
  done
  echo
  echo "**Durability differs:** Mast answers a publish or a registration only after its write-ahead"
  echo "log record is fsynced (group commit: one fdatasync for every request waiting), and an"
  echo "instance's lease is stored too, so both survive a crash or power loss. r-nacos 0.8.8 does not"
  echo "fsync before answering a publish, and keeps ephemeral instances in memory only."
  echo
  echo "### Targets (issue 6; issue 15 on the same Nacos API)"
  echo
  echo "| target | measured | met |"
  echo "|---|---|---|"
  target_row() { # label workload minimum
    local r
    r="$(awk -v a="$(median "${rps[mast.$2]}")" -v b="$(median "${rps[nacos.$2]}")" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print 0 }')"
    echo "| $1 ≥ $3× r-nacos | ${r}× | $(awk -v r="$r" -v m="$3" 'BEGIN { print (r >= m) ? "yes" : "**no**" }') |"
  }
  target_row "durable publish" publish 2
  target_row "read one config" read 1.5
  target_row "register" register 1.5
  target_row "list a service of 10 (a read)" list 1.5
  echo "| push to $push_clients gRPC subscribers, p99 ≤ r-nacos's | $(push_field mast latency_ms.p99_ms) ms vs $(push_field nacos latency_ms.p99_ms) ms | $(awk -v a="$(push_field mast latency_ms.p99_ms)" -v b="$(push_field nacos latency_ms.p99_ms)" 'BEGIN { print (a <= b) ? "yes" : "**no**" }') |"
  echo "| memory with $load_n configs + $load_n instances ≤ r-nacos | $(mib "$mast_rss_load") vs $(mib "$nacos_rss_load") | $(awk -v a="$mast_rss_load" -v b="$nacos_rss_load" 'BEGIN { print (a <= b) ? "yes" : "**no**" }') |"
  echo
  echo "### Exact commands"
  echo
  echo '```sh'
  echo "bash scripts/nacos-compare.sh   # this run: NACOS_BENCH_SECS=$secs NACOS_BENCH_ROUNDS=$rounds NACOS_BENCH_CONNS=$conns${server_threads:+ NACOS_BENCH_SERVER_THREADS=$server_threads}"
  echo "# servers (fresh data directories)"
  echo "RUST_LOG=warn ${nacos_threads_env[*]}${server_threads:+ }RNACOS_HTTP_PORT=<port> RNACOS_GRPC_PORT=<port> RNACOS_SDK_HOST=127.0.0.1 RNACOS_CONSOLE_HOST=127.0.0.1 RNACOS_HTTP_CONSOLE_PORT=0 RNACOS_NAMING_HEALTH_TIMEOUT_SECOND=36000 RNACOS_NAMING_INSTANCE_TIMEOUT_SECOND=72000 RNACOS_ENABLE_OPEN_API_AUTH=false rnacos"
  echo "RUST_LOG=warn ${mast_threads_env[*]}${server_threads:+ }target/release/mast serve --data-dir <dir> --listen-client-urls http://127.0.0.1:<port> --nacos-addr 127.0.0.1:<port>"
  echo "# each workload, each server, alternating; scripts/nacos/bench.lua checks every response"
  echo "# Mast's requests: $([ "$mast_api" = nacos ] && echo "BENCH_TARGET=nacos against its Nacos port, the same as r-nacos's" || echo "BENCH_TARGET=mast against its client port (/mast/v1)")"
  echo "BENCH_TARGET=nacos|mast BENCH_WORKLOAD=publish|read|register|list wrk -t$wthreads -c$conns -d${secs}s --timeout 10s -s scripts/nacos/bench.lua http://127.0.0.1:<port>"
  echo "# pushes"
  echo "target/release/mast-bench nacos-push --grpc 127.0.0.1:<grpc port> --clients $push_clients --publishes $push_rounds --tenant bench --data-id push-<server> --json"
  echo "# load for the RSS line"
  echo "python3 scripts/nacos/load.py nacos|mast configs|instances http://127.0.0.1:<port> $load_n 8"
  echo '```'
} >"$run_dir/RESULTS.md"

mkdir -p "$(dirname "$out_md")"
cp "$run_dir/RESULTS.md" "$out_md"
cat "$out_md"
# Replace the included copy in BENCHMARKS.md, when it has one (see `mast-bench report --include`).
if [ "$out_md" = "$repo/benchmarks/nacos.md" ]; then
  (cd "$repo" && python3 scripts/update-include.py BENCHMARKS.md benchmarks/nacos.md)
fi
log "written to $out_md (wrk outputs and server logs in $run_dir)"
