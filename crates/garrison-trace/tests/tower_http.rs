//! One request id per request with tower-http's request-id layers, whichever runs first, and
//! tower-http's `MakeRequestId` for the ids Garrison makes.
#![cfg(feature = "tower-http")]

use axum::body::Body;
use axum::routing::get;
use axum::{Extension, Router};
use garrison_trace::{Sampler, TraceLayer, Tracer};
use http::Request;
use tower::ServiceExt;
use tower_http::request_id::{
    MakeRequestUuid, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};

/// The handler answers with the id tower-http's extension holds, and garrison's own.
async fn ids(Extension(theirs): Extension<RequestId>) -> String {
    let ours = garrison_trace::current().expect("inside a traced request");
    format!(
        "{} {}",
        theirs.header_value().to_str().unwrap(),
        ours.request_id
    )
}

/// Sends a request (with `x-request-id: given` when set): the response's `x-request-id`
/// headers, and the two ids the handler saw.
async fn one(app: Router, given: Option<&str>) -> (Vec<String>, String, String) {
    let mut req = Request::get("/ids");
    if let Some(g) = given {
        req = req.header("x-request-id", g);
    }
    let resp = app.oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
    let headers = resp
        .headers()
        .get_all("x-request-id")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
    let body = String::from_utf8(body.to_vec()).unwrap();
    let (theirs, ours) = body.split_once(' ').unwrap();
    (headers, theirs.to_owned(), ours.to_owned())
}

fn tracer() -> Tracer {
    Tracer::builder().sampler(Sampler::Never).build()
}

fn assert_one_id((headers, theirs, ours): &(Vec<String>, String, String)) {
    assert_eq!(headers.len(), 1, "{headers:?}");
    assert_eq!(&headers[0], theirs);
    assert_eq!(theirs, ours);
}

#[tokio::test]
async fn tower_https_set_request_id_outside_garrisons_gives_one_id() {
    let app = Router::new()
        .route("/ids", get(ids))
        .layer(TraceLayer::new(&tracer()))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid));
    let made = one(app.clone(), None).await;
    assert_one_id(&made);
    assert_eq!(made.1.len(), 36, "tower-http's UUID: {made:?}");
    let given = one(app, Some("caller-7")).await;
    assert_one_id(&given);
    assert_eq!(given.1, "caller-7");
}

#[tokio::test]
async fn garrison_outside_tower_https_layers_gives_one_id() {
    let app = Router::new()
        .route("/ids", get(ids))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(TraceLayer::new(&tracer()));
    let made = one(app.clone(), None).await;
    assert_one_id(&made);
    assert_eq!(made.1.len(), 32, "garrison's hex id: {made:?}");
    // a hostile id is replaced, and tower-http's layers inside see the replacement
    let hostile = one(app, Some(&"x".repeat(300))).await;
    assert_one_id(&hostile);
    assert_eq!(hostile.1.len(), 32);
}

#[tokio::test]
async fn garrison_makes_its_ids_with_tower_https_maker() {
    let app = Router::new()
        .route("/ids", get(ids))
        .layer(TraceLayer::new(&tracer()).make_request_id(MakeRequestUuid));
    let made = one(app, None).await;
    assert_one_id(&made);
    assert_eq!(made.1.len(), 36, "a UUID: {made:?}");
    assert_eq!(made.1.matches('-').count(), 4);
}
