//! [`Garrison`] and its builder: every registry and layer made from one [`GarrisonConfig`].

use std::sync::Arc;

use garrison_admission::{Adaptive, Admission, AdmissionCheck, AdmissionLayer, Priority};
use garrison_breaker::{BreakerRegistry, CircuitBreakerLayer};
use garrison_core::{RouteResolver, RouteTable, SharedClock, TrustedProxies};
use garrison_health::{
    BreakerCheck, Check, CheckOptions, Details, HealthLayer, HealthRegistry, Paths, StatusCodes,
    StatusNames,
};
use garrison_metrics::{MetricsLayer, MetricsRegistry};
use garrison_ratelimit::{
    HeaderSet, KeySource, Policy, RateLimitBuilder, RateLimitLayer, RateLimiter,
};
use garrison_trace::{Sampler, TraceLayer, Tracer};

use crate::config::*;
use crate::layer::{GarrisonLayer, Parts};
use crate::maintenance::Maintenance;
use crate::EmergencyService;

type RateLimitHook = Box<dyn FnOnce(RateLimitBuilder) -> RateLimitBuilder + Send>;
type TraceHook = Box<dyn FnOnce(TraceLayer) -> TraceLayer + Send>;
type Registration = Box<dyn FnOnce(&HealthRegistry) -> Result<(), ConfigError> + Send>;

/// The registries and layers of one service, made from a [`GarrisonConfig`]. Put
/// [`layer`](Self::layer) in front of your service; keep the `Garrison` to read its
/// registries (metrics, health, breakers, tracer, rate limiter) and to start a graceful
/// shutdown.
///
/// Cheap to clone: clones share everything.
#[derive(Clone)]
pub struct Garrison {
    config: Arc<GarrisonConfig>,
    metrics: MetricsRegistry,
    health: HealthRegistry,
    breakers: BreakerRegistry,
    tracer: Tracer,
    limiter: Option<Arc<RateLimiter>>,
    admission: Option<Admission>,
    maintenance: Maintenance,
    layer: GarrisonLayer,
}

impl std::fmt::Debug for Garrison {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Garrison")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl Garrison {
    /// A builder starting from the defaults of [`GarrisonConfig`].
    pub fn builder() -> GarrisonBuilder {
        GarrisonBuilder::default()
    }

    /// Everything made from `config` with nothing of your own added: see
    /// [`GarrisonBuilder::build`].
    pub fn from_config(config: GarrisonConfig) -> Result<Self, ConfigError> {
        Self::builder().config(config).build()
    }

    /// The whole stack as one tower layer, for `Router::layer` or `ServiceBuilder::layer`.
    pub fn layer(&self) -> GarrisonLayer {
        self.layer.clone()
    }

    /// The configuration in use.
    pub fn config(&self) -> &GarrisonConfig {
        &self.config
    }

    /// The metrics registry: every layer's families are registered in it.
    pub fn metrics(&self) -> &MetricsRegistry {
        &self.metrics
    }

    /// The health registry: register your own checks on it.
    pub fn health(&self) -> &HealthRegistry {
        &self.health
    }

    /// The admission controller, when `[admission]` is enabled: its limit, queue and counts.
    pub fn admission(&self) -> Option<&Admission> {
        self.admission.as_ref()
    }

    /// The maintenance switch: on, every request but the health routes and the scrape is
    /// answered `503` with a message.
    pub fn maintenance(&self) -> &Maintenance {
        &self.maintenance
    }

    /// The emergency actions (maintenance on and off, draining the admission queue) as a
    /// tower service to mount behind your own authentication: see [`EmergencyService`].
    pub fn emergency_service(&self) -> EmergencyService {
        EmergencyService::new(self.maintenance.clone(), self.admission.clone())
    }

    /// The breaker registry: list, reset, force open or disable breakers.
    pub fn breakers(&self) -> &BreakerRegistry {
        &self.breakers
    }

    /// The tracer.
    pub fn tracer(&self) -> &Tracer {
        &self.tracer
    }

    /// The rate limiter, when rate limiting is on.
    pub fn rate_limiter(&self) -> Option<&Arc<RateLimiter>> {
        self.limiter.as_ref()
    }

    /// Starts a graceful shutdown: readiness fails from now on, so that load balancers stop
    /// sending traffic before the listeners close.
    pub fn begin_shutdown(&self) {
        self.health.begin_shutdown();
    }
}

