#!/usr/bin/env bash
# Intake throughput and latency: signed Shopify webhooks (each a new order, 3
# lines) into durable orders, at 16 and 64 connections, against the hello-world
# component on the same host and raw SQLite writes of the same rows, in one run.
# Usage: scripts/bench-intake.sh   (DURATION seconds per row, default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DURATION:-10}
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build -q --target wasm32-wasip2 --release -p intake -p orders -p fixture-hello
cargo build -q --release -p waybill-host -p waybill-scenarios --bin bench-load --bin waybill-host
state=$(mktemp -d)
port=${PORT:-39081}
export SPIN_VARIABLE_API_TOKENS="write:bench-write-token"
export SPIN_VARIABLE_SHOPIFY_WEBHOOK_SECRET="bench-secret"
# One app with Waybill's components plus the hello-world floor.
app="$state/spin.toml"
sed -e "s#target/wasm32-wasip2#$PWD/target/wasm32-wasip2#g" spin.toml > "$app"
cat >> "$app" <<TOML

[[trigger.http]]
route = "/hello"
component = "hello"

[component.hello]
source = "$PWD/target/wasm32-wasip2/release/fixture_hello.wasm"
TOML
target/release/waybill-host up --quiet --from "$app" --state-dir "$state" --listen "127.0.0.1:$port" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$state"' EXIT
for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$port/.well-known/spin/health" >/dev/null 2>&1 && break; sleep 0.1; done
echo "machine: $(nproc) cores; ${DUR}s per row; closed loop, keep-alive connections"
echo "| workload | connections | requests/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|"
for c in 16 64; do
  target/release/bench-load "127.0.0.1:$port" hello "$c" "$DUR"
  target/release/bench-load "127.0.0.1:$port" shopify "$c" "$DUR"
  target/release/bench-load - "raw-sqlite:$state" "$c" "$DUR"
done
mem=$(awk '/^VmHWM|^VmRSS/ {printf "%s %.1f MiB  ", $1, $2/1024}' /proc/$pid/status)
orders=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from orders').fetchone()[0])" "$state/sqlite_db.db")
echo
echo "durable orders after the run: $orders (every 2xx above is one order)"
echo "host memory after the run: $mem"
