#!/usr/bin/env bash
# Per proxied request under concurrency: instructions, simulated cache misses and branch
# mispredictions (callgrind --cache-sim --branch-sim, the whole process, counted from the
# moment it listens) of the smallest hyper proxy and garrison-gateway (every layer off, and
# on), each with one worker in front of nginx `return 200`, under `wrk -t1 -cC -dD`
# (C default 32, D default 6s). What explains a gap in requests per second that instruction
# counts on one connection do not show (docs/performance.md). GATEWAY_BIN (default: the
# `dist` build), NO_BUILD as in the other scripts.
set -uo pipefail
cd "$(dirname "$0")/.."

SCRIPT_NAME=cachesim
. scripts/proxy-common.sh
need valgrind valgrind
need wrk wrk
proxy_setup
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --example hyper_floor -p garrison-workspace >&2
fi
UPSTREAM_PORT=${UPSTREAM_PORT:-39251}
PROXY_PORT=${PROXY_PORT:-39252}
C=${C:-32}
D=${D:-6s}

nginx_upstream_config "$work/upstream" "$UPSTREAM_PORT"
"$NGINX" -p "$work/upstream" -c "$work/upstream/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_port "$UPSTREAM_PORT"
gateway_config "$PROXY_PORT" "$UPSTREAM_PORT" 1 >"$work/on.toml"
gateway_config "$PROXY_PORT" "$UPSTREAM_PORT" 1 off >"$work/off.toml"

measure() { # name, command...: one line of events per request
    local name=$1
    shift
    valgrind --tool=callgrind --cache-sim=yes --branch-sim=yes \
        --callgrind-out-file="$work/$name.out" "$@" >/dev/null 2>&1 &
    local vg=$!
    wait_port "$PROXY_PORT"
    callgrind_control -z "$vg" >/dev/null
    local n
    n=$(wrk -t1 -c"$C" -d"$D" "http://127.0.0.1:$PROXY_PORT/users/42" | awk '/requests in/ {print $1}')
    kill -INT "$vg"
    wait "$vg"
    awk -v name="$name" -v n="$n" '
        /^events:/ { for (i = 2; i <= NF; i++) ev[i] = $i }
        /^(summary|totals):/ {
            printf "| %s | %d |", name, n
            for (i = 2; i <= NF; i++) if (ev[i] ~ /^(Ir|I1mr|D1mr|D1mw|DLmr|Bcm|Bim)$/) printf " %.0f |", $i / n
            print ""
            exit
        }' "$work/$name.out"
}

echo "per proxied request under wrk -c$C for $D (callgrind's simulated caches and branches)"
echo "| proxy | requests | instructions | I1 misses | D1 read misses | D1 write misses | LL data read misses | conditional mispredicts | indirect mispredicts |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
GARRISON_LISTEN=127.0.0.1:$PROXY_PORT HYPER_FLOOR_UPSTREAM=127.0.0.1:$UPSTREAM_PORT \
    measure "the smallest hyper proxy" "${BIN_DIR:-target/release}/examples/hyper_floor"
measure "garrison-gateway, every layer off" "$GATEWAY_BIN" --config "$work/off.toml"
measure "garrison-gateway, every layer on" "$GATEWAY_BIN" --config "$work/on.toml"
