//! Panics and errors of the service behind the stack: caught, answered `500`, and described
//! for the parts that record them.

use std::any::Any;
use std::borrow::Cow;
use std::cell::RefCell;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Once, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use pin_project_lite::pin_project;

/// What went wrong in a call the stack caught: in the extensions of the `500` it answered
/// with, where metrics read `error_type="panic"` (or `service_error`) and the trace layer an
/// `exception` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caught {
    /// A panic, or an error returned instead of a response.
    pub kind: CaughtKind,
    /// `exception.type`: `panic`, or the error's type name.
    pub type_name: Cow<'static, str>,
    /// `exception.message`: the panic's text or the error's `Display` (at most 1 024 bytes).
    /// It is recorded, never sent to the client.
    pub message: String,
    /// Where the panic happened (`src/orders.rs:42`), when the hook saw it.
    pub location: Option<String>,
    /// The backtrace, when `RUST_BACKTRACE` (or `RUST_LIB_BACKTRACE`) asks for one.
    pub backtrace: Option<String>,
}

/// The kinds of [`Caught`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaughtKind {
    /// The service panicked.
    Panic,
    /// The service returned an error instead of a response.
    Error,
}

/// The longest message kept.
const MAX_MESSAGE: usize = 1024;

fn cut(mut s: String) -> String {
    let end = crate::truncate_str(&s, MAX_MESSAGE).len();
    s.truncate(end);
    s
}

struct Seen {
    location: Option<String>,
    backtrace: Option<String>,
}

thread_local! {
    /// What the hook saw of the last panic on this thread.
    static LAST: RefCell<Option<Seen>> = const { RefCell::new(None) };
}

/// Installs, once per process, a panic hook that notes where each panic happened (and its
/// backtrace when `RUST_BACKTRACE` asks for one) for [`Caught`], then calls the hook that was
/// there before (the default one prints the panic as usual).
pub fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let location = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()));
            let bt = std::backtrace::Backtrace::capture();
            let backtrace =
                (bt.status() == std::backtrace::BacktraceStatus::Captured).then(|| bt.to_string());
            LAST.with(|l| {
                *l.borrow_mut() = Some(Seen {
                    location,
                    backtrace,
                })
            });
            previous(info);
        }));
    });
}

impl Caught {
    /// The panic whose payload is `payload`, with what the hook saw of it on this thread.
    pub fn panic(payload: Box<dyn Any + Send>) -> Self {
        let message = match payload.downcast::<String>() {
            Ok(s) => *s,
            Err(payload) => match payload.downcast::<&'static str>() {
                Ok(s) => (*s).to_owned(),
                Err(_) => "a panic with a payload that is not text".to_owned(),
            },
        };
        let seen = LAST.with(|l| l.borrow_mut().take());
        let (location, backtrace) = seen.map_or((None, None), |s| (s.location, s.backtrace));
        Self {
            kind: CaughtKind::Panic,
            type_name: Cow::Borrowed("panic"),
            message: cut(message),
            location,
            backtrace,
        }
    }

    /// The error `e` that a service returned instead of a response.
    pub fn error<E: std::fmt::Display>(e: &E) -> Self {
        Self {
            kind: CaughtKind::Error,
            type_name: Cow::Borrowed(std::any::type_name::<E>()),
            message: cut(e.to_string()),
            location: None,
            backtrace: None,
        }
    }

    /// The `500` to answer with: a small JSON body that names the request (never the panic's
    /// or the error's text), `Cache-Control: no-store`, and `self` in its extensions.
    pub fn into_response(self, request_id: Option<&str>) -> Response<Bytes> {
        let mut body = String::from(r#"{"error":"internal server error""#);
        if let Some(id) = request_id {
            body.push_str(r#","request_id":"#);
            crate::push_json_string(&mut body, id);
        }
        body.push('}');
        let mut resp = Response::new(Bytes::from(body));
        *resp.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp.extensions_mut().insert(self);
        resp
    }

    /// Logs the caught failure at `error` (target `garrison::caught`), with its location: call
    /// it while the request's trace is current, so that the line carries its ids.
    pub fn log(&self) {
        match self.kind {
            CaughtKind::Panic => tracing::error!(
                target: "garrison::caught",
                location = self.location.as_deref().unwrap_or("unknown"),
                panic_message = %self.message,
                "the service panicked; answered 500"
            ),
            CaughtKind::Error => tracing::error!(
                target: "garrison::caught",
                error_type = %self.type_name,
                error_message = %self.message,
                "the service returned an error; answered 500"
            ),
        }
    }
}

/// Runs `f`, turning a panic into [`Caught`].
#[inline]
pub fn catch<R>(f: impl FnOnce() -> R) -> Result<R, Caught> {
    catch_unwind(AssertUnwindSafe(f)).map_err(Caught::panic)
}

pin_project! {
    /// A future whose panics become [`Caught`]: made by [`CatchUnwind::new`].
    pub struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F> CatchUnwind<F> {
    /// Catches the panics of `inner`'s polls.
    pub fn new(inner: F) -> Self {
        Self { inner }
    }
}

impl<F> std::fmt::Debug for CatchUnwind<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatchUnwind").finish_non_exhaustive()
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Caught>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match catch(|| inner.poll(cx)) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(caught) => Poll::Ready(Err(caught)),
        }
    }
}

