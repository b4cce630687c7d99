#!/usr/bin/env bash
# Intake throughput and latency: signed Shopify webhooks (each a new order, 3
# lines) into durable orders, at 16 and 64 connections, against the hello-world
# component on the same host and raw SQLite writes of the same rows, in one run.
# Usage: scripts/bench-intake.sh   (DURATION seconds per row, default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DURATION:-10}
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
bash scripts/build-wasm.sh -q
cargo build -q --release -p waybill-host -p waybill-scenarios --bin bench-load --bin waybill-host
# WASM: the components' directory (another checkout's build, for an A/B run).
wasm=${WASM:-$PWD/target/wasm32-wasip2}
state=$(mktemp -d)
port=${PORT:-39081}
export SPIN_VARIABLE_API_TOKENS="write:bench-write-token"
export SPIN_VARIABLE_SHOPIFY_WEBHOOK_SECRET="bench-secret"
# One app with Waybill's components plus the hello-world floor.
app="$state/spin.toml"
sed -e "s#target/wasm32-wasip2#$wasm#g" spin.toml > "$app"
cat >> "$app" <<TOML

[[trigger.http]]
route = "/hello"
component = "hello"

[component.hello]
source = "$PWD/target/wasm32-wasip2/release/fixture_hello.wasm"

[[trigger.http]]
route = "/floor"
component = "write-floor"

[component.write-floor]
source = "$PWD/target/wasm32-wasip2/release/fixture_write_floor.wasm"
sqlite_databases = ["default"]
TOML
target/release/waybill-host up --quiet --from "$app" --state-dir "$state" --listen "127.0.0.1:$port" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$state"' EXIT
for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$port/.well-known/spin/health" >/dev/null 2>&1 && break; sleep 0.1; done
echo "machine: $(nproc) cores; ${DUR}s per row; closed loop, keep-alive connections"
echo "| workload | connections | requests/s | p50 | p99 | errors |"
echo "|---|---|---|---|---|---|"
for c in ${CONNECTIONS:-1 16 64}; do
  target/release/bench-load "127.0.0.1:$port" hello "$c" "$DUR"
  target/release/bench-load "127.0.0.1:$port" write-floor "$c" "$DUR"
  target/release/bench-load "127.0.0.1:$port" shopify "$c" "$DUR"
  target/release/bench-load - "raw-sqlite:$state" "$c" "$DUR"
done
target/release/bench-load - "raw-batched:$state" 1 "$DUR"
mem=$(awk '/^VmHWM|^VmRSS/ {printf "%s %.1f MiB  ", $1, $2/1024}' /proc/$pid/status)
orders=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from orders').fetchone()[0])" "$state/sqlite_db.db")
kill $pid; wait $pid 2>/dev/null || true
# A fresh app with inventory set up: every order is now also routed (reserve,
# fulfillment order, release, outbox) by the chained routing call after intake
# answers. (A fresh state: setting up inventory under the first run's orders
# would route that backlog during the measurement.)
state2=$(mktemp -d)
sed -e "s#target/wasm32-wasip2#$wasm#g" spin.toml > "$state2/spin.toml"
target/release/waybill-host up --quiet --from "$state2/spin.toml" --state-dir "$state2" --listen "127.0.0.1:$port" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$state" "$state2"' EXIT
for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$port/.well-known/spin/health" >/dev/null 2>&1 && break; sleep 0.1; done
api() { curl -fsS -o /dev/null -X "$1" "http://127.0.0.1:$port$2" -H 'Authorization: Bearer bench-write-token' -H 'Content-Type: application/json' -d "$3"; }
for f in berlin munich hamburg; do
  api PUT /api/facilities/$f '{"name": "'$f'", "type": "warehouse", "countries": ["DE"]}'
done
for sku in SKU-A SKU-B SKU-C; do
  api PUT /api/products/$sku '{"name": "'$sku'"}'
  for f in berlin munich hamburg; do
    api POST /api/stock/receipts '{"facility": "'$f'", "lines": [{"sku": "'$sku'", "quantity": 100000000}]}'
  done
done
echo "| *with inventory: each order also routed, reserved and released* | | | | | |"
maxrow() { python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1], timeout=30).execute('select coalesce(max(rowid), 0) from orders').fetchone()[0])" "$state2/sqlite_db.db"; }
for c in ${CONNECTIONS:-1 16 64}; do
  before=$(maxrow)
  target/release/bench-load "127.0.0.1:$port" shopify "$c" "$DUR"
  # The backlog: seconds from the end of the load until every order is
  # released; then the latency from intake (the order's created_at) to the
  # release of its fulfillment order, over this row's orders.
  python3 - "$state2/sqlite_db.db" "$c" "$before" "$DUR" <<'PY'
import sqlite3, sys, time
from datetime import datetime
db, conns, before, dur, t0 = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), time.time()
mine = "o.rowid > ?"
while True:
    c = sqlite3.connect(db, timeout=30)
    left = c.execute(f"select count(*) from orders o where {mine} and not exists (select 1 from fulfillment_orders f where f.order_id = o.id and f.released_at is not null)", (before,)).fetchone()[0]
    if left == 0 or time.time() - t0 > 60:
        break
    c.close()
    time.sleep(0.05)
drained = time.time() - t0
t = lambda s: datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").timestamp()
rows = c.execute(f"select o.created_at, max(f.released_at) from orders o join fulfillment_orders f on f.order_id = o.id where {mine} and f.released_at is not null group by o.id", (before,)).fetchall()
n = c.execute(f"select count(*) from orders o where {mine}", (before,)).fetchone()[0]
lat = sorted(t(r) - t(a) for a, r in rows)
q = lambda p: f"{lat[min(len(lat) - 1, int(p * len(lat)))] * 1000:.0f} ms" if lat else "-"
print(f"| *{conns} connections: {n} orders, {left} not released {drained:.1f} s after the load; end to end {len(rows) / (dur + drained):.0f} orders/s; intake to release p50 {q(0.5)}, p99 {q(0.99)}* | | | | | |")
PY
done
routed=$(python3 -c "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(c.execute('select count(*) from orders').fetchone()[0], 'orders,', c.execute('select count(*) from fulfillment_orders').fetchone()[0], 'fulfillment orders,', c.execute('select count(*) from orders where status = \'received\'').fetchone()[0], 'left received')" "$state2/sqlite_db.db")
mem2=$(awk '/^VmHWM|^VmRSS/ {printf "%s %.1f MiB  ", $1, $2/1024}' /proc/$pid/status)
echo
echo "durable orders after the first run: $orders (every 2xx above is one order); host memory: $mem"
echo "with inventory: $routed; host memory: $mem2"
