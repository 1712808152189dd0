#!/usr/bin/env bash
# Runs every test of the project: installs what the tests need (etcd 3.4 + etcdctl from
# Debian, protoc, the Node etcd3 client), builds the `mast` binary, then runs the Rust tests
# (unit, property, etcd-client, etcdctl differential, crash, cluster, Go client) and the Node
# seed flows, against one member and against three.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-test-deps.sh

target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
# A clean clone gains nothing from incremental caches, which would double the size of target/.
if [[ -n "${CI:-}" ]]; then export CARGO_INCREMENTAL=0; fi
# The black-box tests (Rust and Node) run this binary.
export MAST_BIN="$target_dir/debug/mast"

echo "== cargo build --bin mast"
cargo build --locked --bin mast

echo "== cargo test"
cargo test --locked --workspace --no-fail-fast -- --test-threads=2

echo "== node --test (seeds' etcd3 flows against Mast)"
(cd tests/node && node --test)

echo "== node --test seeds.test.mjs (the same flows against 3 members, every endpoint given)"
(cd tests/node && NODE_TEST_MEMBERS=3 node --test seeds.test.mjs)

echo "== console: types, bundle freshness, browser tests (headless chromium + axe-core)"
(cd console && npx tsc --noEmit -p . && node --test tests/)

echo "== disk: $(du -sh "$target_dir" 2>/dev/null | cut -f1) in $target_dir; $(df -h --output=avail "$target_dir" | tail -1 | tr -d ' ') free"
