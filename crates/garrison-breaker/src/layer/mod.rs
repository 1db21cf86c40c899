//! The middleware: [`CircuitBreakerLayer`], [`CircuitBreakerService`], its future and body.

mod future;
mod service;

/// The response body of [`CircuitBreakerService`]: the inner service's, or the rejection's.
pub type BreakerBody<B> = garrison_core::LayerBody<B>;
pub use future::ResponseFuture;
pub use service::CircuitBreakerService;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use garrison_core::{Part, RequestInfo, RouteResolver};
use parking_lot::RwLock;
use tower::Layer;

use crate::{Breaker, BreakerConfig, BreakerRegistry, Rejected};

/// Keys are route templates or hosts, at most `max` of them, and the hash is seeded per
/// process: a fast hash will do.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// A response made instead of calling the inner service while the breaker rejects.
pub type Fallback = Arc<dyn Fn(&str, &Rejected) -> http::Response<Bytes> + Send + Sync>;

/// Guards the inner service with a circuit breaker: while the breaker is open, calls are
/// answered at once with `503 Service Unavailable`, `Retry-After` (the remaining wait, with a
/// little jitter), `Cache-Control: no-store` and a small JSON body, and the inner service is
/// not called. Responses the breaker's classifier counts as failures (`5xx` by default) and
/// errors count against it; calls slower than its slow-call duration count as slow.
///
/// One breaker for the whole service, one per upstream host ([`per_host`](Self::per_host)),
/// or one per route template
/// ([`per_route`](Self::per_route)), named `<name>:<route>` in the registry.
///
/// ```
/// use axum::{routing::get, Router};
/// use garrison_breaker::{BreakerConfig, BreakerRegistry, CircuitBreakerLayer};
///
/// let breakers = BreakerRegistry::new();
/// let app: Router = Router::new()
///     .route("/orders", get(|| async { "orders" }))
///     .layer(CircuitBreakerLayer::new(&breakers, "orders-db", BreakerConfig::profile("database").unwrap()));
/// ```
#[derive(Clone)]
#[must_use]
pub struct CircuitBreakerLayer {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) enum Keying {
    Single(Breaker),
    PerKey {
        key: Key,
        breakers: RwLock<FastMap<Box<str>, Breaker>>,
        max: usize,
    },
}

#[derive(Clone)]
pub(crate) enum Key {
    Route(RouteResolver),
    Host,
}

impl Key {
    /// The key of `req`; `route` is its route label when the caller has resolved it already.
    fn of<'a, B>(&'a self, req: &'a http::Request<B>, route: Option<&'a str>) -> &'a str {
        match self {
            Key::Route(resolver) => route.unwrap_or_else(|| resolver.resolve(req).as_str()),
            Key::Host => req
                .uri()
                .authority()
                .map(|a| a.as_str())
                .or_else(|| {
                    req.headers()
                        .get(http::header::HOST)
                        .and_then(|h| h.to_str().ok())
                })
                .unwrap_or("_none"),
        }
    }
}

pub(crate) struct Shared {
    pub(crate) registry: BreakerRegistry,
    pub(crate) name: String,
    pub(crate) config: BreakerConfig,
    pub(crate) keying: Keying,
    pub(crate) fallback: Option<Fallback>,
    /// Per-route settings that differ from `config`, by route template.
    pub(crate) route_configs: HashMap<Box<str>, BreakerConfig>,
}

