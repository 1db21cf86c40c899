//! The shipped checks against real peers: Redis (`GARRISON_TEST_REDIS_URL`), HTTP upstreams
//! on real sockets, breakers and the rate limiter's Redis store.

use std::time::Duration;

mod common;
use common::{closed_port, serve, silent_listener};

use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use garrison_breaker::{BreakerConfig, BreakerRegistry};
use garrison_health::{
    BreakerCheck, CheckOptions, HealthRegistry, HttpCheck, Observed, RateLimitStoreCheck,
    RedisCheck, Status,
};
use garrison_ratelimit::{Policy, RateLimitLayer, RedisStore};

fn redis_url() -> String {
    std::env::var("GARRISON_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn opts() -> CheckOptions {
    CheckOptions::readiness().timeout(Duration::from_secs(5))
}

#[tokio::test]
async fn redis_ping_against_the_real_redis_and_a_dead_one() {
    let health = HealthRegistry::new();
    health
        .register("redis", RedisCheck::new(&redis_url()).unwrap(), opts())
        .unwrap();
    health
        .register(
            "redis-closed",
            RedisCheck::new(&format!("redis://:hunter2@127.0.0.1:{}", closed_port())).unwrap(),
            opts(),
        )
        .unwrap();
    let silent = silent_listener().await;
    health
        .register(
            "redis-silent",
            RedisCheck::new(&format!("redis://{silent}")).unwrap(),
            CheckOptions::readiness().timeout(Duration::from_millis(200)),
        )
        .unwrap();
    health.refresh().await;

    let ok = health.last("redis").unwrap();
    assert_eq!(
        ok.status(),
        Status::Pass,
        "Redis at GARRISON_TEST_REDIS_URL ({}) must answer; start it with `just services`: {ok:?}",
        redis_url()
    );
    let rt = ok.result.get("responseTime").unwrap();
    assert!(matches!(rt.value(), Some(Observed::Number(ms)) if *ms >= 0.0));

    let closed = health.last("redis-closed").unwrap();
    assert_eq!(closed.status(), Status::Fail);
    let reason = closed.result.reason().unwrap();
    assert!(reason.starts_with("redis: "), "{reason}");
    assert!(!reason.contains("hunter2"), "{reason}");

    let silent = health.last("redis-silent").unwrap();
    assert_eq!(silent.result.reason(), Some("timed out after 200ms"));

    // the connection is kept between runs and the check keeps passing
    health.refresh().await;
    assert_eq!(health.last("redis").unwrap().status(), Status::Pass);
    assert_eq!(health.runs("redis"), Some(2));
}

#[tokio::test]
async fn http_upstreams_by_status() {
    let upstream = serve(
        Router::new()
            .route("/ok", get(|| async { "fine" }))
            .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE })),
    )
    .await;
    let health = HealthRegistry::new();
    health
        .register(
            "up",
            HttpCheck::new(&format!("http://{upstream}/ok")).unwrap(),
            opts(),
        )
        .unwrap();
    health
        .register(
            "down",
            HttpCheck::new(&format!("http://{upstream}/down")).unwrap(),
            opts(),
        )
        .unwrap();
    health
        .register(
            "gone",
            HttpCheck::new(&format!("http://127.0.0.1:{}/", closed_port())).unwrap(),
            opts(),
        )
        .unwrap();
    health
        .register(
            "teapot-ok",
            HttpCheck::new(&format!("http://{upstream}/down"))
                .unwrap()
                .expect(|s| s == StatusCode::SERVICE_UNAVAILABLE),
            opts(),
        )
        .unwrap();
    health.refresh().await;

    let up = health.last("up").unwrap();
    assert_eq!(up.status(), Status::Pass);
    assert_eq!(
        up.result.get("responseTime").unwrap().get_field("status"),
        Some(200.0)
    );
    let down = health.last("down").unwrap();
    assert_eq!(down.status(), Status::Fail);
    assert_eq!(
        down.result.reason(),
        Some("upstream answered 503 Service Unavailable")
    );
    let gone = health.last("gone").unwrap();
    assert_eq!(gone.status(), Status::Fail);
    assert!(
        gone.result.reason().unwrap().contains("refused"),
        "{gone:?}"
    );
    assert_eq!(health.last("teapot-ok").unwrap().status(), Status::Pass);

    assert!(HttpCheck::new("https://example.com/").is_err());
    assert!(HttpCheck::new("http://user:pw@example.com/").is_err());
    assert!(HttpCheck::new("not a url").is_err());
}

