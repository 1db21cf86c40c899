//! The peer set-ups and the stack configuration that the benches and `just load`'s server
//! share, so that every comparison measures the same thing. Included with `#[path]` (the peer
//! crates are dev-dependencies, out of reach of the workspace's support library).

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use opentelemetry::trace::TracerProvider as _;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

/// The whole garrison as the benches run it: the defaults, trace at 10%, and a policy no run
/// can exhaust (burst 9999, so that the header numbers stay as small as real policies').
pub(crate) const STACK_CONFIG: &str = r#"
[trace]
ratio = 0.1

[ratelimit.policies.general]
limit = 1000000
period = "1s"
burst = 9999
"#;

/// [`STACK_CONFIG`] with the parts named after the variant's dashes turned off:
/// `garrison_stack-trace-ratelimit` is the stack without trace and rate limit, to see what
/// each part costs.
pub(crate) fn stack_config(variant: &str) -> garrison::GarrisonConfig {
    let mut config = garrison::GarrisonConfig::from_toml(STACK_CONFIG).expect("stack config");
    for part in variant.split('-').skip(1) {
        match part {
            "trace" => config.trace.enabled = false,
            "metrics" => config.metrics.enabled = false,
            "health" => config.health.enabled = false,
            "ratelimit" => config.ratelimit.enabled = false,
            "breaker" => config.breaker.enabled = false,
            // not a part: the trace part without the OpenTelemetry context
            "otelctx" => config.trace.otel_context = false,
            other => {
                panic!("no part {other}: use trace, metrics, health, ratelimit, breaker or otelctx")
            }
        }
    }
    config
}

/// A `tracing` subscriber at INFO with tracing-opentelemetry on an SDK tracer that samples
/// with `sampler`; axum-tracing-opentelemetry's spans are TRACE-level on target
/// `otel::tracing`, enabled as its docs have it.
pub(crate) fn otel_dispatch(sampler: opentelemetry_sdk::trace::Sampler) -> tracing::Dispatch {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_sampler(sampler)
        .build();
    tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(
                tracing_subscriber::filter::Targets::new()
                    .with_default(LevelFilter::INFO)
                    .with_target("otel::tracing", LevelFilter::TRACE),
            )
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("bench"))),
    )
}

/// Parent-based, 10% of new traces: the sampling of the stack comparisons.
pub(crate) fn otel_10pct() -> tracing::Dispatch {
    otel_dispatch(opentelemetry_sdk::trace::Sampler::ParentBased(Box::new(
        opentelemetry_sdk::trace::Sampler::TraceIdRatioBased(0.1),
    )))
}

/// The burst of every bench policy, garrison's and the peers': no run can exhaust it, and the
/// header numbers stay as small as real policies' (`100`, not `4294967295`).
pub(crate) const BENCH_BURST: u32 = 9999;

/// `router` behind tower_governor with its headers on and a limit no run can reach.
pub(crate) fn with_governor(router: Router) -> Router {
    let config = tower_governor::governor::GovernorConfigBuilder::default()
        .per_nanosecond(1)
        .burst_size(BENCH_BURST)
        .use_headers()
        .finish()
        .expect("governor config");
    router.layer(tower_governor::GovernorLayer::new(Arc::new(config)))
}

/// `bare` behind the peer crates Garrison replaces, in Garrison's order: axum-tracing-
/// opentelemetry outermost, then axum-prometheus (with its `/metrics`), then tower_governor.
/// Run it under [`otel_10pct`]. Call once per process: axum-prometheus installs a global
/// recorder.
pub(crate) fn peer_stack(bare: Router) -> Router {
    let (prometheus, handle) = axum_prometheus::PrometheusMetricLayer::pair();
    with_governor(bare)
        .layer(prometheus)
        .layer(axum_tracing_opentelemetry::middleware::OtelAxumLayer::default())
        .route("/metrics", get(move || async move { handle.render() }))
}
