#!/usr/bin/env bash
# Tollgate benchmark suite (issue 9): one command, one machine, ratios measured in the same run.
#
#   bash bench/run.sh
#
# Builds release binaries, installs wrk, nginx and redis-server (apt-get) if missing, runs the
# criterion micro-benchmarks, then measures with the same wrk settings:
#   1 direct upstream            2 nginx proxy_pass (keepalive)   3 gateway free route
#   4 unpaid priced route (402)  5 paid, fresh receipt/request    6 access-token drawdown
#   7 metered route (JSON usage)
#   5b/6b = 5/6 on routes with capture = "admission" (one store round trip per served request)
#   6c = 6 with a DPoP-bound token (RFC 9449): an Ed25519 proof checked and its jti spent per request
#   8 = 5 and 6 on the sqlite store (one node), synchronous = "full" and "normal"
#   9 = 6 and 7 with balance leases ([store.lease]: no Redis call per request)
#   10 = 6 and 7 with the PostgreSQL ledger of record ([ledger]: the capture scripts keep no daily
#        aggregates; a private PostgreSQL, initdb + pg_ctl, run as postgres when root)
# Gateway scenarios 3-7 use a private redis-server (unix socket, --save ""). Per scenario: req/s,
# p50/p99, CPU per request of the proxy (gateway or nginx), upstream and redis, peak RSS, Redis
# commands per request (INFO commandstats) and Redis round trips per request (MONITOR sample).
# Then RSS with 1,000 idle keep-alive connections. Prints a table, writes bench/out/ (raw data,
# table.md, chart.svg) and a copy of the chart to bench/results.svg.
#
# Knobs (environment): THREADS (2), CONNS (32), DURATION (10s), RECEIPTS (200000), UP_PORT (19000),
# NGX_PORT (18080), GW_PORT (18402), PG_PORT (18432), OUT (bench/out), IDLE_CONNS (1000), SKIP_BUILD=1,
# SKIP_CRITERION=1, CRITERION_ARGS ("--warm-up-time 1 --measurement-time 3"), QUIET_WAIT (30),
# RUST_LOG (gateway log filter, default info).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH="$ROOT/bench"
OUT=${OUT:-$BENCH/out}
THREADS=${THREADS:-2}
CONNS=${CONNS:-32}
DURATION=${DURATION:-10s}
RECEIPTS=${RECEIPTS:-200000}
UP_PORT=${UP_PORT:-19000}
NGX_PORT=${NGX_PORT:-18080}
GW_PORT=${GW_PORT:-18402}
IDLE_CONNS=${IDLE_CONNS:-1000}
PG_PORT=${PG_PORT:-18432}
CRITERION_ARGS=${CRITERION_ARGS:---warm-up-time 1 --measurement-time 3}
MERCHANT=bench-merchant
ISSUER=bench-issuer
PAID_HOST=paid.bench
TOKEN_HOST=token.bench
PAID1_HOST=paid1.bench
TOKEN1_HOST=token1.bench
CHAT_BODY='{"model":"bench","messages":[{"role":"user","content":"hello there"}],"max_tokens":8}'
export TOLLGATE_SECRET=${TOLLGATE_SECRET:-bench-secret-0123456789abcdef0123456789abcdef}
export RUST_LOG=${RUST_LOG:-info}

mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
chmod 755 "$TMP"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"
PIDS=()
T0=$(date +%s)