#[tokio::test]
async fn open_breakers_warn_or_fail_when_critical() {
    let breakers = BreakerRegistry::new();
    breakers.breaker("payments", BreakerConfig::default());
    breakers.breaker("search", BreakerConfig::default());
    let health = HealthRegistry::new();
    health
        .register("breakers", BreakerCheck::new(&breakers), opts())
        .unwrap();
    health
        .register(
            "breakers-critical",
            BreakerCheck::new(&breakers).critical(),
            opts(),
        )
        .unwrap();
    health.refresh().await;
    assert_eq!(health.last("breakers").unwrap().status(), Status::Pass);

    breakers.force_open("payments").unwrap();
    health.refresh().await;
    let obs = health.last("breakers").unwrap();
    assert_eq!(obs.status(), Status::Warn);
    let open = obs.result.get("open").unwrap();
    assert_eq!(open.value(), Some(&Observed::Number(1.0)));
    assert_eq!(open.get_output(), Some("open: payments"));
    assert_eq!(
        health.ready().status(),
        Status::Fail,
        "the critical one fails"
    );
    assert_eq!(
        health.last("breakers-critical").unwrap().status(),
        Status::Fail
    );

    breakers.reset("payments").unwrap();
    health.refresh().await;
    assert_eq!(health.ready().status(), Status::Pass);
}

#[tokio::test]
async fn rate_limit_store_fallback_is_a_warning() {
    let store = RedisStore::new(&format!("redis://127.0.0.1:{}", closed_port()))
        .unwrap()
        .timeout(Duration::from_millis(100));
    let layer = RateLimitLayer::builder()
        .policy(Policy::per_minute("general", 100))
        .store(store)
        .build()
        .unwrap();
    let limiter = layer.limiter().clone();
    let memory_only = RateLimitLayer::builder()
        .policy(Policy::per_minute("general", 100))
        .build()
        .unwrap();
    let health = HealthRegistry::new();
    health
        .register(
            "ratelimit",
            RateLimitStoreCheck::new(&limiter),
            opts().non_critical(),
        )
        .unwrap();
    health
        .register(
            "ratelimit-memory",
            RateLimitStoreCheck::new(memory_only.limiter()),
            opts(),
        )
        .unwrap();

    // a request whose decision reaches for the dead Redis and falls back
    let app = Router::new()
        .route("/items", get(|| async { "items" }))
        .layer(layer);
    let mut req = http::Request::get("/items")
        .body(axum::body::Body::empty())
        .unwrap();
    req.extensions_mut().insert(garrison_ratelimit::PeerAddr(
        "192.0.2.1:1000".parse().unwrap(),
    ));
    let resp = tower::ServiceExt::oneshot(app, req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "the fallback keeps serving");
    health.refresh().await;
    let obs = health.last("ratelimit").unwrap();
    assert_eq!(obs.status(), Status::Warn, "{obs:?}");
    assert_eq!(obs.reported, Status::Fail);
    assert!(obs.result.reason().unwrap().contains("local fallback"));
    assert_eq!(
        health.last("ratelimit-memory").unwrap().status(),
        Status::Pass
    );
    assert_eq!(health.ready().status(), Status::Warn);
}

#[tokio::test]
async fn the_rate_limit_check_warns_while_new_clients_share_overflow_buckets() {
    // room for 8 keys; each key stays active for 3.6 s after one request
    let layer = RateLimitLayer::builder()
        .policy(Policy::per_hour("general", 1000))
        .max_keys(8)
        .build()
        .unwrap();
    let limiter = layer.limiter().clone();
    let health = HealthRegistry::new();
    health
        .register("ratelimit", RateLimitStoreCheck::new(&limiter), opts())
        .unwrap();
    health.refresh().await;
    assert_eq!(health.last("ratelimit").unwrap().status(), Status::Pass);
    for k in 0..500u64 {
        limiter.check("general", garrison_ratelimit::ClientKey(k << 40 | k));
    }
    limiter.sweep();
    let share = limiter.overflow_share("general").unwrap();
    assert!(share > 0.9, "{share}");
    assert!(limiter.is_overflowing());
    health.refresh().await;
    let obs = health.last("ratelimit").unwrap();
    assert_eq!(obs.status(), Status::Warn, "{obs:?}");
    assert!(obs.result.reason().unwrap().contains("max_keys"));
    // a quiet interval: the share falls back, and so does the warning
    limiter.sweep();
    assert_eq!(limiter.overflow_share("general"), Some(0.0));
    health.refresh().await;
    assert_eq!(health.last("ratelimit").unwrap().status(), Status::Pass);
}

