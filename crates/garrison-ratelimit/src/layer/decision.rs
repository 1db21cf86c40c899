//! The decision for one request: its policy and key, the store's answer, and the verdict
//! that the service or the umbrella acts on.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use garrison_core::{RouteResolver, TrustedProxies};
use http::{Request, Response, StatusCode};

use crate::gcra::Decision;
use crate::headers::ROOM_AFTER;
use crate::limiter::{outcome, Outcome, RateLimiter};
use crate::store::{Answer, Fallback, Waiting};
use crate::{ClientKey, HeaderSet, KeySource};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rule {
    Policy(usize),
    Exempt,
}

/// What every service of one layer shares: the limiter and how requests map to its policies
/// and keys.
pub(crate) struct Shared {
    pub(crate) limiter: Arc<RateLimiter>,
    pub(super) sources: Vec<KeySource>,
    pub(super) global: Vec<bool>,
    pub(super) routes: HashMap<Box<str>, Rule, foldhash::fast::RandomState>,
    pub(super) default: Option<usize>,
    pub(super) resolver: RouteResolver,
    pub(super) proxies: TrustedProxies,
    pub(crate) headers: HeaderSet,
    pub(super) exempt: Vec<u64>,
    pub(super) sweep_every: Duration,
    pub(super) sweeper: AtomicBool,
    /// With [`log_refusals`](crate::RateLimitBuilder::log_refusals): one log event a second
    /// at most.
    pub(super) refusal_log: Option<garrison_core::LogEvery>,
}

/// What the rate limiter decides for one request: see [`RateLimitLayer::check`](crate::RateLimitLayer::check).
#[derive(Debug)]
pub enum Verdict {
    /// Not limited: no policy applies, or the route or the key is exempt.
    Pass,
    /// Allowed under its policy: [`Allowance::apply`] puts the policy's headers on the
    /// response.
    Allowed(Allowance),
    /// Refused: the answer to send (`429` with `Retry-After` and the policy's headers, or
    /// `503` when the shared store cannot be reached and the limiter fails closed).
    Refused(Response<Bytes>),
    /// The shared store must answer first: await the [`PendingVerdict`].
    Pending(PendingVerdict),
}

/// What the response of an allowed request is told: the policy's headers with the
/// remaining quota.
#[derive(Clone, Copy, Debug)]
pub struct Allowance {
    headers: &'static crate::headers::PolicyHeaders,
    set: HeaderSet,
    remaining: u32,
    reset_secs: u64,
}

impl Allowance {
    /// Adds the configured rate-limit headers (`RateLimit-Policy`, `RateLimit`,
    /// `X-RateLimit-*`) to a response's `headers`.
    ///
    /// `headers` is left with room for the three a stack adds after the limiter's, so that
    /// it grows once at most: the `content-length` that axum's router sets after every
    /// layer, and a trace part's `x-request-id` and `traceresponse`.
    #[inline]
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        self.headers.apply(
            self.set,
            self.remaining,
            self.reset_secs,
            headers,
            ROOM_AFTER,
        );
    }

    /// Requests left in the client's quota after this one.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }
}

/// A verdict that waits for the shared store (Redis): a future of the [`Verdict`], never
/// [`Verdict::Pending`] again.
pub struct PendingVerdict {
    waiting: Waiting,
    policy: usize,
    key: ClientKey,
    global: bool,
    shared: Arc<Shared>,
}

impl fmt::Debug for PendingVerdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingVerdict").finish_non_exhaustive()
    }
}

impl Future for PendingVerdict {
    type Output = Verdict;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Verdict> {
        let this = self.get_mut();
        let s = &this.shared;
        this.waiting.as_mut().poll(cx).map(|r| match r {
            Ok(d) => s.verdict(this.policy, d),
            Err(fallback) => s.fall_back(this.policy, this.key, this.global, fallback),
        })
    }
}

