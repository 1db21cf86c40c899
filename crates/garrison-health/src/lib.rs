#![doc = include_str!("../README.md")]
//!
//! # Overview
//!
//! - A [`HealthRegistry`] holds named [`Check`]s, each with a [`CheckKind`] (liveness,
//!   readiness, both, or the deep route only), a criticality (a failing non-critical check
//!   makes the status `warn`, a critical one `fail`), a timeout and an interval. Checks run
//!   in the background on their interval; probes only read the last result, so a probe storm
//!   costs the database nothing. A check that hangs is cut off at its timeout and reported
//!   as failed with the reason; a check that panics is a failure too. Each status change is
//!   logged once.
//! - Routes: [`HealthRegistry::router`] (axum, to merge) or [`HealthLayer`] (in front of any
//!   tower or hyper service). `200` for `pass` and `warn`, `503` for `fail`
//!   ([`StatusCodes`] to change it); readiness fails as soon as
//!   [`begin_shutdown`](HealthRegistry::begin_shutdown) is called.
//! - The report follows draft-inadarei-api-health-check: `status`, and with details
//!   `version`, `releaseId`, `serviceId`, `output` and `checks` keyed `component:measurement`
//!   with `status`, `observedValue`, `observedUnit`, `time` and `output` on failure. Details
//!   go only to callers with the configured bearer token (compared in constant time) or to
//!   everybody when [`Details::Always`] says so; outputs never carry a URL with credentials
//!   or a `password=`.
//! - Checks shipped: [`PoolCheck`] for sqlx pools (PostgreSQL, MySQL/MariaDB, SQLite:
//!   features `postgres`, `mysql`, `sqlite`), [`RedisCheck`], [`HttpCheck`],
//!   [`BreakerCheck`] (garrison-breaker), [`RateLimitStoreCheck`] (garrison-ratelimit's Redis
//!   fallback), [`ProcessCheck`] (the process's descriptor and memory limits), and
//!   [`check_fn`] for your own. [`HealthRegistry::on_change`] is told of every change of a
//!   check's status.
//! - Metrics through garrison-metrics: [`HealthRegistry::metrics`] publishes
//!   `garrison_health_check_status{check,status}`,
//!   `garrison_health_check_duration_seconds{check}` and `garrison_health_check_runs_total`;
//!   [`DbMetrics`] publishes the pools' `db_client_connection_*` families, with the wait time
//!   measured by [`InstrumentedPool::acquire`].
//!
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod check;
mod checks;
mod layer;
mod metrics;
mod redact;
mod registry;
mod report;
#[cfg(feature = "axum")]
mod router;
mod status;

pub use check::{
    check_fn, BoxFuture, Check, CheckKind, CheckOptions, FnCheck, DEFAULT_INTERVAL, DEFAULT_TIMEOUT,
};
#[allow(unused_imports, unreachable_pub)] // empty without the check features
pub use checks::*;
pub use garrison_core::{Part, RequestInfo};
pub use layer::{HealthLayer, HealthService, ResponseFuture};
pub use registry::{
    Details, HealthRegistry, HealthRegistryBuilder, Observation, Paths, RegisterError,
    StatusChange, StatusCodes, StatusNames,
};
pub use report::{Probe, Report, HEALTH_JSON};
pub use status::{CheckResult, Measurement, Observed, Status};
