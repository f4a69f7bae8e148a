#!/usr/bin/env bash
# Install Starlette + uvicorn into a virtualenv under ~/.cache (idempotent), for the path
# canonicalization tests against a path-decoding upstream (tests/tests/paths.rs).
# Prints the venv's python on success.
set -euo pipefail
VENV="${TOLLGATE_STARLETTE_VENV:-$HOME/.cache/tollgate-starlette-venv}"
STARLETTE="1.10.0"
UVICORN="0.54.0"
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
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('starlette') != '$STARLETTE' or m.version('uvicorn') != '$UVICORN')" 2>/dev/null; then
  "$VENV/bin/pip" install -q "starlette==$STARLETTE" "uvicorn==$UVICORN" >&2
fi
echo "$VENV/bin/python"
