//! Where a request goes upstream: its path under the route, and its URI and `Host` for the
//! address picked.

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Uri};

use crate::body::UpstreamBody;
use crate::config::HostMode;

/// The request for `authority`: `parts` with the absolute URI of `path` there, and its `Host`
/// as the upstream's `host` mode says.
pub(super) fn upstream_request(
    mut parts: http::request::Parts,
    authority: &Authority,
    path: &PathAndQuery,
    host: HostMode,
    body: UpstreamBody,
) -> Request<UpstreamBody> {
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(Scheme::HTTP);
    uri.authority = Some(authority.clone());
    uri.path_and_query = Some(path.clone());
    parts.uri = Uri::from_parts(uri).expect("scheme, authority and path are set");
    if host == HostMode::Upstream || !parts.headers.contains_key(header::HOST) {
        if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
            parts.headers.insert(header::HOST, v);
        }
    }
    Request::from_parts(parts, body)
}

/// The path and query sent upstream, without the route's prefix when it strips it.
pub(super) fn upstream_path(uri: &Uri, strip: Option<&str>) -> Option<PathAndQuery> {
    let pq = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    match strip {
        // the request's own, shared: no parse and no copy
        None | Some("") => Some(
            uri.path_and_query()
                .cloned()
                .unwrap_or_else(|| PathAndQuery::from_static("/")),
        ),
        Some(prefix) => {
            let rest = pq.strip_prefix(prefix)?;
            if rest.is_empty() || rest.starts_with('?') {
                format!("/{rest}").parse().ok()
            } else if rest.starts_with('/') {
                rest.parse().ok()
            } else {
                None // `/apix` under prefix `/api`: not this route's
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stripped_prefix_leaves_the_rest_of_the_path_and_the_query() {
        let uri: Uri = "/api/users/7?x=1".parse().unwrap();
        assert_eq!(upstream_path(&uri, Some("/api")).unwrap(), "/users/7?x=1");
        let bare: Uri = "/api?x=1".parse().unwrap();
        assert_eq!(upstream_path(&bare, Some("/api")).unwrap(), "/?x=1");
        assert_eq!(upstream_path(&uri, None).unwrap(), "/api/users/7?x=1");
        let other: Uri = "/apix".parse().unwrap();
        assert!(upstream_path(&other, Some("/api")).is_none());
    }
}