static REQUEST_ID_SOURCE: OnceLock<fn() -> Option<String>> = OnceLock::new();

/// Names the function that tells the id of the request being served on this thread, for the
/// body of [`CatchPanicLayer`]'s `500`: garrison-trace registers its own when a `TraceLayer`
/// is made. The first registration wins.
pub fn register_request_id_source(source: fn() -> Option<String>) {
    let _ = REQUEST_ID_SOURCE.set(source);
}

fn current_request_id() -> Option<String> {
    REQUEST_ID_SOURCE.get().and_then(|f| f())
}

/// A tower layer that answers the panics and errors of the service inside it: the client gets
/// [`Caught::into_response`]'s `500` (with the request id, never the panic's or the error's
/// text), the failure is logged at `error` with where it happened, and the layers outside see
/// a `500` that carries [`Caught`] (metrics count it as `error_type="panic"`, the breaker as a
/// failure, the trace layer adds an `exception` event).
///
/// [`Garrison::layer`](https://docs.rs/garrison) does this already; this layer is for the
/// parts used alone. Put it innermost, right around your service:
///
/// ```
/// use garrison_core::CatchPanicLayer;
/// use http::{Request, Response};
/// use tower::{service_fn, Layer, Service, ServiceExt};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut svc = CatchPanicLayer::new().layer(service_fn(|req: Request<()>| async move {
///     if req.uri().path() == "/boom" {
///         panic!("the handler is broken");
///     }
///     Ok::<_, std::io::Error>(Response::new(String::from("fine")))
/// }));
/// let resp = svc.ready().await.unwrap().call(Request::get("/boom").body(()).unwrap()).await.unwrap();
/// assert_eq!(resp.status(), 500);
/// assert!(resp.extensions().get::<garrison_core::Caught>().is_some());
/// let resp = svc.ready().await.unwrap().call(Request::get("/").body(()).unwrap()).await.unwrap();
/// assert_eq!(resp.status(), 200);
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct CatchPanicLayer {
    request_id: header::HeaderName,
}

impl Default for CatchPanicLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl CatchPanicLayer {
    /// The layer; installs the panic hook ([`install_panic_hook`]) that notes where panics
    /// happen.
    pub fn new() -> Self {
        install_panic_hook();
        Self {
            request_id: header::HeaderName::from_static("x-request-id"),
        }
    }