/// Builds a [`Garrison`]: a [`GarrisonConfig`] (the defaults, a file, or both changed in
/// code through the typed section closures), plus what a file cannot say — your own health
/// checks, key sources and registries.
///
/// ```
/// use std::time::Duration;
/// use garrison::Garrison;
///
/// let garrison = Garrison::builder()
///     .service(|s| s.name = "orders".into())
///     .ratelimit(|r| {
///         r.policy("search", 20, Duration::from_secs(1))
///             .route("/auth/login", "auth")
///             .route("/search", "search");
///     })
///     .breaker(|b| b.profile = "critical".into())
///     .trace(|t| t.ratio = 0.25)
///     .build()
///     .unwrap();
/// // general, auth, upload and heavy are built in
/// assert_eq!(garrison.rate_limiter().unwrap().policies().count(), 5);
/// ```
#[derive(Default)]
#[must_use]
pub struct GarrisonBuilder {
    config: GarrisonConfig,
    clock: Option<SharedClock>,
    metrics: Option<MetricsRegistry>,
    health: Option<HealthRegistry>,
    breakers: Option<BreakerRegistry>,
    tracer: Option<Tracer>,
    ratelimit_hook: Option<RateLimitHook>,
    trace_hook: Option<TraceHook>,
    checks: Vec<Registration>,
    maintenance: Option<Maintenance>,
}

impl std::fmt::Debug for GarrisonBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GarrisonBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl GarrisonBuilder {
    /// Starts from `config` instead of the defaults (sections changed before are replaced).
    pub fn config(mut self, config: GarrisonConfig) -> Self {
        self.config = config;
        self
    }

    /// Changes `[service]`.
    pub fn service(mut self, f: impl FnOnce(&mut ServiceConfig)) -> Self {
        f(&mut self.config.service);
        self
    }

    /// Changes `[trace]`.
    pub fn trace(mut self, f: impl FnOnce(&mut TraceConfig)) -> Self {
        f(&mut self.config.trace);
        self
    }

    /// Changes `[metrics]`.
    pub fn metrics(mut self, f: impl FnOnce(&mut MetricsConfig)) -> Self {
        f(&mut self.config.metrics);
        self
    }

    /// Changes `[health]`.
    pub fn health(mut self, f: impl FnOnce(&mut HealthConfig)) -> Self {
        f(&mut self.config.health);
        self
    }

    /// Changes `[ratelimit]`.
    pub fn ratelimit(mut self, f: impl FnOnce(&mut RateLimitConfig)) -> Self {
        f(&mut self.config.ratelimit);
        self
    }

    /// Changes `[breaker]`.
    pub fn breaker(mut self, f: impl FnOnce(&mut BreakerSection)) -> Self {
        f(&mut self.config.breaker);
        self
    }

    /// Changes the rate limiter's builder after the configuration is applied: for what a
    /// file cannot say, such as keying by the identity your authentication layer sets
    /// ([`KeySource::extension`]).
    pub fn ratelimit_builder(
        mut self,
        f: impl FnOnce(RateLimitBuilder) -> RateLimitBuilder + Send + 'static,
    ) -> Self {
        self.ratelimit_hook = Some(Box::new(f));
        self
    }

    /// Changes the trace layer after the configuration is applied: for what a file cannot
    /// say, such as naming each request's user from the identity your authentication layer
    /// sets ([`TraceLayer::enduser_id`]).
    pub fn trace_layer(
        mut self,
        f: impl FnOnce(TraceLayer) -> TraceLayer + Send + 'static,
    ) -> Self {
        self.trace_hook = Some(Box::new(f));
        self
    }

    /// Registers a health check of your own (a database pool you already have, say).
    pub fn check(mut self, name: &str, check: impl Check, options: CheckOptions) -> Self {
        let name = name.to_owned();
        self.checks.push(Box::new(move |health: &HealthRegistry| {
            health
                .register(&name, check, options)
                .map_err(|e| ConfigError::one(format!("health check {name}"), e.to_string()))
        }));
        self
    }

    /// Uses this metrics registry instead of one made from `[metrics]` (whose layer and
    /// scrape route settings still apply).
    pub fn metrics_registry(mut self, registry: MetricsRegistry) -> Self {
        self.metrics = Some(registry);
        self
    }