impl fmt::Debug for CircuitBreakerLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// One breaker called `name` in `registry`, made with `config` if it does not exist.
    ///
    /// # Panics
    ///
    /// When `config` is invalid ([`BreakerConfig::validate`] says why).
    pub fn new(registry: &BreakerRegistry, name: &str, config: BreakerConfig) -> Self {
        Self::try_new(registry, name, config)
            .unwrap_or_else(|e| panic!("invalid breaker configuration for {name}: {e}"))
    }

    /// [`new`](Self::new), with an invalid `config` as an error instead of a panic: for
    /// configurations that come from a file or a user.
    ///
    /// ```
    /// use std::time::Duration;
    /// use garrison_breaker::{BreakerConfig, BreakerRegistry, CircuitBreakerLayer};
    ///
    /// let breakers = BreakerRegistry::new();
    /// let bad = BreakerConfig::default().failure_rate_threshold(1.5);
    /// let err = CircuitBreakerLayer::try_new(&breakers, "db", bad).unwrap_err();
    /// assert!(err.to_string().contains("failure_rate_threshold"), "{err}");
    /// assert!(CircuitBreakerLayer::try_new(&breakers, "db", BreakerConfig::default()).is_ok());
    /// ```
    pub fn try_new(
        registry: &BreakerRegistry,
        name: &str,
        config: BreakerConfig,
    ) -> Result<Self, crate::ConfigError> {
        config.validate()?;
        let breaker = registry.breaker(name, config.clone());
        Ok(Self {
            shared: Arc::new(Shared {
                registry: registry.clone(),
                name: name.to_owned(),
                config,
                keying: Keying::Single(breaker),
                fallback: None,
                route_configs: HashMap::new(),
            }),
        })
    }

    /// One breaker per route template (axum's `MatchedPath`, else the resolver's table),
    /// named `<name>:<route>`, at most `max` of them (further routes share
    /// `<name>:_other`).
    pub fn per_route(self, resolver: RouteResolver, max: usize) -> Self {
        self.keyed(Key::Route(resolver), max)
    }

    /// One breaker per upstream host (the request URI's authority, else its `Host` header),
    /// named `<name>:<host>`, at most `max` of them (further hosts share `<name>:_other`, so a
    /// client sending random hosts cannot grow the registry). For proxies and clients that
    /// call several upstreams.
    pub fn per_host(self, max: usize) -> Self {
        self.keyed(Key::Host, max)
    }

    fn keyed(self, key: Key, max: usize) -> Self {
        self.rebuild(|s| {
            s.keying = Keying::PerKey {
                key,
                breakers: RwLock::new(FastMap::default()),
                max,
            }
        })
    }

    /// With [`per_route`](Self::per_route): the breaker of the route template `route` uses
    /// `config` instead of the layer's (e.g. the `database` profile on the routes that hit
    /// the database, `critical` elsewhere).
    ///
    /// # Panics
    ///
    /// When `config` is invalid ([`BreakerConfig::validate`] says why).
    pub fn route_config(self, route: &str, config: BreakerConfig) -> Self {
        if let Err(e) = config.validate() {
            panic!("invalid breaker configuration for route {route}: {e}");
        }
        self.rebuild(|s| {
            s.route_configs.insert(route.into(), config);
        })
    }

    /// Answers rejected calls with `f(breaker name, rejection)` instead of the JSON 503.
    pub fn fallback(
        self,
        f: impl Fn(&str, &Rejected) -> http::Response<Bytes> + Send + Sync + 'static,
    ) -> Self {
        self.rebuild(|s| s.fallback = Some(Arc::new(f)))
    }

    /// Asks the breaker that guards `req` for a permit, for a stack that runs the breaker
    /// itself rather than as a layer (the `garrison` umbrella's one service). Record the
    /// call's outcome on the permit ([`Permit::record_status`](crate::Permit::record_status));
    /// dropping it records nothing and gives a half-open probe slot back. While the breaker
    /// rejects, the error is the answer to send (the `503`, or the fallback's).
    ///
    /// ```
    /// use garrison_breaker::{BreakerConfig, BreakerRegistry, CircuitBreakerLayer};
    ///
    /// let breakers = BreakerRegistry::new();
    /// let layer = CircuitBreakerLayer::new(&breakers, "db", BreakerConfig::default());
    /// let req = http::Request::get("/orders").body(()).unwrap();
    /// let permit = layer.admit(&req).unwrap();
    /// permit.record_status(http::StatusCode::OK);
    /// breakers.force_open("db").unwrap();
    /// assert_eq!(layer.admit(&req).unwrap_err().status(), 503);
    /// ```
    // The rejection is the answer itself; boxing it would add an allocation to that path.
    #[allow(clippy::result_large_err)]
    #[inline]
    pub fn admit<B>(&self, req: &http::Request<B>) -> Result<crate::Permit, http::Response<Bytes>> {
        self.shared.admit(req, None, None)
    }

    /// The clock of the layer's breakers.
    pub fn clock(&self) -> &garrison_core::SharedClock {
        self.shared.registry.clock()
    }

    fn rebuild(self, f: impl FnOnce(&mut Shared)) -> Self {
        let s = &self.shared;
        let mut shared = Shared {
            registry: s.registry.clone(),
            name: s.name.clone(),
            config: s.config.clone(),
            keying: match &s.keying {
                Keying::Single(b) => Keying::Single(b.clone()),
                Keying::PerKey { key, max, .. } => Keying::PerKey {
                    key: key.clone(),
                    breakers: RwLock::new(FastMap::default()),
                    max: *max,
                },
            },
            fallback: s.fallback.clone(),
            route_configs: s.route_configs.clone(),
        };
        f(&mut shared);
        Self {
            shared: Arc::new(shared),
        }
    }
}