log() { printf '[run.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

PG_CTL=""
cleanup() {
    local pid
    if [ -n "$PG_CTL" ]; then
        as_postgres "$PG_CTL" -D "$TMP/pg/data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]:-}"; do
        [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

stop_pid() { # stop one process we started and forget it
    local pid=$1 p keep=()
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${PIDS[@]}"; do [ "$p" != "$pid" ] && keep+=("$p"); done
    PIDS=("${keep[@]:-}")
}

wait_http() { # wait until URL answers 200
    local url=$1 i
    for i in $(seq 1 100); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' "$url")" = 200 ] && return 0
        sleep 0.1
    done
    log "timed out waiting for $url"
    return 1
}

port_free() { ! (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
as_postgres() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; } # initdb refuses root

start_postgres() { # a private PostgreSQL on 127.0.0.1:$PG_PORT in $TMP/pg (fsync off: a bench)
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    if [ -z "$bin" ]; then
        apt_install postgresql
        bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
    fi
    mkdir -p "$TMP/pg"
    [ "$(id -u)" = 0 ] && chown postgres "$TMP/pg"
    as_postgres "$bin/initdb" -D "$TMP/pg/data" -A trust -U postgres >/dev/null
    PG_CTL="$bin/pg_ctl"
    as_postgres "$PG_CTL" -D "$TMP/pg/data" -l "$TMP/pg/log" -w \
        -o "-p $PG_PORT -k $TMP/pg -c listen_addresses=127.0.0.1 -c fsync=off" start >/dev/null
    log "started private PostgreSQL on 127.0.0.1:$PG_PORT ($("$bin/postgres" --version))"
}
APT_UPDATED=0
apt_install() { # apt_install PACKAGE...
    if [ "$APT_UPDATED" = 0 ]; then as_root apt-get update -qq >/dev/null; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- 1. build, tools
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "building release binaries"
    cargo build --release --locked -p tollgate -p example-upstream
fi
TOLLGATE="$ROOT/target/release/tollgate"
UPSTREAM="$ROOT/target/release/example-upstream"

command -v wrk >/dev/null || { log "installing wrk"; apt_install wrk; }
command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server; }
if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
    # policy-rc.d (or no init system) keeps the packaged service from starting
    log "installing nginx"; apt_install nginx-light || apt_install nginx
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

PY="$BENCH/.venv/bin/python"
if ! "$PY" -c 'import jwt, cryptography' 2>/dev/null; then
    log "creating bench/.venv (pyjwt, cryptography)"
    python3 -m venv "$BENCH/.venv"
    "$BENCH/.venv/bin/pip" install -q pyjwt cryptography
fi

for p in "$UP_PORT" "$NGX_PORT" "$GW_PORT"; do
    port_free "$p" || { log "port $p is in use; set UP_PORT/NGX_PORT/GW_PORT"; exit 1; }
done

# ---------------------------------------------------------------- 2. micro-benchmarks (quiet box)
CRIT_DIR="${CARGO_TARGET_DIR:-$ROOT/target}/criterion"
if [ "${SKIP_CRITERION:-0}" != 1 ]; then
    log "criterion micro-benchmarks ($CRITERION_ARGS)"
    rm -rf "$CRIT_DIR"
    # shellcheck disable=SC2086
    cargo bench --locked -p tollgate-middleware --bench hot_paths -- $CRITERION_ARGS \
        >"$OUT/criterion.txt" 2>&1 || { tail -30 "$OUT/criterion.txt" >&2; exit 1; }
fi
if [ -d "$CRIT_DIR" ]; then
    echo "{\"criterion\": $("$PY" "$BENCH/measure.py" criterion "$CRIT_DIR")}" >>"$RESULTS"
fi

# ---------------------------------------------------------------- 3. key, config, receipts
"$TOLLGATE" keygen --kid k1 --json >"$TMP/key.json"
PUB_X=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["public_jwk"]["x"])' "$TMP/key.json")
SOCK="$TMP/redis.sock"
GW_CONFIG="$OUT/tollgate-bench.toml"
cat >"$GW_CONFIG" <<EOF
# generated by bench/run.sh
listen = "127.0.0.1:$GW_PORT"
merchant = "$MERCHANT"
shutdown_grace_secs = 2

[receipts]
clock_skew_secs = 30
max_lifetime_secs = 3600

[currencies.USD]
scale = 6

[[issuers]]
id = "$ISSUER"
keys = [{ kty = "OKP", crv = "Ed25519", x = "$PUB_X", kid = "k1" }]

[agent]
dpop = "optional"

[store]
kind = "redis"
url = "unix://$SOCK"
timeout_ms = 500

# Scenarios 4 and 5: fixed price, paid per request with a receipt (selected by Host).
[[routes]]
id = "paid"
host = "$PAID_HOST"
path = "/free/hello"
methods = ["GET"]
upstream = "http://127.0.0.1:$UP_PORT"
price = { amount = "0.01", currency = "USD" }

# Scenario 6: fixed price drawn from a prepaid balance with an access token (selected by Host).
[[routes]]
id = "token"
host = "$TOKEN_HOST"
path = "/free/hello"
methods = ["GET"]
upstream = "http://127.0.0.1:$UP_PORT"
price = { amount = "0.001", currency = "USD" }

# Scenarios 5b and 6b: the same, captured at admission (one store round trip).
[[routes]]
id = "paid1"
host = "$PAID1_HOST"
path = "/free/hello"
methods = ["GET"]
upstream = "http://127.0.0.1:$UP_PORT"
price = { amount = "0.01", currency = "USD" }
capture = "admission"

[[routes]]
id = "token1"
host = "$TOKEN1_HOST"
path = "/free/hello"
methods = ["GET"]
upstream = "http://127.0.0.1:$UP_PORT"
price = { amount = "0.001", currency = "USD" }
capture = "admission"

# Scenario 7: metered, usage read from the JSON answer.
[[routes]]
id = "chat"
path = "/v1/chat/completions"
methods = ["POST"]
upstream = "http://127.0.0.1:$UP_PORT"
price = { currency = "USD", reserve = "0.01", meters = [{ unit = "t", usage = "json:/usage/total_tokens", price = "0.000001" }] }

# Scenario 3.
[[routes]]
id = "free"
path = "/free"
upstream = "http://127.0.0.1:$UP_PORT"
price = "free"
EOF
"$TOLLGATE" check --config "$GW_CONFIG" >/dev/null

gen_receipts() { # gen_receipts FILE COUNT JTI_PREFIX [AMOUNT] [KIND]
    "$PY" "$BENCH/gen_receipts.py" "$TMP/key.json" "$1" "$2" "$ISSUER" "$MERCHANT" "$3" \
        "${4:-0.01}" "USD" "${5:-payment}"
}
log "signing $RECEIPTS receipts"
RUN_ID="$(date +%s)-$$"
gen_receipts "$TMP/receipts.txt" "$RECEIPTS" "run-$RUN_ID"
gen_receipts "$TMP/receipts1.txt" "$RECEIPTS" "run1-$RUN_ID"
gen_receipts "$TMP/sample.txt" 200 "sample-$RUN_ID" 2>/dev/null
gen_receipts "$TMP/topup.txt" 1 "topup-$RUN_ID" 100000 topup 2>/dev/null

# ---------------------------------------------------------------- 4. helpers
cpu_idle_pct() { # idle % of all CPUs over 1 s
    local a b
    read -r _ a1 a2 a3 a4 a5 a6 a7 a8 _ </proc/stat
    a=$((a1 + a2 + a3 + a4 + a5 + a6 + a7 + a8)); local ai=$((a4 + a5))
    sleep 1
    read -r _ b1 b2 b3 b4 b5 b6 b7 b8 _ </proc/stat
    b=$((b1 + b2 + b3 + b4 + b5 + b6 + b7 + b8)); local bi=$((b4 + b5))
    echo $(((bi - ai) * 100 / (b - a)))
}

wait_quiet() { # wait (up to QUIET_WAIT s) until the machine is >= 90% idle
    local idle i
    for i in $(seq 1 "${QUIET_WAIT:-30}"); do
        idle=$(cpu_idle_pct)
        [ "$idle" -ge 90 ] && break
        [ "$i" = 1 ] && log "machine busy (idle ${idle}%), waiting up to ${QUIET_WAIT:-30}s"
    done
    IDLE_BEFORE=$idle
}

REDIS_PID=""
snap() { # snap FILE PROXY_PID
    local args=("proxy=$2" "upstream=$UP_PID")
    [ -n "$REDIS_PID" ] && args+=("redis=$REDIS_PID" --redis "$SOCK")
    "$PY" "$BENCH/measure.py" snap "$1" "${args[@]}"
}

# run_wrk SCENARIO URL PROXY_PID [VAR=VALUE ...]   (wrk.lua settings: BENCH_HOST, BENCH_RECEIPTS,
# BENCH_AUTH, BENCH_METHOD, BENCH_BODY, BENCH_EXPECT_PR)
run_wrk() {
    local name=$1 url=$2 pid=$3
    shift 3
    wait_quiet
    log "wrk: $name (cpu idle before: ${IDLE_BEFORE}%)"
    snap "$TMP/before.json" "$pid"
    env BENCH_IDLE="$IDLE_BEFORE" BENCH_SCENARIO="$name" BENCH_OUT="$RESULTS" BENCH_THREADS="$THREADS" "$@" \
        wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$BENCH/wrk.lua" "$url" \
        >"$OUT/wrk-$name.txt" 2>&1 || { cat "$OUT/wrk-$name.txt" >&2; return 1; }
    snap "$TMP/after.json" "$pid"
    "$PY" "$BENCH/measure.py" diff "$name" "$TMP/before.json" "$TMP/after.json" "$RESULTS"
}

warmup() { # warmup URL [wrk.lua env...]: 2 s, same settings, not recorded
    local url=$1
    shift
    env BENCH_THREADS="$THREADS" "$@" wrk -t"$THREADS" -c"$CONNS" -d2s -s "$BENCH/wrk.lua" "$url" >/dev/null 2>&1
}

GW_PID=""
start_gateway() { # a fresh gateway per scenario, so its peak RSS is that scenario's
    [ -n "$GW_PID" ] && stop_pid "$GW_PID"
    "$TOLLGATE" run --config "$GW_CONFIG" >>"$OUT/gateway.log" 2>&1 &
    GW_PID=$!
    PIDS+=("$GW_PID")
    wait_http "http://127.0.0.1:$GW_PORT/readyz"
}

# rt_sample SCENARIO N CURL_ARGS...: N sequential requests under `redis-cli monitor`; counts the
# Redis round trips (top-level commands) and the commands run inside scripts, per request.
# CURL_ARGS may contain @RECEIPT@, replaced by the next unused receipt of sample.txt.
SAMPLE_LINE=0
rt_sample() {
    local name=$1 n=$2 i code mon
    shift 2
    redis-cli -s "$SOCK" monitor >"$TMP/monitor.txt" 2>&1 &
    mon=$!
    sleep 0.3
    local -A st=()
    for i in $(seq 1 "$n"); do
        local args=() a
        for a in "$@"; do
            if [[ $a == *@RECEIPT@* ]]; then
                SAMPLE_LINE=$((SAMPLE_LINE + 1))
                a=${a//@RECEIPT@/$(sed -n "${SAMPLE_LINE}p" "$TMP/sample.txt")}
            fi
            args+=("$a")
        done
        code=$(curl -s -o /dev/null -w '%{http_code}' "${args[@]}")
        st[$code]=$((${st[$code]:-0} + 1))
    done
    sleep 0.3
    kill "$mon" 2>/dev/null || true
    wait "$mon" 2>/dev/null || true
    local statuses="" k
    for k in "${!st[@]}"; do statuses+="\"$k\":${st[$k]},"; done
    echo "{\"rt_sample\": \"$name\", \"requests\": $n, \"statuses\": {${statuses%,}}, \"monitor\": $("$PY" "$BENCH/measure.py" monitor "$TMP/monitor.txt")}" >>"$RESULTS"
}

# ---------------------------------------------------------------- 5. upstream, nginx
log "starting upstream on 127.0.0.1:$UP_PORT"
"$UPSTREAM" "127.0.0.1:$UP_PORT" >"$OUT/upstream.log" 2>&1 &
UP_PID=$!
PIDS+=("$UP_PID")
wait_http "http://127.0.0.1:$UP_PORT/free/hello"

warmup "http://127.0.0.1:$UP_PORT/free/hello"
run_wrk 1_direct_upstream "http://127.0.0.1:$UP_PORT/free/hello" "$UP_PID"

NGX_PREFIX="$TMP/nginx"
mkdir -p "$NGX_PREFIX"
sed -e "s#@PREFIX@#$NGX_PREFIX#g" -e "s#@LISTEN@#127.0.0.1:$NGX_PORT#g" -e "s#@UPSTREAM@#127.0.0.1:$UP_PORT#g" \
    "$BENCH/nginx.conf" >"$NGX_PREFIX/nginx.conf"
cp "$NGX_PREFIX/nginx.conf" "$OUT/nginx.conf"
NGX_CMD=("$NGINX" -p "$NGX_PREFIX" -e "$NGX_PREFIX/error.log" -c "$NGX_PREFIX/nginx.conf")
if [ "$(id -u)" = 0 ]; then # run unprivileged
    chown -R nobody "$NGX_PREFIX"
    NGX_CMD=(setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups -- "${NGX_CMD[@]}")
fi
log "starting nginx on 127.0.0.1:$NGX_PORT ($(nginx -v 2>&1))"
"${NGX_CMD[@]}" >"$OUT/nginx.log" 2>&1 &
NGX_PID=$!
PIDS+=("$NGX_PID")
wait_http "http://127.0.0.1:$NGX_PORT/free/hello"
warmup "http://127.0.0.1:$NGX_PORT/free/hello"
run_wrk 2_nginx_proxy "http://127.0.0.1:$NGX_PORT/free/hello" "$NGX_PID"
IDLE_NGX=$("$PY" "$BENCH/idle_conns.py" 127.0.0.1 "$NGX_PORT" /free/hello "$NGX_PID" "$IDLE_CONNS")
echo "{\"idle_conns\": \"nginx\", \"result\": $IDLE_NGX}" >>"$RESULTS"
stop_pid "$NGX_PID"
cp "$NGX_PREFIX/error.log" "$OUT/nginx-error.log" 2>/dev/null || true

# ---------------------------------------------------------------- 6. redis, gateway scenarios
log "starting private redis-server on unix:$SOCK"
redis-server --port 0 --unixsocket "$SOCK" --unixsocketperm 700 --save "" --appendonly no \
    --dir "$TMP" >"$OUT/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
for _ in $(seq 1 50); do [ -S "$SOCK" ] && break; sleep 0.1; done
redis-cli -s "$SOCK" ping >/dev/null
: >"$OUT/gateway.log"
GW="http://127.0.0.1:$GW_PORT"

# 3. free route
start_gateway
warmup "$GW/free/hello"
run_wrk 3_gateway_free "$GW/free/hello" "$GW_PID"
rt_sample 3_gateway_free 50 "$GW/free/hello"

# 4. unpaid priced route: every answer is a 402
start_gateway
warmup "$GW/free/hello" BENCH_HOST="$PAID_HOST"
run_wrk 4_unpaid_402 "$GW/free/hello" "$GW_PID" BENCH_HOST="$PAID_HOST"
rt_sample 4_unpaid_402 50 -H "Host: $PAID_HOST" "$GW/free/hello"

# 5. paid: a fresh single-use receipt per request
start_gateway
# checks: a receipt is accepted once, then refused as replayed
SAMPLE_LINE=$((SAMPLE_LINE + 1))
R1=$(sed -n "${SAMPLE_LINE}p" "$TMP/sample.txt")
code=$(curl -s -o /dev/null -D "$TMP/hdr" -w '%{http_code}' -H "Host: $PAID_HOST" -H "Authorization: Payment $R1" "$GW/free/hello")
[ "$code" = 200 ] && grep -qi '^payment-response:' "$TMP/hdr" || { log "paid check: got $code"; exit 1; }
curl -s -o "$TMP/body" -H "Host: $PAID_HOST" -H "Authorization: Payment $R1" "$GW/free/hello"
grep -q receipt_replayed "$TMP/body" || { log "replay check failed: $(cat "$TMP/body")"; exit 1; }
warmup "$GW/free/hello" # free route: warms the gateway and its upstream pool without spending receipts
run_wrk 5_paid_receipt "$GW/free/hello" "$GW_PID" BENCH_HOST="$PAID_HOST" BENCH_RECEIPTS="$TMP/receipts.txt"
rt_sample 5_paid_receipt 50 -H "Host: $PAID_HOST" -H "Authorization: Payment @RECEIPT@" "$GW/free/hello"

# 5b. the same, captured at admission
start_gateway
warmup "$GW/free/hello"
run_wrk 5b_paid_receipt_admission "$GW/free/hello" "$GW_PID" BENCH_HOST="$PAID1_HOST" BENCH_RECEIPTS="$TMP/receipts1.txt"
rt_sample 5b_paid_receipt_admission 50 -H "Host: $PAID1_HOST" -H "Authorization: Payment @RECEIPT@" "$GW/free/hello"

# 6. access token drawing down a prepaid balance (top-up of 100,000 USD: 10^8 requests at 0.001)
start_gateway
curl -s -o "$TMP/topup.json" -w '%{http_code}' -X POST -H "Authorization: Payment $(head -1 "$TMP/topup.txt")" \
    "$GW/tollgate/v1/topup" >"$TMP/topup.code"
[ "$(cat "$TMP/topup.code")" = 200 ] || { log "top-up failed: $(cat "$TMP/topup.json")"; exit 1; }
TOKEN=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$TMP/topup.json")
log "top-up: $("$PY" -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["payer"], d["credited"], d["currency"], "balance", d["balance"])' "$TMP/topup.json")"
warmup "$GW/free/hello" BENCH_HOST="$TOKEN_HOST" BENCH_AUTH="Bearer $TOKEN"
run_wrk 6_token_drawdown "$GW/free/hello" "$GW_PID" BENCH_HOST="$TOKEN_HOST" BENCH_AUTH="Bearer $TOKEN" BENCH_EXPECT_PR=1
rt_sample 6_token_drawdown 50 -H "Host: $TOKEN_HOST" -H "Authorization: Bearer $TOKEN" "$GW/free/hello"

# 6b. the same, captured at admission
start_gateway
warmup "$GW/free/hello" BENCH_HOST="$TOKEN1_HOST" BENCH_AUTH="Bearer $TOKEN"
run_wrk 6b_token_drawdown_admission "$GW/free/hello" "$GW_PID" BENCH_HOST="$TOKEN1_HOST" BENCH_AUTH="Bearer $TOKEN" BENCH_EXPECT_PR=1
rt_sample 6b_token_drawdown_admission 50 -H "Host: $TOKEN1_HOST" -H "Authorization: Bearer $TOKEN" "$GW/free/hello"

# 6c. the same as 6 with a DPoP-bound token: a fresh Ed25519 proof per request (checked, its jti
# spent in Redis). Proofs are made just before the run (they are good for dpop_max_age_secs).
"$PY" "$BENCH/gen_dpop.py" "$TMP/dpop.key" key
DPOP_TOPUP=$("$PY" "$BENCH/gen_dpop.py" "$TMP/dpop.key" one POST "http://127.0.0.1:$GW_PORT/tollgate/v1/topup")
gen_receipts "$TMP/topup-dpop.txt" 1 "topup-dpop-$RUN_ID" 100000 topup 2>/dev/null
curl -s -o "$TMP/topup-dpop.json" -w '%{http_code}' -X POST -H "DPoP: $DPOP_TOPUP" \
    -H "Authorization: Payment $(head -1 "$TMP/topup-dpop.txt")" "$GW/tollgate/v1/topup" >"$TMP/topup.code"
[ "$(cat "$TMP/topup.code")" = 200 ] || { log "DPoP top-up failed: $(cat "$TMP/topup-dpop.json")"; exit 1; }
DTOKEN=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$TMP/topup-dpop.json")
start_gateway
"$PY" "$BENCH/gen_dpop.py" "$TMP/dpop.key" many "$TMP/dpop-warm.txt" 2000 "$DTOKEN" "http://$TOKEN_HOST/free/hello"
warmup "$GW/free/hello" BENCH_HOST="$TOKEN_HOST" BENCH_AUTH="DPoP $DTOKEN" BENCH_DPOP=1 BENCH_RECEIPTS="$TMP/dpop-warm.txt"
"$PY" "$BENCH/gen_dpop.py" "$TMP/dpop.key" many "$TMP/dpop.txt" "$RECEIPTS" "$DTOKEN" "http://$TOKEN_HOST/free/hello"
run_wrk 6c_token_dpop "$GW/free/hello" "$GW_PID" BENCH_HOST="$TOKEN_HOST" BENCH_AUTH="DPoP $DTOKEN" \
    BENCH_DPOP=1 BENCH_RECEIPTS="$TMP/dpop.txt" BENCH_EXPECT_PR=1

# 7. metered route, usage from the JSON answer, drawn from the same balance
start_gateway
warmup "$GW/v1/chat/completions" BENCH_METHOD=POST BENCH_BODY="$CHAT_BODY" BENCH_AUTH="Bearer $TOKEN"
run_wrk 7_metered_json "$GW/v1/chat/completions" "$GW_PID" BENCH_METHOD=POST BENCH_BODY="$CHAT_BODY" \
    BENCH_AUTH="Bearer $TOKEN" BENCH_EXPECT_PR=1
rt_sample 7_metered_json 50 -X POST -H "Content-Type: application/json" -H "Authorization: Bearer $TOKEN" \
    --data "$CHAT_BODY" "$GW/v1/chat/completions"
curl -s -H "Authorization: Bearer $TOKEN" "$GW/tollgate/v1/balance" >"$OUT/balance-after.json" || true

# 9. balance leases ([store.lease]): scenarios 6 and 7 with no Redis call per request (each
# replica holds a slice of the payer's balance and records the charges in batches).
REDIS_CONFIG=$GW_CONFIG
GW_CONFIG="$OUT/tollgate-bench-lease.toml"
"$PY" - "$REDIS_CONFIG" "$GW_CONFIG" <<'PYEOF'
import sys
src, dst = sys.argv[1:]
text = open(src).read()
assert "\n[store]\n" in text, "no [store] section in the bench config"
text = text.replace("\n[store]\n", "\n[store.lease]\nrequests = 256\n\n[store]\n", 1)
open(dst, "w").write(text)
PYEOF
"$TOLLGATE" check --config "$GW_CONFIG" >/dev/null
start_gateway
warmup "$GW/free/hello" BENCH_HOST="$TOKEN_HOST" BENCH_AUTH="Bearer $TOKEN"
run_wrk 9_lease_token_drawdown "$GW/free/hello" "$GW_PID" BENCH_HOST="$TOKEN_HOST" BENCH_AUTH="Bearer $TOKEN" BENCH_EXPECT_PR=1
rt_sample 9_lease_token_drawdown 50 -H "Host: $TOKEN_HOST" -H "Authorization: Bearer $TOKEN" "$GW/free/hello"
run_wrk 9_lease_metered_json "$GW/v1/chat/completions" "$GW_PID" BENCH_METHOD=POST BENCH_BODY="$CHAT_BODY" \
    BENCH_AUTH="Bearer $TOKEN" BENCH_EXPECT_PR=1
stop_pid "$GW_PID" # records the leases' last charges and returns them
GW_PID=""
GW_CONFIG=$REDIS_CONFIG

# 10. the ledger of record ([ledger], a private PostgreSQL): scenarios 6 and 7 with the capture
# scripts keeping no daily aggregates; the drainer's own Redis commands (XRANGE, XTRIM, ...) are
# in the counts.
start_postgres
GW_CONFIG="$OUT/tollgate-bench-ledger.toml"
"$PY" - "$REDIS_CONFIG" "$GW_CONFIG" "$PG_PORT" <<'PYEOF'
import sys
src, dst, port = sys.argv[1:]
text = open(src).read().rstrip("\n")
open(dst, "w").write(text + f'\n\n[ledger]\nurl = "postgres://postgres@127.0.0.1:{port}/postgres"\n')
PYEOF
"$TOLLGATE" check --config "$GW_CONFIG" >/dev/null
start_gateway
# The drainer first moves every earlier scenario's events (hundreds of thousands) into
# PostgreSQL: measured once it has caught up, as a deployment whose drainer keeps up.
log "waiting for the drainer to catch up on the earlier scenarios' events"
QUIET_WAIT=900 wait_quiet
warmup "$GW/free/hello" BENCH_HOST="$TOKEN_HOST" BENCH_AUTH="Bearer $TOKEN"
run_wrk 10_ledger_token_drawdown "$GW/free/hello" "$GW_PID" BENCH_HOST="$TOKEN_HOST" BENCH_AUTH="Bearer $TOKEN" BENCH_EXPECT_PR=1
rt_sample 10_ledger_token_drawdown 50 -H "Host: $TOKEN_HOST" -H "Authorization: Bearer $TOKEN" "$GW/free/hello"
run_wrk 10_ledger_metered_json "$GW/v1/chat/completions" "$GW_PID" BENCH_METHOD=POST BENCH_BODY="$CHAT_BODY" \
    BENCH_AUTH="Bearer $TOKEN" BENCH_EXPECT_PR=1
stop_pid "$GW_PID"
GW_PID=""
GW_CONFIG=$REDIS_CONFIG

# RSS with 1,000 open idle keep-alive connections (fresh gateway, free route)
start_gateway
IDLE_GW=$("$PY" "$BENCH/idle_conns.py" 127.0.0.1 "$GW_PORT" /free/hello "$GW_PID" "$IDLE_CONNS")
echo "{\"idle_conns\": \"gateway\", \"result\": $IDLE_GW}" >>"$RESULTS"
log "idle connections: gateway $IDLE_GW; nginx $IDLE_NGX"
stop_pid "$GW_PID"
GW_PID=""
stop_pid "$REDIS_PID"
REDIS_PID=""

# ---------------------------------------------------------------- 8. the sqlite store (one node)
# The same routes on `[store] kind = "sqlite"` (a file in $TMP), once per durability setting:
# `full` syncs every commit (the default), `normal` only at checkpoints. A fresh database each
# time, so the receipts and the top-up are unspent there.
REDIS_CONFIG=$GW_CONFIG
for SYNC in full normal; do
    DB="$TMP/bench-$SYNC.db"
    rm -f "$DB" "$DB-wal" "$DB-shm"
    GW_CONFIG="$OUT/tollgate-bench-sqlite-$SYNC.toml"
    "$PY" - "$REDIS_CONFIG" "$GW_CONFIG" "$DB" "$SYNC" <<'PYEOF'
import re, sys
src, dst, db, sync = sys.argv[1:]
text = open(src).read()
store = f'[store]\nkind = "sqlite"\npath = "{db}"\nsynchronous = "{sync}"\n'
text, n = re.subn(r"\[store\]\n(?:[a-z_]+ = .*\n)+", store, text, count=1)
assert n == 1, "no [store] section in the bench config"
open(dst, "w").write(text)
PYEOF
    start_gateway
    curl -s -o "$TMP/topup-s.json" -w '%{http_code}' -X POST -H "Authorization: Payment $(head -1 "$TMP/topup.txt")" \
        "$GW/tollgate/v1/topup" >"$TMP/topup.code"
    [ "$(cat "$TMP/topup.code")" = 200 ] || { log "sqlite top-up failed: $(cat "$TMP/topup-s.json")"; exit 1; }
    STOKEN=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["access_token"])' "$TMP/topup-s.json")
    warmup "$GW/free/hello"
    run_wrk "8_sqlite_receipt_$SYNC" "$GW/free/hello" "$GW_PID" BENCH_HOST="$PAID_HOST" BENCH_RECEIPTS="$TMP/receipts.txt"
    run_wrk "8_sqlite_token_$SYNC" "$GW/free/hello" "$GW_PID" BENCH_HOST="$TOKEN_HOST" BENCH_AUTH="Bearer $STOKEN" BENCH_EXPECT_PR=1
    log "sqlite ($SYNC): $(du -k "$DB" "$DB-wal" 2>/dev/null | awk '{s += $1} END {print s}') KiB on disk after the load"
done
stop_pid "$GW_PID"
GW_PID=""
GW_CONFIG=$REDIS_CONFIG

# ---------------------------------------------------------------- 7. report
echo "{\"meta\": {\"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"commit\": \"$(git rev-parse HEAD 2>/dev/null || echo unknown)\", \"nproc\": $(nproc), \"cpu\": \"$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//;s/"//g')\", \"wrk\": \"-t$THREADS -c$CONNS -d$DURATION\", \"receipts\": $RECEIPTS, \"rust_log\": \"$RUST_LOG\", \"seconds\": $(($(date +%s) - T0))}}" >>"$RESULTS"
"$PY" "$BENCH/report.py" "$RESULTS" "$OUT" | tee "$OUT/table.md"
cp "$OUT/chart.svg" "$BENCH/results.svg"
log "done in $(($(date +%s) - T0)) s; raw results in $RESULTS, chart in $OUT/chart.svg and bench/results.svg"
