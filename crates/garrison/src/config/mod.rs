//! [`GarrisonConfig`]: every option of the stack, read from TOML.
//!
//! Every field has a default (shown in `garrison-config.example.toml` at the repository
//! root, and on each field here). Durations are written as strings: `"250ms"`, `"15m"`,
//! `"1h30m"`. [`GarrisonConfig::from_toml`] reads a file's text and reports every bad key at
//! once, each with its path:
//!
//! ```
//! let err = garrison::GarrisonConfig::from_toml(
//!     "[ratelimit.policies.auth]\nlimit = 0\nperiod = \"15m\"\n[metrics]\npath = 7\n",
//! )
//! .unwrap_err();
//! let text = err.to_string();
//! assert!(text.contains("ratelimit.policies.auth.limit: must be > 0"), "{text}");
//! assert!(text.contains("metrics.path: expected a string, found integer"), "{text}");
//! ```

mod de;
mod duration;
mod parse;
mod profile;
mod selector;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;

pub use duration::{format_duration, parse_duration};
pub use parse::BUILT_IN_PROFILES;
pub use selector::check_selector;

/// The whole configuration of a Garrison stack: one section per layer.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct GarrisonConfig {
    /// `[service]`: who this service is, and its route patterns.
    pub service: ServiceConfig,
    /// `[trace]`: trace propagation, sampling and export.
    pub trace: TraceConfig,
    /// `[metrics]`: RED metrics and the scrape route.
    pub metrics: MetricsConfig,
    /// `[health]`: the health routes and their checks.
    pub health: HealthConfig,
    /// `[ratelimit]`: policies, keys and the store.
    pub ratelimit: RateLimitConfig,
    /// `[admission]`: priority admission and load shedding, between the rate limiter and
    /// the breakers.
    pub admission: AdmissionConfig,
    /// `[breaker]`: circuit breakers in front of the service.
    pub breaker: BreakerSection,
    /// `[ops]`: the SLOs and alert thresholds that [`crate::ops::rules`] writes Prometheus
    /// rules for (the stack itself does not read it).
    pub ops: OpsConfig,
}

/// `[service]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// `name`: the service name in health reports (`serviceId`) and OTLP's `service.name`.
    /// Default: `"garrison"`.
    pub name: String,
    /// `version`: reported by the deep health route. Default: `""` (not reported).
    pub version: String,
    /// `routes`: route patterns (`/users/{id}`, `/files/{*path}`) that name requests when
    /// there is no axum `MatchedPath` (a plain hyper service). Patterns used in
    /// `[ratelimit.routes]` and `[breaker.routes]` are added by themselves. Default: none.
    pub routes: Vec<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            name: "garrison".into(),
            version: String::new(),
            routes: Vec::new(),
        }
    }
}

/// `[trace]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TraceConfig {
    /// `enabled`. Default: `true`.
    pub enabled: bool,
    /// `sampler`: `"ratio"` (parent-based, `ratio` of new traces), `"always"`, `"never"` or
    /// `"error_biased"` (every error and slow request, `ratio` of the others). Default:
    /// `"ratio"`.
    pub sampler: SamplerKind,
    /// `ratio`: the share of new traces sampled, 0 to 1. Default: `0.1`.
    pub ratio: f64,
    /// `slow`: with `error_biased`, requests at least this long are kept. Default: `"1s"`.
    pub slow: Duration,
    /// `request_id_header`. Default: `"x-request-id"`.
    pub request_id_header: String,
    /// `trace_response`: send `traceresponse` back to callers. Default: `false`.
    pub trace_response: bool,
    /// `access_log`: one `tracing` event per request. Default: `false`.
    pub access_log: bool,
    /// `tracing_span`: a `tracing` span around each request for other subscribers.
    /// Default: `false`.
    pub tracing_span: bool,
    /// `otel_context`: make the request `opentelemetry::Context::current()` while the handler
    /// runs (feature `otel`), so that OpenTelemetry spans it opens join the request's trace.
    /// Default: `true`.
    pub otel_context: bool,
    /// `sampled_from`: whose `traceparent` sampled flag decides whether a request is
    /// recorded: `"any"` caller's, or only `"trusted_proxies"`' (those of `[ratelimit]`; other
    /// callers' traces are joined, and the sampler decides with a draw of its own). Default:
    /// `"any"` (the gateway always uses `"trusted_proxies"`).
    pub sampled_from: SampledFrom,
    /// `redact_headers`: header names redacted in logs, besides the credentials redacted by
    /// default. Default: none.
    pub redact_headers: Vec<String>,
    /// `redact_params`: query parameters redacted in logs, besides the default ones.
    /// Default: none.
    pub redact_params: Vec<String>,
    /// `redact_patterns`: personal data replaced wherever it appears in a JSON log line's
    /// text: `"email"`, `"phone"`, `"card"` (see `garrison_trace::PiiPattern`). Default:
    /// none.
    pub redact_patterns: Vec<String>,
    /// `queue`: spans waiting for export at most. Default: `2048`.
    pub queue: usize,
    /// `batch`: spans in one export at most. Default: `512`.
    pub batch: usize,
    /// `export_timeout`. Default: `"10s"`.
    pub export_timeout: Duration,
    /// `flush_every`: how long a partial batch waits. Default: `"1s"`.
    pub flush_every: Duration,
    /// `[trace.otlp]`: where spans go.
    pub otlp: OtlpSection,
}

