#!/usr/bin/env bash
# Runs every test: unit tests of shared/ and tests/host, and the scenarios that run
# the real compiled components on tests/host.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-wasm.sh
cargo test "$@"