    /// Uses this health registry instead of one made from `[health]`: its paths, token
    /// and service id win; the configured checks are added to it.
    pub fn health_registry(mut self, registry: HealthRegistry) -> Self {
        self.health = Some(registry);
        self
    }

    /// Uses this breaker registry (to share breakers with other layers of yours).
    pub fn breaker_registry(mut self, registry: BreakerRegistry) -> Self {
        self.breakers = Some(registry);
        self
    }

    /// Uses this maintenance switch (one shared with another stack: the gateway keeps one
    /// across reloads).
    pub fn maintenance(mut self, switch: Maintenance) -> Self {
        self.maintenance = Some(switch);
        self
    }

    /// Uses this tracer instead of one made from `[trace]` (a sink of your own, say).
    pub fn tracer(mut self, tracer: Tracer) -> Self {
        self.tracer = Some(tracer);
        self
    }

    /// The clock of every layer (tests use tokio's paused clock or a manual one).
    /// Default: the system clock.
    pub fn clock(mut self, clock: SharedClock) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Checks the configuration (every problem at once) and makes every registry and
    /// layer. Call it inside a tokio runtime when the configuration exports spans over OTLP
    /// or checks databases (both start background tasks).
    pub fn build(self) -> Result<Garrison, ConfigError> {
        let c = &self.config;
        c.validate()?;
        let clock = self.clock.clone().unwrap_or_else(SharedClock::system);
        let resolver = resolver(c);

        let metrics = match self.metrics {
            Some(m) => m,
            None => MetricsRegistry::builder()
                .duration_buckets(&c.metrics.duration_buckets)
                .max_series(c.metrics.max_series)
                .exemplars(c.metrics.exemplars)
                .process_metrics(c.metrics.process_metrics)
                .runtime_metrics(c.metrics.runtime_metrics)
                .clock(clock.clone())
                .try_build()
                .map_err(|e| {
                    let text = e.to_string();
                    let (path, reason) = text.split_once(": ").unwrap_or(("metrics", &text));
                    ConfigError::one(path, reason)
                })?,
        };

        let tracer = match self.tracer {
            Some(t) => t,
            None => tracer(c, clock.clone())?,
        };
        tracer.metrics(&metrics);

        let breakers = self
            .breakers
            .unwrap_or_else(|| BreakerRegistry::with_clock(clock.clone()));
        metrics.register_collector(Arc::new(breakers.clone()));

        let ratelimit = if c.ratelimit.enabled {
            let mut b = ratelimit_builder(c, &resolver, &clock, &metrics)?;
            if let Some(hook) = self.ratelimit_hook {
                b = hook(b);
            }
            Some(
                b.build()
                    .map_err(|e| ConfigError::one("ratelimit", e.to_string()))?,
            )
        } else {
            None
        };
        let limiter = ratelimit.as_ref().map(|l| l.limiter().clone());

        let admission = c
            .admission
            .enabled
            .then(|| admission(c, &metrics))
            .transpose()?;

        let health = match self.health {
            Some(h) => h,
            None => health_registry(c),
        };
        register_checks(c, &health, &metrics, &breakers, limiter.as_ref())?;
        if let Some((a, _)) = &admission {
            health
                .register("admission", AdmissionCheck::new(a), CheckOptions::deep())
                .map_err(|e| ConfigError::one("admission", e.to_string()))?;
        }
        for register in self.checks {
            register(&health)?;
        }
        health.metrics(&metrics);

        let h = &c.health;
        let mut parts = Parts {
            trace: c.trace.enabled.then(|| {
                let layer = trace_layer(c, &tracer, &resolver);
                match self.trace_hook {
                    Some(hook) => hook(layer),
                    None => layer,
                }
            }),
            metrics: c
                .metrics
                .enabled
                .then(|| MetricsLayer::new(&metrics).route_resolver(resolver.clone())),
            health: h.enabled.then(|| HealthLayer::new(&health)),
            scrape: (c.metrics.enabled && !c.metrics.path.is_empty())
                .then(|| scrape_layer(&c.metrics, &metrics)),
            ratelimit,
            admission: admission.as_ref().map(|(_, l)| l.clone()),
            breaker: c
                .breaker
                .enabled
                .then(|| breaker_layer(&c.breaker, &breakers, &resolver))
                .transpose()?,
            maintenance: self.maintenance.clone().unwrap_or_default(),
            resolver,
            clock: None,
        };
        // one clock read per request for metrics, rate limit and breaker, when they all read
        // the stack's clock (a registry passed in may have a clock of its own)
        let same = |c: &SharedClock| c.same_as(&clock);
        let shared = parts.metrics.as_ref().is_none_or(|m| same(m.clock()))
            && parts
                .ratelimit
                .as_ref()
                .is_none_or(|r| same(r.limiter().clock()))
            && parts.breaker.as_ref().is_none_or(|b| same(b.clock()));
        parts.clock = shared.then(|| clock.clone());
        // the layer answers a panic with a `500` that says where it happened
        garrison_core::install_panic_hook();
        Ok(Garrison {
            config: Arc::new(self.config),
            metrics,
            health,
            breakers,
            tracer,
            limiter,
            admission: admission.map(|(a, _)| a),
            maintenance: parts.maintenance.clone(),
            layer: GarrisonLayer {
                parts: Arc::new(parts),
            },
        })
    }
}

