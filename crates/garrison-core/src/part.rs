//! [`Part`]: how a part of the stack is asked about a request, by its own layer and by the
//! `garrison` umbrella alike, with what the stack learnt of the request once ([`RequestInfo`]).

use http::Request;

use crate::{MethodLabel, Tick, TraceId};

/// What the parts of a stack share about one request, learnt once when it arrives: its route
/// label, its method, the clock read once for every part that reads the same clock, and the
/// trace it belongs to.
///
/// A part's own layer makes one for each request; the `garrison` umbrella makes one for all
/// its parts, so that the route is resolved once and the clock read once.
///
/// ```
/// use garrison_core::{MethodLabel, RequestInfo, RouteResolver};
///
/// let req = http::Request::get("/users/7").body(()).unwrap();
/// let resolver = RouteResolver::new();
/// let route = resolver.resolve(&req);
/// let info = RequestInfo::new(&req, route.as_str());
/// assert_eq!(info.route(), garrison_core::UNMATCHED);
/// assert_eq!(info.method(), MethodLabel::Get);
/// assert_eq!(info.now(), None); // each part reads its own clock
/// ```
#[derive(Clone, Copy, Debug)]
pub struct RequestInfo<'a> {
    route: &'a str,
    method: MethodLabel,
    now: Option<Tick>,
    trace: Option<Option<TraceId>>,
}

impl<'a> RequestInfo<'a> {
    /// What is known of `req` under the route label `route` (resolved with the stack's
    /// [`RouteResolver`](crate::RouteResolver)).
    #[inline]
    pub fn new<B>(req: &Request<B>, route: &'a str) -> Self {
        Self {
            route,
            method: MethodLabel::from_method(req.method()),
            now: None,
            trace: None,
        }
    }

    /// The same, at `now`: a tick just read from the clock that the parts reading
    /// [`now`](Self::now) share. Parts with another clock read their own.
    #[inline]
    #[must_use]
    pub fn at(mut self, now: Tick) -> Self {
        self.now = Some(now);
        self
    }

    /// The same, with the decision of a trace part that has started the request's trace:
    /// the id of the trace it records, `None` when it does not record this request.
    #[inline]
    #[must_use]
    pub fn traced(mut self, trace: Option<TraceId>) -> Self {
        self.trace = Some(trace);
        self
    }

    /// The route label.
    #[inline]
    pub fn route(&self) -> &'a str {
        self.route
    }

    /// The method as a label.
    #[inline]
    pub fn method(&self) -> MethodLabel {
        self.method
    }

    /// The tick the stack read for its parts, if it read one.
    #[inline]
    pub fn now(&self) -> Option<Tick> {
        self.now
    }

    /// The trace part's decision: `Some(Some(id))` recorded under trace `id`, `Some(None)`
    /// not recorded; `None` when no trace part has run (a part then looks at the request's
    /// [`TraceContext`](crate::TraceContext), if any).
    #[inline]
    pub fn trace(&self) -> Option<Option<TraceId>> {
        self.trace
    }
}

/// One part of the stack, asked about a request before the service is called.
///
/// Its own layer and the `garrison` umbrella both ask it through this trait, with the
/// [`RequestInfo`] they made for the request. What comes back is the part's own answer: a
/// guard to hold until the response (metrics), a verdict (rate limit), a permit or the answer
/// to send instead (breaker, admission), a response for a route the part serves (health,
/// scrape). The trace part is the one exception: it adds to the request (its id, its trace
/// context) and so starts before the route is resolved, and it gives its decision to the
/// others through [`RequestInfo::traced`].
///
/// ```
/// use garrison_core::{Part, RequestInfo};
///
/// /// Refuses `DELETE`.
/// struct NoDeletes;
///
/// impl Part for NoDeletes {
///     type Entry = Result<(), http::StatusCode>;
///
///     fn enter<B>(&self, _req: &http::Request<B>, info: &RequestInfo<'_>) -> Self::Entry {
///         match info.method() {
///             garrison_core::MethodLabel::Delete => Err(http::StatusCode::METHOD_NOT_ALLOWED),
///             _ => Ok(()),
///         }
///     }
/// }
///
/// let req = http::Request::delete("/users/7").body(()).unwrap();
/// let info = RequestInfo::new(&req, "/users/{id}");
/// assert_eq!(NoDeletes.enter(&req, &info), Err(http::StatusCode::METHOD_NOT_ALLOWED));
/// ```
pub trait Part {
    /// What the part answers for a request.
    type Entry;

    /// Asks the part about `req`, of which the stack knows `info`.
    fn enter<B>(&self, req: &Request<B>, info: &RequestInfo<'_>) -> Self::Entry;
}