impl Default for TraceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            sampler: SamplerKind::Ratio,
            ratio: 0.1,
            slow: Duration::from_secs(1),
            request_id_header: "x-request-id".into(),
            trace_response: false,
            access_log: false,
            tracing_span: false,
            otel_context: true,
            sampled_from: SampledFrom::Any,
            redact_headers: Vec::new(),
            redact_params: Vec::new(),
            redact_patterns: Vec::new(),
            queue: 2048,
            batch: 512,
            export_timeout: Duration::from_secs(10),
            flush_every: Duration::from_secs(1),
            otlp: OtlpSection::default(),
        }
    }
}

impl TraceConfig {
    /// What logs redact: the defaults, `redact_headers`, `redact_params` and
    /// `redact_patterns` (an unknown pattern is skipped here; `validate` names it).
    pub fn redaction(&self) -> garrison_trace::Redaction {
        let mut r = garrison_trace::Redaction::default();
        for h in &self.redact_headers {
            r = r.header(h);
        }
        for p in &self.redact_params {
            r = r.param(p);
        }
        for p in self.redact_patterns.iter().filter_map(|p| p.parse().ok()) {
            r = r.pattern(p);
        }
        r
    }
}

/// The `sampler` of `[trace]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SamplerKind {
    /// `"ratio"`.
    Ratio,
    /// `"always"`.
    Always,
    /// `"never"`.
    Never,
    /// `"error_biased"`.
    ErrorBiased,
}

/// `[trace.otlp]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct OtlpSection {
    /// `endpoint`: the collector, e.g. `"http://collector:4317"`. Empty: the standard
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` variable when it is set, otherwise no export.
    /// Default: `""`. Needs the `otlp` feature.
    pub endpoint: String,
    /// `protocol`: `"grpc"` or `"http/protobuf"`. Default: `"grpc"`.
    pub protocol: OtlpProtocol,
    /// `timeout`: how long one export may take. Default: `"10s"`.
    pub timeout: Duration,
    /// `headers`: sent with every export (API keys). Default: none.
    pub headers: BTreeMap<String, String>,
}

impl Default for OtlpSection {
    fn default() -> Self {
        Self {
            endpoint: String::new(),
            protocol: OtlpProtocol::Grpc,
            timeout: Duration::from_secs(10),
            headers: BTreeMap::new(),
        }
    }
}

/// The `protocol` of `[trace.otlp]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub enum OtlpProtocol {
    /// `"grpc"`.
    #[serde(rename = "grpc")]
    Grpc,
    /// `"http/protobuf"`.
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// `[metrics]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct MetricsConfig {
    /// `enabled`. Default: `true`.
    pub enabled: bool,
    /// `path`: where scrapes are answered, before the rate limiter. `""`: not mounted (serve
    /// [`Garrison::metrics`](crate::Garrison::metrics)' exporter yourself). Default:
    /// `"/metrics"`.
    pub path: String,
    /// `duration_buckets`: bucket bounds of `http_server_request_duration_seconds`, in
    /// seconds. Default: the OpenTelemetry buckets, 0.005 to 10.
    pub duration_buckets: Vec<f64>,
    /// `max_series`: label combinations kept at most; more are counted in
    /// `garrison_metrics_series_dropped_total`. Default: `2000`.
    pub max_series: usize,
    /// `exemplars`: trace ids on histogram buckets (OpenMetrics). Default: `true`.
    pub exemplars: bool,
    /// `process_metrics`: `process_*` families. Default: `true`.
    pub process_metrics: bool,
    /// `runtime_metrics`: tokio runtime families. Default: `true`.
    pub runtime_metrics: bool,
    /// `token`: scrapes must present `Authorization: Bearer <token>` (`401` without).
    /// Default: `""` (no token asked).
    pub token: String,
    /// `allow_from`: scrapes must come from one of these networks (CIDR, `403` otherwise).
    /// Default: `[]` (any address).
    pub allow_from: Vec<String>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: "/metrics".into(),
            duration_buckets: garrison_metrics::DEFAULT_DURATION_BUCKETS.to_vec(),
            max_series: garrison_metrics::DEFAULT_MAX_SERIES,
            exemplars: true,
            process_metrics: true,
            runtime_metrics: true,
            token: String::new(),
            allow_from: Vec::new(),
        }
    }
}