/// One resolver for every layer: axum's `MatchedPath` first, then a table of every pattern
/// the configuration names, the stack's own routes included.
fn resolver(c: &GarrisonConfig) -> RouteResolver {
    let mut table = RouteTable::new();
    let own = [
        &c.health.live_path,
        &c.health.ready_path,
        &c.health.deep_path,
        &c.metrics.path,
    ];
    let patterns = c
        .service
        .routes
        .iter()
        .chain(c.ratelimit.routes.keys())
        .chain(&c.ratelimit.exempt_routes)
        .chain(c.breaker.routes.keys())
        .chain(c.admission.routes.keys())
        .chain(own.into_iter().filter(|p| !p.is_empty()));
    for p in patterns {
        // validated already; a pattern named twice is not an error
        let _ = table.insert(p);
    }
    RouteResolver::new().with_table(table)
}

fn admission(
    c: &GarrisonConfig,
    metrics: &MetricsRegistry,
) -> Result<(Admission, AdmissionLayer), ConfigError> {
    let a = &c.admission;
    let class = |name: &str| name.parse::<Priority>().expect("validated priority");
    let mut b = Admission::builder()
        .max_in_flight(a.max_in_flight)
        .max_queue(a.max_queue)
        .aging(a.aging)
        .log_sheds(a.log_sheds)
        .metrics(metrics);
    for (name, timeout) in &a.queue_timeouts {
        b = b.queue_timeout(class(name), *timeout);
    }
    if a.deep_queue > 0 {
        b = b.deep_queue(a.deep_queue);
    }
    if a.adaptive.enabled {
        b = b.adaptive(Adaptive {
            min: a.adaptive.min,
            max: a.adaptive.max,
            latency_target: a.adaptive.latency_target,
            backoff: a.adaptive.backoff,
        });
    }
    let admission = b
        .build()
        .map_err(|e| ConfigError::one("admission", e.to_string()))?;
    let mut layer = AdmissionLayer::new(admission.clone())
        .default_priority(class(&a.default_priority))
        .priority_header(http::HeaderName::try_from(a.header.as_str()).expect("validated header"))
        .trusted_callers(
            a.trusted_callers
                .iter()
                .map(|n| n.parse().expect("validated network")),
        )
        .retry_after(a.retry_after.as_secs() + u64::from(a.retry_after.subsec_nanos() > 0));
    for (pattern, name) in &a.routes {
        layer = layer
            .try_route(pattern, class(name))
            .map_err(|e| ConfigError::one(format!("admission.routes.{pattern}"), e.to_string()))?;
    }
    Ok((admission, layer))
}

fn tracer(c: &GarrisonConfig, clock: SharedClock) -> Result<Tracer, ConfigError> {
    let t = &c.trace;
    let sampler = match t.sampler {
        SamplerKind::Always => Sampler::Always,
        SamplerKind::Never => Sampler::Never,
        SamplerKind::Ratio => Sampler::Ratio(t.ratio),
        SamplerKind::ErrorBiased => Sampler::ErrorBiased {
            ratio: t.ratio,
            slow: t.slow,
        },
    };
    #[allow(unused_mut)]
    let mut b = Tracer::builder()
        .sampler(sampler)
        .queue(t.queue)
        .batch(t.batch)
        .export_timeout(t.export_timeout)
        .flush_every(t.flush_every)
        .clock(clock);
    #[cfg(feature = "otlp")]
    if t.enabled {
        if let Some(sink) = otlp_sink(c)? {
            b = b.sink(sink);
        }
    }
    Ok(b.build())
}

