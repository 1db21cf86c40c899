use std::fmt;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::check::BoxFuture;
use crate::status::ms;
use crate::{Check, CheckResult, Measurement};

/// Why an [`HttpCheck`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpCheckError(String);

impl fmt::Display for HttpCheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HttpCheckError {}

/// `GET`s an upstream over plain HTTP/1.1 and reports `upstream:responseTime` (ms) and the
/// status: a 2xx or 3xx passes unless [`expect`](Self::expect) says otherwise. The body is
/// not read. For HTTPS, wrap your own client in [`check_fn`](crate::check_fn).
pub struct HttpCheck {
    uri: Uri,
    client: Client<HttpConnector, Empty<Bytes>>,
    expect: fn(StatusCode) -> bool,
}

impl fmt::Debug for HttpCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpCheck").finish_non_exhaustive()
    }
}

impl HttpCheck {
    /// A check of `url` (`http://orders:8080/health/ready`).
    pub fn new(url: &str) -> Result<Self, HttpCheckError> {
        let uri: Uri = url
            .parse()
            .map_err(|e| HttpCheckError(format!("not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(_) => {
                return Err(HttpCheckError(
                    "only http:// is supported; wrap an HTTPS client in check_fn".into(),
                ))
            }
            None => return Err(HttpCheckError("the URL needs http:// and a host".into())),
        }
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(HttpCheckError(
                "credentials in the URL would be sent in clear; pass them another way".into(),
            ));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(connector);
        Ok(Self {
            uri,
            client,
            expect: |s| s.is_success() || s.is_redirection(),
        })
    }

    /// Which statuses pass.
    pub fn expect(mut self, ok: fn(StatusCode) -> bool) -> Self {
        self.expect = ok;
        self
    }

    async fn run(&self) -> CheckResult {
        let req = Request::get(self.uri.clone())
            .header(http::header::USER_AGENT, "garrison-health")
            .body(Empty::new());
        let req = match req {
            Ok(r) => r,
            Err(e) => return CheckResult::fail(format!("bad request: {e}")),
        };
        let started = Instant::now();
        let m = match self.client.request(req).await {
            Ok(resp) => {
                let status = resp.status();
                let m = Measurement::new("responseTime")
                    .observed(ms(started.elapsed()), "ms")
                    .field("status", f64::from(status.as_u16()));
                if (self.expect)(status) {
                    m
                } else {
                    m.fail(format!("upstream answered {status}"))
                }
            }
            Err(e) => {
                let mut msg = format!("upstream unreachable: {e}");
                let mut src = std::error::Error::source(&e);
                while let Some(s) = src {
                    msg.push_str(": ");
                    msg.push_str(&s.to_string());
                    src = s.source();
                }
                Measurement::new("responseTime").fail(msg)
            }
        };
        CheckResult::pass().measurement(m)
    }
}

impl Check for HttpCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        Box::pin(self.run())
    }

    fn component_type(&self) -> Option<&'static str> {
        Some("component")
    }
}
