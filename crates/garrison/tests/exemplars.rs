//! The stack hands the trace part's trace id to the metrics part for exemplars: a recorded
//! request's latency bucket links to its trace, an unrecorded one's to none.

use std::convert::Infallible;

use bytes::Bytes;
use garrison::garrison_metrics::Format;
use garrison::{Garrison, GarrisonConfig};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tower::{Layer, Service};

mod common;

const CONFIG: &str = r#"
[service]
routes = ["/items"]

[trace]
sampler = "ratio"
ratio = 0.0

[metrics]
exemplars = true
"#;

const SAMPLED: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const UNSAMPLED: &str = "0af7651916cd43dd8448eb211c80319c";

async fn call<S>(svc: &mut S, trace_id: &str, flags: &str) -> StatusCode
where
    S: Service<Request<Full<Bytes>>, Response = Response<garrison::GarrisonBody<Full<Bytes>>>>,
    S::Error: std::fmt::Debug,
{
    let req = common::get("/items")
        .header(
            "traceparent",
            format!("00-{trace_id}-00f067aa0ba902b7-{flags}"),
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    common::status_of(svc, req).await
}

#[tokio::test]
async fn a_recorded_request_s_bucket_links_to_its_trace_and_an_unrecorded_one_to_none() {
    let garrison = Garrison::builder()
        .config(GarrisonConfig::from_toml(CONFIG).unwrap())
        .build()
        .unwrap();
    let mut svc = garrison.layer().layer(tower::service_fn(|_req| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"ok"))))
    }));
    // parent-based sampling: the caller's flag decides, whatever the ratio for new traces
    assert_eq!(call(&mut svc, UNSAMPLED, "00").await, StatusCode::OK);
    let text = garrison.metrics().render(Format::OpenMetrics);
    assert!(
        !text.contains("trace_id="),
        "an unrecorded request left an exemplar:\n{text}"
    );
    assert_eq!(call(&mut svc, SAMPLED, "01").await, StatusCode::OK);
    let text = garrison.metrics().render(Format::OpenMetrics);
    let exemplars: Vec<&str> = text.lines().filter(|l| l.contains("trace_id=")).collect();
    assert!(
        !exemplars.is_empty()
            && exemplars
                .iter()
                .all(|l| l.contains(&format!("trace_id=\"{SAMPLED}\""))
                    && l.contains("http_route=\"/items\"")),
        "no exemplar of the recorded request's trace, or one of another:\n{text}"
    );
}