    /// The request header whose value is the request id when no trace layer is current
    /// (default `x-request-id`, as tower-http's `SetRequestIdLayer` sets it).
    pub fn request_id_header(mut self, name: header::HeaderName) -> Self {
        self.request_id = name;
        self
    }
}

impl<S> tower::Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic {
            inner,
            request_id: self.request_id.clone(),
        }
    }
}

/// The service made by [`CatchPanicLayer`].
#[derive(Clone, Debug)]
pub struct CatchPanic<S> {
    inner: S,
    request_id: header::HeaderName,
}

impl<S, ReqB, ResB> tower::Service<Request<ReqB>> for CatchPanic<S>
where
    S: tower::Service<Request<ReqB>, Response = Response<ResB>>,
    S::Error: std::fmt::Display,
{
    type Response = Response<crate::LayerBody<ResB>>;
    type Error = S::Error;
    type Future = CatchPanicFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let header = req.headers().get(&self.request_id).cloned();
        let inner = &mut self.inner;
        match catch(|| inner.call(req)) {
            Ok(fut) => CatchPanicFuture {
                state: CatchState::Called {
                    fut: CatchUnwind::new(fut),
                },
                header,
            },
            Err(caught) => CatchPanicFuture {
                state: CatchState::Caught {
                    caught: Some(caught),
                },
                header,
            },
        }
    }
}

pin_project! {
    #[project = CatchProj]
    enum CatchState<F> {
        Called { #[pin] fut: CatchUnwind<F> },
        Caught { caught: Option<Caught> },
    }
}

pin_project! {
    /// The response future of [`CatchPanic`].
    pub struct CatchPanicFuture<F> {
        #[pin]
        state: CatchState<F>,
        header: Option<HeaderValue>,
    }
}

impl<F> std::fmt::Debug for CatchPanicFuture<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatchPanicFuture").finish_non_exhaustive()
    }
}

impl<F, B, E> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: std::fmt::Display,
{
    type Output = Result<Response<crate::LayerBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let caught = match this.state.project() {
            CatchProj::Called { fut } => match fut.poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Ok(resp))) => {
                    return Poll::Ready(Ok(resp.map(crate::LayerBody::inner)))
                }
                Poll::Ready(Ok(Err(e))) => Caught::error(&e),
                Poll::Ready(Err(caught)) => caught,
            },
            CatchProj::Caught { caught } => caught
                .take()
                .expect("CatchPanicFuture polled after completion"),
        };
        caught.log();
        let id = current_request_id().or_else(|| {
            this.header
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        });
        let resp = caught.into_response(id.as_deref());
        Poll::Ready(Ok(resp.map(crate::LayerBody::local)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_is_described_with_its_location_and_answered_without_its_text() {
        install_panic_hook();
        let line = line!() + 1;
        let caught = catch(|| panic!("secret {}", 42)).unwrap_err();
        assert_eq!(caught.kind, CaughtKind::Panic);
        assert_eq!(caught.message, "secret 42");
        assert_eq!(
            caught.location.as_deref(),
            Some(format!("{}:{line}", file!()).as_str())
        );
        let resp = caught.clone().into_response(Some("req-\"1"));
        assert_eq!(resp.status(), 500);
        assert_eq!(
            resp.body().as_ref(),
            br#"{"error":"internal server error","request_id":"req-\"1"}"#
        );
        assert_eq!(resp.extensions().get::<Caught>(), Some(&caught));
        let long = catch(|| panic!("{}", "x".repeat(5000))).unwrap_err();
        assert_eq!(long.message.len(), MAX_MESSAGE);
        assert_eq!(catch(|| 7).unwrap(), 7);
    }

    #[test]
    fn an_error_names_its_type() {
        let e = std::io::Error::other("disk on fire");
        let caught = Caught::error(&e);
        assert_eq!(caught.kind, CaughtKind::Error);
        assert_eq!(caught.type_name, "std::io::error::Error");
        assert_eq!(caught.message, "disk on fire");
    }
}
