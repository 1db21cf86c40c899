#!/usr/bin/env bash
# Makes sure the services and tools the tests need are there. Idempotent and quick when they
# are: checks PostgreSQL, MariaDB and Redis on their ports, starts any that is installed but
# stopped, installs any that is missing from Debian's packages when run as root (as on CI), and
# otherwise stops with the exact command to run. `promtool` and `prometheus` come from Debian's
# `prometheus` package.
set -euo pipefail

PG_PORT=5432
MYSQL_PORT=3306
REDIS_PORT=6379
# a Redis Cluster of three masters on loopback, for the rate limiter's cluster tests
REDIS_CLUSTER_PORTS="7001 7002 7003"

log() { printf 'services: %s\n' "$*" >&2; }

answers() { # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_for() { # name port
    for _ in $(seq 1 60); do
        answers 127.0.0.1 "$2" && return 0
        sleep 0.5
    done
    log "$1 did not come up on 127.0.0.1:$2"
    return 1
}

is_root() { [ "$(id -u)" = 0 ]; }

APT_UPDATED=0
apt_install() { # packages...
    if ! is_root; then
        log "missing: $*. Run: sudo apt-get update && sudo apt-get install -y --no-install-recommends $*"
        exit 1
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    log "installing $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

need_root_to_start() { # name command
    if ! is_root; then
        log "$1 is installed but not running. Run: sudo $2"
        exit 1
    fi
}

ensure_postgres() {
    answers 127.0.0.1 $PG_PORT && return 0
    command -v pg_ctlcluster >/dev/null || apt_install postgresql
    local version
    version=$(ls /etc/postgresql | sort -V | tail -1)
    local hba="/etc/postgresql/$version/main/pg_hba.conf"
    need_root_to_start PostgreSQL "pg_ctlcluster --skip-systemctl-redirect $version main start"
    # Tests connect as postgres over TCP without a password, as on CI.
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
        sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust' "$hba"
    fi
    log "starting PostgreSQL $version"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for PostgreSQL $PG_PORT
}

ensure_mariadb() {
    if ! answers 127.0.0.1 $MYSQL_PORT; then
        command -v mariadbd >/dev/null || [ -x /usr/sbin/mariadbd ] || apt_install mariadb-server
        need_root_to_start MariaDB "start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"
        log "starting MariaDB"
        mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld 2>/dev/null || true
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd
        wait_for MariaDB $MYSQL_PORT
    fi
    # The tests use the `test` database as root without a password over TCP.
    if is_root && command -v mariadb >/dev/null; then
        mariadb -uroot -e "CREATE DATABASE IF NOT EXISTS test" 2>/dev/null || true
    fi
}

ensure_redis() {
    answers 127.0.0.1 $REDIS_PORT && return 0
    command -v redis-server >/dev/null || apt_install redis-server
    log "starting Redis"
    mkdir -p /tmp/garrison-redis
    redis-server --daemonize yes --bind 127.0.0.1 --port $REDIS_PORT --save "" --appendonly no \
        --dir /tmp/garrison-redis --logfile /tmp/garrison-redis/redis.log
    wait_for Redis $REDIS_PORT
}

ensure_prometheus_tools() {
    if ! command -v promtool >/dev/null || ! command -v prometheus >/dev/null; then
        apt_install prometheus
        # The package may start a system Prometheus on :9090; the tests start their own.
    fi
}

# The foreign peers: the official OpenTelemetry Python SDK (tests/trace_peer.rs), the
# websockets library (tests/gateway.rs) and the official Prometheus client's OpenMetrics parser
# (tests/interop.rs).
ensure_python_peers() {
    local probe="import opentelemetry.sdk, opentelemetry.instrumentation.requests, requests, websockets.asyncio.client, prometheus_client.openmetrics.parser"
    python3 -c "$probe" 2>/dev/null && return 0
    log "installing the Python peers (tests/peers/requirements.txt)"
    python3 -m pip install --quiet -r "$(dirname "$0")/../tests/peers/requirements.txt" \
        || python3 -m pip install --quiet --user -r "$(dirname "$0")/../tests/peers/requirements.txt"
    python3 -c "$probe" || {
        echo "services: the Python peers did not install; run: python3 -m pip install -r tests/peers/requirements.txt" >&2
        exit 1
    }
}

# Three masters (no replicas) with every slot assigned: `cluster_state:ok`.
ensure_redis_cluster() {
    local first=${REDIS_CLUSTER_PORTS%% *}
    if answers 127.0.0.1 "$first" \
        && redis-cli -p "$first" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; then
        return 0
    fi
    command -v redis-cli >/dev/null || apt_install redis-tools
    local nodes=()
    for port in $REDIS_CLUSTER_PORTS; do
        local dir=/tmp/garrison-redis-cluster/$port
        mkdir -p "$dir"
        if ! answers 127.0.0.1 "$port"; then
            redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
                --cluster-enabled yes --cluster-config-file "$dir/nodes.conf" \
                --cluster-node-timeout 2000 --dir "$dir" --logfile "$dir/redis.log"
            wait_for "Redis Cluster node" "$port"
        fi
        nodes+=("127.0.0.1:$port")
    done
    if ! redis-cli -p "$first" cluster info | grep -q 'cluster_known_nodes:3'; then
        redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >/dev/null
    fi
    for _ in $(seq 1 60); do
        redis-cli -p "$first" cluster info | grep -q 'cluster_state:ok' && return 0
        sleep 0.5
    done
    log "the Redis Cluster on ports $REDIS_CLUSTER_PORTS did not reach cluster_state:ok"
    return 1
}

ensure_postgres
ensure_mariadb
ensure_redis
ensure_redis_cluster
ensure_prometheus_tools
ensure_python_peers
log "PostgreSQL :$PG_PORT, MariaDB :$MYSQL_PORT, Redis :$REDIS_PORT, Redis Cluster :${REDIS_CLUSTER_PORTS// /,} answer; promtool, prometheus and the Python peers are installed"
