//! [`EmergencyService`]: the operator's emergency actions as a tower service, to mount behind
//! your own authentication.

use std::convert::Infallible;
use std::future::{ready, Ready};
use std::task::{Context, Poll};
use std::time::Duration;

use garrison_admission::Admission;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use tower::Service;

use crate::Maintenance;

/// The emergency actions on a stack, as a tower service that answers JSON:
///
/// | request | what it does |
/// |---|---|
/// | `GET /maintenance` | whether maintenance is on, its message and `Retry-After` |
/// | `POST /maintenance?message=…&retry_after=600` | turns it on (every request but health and scrape answered `503`; `retry_after` in seconds, default 300) |
/// | `DELETE /maintenance` | turns it off |
/// | `POST /admission/drain` | sheds every request waiting for an admission slot (`503`) |
///
/// It checks no credentials: mount it where only operators reach, behind your own
/// authentication (the gateway serves it under `/admin/` with its admin token).
///
/// ```
/// use garrison::Garrison;
/// use tower::ServiceExt;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let garrison = Garrison::builder().build().unwrap();
/// let on = http::Request::post("/maintenance?message=back%20soon&retry_after=60")
///     .body(())
///     .unwrap();
/// let resp = garrison.emergency_service().oneshot(on).await.unwrap();
/// assert_eq!(resp.status(), 200);
/// assert_eq!(garrison.maintenance().state().unwrap().0.as_ref(), "back soon");
/// // with axum: Router::new().nest_service("/ops", garrison.emergency_service()), behind
/// // your authentication layer
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct EmergencyService {
    maintenance: Maintenance,
    admission: Option<Admission>,
}

/// The `Retry-After` of maintenance turned on without one.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(300);

impl EmergencyService {
    pub(crate) fn new(maintenance: Maintenance, admission: Option<Admission>) -> Self {
        Self {
            maintenance,
            admission,
        }
    }

    /// The answer to `req`.
    pub fn respond<B>(&self, req: &Request<B>) -> Response<String> {
        let query = req.uri().query().unwrap_or("");
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/maintenance") => self.maintenance_state(),
            (&Method::POST, "/maintenance") => {
                let message = param(query, "message").unwrap_or_default();
                let retry_after = match param(query, "retry_after") {
                    None => DEFAULT_RETRY_AFTER,
                    Some(s) => match s.parse::<u64>() {
                        Ok(n) if n > 0 => Duration::from_secs(n),
                        _ => {
                            return json(
                                StatusCode::BAD_REQUEST,
                                r#"{"error":"retry_after is a whole number of seconds > 0"}"#
                                    .into(),
                            )
                        }
                    },
                };
                self.maintenance.enable(&message, retry_after);
                self.maintenance_state()
            }
            (&Method::DELETE, "/maintenance") => {
                self.maintenance.disable();
                self.maintenance_state()
            }
            (&Method::POST, "/admission/drain") => match &self.admission {
                Some(a) => json(StatusCode::OK, format!("{{\"drained\":{}}}", a.drain())),
                None => json(
                    StatusCode::CONFLICT,
                    r#"{"error":"admission is off: no queue to drain"}"#.into(),
                ),
            },
            (_, "/maintenance" | "/admission/drain") => json(
                StatusCode::METHOD_NOT_ALLOWED,
                r#"{"error":"method not allowed"}"#.into(),
            ),
            _ => json(StatusCode::NOT_FOUND, r#"{"error":"not found"}"#.into()),
        }
    }

    fn maintenance_state(&self) -> Response<String> {
        let body = match self.maintenance.state() {
            Some((message, secs)) => {
                let mut b = String::from("{\"on\":true,\"message\":");
                garrison_core::push_json_string(&mut b, &message);
                b.push_str(",\"retry_after_seconds\":");
                b.push_str(itoa::Buffer::new().format(secs));
                b.push('}');
                b
            }
            None => r#"{"on":false}"#.into(),
        };
        json(StatusCode::OK, body)
    }
}

fn json(status: StatusCode, body: String) -> Response<String> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The value of `key` in a query string, percent-decoded (`+` is a space); `None` when it
/// is absent or does not decode to UTF-8.
fn param(query: &str, key: &str) -> Option<String> {
    let raw = query
        .split('&')
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))?;
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

impl<B> Service<Request<B>> for EmergencyService {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        ready(Ok(self.respond(&req)))
    }
}

#[cfg(test)]
mod tests {
    use super::param;

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(
            param("message=back%20at%2014%3A30&x=1", "message").unwrap(),
            "back at 14:30"
        );
        assert_eq!(param("message=a+b", "message").unwrap(), "a b");
        assert_eq!(param("retry_after=60", "message"), None);
        assert_eq!(param("message=%zz", "message"), None);
        assert_eq!(param("message=%e2%82", "message"), None, "not UTF-8");
        assert_eq!(param("message=%4", "message"), None, "cut short");
    }
}
