# Shared helpers for the benchmark scripts (sourced).
# wrk is the load generator (Debian package `wrk`); results are printed as a
# markdown table row: | name | conns | req/s | p50 | p99 | non-2xx/errors |

ensure_wrk() {
  if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && apt-get install -y -qq wrk) >/dev/null
    else
      echo "wrk is required: apt-get install wrk" >&2
      exit 1
    fi
  fi
}

# start_host MANIFEST STATE_DIR PORT [extra args...]: starts target/release/waybill-host in the background.
start_host() {
  local manifest=$1 state=$2 port=$3
  shift 3
  target/release/waybill-host up --quiet --from "$manifest" --state-dir "$state" --listen "127.0.0.1:$port" "$@" &
  HOST_PID=$!
  for _ in $(seq 1 300); do
    if curl -fsS "http://127.0.0.1:$port/.well-known/spin/health" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "host did not start" >&2
  exit 1
}

stop_host() {
  kill "$HOST_PID" 2>/dev/null || true
  wait "$HOST_PID" 2>/dev/null || true
}

# run_wrk NAME CONNS URL [wrk args...]: one measurement, one table row.
run_wrk() {
  local name=$1 conns=$2 url=$3
  shift 3
  local threads=2
  [ "$conns" -lt 2 ] && threads=1
  local out
  out=$(wrk -t"$threads" -c"$conns" -d"${DURATION:-10s}" --latency "$@" "$url")
  local rps p50 p99 errs
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  errs=$(awk '/Non-2xx or 3xx responses:/ {n+=$NF} /Socket errors:/ {gsub(",","");n+=$4+$6+$8+$10} END {print n+0}' <<<"$out")
  printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "$conns" "$rps" "$p50" "$p99" "$errs"
}
