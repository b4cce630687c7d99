#!/usr/bin/env bash
# Builds and starts the whole app locally on its embedded defaults: SQLite and
# key-value files under .spin/, no account. Uses `spin` when it is installed,
# otherwise tests/host (a Spin-compatible host on wasmtime).
#
# Local development credentials (override with SPIN_VARIABLE_* in the environment):
#   API tokens: write:dev-write-token, read:dev-read-token
#   Shopify/WooCommerce webhook secret: dev-webhook-secret; commercetools: dev-ct-secret
set -euo pipefail
cd "$(dirname "$0")/.."
export SPIN_VARIABLE_API_TOKENS="${SPIN_VARIABLE_API_TOKENS:-write:dev-write-token,read:dev-read-token}"
export SPIN_VARIABLE_SHOPIFY_WEBHOOK_SECRET="${SPIN_VARIABLE_SHOPIFY_WEBHOOK_SECRET:-dev-webhook-secret}"
export SPIN_VARIABLE_WOOCOMMERCE_WEBHOOK_SECRET="${SPIN_VARIABLE_WOOCOMMERCE_WEBHOOK_SECRET:-dev-webhook-secret}"
export SPIN_VARIABLE_COMMERCETOOLS_SECRET="${SPIN_VARIABLE_COMMERCETOOLS_SECRET:-dev-ct-secret}"
LISTEN="${LISTEN:-127.0.0.1:3000}"
if command -v spin >/dev/null 2>&1; then
  spin build
  exec spin up --listen "$LISTEN" "$@"
fi
scripts/build-wasm.sh
cargo build --release -p waybill-host
exec target/release/waybill-host up --from spin.toml --listen "$LISTEN" "$@"