/// `[health]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HealthConfig {
    /// `enabled`: answer the health routes. Default: `true`.
    pub enabled: bool,
    /// `live_path`. Default: `"/health/live"`.
    pub live_path: String,
    /// `ready_path`. Default: `"/health/ready"`.
    pub ready_path: String,
    /// `deep_path`. Default: `"/health"`.
    pub deep_path: String,
    /// `token`: callers presenting `Authorization: Bearer <token>` see check details.
    /// Default: `""` (nobody, unless `details = "always"`).
    pub token: String,
    /// `details`: `"token"`, `"always"` or `"never"`. Default: `"token"`.
    pub details: DetailsMode,
    /// `details_from`: only callers from these networks (CIDR) see details, on top of
    /// `details`. Default: `[]` (any network).
    pub details_from: Vec<String>,
    /// `breakers`: a deep check reporting open breakers (`warn`). Default: `true`.
    pub breakers: bool,
    /// `breakers_verbose`: that check reports every breaker, with its state and window
    /// figures, not only the open ones. Default: `false`.
    pub breakers_verbose: bool,
    /// `process`: a deep check of the process's own limits, warning from 80% of its
    /// file-descriptor limit or 90% of its cgroup memory limit. Default: `false`.
    pub process: bool,
    /// `status_names`: the words of the report, `"draft"` (`pass`, `warn`, `fail`) or
    /// `"descriptive"` (`healthy`, `degraded`, `unhealthy`). Default: `"draft"`.
    pub status_names: StatusNamesMode,
    /// `[health.status_codes]`: the HTTP status of each health status (`pass`, `warn`,
    /// `fail`; 200 to 599). Default: 200, 200, 503 (`warn = 206` tells a degraded service
    /// apart while keeping it in rotation).
    #[serde(deserialize_with = "parse::status_codes")]
    pub status_codes: [u16; 3],
    /// `[health.checks.<name>]`: checks of dependencies. Default: none.
    pub checks: BTreeMap<String, CheckConfig>,
}

/// The `status_names` of `[health]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum StatusNamesMode {
    /// `"draft"`: `pass`, `warn`, `fail`.
    Draft,
    /// `"descriptive"`: `healthy`, `degraded`, `unhealthy`.
    Descriptive,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            live_path: "/health/live".into(),
            ready_path: "/health/ready".into(),
            deep_path: "/health".into(),
            token: String::new(),
            details: DetailsMode::Token,
            details_from: Vec::new(),
            breakers: true,
            breakers_verbose: false,
            process: false,
            status_names: StatusNamesMode::Draft,
            status_codes: [200, 200, 503],
            checks: BTreeMap::new(),
        }
    }
}

/// The `details` of `[health]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DetailsMode {
    /// `"token"`.
    Token,
    /// `"always"`.
    Always,
    /// `"never"`.
    Never,
}

/// `[health.checks.<name>]`: one dependency check.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct CheckConfig {
    /// `type`: `"http"`, `"redis"`, `"postgres"`, `"mysql"` or `"sqlite"` (each database
    /// and Redis needs its cargo feature). Required.
    #[serde(rename = "type")]
    pub kind: CheckType,
    /// `url`: what to check. Required.
    pub url: String,
    /// `probe`: `"readiness"`, `"liveness"`, `"both"` or `"deep"`. Default: `"readiness"`.
    pub probe: ProbeKind,
    /// `critical`: a failure fails the probe (`false`: a `warn`). Default: `true`.
    pub critical: bool,
    /// `timeout`. Default: `"2s"`.
    pub timeout: Duration,
    /// `interval`: time between runs (how long a result is cached). Default: `"10s"`.
    pub interval: Duration,
    /// `warn_response_time`: a database check (`postgres`, `mysql`, `sqlite`) whose round
    /// trip takes this long warns, before the `timeout` fails it. Default: `"5s"`.
    pub warn_response_time: Duration,
}

impl Default for CheckConfig {
    /// An HTTP check with no URL: `type` and `url` are required in a file.
    fn default() -> Self {
        Self {
            kind: CheckType::Http,
            url: String::new(),
            probe: ProbeKind::Readiness,
            critical: true,
            timeout: garrison_health::DEFAULT_TIMEOUT,
            interval: garrison_health::DEFAULT_INTERVAL,
            warn_response_time: Duration::from_secs(5),
        }
    }
}

/// The `type` of a `[health.checks.<name>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum CheckType {
    /// `"http"`: a `GET`, healthy on `2xx`.
    Http,
    /// `"redis"`: `PING`.
    Redis,
    /// `"postgres"`: a pool and `SELECT 1`.
    Postgres,
    /// `"mysql"`: a pool and `SELECT 1`.
    Mysql,
    /// `"sqlite"`: a pool and `SELECT 1`.
    Sqlite,
}

/// The `probe` of a `[health.checks.<name>]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ProbeKind {
    /// `"readiness"`.
    Readiness,
    /// `"liveness"`.
    Liveness,
    /// `"both"`.
    Both,
    /// `"deep"`.
    Deep,
}

