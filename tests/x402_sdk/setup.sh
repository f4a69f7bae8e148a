#!/usr/bin/env bash
# Install the official x402 Python SDK into a virtualenv under ~/.cache (idempotent), for the
# interoperability test `official_python_sdk_pays_end_to_end` (tests/tests/x402.rs).
# Prints the venv's python on success.
set -euo pipefail
VENV="${TOLLGATE_X402_VENV:-$HOME/.cache/tollgate-x402-venv}"
VERSION="2.25.0"
if [ ! -x "$VENV/bin/python" ]; then
  if ! python3 -m venv "$VENV" >&2; then
    # Debian ships venv support separately.
    echo "python3 venv support missing; installing python3-venv with apt-get" >&2
    SUDO=""
    if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
    rm -rf "$VENV"
    $SUDO apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv >&2
    python3 -m venv "$VENV" >&2
  fi
fi
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('x402') != '$VERSION')" 2>/dev/null; then
  "$VENV/bin/pip" install -q "x402[evm,httpx]==$VERSION" >&2
fi
echo "$VENV/bin/python"
