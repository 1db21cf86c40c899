//! Instructions per request, for `valgrind --tool=callgrind` (deterministic where wall-clock
//! benches on a busy machine are not):
//!
//! ```text
//! cargo bench -p garrison-workspace --bench instructions --no-run
//! valgrind --tool=callgrind --collect-atstart=no --toggle-collect=instructions::requests \
//!     --callgrind-out-file=/dev/null target/release/deps/instructions-* garrison_metrics 20000
//! ```
//!
//! Run each variant with two request counts; the difference of the totals divided by the
//! difference of the counts is the cost of one request, free of set-up and of first-use
//! costs.

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison_metrics::{MetricsLayer, MetricsRegistry};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

#[allow(dead_code)]
#[path = "common/peers.rs"]
mod peers;

fn info_subscriber() {
    use tracing_subscriber::layer::SubscriberExt;
    let sub = tracing_subscriber::registry().with(tracing::level_filters::LevelFilter::INFO);
    tracing::subscriber::set_global_default(sub).unwrap();
}

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let Some(variant) = args.next() else {
        eprintln!("usage: instructions <bare_axum|noop_body_layer|garrison_metrics|axum_prometheus|breaker_closed|breaker_open_rejects|bare_axum_peer|garrison_ratelimit|garrison_ratelimit_ietf|garrison_ratelimit_legacy|garrison_ratelimit_no_headers|tower_governor|bare_axum_info|garrison_trace_0pct|garrison_trace_0pct_no_otel_context|garrison_trace_100pct|garrison_trace_pipeline|garrison_trace_pipeline_unsampled|otel_axum_layer|otel_axum_layer_unsampled|tower_http_trace|bare_axum_info_peer|garrison_stack|peer_stack> [requests]");
        return;
    };
    let n: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let bare = Router::new().route("/users/{id}", get(|| async { "hello" }));
    let app = match variant.as_str() {
        "bare_axum" => bare,
        "noop_body_layer" => bare.layer(garrison_workspace::bench::NoopLayer),
        "garrison_metrics" => bare.layer(MetricsLayer::new(&MetricsRegistry::new())),
        "breaker_closed" | "breaker_open_rejects" => {
            let breakers = garrison_breaker::BreakerRegistry::new();
            let config = garrison_breaker::BreakerConfig::profile("database").expect("profile");
            let app = bare.layer(garrison_breaker::CircuitBreakerLayer::new(
                &breakers, "db", config,
            ));
            if variant == "breaker_open_rejects" {
                breakers.force_open("db").expect("breaker exists");
            }
            app
        }
        // The rate limiters key by the peer address: their floor is bare axum with one.
        "bare_axum_peer" => bare,
        "garrison_ratelimit"
        | "garrison_ratelimit_ietf"
        | "garrison_ratelimit_legacy"
        | "garrison_ratelimit_no_headers" => {
            let set = match variant.as_str() {
                "garrison_ratelimit_ietf" => garrison_ratelimit::HeaderSet::IETF,
                "garrison_ratelimit_legacy" => garrison_ratelimit::HeaderSet::LEGACY,
                "garrison_ratelimit_no_headers" => garrison_ratelimit::HeaderSet::NONE,
                _ => garrison_ratelimit::HeaderSet::ALL,
            };
            bare.layer(
                garrison_ratelimit::RateLimitLayer::builder()
                    .policy(
                        garrison_ratelimit::Policy::per_second("bench", 1_000_000)
                            .burst(peers::BENCH_BURST),
                    )
                    .headers(set)
                    .build()
                    .expect("layer"),
            )
        }
        "tower_governor" => peers::with_governor(bare),
        "axum_prometheus" => {
            let _enter = rt.enter();
            let (layer, handle) = axum_prometheus::PrometheusMetricLayer::pair();
            std::mem::forget(handle);
            bare.layer(layer)
        }
        // Trace variants run under a `tracing` subscriber at INFO (the otel ones with
        // tracing-opentelemetry on it), as a service that logs would.
        "bare_axum_info" => {
            info_subscriber();
            bare
        }
        "garrison_trace_0pct" | "garrison_trace_100pct" | "garrison_trace_0pct_no_otel_context" => {
            info_subscriber();
            let ratio = if variant.ends_with("100pct") {
                1.0
            } else {
                0.0
            };
            let _enter = rt.enter();
            let tracer = garrison_trace::Tracer::builder()
                .sampler(garrison_trace::Sampler::Ratio(ratio))
                .build();
            bare.layer(
                garrison_trace::TraceLayer::new(&tracer)
                    .otel_context(!variant.ends_with("no_otel_context")),
            )
        }
        // The OpenTelemetry bridge: garrison's spans in the user's SDK pipeline (the provider
        // the peers use, with tracing-opentelemetry on the subscriber as theirs).
        "garrison_trace_pipeline" | "garrison_trace_pipeline_unsampled" => {
            let sampler = if variant.ends_with("unsampled") {
                opentelemetry_sdk::trace::Sampler::AlwaysOff
            } else {
                opentelemetry_sdk::trace::Sampler::AlwaysOn
            };
            let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
                .with_sampler(sampler.clone())
                .build();
            tracing::dispatcher::set_global_default(peers::otel_dispatch(sampler)).unwrap();
            let tracer = garrison_trace::Tracer::builder()
                .pipeline(garrison_trace::Pipeline::new(&provider))
                .build();
            bare.layer(garrison_trace::TraceLayer::new(&tracer))
        }
        "otel_axum_layer" | "otel_axum_layer_unsampled" => {
            let sampler = if variant.ends_with("unsampled") {
                opentelemetry_sdk::trace::Sampler::AlwaysOff
            } else {
                opentelemetry_sdk::trace::Sampler::AlwaysOn
            };
            tracing::dispatcher::set_global_default(peers::otel_dispatch(sampler)).unwrap();
            bare.layer(axum_tracing_opentelemetry::middleware::OtelAxumLayer::default())
        }
        "tower_http_trace" => {
            info_subscriber();
            bare.layer(
                tower_http::trace::TraceLayer::new_for_http()
                    .make_span_with(
                        tower_http::trace::DefaultMakeSpan::new().level(tracing::Level::INFO),
                    )
                    .on_response(
                        tower_http::trace::DefaultOnResponse::new().level(tracing::Level::INFO),
                    ),
            )
        }
        // The whole stack against the peer crates it replaces, as in benches/stack.rs: under
        // a `tracing` subscriber at INFO, with a client address, 10% of traces sampled.
        "bare_axum_info_peer" => {
            info_subscriber();
            bare
        }
        // `garrison_stack-trace-ratelimit` turns those parts off, to see what each one costs;
        // `garrison_stack-otelctx` keeps every part, without the OpenTelemetry context
        v if v.starts_with("garrison_stack") => {
            info_subscriber();
            let _enter = rt.enter();
            let tracer = garrison_trace::Tracer::builder()
                .sampler(garrison_trace::Sampler::Ratio(0.1))
                .build();
            let config = peers::stack_config(v);
            let garrison = garrison::Garrison::builder()
                .config(config)
                .tracer(tracer)
                .build()
                .unwrap();
            bare.layer(garrison.layer())
        }
        "peer_stack" => {
            tracing::dispatcher::set_global_default(peers::otel_10pct()).unwrap();
            let _enter = rt.enter();
            peers::peer_stack(bare)
        }
        other => panic!("unknown variant {other}"),
    };
    // What `axum::serve` does once: turn every handler into its final route.
    let app: Router = app.with_state(());
    let with_peer = matches!(
        variant.as_str(),
        "bare_axum_peer"
            | "garrison_ratelimit"
            | "garrison_ratelimit_ietf"
            | "garrison_ratelimit_legacy"
            | "garrison_ratelimit_no_headers"
            | "tower_governor"
            | "bare_axum_info_peer"
            | "peer_stack"
    ) || variant.starts_with("garrison_stack");
    requests(&rt, &app, n, with_peer);
}

/// The measured part: `n` requests through `app`. Callgrind counts only this function with
/// `--collect-atstart=no --toggle-collect=instructions::requests`, so that set-up whose cost
/// varies from run to run (the calibration of the time-stamp counter by `quanta`, up to
/// 200 ms of spinning) stays out of the counts.
#[inline(never)]
fn requests(rt: &tokio::runtime::Runtime, app: &Router, n: u64, with_peer: bool) {
    let peer: std::net::SocketAddr = "192.0.2.1:40000".parse().unwrap();
    rt.block_on(async {
        for _ in 0..n {
            let mut req = Request::get("/users/42").body(Body::empty()).unwrap();
            if with_peer {
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
            }
            let resp = app.clone().oneshot(req).await.unwrap();
            std::hint::black_box(resp.into_body().collect().await.unwrap());
        }
    });
}
