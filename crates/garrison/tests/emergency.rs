//! The emergency actions: maintenance answers every request but health and scrape with
//! `503` and a message, and the admission queue drains on demand.

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison::{Garrison, GarrisonConfig};
use http::{Request, StatusCode};
use tower::ServiceExt;

async fn call(app: &Router, method: &str, path: &str) -> (StatusCode, http::HeaderMap, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(Body::empty())
        .unwrap();
    let resp = app.clone().oneshot(req).await.unwrap();
    let (head, body) = resp.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    (
        head.status,
        head.headers,
        String::from_utf8(body.to_vec()).unwrap(),
    )
}

async fn act(garrison: &Garrison, method: &str, path: &str) -> (StatusCode, String) {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .body(())
        .unwrap();
    let resp = garrison.emergency_service().oneshot(req).await.unwrap();
    (resp.status(), resp.into_body())
}

#[tokio::test]
async fn maintenance_answers_503_with_its_message_except_health_and_scrape() {
    let garrison = Garrison::builder().build().unwrap();
    let app = Router::new()
        .route("/orders", get(|| async { "orders" }))
        .layer(garrison.layer());
    assert_eq!(call(&app, "GET", "/orders").await.0, StatusCode::OK);

    let (status, state) = act(
        &garrison,
        "POST",
        "/maintenance?message=Moving%20the%20database&retry_after=60",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        state,
        r#"{"on":true,"message":"Moving the database","retry_after_seconds":60}"#
    );
    let (status, headers, body) = call(&app, "GET", "/orders").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "60");
    assert_eq!(
        body,
        r#"{"error":"maintenance","message":"Moving the database","retry_after_seconds":60}"#
    );
    // probes and scrapes still tell the truth
    assert_eq!(call(&app, "GET", "/health/live").await.0, StatusCode::OK);
    let (status, _, scrape) = call(&app, "GET", "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        scrape.contains(r#"http_route="/orders",http_response_status_code="503""#),
        "the 503s are measured:\n{scrape}"
    );

    assert_eq!(
        act(&garrison, "DELETE", "/maintenance").await,
        (StatusCode::OK, r#"{"on":false}"#.into())
    );
    assert_eq!(call(&app, "GET", "/orders").await.0, StatusCode::OK);
    // a bad Retry-After changes nothing
    let (status, _) = act(&garrison, "POST", "/maintenance?retry_after=soon").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(!garrison.maintenance().is_on());
}

#[tokio::test]
async fn draining_needs_admission_on() {
    let off = Garrison::builder().build().unwrap();
    assert_eq!(
        act(&off, "POST", "/admission/drain").await.0,
        StatusCode::CONFLICT
    );
    let on = Garrison::builder()
        .config(
            GarrisonConfig::from_toml(
                r#"
                [admission]
                enabled = true
                "#,
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    assert_eq!(
        act(&on, "POST", "/admission/drain").await,
        (StatusCode::OK, r#"{"drained":0}"#.into())
    );
    assert_eq!(
        act(&on, "GET", "/admission/drain").await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
}
