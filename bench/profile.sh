#!/usr/bin/env bash
# Profile the gateway under callgrind (perf has no hardware counters in this VM) for the
# scenarios bench/run.sh measures: free route, paid receipt, access-token drawdown.
#
#   bash bench/profile.sh            (after bench/run.sh built target/release/*)
#
# The gateway runs under `valgrind --tool=callgrind` (~50x slower), driven by wrk with 4
# connections for PROFILE_SECS (10) per scenario, one gateway per scenario; the annotated
# inclusive costs go to bench/out/profile-<scenario>.txt, instructions per request to
# bench/out/profile-<scenario>-per-request.txt. Scenarios: free, paid (receipt), token (drawdown),
# lease (drawdown from a balance lease, [store.lease]). Knobs: UP_PORT (19100), GW_PORT (18502),
# PROFILE_ONLY ("free paid token lease": the scenarios to run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BENCH="$ROOT/bench"
OUT=${OUT:-$BENCH/out}
UP_PORT=${UP_PORT:-19100}
GW_PORT=${GW_PORT:-18502}
SECS=${PROFILE_SECS:-10}
PY="$BENCH/.venv/bin/python"
TOLLGATE="$ROOT/target/release/tollgate"
export TOLLGATE_SECRET=${TOLLGATE_SECRET:-bench-secret-0123456789abcdef0123456789abcdef}
export RUST_LOG=${RUST_LOG:-info}
command -v valgrind >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null
mkdir -p "$OUT"
TMP=$(mktemp -d /tmp/tollgate-prof.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT
log() { printf '[profile.sh %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

"$TOLLGATE" keygen --kid k1 --json >"$TMP/key.json"
PUB_X=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["public_jwk"]["x"])' "$TMP/key.json")
SOCK="$TMP/redis.sock"
cat >"$TMP/gw.toml" <<EOF
listen = "127.0.0.1:$GW_PORT"
merchant = "bench-merchant"
shutdown_grace_secs = 2
[currencies.USD]
scale = 6
[[issuers]]
id = "bench-issuer"
keys = [{ kty = "OKP", crv = "Ed25519", x = "$PUB_X", kid = "k1" }]
[store]
kind = "redis"
url = "unix://$SOCK"
[[routes]]
id = "paid"
host = "paid.bench"
path = "/free/hello"
upstream = "http://127.0.0.1:$UP_PORT"
price = { amount = "0.01", currency = "USD" }
[[routes]]
id = "token"
host = "token.bench"
path = "/free/hello"
upstream = "http://127.0.0.1:$UP_PORT"
price = { amount = "0.001", currency = "USD" }
[[routes]]
id = "free"
path = "/free"
upstream = "http://127.0.0.1:$UP_PORT"
price = "free"
EOF
# The lease scenario: the same file with balance leases.
sed 's/^\[store\]$/[store.lease]\nrequests = 256\n\n[store]/' "$TMP/gw.toml" >"$TMP/gw-lease.toml"
grep -q '^\[store.lease\]$' "$TMP/gw-lease.toml" || { log "no [store] in the profile config"; exit 1; }
"$PY" "$BENCH/gen_receipts.py" "$TMP/key.json" "$TMP/receipts.txt" 40000 bench-issuer bench-merchant "prof-$$" 2>/dev/null
"$PY" "$BENCH/gen_receipts.py" "$TMP/key.json" "$TMP/topup.txt" 2 bench-issuer bench-merchant "proftop-$$" 1000 USD topup 2>/dev/null

redis-server --port 0 --unixsocket "$SOCK" --unixsocketperm 700 --save "" --appendonly no --dir "$TMP" >/dev/null 2>&1 &
PIDS+=($!)
"$ROOT/target/release/example-upstream" "127.0.0.1:$UP_PORT" >/dev/null 2>&1 &
PIDS+=($!)
sleep 0.5

callgrind_total() { # the instruction count of a callgrind output file
    sed -n 's/^\(summary\|totals\): \([0-9]*\).*/\2/p' "$1" | tail -1
}

profile() { # profile NAME [wrk.lua env...]
    local name=$1 gw i config="$TMP/gw.toml" topup
    shift
    [ "$name" = startup ] || case " ${PROFILE_ONLY:-free paid token lease} " in *" $name "*) ;; *) return 0 ;; esac
    [ "$name" = lease ] && config="$TMP/gw-lease.toml"
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg-$name.out" "$TOLLGATE" run --config "$config" \
        >"$TMP/gw-$name.log" 2>&1 &
    gw=$!
    PIDS+=("$gw")
    for i in $(seq 1 300); do curl -s -o /dev/null "http://127.0.0.1:$GW_PORT/readyz" && break; sleep 0.1; done
    if [ "$name" = token ] || [ "$name" = lease ]; then
        # One top-up receipt per scenario (single use).
        topup=$(if [ "$name" = token ]; then sed -n 1p "$TMP/topup.txt"; else sed -n 2p "$TMP/topup.txt"; fi)
        TOKEN=$(curl -s -X POST -H "Authorization: Payment $topup" \
            "http://127.0.0.1:$GW_PORT/tollgate/v1/topup" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
        set -- "$@" BENCH_AUTH="Bearer $TOKEN"
    fi
    if [ "$name" = startup ]; then
        # Start-up and shutdown alone, subtracted from every scenario's count below.
        kill -TERM "$gw"
        wait "$gw" 2>/dev/null || true
        callgrind_total "$TMP/cg-startup.out" >"$TMP/startup.txt"
        log "start-up and shutdown: $(cat "$TMP/startup.txt") instructions"
        return 0
    fi
    log "profiling $name for ${SECS}s"
    env BENCH_THREADS=1 "$@" wrk -t1 -c4 -d"${SECS}s" -s "$BENCH/wrk.lua" "http://127.0.0.1:$GW_PORT/free/hello" \
        >"$OUT/profile-$name-wrk.txt" 2>&1
    kill -TERM "$gw"
    wait "$gw" 2>/dev/null || true
    # Instructions per served request: the process's count less start-up and shutdown (the
    # `startup` run), over wrk's request count.
    local total reqs
    total=$(callgrind_total "$TMP/cg-$name.out")
    reqs=$(grep -oE '[0-9]+ requests in' "$OUT/profile-$name-wrk.txt" | cut -d' ' -f1)
    echo "$total instructions ($(cat "$TMP/startup.txt") of them start-up and shutdown), $reqs requests," \
        "$(( (total - $(cat "$TMP/startup.txt")) / (reqs > 0 ? reqs : 1) )) instructions per request" \
        >"$OUT/profile-$name-per-request.txt"
    log "$name: $(cat "$OUT/profile-$name-per-request.txt")"
    { callgrind_annotate --inclusive=yes "$TMP/cg-$name.out" 2>/dev/null || true; } | head -120 >"$OUT/profile-$name.txt" || true
    { callgrind_annotate "$TMP/cg-$name.out" 2>/dev/null || true; } | head -80 >"$OUT/profile-$name-self.txt" || true
    cp "$TMP/cg-$name.out" "$OUT/callgrind-$name.out" # for callgrind_annotate --tree=caller
    log "-> $OUT/profile-$name.txt (inclusive), $OUT/profile-$name-self.txt (self), $OUT/callgrind-$name.out"
}
profile startup
profile free
profile paid BENCH_HOST=paid.bench BENCH_RECEIPTS="$TMP/receipts.txt"
profile token BENCH_HOST=token.bench BENCH_EXPECT_PR=1
profile lease BENCH_HOST=token.bench BENCH_EXPECT_PR=1