/// `[ratelimit]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RateLimitConfig {
    /// `enabled`. Default: `true`.
    pub enabled: bool,
    /// `default_policy`: the policy of routes `[ratelimit.routes]` does not name. `""`: such
    /// routes are not limited. Default: `"general"`.
    pub default_policy: String,
    /// `key`: `"ip"` (the client address), `"global"` (one bucket) or `"header:<name>"`
    /// (e.g. an API key, hashed; requests without it fall back to the address).
    /// Default: `"ip"`.
    pub key: KeyConfig,
    /// `trusted_proxies`: CIDRs whose `Forwarded` / `X-Forwarded-For` are believed.
    /// Default: none.
    pub trusted_proxies: Vec<String>,
    /// `headers`: `"all"`, `"ietf"` (`RateLimit-Policy`, `RateLimit`), `"legacy"`
    /// (`X-RateLimit-*`) or `"none"`. Default: `"all"`.
    pub headers: HeadersMode,
    /// `reset`: `X-RateLimit-Reset` as `"delta"` (seconds until the allowance is whole) or
    /// `"epoch"` (the Unix time then, as GitHub's API sends it). Default: `"delta"`.
    pub reset: ResetMode,
    /// `legacy_retry_after`: a `429` also carries `X-RateLimit-Retry-After` (with the legacy
    /// headers). Default: `false`.
    pub legacy_retry_after: bool,
    /// `log_refusals`: a `WARN` event for refused requests, at most one a second, with the
    /// count since the previous one. Default: `false` (the metrics count every refusal).
    pub log_refusals: bool,
    /// `max_keys`: tracked client keys at most, over all policies. Default: `1000000`.
    pub max_keys: usize,
    /// `overflow_factor`: how many clients' worth an overflow bucket admits while more clients
    /// are active than `max_keys` holds. Default: `1`.
    pub overflow_factor: u32,
    /// `sweep_interval`: how often idle keys are evicted. Default: `"10s"`.
    pub sweep_interval: Duration,
    /// `ipv6_prefix`: IPv6 clients are keyed by this prefix length. Default: `64`.
    pub ipv6_prefix: u8,
    /// `exempt_routes`: route patterns never limited. Default: none.
    pub exempt_routes: Vec<String>,
    /// `exempt_keys`: key values (e.g. an admin's API key) never limited. Default: none.
    pub exempt_keys: Vec<String>,
    /// `[ratelimit.policies.<name>]`. Default: `general` (100 per minute), `auth` (5 per
    /// 15 minutes), `upload` (10 per 5 minutes) and `heavy` (10 per minute, for expensive
    /// routes: reports, exports, searches). A file's policies are added to these
    /// (and replace one of the same name).
    pub policies: BTreeMap<String, PolicyConfig>,
    /// `[ratelimit.routes]`: route pattern → policy name. Default: none.
    pub routes: BTreeMap<String, String>,
    /// `[ratelimit.redis]`: one limit across replicas.
    pub redis: RedisSection,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        let mut policies = BTreeMap::new();
        let m = |n: u64| Duration::from_secs(60 * n);
        policies.insert("general".into(), PolicyConfig::new(100, m(1)));
        policies.insert("auth".into(), PolicyConfig::new(5, m(15)));
        policies.insert("upload".into(), PolicyConfig::new(10, m(5)));
        policies.insert("heavy".into(), PolicyConfig::new(10, m(1)));
        Self {
            enabled: true,
            default_policy: "general".into(),
            key: KeyConfig::Ip,
            trusted_proxies: Vec::new(),
            headers: HeadersMode::All,
            reset: ResetMode::Delta,
            legacy_retry_after: false,
            log_refusals: false,
            max_keys: garrison_ratelimit::DEFAULT_MAX_KEYS,
            overflow_factor: 1,
            sweep_interval: garrison_ratelimit::DEFAULT_SWEEP_INTERVAL,
            ipv6_prefix: 64,
            exempt_routes: Vec::new(),
            exempt_keys: Vec::new(),
            policies,
            routes: BTreeMap::new(),
            redis: RedisSection::default(),
        }
    }
}

impl RateLimitConfig {
    /// Adds (or replaces) the policy `name`: `limit` requests per `period`.
    pub fn policy(&mut self, name: &str, limit: u32, period: Duration) -> &mut Self {
        self.policies
            .insert(name.into(), PolicyConfig::new(limit, period));
        self
    }

    /// Limits the routes of `pattern` by the policy `policy`.
    pub fn route(&mut self, pattern: &str, policy: &str) -> &mut Self {
        self.routes.insert(pattern.into(), policy.into());
        self
    }
}

/// `[ratelimit.policies.<name>]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// `limit`: requests per `period`. Required, > 0.
    pub limit: u32,
    /// `period`. Required.
    pub period: Duration,
    /// `burst`: requests at once. Default: the limit.
    pub burst: Option<u32>,
    /// `key`: this policy's key source, instead of `[ratelimit] key`. Default: unset.
    pub key: Option<KeyConfig>,
}

impl PolicyConfig {
    /// `limit` per `period`, burst the limit, the section's key.
    pub fn new(limit: u32, period: Duration) -> Self {
        Self {
            limit,
            period,
            burst: None,
            key: None,
        }
    }
}

impl Default for PolicyConfig {
    /// No limit and no period: `limit` and `period` are required of a new policy in a file.
    fn default() -> Self {
        Self::new(0, Duration::ZERO)
    }
}

/// A rate-limit key source.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyConfig {
    /// `"ip"`.
    Ip,
    /// `"global"`.
    Global,
    /// `"header:<name>"`.
    Header(String),
}

impl std::str::FromStr for KeyConfig {
    type Err = String;

    /// `"ip"`, `"global"` or `"header:<name>"`.
    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "ip" => Ok(Self::Ip),
            "global" => Ok(Self::Global),
            other => match other.strip_prefix("header:") {
                Some(h) => Ok(Self::Header(h.trim().to_owned())),
                None => Err(format!(
                    "`{other}` is not one of \"ip\", \"global\", \"header:<name>\""
                )),
            },
        }
    }
}

impl<'de> Deserialize<'de> for KeyConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(de::FromStrVisitor::new(
            "\"ip\", \"global\" or \"header:<name>\"",
        ))
    }
}

