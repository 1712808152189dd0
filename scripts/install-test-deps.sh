#!/usr/bin/env bash
# Installs what the test suite needs on a fresh Debian 12 machine (run as root):
#   - etcd-server, etcd-client (real etcd 3.4 + etcdctl, the reference server), dnsutils (dig)
#   - protobuf-compiler and libprotobuf-dev (protoc and its well-known .proto files, for the
#     etcd-client crate's build script)
#   - node + npm, tests/node's npm packages (the etcd3 client) and console/'s (esbuild,
#     playwright-core, axe-core), and chromium (headless, for the console's browser tests)
#   - python3 with venv, and tests/python's virtualenv (the Nacos gRPC client)
#   - a JDK and Maven, and tests/java's classpath (the Java Nacos client)
#   - r-nacos 0.8.8 (cargo install, a debug build in target/rnacos), for the Nacos
#     differential test
#   - tests/go's Go modules (go.etcd.io/etcd/client/v3) from the Go module proxy; Go itself
#     (1.26 or newer, as tests/go/go.mod says) is expected on the machine
# Idempotent: whatever is already there is skipped. Quiet: one line per step;
# a failing step prints its output and the script exits non-zero.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
node_dir="$repo_root/tests/node"

export DEBIAN_FRONTEND=noninteractive

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    sudo_cmd=(sudo -n)
  fi
fi

log() { printf '[install-test-deps] %s\n' "$*"; }

# run_quiet DESCRIPTION CMD...: runs CMD with its output in a temp file; shows it on failure.
run_quiet() {
  local what="$1"
  shift
  local out
  out="$(mktemp)"
  if "$@" >"$out" 2>&1; then
    rm -f "$out"
  else
    local rc=$?
    log "FAILED: $what (exit $rc)"
    tail -n 50 "$out" >&2
    rm -f "$out"
    exit "$rc"
  fi
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    run_quiet "apt-get update" "${sudo_cmd[@]}" apt-get update -qq
    apt_updated=1
  fi
  log "apt-get install $*"
  run_quiet "apt-get install $*" "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "$@"
}

# 1. System packages.
missing=()
[ -x /usr/bin/etcd ] || missing+=(etcd-server)
[ -x /usr/bin/etcdctl ] || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
# protoc's well-known types (google/protobuf/*.proto) are only a recommendation of
# protobuf-compiler, which --no-install-recommends leaves out.
[ -f /usr/include/google/protobuf/descriptor.proto ] || missing+=(libprotobuf-dev)
# curl and openssl: the TLS tests probe client and peer ports with them.
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# dig: the DNS test asks Mast's DNS server with it.
command -v dig >/dev/null 2>&1 || missing+=(dnsutils)
# chromium: the console's end-to-end tests drive it headless through playwright-core (a
# browser download by Playwright itself is not possible here).
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
  apt_install "${missing[@]}"
else
  log "etcd, etcdctl, protoc, curl, openssl, dig, chromium: present"
fi

# 2. Node.js and npm.
node_missing=()
command -v node >/dev/null 2>&1 || node_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || node_missing+=(npm)
if [ "${#node_missing[@]}" -gt 0 ]; then
  apt_install "${node_missing[@]}"
else
  log "node $(node --version), npm $(npm --version 2>/dev/null): present"
fi

# 3. npm packages of tests/node (the etcd3 and Nacos clients) and console/ (the console's
# build tools and playwright-core + axe-core for its browser tests), each only when its
# node_modules is missing or older than its lockfile. npm rewrites
# node_modules/.package-lock.json on every install: it is the stamp.
npm_deps() {
  local dir="$1" name="$2"
  local stamp="$dir/node_modules/.package-lock.json"
  if [ ! -d "$dir/node_modules" ] || [ ! -f "$stamp" ] || [ "$dir/package-lock.json" -nt "$stamp" ]; then
    log "npm ci in $name"
    run_quiet "npm ci ($name)" bash -c 'cd "$1" && npm ci --no-audit --no-fund --loglevel=error' _ "$dir"
  else
    log "$name/node_modules: up to date"
  fi
}
npm_deps "$node_dir" tests/node
npm_deps "$repo_root/console" console

# 4. Go, and tests/go's modules (the etcd Go client) from the Go module proxy.
command -v go >/dev/null 2>&1 || { echo "install-test-deps: Go 1.26+ is needed for tests/go" >&2; exit 1; }
log "$(go version): present"
run_quiet "go mod download" bash -c 'cd "$1" && go mod download' _ "$repo_root/tests/go"

# 5. Python: a virtualenv in tests/python with the Nacos gRPC client (nacos-sdk-python 2.x,
# from PyPI), remade only when requirements.txt is newer than it.
py_dir="$repo_root/tests/python"
command -v python3 >/dev/null 2>&1 || apt_install python3
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_install python3-venv
venv_stamp="$py_dir/.venv/installed"
if [ ! -f "$venv_stamp" ] || [ "$py_dir/requirements.txt" -nt "$venv_stamp" ]; then
  log "python venv in tests/python ($(python3 --version))"
  run_quiet "python3 -m venv" python3 -m venv "$py_dir/.venv"
  run_quiet "pip install" "$py_dir/.venv/bin/pip" install --quiet --disable-pip-version-check -r "$py_dir/requirements.txt"
  touch "$venv_stamp"
else
  log "tests/python/.venv: up to date"
fi

# 6. Java: the Nacos Java client (com.alibaba.nacos:nacos-client, from Maven Central) and its
# classpath for tests/java, resolved by Maven (javac and java run it in the tests).
java_dir="$repo_root/tests/java"
command -v javac >/dev/null 2>&1 || apt_install default-jdk-headless
command -v mvn >/dev/null 2>&1 || apt_install maven
if [ ! -f "$java_dir/target/cp.txt" ] || [ "$java_dir/pom.xml" -nt "$java_dir/target/cp.txt" ]; then
  log "maven: tests/java's classpath"
  run_quiet "mvn dependency:build-classpath" bash -c 'cd "$1" && mvn -q -B dependency:build-classpath -Dmdep.outputFile=target/cp.txt' _ "$java_dir"
else
  log "tests/java/target/cp.txt: up to date"
fi

# 7. r-nacos (the `rnacos` crate, a Nacos server in Rust), the reference of the Nacos
# differential test (crates/mast-conformance/tests/nacos_diff.rs). A debug build: about four
# minutes here against eleven for a release one, and the test needs answers, not speed
# (scripts/nacos-compare.sh builds its own release binary for the benchmarks).
if command -v rnacos >/dev/null 2>&1 || [ -x "${CARGO_HOME:-$HOME/.cargo}/bin/rnacos" ] ||
  [ -x "$repo_root/target/rnacos/bin/rnacos" ]; then
  log "rnacos: present"
else
  log "rnacos 0.8.8: cargo install --debug into target/rnacos (a few minutes)"
  run_quiet "cargo install rnacos" cargo install rnacos --version 0.8.8 --locked --debug \
    --root "$repo_root/target/rnacos"
fi

log "done"
