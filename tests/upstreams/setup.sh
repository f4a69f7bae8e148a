#!/usr/bin/env bash
# Install Starlette + uvicorn into a virtualenv under ~/.cache (idempotent), for the path
# canonicalization tests against a path-decoding upstream (tests/tests/paths.rs).
# Prints the venv's python on success.
set -euo pipefail
VENV="${TOLLGATE_STARLETTE_VENV:-$HOME/.cache/tollgate-starlette-venv}"
STARLETTE="1.10.0"
UVICORN="0.54.0"
. "$(dirname "$0")/../venv.sh"
ensure_venv "$VENV"
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('starlette') != '$STARLETTE' or m.version('uvicorn') != '$UVICORN')" 2>/dev/null; then
  "$VENV/bin/pip" install -q "starlette==$STARLETTE" "uvicorn==$UVICORN" >&2
fi
echo "$VENV/bin/python"
