#!/usr/bin/env bash
# End-to-end load run, side by side in one run on loopback: the same wrk load against bare
# axum, axum + garrison MetricsLayer, axum + axum-prometheus, the whole garrison stack and the
# peer stack. Bounded in time.
# Layout (PIN=1, the default on two cores or more): the server runs one runtime thread pinned
# to CPU 0 and wrk runs on CPU 1, so that each variant has a core of its own and none
# competes with the load generator. PIN=0 leaves placement to the kernel.
#   DURATION (default 10s), CONNECTIONS (default 32), THREADS (wrk threads, default 1),
#   VARIANTS (default: all five), ROUNDS (default 1: every variant this many times,
#   interleaved, each round printed)
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
PORT=${PORT:-39123}
ROUNDS=${ROUNDS:-1}
if [ "$(nproc)" -ge 2 ]; then PIN=${PIN:-1}; else PIN=0; fi
# prefixes rather than functions, so that `$!` is the server itself (taskset execs it)
server_cpu=(); load_cpu=()
[ "$PIN" = 1 ] && server_cpu=(env TOKIO_WORKER_THREADS=1 taskset -c 0) && load_cpu=(taskset -c 1)

if ! command -v wrk >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk >/dev/null
    else
        echo "load: wrk is missing. Run: sudo apt-get install -y wrk" >&2
        exit 1
    fi
fi

cargo build --release --example load_server >&2
BIN=target/release/examples/load_server

[ "$PIN" = 1 ] && echo "server: one runtime thread pinned to CPU 0; wrk on CPU 1; $(nproc) cores"
for round in $(seq 1 "$ROUNDS"); do
[ "$ROUNDS" -gt 1 ] && echo "round $round"
printf '| variant | requests/s | vs bare | p50 | p99 |\n|---|---:|---:|---:|---:|\n'
bare_rps=""
for variant in ${VARIANTS:-bare_axum garrison_metrics axum_prometheus garrison_stack peer_stack}; do
    GARRISON_LISTEN=127.0.0.1:$PORT "${server_cpu[@]}" "$BIN" "$variant" >/dev/null &
    pid=$!
    trap 'kill $pid 2>/dev/null || true' EXIT
    for _ in $(seq 1 100); do
        (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
        sleep 0.1
    done
    "${load_cpu[@]}" wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PORT/users/42" >/dev/null # warm-up
    out=$("${load_cpu[@]}" wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$PORT/users/42")
    kill $pid; wait $pid 2>/dev/null || true
    rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    [ -z "$bare_rps" ] && bare_rps=$rps
    ratio=$(awk -v a="$rps" -v b="$bare_rps" 'BEGIN {printf "%.1f%%", 100*a/b}')
    printf '| %s | %s | %s | %s | %s |\n' "$variant" "$rps" "$ratio" "$p50" "$p99"
done
done
