#!/usr/bin/env bash
# Run every test of the workspace. The Redis-backed suites start their own redis-server
# (unix socket in a temp dir, nothing saved), so the binary must be installed; this script
# installs it with apt-get when it is missing (and chromium + chromium-driver for the dashboard test,
# postgresql for the ledger tests, nodejs + npm for mppx).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis-server not found; installing it with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server
fi
# The ledger suites start their own PostgreSQL (initdb + pg_ctl in a temp dir; Debian's packages).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  echo "PostgreSQL not found; installing postgresql with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql
fi
# The dashboard test drives a real headless Chromium over WebDriver (Debian's packages).
if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
  echo "chromium / chromedriver not found; installing chromium and chromium-driver with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium chromium-driver
fi
# The official x402 Python SDK for the interoperability test (a venv under ~/.cache).
if X402_PYTHON="$(bash tests/x402_sdk/setup.sh)"; then
  export TOLLGATE_X402_PYTHON="$X402_PYTHON" TOLLGATE_REQUIRE_X402_SDK=1
else
  echo "warning: the x402 Python SDK could not be installed; its interop test is skipped" >&2
fi
# The Payment scheme's reference CLI (npm package mppx) for the discovery test (under ~/.cache).
if ! command -v npm >/dev/null 2>&1; then
  echo "npm not found; installing nodejs and npm with apt-get" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs npm || true
fi
if MPPX="$(bash tests/mppx/setup.sh)"; then
  export TOLLGATE_MPPX="$MPPX" TOLLGATE_REQUIRE_MPPX=1
else
  echo "warning: mppx could not be installed; mppx_validate_passes is skipped" >&2
fi
# Starlette + uvicorn for the decoding-upstream path tests (a venv under ~/.cache).
if STARLETTE_PYTHON="$(bash tests/upstreams/setup.sh)"; then
  export TOLLGATE_STARLETTE_PYTHON="$STARLETTE_PYTHON" TOLLGATE_REQUIRE_STARLETTE=1
else
  echo "warning: Starlette could not be installed; the decoding-upstream path tests are skipped" >&2
fi
# The official MCP Python SDK for the MCP tests: a FastMCP upstream and the SDK's client (a venv under ~/.cache).
if MCP_PYTHON="$(bash tests/mcp/setup.sh)"; then
  export TOLLGATE_MCP_PYTHON="$MCP_PYTHON" TOLLGATE_REQUIRE_MCP_SDK=1
else
  echo "warning: the MCP Python SDK could not be installed; the MCP tests are skipped" >&2
fi
# The Standard Webhooks reference library for the webhook tests' receiver (a venv under ~/.cache).
if WEBHOOKS_PYTHON="$(bash tests/webhooks/setup.sh)"; then
  export TOLLGATE_WEBHOOKS_PYTHON="$WEBHOOKS_PYTHON" TOLLGATE_REQUIRE_WEBHOOKS=1
else
  echo "warning: standardwebhooks could not be installed; the webhook tests are skipped" >&2
fi
cargo test --workspace --locked
