# Garrison: the commands a person types. `just --list` shows them.

set shell := ["bash", "-euo", "pipefail", "-c"]

export GARRISON_TEST_POSTGRES_URL := env("GARRISON_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/postgres")
export GARRISON_TEST_MYSQL_URL := env("GARRISON_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
export GARRISON_TEST_REDIS_URL := env("GARRISON_TEST_REDIS_URL", "redis://127.0.0.1:6379")

# Start the gateway on its embedded defaults: a demo upstream behind every layer on
# GARRISON_LISTEN (default 127.0.0.1:3000), the admin API on 127.0.0.1:3001.
run *ARGS:
    cargo run --release -p garrison-gateway -- {{ARGS}}

# The demo shop API (axum) behind the garrison layer, without the gateway.
run-shop:
    cargo run --example axum_app

# Run every test (starts or installs the services they need first).
test: services
    cargo test --workspace --all-features
    cargo test -p garrison --lib --tests  # the umbrella with its default features: options that need a feature say so

# Criterion benches (metrics, breaker, ratelimit, trace) side by side with bare axum and the peer crates.
bench *ARGS:
    cargo bench -p garrison-workspace -- {{ARGS}}

# wrk end to end, pinned: bare axum, metrics, the stack, the peer stack; then the upstream, nginx, the hyper floor, the gateway off and on.
load:
    scripts/load.sh
    scripts/load-gateway.sh

# One rate limit across gateway replicas on one Redis: admitted requests against GCRA's count,
# for the rows of issue 30, and the in-memory store's throughput beside them.
load-redis:
    scripts/load-redis.sh

# A flood of one-request clients (a new API key per request) at the gateway: the share the
# in-memory limiter refuses, which should be 0.
load-keys:
    scripts/load-keys.sh

# Prometheus recording and alert rules for a configuration's [ops] SLOs, e.g.
# `just ops-rules --config shop.toml -o garrison-rules.yml` (no file: the defaults, as in
# examples/ops/garrison-rules.yml).
ops-rules *ARGS:
    cargo run -q -p garrison-gateway -- ops rules {{ARGS}}

# fmt, clippy and rustdoc with -D warnings, docs as docs.rs builds them, README doctests, publishing checks, cargo package.
lint:
    cargo fmt --all --check
    cargo clippy --workspace --all-targets --all-features -- -D warnings
    RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --all-features
    RUSTDOCFLAGS="-D warnings" cargo doc -p garrison --no-deps  # the umbrella on its default features
    # docs.rs: nightly rustdoc, --cfg docsrs, every feature; RUSTC_BOOTSTRAP lets the stable
    # toolchain take nightly's `feature(doc_cfg)` (a removed feature such as doc_auto_cfg fails)
    RUSTC_BOOTSTRAP=1 RUSTDOCFLAGS="--cfg docsrs -D warnings" cargo doc --workspace {{unpublished}} --no-deps --all-features
    cargo test --doc --workspace --all-features  # each crate's README and the repository's
    cargo test --test publishing  # metadata, licence files, docs.rs attributes, Markdown links
    # cargo package verifies each crate against the others' packaged sources, which it extracts
    # once into a cache and reuses, stale, on the next run: ours leave that cache first
    rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/garrison-*
    cargo package --workspace {{unpublished}} --allow-dirty  # in dependency order, each verified by a build

# The workspace's packages that are not published.
unpublished := "--exclude garrison-workspace --exclude garrison-interop-tests"

# Make sure PostgreSQL, MariaDB, Redis, promtool and prometheus are there.
services:
    scripts/services.sh