#[cfg(feature = "otlp")]
fn otlp_sink(c: &GarrisonConfig) -> Result<Option<garrison_trace::OtlpSink>, ConfigError> {
    use garrison_trace::{OtlpConfig, OtlpSink, Protocol};
    let o = &c.trace.otlp;
    let from_env = [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|v| !v.trim().is_empty()));
    if o.endpoint.is_empty() && !from_env {
        return Ok(None);
    }
    let mut oc = OtlpConfig::from_env().timeout(o.timeout);
    if !o.endpoint.is_empty() {
        oc = oc.endpoint(o.endpoint.clone()).protocol(match o.protocol {
            OtlpProtocol::Grpc => Protocol::Grpc,
            OtlpProtocol::HttpProtobuf => Protocol::HttpProtobuf,
        });
    }
    for (k, v) in &o.headers {
        oc = oc.header(k.clone(), v.clone());
    }
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        oc = oc.service_name(c.service.name.clone());
    }
    OtlpSink::new(oc)
        .map(Some)
        .map_err(|e| ConfigError::one("trace.otlp.endpoint", e.to_string()))
}

fn trace_layer(c: &GarrisonConfig, tracer: &Tracer, resolver: &RouteResolver) -> TraceLayer {
    let t = &c.trace;
    let redaction = t.redaction();
    let layer = TraceLayer::new(tracer)
        .request_id_header(
            http::HeaderName::try_from(t.request_id_header.as_str())
                .expect("validated header name"),
        )
        .trace_response(t.trace_response)
        .access_log(t.access_log)
        .tracing_span(t.tracing_span)
        .redaction(redaction)
        .otel_context(t.otel_context);
    let layer = match t.sampled_from {
        // validated with the rate limiter's configuration
        crate::config::SampledFrom::TrustedProxies => layer.sampled_from(
            garrison_core::TrustedProxies::new(&c.ratelimit.trusted_proxies)
                .unwrap_or_else(|_| garrison_core::TrustedProxies::none()),
        ),
        _ => layer,
    };
    layer.route_resolver(resolver.clone())
}

fn key_source(k: &KeyConfig) -> KeySource {
    match k {
        KeyConfig::Ip => KeySource::ClientIp,
        KeyConfig::Global => KeySource::Global,
        KeyConfig::Header(h) => KeySource::header(h),
    }
}

fn ratelimit_builder(
    c: &GarrisonConfig,
    resolver: &RouteResolver,
    clock: &SharedClock,
    metrics: &MetricsRegistry,
) -> Result<RateLimitBuilder, ConfigError> {
    let r = &c.ratelimit;
    let mut b = RateLimitLayer::builder();
    for (name, p) in &r.policies {
        let mut policy = Policy::new(name.as_str(), p.limit, p.period);
        if let Some(burst) = p.burst {
            policy = policy.burst(burst);
        }
        b = b.policy(policy);
        if let Some(k) = &p.key {
            b = b.policy_key(name, key_source(k));
        }
    }
    b = if r.default_policy.is_empty() {
        b.no_default_policy()
    } else {
        b.default_policy(&r.default_policy)
    };
    for (pattern, policy) in &r.routes {
        b = b.route(pattern, policy);
    }
    // the stack's own routes are answered above the limiter; exempting them keeps a
    // hand-mounted copy of them below it unlimited too
    for p in r.exempt_routes.iter().chain([
        &c.health.live_path,
        &c.health.ready_path,
        &c.health.deep_path,
    ]) {
        b = b.exempt_route(p);
    }
    if !c.metrics.path.is_empty() {
        b = b.exempt_route(&c.metrics.path);
    }
    for k in &r.exempt_keys {
        b = b.exempt_key(k);
    }
    let proxies = TrustedProxies::new(&r.trusted_proxies)
        .map_err(|e| ConfigError::one("ratelimit.trusted_proxies", e.to_string()))?;
    b = b
        .key(key_source(&r.key))
        .trusted_proxies(proxies)
        .headers({
            let mut set = match r.headers {
                HeadersMode::All => HeaderSet::ALL,
                HeadersMode::Ietf => HeaderSet::IETF,
                HeadersMode::Legacy => HeaderSet::LEGACY,
                HeadersMode::None => HeaderSet::NONE,
            };
            if r.reset == ResetMode::Epoch {
                set = set.reset_at_epoch();
            }
            if r.legacy_retry_after {
                set = set.with_retry_after();
            }
            set
        })
        .route_resolver(resolver.clone())
        .clock(clock.clone())
        .max_keys(r.max_keys)
        .overflow_factor(r.overflow_factor)
        .sweep_interval(r.sweep_interval)
        .ipv6_prefix(r.ipv6_prefix)
        .log_refusals(r.log_refusals)
        .metrics(metrics);
    #[cfg(feature = "redis")]
    if !r.redis.url.is_empty() {
        use garrison_ratelimit::{FailMode, RedisStore};
        let store = RedisStore::new(&r.redis.url)
            .map_err(|e| ConfigError::one("ratelimit.redis.url", e.to_string()))?
            .timeout(r.redis.timeout)
            .retry_interval(r.redis.retry_interval)
            .fail_mode(match r.redis.fail_mode {
                FailModeConfig::Open => FailMode::Open,
                FailModeConfig::Closed => FailMode::Closed,
            })
            .key_prefix(&r.redis.key_prefix)
            .lease_fraction(r.redis.lease_fraction);
        b = b.store(store);
    }
    Ok(b)
}

