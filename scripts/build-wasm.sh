#!/usr/bin/env bash
# Builds every Wasm component (functions/* and the host's test fixtures) for
# wasm32-wasip2, as `spin build` does per component.
set -euo pipefail
cd "$(dirname "$0")/.."
for t in wasm32-wasip2 wasm32-wasip1; do rustup target list --installed 2>/dev/null | grep -qx $t || rustup target add $t; done
pkgs=()
for d in functions/*/; do pkgs+=(-p "$(basename "$d")"); done
for d in tests/host/fixtures/*/; do pkgs+=(-p "fixture-$(basename "$d")"); done
cargo build --target wasm32-wasip2 --release "${pkgs[@]}" "$@"
