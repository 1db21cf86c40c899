//! `AdmissionLayer`, its service and its response future.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use garrison_core::{IpNet, LayerBody, RouteResolver, RouteTable, RouteTableError};
use http::{HeaderName, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::{Acquire, Admission, Permit, Priority, Shed};

/// The header trusted callers set a priority in: `x-priority`.
pub const DEFAULT_PRIORITY_HEADER: &str = "x-priority";

/// Puts an [`Admission`] in front of a service: see the [crate docs](crate).
#[derive(Clone)]
#[must_use]
pub struct AdmissionLayer {
    rules: Arc<Rules>,
}

/// The controller and how requests are classed: one `Arc` per service clone.
#[derive(Clone)]
struct Rules {
    admission: Admission,
    routes: HashMap<String, Priority>,
    table: RouteTable,
    resolver: RouteResolver,
    header: HeaderName,
    trusted: Vec<IpNet>,
    default: Priority,
    retry_after: u64,
}

impl fmt::Debug for AdmissionLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionLayer")
            .field("admission", &self.rules.admission)
            .field("routes", &self.rules.routes)
            .field("default", &self.rules.default)
            .finish_non_exhaustive()
    }
}

impl AdmissionLayer {
    /// Admission through `admission`; every request `Normal` until told otherwise.
    pub fn new(admission: Admission) -> Self {
        Self {
            rules: Arc::new(Rules {
                admission,
                routes: HashMap::new(),
                table: RouteTable::new(),
                resolver: RouteResolver::new(),
                header: HeaderName::from_static(DEFAULT_PRIORITY_HEADER),
                trusted: Vec::new(),
                default: Priority::Normal,
                retry_after: 1,
            }),
        }
    }

    /// The controller.
    pub fn admission(&self) -> &Admission {
        &self.rules.admission
    }

    /// Requests to the route `pattern` (axum's `MatchedPath`, or matched against the pattern
    /// for a plain hyper service) have `priority`.
    ///
    /// # Panics
    ///
    /// If `pattern` is not a route pattern; [`try_route`](Self::try_route) returns the error.
    pub fn route(self, pattern: &str, priority: Priority) -> Self {
        self.try_route(pattern, priority)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`route`](Self::route), with the error of a bad pattern.
    pub fn try_route(mut self, pattern: &str, priority: Priority) -> Result<Self, RouteTableError> {
        let rules = Arc::make_mut(&mut self.rules);
        if !rules.routes.contains_key(pattern) {
            rules.table.insert(pattern)?;
        }
        rules.routes.insert(pattern.to_owned(), priority);
        rules.resolver = RouteResolver::new().with_table(rules.table.clone());
        Ok(self)
    }

    /// The priority of requests nothing else classes. Default: `Normal`.
    pub fn default_priority(mut self, priority: Priority) -> Self {
        Arc::make_mut(&mut self.rules).default = priority;
        self
    }

    /// Callers whose address is in one of `networks` may set their priority in the priority
    /// header (`x-priority: batch`); anyone else's header is ignored. Default: nobody.
    pub fn trusted_callers(mut self, networks: impl IntoIterator<Item = IpNet>) -> Self {
        Arc::make_mut(&mut self.rules).trusted = networks.into_iter().collect();
        self
    }

    /// The header trusted callers set a priority in. Default: `x-priority`.
    pub fn priority_header(mut self, header: HeaderName) -> Self {
        Arc::make_mut(&mut self.rules).header = header;
        self
    }

    /// `Retry-After` of a shed request, in seconds (at least 1). Default: 1.
    pub fn retry_after(mut self, seconds: u64) -> Self {
        Arc::make_mut(&mut self.rules).retry_after = seconds.max(1);
        self
    }
}

impl Rules {
    #[inline]
    fn priority<B>(&self, req: &Request<B>) -> Priority {
        if let Some(p) = req.extensions().get::<Priority>() {
            return *p;
        }
        if !self.trusted.is_empty() {
            if let Some(p) = self.header_priority(req) {
                return p;
            }
        }
        if !self.routes.is_empty() {
            if let Some(p) = self.routes.get(self.resolver.resolve(req).as_str()) {
                return *p;
            }
        }
        self.default
    }

    fn header_priority<B>(&self, req: &Request<B>) -> Option<Priority> {
        let value = req.headers().get(&self.header)?;
        let peer: IpAddr = garrison_core::peer_addr(req)?.ip();
        if !self.trusted.iter().any(|n| n.contains(peer)) {
            return None;
        }
        match value.to_str().ok().map(str::parse::<Priority>) {
            Some(Ok(p)) => Some(p),
            _ => {
                tracing::debug!(header = %self.header, "priority header ignored: not critical, high, normal, low or batch");
                None
            }
        }
    }
}

