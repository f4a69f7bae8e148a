#!/usr/bin/env bash
# Install the official MCP Python SDK (PyPI `mcp`, with uvicorn) into a virtualenv under
# ~/.cache (idempotent), for the MCP tests (tests/tests/mcp.rs): a FastMCP upstream
# (tests/mcp/upstream.py) and the SDK's client (tests/mcp/client.py). Prints the venv's python.
set -euo pipefail
VENV="${TOLLGATE_MCP_VENV:-$HOME/.cache/tollgate-mcp-venv}"
. "$(dirname "$0")/../venv.sh"
ensure_pinned "$VENV" "mcp==1.30.0"
echo "$VENV/bin/python"
