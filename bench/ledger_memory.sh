#!/usr/bin/env bash
# Redis memory retained per paid request with the PostgreSQL ledger of record (issue 16).
#
#   bash bench/ledger_memory.sh
#
# Starts a private redis-server and PostgreSQL (the test harness: unix socket / loopback port,
# temp dirs), runs the drainer, loads REQUESTS token-paid requests through the store API the
# engine calls (hold + capture_hold: the same keys and arguments as a gateway request, without
# the HTTP path, which would take minutes on 2 shared cores and adds nothing to Redis), waits
# for the drain and WAIT_SECS more (the settled markers expire), then reports Redis
# `used_memory` after minus before, per request. Then RECEIPTS receipt-paid requests, whose
# single-use marker (state key + owner key, kept until the receipt's exp) is reported apart.
# Installs redis-server and postgresql with apt-get if missing. Writes bench/out/ledger_memory.json.
#
# Knobs (environment): REQUESTS (100000), RECEIPTS (20000), WAIT_SECS (120), OUT (bench/out),
# NO_LEDGER=1 (the comparison: no ledger of record, aggregates written, streams never trimmed;
# results in ledger_memory_no_ledger.json). SOAK=1 instead runs the flatness check: SOAK_RATE
# (500) token-paid requests/s for SOAK_SECS (1200), used_memory sampled every 30 s, samples from
# 180 s on compared with their mean (results in ledger_soak.json).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${OUT:-bench/out}
mkdir -p "$OUT"

log() { printf '[ledger_memory.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server
fi
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    log "installing postgresql"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql
fi

if [ -n "${SOAK:-}" ]; then
    log "soak: ${SOAK_RATE:-500} requests/s for ${SOAK_SECS:-1200} s"
    LEDGER_SOAK_SECS=${SOAK_SECS:-1200} LEDGER_SOAK_RATE=${SOAK_RATE:-500} \
    LEDGER_BENCH_OUT="$(pwd)/$OUT/ledger_soak.json" \
        cargo test --locked -q -p tollgate-e2e --test ledger_memory -- --ignored --nocapture \
        redis_memory_is_flat_under_a_fixed_rate
    log "results in $OUT/ledger_soak.json"
    exit 0
fi
log "requests=${REQUESTS:-100000} receipts=${RECEIPTS:-20000} wait=${WAIT_SECS:-120}s (about $(( ${WAIT_SECS:-120} + 95 )) s of waiting, plus the load)"
if [ -n "${NO_LEDGER:-}" ]; then export LEDGER_BENCH_NO_LEDGER=1; fi
LEDGER_BENCH_REQUESTS=${REQUESTS:-100000} \
LEDGER_BENCH_RECEIPTS=${RECEIPTS:-20000} \
LEDGER_BENCH_WAIT_SECS=${WAIT_SECS:-120} \
LEDGER_BENCH_OUT="$(pwd)/$OUT/ledger_memory${NO_LEDGER:+_no_ledger}.json" \
    cargo test --locked -q -p tollgate-e2e --test ledger_memory -- --ignored --nocapture \
    redis_bytes_retained_per_paid_request
log "results in $OUT/ledger_memory${NO_LEDGER:+_no_ledger}.json"