/// The `sampled_from` of `[trace]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum SampledFrom {
    /// `"any"`: every caller's sampled flag decides.
    Any,
    /// `"trusted_proxies"`: only the flag of `[ratelimit] trusted_proxies` decides.
    TrustedProxies,
}

/// The `headers` of `[ratelimit]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum HeadersMode {
    /// `"all"`.
    All,
    /// `"ietf"`.
    Ietf,
    /// `"legacy"`.
    Legacy,
    /// `"none"`.
    None,
}

/// The `reset` of `[ratelimit]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ResetMode {
    /// `"delta"`: seconds from now.
    Delta,
    /// `"epoch"`: a Unix time.
    Epoch,
}

/// `[ratelimit.redis]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RedisSection {
    /// `url`: `redis://host:6379`. `""`: limits are kept in memory, per replica.
    /// Default: `""`. Needs the `redis` feature.
    pub url: String,
    /// `timeout`: a call slower than this falls back. Default: `"50ms"`.
    pub timeout: Duration,
    /// `retry_interval`: how often a fallen-back store tries Redis again. Default: `"1s"`.
    pub retry_interval: Duration,
    /// `fail_mode`: `"open"` (fall back to memory) or `"closed"` (answer 503).
    /// Default: `"open"`.
    pub fail_mode: FailModeConfig,
    /// `key_prefix`. Default: `"garrison:ratelimit"`.
    pub key_prefix: String,
    /// `lease_fraction`: the most of a burst a replica leases per call. Default: `0.02`.
    pub lease_fraction: f64,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: String::new(),
            timeout: Duration::from_millis(50),
            retry_interval: Duration::from_secs(1),
            fail_mode: FailModeConfig::Open,
            key_prefix: "garrison:ratelimit".into(),
            lease_fraction: 0.02,
        }
    }
}

/// The `fail_mode` of `[ratelimit.redis]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FailModeConfig {
    /// `"open"`.
    Open,
    /// `"closed"`.
    Closed,
}

/// `[admission]`: at most `max_in_flight` requests in the service, the rest waiting in a
/// queue ordered by priority (`critical`, `high`, `normal`, `low`, `batch`), shed with
/// `503` when the queue is full or their class's timeout passes.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct AdmissionConfig {
    /// `enabled`. Default: `false` (size `max_in_flight` for your service first, or turn on
    /// `[admission.adaptive]`).
    pub enabled: bool,
    /// `profile`: a named sizing whose values replace the defaults of `max_in_flight`,
    /// `max_queue` and `[admission.queue_timeouts]` (keys the file sets still win):
    /// `"patient"` is 8 in flight, 200 queued, every class waiting up to 30 s, for a service
    /// held by a small resource (a pool of ten database connections) whose callers would
    /// rather wait than be shed (internal tools, batch clients); not for a latency-sensitive
    /// public API, whose callers give up long before 30 s. `""`: none. Default: `""`.
    pub profile: String,
    /// `max_in_flight`: requests in the service at once (the starting limit when adaptive).
    /// Default: `64`.
    pub max_in_flight: usize,
    /// `max_queue`: requests waiting at most. Default: `256`.
    pub max_queue: usize,
    /// `aging`: a waiting request moves up one class per `aging` waited, so that no class
    /// starves; `"0s"`: strict priority. Default: `"1s"`.
    pub aging: Duration,
    /// `retry_after`: `Retry-After` of a shed request. Default: `"1s"`.
    pub retry_after: Duration,
    /// `default_priority`: the class of requests nothing else classes. Default: `"normal"`.
    pub default_priority: String,
    /// `header`: trusted callers set their class in it. Default: `"x-priority"`.
    pub header: String,
    /// `trusted_callers`: CIDRs whose `header` is believed (anyone else's is ignored).
    /// Default: none.
    pub trusted_callers: Vec<String>,
    /// `deep_queue`: the health check warns when the queue stays at least this deep between
    /// two runs; `0`: half of `max_queue`. Default: `0`.
    pub deep_queue: usize,
    /// `log_sheds`: a `WARN` event for shed requests, at most one a second, with the count
    /// since the previous one. Default: `false` (the metrics count every shed).
    pub log_sheds: bool,
    /// `[admission.queue_timeouts]`: the longest wait per class. Default: critical `"5s"`,
    /// high `"2s"`, normal `"1s"`, low `"500ms"`, batch `"250ms"`.
    pub queue_timeouts: BTreeMap<String, Duration>,
    /// `[admission.routes]`: route pattern → class. Default: none.
    pub routes: BTreeMap<String, String>,
    /// `[admission.adaptive]`: the limit follows observed latency.
    pub adaptive: AdaptiveConfig,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            profile: String::new(),
            max_in_flight: 64,
            max_queue: 256,
            aging: Duration::from_secs(1),
            retry_after: Duration::from_secs(1),
            default_priority: "normal".into(),
            header: "x-priority".into(),
            trusted_callers: Vec::new(),
            deep_queue: 0,
            log_sheds: false,
            queue_timeouts: garrison_admission::Priority::ALL
                .iter()
                .map(|p| {
                    (
                        p.as_str().to_owned(),
                        garrison_admission::DEFAULT_QUEUE_TIMEOUTS[p.index()],
                    )
                })
                .collect(),
            routes: BTreeMap::new(),
            adaptive: AdaptiveConfig::default(),
        }
    }
}

