//! The way out: the attempts of a request (an address of its upstream and, when that address
//! took none of it, once more the next), each sent through the route's transport (the
//! worker's HTTP/1.1 pool or h2c client) or, for a request that asks to switch protocols, on
//! a connection of its own.

use std::task::{Context, Poll};

use http::uri::{Authority, PathAndQuery};
use http::{Request, Response, Uri};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tower::{Layer, Service, ServiceExt};

use super::answer::{client_blame, unanswered};
use super::target::upstream_request;
use super::{worker, HttpClient, Inner, ProxyBody, Route, Transport};
use crate::body::{BodyWatch, UpstreamBody};
use crate::config::UpstreamProtocol;
use crate::failure::{failure_after_send, source_chain, timed_out, Failure, Lost};
use crate::pool::{Http1Pool, PooledBody, SendFuture};
use crate::upstream::Upstream;

/// Where the attempts of one request stand: the address tried last, and whether the one
/// retry is spent. A request goes to an address of its upstream and, when that address took
/// none of it (refused, not connected in time, or every connection busy) and the upstream
/// has another, once more to the next one. The caller's loop sends (through the route's
/// transport, or on a connection of its own for a tunnel) and asks [`after`](Self::after)
/// what follows a failure.
pub(super) struct Attempts<'r> {
    route: &'r Route,
    at: usize,
    retried: bool,
}

impl<'r> Attempts<'r> {
    /// The first attempt of a request of `route` (`parts` and `body`, for `path`): its
    /// address, picked, and the request for it.
    #[inline]
    pub(super) fn first(
        route: &'r Route,
        parts: http::request::Parts,
        body: UpstreamBody,
        path: &PathAndQuery,
    ) -> (Self, &'r Authority, Request<UpstreamBody>) {
        let up = &route.upstream;
        let (at, authority) = up.pick(None);
        let req = upstream_request(parts, authority, path, up.host, body);
        let attempts = Self {
            route,
            at,
            retried: false,
        };
        (attempts, authority, req)
    }

    /// The address of the attempt under way.
    #[inline]
    pub(super) fn at(&self) -> usize {
        self.at
    }

    /// The attempt under way was answered.
    #[inline]
    pub(super) fn succeeded(&self) {
        self.route.upstream.succeeded(self.at);
    }

    /// What follows the failure `lost` of the attempt under way: the next attempt (its
    /// address and its request: the one given back, none of it sent, or `copy`, which
    /// stands in for it when the transport keeps it), or the client's answer when no
    /// attempt is left, or when the client's own body made this one fail (`watch`).
    pub(super) fn after(
        &mut self,
        lost: Lost,
        watch: Option<&BodyWatch>,
        copy: &mut Option<http::request::Parts>,
        path: &PathAndQuery,
    ) -> Next<'r> {
        if let Some(answer) = client_blame(watch, &lost.failure) {
            return Next::Answer(answer);
        }
        let up = &self.route.upstream;
        count_against(up, self.at, &lost.failure);
        let nothing_sent = matches!(
            lost.failure,
            Failure::Connect(_) | Failure::ConnectTimeout | Failure::Saturated
        );
        let again = match (self.retried, nothing_sent && up.has_alternatives()) {
            (false, true) => lost.unsent.map(|req| req.into_parts()).or_else(|| {
                copy.take()
                    .map(|parts| (parts, Either::Right(Empty::new())))
            }),
            _ => None,
        };
        let Some((parts, body)) = again else {
            return Next::Answer(unanswered(self.route, lost.failure));
        };
        self.retried = true;
        let (at, authority) = up.pick(Some(self.at));
        self.at = at;
        Next::Again(
            authority,
            upstream_request(parts, authority, path, up.host, body),
        )
    }
}

/// What follows a failed attempt.
pub(super) enum Next<'r> {
    /// Another attempt: the address's authority and the request for it.
    Again(&'r Authority, Request<UpstreamBody>),
    /// No more: the client's answer.
    Answer(Response<ProxyBody>),
}

/// Counts `failure` against address `at` of `up`, unless the request is to blame (a body
/// over its limit).
fn count_against(up: &Upstream, at: usize, failure: &Failure) {
    if !matches!(failure, Failure::TooLarge | Failure::Saturated) {
        up.failed(at);
    }
}

impl Inner {
    /// Sends a request that asks to switch protocols to `authority`, within the upstream's
    /// timeout for the answer's head.
    pub(super) async fn open(
        &self,
        route: &Route,
        authority: &Authority,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, Lost> {
        let up = &route.upstream;
        let client = self.propagate.layer(crate::tunnel::TunnelClient {
            authority,
            connect_timeout: up.connect_timeout,
        });
        match crate::timer::timeout(route.timeout, client.oneshot(req)).await {
            Err(_) => Err(Failure::Timeout.into()),
            Ok(r) => r,
        }
    }

    /// Sends `req` to address `at` (`authority`) of the route's upstream through the route's
    /// transport, within the route's timeout for the response head.
    pub(super) async fn send(
        &self,
        route: &Route,
        at: usize,
        authority: &Authority,
        req: Request<UpstreamBody>,
    ) -> Result<Response<PooledBody>, Lost> {
        let timeout = route.timeout;
        let clients = match &*route.transport {
            Transport::Http1(pool) => {
                let client = self.propagate.layer(Http1Client {
                    pool,
                    worker: worker(),
                    at,
                    authority,
                });
                // a coarse deadline (within 10 ms after it): see `timer`
                return match crate::timer::timeout(timeout, client.oneshot(req)).await {
                    Err(_) => Err(Failure::Timeout.into()),
                    Ok(r) => r,
                };
            }
            Transport::H2c(clients) => clients,
        };
        // the worker's client by reference: no clone of its pool handles per request
        let client = self.propagate.layer(&clients[worker() % clients.len()]);
        let failure = match crate::timer::timeout(timeout, client.oneshot(req)).await {
            Ok(Ok(resp)) => return Ok(PooledBody::unpooled(resp)),
            Err(_) => Failure::Timeout,
            Ok(Err(e)) if e.is_connect() => {
                if timed_out(&e) {
                    Failure::ConnectTimeout
                } else {
                    Failure::Connect(source_chain(&e))
                }
            }
            Ok(Err(e)) => failure_after_send(&e),
        };
        Err(failure.into())
    }
}

/// One request's way to an HTTP/1.1 address through the worker's pool, as a tower service
/// for [`PropagateLayer`] (which sees the absolute URI for its client span; the request
/// line carries the origin form).
struct Http1Client<'a> {
    pool: &'a Http1Pool,
    worker: usize,
    at: usize,
    authority: &'a Authority,
}

impl<'a> Service<Request<UpstreamBody>> for Http1Client<'a> {
    type Response = Response<PooledBody>;
    type Error = Lost;
    type Future = SendFuture<'a>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Lost>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut req: Request<UpstreamBody>) -> Self::Future {
        if let Some(pq) = req.uri().path_and_query().cloned() {
            *req.uri_mut() = Uri::from(pq);
        }
        let Self {
            pool,
            worker,
            at,
            authority,
        } = *self;
        Box::pin(async move { pool.send(worker, at, authority, req).await })
    }
}

pub(super) fn client(u: &crate::config::UpstreamConfig) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(u.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    let mut b = Client::builder(TokioExecutor::new());
    b.pool_idle_timeout(u.pool_idle_timeout)
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_max_idle_per_host(1024);
    if u.protocol == UpstreamProtocol::H2c {
        b.http2_only(true);
    }
    b.build(connector)
}
