#!/usr/bin/env bash
# One rate limit shared by several gateway replicas on one Redis (issue 30): for each row,
# REPLICAS gateways with the same policy (`key = "global"`) on one Redis, each driven by its
# own wrk at once for DURATION; the requests admitted in all are printed against what GCRA
# allows a fresh bucket (burst + rate × time). Then the same gateway on the in-memory store,
# for the throughput ratio. Bounded in time.
#   DURATION (default 10s), CONNECTIONS (per replica, default 32), REDIS_URL (default
#   $GARRISON_TEST_REDIS_URL or redis://127.0.0.1:6379), GATEWAY_BIN (default: the `dist` build)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
REDIS_URL=${REDIS_URL:-${GARRISON_TEST_REDIS_URL:-redis://127.0.0.1:6379}}
UPSTREAM_PORT=${UPSTREAM_PORT:-39141}
FIRST_PORT=${FIRST_PORT:-39150}
BIN_DIR=${BIN_DIR:-target/release}
secs=${DURATION%s}

SCRIPT_NAME=load-redis
. scripts/proxy-common.sh
need wrk wrk
proxy_setup

start_upstream "$UPSTREAM_PORT"

# one row: replicas, limit, period in seconds, burst, store (redis or memory)
row() {
    local replicas=$1 limit=$2 period=$3 burst=$4 store=$5 gw=()
    local prefix="garrison-load:$$:$RANDOM$RANDOM"
    for i in $(seq 1 "$replicas"); do
        local port=$((FIRST_PORT + i))
        {
            cat <<CONF
[gateway]
listen = "127.0.0.1:$port"
admin_listen = ""
workers = 1
[gateway.upstreams.app]
addresses = ["127.0.0.1:$UPSTREAM_PORT"]
[gateway.routes.users]
path = "/users/{id}"
upstream = "app"
[trace]
enabled = false
[ratelimit]
key = "global"
[ratelimit.policies.general]
limit = $limit
period = "${period}s"
burst = $burst
CONF
            if [ "$store" = redis ]; then
                printf '[ratelimit.redis]\nurl = "%s"\nkey_prefix = "%s"\n' "$REDIS_URL" "$prefix"
            fi
        } >"$work/gw$i.toml"
        "$GATEWAY_BIN" --config "$work/gw$i.toml" >"$work/gw$i.log" 2>&1 &
        gw+=($!)
        pids+=($!)
        wait_port "$port"
    done
    local loads=()
    for i in $(seq 1 "$replicas"); do
        wrk -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$((FIRST_PORT + i))/users/42" >"$work/wrk$i.txt" &
        loads+=($!)
    done
    wait "${loads[@]}"
    local total=0 refused=0 rps=0
    for i in $(seq 1 "$replicas"); do
        local n r q
        n=$(awk '/requests in/ {print $1}' "$work/wrk$i.txt")
        r=$(awk '/Non-2xx/ {print $NF}' "$work/wrk$i.txt")
        q=$(awk '/^Requests\/sec:/ {print $2}' "$work/wrk$i.txt")
        total=$((total + n))
        refused=$((refused + ${r:-0}))
        rps=$(awk -v a="$rps" -v b="$q" 'BEGIN {print a + b}')
    done
    for p in "${gw[@]}"; do kill "$p" 2>/dev/null || true; done
    wait "${gw[@]}" 2>/dev/null || true
    local admitted=$((total - refused))
    local allowed
    allowed=$(awk -v b="$burst" -v l="$limit" -v p="$period" -v s="$secs" 'BEGIN {printf "%d", b + l / p * s}')
    # in memory, each replica keeps its own limit
    [ "$store" = memory ] && allowed=$((allowed * replicas))
    # GCRA admits everything offered while the bucket lasts: min(offered, allowed)
    local expected=$((total < allowed ? total : allowed))
    printf '| %s | %s | %s per %s s, burst %s | %.0f | %s | %s | %s | %+.1f%% |\n' \
        "$store" "$replicas" "$limit" "$period" "$burst" "$rps" "$total" "$admitted" "$expected" \
        "$(awk -v a="$admitted" -v e="$expected" 'BEGIN {print 100 * (a - e) / e}')"
}

echo "wrk -t1 -c$CONNECTIONS -d$DURATION per replica, GET /users/42, one gateway worker per replica; $(nproc) cores; Redis $REDIS_URL"
printf '| store | replicas | policy | requests/s in all | offered | admitted | GCRA allows (min of offered) | error |\n|---|---:|---|---:|---:|---:|---:|---:|\n'
row 1 200000 10 200000 redis
row 2 200000 10 200000 redis
row 3 200000 10 200000 redis
row 3 20000 10 20000 redis
row 3 2000 10 2000 redis
row 3 200000 10 200000 memory