impl AdmissionLayer {
    /// Admits `req` now when a slot is free and nobody waits, or queues it by its priority,
    /// for a stack that runs admission itself rather than as a layer (the `garrison`
    /// umbrella's one service). Hold the [`Permit`] until the inner service has answered.
    ///
    /// ```
    /// use garrison_admission::{Admission, AdmissionLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let layer = AdmissionLayer::new(Admission::builder().max_in_flight(1).build().unwrap());
    /// let req = http::Request::get("/orders").body(()).unwrap();
    /// let permit = layer.admit(&req).ok().unwrap();
    /// let queued = layer.admit(&req).err().unwrap(); // the one slot is taken
    /// drop(permit);
    /// assert!(queued.await.is_ok());
    /// # }
    /// ```
    // `Queued` is the slow path's state, returned by value once; boxing it is the caller's
    // choice.
    #[allow(clippy::result_large_err)]
    #[inline]
    pub fn admit<B>(&self, req: &Request<B>) -> Result<Permit, Queued> {
        let priority = self.rules.priority(req);
        match self.rules.admission.try_acquire(priority) {
            Some(permit) => Ok(permit),
            None => Err(Queued {
                acquire: self.rules.admission.enqueue(priority),
                retry_after: self.rules.retry_after,
            }),
        }
    }
}

pin_project! {
    /// A request waiting in the admission queue, from [`AdmissionLayer::admit`]: a future of
    /// its permit, or of the `503` to send when it is shed. Dropped, it leaves the queue.
    pub struct Queued {
        #[pin]
        acquire: Acquire,
        retry_after: u64,
    }
}

impl fmt::Debug for Queued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queued").finish_non_exhaustive()
    }
}

impl Future for Queued {
    type Output = Result<Permit, Response<Bytes>>;

    // the rejection is the answer itself, handed on by value once
    #[allow(clippy::result_large_err)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let retry_after = *this.retry_after;
        this.acquire
            .poll(cx)
            .map(|r| r.map_err(|shed| shed_response(shed, retry_after)))
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = AdmissionService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AdmissionService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service made by [`AdmissionLayer`].
#[derive(Clone)]
pub struct AdmissionService<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S: fmt::Debug> fmt::Debug for AdmissionService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AdmissionService")
            .field("inner", &self.inner)
            .field("admission", &self.layer.rules.admission)
            .finish()
    }
}

/// The answer to a shed request.
fn shed_response(shed: Shed, retry_after: u64) -> Response<Bytes> {
    let body = format!(
        "{{\"error\":\"overloaded\",\"reason\":\"{}\",\"priority\":\"{}\",\"retry_after_seconds\":{retry_after}}}",
        shed.reason, shed.priority
    );
    garrison_core::refusal(
        StatusCode::SERVICE_UNAVAILABLE,
        retry_after,
        Bytes::from(body),
    )
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for AdmissionService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    ResB: http_body::Body<Data = Bytes>,
{
    type Response = Response<LayerBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, Request<ReqB>>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let queued = match self.layer.admit(&req) {
            Ok(permit) => {
                return ResponseFuture {
                    state: State::Called {
                        fut: self.inner.call(req),
                        permit: Some(permit),
                    },
                }
            }
            Err(queued) => queued,
        };
        // wait for a slot with the service that was polled ready; a clone stays here
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        ResponseFuture {
            // boxed: the waiting path's state (a timer, the request) stays out of the fast
            // path's future
            state: State::Waiting {
                waiting: Box::pin(Waiting {
                    queued,
                    call: Some((ready, req)),
                }),
            },
        }
    }
}

pin_project! {
    /// The response future of [`AdmissionService`]: waits for a slot if it must, then calls
    /// the inner service and holds the slot until its response is ready.
    pub struct ResponseFuture<S: Service<R>, R> {
        #[pin]
        state: State<S, R>,
    }
}

pin_project! {
    #[project = Proj]
    enum State<S: Service<R>, R> {
        Waiting { waiting: Pin<Box<Waiting<S, R>>> },
        Called { #[pin] fut: S::Future, permit: Option<Permit> },
        Shed { resp: Option<Response<Bytes>> },
    }
}

pin_project! {
    struct Waiting<S, R> {
        #[pin]
        queued: Queued,
        call: Option<(S, R)>,
    }
}

impl<S: Service<R>, R> fmt::Debug for ResponseFuture<S, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<S, R, ResB> Future for ResponseFuture<S, R>
where
    S: Service<R, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes>,
{
    type Output = Result<Response<LayerBody<ResB>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                Proj::Called { fut, permit } => {
                    let result = ready!(fut.poll(cx));
                    drop(permit.take());
                    return Poll::Ready(result.map(|r| r.map(LayerBody::inner)));
                }
                Proj::Shed { resp } => {
                    let resp = resp.take().expect("ResponseFuture polled after completion");
                    return Poll::Ready(Ok(resp.map(LayerBody::local)));
                }
                Proj::Waiting { waiting } => {
                    let w = waiting.as_mut().project();
                    match ready!(w.queued.poll(cx)) {
                        Ok(permit) => {
                            let (mut svc, req) = w.call.take().expect("called once");
                            let fut = svc.call(req);
                            state.set(State::Called {
                                fut,
                                permit: Some(permit),
                            });
                        }
                        Err(resp) => state.set(State::Shed { resp: Some(resp) }),
                    }
                }
            }
        }
    }
}
