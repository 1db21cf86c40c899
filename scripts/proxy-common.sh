# What the scripts that measure the gateway against nginx share (load-gateway.sh,
# gateway-instructions.sh): sourced, not run. Each message starts with $SCRIPT_NAME.

need() { # command, Debian package
    command -v "$1" >/dev/null && return
    if [ "$(id -u)" = 0 ]; then
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$2" >/dev/null
    else
        echo "$SCRIPT_NAME: $1 is missing. Run: sudo apt-get install -y $2" >&2
        exit 1
    fi
}

# nginx (installed when missing) in $NGINX; the upstream and the gateway built unless
# NO_BUILD, the gateway in $GATEWAY_BIN (default: the `dist` build); a folder $work; the
# processes in `pids` ended, and $work removed, at exit.
proxy_setup() {
    PATH=$PATH:/usr/sbin need nginx nginx
    NGINX=$(PATH=$PATH:/usr/sbin command -v nginx)
    if [ -z "${NO_BUILD:-}" ]; then
        cargo build --release --example load_server -p garrison-workspace >&2
        cargo build --profile dist -p garrison-gateway >&2
    fi
    GATEWAY_BIN=${GATEWAY_BIN:-target/dist/garrison-gateway}
    work=$(mktemp -d)
    pids=()
    trap cleanup EXIT
}

# The upstream every proxy is measured in front of: bare axum with one route, on
# 127.0.0.1:port, stopped at exit.
start_upstream() { # port
    GARRISON_LISTEN=127.0.0.1:$1 "${BIN_DIR:-target/release}/examples/load_server" bare_axum >/dev/null &
    pids+=($!)
    wait_port "$1"
}

cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$work"
}

wait_port() { # port: waits (20 s at most: a server under valgrind starts slowly)
    for _ in $(seq 1 400); do
        (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return
        sleep 0.05
    done
    echo "$SCRIPT_NAME: nothing answers on port $1" >&2
    exit 1
}

# nginx as the reference proxy, plain proxy_pass with upstream keepalive: writes
# dir/nginx.conf.
nginx_config() { # dir, worker processes, upstream port, listen port, [extra main-context line]
    local upstream=$3 listen=$4
    nginx_conf "$1" "$2" "${5:-}" <<SERVER
    upstream app { server 127.0.0.1:$upstream; keepalive 256; }
    server {
        listen 127.0.0.1:$listen;
        location / {
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
SERVER
}

# nginx answering every request 200 itself, as cheap an upstream as there is: writes
# dir/nginx.conf.
nginx_upstream_config() { # dir, listen port
    nginx_conf "$1" 1 "" <<SERVER
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$2;
        location / { return 200 "user 42\n"; }
    }
SERVER
}

# dir/nginx.conf with its files under dir and the http block's servers from stdin.
nginx_conf() { # dir, worker processes, extra main-context line
    local dir=$1 workers=$2 extra=$3
    mkdir -p "$dir/logs"
    {
        cat <<CONF
$extra
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
CONF
        cat
        echo "}"
    } >"$dir/nginx.conf"
}

# The gateway with every layer on (trace at 10%, a rate limit no run exhausts), or "off".
gateway_config() { # listen port, upstream port, workers, [off]
    cat <<CONF
[gateway]
listen = "127.0.0.1:$1"
admin_listen = ""
workers = $3
[gateway.upstreams.app]
addresses = ["127.0.0.1:$2"]
[gateway.routes.users]
path = "/users/{id}"
upstream = "app"
[ratelimit.policies.general]
limit = 1000000
period = "1s"
burst = 1000000
CONF
    if [ "${4:-}" = off ]; then
        printf '[trace]\nenabled = false\n[metrics]\nenabled = false\n[health]\nenabled = false\n'
        printf '[breaker]\nenabled = false\n[ratelimit]\nenabled = false\n'
    else
        printf '[trace]\nratio = 0.1\n'
    fi
}
