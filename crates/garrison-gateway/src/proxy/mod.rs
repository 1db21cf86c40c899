//! The reverse proxy: a route table to upstreams, the request rewritten for the upstream,
//! sent (and sent again elsewhere when an address took none of it), and the answer: the
//! upstream's response, or the gateway's own (`502`, `503`, `504`) with a JSON body.

mod answer;
mod send;
mod target;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use garrison::garrison_core::{peer_addr, LayerBody};
use garrison::garrison_trace::PropagateLayer;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::{Either, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use tower::Service;

use crate::body::{ClientBody, UpstreamBody};
use crate::config::{GatewayConfig, HostMode, UpstreamProtocol};
use crate::forwarding::{
    add_forwarded, is_hop_by_hop, join_lines, strip_forwarding, strip_hop_by_hop, X_FORWARDED_FOR,
    X_FORWARDED_PREFIX,
};
use crate::metrics::TunnelStats;
use crate::pool::{Http1Pool, PooledBody};
use crate::upstream::Upstream;
use answer::{client_response, declared_over, gateway_error, too_large};
use send::{Attempts, Next};
use target::upstream_path;

/// The proxy's response body: the upstream's, streamed, or the gateway's own error.
pub type ProxyBody = LayerBody<PooledBody>;

type HttpClient = Client<HttpConnector, UpstreamBody>;

/// The innermost service of the gateway: finds the route, picks an address, forwards.
#[derive(Clone, Debug)]
pub struct Proxy {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    router: matchit::Router<usize>,
    routes: Vec<Route>,
    /// Peers whose forwarding headers are kept and appended to (`[ratelimit]
    /// trusted_proxies`); everyone else's are replaced by what the gateway saw.
    trusted: garrison::garrison_core::TrustedProxies,
    propagate: PropagateLayer,
    tunnels: Arc<TunnelStats>,
}

#[derive(Debug)]
struct Route {
    upstream: Arc<Upstream>,
    transport: Arc<Transport>,
    strip: Option<String>,
    /// The protocols a client may switch to (lower case; empty: none).
    upgrades: Box<[String]>,
    /// The largest request body forwarded (`usize::MAX`: no limit).
    max_body: usize,
    /// The wait for a response head: the route's, else its upstream's.
    timeout: std::time::Duration,
    /// `X-Forwarded-Prefix` for the upstream: the prefix this route strips, if it does.
    forwarded_prefix: Option<HeaderValue>,
}

/// How requests reach an upstream. Either way each worker thread has connections of its
/// own, driven on that worker: no wake-ups across threads.
#[derive(Debug)]
enum Transport {
    /// HTTP/1.1: the gateway's own pool, one idle list per worker and address.
    Http1(Http1Pool),
    /// h2c: one client per worker (one shared HTTP/2 connection per address).
    H2c(Box<[HttpClient]>),
}

thread_local! {
    /// The index of the worker thread running this code (0 elsewhere).
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Marks the current thread as worker `i` (its requests use the `i`th connection pools).
pub(crate) fn set_worker(i: usize) {
    WORKER.with(|w| w.set(i));
}

fn worker() -> usize {
    WORKER.with(std::cell::Cell::get)
}

impl Proxy {
    /// The proxy of `config`, with `upstreams` made from its `[gateway.upstreams]`.
    pub(crate) fn new(
        config: &GatewayConfig,
        upstreams: &BTreeMap<String, Arc<Upstream>>,
        workers: usize,
        tunnels: Arc<TunnelStats>,
    ) -> Self {
        let mut transports = BTreeMap::new();
        for (name, u) in &config.gateway.upstreams {
            let t = match u.protocol {
                UpstreamProtocol::Http1 => Transport::Http1(Http1Pool::new(
                    workers,
                    u.addresses.len(),
                    u.connect_timeout,
                    u.pool_idle_timeout,
                    u.max_connections_per_address,
                )),
                UpstreamProtocol::H2c => {
                    Transport::H2c((0..workers.max(1)).map(|_| send::client(u)).collect())
                }
            };
            transports.insert(name.clone(), Arc::new(t));
        }
        let mut router = matchit::Router::new();
        let mut routes = Vec::new();
        for r in config.gateway.routes.values() {
            let i = routes.len();
            let strip = r
                .strip_prefix
                .then(|| r.prefix.clone().unwrap_or_default())
                .map(|p| p.trim_end_matches('/').to_owned());
            routes.push(Route {
                upstream: upstreams[&r.upstream].clone(),
                transport: transports[&r.upstream].clone(),
                forwarded_prefix: strip
                    .as_deref()
                    .filter(|p| !p.is_empty())
                    .and_then(|p| HeaderValue::from_str(p).ok()),
                strip,
                timeout: r
                    .timeout
                    .unwrap_or(config.gateway.upstreams[&r.upstream].timeout),
                upgrades: r.upgrades.clone().into_boxed_slice(),
                max_body: match r.max_body_bytes.unwrap_or(config.gateway.max_body_bytes) {
                    0 => usize::MAX,
                    n => usize::try_from(n).unwrap_or(usize::MAX),
                },
            });
            for p in r.patterns() {
                // validated: the patterns do not collide
                let _ = router.insert(p, i);
            }
        }
        // validated with the rest of the stack's configuration
        let trusted = garrison::garrison_core::TrustedProxies::new(
            &config.garrison.ratelimit.trusted_proxies,
        )
        .unwrap_or_else(|_| garrison::garrison_core::TrustedProxies::none());
        Self {
            inner: Arc::new(Inner {
                router,
                routes,
                trusted,
                propagate: PropagateLayer::new(),
                tunnels,
            }),
        }
    }
}

impl Service<Request<Incoming>> for Proxy {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Incoming>) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { Ok(inner.forward(req).await) })
    }
}

