#![doc = include_str!("../README.md")]
//!
//! # Overview
//!
//! A breaker watches the outcomes of recent calls over a sliding window (the last N calls, or
//! the last T seconds) and **opens** when, once a minimum number of calls was seen, the share
//! of failures or of slow calls reaches its threshold. While open it answers at once —
//! `503 Service Unavailable` with the real remaining wait in `Retry-After` — and the
//! dependency gets time to recover. After the wait it goes **half-open** and lets exactly a
//! configured number of probe calls through (never more, under any concurrency); their
//! outcomes close it again or re-open it, with a wait that can grow exponentially on repeated
//! trips. Operators can force a breaker open or disable it through the [`BreakerRegistry`].
//!
//! What counts as a failure comes from garrison-core's
//! [`FailureClassifier`](garrison_core::FailureClassifier): errors and `5xx` responses by
//! default (axum handlers never return `Err`, so a breaker that only counted errors would
//! never open).
//!
//! Metrics (register the registry as a collector of a `garrison_metrics::MetricsRegistry`):
//! `garrison_breaker_state{breaker,state}`, `garrison_breaker_calls_total{breaker,outcome}`
//! and `garrison_breaker_transitions_total{breaker,from,to}`. Every transition is also a
//! `tracing` event.
//!
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod breaker;
mod config;
mod layer;
mod registry;
mod window;

pub use breaker::{Breaker, BreakerSnapshot, CallOutcome, Permit, Rejected, State, Transition};
pub use config::{BreakerConfig, ConfigError, Window};
pub use garrison_core::{Part, RequestInfo};
pub use layer::{
    BreakerBody, CircuitBreakerLayer, CircuitBreakerService, Fallback, ResponseFuture,
};
pub use registry::{BreakerRegistry, UnknownBreaker};
pub use window::WindowCounts;
