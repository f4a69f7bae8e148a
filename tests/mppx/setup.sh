#!/usr/bin/env bash
# Install the Payment scheme's reference CLI (npm package `mppx`) under ~/.cache (idempotent), for
# the discovery test `mppx_validate_passes` (tests/tests/discovery.rs). Prints the CLI's path on
# success. mppx 0.11.0 declares viem as a peer whose own optional peer wants a newer mppx, so npm
# is told to accept the declared peers as they are (--legacy-peer-deps) and viem is pinned.
set -euo pipefail
DIR="${TOLLGATE_MPPX_DIR:-$HOME/.cache/tollgate-mppx}"
MPPX="0.11.0"
VIEM="2.57.20"
command -v npm >/dev/null 2>&1 || { echo "npm not found" >&2; exit 1; }
BIN="$DIR/node_modules/.bin/mppx"
if [ ! -x "$BIN" ] || [ "$(node -p "require('$DIR/node_modules/mppx/package.json').version" 2>/dev/null)" != "$MPPX" ]; then
  mkdir -p "$DIR"
  [ -f "$DIR/package.json" ] || echo '{"name": "tollgate-mppx", "private": true}' > "$DIR/package.json"
  (cd "$DIR" && npm install --silent --no-audit --no-fund --legacy-peer-deps "mppx@$MPPX" "viem@$VIEM" >&2)
fi
"$BIN" --version >/dev/null 2>&1 || { echo "mppx does not run" >&2; exit 1; }
echo "$BIN"
