#!/usr/bin/env bash
# A flood of one-request clients at the gateway (issue 37): every request carries a new random
# API key and a new path (a random /users/{id}), `[ratelimit] key = "header:x-api-key"` with the default policies
# (`general` 100 per minute) and the default max_keys. No client passes its limit, so every
# refusal is the limiter's fault: the script prints the share refused (goal 0) and the
# limiter's own figures from /metrics. Bounded in time.
#   DURATION (default 60s), CONNECTIONS (default 64), THREADS (default 2),
#   GATEWAY_BIN (default: the `dist` build)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-60s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
UPSTREAM_PORT=${UPSTREAM_PORT:-39161}
GATEWAY_PORT=${GATEWAY_PORT:-39162}
ADMIN_PORT=${ADMIN_PORT:-39163}
BIN_DIR=${BIN_DIR:-target/release}

SCRIPT_NAME=load-keys
. scripts/proxy-common.sh
need wrk wrk
proxy_setup

start_upstream "$UPSTREAM_PORT"

cat >"$work/gateway.toml" <<CONF
[gateway]
listen = "127.0.0.1:$GATEWAY_PORT"
admin_listen = "127.0.0.1:$ADMIN_PORT"
[gateway.upstreams.app]
addresses = ["127.0.0.1:$UPSTREAM_PORT"]
[gateway.routes.users]
path = "/users/{id}"
upstream = "app"
[trace]
enabled = false
[ratelimit]
key = "header:x-api-key"
CONF
"$GATEWAY_BIN" --config "$work/gateway.toml" >"$work/gateway.log" 2>&1 &
pids+=($!)
wait_port "$GATEWAY_PORT"

cat >"$work/keys.lua" <<'LUA'
-- a new random API key and path for every request
local seeded = false
request = function()
  if not seeded then
    math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16))
    seeded = true
  end
  local k = string.format("%08x%08x", math.random(0, 0x7fffffff), math.random(0, 0x7fffffff))
  return wrk.format("GET", "/users/" .. math.random(1, 2000000000), { ["x-api-key"] = k })
end
LUA

out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" -s "$work/keys.lua" "http://127.0.0.1:$GATEWAY_PORT/")
total=$(awk '/requests in/ {print $1}' <<<"$out")
refused=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
metrics=$(curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" || true)
pick() { awk -v m="$1" 'index($0, m) == 1 {print $2}' <<<"$metrics" | head -1; }
echo "wrk -t$THREADS -c$CONNECTIONS -d$DURATION, a new x-api-key and path per request; $(nproc) cores"
limited=$(pick 'garrison_ratelimit_decisions_total{policy="general",decision="limited"}')
printf '| new keys/s | requests | non-2xx | limited (429) | share refused | keys tracked (general) | overflow decisions (general) |\n|---:|---:|---:|---:|---:|---:|---:|\n'
printf '| %.0f | %s | %s | %s | %.3f%% | %s | %s |\n' "$rps" "$total" "${refused:-0}" "${limited:-?}" \
    "$(awk -v r="${limited:-0}" -v t="$total" 'BEGIN {print 100 * r / t}')" \
    "$(pick 'garrison_ratelimit_tracked_keys{policy="general"}')" \
    "$(pick 'garrison_ratelimit_overflow_total{policy="general"}')"