#[tokio::test]
async fn redis_ping_against_a_real_redis_cluster_and_a_dead_one() {
    let url = std::env::var("GARRISON_TEST_REDIS_CLUSTER_URL")
        .unwrap_or_else(|_| "redis+cluster://127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003".into());
    let health = HealthRegistry::new();
    health
        .register("cluster", RedisCheck::new(&url).unwrap(), opts())
        .unwrap();
    health
        .register(
            "cluster-closed",
            RedisCheck::new(&format!(
                "redis+cluster://127.0.0.1:{},127.0.0.1:{}",
                closed_port(),
                closed_port()
            ))
            .unwrap(),
            CheckOptions::readiness().timeout(Duration::from_secs(2)),
        )
        .unwrap();
    health.refresh().await;
    let ok = health.last("cluster").unwrap();
    assert_eq!(
        ok.status(),
        Status::Pass,
        "the Redis Cluster at GARRISON_TEST_REDIS_CLUSTER_URL ({url}) must answer; start it with `just services`: {ok:?}"
    );
    assert_eq!(
        health.last("cluster-closed").unwrap().status(),
        Status::Fail
    );
}

#[tokio::test]
async fn a_verbose_breaker_check_reports_every_breaker_with_its_window() {
    let breakers = BreakerRegistry::new();
    let search = breakers.breaker("search", BreakerConfig::default());
    breakers.breaker("payments", BreakerConfig::default());
    for outcome in [
        garrison_breaker::CallOutcome::Success,
        garrison_breaker::CallOutcome::Success,
        garrison_breaker::CallOutcome::Success,
        garrison_breaker::CallOutcome::Failure,
    ] {
        search.try_acquire().unwrap().record(outcome);
    }
    breakers.force_open("payments").unwrap();
    let health = HealthRegistry::new();
    health
        .register("breakers", BreakerCheck::new(&breakers).verbose(), opts())
        .unwrap();
    health.refresh().await;
    let obs = health.last("breakers").unwrap();
    assert_eq!(obs.status(), Status::Warn);
    let search = obs.result.get("search").unwrap();
    assert_eq!(search.value(), Some(&Observed::Text("closed".into())));
    assert_eq!(search.get_status(), Status::Pass);
    assert_eq!(search.get_field("calls"), Some(4.0));
    assert_eq!(search.get_field("failures"), Some(1.0));
    assert_eq!(search.get_field("failureRate"), Some(25.0));
    assert_eq!(search.get_field("openRemainingMs"), None);
    let payments = obs.result.get("payments").unwrap();
    assert_eq!(
        payments.value(),
        Some(&Observed::Text("forced_open".into()))
    );
    assert_eq!(payments.get_status(), Status::Warn);
    // without `verbose`, the open count only
    let quiet = HealthRegistry::new();
    quiet
        .register("breakers", BreakerCheck::new(&breakers), opts())
        .unwrap();
    quiet.refresh().await;
    assert_eq!(
        quiet.last("breakers").unwrap().result.measurements().len(),
        1
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn the_process_check_warns_near_its_descriptor_and_memory_limits() {
    use garrison_health::ProcessCheck;
    let health = HealthRegistry::new();
    let cgroup = tempfile::tempdir().unwrap();
    // a cgroup (v2) whose memory limit this process is far above: 1 MiB
    std::fs::write(cgroup.path().join("memory.max"), "1048576\n").unwrap();
    let roomy = tempfile::tempdir().unwrap();
    std::fs::write(roomy.path().join("memory.max"), "max\n").unwrap();
    health
        .register(
            "tight",
            ProcessCheck::new()
                .warn_open_files(0.0)
                .cgroup_root(cgroup.path()),
            opts(),
        )
        .unwrap();
    health
        .register(
            "roomy",
            ProcessCheck::new()
                .warn_open_files(1.0)
                .cgroup_root(roomy.path()),
            opts(),
        )
        .unwrap();
    health.refresh().await;
    let tight = health.last("tight").unwrap();
    assert_eq!(tight.status(), Status::Warn);
    let files = tight.result.get("openFiles").unwrap();
    assert_eq!(files.get_status(), Status::Warn, "{files:?}");
    assert!(files.get_field("max").unwrap() >= 3.0, "{files:?}");
    let memory = tight.result.get("memory").unwrap();
    assert_eq!(memory.get_status(), Status::Warn, "{memory:?}");
    assert_eq!(memory.get_field("limit"), Some(1_048_576.0));
    let roomy = health.last("roomy").unwrap();
    assert_eq!(roomy.status(), Status::Pass, "{roomy:?}");
    assert_eq!(roomy.result.get("memory").unwrap().get_field("limit"), None);
}
