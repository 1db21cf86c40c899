//! The user's identity on the access log, from the extension the authentication layer sets,
//! through the umbrella's trace layer hook.

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use garrison::{Garrison, GarrisonConfig};
use http::Request;
use tower::ServiceExt;

#[derive(Clone)]
struct UserId(String);

impl AsRef<[u8]> for UserId {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

#[tokio::test]
async fn the_access_log_names_the_user_when_the_trace_layer_is_asked_to() {
    let logs = garrison_core::testing::LogCapture::start("garrison_trace");
    let config = GarrisonConfig::from_toml("[trace]\naccess_log = true\n").unwrap();
    let garrison = Garrison::builder()
        .config(config)
        .trace_layer(|t| t.enduser_id::<UserId>())
        .build()
        .unwrap();
    let app = Router::new()
        .route("/me", get(|| async { "me" }))
        .layer(garrison.layer());
    for user in ["ada", "grace"] {
        let mut req = Request::get("/me").body(Body::empty()).unwrap();
        // what an authentication layer in front of the stack leaves
        req.extensions_mut().insert(UserId(user.into()));
        let resp = app.clone().oneshot(req).await.unwrap();
        axum::body::to_bytes(resp.into_body(), 1 << 10)
            .await
            .unwrap();
    }
    let access: Vec<String> = logs
        .lines()
        .into_iter()
        .filter(|l| l.contains("message=request"))
        .collect();
    assert_eq!(access.len(), 2, "{access:#?}");
    assert!(access[0].contains("enduser_id=ada"), "{access:#?}");
    assert!(access[1].contains("enduser_id=grace"), "{access:#?}");
}
