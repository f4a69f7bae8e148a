# Sourced by the tests' setup scripts (tests/x402_sdk/setup.sh, tests/upstreams/setup.sh,
# tests/mcp/setup.sh): `ensure_venv DIR` makes a Python virtualenv at DIR if there is none,
# installing Debian's python3-venv with apt-get when the machine lacks venv support;
# `ensure_pinned DIR NAME==VERSION...` installs those exact versions unless they are there.
# Output goes to stderr.
ensure_venv() {
  local venv="$1"
  if [ -x "$venv/bin/python" ]; then
    return 0
  fi
  if ! python3 -m venv "$venv" >&2; then
    echo "python3 venv support missing; installing python3-venv with apt-get" >&2
    local sudo=""
    if [ "$(id -u)" != "0" ]; then sudo="sudo"; fi
    rm -rf "$venv"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq python3-venv >&2
    python3 -m venv "$venv" >&2
  fi
}

ensure_pinned() {
  local venv="$1"
  shift
  ensure_venv "$venv"
  local pkg
  for pkg in "$@"; do
    if ! "$venv/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('${pkg%%==*}') != '${pkg##*==}')" 2>/dev/null; then
      "$venv/bin/pip" install -q "$@" >&2
      return 0
    fi
  done
}