impl AdmissionConfig {
    /// The built-in sizing profiles (see [`profile`](Self::profile)).
    pub const PROFILES: &'static [&'static str] = &["patient"];

    /// Sets the values of profile `name` (see [`profile`](Self::profile)); `false` when there
    /// is no such profile.
    pub fn apply_profile(&mut self, name: &str) -> bool {
        let Some((in_flight, queue, wait)) = admission_profile(name) else {
            return false;
        };
        self.profile = name.to_owned();
        self.max_in_flight = in_flight;
        self.max_queue = queue;
        for wait_of_class in self.queue_timeouts.values_mut() {
            *wait_of_class = wait;
        }
        true
    }
}

/// In flight, queued, and every class's longest wait of a built-in admission profile.
pub(crate) fn admission_profile(name: &str) -> Option<(usize, usize, Duration)> {
    match name {
        "patient" => Some((8, 200, Duration::from_secs(30))),
        _ => None,
    }
}

/// `[admission.adaptive]`: AIMD from observed latency.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct AdaptiveConfig {
    /// `enabled`. Default: `false`.
    pub enabled: bool,
    /// `min`: the lowest limit. Default: `1`.
    pub min: usize,
    /// `max`: the highest limit. Default: `1000`.
    pub max: usize,
    /// `latency_target`: responses slower than this lower the limit. Default: `"250ms"`.
    pub latency_target: Duration,
    /// `backoff`: the factor a slow response applies. Default: `0.9`.
    pub backoff: f64,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            min: 1,
            max: 1000,
            latency_target: Duration::from_millis(250),
            backoff: 0.9,
        }
    }
}

/// `[breaker]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct BreakerSection {
    /// `enabled`. Default: `true`.
    pub enabled: bool,
    /// `name`: breakers are named `<name>:<route>` (or `<name>` with `per_route = false`).
    /// Default: `"server"`.
    pub name: String,
    /// `per_route`: one breaker per route template, so that one failing route does not
    /// take the others down. Default: `true`.
    pub per_route: bool,
    /// `max_breakers`: per-route breakers at most (further routes share one). Default:
    /// `256`.
    pub max_breakers: usize,
    /// `profile`: the profile of routes `[breaker.routes]` does not name: `"default"`
    /// (the last 100 calls, at least 100, opens at 50% failures, 60 s open),
    /// `"database"`, `"critical"`, `"batch"`, `"analytics"` or one of `[breaker.profiles]`.
    /// Default: `"default"`.
    pub profile: String,
    /// `[breaker.profiles.<name>]`: profiles of your own (or changes to the built-in ones).
    /// Default: none.
    pub profiles: BTreeMap<String, ProfileConfig>,
    /// `[breaker.routes]`: route pattern → profile name. Default: none.
    pub routes: BTreeMap<String, String>,
}

impl Default for BreakerSection {
    fn default() -> Self {
        Self {
            enabled: true,
            name: "server".into(),
            per_route: true,
            max_breakers: 256,
            profile: "default".into(),
            profiles: BTreeMap::new(),
            routes: BTreeMap::new(),
        }
    }
}

/// `[breaker.profiles.<name>]`: each key unset keeps the value of `base`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ProfileConfig {
    /// `base`: the profile this one changes. Default: the profile of the same name when it is
    /// built in, else `"default"`.
    pub base: Option<String>,
    /// `window`: `"<n> calls"` or a duration (`"30s"`).
    pub window: Option<WindowConfig>,
    /// `minimum_calls`: calls in the window before the rates count.
    pub minimum_calls: Option<u32>,
    /// `failure_rate`: opens at this share of failures, 0 to 1.
    pub failure_rate: Option<f64>,
    /// `failure_count`: opens at this many failures in the window, whatever their share,
    /// instead of judging `failure_rate` ("5 failures in 30 s"); `0`: the rate.
    pub failure_count: Option<u32>,
    /// `slow_call_rate`: opens at this share of slow calls, 0 to 1.
    pub slow_call_rate: Option<f64>,
    /// `slow_call_duration`: calls at least this long are slow.
    pub slow_call_duration: Option<Duration>,
    /// `wait_in_open`: how long it stays open before probing.
    pub wait_in_open: Option<Duration>,
    /// `max_wait_in_open`: the longest wait when waits double.
    pub max_wait_in_open: Option<Duration>,
    /// `wait_multiplier`: each consecutive opening waits this much longer (1: no growth).
    pub wait_multiplier: Option<f64>,
    /// `half_open_calls`: probe calls let through when half-open.
    pub half_open_calls: Option<u32>,
}

/// A breaker window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum WindowConfig {
    /// `"<n> calls"`.
    Calls(u32),
    /// A duration.
    Time(Duration),
}

impl std::str::FromStr for WindowConfig {
    type Err = String;

    /// `"<n> calls"` or a duration such as `"30s"`.
    fn from_str(w: &str) -> Result<Self, String> {
        match w.trim().strip_suffix("calls") {
            Some(n) => n
                .trim()
                .parse()
                .map(Self::Calls)
                .map_err(|_| format!("`{w}`: expected \"<n> calls\"")),
            None => parse_duration(w)
                .map(Self::Time)
                .map_err(|e| format!("{e}, or \"<n> calls\"")),
        }
    }
}