impl Shared {
    /// Asks the request's breaker for a permit; on rejection, returns the answer to send.
    // The rejection is returned by value to the response future either way; boxing it would
    // add an allocation to the rejection path.
    #[allow(clippy::result_large_err)]
    #[inline]
    pub(crate) fn admit<B>(
        &self,
        req: &http::Request<B>,
        route: Option<&str>,
        at: Option<garrison_core::Tick>,
    ) -> Result<crate::Permit, http::Response<Bytes>> {
        let acquire = |b: &Breaker| match at {
            Some(now) => b.try_acquire_at(now),
            None => b.try_acquire(),
        };
        let reject = |b: &Breaker, rejected: crate::Rejected| match &self.fallback {
            Some(f) => f(b.name(), &rejected),
            None => service::rejection(b.name(), &rejected),
        };
        let (key, breakers) = match &self.keying {
            Keying::Single(b) => return acquire(b).map_err(|r| reject(b, r)),
            Keying::PerKey { key, breakers, .. } => (key, breakers),
        };
        let route = key.of(req, route);
        // The permit is taken under the read lock: the breaker is not cloned for it (the
        // permit holds the one reference it needs), and only a refusal, which needs the
        // breaker's name after the lock, clones it.
        let found = {
            let map = breakers.read();
            match map.get(route) {
                Some(b) => match acquire(b) {
                    Ok(permit) => return Ok(permit),
                    Err(r) => Some((b.clone(), r)),
                },
                None => None,
            }
        };
        // a route's first request makes its breaker, after the read lock is released
        let (b, r) = match found {
            Some(refused) => refused,
            None => {
                let b = self.new_keyed_breaker(route);
                match acquire(&b) {
                    Ok(permit) => return Ok(permit),
                    Err(r) => (b, r),
                }
            }
        };
        Err(reject(&b, r))
    }

    /// The breaker of key `route`, made on its first request (or `_other`'s, past `max`).
    #[cold]
    fn new_keyed_breaker(&self, route: &str) -> Breaker {
        let Keying::PerKey { breakers, max, .. } = &self.keying else {
            unreachable!("only keyed breakers are made per key")
        };
        let mut map = breakers.write();
        let key: &str = if map.len() >= *max && !map.contains_key(route) {
            "_other"
        } else {
            route
        };
        map.entry(key.into())
            .or_insert_with(|| {
                let config = self.route_configs.get(key).unwrap_or(&self.config);
                self.registry
                    .breaker(&format!("{}:{key}", self.name), config.clone())
            })
            .clone()
    }
}

/// The breaker as a part of a stack: [`admit`](CircuitBreakerLayer::admit) with the route of
/// `info` (resolved with the resolver given to
/// [`per_route`](CircuitBreakerLayer::per_route)) and its tick (read from the clock of the
/// layer's [`BreakerRegistry`]), when it has one.
impl Part for CircuitBreakerLayer {
    type Entry = Result<crate::Permit, http::Response<Bytes>>;

    #[inline]
    fn enter<B>(&self, req: &http::Request<B>, info: &RequestInfo<'_>) -> Self::Entry {
        self.shared.admit(req, Some(info.route()), info.now())
    }
}

impl<S> Layer<S> for CircuitBreakerLayer {
    type Service = CircuitBreakerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService::new(inner, self.shared.clone())
    }
}
