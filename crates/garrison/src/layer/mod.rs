//! [`GarrisonLayer`]: every part of the stack as one tower layer, in the order of the design,
//! run by one service with one response future.
//!
//! Each part is also a layer of its own crate; stacked as seven layers, every request, its
//! future and its response would be moved through seven services and seven futures. Here
//! one service starts the trace (`TraceLayer::start`), learns what the parts share once
//! (`RequestInfo`: the route, the method, one clock tick, the trace), asks each part in turn
//! through the interface their own layers use (`Part::enter`: metrics, health, scrape, rate
//! limit, admission, breaker), calls the inner service once, and one future hands the
//! response back through the parts in reverse.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use garrison_admission::{AdmissionLayer, Queued};
use garrison_breaker::CircuitBreakerLayer;
use garrison_core::{Caught, LayerBody, Part, RequestInfo, RouteResolver, SharedClock};
use garrison_health::HealthLayer;
use garrison_metrics::{MeasuredRequest, MetricsBody, MetricsLayer, ScrapeLayer};
use garrison_ratelimit::{Allowance, PendingVerdict, RateLimitLayer, Verdict};
use garrison_trace::{TraceBody, TraceLayer, TracedRequest};
use http::{Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// Every part of the stack, outermost first; `None` is a part turned off.
pub(crate) struct Parts {
    pub(crate) trace: Option<TraceLayer>,
    pub(crate) metrics: Option<MetricsLayer>,
    pub(crate) health: Option<HealthLayer>,
    pub(crate) scrape: Option<ScrapeLayer>,
    pub(crate) ratelimit: Option<RateLimitLayer>,
    pub(crate) admission: Option<AdmissionLayer>,
    pub(crate) breaker: Option<CircuitBreakerLayer>,
    /// On, every request the health and scrape parts did not answer is answered `503`.
    pub(crate) maintenance: crate::Maintenance,
    /// The resolver every part was given: a request's route is resolved once, here.
    pub(crate) resolver: RouteResolver,
    /// The clock of metrics, rate limit and breaker, when it is one clock: read once per
    /// request for the three (`None`: each reads its own).
    pub(crate) clock: Option<SharedClock>,
}

/// The whole stack as one tower [`Layer`], made by [`Garrison::layer`](crate::Garrison::layer):
///
/// 1. trace — joins the caller's trace, opens the server span, sets the request id;
/// 2. metrics — measures what the client sees, 429s and 503s included, with exemplars;
/// 3. health routes and `/metrics` — answered here, never rate limited or broken;
/// 4. rate limit — refuses before any work is done;
/// 5. admission — at most N requests in the service, the rest queued by priority or shed
///    (`[admission]`, off by default);
/// 6. circuit breaker — guards your service, counting only its outcomes;
/// 7. your service.
///
/// Parts turned off in the configuration are skipped. The layer makes one service and one
/// response future for all the parts, not one per part.
#[derive(Clone)]
#[must_use]
pub struct GarrisonLayer {
    pub(crate) parts: Arc<Parts>,
}

impl std::fmt::Debug for GarrisonLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &self.parts;
        f.debug_struct("GarrisonLayer")
            .field("trace", &p.trace.is_some())
            .field("metrics", &p.metrics.is_some())
            .field("health", &p.health.is_some())
            .field("scrape", &p.scrape.is_some())
            .field("ratelimit", &p.ratelimit.is_some())
            .field("admission", &p.admission.is_some())
            .field("breaker", &p.breaker.is_some())
            .finish()
    }
}

impl<S> Layer<S> for GarrisonLayer {
    type Service = GarrisonService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GarrisonService {
            inner,
            parts: self.parts.clone(),
        }
    }
}

/// The service made by [`GarrisonLayer`]: your service behind the whole stack. Cloning it
/// clones your service and one `Arc`.
#[derive(Clone)]
pub struct GarrisonService<S> {
    inner: S,
    parts: Arc<Parts>,
}

impl<S> std::fmt::Debug for GarrisonService<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarrisonService").finish_non_exhaustive()
    }
}

/// The response body of [`GarrisonService`]: your service's body (or the small body of a
/// response the stack made: a health report, a scrape, a `429`, a `503`), measured by the
/// metrics and ending the server span when it ends.
pub type GarrisonBody<B> = TraceBody<MetricsBody<LayerBody<B>>>;

/// What a request holds while its response is on its way: each part's handle, `None` where
/// the part is off or did not apply.
#[derive(Default)]
struct Held {
    allowance: Option<Allowance>,
    admitted: Option<garrison_admission::Permit>,
    breaker: Option<garrison_breaker::Permit>,
}

