#!/usr/bin/env bash
# The floor every Waybill component is compared against: a hello-world component
# on tests/host, loaded by wrk over loopback at 1, 16 and 64 connections.
# Usage: scripts/bench-host.sh   (DURATION=10s by default)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib-bench.sh
ensure_wrk
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
cargo build -q --target wasm32-wasip2 --release -p fixture-hello
cargo build -q --release -p waybill-host
state=$(mktemp -d)
port=${PORT:-39080}
start_host tests/host/fixtures/spin-hello.toml "$state" "$port"
trap 'stop_host; rm -rf "$state"' EXIT
curl -fsS "http://127.0.0.1:$port/hello" >/dev/null
echo "machine: $(nproc) cores, $(uname -m); duration ${DURATION:-10s} per row"
echo "| component | connections | requests/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|"
for c in 1 16 64; do
  run_wrk hello "$c" "http://127.0.0.1:$port/hello"
done
echo
echo "host memory after the run: $(awk '/^VmHWM|^VmRSS/ {printf "%s %.1f MiB  ", $1, $2/1024}' /proc/$HOST_PID/status)"
