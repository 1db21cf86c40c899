//! `[metrics] token` and `allow_from`: who may scrape, in front of the whole stack.

use std::net::SocketAddr;

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison::garrison_core::PeerAddr;
use garrison::{Garrison, GarrisonConfig};
use http::{Request, StatusCode};
use tower::ServiceExt;

/// `GET path` from the peer address `from`, with a bearer token if any.
async fn get_from(
    app: &Router,
    path: &str,
    from: &str,
    token: Option<&str>,
) -> (StatusCode, String) {
    let mut req = Request::get(path);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let mut req = req.body(Body::empty()).unwrap();
    let peer: SocketAddr = format!("{from}:40000").parse().unwrap();
    req.extensions_mut().insert(PeerAddr(peer));
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 22)
        .await
        .unwrap();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

async fn scrape(app: &Router, from: &str, token: Option<&str>) -> (StatusCode, String) {
    get_from(app, "/metrics", from, token).await
}

#[tokio::test]
async fn scrapes_need_the_token_and_an_allowed_network() {
    let config = GarrisonConfig::from_toml(
        r#"
        [metrics]
        token = "scrape-2026"
        allow_from = ["10.0.0.0/8", "fd00::/8"]
        "#,
    )
    .unwrap();
    let garrison = Garrison::from_config(config).unwrap();
    let app = Router::new()
        .route("/orders", get(|| async { "orders" }))
        .layer(garrison.layer());

    let (status, body) = scrape(&app, "10.1.2.3", Some("scrape-2026")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("http_server_request_duration_seconds"),
        "{body}"
    );

    let (status, body) = scrape(&app, "10.1.2.3", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(!body.contains("http_server"), "no metric leaks: {body}");
    assert_eq!(
        scrape(&app, "10.1.2.3", Some("guess")).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (status, body) = scrape(&app, "192.0.2.7", Some("scrape-2026")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(!body.contains("http_server"), "no metric leaks: {body}");
    // the application's routes are not affected
    let orders = Request::get("/orders").body(Body::empty()).unwrap();
    assert_eq!(
        app.clone().oneshot(orders).await.unwrap().status(),
        StatusCode::OK
    );
}

#[test]
fn a_bad_network_is_reported_with_its_index() {
    let err = GarrisonConfig::from_toml(
        r#"
        [metrics]
        allow_from = ["10.0.0.0/8", "ten/8"]
        "#,
    )
    .unwrap_err();
    let issues: Vec<String> = err
        .issues()
        .iter()
        .map(|i| format!("{}: {}", i.path, i.message))
        .collect();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(
        issues[0].starts_with("metrics.allow_from[1]: `ten/8` is not an IP network"),
        "{issues:?}"
    );
}

#[tokio::test]
async fn health_details_go_only_to_the_allowed_networks() {
    let config = GarrisonConfig::from_toml(
        r#"
        [health]
        details = "always"
        details_from = ["10.0.0.0/8"]
        "#,
    )
    .unwrap();
    let garrison = Garrison::from_config(config).unwrap();
    let app = Router::new()
        .route("/orders", get(|| async { "orders" }))
        .layer(garrison.layer());
    let deep = |from: &'static str| {
        let app = app.clone();
        async move {
            let (_, body) = get_from(&app, "/health", from, None).await;
            serde_json::from_str::<serde_json::Value>(&body).unwrap()
        }
    };
    let inside = deep("10.9.8.7").await;
    assert!(inside.get("checks").is_some(), "{inside}");
    let outside = deep("192.0.2.7").await;
    let keys: Vec<&String> = outside.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["status"], "the status only: {outside}");
    // an answer that cannot know the caller's address shows no details
    let headers_only = garrison.health().respond(
        garrison::garrison_health::Probe::Deep,
        &http::HeaderMap::new(),
    );
    let body: serde_json::Value = serde_json::from_slice(headers_only.body()).unwrap();
    assert_eq!(
        body.as_object().unwrap().len(),
        1,
        "the status only: {body}"
    );
}
