#!/usr/bin/env bash
# Install the official MCP Python SDK (PyPI `mcp`, with uvicorn) into a virtualenv under
# ~/.cache (idempotent), for the MCP tests (tests/tests/mcp.rs): a FastMCP upstream
# (tests/mcp/upstream.py) and the SDK's client (tests/mcp/client.py). Prints the venv's python.
set -euo pipefail
VENV="${TOLLGATE_MCP_VENV:-$HOME/.cache/tollgate-mcp-venv}"
MCP="1.30.0"
. "$(dirname "$0")/../venv.sh"
ensure_venv "$VENV"
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('mcp') != '$MCP')" 2>/dev/null; then
  "$VENV/bin/pip" install -q "mcp==$MCP" >&2
fi
echo "$VENV/bin/python"