impl<'de> Deserialize<'de> for WindowConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(de::FromStrVisitor::new(
            "\"<n> calls\" or a duration such as \"30s\"",
        ))
    }
}

/// `[ops]`: what the generated Prometheus rules (`garrison-gateway ops rules`,
/// [`crate::ops::rules`]) alert on.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct OpsConfig {
    /// `selector`: label matchers added to every selector of the rules, e.g.
    /// `job="shop"`. Default: `""` (every job; the rules group by `job`).
    pub selector: String,
    /// `runbook_url`: where the runbooks are; each alert's `runbook_url` annotation is
    /// `<runbook_url>/<AlertName>.md`. Default: this repository's `docs/runbooks`.
    pub runbook_url: String,
    /// `availability_objective`: the share of requests that must not end in a 5xx over 30
    /// days. Default: `0.999`.
    pub availability_objective: f64,
    /// `latency_objective`: the share of requests that must be faster than
    /// `latency_threshold` over 30 days. Default: `0.99`.
    pub latency_objective: f64,
    /// `latency_threshold`: the latency SLO's bound; it must be one of
    /// `[metrics] duration_buckets`. Default: `"250ms"`.
    pub latency_threshold: Duration,
    /// `error_rate`: `GarrisonHighErrorRate` fires when a route's share of 5xx stays above
    /// this for 5 minutes. Default: `0.05`.
    pub error_rate: f64,
    /// `min_request_rate`: routes with fewer requests per second than this do not fire
    /// `GarrisonHighErrorRate` or `GarrisonHighLatency` (one failed request of two is not
    /// an outage). Default: `0.1`.
    pub min_request_rate: f64,
    /// `p95_threshold`: `GarrisonHighLatency` fires when a route's p95 stays above this for
    /// 10 minutes. Default: `"500ms"`.
    pub p95_threshold: Duration,
    /// `pool_utilisation`: `GarrisonDbPoolSaturated` fires when a pool's share of
    /// connections in use stays above this for 5 minutes (`GarrisonDbPoolExhausted` at
    /// 100%). Default: `0.8`.
    pub pool_utilisation: f64,
    /// `ratelimit_rejections`: `GarrisonRateLimitRejections` fires when a policy refuses
    /// more than this share of its decisions for 10 minutes. Default: `0.1`.
    pub ratelimit_rejections: f64,
    /// `breaker_openings_per_hour`: `GarrisonBreakerFlapping` fires when a breaker opened
    /// this many times within an hour. Default: `3`.
    pub breaker_openings_per_hour: u32,
    /// `[ops.routes."<pattern>"]`: routes with SLOs of their own (`availability_objective`,
    /// `latency_objective`, `latency_threshold`; each unset key takes the service's).
    /// Default: none.
    pub routes: BTreeMap<String, RouteSloConfig>,
}

/// The default of `[ops] runbook_url`.
pub const DEFAULT_RUNBOOK_URL: &str = "https://example.invalid/garrison/blob/main/docs/runbooks";

impl Default for OpsConfig {
    fn default() -> Self {
        Self {
            selector: String::new(),
            runbook_url: DEFAULT_RUNBOOK_URL.into(),
            availability_objective: 0.999,
            latency_objective: 0.99,
            latency_threshold: Duration::from_millis(250),
            error_rate: 0.05,
            min_request_rate: 0.1,
            p95_threshold: Duration::from_millis(500),
            pool_utilisation: 0.8,
            ratelimit_rejections: 0.1,
            breaker_openings_per_hour: 3,
            routes: BTreeMap::new(),
        }
    }
}

/// `[ops.routes."<pattern>"]`: a route's own SLOs; each unset key takes the value of
/// `[ops]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RouteSloConfig {
    /// `availability_objective`.
    pub availability_objective: Option<f64>,
    /// `latency_objective`.
    pub latency_objective: Option<f64>,
    /// `latency_threshold`.
    pub latency_threshold: Option<Duration>,
}

/// Why a configuration was refused: every bad key, each with its path and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    issues: Vec<ConfigIssue>,
}