/// The parts below health that a request still has to pass.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    RateLimit,
    Admission,
    Breaker,
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for GarrisonService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: std::fmt::Display,
    ResB: http_body::Body<Data = Bytes>,
{
    type Response = Response<GarrisonBody<ResB>>;
    type Error = S::Error;
    type Future = GarrisonFuture<S, ReqB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let parts = &*self.parts;
        // 1. trace: the one part that adds to the request (its id, its trace context), so it
        // starts before the route is resolved
        let traced = parts.trace.as_ref().map(|t| t.start(&mut req));
        let measure;
        let mut held = Held::default();
        // The future is one expression, so that it is built in place rather than moved into
        // its place. The parts' work and the inner call make its first field, while the
        // request's trace is entered; the trace part moves into the next field after.
        GarrisonFuture {
            step: {
                let _entered = traced.as_ref().map(TracedRequest::enter);
                let route = parts.resolver.resolve(&req);
                let info = parts.info(&req, route.as_str(), traced.as_ref());
                // 2. metrics
                measure = parts.metrics.as_ref().map(|m| m.enter(&req, &info));
                // 3. the health routes and the scrape, answered here
                let local = match &parts.health {
                    Some(health) => health.enter(&req, &info),
                    None => None,
                };
                let local = match (local, &parts.scrape) {
                    (None, Some(scrape)) => scrape.enter(&req, &info),
                    (local, _) => local,
                };
                // 4. to 6.: rate limit, admission, breaker (or the maintenance answer)
                let gate = match local {
                    Some(resp) => Gate::Answer(resp),
                    None if parts.maintenance.is_on() => Gate::Answer(parts.maintenance.response()),
                    None => gate(parts, &req, &info, Stage::RateLimit, &mut held),
                };
                // 7. your service
                Step::after(gate, &self.parts, &mut self.inner, req)
            },
            traced,
            measure,
            held,
        }
    }
}

impl Parts {
    /// What every part is told of `req`, of route label `route`: the clock read once for the
    /// parts that share it, and the trace part's decision.
    #[inline]
    fn info<'a, B>(
        &self,
        req: &Request<B>,
        route: &'a str,
        traced: Option<&TracedRequest>,
    ) -> RequestInfo<'a> {
        let mut info = RequestInfo::new(req, route);
        if let Some(clock) = &self.clock {
            info = info.at(clock.tick());
        }
        if let Some(t) = traced {
            // the exemplar's trace id from the trace part, not from the request's extensions
            info = info.traced(t.recorded_trace_id());
        }
        info
    }
}

/// Where the parts below health send a request.
enum Gate {
    /// On to the inner service.
    Open,
    /// Answered by a part (a `429`, a `503`).
    Answer(Response<Bytes>),
    /// It must wait first.
    Wait(WaitFor),
}

/// Takes `req` through the parts from `from` on; what they let through is held in `held`.
#[inline]
fn gate<B>(
    parts: &Parts,
    req: &Request<B>,
    info: &RequestInfo<'_>,
    from: Stage,
    held: &mut Held,
) -> Gate {
    if from <= Stage::RateLimit {
        if let Some(limits) = &parts.ratelimit {
            match limits.enter(req, info) {
                Verdict::Pass => {}
                Verdict::Allowed(a) => held.allowance = Some(a),
                Verdict::Refused(resp) => return Gate::Answer(resp),
                Verdict::Pending(p) => return Gate::Wait(WaitFor::Store(p)),
            }
        }
    }
    if from <= Stage::Admission {
        if let Some(admission) = &parts.admission {
            match admission.enter(req, info) {
                Ok(permit) => held.admitted = Some(permit),
                Err(queued) => return Gate::Wait(WaitFor::Slot(Box::pin(queued))),
            }
        }
    }
    if let Some(breaker) = &parts.breaker {
        match breaker.enter(req, info) {
            Ok(permit) => held.breaker = Some(permit),
            Err(resp) => return Gate::Answer(resp),
        }
    }
    Gate::Open
}

/// What a request waits for before it can go on: the shared rate-limit store's verdict, or an
/// admission slot.
enum WaitFor {
    Store(PendingVerdict),
    Slot(Pin<Box<Queued>>),
}

/// The slow path's state, boxed so that the fast path's future stays small: the wait, and
/// the ready service and the request to call once it is over.
struct Parked<S, ReqB> {
    wait: WaitFor,
    parts: Arc<Parts>,
    svc: S,
    req: Option<Request<ReqB>>,
}

pin_project! {
    #[project = StepProj]
    enum Step<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        Called { #[pin] fut: S::Future },
        Local { resp: Option<Response<Bytes>> },
        // the service panicked when it was called
        Caught { caught: Option<Caught> },
        Parked { parked: Box<Parked<S, ReqB>> },
    }
}

impl<S: Service<Request<ReqB>> + Clone, ReqB> Step<S, ReqB> {
    fn local(resp: Response<Bytes>) -> Self {
        Step::Local { resp: Some(resp) }
    }