/// The scrape route of `[metrics]`, with its token and networks when it has them.
fn scrape_layer(m: &MetricsConfig, metrics: &MetricsRegistry) -> garrison_metrics::ScrapeLayer {
    let layer = metrics.exporter().layer(m.path.clone());
    if m.token.is_empty() && m.allow_from.is_empty() {
        return layer;
    }
    let mut access = garrison_metrics::ScrapeAccess::new()
        // validated: every entry parses
        .from_networks(m.allow_from.iter().filter_map(|n| n.parse().ok()));
    if !m.token.is_empty() {
        access = access.token(&m.token);
    }
    layer.access(access)
}

/// A status code of `[health.status_codes]`, validated to 200..=599.
fn code(n: u16) -> http::StatusCode {
    http::StatusCode::from_u16(n).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR)
}

fn health_registry(c: &GarrisonConfig) -> HealthRegistry {
    let h = &c.health;
    let mut b = HealthRegistry::builder()
        .service_id(c.service.name.clone())
        .details(match h.details {
            DetailsMode::Token => Details::Token,
            DetailsMode::Always => Details::Always,
            DetailsMode::Never => Details::Never,
        })
        .paths(Paths {
            live: h.live_path.clone(),
            ready: h.ready_path.clone(),
            deep: h.deep_path.clone(),
        })
        // validated: every entry parses
        .details_from(h.details_from.iter().filter_map(|n| n.parse().ok()))
        .status_names(match h.status_names {
            StatusNamesMode::Draft => StatusNames::Draft,
            StatusNamesMode::Descriptive => StatusNames::Descriptive,
        })
        .status_codes(StatusCodes {
            pass: code(h.status_codes[0]),
            warn: code(h.status_codes[1]),
            fail: code(h.status_codes[2]),
        });
    if !c.service.version.is_empty() {
        b = b.version(c.service.version.clone());
    }
    if !h.token.is_empty() {
        b = b.token(h.token.clone());
    }
    b.build()
}

