//! The stack reads the clock once per request for metrics, rate limit and breaker when they
//! share it, and each part reads its own when a registry passed in has a clock of its own:
//! durations and slow calls must come out the same either way.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use garrison::garrison_breaker::BreakerRegistry;
use garrison::garrison_core::{ManualClock, SharedClock};
use garrison::{Garrison, GarrisonConfig};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service};

mod common;

const CONFIG: &str = r#"
[service]
routes = ["/slow"]

[trace]
enabled = false

[ratelimit]
default_policy = "one"

[ratelimit.policies.one]
limit = 1
period = "10s"

[breaker]
profile = "slowish"
per_route = false

[breaker.profiles.slowish]
base = "default"
slow_call_duration = "200ms"
"#;

/// A service that takes `took` of `clock`'s time to answer.
fn slow_service(
    clock: Arc<ManualClock>,
    took: Duration,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    tower::service_fn(move |_req: Request<Full<Bytes>>| {
        clock.advance(took);
        async { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok")))) }
    })
}

async fn call<S, B>(svc: &mut S) -> StatusCode
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible>,
    B: http_body::Body,
    B::Error: std::fmt::Debug,
{
    let req = common::get("/slow").body(Full::new(Bytes::new())).unwrap();
    common::status_of(svc, req).await
}

/// The seconds recorded for the `200`s, to the nanosecond.
fn duration_sum(g: &Garrison) -> f64 {
    let text = g
        .metrics()
        .render(garrison::garrison_metrics::Format::Prometheus);
    text.lines()
        .find(|l| l.starts_with("http_server_request_duration_seconds_sum{") && l.contains("200"))
        .unwrap_or_else(|| panic!("no duration sum in\n{text}"))
        .rsplit(' ')
        .next()
        .unwrap()
        .parse::<f64>()
        .unwrap()
}

fn assert_seconds(got: f64, want: f64) {
    assert!(
        (got - want).abs() < 1e-9,
        "{got} s recorded, {want} s taken"
    );
}

fn slow_calls(breakers: &BreakerRegistry) -> u64 {
    let b = breakers.get("server").expect("the stack's breaker");
    b.calls().iter().find(|(k, _)| *k == "slow").unwrap().1
}

/// The stack of `CONFIG` on `clock`, with `breakers` when given.
fn stack(clock: &Arc<ManualClock>, breakers: Option<BreakerRegistry>) -> Garrison {
    let mut b = Garrison::builder()
        .config(GarrisonConfig::from_toml(CONFIG).unwrap())
        .clock(SharedClock::from_arc(clock.clone()));
    if let Some(r) = breakers {
        b = b.breaker_registry(r);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn one_clock_read_serves_metrics_rate_limit_and_breaker() {
    let manual = Arc::new(ManualClock::new());
    let garrison = stack(&manual, None);
    let mut svc = garrison
        .layer()
        .layer(slow_service(manual.clone(), Duration::from_millis(300)));
    assert_eq!(call(&mut svc).await, StatusCode::OK);
    // the request took 300 ms of the stack's clock, from the one reading at its start
    assert_seconds(duration_sum(&garrison), 0.3);
    assert_eq!(slow_calls(garrison.breakers()), 1, "300 ms is a slow call");
    // the limiter counted the request at that same reading, before the service ran: 10 s
    // after it (not after its answer) the next one passes
    manual.advance(Duration::from_millis(9_400));
    assert_eq!(call(&mut svc).await, StatusCode::TOO_MANY_REQUESTS);
    manual.advance(Duration::from_millis(400));
    assert_eq!(call(&mut svc).await, StatusCode::OK);
}

#[tokio::test]
async fn a_breaker_registry_on_its_own_clock_times_calls_on_it() {
    let manual = Arc::new(ManualClock::new());
    // the breakers' clock is ten seconds ahead of the stack's and stands still
    let own = Arc::new(ManualClock::new());
    own.advance(Duration::from_secs(10));
    let breakers = BreakerRegistry::with_clock(SharedClock::from_arc(own.clone()));
    let garrison = stack(&manual, Some(breakers.clone()));
    let mut svc = garrison
        .layer()
        .layer(slow_service(manual.clone(), Duration::from_millis(300)));
    assert_eq!(call(&mut svc).await, StatusCode::OK);
    assert_seconds(duration_sum(&garrison), 0.3);
    // on the breakers' own clock no time passed: a reading of the stack's clock mixed
    // with theirs would make this call look ten seconds slow (or take no time at all)
    assert_eq!(slow_calls(&breakers), 0);
}
