#!/usr/bin/env bash
# The gateway's end-to-end load run, side by side in one run on loopback with the same wrk
# load (GET /users/42): straight to the upstream; through nginx (Debian's package, plain
# proxy_pass with upstream keepalive), the reference proxy; through the smallest hyper 1
# proxy (examples/hyper_floor.rs), the floor of any proxy built on hyper; through
# garrison-gateway with every layer off; and with every layer on (trace at 10%, metrics,
# health routes, rate limit, breaker).
#
# Layout (PIN=1, the default on two cores or more): every proxy runs with one worker, pinned
# to CPU 0; the upstream (nginx `return 200`) and wrk share CPU 1. So the proxies compare like
# with like on a 2-core machine: each has a core of its own, and none competes with the load
# generator. PIN=0 leaves placement to the kernel (WORKERS: every core).
#   DURATION (default 8s), CONNECTIONS (default 32), THREADS (wrk threads, default 1),
#   WORKERS (proxy workers: 1 when pinned, else every core), ROUNDS (default 1: runs every
#   path this many times, interleaved, and prints each), GATEWAY_BIN (default: the `dist`
#   build, fat LTO, as shipped), NO_BUILD=1 to use what is built.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
ROUNDS=${ROUNDS:-1}
if [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=0; fi
if [ "$PIN" = 1 ]; then WORKERS=${WORKERS:-1}; else WORKERS=${WORKERS:-$(nproc)}; fi
UPSTREAM_PORT=${UPSTREAM_PORT:-39131}
NGINX_PORT=${NGINX_PORT:-39132}
GATEWAY_PORT=${GATEWAY_PORT:-39133}
FLOOR_PORT=${FLOOR_PORT:-39134}
OFF_PORT=${OFF_PORT:-39135}
BIN_DIR=${BIN_DIR:-target/release}

SCRIPT_NAME=load
. scripts/proxy-common.sh
need wrk wrk
need taskset util-linux
proxy_setup
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --example hyper_floor -p garrison-workspace >&2
fi
[ -n "${KEEP_LOG:-}" ] && trap 'cat "$work/gateway.log" >&2; cleanup' EXIT

# on CPU 0 (a proxy) or CPU 1 (the upstream and wrk) when pinned; a prefix rather than a
# function, so that `$!` is the process itself (taskset execs it) and the cleanup ends it
proxy_cpu=(); load_cpu=()
[ "$PIN" = 1 ] && proxy_cpu=(taskset -c 0) && load_cpu=(taskset -c 1)

# the upstream: nginx answering 200 itself
nginx_upstream_config "$work/upstream" "$UPSTREAM_PORT"
"${load_cpu[@]}" "$NGINX" -p "$work/upstream" -c "$work/upstream/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_port "$UPSTREAM_PORT"

nginx_config "$work/nginx" "$WORKERS" "$UPSTREAM_PORT" "$NGINX_PORT"
"${proxy_cpu[@]}" "$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_port "$NGINX_PORT"

GARRISON_LISTEN=127.0.0.1:$FLOOR_PORT HYPER_FLOOR_UPSTREAM=127.0.0.1:$UPSTREAM_PORT \
    "${proxy_cpu[@]}" "$BIN_DIR/examples/hyper_floor" >/dev/null &
pids+=($!)
wait_port "$FLOOR_PORT"

gateway_config "$OFF_PORT" "$UPSTREAM_PORT" "$WORKERS" off >"$work/off.toml"
"${proxy_cpu[@]}" "$GATEWAY_BIN" --config "$work/off.toml" >"$work/off.log" 2>&1 &
pids+=($!)
wait_port "$OFF_PORT"

gateway_config "$GATEWAY_PORT" "$UPSTREAM_PORT" "$WORKERS" >"$work/gateway.toml"
"${proxy_cpu[@]}" "$GATEWAY_BIN" --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_port "$GATEWAY_PORT"

layout="kernel's placement, $WORKERS proxy workers"
[ "$PIN" = 1 ] && layout="each proxy pinned to CPU 0 with $WORKERS worker, upstream (nginx return 200) and wrk on CPU 1"
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, GET /users/42; $layout; $(nproc) cores"
for round in $(seq 1 "$ROUNDS"); do
    [ "$ROUNDS" -gt 1 ] && echo "round $round"
    printf '| path | requests/s | vs nginx | vs hyper floor | p50 | p99 | p99 vs nginx |\n|---|---:|---:|---:|---:|---:|---:|\n'
    declare -A rps p99ms
    for target in direct:$UPSTREAM_PORT nginx:$NGINX_PORT "hyper floor:$FLOOR_PORT" \
        "gateway, every layer off:$OFF_PORT" "gateway, every layer on:$GATEWAY_PORT"; do
        name=${target%%:*}
        port=${target##*:}
        url="http://127.0.0.1:$port/users/42"
        status=$(exec 3<>/dev/tcp/127.0.0.1/"$port"; printf 'GET /users/42 HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n' >&3; head -1 <&3 | cut -d' ' -f2)
        [ "$status" = 200 ] || { echo "load: $name answered $status" >&2; cat "$work/gateway.log" >&2; exit 1; }
        "${load_cpu[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$url" >/dev/null # warm-up
        out=$("${load_cpu[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url")
        # a quick path that drops, resets or times out requests does not count
        if grep -q "Non-2xx\|Socket errors" <<<"$out"; then
            echo "load: $name gave non-2xx answers or socket errors:" >&2
            echo "$out" >&2
            exit 1
        fi
        rps[$name]=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
        p50=$(awk '$1=="50%" {print $2}' <<<"$out")
        p99=$(awk '$1=="99%" {print $2}' <<<"$out")
        # wrk prints us, ms or s: in milliseconds
        p99ms[$name]=$(awk -v v="$p99" 'BEGIN { if (v ~ /us$/) print v/1000; else if (v ~ /ms$/) print v+0; else print v*1000 }')
        vs="—"; floor="—"; p99vs="—"
        if [ -n "${rps[nginx]:-}" ] && [ "$name" != nginx ]; then
            vs=$(awk -v a="${rps[$name]}" -v b="${rps[nginx]}" 'BEGIN {printf "%.2fx", a/b}')
            p99vs=$(awk -v a="${p99ms[$name]}" -v b="${p99ms[nginx]}" 'BEGIN {printf "%.2fx", a/b}')
        fi
        if [ -n "${rps[hyper floor]:-}" ] && [ "$name" != "hyper floor" ]; then
            floor=$(awk -v a="${rps[$name]}" -v b="${rps[hyper floor]}" 'BEGIN {printf "%.2fx", a/b}')
        fi
        printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$name" "${rps[$name]}" "$vs" "$floor" "$p50" "$p99" "$p99vs"
    done
    unset rps p99ms
done