impl Shared {
    #[inline]
    pub(crate) fn decide<B>(
        self: &Arc<Self>,
        req: &Request<B>,
        route: Option<&str>,
        at: Option<garrison_core::Tick>,
    ) -> Verdict {
        self.start_sweeper();
        let rule = if self.routes.is_empty() {
            self.default.map(Rule::Policy)
        } else {
            let label = route.unwrap_or_else(|| self.resolver.resolve(req).as_str());
            match self.routes.get(label) {
                Some(r) => Some(*r),
                None => self.default.map(Rule::Policy),
            }
        };
        let Some(Rule::Policy(i)) = rule else {
            return Verdict::Pass;
        };
        let limiter = &*self.limiter;
        let global = self.global[i];
        let key = if global {
            limiter.hasher.global()
        } else {
            limiter.hasher.key(&self.sources[i], &self.proxies, req)
        };
        if !self.exempt.is_empty() && self.exempt.binary_search(&key.0).is_ok() {
            limiter.count(i, Outcome::Exempt);
            return Verdict::Pass;
        }
        let now = match at {
            Some(t) => limiter.nanos_at(t),
            None => limiter.now(),
        };
        match limiter.decide(i, key, global, now) {
            Answer::Decided(d) => self.verdict(i, d),
            Answer::Failed(fallback) => self.fall_back(i, key, global, fallback),
            Answer::Waiting(waiting) => Verdict::Pending(PendingVerdict {
                waiting,
                policy: i,
                key,
                global,
                shared: self.clone(),
            }),
        }
    }

    /// The verdict when the shared store cannot decide.
    fn fall_back(&self, i: usize, key: ClientKey, global: bool, fallback: Fallback) -> Verdict {
        match fallback {
            Fallback::Memory => self.verdict(i, self.limiter.decide_in_memory(i, key, global)),
            Fallback::Refuse(retry) => Verdict::Refused(self.unavailable(i, retry)),
        }
    }

    /// The verdict for decision `d` of policy `i`, counted.
    #[inline]
    fn verdict(&self, i: usize, d: Decision) -> Verdict {
        self.limiter.count(i, outcome(&d));
        let p = &self.limiter.policies[i];
        if d.allowed {
            Verdict::Allowed(Allowance {
                headers: p.headers,
                set: self.headers,
                remaining: d.remaining,
                reset_secs: d.reset_secs(),
            })
        } else {
            Verdict::Refused(self.refusal(i, &d))
        }
    }

    /// The `429` for decision `d` of policy `i`.
    fn refusal(&self, i: usize, d: &Decision) -> Response<Bytes> {
        let p = &self.limiter.policies[i];
        let secs = d.retry_after_secs().max(1);
        if let Some(also) = self
            .refusal_log
            .as_ref()
            .and_then(|log| log.admit(self.limiter.now()))
        {
            tracing::warn!(
                policy = p.policy.name(),
                retry_after_seconds = secs,
                refused_since_last_event = also,
                "rate limit refused a request"
            );
        }
        let mut body = String::with_capacity(96);
        body.push_str("{\"error\":\"rate_limited\",\"policy\":");
        garrison_core::push_json_string(&mut body, p.policy.name());
        body.push_str(",\"retry_after_seconds\":");
        body.push_str(itoa::Buffer::new().format(secs));
        body.push('}');
        let mut resp =
            garrison_core::refusal(StatusCode::TOO_MANY_REQUESTS, secs, Bytes::from(body));
        let h = resp.headers_mut();
        p.headers.apply_refusal(self.headers, d, secs, h);
        resp
    }

    /// The answer when the shared store cannot be reached and the limiter fails closed.
    fn unavailable(&self, i: usize, retry: Duration) -> Response<Bytes> {
        self.limiter.count(i, Outcome::Unavailable);
        garrison_core::refusal(
            StatusCode::SERVICE_UNAVAILABLE,
            retry.as_secs(),
            Bytes::from_static(b"{\"error\":\"rate_limit_unavailable\"}"),
        )
    }

    /// Starts the idle-key sweep once, on the runtime that runs the first request.
    #[inline]
    fn start_sweeper(&self) {
        if self.sweeper.load(Ordering::Relaxed) || self.sweeper.swap(true, Ordering::Relaxed) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            // No runtime: sweeps still happen as tables grow.
            return;
        };
        let limiter: Weak<RateLimiter> = Arc::downgrade(&self.limiter);
        let every = self.sweep_every.max(Duration::from_millis(10));
        handle.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(l) = limiter.upgrade() else { break };
                l.sweep();
            }
        });
    }
}
