#!/usr/bin/env bash
# User-space instructions per proxied request (issue 8), deterministic where wall time on a
# shared machine is not: nginx, the smallest hyper proxy (examples/hyper_floor.rs, release
# build) and garrison-gateway (every layer on, and every layer off),
# each with one worker under callgrind, sent N1 then N2 requests over one keep-alive
# connection by a small client, counted from the moment the server listens;
# (total after N2 - total after N1) / (N2 - N1).
#   N1 (default 1000), N2 (default 3000), GATEWAY_BIN (default: the `dist` build), NO_BUILD,
#   PROFILE (a folder: each server's callgrind output of its N2 run is kept there, for
#   `callgrind_annotate --inclusive=yes`)
set -euo pipefail
cd "$(dirname "$0")/.."

N1=${N1:-1000}
N2=${N2:-3000}
UPSTREAM_PORT=${UPSTREAM_PORT:-39141}
PROXY_PORT=${PROXY_PORT:-39142}

SCRIPT_NAME=instructions
. scripts/proxy-common.sh
need valgrind valgrind
proxy_setup
if [ -z "${NO_BUILD:-}" ]; then
    cargo build --release --example hyper_floor -p garrison-workspace >&2
fi
[ -n "${PROFILE:-}" ] && mkdir -p "$PROFILE"

start_upstream "$UPSTREAM_PORT"

nginx_config "$work/nginx" 1 "$UPSTREAM_PORT" "$PROXY_PORT" "master_process off;"
gateway_config "$PROXY_PORT" "$UPSTREAM_PORT" 1 >"$work/on.toml"
gateway_config "$PROXY_PORT" "$UPSTREAM_PORT" 1 off >"$work/off.toml"

client() { # n: requests over one keep-alive connection, each checked for 200
    python3 -c '
import http.client, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    c.request("GET", "/users/42")
    r = c.getresponse()
    r.read()
    if r.status != 200:
        sys.exit(f"answered {r.status}")
' "$1" "$PROXY_PORT"
}

count() { # name, signal, command...: instructions per request
    local name=$1 signal=$2
    shift 2
    local -A total
    for n in $N1 $N2; do
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" "$@" >"$work/vg.log" 2>&1 &
        local vg=$!
        wait_port "$PROXY_PORT"
        # start counting once the server is up, so that start-up work whose cost varies
        # from run to run stays out of the counts
        callgrind_control -z "$vg" >/dev/null
        client "$n"
        kill "-$signal" "$vg"
        wait "$vg" || true
        total[$n]=$(awk '/^(summary|totals):/ {print $2; exit}' "$work/cg.out")
        if [ -n "${PROFILE:-}" ] && [ "$n" = "$N2" ]; then cp "$work/cg.out" "$PROFILE/$name.out"; fi
    done
    echo $(((total[$N2] - total[$N1]) / (N2 - N1)))
}

nginx=$(count nginx QUIT "$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;')
floor=$(GARRISON_LISTEN=127.0.0.1:$PROXY_PORT HYPER_FLOOR_UPSTREAM=127.0.0.1:$UPSTREAM_PORT \
    count floor INT "${BIN_DIR:-target/release}/examples/hyper_floor")
on=$(count on INT "$GATEWAY_BIN" --config "$work/on.toml")
off=$(count off INT "$GATEWAY_BIN" --config "$work/off.toml")
ratio() { awk -v a="$1" -v b="$nginx" 'BEGIN {printf "%.1fx", a/b}'; }
echo "user-space instructions per proxied request ($N1 then $N2 requests, one keep-alive client)"
printf '| | instructions / request | vs nginx |\n|---|---:|---:|\n'
printf '| nginx | %s | 1.0x |\n' "$nginx"
printf '| the smallest hyper proxy | %s | %s |\n' "$floor" "$(ratio "$floor")"
printf '| garrison-gateway, every layer on | %s | %s |\n' "$on" "$(ratio "$on")"
printf '| garrison-gateway, every layer off | %s | %s |\n' "$off" "$(ratio "$off")"