fn register_checks(
    c: &GarrisonConfig,
    health: &HealthRegistry,
    #[allow(unused_variables)] metrics: &MetricsRegistry,
    breakers: &BreakerRegistry,
    #[allow(unused_variables)] limiter: Option<&Arc<RateLimiter>>,
) -> Result<(), ConfigError> {
    let register = |name: &str, check: Box<dyn Check>, opts: CheckOptions| {
        health
            .register(name, BoxedCheck(check), opts)
            .map_err(|e| ConfigError::one(format!("health.checks.{name}"), e.to_string()))
    };
    if c.health.breakers && c.breaker.enabled {
        let check = BreakerCheck::new(breakers);
        let check = match c.health.breakers_verbose {
            true => check.verbose(),
            false => check,
        };
        register("breakers", Box::new(check), CheckOptions::deep())?;
    }
    if c.health.process {
        register(
            "process",
            Box::new(garrison_health::ProcessCheck::new()),
            CheckOptions::deep().critical(false),
        )?;
    }
    #[cfg(feature = "redis")]
    if let Some(l) = limiter.filter(|l| l.redis_store().is_some()) {
        // fail-open keeps serving from memory: a warn; fail-closed refuses requests: a fail
        let critical = c.ratelimit.redis.fail_mode == FailModeConfig::Closed;
        register(
            "ratelimit-store",
            Box::new(garrison_health::RateLimitStoreCheck::new(l)),
            CheckOptions::deep().critical(critical),
        )?;
    }
    #[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
    let db = garrison_health::DbMetrics::new(metrics);
    for (name, check) in &c.health.checks {
        let path = || format!("health.checks.{name}.url");
        let boxed: Box<dyn Check> = match check.kind {
            CheckType::Http => Box::new(
                garrison_health::HttpCheck::new(&check.url)
                    .map_err(|e| ConfigError::one(path(), e.to_string()))?,
            ),
            #[cfg(feature = "redis")]
            CheckType::Redis => Box::new(
                garrison_health::RedisCheck::new(&check.url)
                    .map_err(|e| ConfigError::one(path(), e.to_string()))?,
            ),
            #[cfg(feature = "postgres")]
            CheckType::Postgres => Box::new(
                db.instrument(
                    name,
                    pool::<sqlx::Postgres>(check).map_err(|e| ConfigError::one(path(), e))?,
                )
                .check()
                .warn_response_time(check.warn_response_time),
            ),
            #[cfg(feature = "mysql")]
            CheckType::Mysql => Box::new(
                db.instrument(
                    name,
                    pool::<sqlx::MySql>(check).map_err(|e| ConfigError::one(path(), e))?,
                )
                .check()
                .warn_response_time(check.warn_response_time),
            ),
            #[cfg(feature = "sqlite")]
            CheckType::Sqlite => Box::new(
                db.instrument(
                    name,
                    pool::<sqlx::Sqlite>(check).map_err(|e| ConfigError::one(path(), e))?,
                )
                .check()
                .warn_response_time(check.warn_response_time),
            ),
            #[allow(unreachable_patterns)] // validation refused types without their feature
            _ => unreachable!("validated: the check type's feature is on"),
        };
        let opts = match check.probe {
            ProbeKind::Readiness => CheckOptions::readiness(),
            ProbeKind::Liveness => CheckOptions::liveness(),
            ProbeKind::Both => CheckOptions::both(),
            ProbeKind::Deep => CheckOptions::deep(),
        }
        .critical(check.critical)
        .timeout(check.timeout)
        .interval(check.interval);
        register(name, boxed, opts)?;
    }
    Ok(())
}

/// A small pool for a configured database check: it connects on first use, so a service
/// starts while its database is down (and the check says so).
#[cfg(any(feature = "postgres", feature = "mysql", feature = "sqlite"))]
fn pool<DB: sqlx::Database>(check: &CheckConfig) -> Result<sqlx::Pool<DB>, String> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(2)
        .acquire_timeout(check.timeout)
        .connect_lazy(&check.url)
        .map_err(|e| e.to_string())
}

struct BoxedCheck(Box<dyn Check>);

impl Check for BoxedCheck {
    fn check(&self) -> garrison_health::BoxFuture<'_, garrison_health::CheckResult> {
        self.0.check()
    }
}

/// The settings of breaker profile `name`: a built-in profile, changed by
/// `[breaker.profiles.<name>]` when the section has one.
fn breaker_layer(
    b: &BreakerSection,
    breakers: &BreakerRegistry,
    resolver: &RouteResolver,
) -> Result<CircuitBreakerLayer, ConfigError> {
    let config_err = |path: String| {
        move |e: garrison_breaker::ConfigError| ConfigError::one(path, e.to_string())
    };
    let config = b
        .profile_config(&b.profile)
        .map_err(config_err("breaker.profile".into()))?;
    let mut layer = CircuitBreakerLayer::new(breakers, &b.name, config);
    if b.per_route {
        layer = layer.per_route(resolver.clone(), b.max_breakers);
        for (route, profile) in &b.routes {
            let cfg = b
                .profile_config(profile)
                .map_err(config_err(format!("breaker.routes.{route}")))?;
            layer = layer.route_config(route, cfg);
        }
    }
    Ok(layer)
}
