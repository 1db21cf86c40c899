#!/usr/bin/env bash
# The gateway's end-to-end load run (issue 8), side by side in one run on loopback with the
# same wrk load: straight to the upstream; through nginx (Debian's package, plain proxy_pass
# with upstream keepalive) as the reference proxy; through garrison-gateway with every layer
# on (trace at 10%, metrics, health routes, rate limit, breaker). Bounded in time.
#   DURATION (default 10s), CONNECTIONS (default 64), THREADS (wrk threads, default 2),
#   WORKERS (nginx worker processes and gateway runtime threads, default: every core),
#   GATEWAY_BIN (default: the `dist` build, fat LTO, as shipped)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
WORKERS=${WORKERS:-$(nproc)}
UPSTREAM_PORT=${UPSTREAM_PORT:-39131}
NGINX_PORT=${NGINX_PORT:-39132}
GATEWAY_PORT=${GATEWAY_PORT:-39133}
BIN_DIR=${BIN_DIR:-target/release}

SCRIPT_NAME=load
. scripts/proxy-common.sh
need wrk wrk
proxy_setup
[ -n "${KEEP_LOG:-}" ] && trap 'cat "$work/gateway.log" >&2; cleanup' EXIT

start_upstream "$UPSTREAM_PORT"

nginx_config "$work/nginx" "$WORKERS" "$UPSTREAM_PORT" "$NGINX_PORT"
"$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;' &
pids+=($!)
wait_port "$NGINX_PORT"

gateway_config "$GATEWAY_PORT" "$UPSTREAM_PORT" "$WORKERS" >"$work/gateway.toml"
"$GATEWAY_BIN" --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_port "$GATEWAY_PORT"

echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, GET /users/42; $WORKERS workers; $(nproc) cores"
printf '| path | requests/s | vs nginx | p50 | p99 | p99 vs nginx |\n|---|---:|---:|---:|---:|---:|\n'
declare -A rps p99ms
for target in direct:$UPSTREAM_PORT nginx:$NGINX_PORT gateway:$GATEWAY_PORT; do
    name=${target%%:*}
    port=${target##*:}
    url="http://127.0.0.1:$port/users/42"
    status=$(exec 3<>/dev/tcp/127.0.0.1/"$port"; printf 'GET /users/42 HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n' >&3; head -1 <&3 | cut -d' ' -f2)
    [ "$status" = 200 ] || { echo "load: $name answered $status" >&2; cat "$work/gateway.log" >&2; exit 1; }
    wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$url" >/dev/null # warm-up
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "$url")
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
    vs="—"; p99vs="—"
    if [ -n "${rps[nginx]:-}" ] && [ "$name" != nginx ]; then
        vs=$(awk -v a="${rps[$name]}" -v b="${rps[nginx]}" 'BEGIN {printf "%.2fx", a/b}')
        p99vs=$(awk -v a="${p99ms[$name]}" -v b="${p99ms[nginx]}" 'BEGIN {printf "%.2fx", a/b}')
    fi
    printf '| %s | %s | %s | %s | %s | %s |\n' "$name" "${rps[$name]}" "$vs" "$p50" "$p99" "$p99vs"
done
