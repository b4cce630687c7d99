#!/usr/bin/env bash
# The scaling table of issue #16: end-to-end orders/s (every order routed,
# reserved, captured, invoiced and released with a pick job) and statements
# per order, with 1, 3 and 10 lines per order (3 facilities) and with 1, 10 and
# 100 facilities (3 lines), on a fresh app each.
# Usage: scripts/bench-scaling.sh   (DURATION seconds per row, default 6;
#        CONNECTIONS, default 16)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DURATION:-6}
CONNS=${CONNECTIONS:-16}
rustup target list --installed | grep -qx wasm32-wasip2 || rustup target add wasm32-wasip2
bash scripts/build-wasm.sh -q
cargo build -q --release -p waybill-host -p waybill-scenarios --bin bench-load --bin waybill-host
port=${PORT:-39082}
export SPIN_VARIABLE_API_TOKENS="write:bench-write-token"
export SPIN_VARIABLE_SHOPIFY_WEBHOOK_SECRET="bench-secret"
pid=
state=
cleanup() {
  if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; pid=; fi
  if [ -n "$state" ]; then rm -rf "$state"; state=; fi
}
trap cleanup EXIT

# start <lines> <facilities> [trace]: a fresh app with every SKU stocked at every facility.
start() {
  cleanup
  state=$(mktemp -d)
  sed -e "s#target/wasm32-wasip2#$PWD/target/wasm32-wasip2#g" spin.toml > "$state/spin.toml"
  WAYBILL_HOST_TRACE_SQL=${3:-0} target/release/waybill-host up --quiet --from "$state/spin.toml" \
    --state-dir "$state" --listen "127.0.0.1:$port" 2> "$state/host.err" &
  pid=$!
  for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$port/.well-known/spin/health" >/dev/null 2>&1 && break; sleep 0.1; done
  api() { curl -fsS -o /dev/null -X "$1" "http://127.0.0.1:$port$2" -H 'Authorization: Bearer bench-write-token' -H 'Content-Type: application/json' -d "$3"; }
  local skus="" k f
  for k in $(seq 1 "$1"); do
    api PUT "/api/products/SKU-$k" '{"name": "SKU '$k'"}'
    skus="$skus${skus:+,}{\"sku\": \"SKU-$k\", \"quantity\": 100000000}"
  done
  for f in $(seq 1 "$2"); do
    api PUT "/api/facilities/wh$f" '{"name": "wh'$f'", "type": "warehouse", "countries": ["DE"]}'
    api POST /api/stock/receipts '{"facility": "wh'$f'", "lines": ['"$skus"']}'
  done
}

# e2e <before-rowid>: waits until every order after the rowid is released; prints "orders/s drained-s".
e2e() {
  python3 - "$state/sqlite_db.db" "$1" "$DUR" <<'PY'
import sqlite3, sys, time
db, before, dur, t0 = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), time.time()
while True:
    c = sqlite3.connect(db, timeout=30)
    q = "from orders o where o.rowid > ? and not exists (select 1 from fulfillment_orders f where f.order_id = o.id and f.released_at is not null)"
    left = c.execute("select count(*) " + q, (before,)).fetchone()[0]
    if left == 0 or time.time() - t0 > 120:
        break
    c.close()
    time.sleep(0.05)
n = c.execute("select count(*) from orders where rowid > ?", (before,)).fetchone()[0]
drained = time.time() - t0
print(f"{(n - left) / (dur + drained):.0f} {drained:.1f} {left}")
PY
}
maxrow() { python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1], timeout=30).execute('select coalesce(max(rowid), 0) from orders').fetchone()[0])" "$state/sqlite_db.db"; }

echo "machine: $(nproc) cores; ${DUR}s of load per row at $CONNS connections; statements counted on a traced app, 1 connection, 3 s"
echo "| lines per order | facilities | webhooks/s | webhook p99 | end-to-end orders/s | drained after | statements per order (writes) |"
echo "|---|---|---|---|---|---|---|"
for cfg in "1 3" "3 3" "10 3" "3 1" "3 10" "3 100"; do
  set -- $cfg
  start "$1" "$2"
  before=$(maxrow)
  row=$(BENCH_LINES=$1 target/release/bench-load "127.0.0.1:$port" shopify "$CONNS" "$DUR")
  read -r rate drained left < <(e2e "$before")
  rps=$(echo "$row" | awk -F'|' '{gsub(/ /, "", $4); print $4}')
  p99=$(echo "$row" | awk -F'|' '{gsub(/^ +| +$/, "", $6); print $6}')
  # Statements: a traced app, the same setup, 3 s at 1 connection, every order drained.
  start "$1" "$2" 1
  before=$(maxrow)
  from=$(wc -l < "$state/host.err")
  BENCH_LINES=$1 target/release/bench-load "127.0.0.1:$port" shopify 1 3 >/dev/null
  e2e "$before" >/dev/null
  sleep 1
  n=$(( $(maxrow) - before ))
  per=$(tail -n +"$((from + 1))" "$state/host.err" | awk -v n="$n" '/waybill-host: sql/ {all++; if ($0 ~ /ms (INSERT|UPDATE|DELETE|REPLACE)/) w++} END {printf "%.1f (%.1f)", all / n, w / n}')
  echo "| $1 | $2 | $rps | $p99 | $rate | ${drained} s (${left} left) | $per |"
done
echo
echo "host memory after the last run: $(awk '/^VmHWM|^VmRSS/ {printf "%s %.1f MiB  ", $1, $2/1024}' /proc/$pid/status)"
