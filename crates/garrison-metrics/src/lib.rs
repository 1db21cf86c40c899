#![doc = include_str!("../README.md")]
//!
//! # Overview
//!
//! [`MetricsLayer`] records, for every request, following the OpenTelemetry HTTP semantic
//! conventions in Prometheus form:
//!
//! | family | type | labels |
//! |---|---|---|
//! | `http_server_request_duration_seconds` | histogram | `http_request_method`, `http_route`, `http_response_status_code`, `error_type` |
//! | `http_server_active_requests` | gauge | `http_request_method` |
//! | `http_server_request_body_size_bytes` | histogram | as the duration |
//! | `http_server_response_body_size_bytes` | histogram | as the duration |
//! | `garrison_metrics_series`, `garrison_metrics_series_dropped_total` | gauge, counter | |
//! | `process_*`, `tokio_runtime_*` | gauges, counter | |
//!
//! `http_route` is the route *template* (axum's `MatchedPath` or a [`RouteTable`] pattern),
//! never the raw path, and unknown methods are `_OTHER`: hostile URLs cannot grow the number
//! of series, and a cap bounds it anyway. `error_type` is present only on failures: the status
//! code for statuses the [`FailureClassifier`](garrison_core::FailureClassifier) counts as
//! failures (`5xx` by default), or `cancelled`, `service_error`, `body_error`.
//!
//! When a request carries a sampled [`TraceContext`] in its
//! extensions (Garrison's trace layer puts it there), its trace id becomes the exemplar of the
//! duration bucket it fell in, so a slow bucket links to a trace. Exemplars are served in the
//! OpenMetrics format, which Prometheus asks for.
//!
//!
//! # A plain hyper service
//!
//! Without axum's router there is no `MatchedPath`; give the layer a [`RouteTable`]:
//!
//! ```
//! use garrison_core::RouteTable;
//! use garrison_metrics::{MetricsLayer, MetricsRegistry};
//!
//! let registry = MetricsRegistry::new();
//! let layer = MetricsLayer::new(&registry)
//!     .route_table(RouteTable::from_patterns(["/users/{id}", "/health"]).unwrap());
//! let svc = tower::ServiceBuilder::new()
//!     .layer(layer)
//!     .service_fn(|_req: http::Request<()>| async {
//!         Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
//!     });
//! # let _ = svc;
//! ```
#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod duration;
mod exporter;
mod exposition;
mod histogram;
mod layer;
mod process;
#[cfg(feature = "prometheus-client")]
mod prometheus_client;
#[cfg(feature = "metrics")]
mod recorder;
mod registry;
mod render;
mod table;

pub use duration::DurationHistogram;
pub use exporter::{MetricsExporter, ScrapeAccess, ScrapeLayer, ScrapeService};
pub use exposition::{Collector, Format, MetricType, MetricWriter};
pub use garrison_core::{Part, RequestInfo, RouteTable, TraceContext, TraceId};
pub use histogram::HistogramSnapshot;
pub use layer::{MeasuredRequest, MetricsBody, MetricsLayer, MetricsService, ResponseFuture};
pub use process::ProcessStats;
#[cfg(feature = "prometheus-client")]
pub use prometheus_client::PrometheusClientCollector;
#[cfg(feature = "metrics")]
pub use recorder::{GarrisonRecorder, GarrisonRecorderBuilder};
pub use registry::{
    BuildError, MetricsRegistry, MetricsRegistryBuilder, SeriesSnapshot, DEFAULT_DURATION_BUCKETS,
    DEFAULT_MAX_SERIES, DEFAULT_SIZE_BUCKETS,
};
