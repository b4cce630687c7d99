#!/usr/bin/env bash
# Routing time against 10/100/1000 facilities and 1/10/50 order lines: the
# engine alone, the plan on native SQLite, and the compiled routing component
# on tests/host (POST /api/routing/simulate). Prints a Markdown table.
# Usage: scripts/bench-routing.sh [--native-only]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build-wasm.sh -q
cargo build -q --release -p waybill-scenarios --bin bench-routing
target/release/bench-routing "$@"
