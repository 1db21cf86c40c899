//! The layer in front of an axum router: exact values on tokio's paused clock, keys, hostile
//! input, exemptions and metrics.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::routing::{get, post};
use axum::Router;
use garrison_core::{ForwardedHeader, SharedClock, TokioClock, TrustedProxies};
use garrison_metrics::{Format, MetricsRegistry};
use garrison_ratelimit::{HeaderSet, KeySource, PeerAddr, Policy, RateLimitLayer};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

fn app(layer: RateLimitLayer) -> Router {
    Router::new()
        .route("/items", get(|| async { "items" }))
        .route("/login", post(|| async { "welcome" }))
        .route("/upload", post(|| async { "stored" }))
        .route("/health/live", get(|| async { "ok" }))
        .layer(layer)
}

fn builder() -> garrison_ratelimit::RateLimitBuilder {
    RateLimitLayer::builder()
        .policy(Policy::per_minute("general", 100))
        .policy(Policy::new("auth", 5, Duration::from_secs(15 * 60)))
        .policy(Policy::new("upload", 10, Duration::from_secs(5 * 60)))
        .route("/login", "auth")
        .route("/upload", "upload")
        .exempt_route("/health/live")
        .clock(SharedClock::new(TokioClock))
}

fn req(method: &str, path: &str, peer: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder().method(method).uri(path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut r = b.body(Body::empty()).unwrap();
    r.extensions_mut()
        .insert(PeerAddr(peer.parse::<SocketAddr>().unwrap()));
    r
}

async fn send(app: &Router, r: Request<Body>) -> (StatusCode, HeaderMap, String) {
    let resp: Response<Body> = app.clone().oneshot(r).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

fn h<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {headers:?}"))
        .to_str()
        .unwrap()
}

const PEER: &str = "192.0.2.10:4000";

#[tokio::test(start_paused = true)]
async fn auth_policy_exactly_as_the_policy_implies() {
    let app = app(builder().build().unwrap());
    let login = || req("POST", "/login", PEER, &[]);
    for i in 0..5u64 {
        let (status, headers, body) = send(&app, login()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body, "welcome");
        assert_eq!(h(&headers, "ratelimit-policy"), "\"auth\";q=5;w=900");
        // One request comes back every 180 s; the allowance is whole i+1 intervals later.
        assert_eq!(
            h(&headers, "ratelimit"),
            format!("\"auth\";r={};t={}", 4 - i, 180 * (i + 1))
        );
        assert_eq!(h(&headers, "x-ratelimit-limit"), "5");
        assert_eq!(h(&headers, "x-ratelimit-remaining"), (4 - i).to_string());
        assert_eq!(
            h(&headers, "x-ratelimit-reset"),
            (180 * (i + 1)).to_string()
        );
    }
    let (status, headers, body) = send(&app, login()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h(&headers, "retry-after"), "180");
    assert_eq!(h(&headers, "cache-control"), "no-store");
    assert_eq!(h(&headers, "content-type"), "application/json");
    assert_eq!(h(&headers, "ratelimit"), "\"auth\";r=0;t=900");
    assert_eq!(h(&headers, "x-ratelimit-remaining"), "0");
    assert_eq!(
        body,
        r#"{"error":"rate_limited","policy":"auth","retry_after_seconds":180}"#
    );

    // 179.5 s later: half a second to wait, announced as one whole second, never 0.
    tokio::time::advance(Duration::from_millis(179_500)).await;
    let (status, headers, _) = send(&app, login()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h(&headers, "retry-after"), "1");
    assert_eq!(h(&headers, "ratelimit"), "\"auth\";r=0;t=721");

    // At 180 s, exactly one more request passes.
    tokio::time::advance(Duration::from_millis(500)).await;
    let (status, headers, _) = send(&app, login()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "ratelimit"), "\"auth\";r=0;t=900");
    assert_eq!(send(&app, login()).await.0, StatusCode::TOO_MANY_REQUESTS);

    // After the whole window, the whole burst is back.
    tokio::time::advance(Duration::from_secs(900)).await;
    let (_, headers, _) = send(&app, login()).await;
    assert_eq!(h(&headers, "ratelimit"), "\"auth\";r=4;t=180");
}