/// One bad key of a [`ConfigError`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key's path, e.g. `ratelimit.policies.auth.limit`.
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl ConfigError {
    /// An error of these problems.
    pub fn new(issues: Vec<ConfigIssue>) -> Self {
        Self { issues }
    }

    pub(crate) fn one(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self::new(vec![ConfigIssue {
            path: path.into(),
            message: message.into(),
        }])
    }

    /// Every bad key: values that could not be read, then values that are wrong, then keys
    /// nobody knows.
    pub fn issues(&self) -> &[ConfigIssue] {
        &self.issues
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.issues.len();
        write!(
            f,
            "invalid garrison configuration ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        )?;
        for i in &self.issues {
            if i.path.is_empty() {
                write!(f, "\n  {}", i.message)?;
            } else {
                write!(f, "\n  {}: {}", i.path, i.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

impl GarrisonConfig {
    /// Reads a configuration from TOML text: unset keys take their defaults; every bad key
    /// (unknown, of the wrong type, out of range, naming a policy or profile that does not
    /// exist) is reported at once.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Self::from_table(&parse_toml(text)?)
    }

    /// Reads a configuration file (see [`from_toml`](Self::from_toml)).
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError::one("", format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// Reads a configuration from a parsed TOML table.
    pub fn from_table(table: &toml::Table) -> Result<Self, ConfigError> {
        parse::config(table)
    }

    /// Reads a configuration with sections of your own beside Garrison's (a gateway's
    /// `[gateway]`, say): `T` is a struct of your root sections that derives `Deserialize`
    /// and `Default` with `#[serde(default)]`, read with the same rules and words as
    /// Garrison's own, so that unknown keys, wrong types and Garrison's own problems are
    /// reported together. `check` then judges (and may tidy) your values against the whole
    /// configuration, a route naming a policy that does not exist say, and adds its
    /// problems. A `Duration` is written as a string (`"250ms"`).
    ///
    /// ```
    /// use garrison::config::{ConfigIssue, GarrisonConfig};
    ///
    /// #[derive(Debug, Default, serde::Deserialize)]
    /// #[serde(default)]
    /// struct Mine {
    ///     app: App,
    /// }
    ///
    /// #[derive(Debug, Default, serde::Deserialize)]
    /// #[serde(default)]
    /// struct App {
    ///     policy: String,
    ///     timeout: std::time::Duration,
    /// }
    ///
    /// let table: garrison::toml::Table =
    ///     "[app]\npolicy = \"nope\"\ntimeout = 3\n".parse().unwrap();
    /// let err = GarrisonConfig::from_table_with(&table, |config, mine: &mut Mine, issues| {
    ///     if !config.ratelimit.policies.contains_key(&mine.app.policy) {
    ///         issues.push(ConfigIssue {
    ///             path: "app.policy".into(),
    ///             message: format!("no policy `{}`", mine.app.policy),
    ///         });
    ///     }
    /// })
    /// .unwrap_err();
    /// let found: Vec<String> = err.issues().iter().map(|i| format!("{}: {}", i.path, i.message)).collect();
    /// assert_eq!(
    ///     found,
    ///     [
    ///         "app.timeout: expected a duration such as \"250ms\" or \"15m\", found integer",
    ///         "app.policy: no policy `nope`",
    ///     ]
    /// );
    /// ```
    pub fn from_table_with<T: serde::de::DeserializeOwned + Default>(
        table: &toml::Table,
        check: impl FnOnce(&GarrisonConfig, &mut T, &mut Vec<ConfigIssue>),
    ) -> Result<(Self, T), ConfigError> {
        parse::config_with(table, check)
    }

    /// Reads TOML text as [`from_table_with`](Self::from_table_with) does, naming the line
    /// of a syntax error.
    pub fn from_toml_with<T: serde::de::DeserializeOwned + Default>(
        text: &str,
        check: impl FnOnce(&GarrisonConfig, &mut T, &mut Vec<ConfigIssue>),
    ) -> Result<(Self, T), ConfigError> {
        Self::from_table_with(&parse_toml(text)?, check)
    }

    /// Checks the cross-references and ranges of a configuration built in code (the same
    /// checks [`from_toml`](Self::from_toml) makes).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut issues = Vec::new();
        parse::validate(self, &mut issues);
        if issues.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::new(issues))
        }
    }
}

fn parse_toml(text: &str) -> Result<toml::Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| {
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start.min(text.len())].matches('\n').count() + 1;
                format!("line {line}: ")
            })
            .unwrap_or_default();
        ConfigError::one("", format!("{at}{}", e.message()))
    })
}

impl<'de> serde::Deserialize<'de> for GarrisonConfig {
    /// Deserializes from any serde format (a section of your own configuration), with the
    /// checks of [`GarrisonConfig::from_toml`].
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let table = toml::Table::deserialize(d)?;
        Self::from_table(&table).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../garrison-config.example.toml");

    #[test]
    fn the_example_file_parses_to_the_defaults_of_the_code() {
        let parsed = GarrisonConfig::from_toml(EXAMPLE).unwrap();
        assert_eq!(parsed, GarrisonConfig::default());
        GarrisonConfig::default().validate().unwrap();
    }

    #[test]
    fn the_example_file_shows_every_key_the_reader_knows() {
        let table: toml::Table = EXAMPLE.parse().unwrap();
        let lookup = |path: &str| {
            let mut t = &table;
            let mut parts = path.split('.').peekable();
            while let Some(part) = parts.next() {
                match (t.get(part), parts.peek()) {
                    (Some(toml::Value::Table(inner)), Some(_)) => t = inner,
                    (Some(_), None) => return true,
                    _ => return false,
                }
            }
            false
        };
        let asked = parse::asked_keys(&table);
        assert!(asked.len() > 60, "only {} keys asked", asked.len());
        for key in asked {
            // a policy's `burst` and `key` have no value to show: they default to "unset"
            let optional = key.starts_with("ratelimit.policies.")
                && (key.ends_with(".burst") || key.ends_with(".key"));
            if optional {
                let name = key.rsplit('.').next().unwrap();
                assert!(
                    EXAMPLE.contains(&format!("`{name}`")),
                    "`{name}` is not explained"
                );
            } else {
                assert!(
                    lookup(&key),
                    "garrison-config.example.toml does not show `{key}`"
                );
            }
        }
    }
}
