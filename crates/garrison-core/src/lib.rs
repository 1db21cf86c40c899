#![doc = include_str!("../README.md")]
//!
//! # Overview
//!
//! Every Garrison layer labels requests the same way and agrees on what a failure is, so that
//! the metrics, the rate limiter, the circuit breaker and the trace layer tell one story:
//!
//! - [`MethodLabel`]: the HTTP method as a bounded label (unknown methods become `_OTHER`);
//! - [`RouteResolver`] and [`RouteTable`]: the route template of a request (axum's
//!   `MatchedPath`, else a configured route table, else [`UNMATCHED`]), never the raw path;
//! - [`FailureClassifier`]: one decision of what counts as a failure;
//! - [`Clock`]: time read through a trait, so tests can use tokio's paused clock or a
//!   [`ManualClock`];
//! - [`TrustedProxies`]: the client address of a request, believing `X-Forwarded-For` or
//!   `Forwarded` only from trusted proxies;
//! - [`CatchPanicLayer`] and [`Caught`]: a panic or an error of the service answered `500`
//!   and described for the metrics, the breaker and the trace;
//! - [`Part`] and [`RequestInfo`]: how each part is asked about a request, by its own layer
//!   and by the umbrella, with the route, method, clock tick and trace learnt once;
//! - [`TraceContext`]: the trace id a request runs under, placed in request extensions by the
//!   trace layer (or by your own middleware) and read by the others (metrics exemplars).
//!
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod auth;
mod body;
mod caught;
mod classify;
mod client;
mod clock;
mod future;
mod method;
mod part;
mod refusal;
mod route;
mod shard;
mod text;
mod throttle;
mod trace_context;

pub use auth::{bearer_matches, bearer_token};
pub use body::LayerBody;
pub use caught::{
    catch, install_panic_hook, register_request_id_source, CatchPanic, CatchPanicFuture,
    CatchPanicLayer, CatchUnwind, Caught, CaughtKind,
};
pub use classify::{ErrorType, FailureClassifier};
pub use client::{
    normalize as normalize_ip, peer_addr, peer_within, ForwardedHeader, IpNet, IpNetError,
    PeerAddr, TrustedProxies, MAX_FORWARDED_HOPS,
};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock, Tick, TokioClock};
pub use future::LayerFuture;
pub use method::MethodLabel;
pub use part::{Part, RequestInfo};
pub use refusal::refusal;
pub use route::{RouteLabel, RouteResolver, RouteTable, RouteTableError, UNMATCHED};
pub use shard::{thread_shard, CachePadded, ShardedCounters};
pub use text::{
    hex_decode, hex_encode, hex_write, is_token_byte, percent_escape, push_json_string,
    redis_cluster_nodes, rfc3339, truncate_str, IpText,
};
pub use throttle::LogEvery;

#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod testing;
pub use trace_context::{TraceContext, TraceId};
