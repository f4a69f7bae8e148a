#!/usr/bin/env bash
# Install the official x402 Python SDK into a virtualenv under ~/.cache (idempotent), for the
# interoperability test `official_python_sdk_pays_end_to_end` (tests/tests/x402.rs).
# Prints the venv's python on success.
set -euo pipefail
VENV="${TOLLGATE_X402_VENV:-$HOME/.cache/tollgate-x402-venv}"
VERSION="2.25.0"
. "$(dirname "$0")/../venv.sh"
ensure_venv "$VENV"
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('x402') != '$VERSION')" 2>/dev/null; then
  "$VENV/bin/pip" install -q "x402[evm,httpx]==$VERSION" >&2
fi
echo "$VENV/bin/python"
