#!/usr/bin/env bash
# Records crates/mast/link/order.txt: the functions a release `mast serve` runs when it starts
# and serves its common requests, hottest first. crates/mast/build.rs links the release binary
# with those functions placed together at the start of its code (see there for why).
#
#   bash scripts/orderfile.sh        # a few minutes: a release build, one run under valgrind
#
# Steps:
#   1. builds `mast` and `mast-bench` in release mode (ORDER_SKIP_BUILD=1 skips it);
#   2. starts `target/release/mast serve` under valgrind's callgrind (loopback ports, a temp data
#      dir) and drives it: start-up, etcd puts / ranges / txns / leases / a watch (etcdctl and
#      mast-bench), Nacos v1 configs and instances (curl), Nacos 2.x gRPC listen + publish
#      (mast-bench nacos-push), /health, /metrics, /mast/v1;
#   3. stops it (SIGTERM, bounded wait), lists every function of the binary that ran, ordered by
#      its own instruction count (hottest first), and writes the list.
#
# Needs valgrind (apt-get install valgrind) and etcdctl (scripts/install-test-deps.sh).
# Rerun after large changes of code or dependencies: names that no longer exist are ignored by
# the linker, so a stale list only loses some of its effect.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="$repo/crates/mast/link/order.txt"
bin="$repo/target/release/mast"
bench="$repo/target/release/mast-bench"

log() { printf '[orderfile %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

command -v valgrind >/dev/null || { log "valgrind missing: apt-get install valgrind"; exit 1; }
command -v callgrind_annotate >/dev/null || { log "callgrind_annotate missing (valgrind package)"; exit 1; }
command -v etcdctl >/dev/null || { log "etcdctl missing: bash scripts/install-test-deps.sh"; exit 1; }

if [ "${ORDER_SKIP_BUILD:-0}" != 1 ]; then
  log "cargo build --release --bin mast --bin mast-bench"
  (cd "$repo" && cargo build --release --bin mast --bin mast-bench >&2)
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/mast-orderfile.XXXXXX")"
pid=""
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
port="$(free_port)" nacos="$(free_port)"
# The Nacos gRPC port is the HTTP port + 1000: find an HTTP port whose gRPC port is free too.
for _ in $(seq 1 20); do
  python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$nacos+1000))" 2>/dev/null && break
  nacos="$(free_port)"
done
ep="127.0.0.1:$port"
nurl="http://127.0.0.1:$nacos"

log "mast serve under callgrind (client $ep, nacos $nurl)"
RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.out" \
  --dump-instr=no --collect-jumps=no --compress-strings=no --compress-pos=no --demangle=no \
  "$bin" serve --name orderfile --data-dir "$work/data" \
  --listen-client-urls "http://$ep" --nacos-addr "127.0.0.1:$nacos" >"$work/serve.log" 2>&1 &
pid=$!

up=0
for _ in $(seq 1 300); do
  curl -sf "http://$ep/health" >/dev/null && { up=1; break; }
  kill -0 "$pid" 2>/dev/null || break
  sleep 0.2
done
[ "$up" = 1 ] || { log "mast did not start under valgrind: $(tail -n 5 "$work/serve.log")"; exit 1; }

log "driving it"
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$ep" --command-timeout 30s "$@"; }
ctl put /services/user-service/i1 '{"host":"10.0.0.1","port":8080}' >/dev/null
ctl get --prefix /services/ >/dev/null
lease="$(ctl lease grant 60 | awk '{ print $2 }')"
ctl put --lease "$lease" /services/user-service/i2 '{"host":"10.0.0.2","port":8080}' >/dev/null
ctl lease keep-alive --once "$lease" >/dev/null
ctl lease timetolive "$lease" >/dev/null
ctl txn <<<$'value("/services/user-service/i1") = "x"\n\nput /t a\n\n' >/dev/null || true
timeout 20 bash -c "ETCDCTL_API=3 etcdctl --endpoints $ep watch /w" >/dev/null &
watch_pid=$!
for i in 1 2 3; do ctl put /w "v$i" >/dev/null; done
ctl del /t >/dev/null
ctl endpoint status >/dev/null
"$bench" put --endpoints "$ep" --clients 8 --conns 2 --total 2000 --val-size 256 --json >/dev/null
"$bench" range --endpoints "$ep" --clients 8 --conns 2 --total 2000 --val-size 256 --json >/dev/null
"$bench" range --endpoints "$ep" --clients 8 --conns 2 --total 2000 --consistency s --val-size 256 --json >/dev/null
kill "$watch_pid" 2>/dev/null || true
wait "$watch_pid" 2>/dev/null || true

for i in $(seq 1 20); do
  curl -sf -XPOST "$nurl/nacos/v1/cs/configs" -d dataId="app-$((i % 4))" -d group=DEFAULT_GROUP \
    -d content="k=$i" -d tenant=dev >/dev/null
  curl -sf "$nurl/nacos/v1/cs/configs?dataId=app-$((i % 4))&group=DEFAULT_GROUP&tenant=dev" >/dev/null
  curl -sf -XPOST "$nurl/nacos/v1/ns/instance" -d serviceName=svc -d ip="192.168.0.$i" -d port=9000 \
    -d ephemeral=true -d namespaceId=dev >/dev/null
  curl -sf "$nurl/nacos/v1/ns/instance/list?serviceName=svc&namespaceId=dev" >/dev/null
done
curl -sf -XPUT "$nurl/nacos/v1/ns/instance/beat?serviceName=svc&namespaceId=dev&ip=192.168.0.1&port=9000" >/dev/null || true
"$bench" nacos-push --grpc "127.0.0.1:$((nacos + 1000))" --clients 4 --publishes 3 --tenant dev \
  --data-id push --json >/dev/null
curl -sf "http://$ep/metrics" >/dev/null
curl -sf "http://$ep/mast/v1/openapi.json" >/dev/null

log "stopping it"
kill -TERM "$pid"
for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
pid=""

# Every function of the binary that ran, by its own instruction count (callgrind_annotate
# prints `Ir (pct) file:function`, largest first).
nm --defined-only "$bin" | awk '$2 ~ /^[tTwW]$/ { print $3 }' | sort -u >"$work/symbols"
callgrind_annotate --inclusive=no --threshold=100 "$work/callgrind.out" 2>/dev/null |
  sed -n 's/^ *[0-9,]\+ ([ 0-9.]*%) *[^ ]*:\([^ ]*\)\( \[.*\]\)\?$/\1/p' >"$work/ran"
awk 'NR == FNR { known[$1] = 1; next } ($1 in known) && !seen[$1]++ { print $1 }' \
  "$work/symbols" "$work/ran" >"$work/order"
n="$(wc -l <"$work/order")"
[ "$n" -gt 500 ] || { log "only $n functions recorded; keeping $out as it is"; exit 1; }
{
  echo "# Functions of target/release/mast that ran in scripts/orderfile.sh, hottest first;"
  echo "# crates/mast/build.rs places them together at the start of the code. Generated file."
  cat "$work/order"
} >"$out"
log "wrote $out ($n functions)"