#[tokio::test(start_paused = true)]
async fn steady_rate_of_the_general_policy() {
    let app = app(builder().build().unwrap());
    let items = || req("GET", "/items", PEER, &[]);
    for _ in 0..100 {
        assert_eq!(send(&app, items()).await.0, StatusCode::OK);
    }
    let (status, headers, _) = send(&app, items()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h(&headers, "retry-after"), "1"); // 600 ms, rounded up
                                                 // Over the next minute, one request per 600 ms and not one more.
    let mut allowed = 0;
    for _ in 0..600 {
        tokio::time::advance(Duration::from_millis(100)).await;
        if send(&app, items()).await.0 == StatusCode::OK {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 100);
}

#[tokio::test(start_paused = true)]
async fn policies_routes_and_exemptions_are_separate() {
    let app = app(builder().build().unwrap());
    // Spending the auth allowance leaves the general one whole.
    for _ in 0..6 {
        send(&app, req("POST", "/login", PEER, &[])).await;
    }
    let (status, headers, _) = send(&app, req("GET", "/items", PEER, &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(h(&headers, "ratelimit"), "\"general\";r=99;t=1");
    // Exempt routes: never limited, no headers.
    for _ in 0..200 {
        let (status, headers, _) = send(&app, req("GET", "/health/live", PEER, &[])).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("ratelimit").is_none());
    }
    // Unknown paths fall under the default policy (a 404 still counts).
    let (status, headers, _) = send(&app, req("GET", "/no/such/path", PEER, &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(h(&headers, "ratelimit"), "\"general\";r=98;t=2");
    // Another client has its own allowance.
    let (_, headers, _) = send(&app, req("POST", "/login", "192.0.2.11:1", &[])).await;
    assert_eq!(h(&headers, "ratelimit"), "\"auth\";r=4;t=180");
}

#[tokio::test(start_paused = true)]
async fn spoofed_forwarding_headers_from_untrusted_peers_change_nothing() {
    let layer = builder()
        .trusted_proxies(TrustedProxies::new(["10.0.0.0/8"]).unwrap())
        .build()
        .unwrap();
    let app = app(layer.clone());
    // An attacker rotates X-Forwarded-For and Forwarded: still one client.
    for i in 0..5 {
        let spoof = format!("203.0.113.{i}");
        let fwd = format!("for={spoof}");
        let r = req(
            "POST",
            "/login",
            PEER,
            &[("x-forwarded-for", &spoof), ("forwarded", &fwd)],
        );
        assert_eq!(send(&app, r).await.0, StatusCode::OK);
    }
    let r = req(
        "POST",
        "/login",
        PEER,
        &[("x-forwarded-for", "198.51.100.99")],
    );
    assert_eq!(send(&app, r).await.0, StatusCode::TOO_MANY_REQUESTS);
    let a = layer.key_of(
        "auth",
        &req("POST", "/login", PEER, &[("x-forwarded-for", "1.1.1.1")]),
    );
    assert_eq!(a, layer.key_of("auth", &req("POST", "/login", PEER, &[])));

    // Behind the trusted proxy, each forwarded client has its own allowance.
    for i in 0..3 {
        let client = format!("198.51.100.{i}, 10.0.0.7");
        let r = req(
            "POST",
            "/login",
            "10.0.0.1:9",
            &[("x-forwarded-for", &client)],
        );
        let (status, headers, _) = send(&app, r).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(h(&headers, "ratelimit"), "\"auth\";r=4;t=180");
    }
    // A proxy configured for `Forwarded` ignores X-Forwarded-For.
    let fwd = builder()
        .trusted_proxies(
            TrustedProxies::new(["10.0.0.0/8"])
                .unwrap()
                .header(ForwardedHeader::Forwarded),
        )
        .build()
        .unwrap();
    let via = |h: &[(&str, &str)]| req("POST", "/login", "10.0.0.1:9", h);
    assert_eq!(
        fwd.key_of("auth", &via(&[("x-forwarded-for", "1.2.3.4")])),
        fwd.key_of("auth", &via(&[]))
    );
    assert_ne!(
        fwd.key_of("auth", &via(&[("forwarded", "for=1.2.3.4")])),
        fwd.key_of("auth", &via(&[]))
    );
}

#[tokio::test(start_paused = true)]
async fn malformed_and_huge_headers_never_fail_a_request() {
    let layer = builder()
        .trusted_proxies(TrustedProxies::new(["192.0.2.0/24"]).unwrap())
        .policy_key("upload", KeySource::header("x-api-key"))
        .build()
        .unwrap();
    let app = app(layer.clone());
    let huge = "9".repeat(60_000);
    let many = vec!["192.0.2.1"; 5_000].join(",");
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![("x-forwarded-for", "not an address")],
        vec![("x-forwarded-for", &huge)],
        vec![("x-forwarded-for", &many)],
        vec![("x-forwarded-for", ",,,,")],
        vec![("forwarded", "for=\"[::1")],
        vec![("x-api-key", &huge)],
    ];
    for headers in &cases {
        let (status, _, _) = send(&app, req("GET", "/items", PEER, headers)).await;
        assert_eq!(status, StatusCode::OK, "{headers:?}");
        let (status, _, _) = send(&app, req("POST", "/upload", PEER, headers)).await;
        assert!(status.is_success(), "{headers:?}");
    }
    // Bytes that are not UTF-8.
    let mut r = req("GET", "/items", PEER, &[]);
    r.headers_mut().insert(
        "x-forwarded-for",
        http::HeaderValue::from_bytes(b"\xff\xfe1.2.3.4").unwrap(),
    );
    assert_eq!(send(&app, r).await.0, StatusCode::OK);
    // A request without a peer address shares the "unknown" bucket rather than failing.
    let mut r = Request::get("/items").body(Body::empty()).unwrap();
    r.extensions_mut().clear();
    assert_eq!(send(&app, r).await.0, StatusCode::OK);
}

#[derive(Clone)]
struct UserId(String);
impl AsRef<[u8]> for UserId {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

#[tokio::test(start_paused = true)]
async fn api_keys_identities_and_exempt_keys() {
    let registry = MetricsRegistry::new();
    let layer = builder()
        .policy_key("upload", KeySource::header("x-api-key"))
        .policy_key("auth", KeySource::extension::<UserId>())
        .exempt_key("admin-secret-key")
        .exempt_key("root")
        .metrics(&registry)
        .build()
        .unwrap();
    let app = app(layer.clone());
    // Two API keys from one address: separate allowances.
    for key in ["k-alpha", "k-beta"] {
        for _ in 0..10 {
            let r = req("POST", "/upload", PEER, &[("x-api-key", key)]);
            assert_eq!(send(&app, r).await.0, StatusCode::OK);
        }
        let r = req("POST", "/upload", PEER, &[("x-api-key", key)]);
        assert_eq!(send(&app, r).await.0, StatusCode::TOO_MANY_REQUESTS);
    }
    // The exempt key passes untouched, without headers.
    for _ in 0..50 {
        let r = req(
            "POST",
            "/upload",
            PEER,
            &[("x-api-key", "admin-secret-key")],
        );
        let (status, headers, _) = send(&app, r).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("x-ratelimit-remaining").is_none());
    }
    // Identities from the auth layer: per user, the exempt one untouched.
    let as_user = |user: &str| {
        let mut r = req("POST", "/login", PEER, &[]);
        r.extensions_mut().insert(UserId(user.into()));
        r
    };
    for _ in 0..5 {
        assert_eq!(send(&app, as_user("alice")).await.0, StatusCode::OK);
    }
    assert_eq!(
        send(&app, as_user("alice")).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(send(&app, as_user("bob")).await.0, StatusCode::OK);
    for _ in 0..10 {
        assert_eq!(send(&app, as_user("root")).await.0, StatusCode::OK);
    }

    let scrape = registry.render(Format::Prometheus);
    for line in [
        "garrison_ratelimit_decisions_total{policy=\"upload\",decision=\"allowed\"} 20",
        "garrison_ratelimit_decisions_total{policy=\"upload\",decision=\"limited\"} 2",
        "garrison_ratelimit_decisions_total{policy=\"upload\",decision=\"exempt\"} 50",
        "garrison_ratelimit_decisions_total{policy=\"auth\",decision=\"allowed\"} 6",
        "garrison_ratelimit_decisions_total{policy=\"auth\",decision=\"limited\"} 1",
        "garrison_ratelimit_decisions_total{policy=\"auth\",decision=\"exempt\"} 10",
        "garrison_ratelimit_tracked_keys{policy=\"upload\"} 2",
        "garrison_ratelimit_tracked_keys{policy=\"auth\"} 2",
    ] {
        assert!(scrape.contains(line), "missing {line} in\n{scrape}");
    }
    // API keys are never kept or shown in clear.
    for text in [scrape, format!("{layer:?}")] {
        assert!(!text.contains("k-alpha") && !text.contains("admin-secret-key"));
    }
}

#[tokio::test(start_paused = true)]
async fn header_sets_and_global_bucket() {
    let only_ietf = builder().headers(HeaderSet::IETF).build().unwrap();
    let (_, headers, _) = send(&app(only_ietf), req("GET", "/items", PEER, &[])).await;
    assert!(headers.get("ratelimit").is_some() && headers.get("x-ratelimit-limit").is_none());
    let none = builder().headers(HeaderSet::NONE).build().unwrap();
    let app_none = app(none);
    let (_, headers, _) = send(&app_none, req("GET", "/items", PEER, &[])).await;
    assert!(headers.get("ratelimit").is_none() && headers.get("x-ratelimit-limit").is_none());

    let global = RateLimitLayer::builder()
        .policy(Policy::per_second("all", 3))
        .key(KeySource::Global)
        .clock(SharedClock::new(TokioClock))
        .build()
        .unwrap();
    let app = app(global);
    for i in 0..4 {
        let peer = format!("192.0.2.{i}:1");
        let expect = if i < 3 {
            StatusCode::OK
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(send(&app, req("GET", "/items", &peer, &[])).await.0, expect);
    }
}

#[tokio::test(start_paused = true)]
async fn the_reset_can_be_a_unix_time_and_a_refusal_can_say_retry_after_in_the_legacy_set() {
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let set = HeaderSet::ALL.reset_at_epoch().with_retry_after();
    let app = app(builder().headers(set).build().unwrap());
    let before = unix_now();
    let mut last = None;
    for _ in 0..6 {
        last = Some(send(&app, req("POST", "/login", PEER, &[])).await);
    }
    let after = unix_now();
    let (status, headers, _) = last.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // the auth policy (5 per 15 min) is whole again 900 s after its first request
    let reset: u64 = h(&headers, "x-ratelimit-reset").parse().unwrap();
    assert!(
        (before + 900..=after + 900).contains(&reset),
        "{reset} not within [{}, {}]",
        before + 900,
        after + 900
    );
    // RateLimit's t stays a delta
    assert!(h(&headers, "ratelimit").ends_with(";t=900"), "{headers:?}");
    assert_eq!(
        h(&headers, "x-ratelimit-retry-after"),
        h(&headers, "retry-after")
    );
    assert_eq!(h(&headers, "retry-after"), "180");

    // off by default: a delta, and no X-RateLimit-Retry-After
    let plain = self::app(builder().build().unwrap());
    for _ in 0..5 {
        send(&plain, req("POST", "/login", PEER, &[])).await;
    }
    let (status, headers, _) = send(&plain, req("POST", "/login", PEER, &[])).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(h(&headers, "x-ratelimit-reset"), "900");
    assert!(headers.get("x-ratelimit-retry-after").is_none());
}

#[tokio::test(start_paused = true)]
async fn refusals_are_logged_once_a_second_with_the_count_since_and_only_when_asked() {
    let logs = garrison_core::testing::LogCapture::start("garrison_ratelimit");
    let quiet = app(builder().build().unwrap());
    let logged = app(builder().log_refusals(true).build().unwrap());
    for app in [&quiet, &logged] {
        for i in 0..15 {
            let (status, _, _) = send(app, req("POST", "/login", PEER, &[])).await;
            assert_eq!(status == StatusCode::OK, i < 5);
        }
    }
    // ten refusals by each layer within one instant: one line, from the layer that logs
    let lines = logs.lines();
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("WARN message=rate limit refused a request policy=auth"),
        "{lines:#?}"
    );
    assert!(
        lines[0].contains("refused_since_last_event=0"),
        "{lines:#?}"
    );
    tokio::time::advance(Duration::from_millis(1000)).await;
    assert_eq!(
        send(&logged, req("POST", "/login", PEER, &[])).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
    let lines = logs.lines();
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(
        lines[1].contains("refused_since_last_event=9"),
        "{lines:#?}"
    );
}

#[test]
fn configuration_errors_name_the_key_and_the_reason() {
    let e = RateLimitLayer::builder().build().unwrap_err();
    assert_eq!(e.to_string(), "rate limit: no policy is configured");
    let e = RateLimitLayer::builder()
        .policy(Policy::per_minute("general", 100))
        .route("/login", "auth")
        .build()
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "rate limit: route `/login` names the unknown policy `auth` (known: general)"
    );
    let e = RateLimitLayer::builder()
        .policy(Policy::per_minute("general", 100))
        .policy(Policy::per_minute("general", 5))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("defined twice"), "{e}");
    let e = RateLimitLayer::builder()
        .policy(Policy::per_minute("general", 0))
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("`general`: the limit"), "{e}");
}

#[tokio::test(start_paused = true)]
async fn no_default_policy_leaves_other_routes_alone() {
    let layer = RateLimitLayer::builder()
        .policy(Policy::new("auth", 1, Duration::from_secs(60)))
        .no_default_policy()
        .route("/login", "auth")
        .clock(SharedClock::new(TokioClock))
        .build()
        .unwrap();
    let app = app(layer);
    for _ in 0..10 {
        let (status, headers, _) = send(&app, req("GET", "/items", PEER, &[])).await;
        assert_eq!(status, StatusCode::OK);
        assert!(headers.get("ratelimit").is_none());
    }
    assert_eq!(
        send(&app, req("POST", "/login", PEER, &[])).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&app, req("POST", "/login", PEER, &[])).await.0,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test(start_paused = true)]
async fn idle_keys_are_swept_on_schedule() {
    let layer = builder()
        .sweep_interval(Duration::from_secs(5))
        .build()
        .unwrap();
    let app = app(layer.clone());
    for i in 0..200u32 {
        let peer = format!("10.{}.{}.1:1", i / 256, i % 256);
        send(&app, req("GET", "/items", &peer, &[])).await;
    }
    assert_eq!(layer.limiter().tracked_keys(), 200);
    // 600 ms later every key is whole again; the background sweep drops them at its next tick.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(layer.limiter().tracked_keys(), 0);
}

/// A key extractor of the user's: one bucket per tenant, whatever address it comes from;
/// without the header, the client address.
struct Tenant;

impl garrison_ratelimit::KeyExtractor for Tenant {
    fn extract<'r>(
        &self,
        req: garrison_ratelimit::RequestParts<'r>,
    ) -> Option<std::borrow::Cow<'r, [u8]>> {
        req.headers
            .get("x-tenant")
            .map(|v| std::borrow::Cow::Borrowed(v.as_bytes()))
    }
}

#[tokio::test(start_paused = true)]
async fn a_custom_key_extractor_decides_the_bucket() {
    let layer = builder()
        .policy_key("upload", KeySource::custom(Tenant))
        .build()
        .unwrap();
    let app = app(layer);
    // one tenant from ten addresses shares its 10 uploads
    for i in 0..10 {
        let peer = format!("198.51.100.{i}:4000");
        let r = req("POST", "/upload", &peer, &[("x-tenant", "acme")]);
        assert_eq!(send(&app, r).await.0, StatusCode::OK);
    }
    let r = req(
        "POST",
        "/upload",
        "198.51.100.77:4000",
        &[("x-tenant", "acme")],
    );
    assert_eq!(send(&app, r).await.0, StatusCode::TOO_MANY_REQUESTS);
    // another tenant, and a request without the header (its address), have their own
    let r = req(
        "POST",
        "/upload",
        "198.51.100.1:4000",
        &[("x-tenant", "globex")],
    );
    assert_eq!(send(&app, r).await.0, StatusCode::OK);
    let r = req("POST", "/upload", "198.51.100.1:4000", &[]);
    assert_eq!(send(&app, r).await.0, StatusCode::OK);
}
