#!/usr/bin/env bash
# User-space instructions per proxied request (issue 8), deterministic where wall time on a
# shared machine is not: nginx and garrison-gateway (every layer on, and every layer off),
# each with one worker under callgrind, sent N1 then N2 requests over one keep-alive
# connection by a small client, counted from the moment the server listens;
# (total after N2 - total after N1) / (N2 - N1).
#   N1 (default 1000), N2 (default 3000), GATEWAY_BIN (default: the `dist` build), NO_BUILD
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

count() { # signal, command...: instructions per request
    local signal=$1
    shift
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
    done
    echo $(((total[$N2] - total[$N1]) / (N2 - N1)))
}

nginx=$(count QUIT "$NGINX" -p "$work/nginx" -c "$work/nginx/nginx.conf" -g 'daemon off;')
on=$(count INT "$GATEWAY_BIN" --config "$work/on.toml")
off=$(count INT "$GATEWAY_BIN" --config "$work/off.toml")
ratio() { awk -v a="$1" -v b="$nginx" 'BEGIN {printf "%.1fx", a/b}'; }
echo "user-space instructions per proxied request ($N1 then $N2 requests, one keep-alive client)"
printf '| | instructions / request | vs nginx |\n|---|---:|---:|\n'
printf '| nginx | %s | 1.0x |\n' "$nginx"
printf '| garrison-gateway, every layer on | %s | %s |\n' "$on" "$(ratio "$on")"
printf '| garrison-gateway, every layer off | %s | %s |\n' "$off" "$(ratio "$off")"
