//! `AdmissionLayer`, its service and its response future.

mod future;
mod queued;
mod service;

pub use future::ResponseFuture;
pub use queued::Queued;
pub use service::AdmissionService;

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use garrison_core::{IpNet, Part, RequestInfo, RouteResolver, RouteTable, RouteTableError};
use http::{HeaderName, Request};
use tower::Layer;

use crate::{Admission, Permit, Priority};

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
            None => Err(Queued::new(
                self.rules.admission.enqueue(priority),
                self.rules.retry_after,
            )),
        }
    }
}

/// Admission as a part of a stack: [`admit`](AdmissionLayer::admit).
impl Part for AdmissionLayer {
    type Entry = Result<Permit, Queued>;

    #[inline]
    fn enter<B>(&self, req: &Request<B>, _info: &RequestInfo<'_>) -> Self::Entry {
        self.admit(req)
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
