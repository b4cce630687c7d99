#!/usr/bin/env bash
# Runs every test: unit tests of shared/ and tests/host, and the scenarios that run
# the real compiled components on tests/host.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build-wasm.sh
# The API contract check (tests/scenarios/contract.rs) runs schemathesis from
# PyPI against the running app; it lives in a virtualenv under target/.
venv=target/contract-venv
if [ ! -x "$venv/bin/schemathesis" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==4.32.5"
fi
export WAYBILL_SCHEMATHESIS="$PWD/$venv/bin/schemathesis"
cargo test "$@"
