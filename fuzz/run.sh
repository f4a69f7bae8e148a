#!/usr/bin/env bash
# Fuzz every target for a bounded time each (default 60 s): `bash fuzz/run.sh [SECONDS]`.
# cargo-fuzz needs nightly features; the machine's stable toolchain is used with
# RUSTC_BOOTSTRAP=1 (no other toolchain can be installed here). Crashes land in
# fuzz/artifacts/<target>/ and must become regression tests.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
for target in credential receipt challenge config usage path; do
  echo "== $target (${SECONDS_EACH}s)"
  cargo fuzz run "$target" -- -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 2>&1 | grep -E "^(#[0-9]+.*DONE|Done|==[0-9]+==|SUMMARY|thread .* panicked)" || true
  if ls "artifacts/$target"/crash-* >/dev/null 2>&1; then
    echo "CRASH in $target: see fuzz/artifacts/$target" >&2
    exit 1
  fi
done
echo "fuzz: all targets ran ${SECONDS_EACH}s without a crash"