impl Inner {
    async fn forward(&self, req: Request<Incoming>) -> Response<ProxyBody> {
        if let Some(refused) = req.extensions().get::<crate::path::Refused>() {
            return gateway_error(StatusCode::BAD_REQUEST, refused.0, None);
        }
        let Ok(found) = self.router.at(req.uri().path()) else {
            return gateway_error(StatusCode::NOT_FOUND, "no route for this path", None);
        };
        let route = &self.routes[*found.value];
        let up = &route.upstream;
        let peer = peer_addr(&req);
        let (mut parts, body) = req.into_parts();
        // over HTTP/2, the response body's waits for the client are watched (see `stall`)
        let stalls = match parts.version {
            Version::HTTP_2 => parts.extensions.remove::<Arc<crate::stall::Stalls>>(),
            _ => None,
        };
        let Some(path) = upstream_path(&parts.uri, route.strip.as_deref()) else {
            return gateway_error(
                StatusCode::BAD_REQUEST,
                "the path cannot be forwarded",
                None,
            );
        };
        if route.max_body != usize::MAX && declared_over(&parts.headers, route.max_body) {
            return too_large(route.max_body);
        }
        let (body, watch) = ClientBody::new(body);
        let body = Limited::new(body, route.max_body);
        let host = parts.headers.get(header::HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        // most requests have no hop-by-hop header: one look at each name, and no more
        let mut switch = None;
        if parts.headers.keys().any(is_hop_by_hop) {
            if !route.upgrades.is_empty() {
                switch = crate::tunnel::requested(&mut parts, &route.upgrades);
            }
            strip_hop_by_hop(&mut parts.headers);
        }
        // what a client says about where it came from is believed only from a trusted proxy
        if peer.is_some_and(|p| self.trusted.is_trusted(p.ip())) {
            join_lines(&mut parts.headers, &X_FORWARDED_FOR);
            join_lines(&mut parts.headers, &header::FORWARDED);
        } else {
            strip_forwarding(&mut parts.headers);
        }
        add_forwarded(&mut parts.headers, peer, host.as_ref());
        if let Some(prefix) = &route.forwarded_prefix {
            if let http::header::Entry::Vacant(e) = parts.headers.entry(&X_FORWARDED_PREFIX) {
                e.insert(prefix.clone());
            }
        }
        parts.version = match up.protocol {
            UpstreamProtocol::Http1 => Version::HTTP_11,
            UpstreamProtocol::H2c => Version::HTTP_2,
        };
        // HTTP/2 clients name the host in the URI only: keep it as the Host header
        if let (HostMode::Preserve, Some(h)) = (up.host, &host) {
            if !parts.headers.contains_key(header::HOST) {
                parts.headers.insert(header::HOST, h.clone());
            }
        }
        if let Some(switch) = switch {
            parts.version = Version::HTTP_11;
            // boxed: a rare path, and its state would make every request's future larger
            return Box::pin(self.tunnel(route, parts, body, &path, switch)).await;
        }
        let watch = watch.as_deref();
        // A request refused by one address goes to another. The pool of an HTTP/1.1
        // upstream gives back a request it did not send, body and all; hyper-util's client
        // (h2c) keeps it, so a request without a body is copied for it first.
        let mut h2c_copy = (body.is_end_stream()
            && up.has_alternatives()
            && matches!(*route.transport, Transport::H2c(_)))
        .then(|| parts.clone());
        let (mut attempts, mut authority, mut req) =
            Attempts::first(route, parts, Either::Left(body), &path);
        let resp = loop {
            match self.send(route, attempts.at(), authority, req).await {
                Ok(resp) => {
                    attempts.succeeded();
                    break resp;
                }
                Err(lost) => match attempts.after(lost, watch, &mut h2c_copy, &path) {
                    Next::Again(a, r) => (authority, req) = (a, r),
                    Next::Answer(answer) => return answer,
                },
            }
        };
        client_response(resp, up, stalls.as_ref())
    }

    /// [`forward`](Self::forward) for a request that asks to switch protocols: sent over a
    /// new connection of its own (to the next address when one refuses it or does not
    /// connect in time), and, when the upstream switches, the two connections joined.
    async fn tunnel(
        &self,
        route: &Route,
        mut parts: http::request::Parts,
        body: Limited<ClientBody>,
        path: &PathAndQuery,
        switch: crate::tunnel::Requested,
    ) -> Response<ProxyBody> {
        let up = &route.upstream;
        crate::tunnel::mark_upgrade(&mut parts.headers, switch.upgrade);
        let (mut attempts, mut authority, mut req) =
            Attempts::first(route, parts, Either::Left(body), path);
        let mut resp = loop {
            match self.open(route, authority, req).await {
                Ok(resp) => {
                    attempts.succeeded();
                    break resp;
                }
                Err(lost) => match attempts.after(lost, None, &mut None, path) {
                    Next::Again(a, r) => (authority, req) = (a, r),
                    Next::Answer(answer) => return answer,
                },
            }
        };
        if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
            // the upstream would not switch: its answer goes back as any other
            return client_response(PooledBody::unpooled(resp), up, None);
        }
        let Some(theirs) = resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
            return gateway_error(
                StatusCode::BAD_GATEWAY,
                "upstream upgrade failed",
                Some(up.name()),
            );
        };
        let upgrade = resp.headers().get(header::UPGRADE).cloned();
        tokio::spawn(crate::tunnel::splice(
            switch.client,
            theirs,
            up.tunnel_idle_timeout,
            switch.slot,
            self.tunnels.clone(),
        ));
        let mut resp = client_response(PooledBody::unpooled(resp), up, None);
        if let Some(u) = upgrade {
            crate::tunnel::mark_upgrade(resp.headers_mut(), u);
        }
        resp
    }
}
