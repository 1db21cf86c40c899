//! What the client gets: the upstream's response, or the gateway's own answer when there is
//! none (a small JSON body: `502`, `503`, `504`, and `400`, `408` or `413` when the client's
//! request is to blame).

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use garrison::garrison_core::{push_json_string, LayerBody};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Response, StatusCode};

use super::{ProxyBody, Route};
use crate::body::BodyWatch;
use crate::failure::Failure;
use crate::forwarding::remove_hop_by_hop;
use crate::pool::PooledBody;
use crate::upstream::Upstream;

/// The answer when the client, not the upstream, made the request fail: a body that broke
/// (`400`) or that stopped coming while the upstream waited for it (`408`). `None`: the
/// upstream is to blame.
pub(super) fn client_blame(
    watch: Option<&BodyWatch>,
    failure: &Failure,
) -> Option<Response<ProxyBody>> {
    let watch = watch?;
    if watch.broke() {
        return Some(gateway_error(
            StatusCode::BAD_REQUEST,
            "the request body is malformed or incomplete",
            None,
        ));
    }
    if watch.waiting() && matches!(failure, Failure::Timeout | Failure::Broken(_)) {
        return Some(gateway_error(
            StatusCode::REQUEST_TIMEOUT,
            "the request body came too slowly",
            None,
        ));
    }
    None
}

/// The gateway's answer when the upstream of `route` gave none.
pub(super) fn unanswered(route: &Route, failure: Failure) -> Response<ProxyBody> {
    let up = &route.upstream;
    let name = Some(up.name());
    match failure {
        Failure::Connect(e) => {
            tracing::warn!(upstream = up.name(), error = %e, "upstream unreachable");
            gateway_error(StatusCode::BAD_GATEWAY, "upstream unreachable", name)
        }
        Failure::TooLarge => too_large(route.max_body),
        Failure::Broken(e) => {
            tracing::warn!(upstream = up.name(), error = %e, "upstream connection failed");
            gateway_error(StatusCode::BAD_GATEWAY, "upstream connection failed", name)
        }
        Failure::ConnectTimeout => gateway_error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream connect timed out",
            name,
        ),
        Failure::Timeout => gateway_error(StatusCode::GATEWAY_TIMEOUT, "upstream timed out", name),
        Failure::Saturated => {
            let mut resp = gateway_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connection limit reached",
                name,
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            resp
        }
    }
}

/// The upstream's response as the client gets it: hop-by-hop headers removed, the body
/// bounded by the upstream's idle timeout and, over HTTP/2, watched for a client that stalls.
pub(super) fn client_response(
    resp: Response<PooledBody>,
    up: &Upstream,
    stalls: Option<&Arc<crate::stall::Stalls>>,
) -> Response<ProxyBody> {
    let (mut parts, mut body) = resp.into_parts();
    body.idle_timeout(up.body_idle_timeout);
    if let Some(stalls) = stalls {
        body.watched(stalls);
    }
    remove_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, LayerBody::inner(body))
}

/// The gateway's own error: a small JSON body, never cached.
pub(crate) fn gateway_error(
    status: StatusCode,
    message: &str,
    upstream: Option<&str>,
) -> Response<ProxyBody> {
    let mut b = BytesMut::with_capacity(96);
    b.put_slice(b"{\"error\":");
    let mut s = String::new();
    push_json_string(&mut s, message);
    if let Some(u) = upstream {
        s.push_str(",\"upstream\":");
        push_json_string(&mut s, u);
    }
    b.put_slice(s.as_bytes());
    b.put_slice(format!(",\"status\":{}}}", status.as_u16()).as_bytes());
    let mut resp = Response::new(LayerBody::local(b.freeze()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Whether `h`'s `Content-Length` says more than `limit` bytes.
pub(super) fn declared_over(h: &HeaderMap, limit: usize) -> bool {
    h.get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}

/// `413` for a request body over `limit` bytes.
pub(super) fn too_large(limit: usize) -> Response<ProxyBody> {
    tracing::debug!(limit, "a request body over its route's limit");
    gateway_error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the request body is larger than {limit} bytes"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_small_json_bodies_that_are_never_cached() {
        let r = gateway_error(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream timed out",
            Some("a\"b"),
        );
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
