//! Instructions per request, for `valgrind --tool=callgrind` (deterministic where wall-clock
//! benches on a busy machine are not):
//!
//! ```text
//! cargo bench -p garrison-workspace --bench instructions --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/instructions-* garrison_metrics 20000
//! ```
//!
//! Run each variant with two request counts; the difference of the totals divided by the
//! difference of the counts is the cost of one request, free of set-up.

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison_metrics::{MetricsLayer, MetricsRegistry};
use http::Request;
use http_body_util::BodyExt;
use tower::ServiceExt;

fn main() {
    let mut args = std::env::args().skip(1).filter(|a| a != "--bench");
    let Some(variant) = args.next() else {
        eprintln!("usage: instructions <bare_axum|noop_body_layer|garrison_metrics|axum_prometheus|breaker_closed|breaker_open_rejects> [requests]");
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
        "axum_prometheus" => {
            let _enter = rt.enter();
            let (layer, handle) = axum_prometheus::PrometheusMetricLayer::pair();
            std::mem::forget(handle);
            bare.layer(layer)
        }
        other => panic!("unknown variant {other}"),
    };
    // What `axum::serve` does once: turn every handler into its final route.
    let app: Router = app.with_state(());
    rt.block_on(async {
        for _ in 0..n {
            let req = Request::get("/users/42").body(Body::empty()).unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            std::hint::black_box(resp.into_body().collect().await.unwrap());
        }
    });
}
