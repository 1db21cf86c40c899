#![doc = include_str!("../README.md")]
//!
//! # What the layer does, outermost first
//!
//! 1. **trace** ([`garrison_trace`]): joins the caller's `traceparent`, `tracestate` and
//!    `baggage`, opens a server span with the OpenTelemetry HTTP attributes, sets
//!    `x-request-id`, and exports sampled spans over OTLP (`[trace.otlp]`, feature `otlp`).
//! 2. **metrics** ([`garrison_metrics`]): `http_server_request_duration_seconds` and the
//!    other RED families by route template, 429s and 503s included, with trace exemplars.
//! 3. **health routes and `/metrics`** ([`garrison_health`]): answered before the limiter,
//!    so probes and scrapes are never refused.
//! 4. **rate limit** ([`garrison_ratelimit`]): GCRA per client and route policy,
//!    `RateLimit` / `X-RateLimit-*` headers, `429` with `Retry-After`; shared through Redis
//!    with `[ratelimit.redis]` (feature `redis`).
//! 5. **admission** ([`garrison_admission`], `[admission] enabled = true`): at most N
//!    requests in your service, the rest queued by priority or shed with `503`.
//! 6. **circuit breaker** ([`garrison_breaker`]): per route, `503` with `Retry-After` while
//!    open; open breakers show as `warn` on the deep health route.
//!
//! Route templates come from axum's `MatchedPath`; a plain hyper service names its routes
//! in `[service] routes` (and every pattern the configuration uses is known already). Each
//! part can be turned off with `enabled = false` in its section.
//!
//! # Configuration
//!
//! [`GarrisonConfig`] holds every option with its default; `garrison-config.example.toml`
//! in this crate documents each one. [`GarrisonConfig::from_toml`] reports every
//! bad key at once with its path (`ratelimit.policies.auth.limit: must be > 0`), and
//! [`Garrison::builder`] changes sections in code and adds what a file cannot say (your own
//! health checks, key sources, registries).
//!
//! # Operations
//!
//! [`ops::rules`] writes Prometheus recording and alert rules (per-route error rate and
//! latency, database pools, breakers, health, rate-limit rejections, and multiwindow
//! multi-burn-rate SLO alerts) for the SLOs of the configuration's `[ops]` section; the
//! repository's `examples/ops/` holds them for the defaults, with a Grafana dashboard, and
//! `docs/runbooks/` a runbook per alert.
//!
//! # Features
//!
//! - `axum` (default): route templates from `MatchedPath`, client addresses from
//!   `ConnectInfo`.
//! - `redis`: `[ratelimit.redis]` (one limit across replicas) and `type = "redis"` checks.
//! - `otlp`: span export over OTLP/gRPC or OTLP/HTTP.
//! - `logs`: `garrison_trace::json_logs()`, JSON log lines with `trace_id`, `span_id` and
//!   `request_id`.
//! - `postgres`, `mysql`, `sqlite`: `type = "postgres"` (etc.) health checks on sqlx pools,
//!   with `db_client_connection_*` metrics.
//!
//! Default features pull no database driver, Redis client or gRPC stack.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod config;
mod emergency;
mod layer;
mod maintenance;
pub mod ops;
mod stack;

pub use config::{ConfigError, ConfigIssue, GarrisonConfig};
pub use emergency::EmergencyService;
pub use layer::{GarrisonBody, GarrisonFuture, GarrisonLayer, GarrisonService};
pub use maintenance::Maintenance;
pub use stack::{Garrison, GarrisonBuilder};

pub use garrison_admission;
pub use garrison_breaker;
pub use garrison_core;
pub use garrison_health;
pub use garrison_metrics;
pub use garrison_ratelimit;
pub use garrison_trace;
/// The TOML reader of [`GarrisonConfig::from_table`] and [`GarrisonConfig::from_table_with`].
pub use toml;
