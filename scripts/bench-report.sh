#!/usr/bin/env bash
# Daily-report aggregation time for 10k, 100k and 1M orders in one day, seeded
# directly into SQLite (natively, through waybill::report::compute).
# Usage: scripts/bench-report.sh [N ...]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build -q --release -p waybill-scenarios --bin bench-report
target/release/bench-report "$@"
