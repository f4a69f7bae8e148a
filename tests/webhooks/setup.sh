#!/usr/bin/env bash
# Install the Standard Webhooks reference library (PyPI `standardwebhooks`) into a virtualenv
# under ~/.cache (idempotent), for the webhook tests (tests/tests/webhooks.rs): the receiver
# (tests/webhooks/receiver.py) verifies every delivery's signature with it. Prints the venv's
# python.
set -euo pipefail
VENV="${TOLLGATE_WEBHOOKS_VENV:-$HOME/.cache/tollgate-webhooks-venv}"
. "$(dirname "$0")/../venv.sh"
ensure_pinned "$VENV" "standardwebhooks==1.0.0"
echo "$VENV/bin/python"
