//! The answer a layer gives in place of the service (a `429`, a `503`).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

/// A response a layer makes instead of calling the service: `status`, a JSON `body`,
/// `Retry-After: retry_after_secs` (at least 1) and `Cache-Control: no-store`, so that no cache
/// repeats a refusal to other clients.
///
/// ```
/// use http::StatusCode;
/// let r = garrison_core::refusal(StatusCode::TOO_MANY_REQUESTS, 0, r#"{"error":"x"}"#.into());
/// assert_eq!(r.headers()["retry-after"], "1");
/// assert_eq!(r.headers()["cache-control"], "no-store");
/// assert_eq!(r.headers()["content-type"], "application/json");
/// ```
pub fn refusal(status: StatusCode, retry_after_secs: u64, body: Bytes) -> Response<Bytes> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::RETRY_AFTER,
        HeaderValue::from(retry_after_secs.max(1)),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}