    /// What follows `gate`: the inner service called with `req`, an answer, or a wait
    /// (with the service that was polled ready; a clone stays for the next request).
    #[inline]
    fn after(gate: Gate, parts: &Arc<Parts>, svc: &mut S, req: Request<ReqB>) -> Self {
        match gate {
            // a panic costs nothing until it happens
            Gate::Open => match garrison_core::catch(|| svc.call(req)) {
                Ok(fut) => Step::Called { fut },
                Err(caught) => Step::Caught {
                    caught: Some(caught),
                },
            },
            Gate::Answer(resp) => Step::local(resp),
            Gate::Wait(wait) => {
                let clone = svc.clone();
                Step::Parked {
                    parked: Box::new(Parked {
                        wait,
                        parts: parts.clone(),
                        svc: std::mem::replace(svc, clone),
                        req: Some(req),
                    }),
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`GarrisonService`].
    pub struct GarrisonFuture<S, ReqB>
    where
        S: Service<Request<ReqB>>,
    {
        #[pin]
        step: Step<S, ReqB>,
        traced: Option<TracedRequest>,
        measure: Option<MeasuredRequest>,
        held: Held,
    }
}

impl<S: Service<Request<ReqB>>, ReqB> std::fmt::Debug for GarrisonFuture<S, ReqB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let step = match self.step {
            Step::Called { .. } => "called",
            Step::Local { .. } => "answered by the stack",
            Step::Caught { .. } => "panicked",
            Step::Parked { .. } => "waiting",
        };
        f.debug_struct("GarrisonFuture")
            .field("step", &step)
            .finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Future for GarrisonFuture<S, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    S::Error: std::fmt::Display,
    ResB: http_body::Body<Data = Bytes>,
{
    type Output = Result<Response<GarrisonBody<ResB>>, S::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let entered = this.traced.as_ref().map(TracedRequest::enter);
        let result = loop {
            let next = match this.step.as_mut().project() {
                StepProj::Called { fut } => {
                    let caught = match garrison_core::catch(|| fut.poll(cx)) {
                        Ok(Poll::Pending) => return Poll::Pending,
                        Ok(Poll::Ready(Ok(resp))) => {
                            if let Some(permit) = this.held.breaker.take() {
                                permit.record_status(resp.status());
                            }
                            let (head, body) = resp.into_parts();
                            break (head, LayerBody::inner(body));
                        }
                        // an error is answered like a panic: `500`, its text kept from
                        // the client
                        Ok(Poll::Ready(Err(e))) => Caught::error(&e),
                        Err(caught) => caught,
                    };
                    this.step.set(Step::Caught {
                        caught: Some(caught),
                    });
                    continue;
                }
                StepProj::Caught { caught } => {
                    let caught = caught
                        .take()
                        .expect("GarrisonFuture polled after completion");
                    if let Some(permit) = this.held.breaker.take() {
                        permit.record(garrison_breaker::CallOutcome::Failure);
                    }
                    // logged while the request's trace is current: the line has its ids
                    caught.log();
                    let id = this
                        .traced
                        .as_ref()
                        .map(|t| t.context().request_id.as_str());
                    let (head, body) = caught.into_response(id).into_parts();
                    break (head, LayerBody::local(body));
                }
                StepProj::Local { resp } => {
                    let resp = resp.take().expect("GarrisonFuture polled after completion");
                    let (head, body) = resp.into_parts();
                    break (head, LayerBody::local(body));
                }
                StepProj::Parked { parked } => {
                    let w = &mut **parked;
                    let (from, req) = match &mut w.wait {
                        WaitFor::Store(pending) => match ready!(Pin::new(pending).poll(cx)) {
                            Verdict::Pass => (Stage::Admission, w.req.take()),
                            Verdict::Allowed(a) => {
                                this.held.allowance = Some(a);
                                (Stage::Admission, w.req.take())
                            }
                            Verdict::Refused(resp) => {
                                this.step.set(Step::local(resp));
                                continue;
                            }
                            Verdict::Pending(_) => unreachable!("a store answers once"),
                        },
                        WaitFor::Slot(queued) => match ready!(queued.as_mut().poll(cx)) {
                            Ok(permit) => {
                                this.held.admitted = Some(permit);
                                (Stage::Breaker, w.req.take())
                            }
                            Err(resp) => {
                                this.step.set(Step::local(resp));
                                continue;
                            }
                        },
                    };
                    let req = req.expect("GarrisonFuture polled after completion");
                    let route = w.parts.resolver.resolve(&req);
                    // time has passed while waiting: each part reads its clock again
                    let info = RequestInfo::new(&req, route.as_str());
                    let gate = gate(&w.parts, &req, &info, from, this.held);
                    Step::after(gate, &w.parts, &mut w.svc, req)
                }
            };
            this.step.set(next);
        };
        drop(entered);
        // the slot is given back as soon as the service has answered
        this.held.admitted = None;
        // the response is taken apart once and put together once: each part changes its
        // head or wraps its body in place, instead of moving the whole response
        let (mut head, body) = result;
        if let Some(a) = this.held.allowance.take() {
            a.apply(&mut head.headers);
        }
        let body = match this.measure.take() {
            Some(m) => m.respond_parts(&head, body),
            None => MetricsBody::unmeasured(body),
        };
        let body = match this.traced.take() {
            Some(t) => t.respond_parts(&mut head, body),
            None => TraceBody::untraced(body),
        };
        Poll::Ready(Ok(Response::from_parts(head, body)))
    }
}
