//! Trace propagation, OTLP export and JSON logs with trace ids, in front of an axum router.
//!
//! ```text
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run --example trace_axum
//! curl -i -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' localhost:3000/hello/ada
//! curl -i localhost:3000/fail          # a 500: always kept by the error-biased sampler
//! curl -s localhost:3000/metrics | grep -E 'garrison_trace|# \{trace_id'
//! ```
//!
//! The response carries `x-request-id` and `traceresponse`; every log line printed while a
//! request is served is JSON with its `trace_id`, `span_id` and `request_id`. Spans go to the
//! OTLP collector named by the standard `OTEL_EXPORTER_OTLP_*` variables when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (a collector that is down costs requests nothing), and
//! nowhere otherwise. Sampling keeps every error and request slower than 500 ms, and 10% of
//! the rest. It listens on `GARRISON_LISTEN` (default `127.0.0.1:3000`).

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use garrison_metrics::{MetricsLayer, MetricsRegistry};
use garrison_trace::{OtlpConfig, OtlpSink, Sampler, TraceLayer, Tracer};

/// The example's sampler: every error and slow request, 10% of the rest.
pub(crate) const SAMPLER: Sampler = Sampler::ErrorBiased {
    ratio: 0.1,
    slow: Duration::from_millis(500),
};

/// The routes behind the trace and metrics layers (trace outermost, as the umbrella stacks
/// them), with `/metrics`.
pub(crate) fn app(tracer: &Tracer, metrics: &MetricsRegistry) -> Router {
    Router::new()
        .route(
            "/hello/{name}",
            get(|Path(name): Path<String>| async move {
                tracing::info!(name = %name, "greeting");
                format!("hello {name}\n")
            }),
        )
        .route(
            "/fail",
            get(|| async {
                tracing::error!("failing on purpose");
                StatusCode::INTERNAL_SERVER_ERROR
            }),
        )
        .route_service("/metrics", metrics.exporter())
        .layer(MetricsLayer::new(metrics))
        .layer(
            TraceLayer::new(tracer)
                .trace_response(true)
                .access_log(true),
        )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with(garrison_trace::json_logs())
        .init();
    let addr = std::env::var("GARRISON_LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("trace_axum listening on http://{}", listener.local_addr()?);
    let metrics = MetricsRegistry::new();
    let mut tracer = Tracer::builder().sampler(SAMPLER);
    if std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() {
        tracer = tracer.sink(OtlpSink::new(
            OtlpConfig::from_env().service_name("trace-example"),
        )?);
    }
    let tracer = tracer.build();
    tracer.metrics(&metrics);
    axum::serve(
        listener,
        app(&tracer, &metrics).into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await?;
    Ok(())
}
