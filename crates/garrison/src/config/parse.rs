//! Reading a [`GarrisonConfig`] from a TOML table (through the structs' derived
//! `Deserialize`, see `de.rs`), then judging it: defaults merged where a file adds to them,
//! required keys, ranges and cross-references. Every problem is reported with its path.

use std::cell::RefCell;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use toml::{Table, Value};

use super::de::{self, quote, Found};
use super::*;

/// [`GarrisonConfig`]'s sections as the reader sees them: read without the checks of
/// `GarrisonConfig`'s own `Deserialize` impl. The conversion below names every field of both
/// without `..`, so the compiler keeps the two alike.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Unchecked {
    service: ServiceConfig,
    trace: TraceConfig,
    metrics: MetricsConfig,
    health: HealthConfig,
    ratelimit: RateLimitConfig,
    admission: AdmissionConfig,
    breaker: BreakerSection,
    ops: OpsConfig,
}

impl From<Unchecked> for GarrisonConfig {
    fn from(u: Unchecked) -> Self {
        let Unchecked {
            service,
            trace,
            metrics,
            health,
            ratelimit,
            admission,
            breaker,
            ops,
        } = u;
        Self {
            service,
            trace,
            metrics,
            health,
            ratelimit,
            admission,
            breaker,
            ops,
        }
    }
}

pub(super) fn config(table: &Table) -> Result<GarrisonConfig, ConfigError> {
    config_with(table, |_, _: &mut (), _| {}).map(|(c, ())| c)
}

/// Reads Garrison's sections and the caller's `T` (a struct of other root sections) from one
/// table: unknown keys, unreadable values, Garrison's checks and the caller's `check` are
/// reported together.
pub(super) fn config_with<T: DeserializeOwned + Default>(
    table: &Table,
    check: impl FnOnce(&GarrisonConfig, &mut T, &mut Vec<ConfigIssue>),
) -> Result<(GarrisonConfig, T), ConfigError> {
    let mut found = Found::default();
    let (cfg, mut own) = read(table, &mut found);
    let mut issues = found.unreadable;
    validate(&cfg, &mut issues);
    let mut theirs = Vec::new();
    check(&cfg, &mut own, &mut theirs);
    // a key that could not be read is not judged again, and a key two readers call unknown
    // is reported once
    for issue in theirs.into_iter().chain(found.unknown) {
        if !covered(&issues, &issue.path) {
            issues.push(issue);
        }
    }
    if issues.is_empty() {
        Ok((cfg, own))
    } else {
        Err(ConfigError::new(issues))
    }
}

fn read<T: DeserializeOwned + Default>(table: &Table, found: &mut Found) -> (GarrisonConfig, T) {
    let ours = de::fields_of::<Unchecked>();
    let theirs = de::fields_of::<T>();
    let mut cfg = GarrisonConfig::from(de::read::<Unchecked>(table, theirs, found));
    let own = if theirs.is_empty() {
        T::default()
    } else {
        de::read::<T>(table, ours, found)
    };
    added_to_defaults(table, &mut cfg, &mut found.unreadable);
    (cfg, own)
}

/// Every key the reader knows at the places `table` has (the example file's test proves the
/// file shows each one).
#[cfg(test)]
pub(super) fn asked_keys(table: &Table) -> Vec<String> {
    let mut found = Found::default();
    let _ = read::<()>(table, &mut found);
    found.asked
}

/// What a file adds to the defaults rather than replaces: the rate-limit policies (a policy
/// of a default's name changes only the keys it sets; a new one needs `limit` and `period`),
/// the admission queue timeouts; and the keys a health check needs.
fn added_to_defaults(table: &Table, c: &mut GarrisonConfig, issues: &mut Vec<ConfigIssue>) {
    let written =
        |section: &str, key: &str| -> Option<&Table> { table.get(section)?.get(key)?.as_table() };
    let defaults = RateLimitConfig::default().policies;
    let policies = written("ratelimit", "policies");
    for (name, t) in policies.into_iter().flatten() {
        let Some(t) = t.as_table() else { continue };
        match (defaults.get(name), c.ratelimit.policies.get_mut(name)) {
            (Some(base), Some(p)) => {
                if !t.contains_key("limit") {
                    p.limit = base.limit;
                }
                if !t.contains_key("period") {
                    p.period = base.period;
                }
            }
            (None, _) => {
                for required in ["limit", "period"] {
                    if !t.contains_key(required) {
                        issues.push(ConfigIssue {
                            path: format!("ratelimit.policies.{}.{required}", quote(name)),
                            message: "required for a new policy".into(),
                        });
                    }
                }
            }
            (Some(_), None) => {}
        }
    }
    for (name, p) in defaults {
        c.ratelimit.policies.entry(name).or_insert(p);
    }
    for (class, d) in AdmissionConfig::default().queue_timeouts {
        c.admission.queue_timeouts.entry(class).or_insert(d);
    }
    if let Some((in_flight, queue, wait)) = admission_profile(&c.admission.profile) {
        // the profile's values replace the defaults, not what the file says
        let admission = table.get("admission").and_then(Value::as_table);
        let set = |key: &str| admission.is_some_and(|t| t.contains_key(key));
        let a = &mut c.admission;
        if !set("max_in_flight") {
            a.max_in_flight = in_flight;
        }
        if !set("max_queue") {
            a.max_queue = queue;
        }
        let timeouts = written("admission", "queue_timeouts");
        for (class, d) in &mut a.queue_timeouts {
            if !timeouts.is_some_and(|t| t.contains_key(class)) {
                *d = wait;
            }
        }
    }
    for (name, t) in written("health", "checks").into_iter().flatten() {
        let Some(t) = t.as_table() else { continue };
        let path = format!("health.checks.{}", quote(name));
        if !t.contains_key("type") {
            let types = de::variants_of::<CheckType>();
            issues.push(ConfigIssue {
                path: format!("{path}.type"),
                message: format!("required: one of {}", de::one_of(types)),
            });
        }
        if !t.contains_key("url") {
            issues.push(ConfigIssue {
                path: format!("{path}.url"),
                message: "required".into(),
            });
        }
    }
}

/// `[health.status_codes]`: `pass`, `warn` and `fail`, each unset one keeping its default.
pub(super) fn status_codes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<[u16; 3], D::Error> {
    #[derive(Deserialize)]
    #[serde(default)]
    struct Codes {
        pass: u16,
        warn: u16,
        fail: u16,
    }
    impl Default for Codes {
        fn default() -> Self {
            let [pass, warn, fail] = HealthConfig::default().status_codes;
            Self { pass, warn, fail }
        }
    }
    let c = Codes::deserialize(d)?;
    Ok([c.pass, c.warn, c.fail])
}

/// Whether `issues` has a problem with `path` already, or with a part of it (an element of an
/// array, a key of a table).
fn covered(issues: &[ConfigIssue], path: &str) -> bool {
    issues.iter().any(|i| {
        i.path
            .strip_prefix(path)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    })
}

fn push(issues: &RefCell<Vec<ConfigIssue>>, path: String, message: impl Into<String>) {
    issues.borrow_mut().push(ConfigIssue {
        path,
        message: message.into(),
    });
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

pub(super) fn validate(c: &GarrisonConfig, out: &mut Vec<ConfigIssue>) {
    let issues = RefCell::new(std::mem::take(out));
    // one problem per key: a key that could not be read is not judged again
    let err = |path: String, msg: String| {
        let known = covered(&issues.borrow(), &path);
        if !known {
            push(&issues, path, msg);
        }
    };
    let pattern = |path: String, p: &str| {
        if let Err(e) = garrison_core::RouteTable::from_patterns([p]) {
            err(path, e.to_string());
        }
    };

    for (i, p) in c.service.routes.iter().enumerate() {
        pattern(format!("service.routes[{i}]"), p);
    }

    // trace
    let t = &c.trace;
    if !(0.0..=1.0).contains(&t.ratio) {
        err("trace.ratio".into(), "must be between 0 and 1".into());
    }
    if http::HeaderName::try_from(t.request_id_header.as_str()).is_err() {
        err(
            "trace.request_id_header".into(),
            format!("`{}` is not a header name", t.request_id_header),
        );
    }
    for (i, h) in t.redact_headers.iter().enumerate() {
        if http::HeaderName::try_from(h.as_str()).is_err() {
            err(
                format!("trace.redact_headers[{i}]"),
                format!("`{h}` is not a header name"),
            );
        }
    }
    for (i, p) in t.redact_patterns.iter().enumerate() {
        if let Err(e) = p.parse::<garrison_trace::PiiPattern>() {
            err(format!("trace.redact_patterns[{i}]"), e);
        }
    }
    if t.queue == 0 {
        err("trace.queue".into(), "must be > 0".into());
    }
    if t.batch == 0 {
        err("trace.batch".into(), "must be > 0".into());
    }
    if !t.otlp.endpoint.is_empty() {
        if !cfg!(feature = "otlp") {
            err(
                "trace.otlp.endpoint".into(),
                "span export needs the `otlp` feature of the garrison crate".into(),
            );
        } else if !(t.otlp.endpoint.starts_with("http://")
            || t.otlp.endpoint.starts_with("https://"))
        {
            err(
                "trace.otlp.endpoint".into(),
                format!("`{}` is not an http:// or https:// URL", t.otlp.endpoint),
            );
        }
    }

    // metrics and the routes answered before the limiter
    let m = &c.metrics;
    if m.duration_buckets.is_empty() {
        err(
            "metrics.duration_buckets".into(),
            "needs at least one bound".into(),
        );
    } else if m
        .duration_buckets
        .iter()
        .any(|b| !b.is_finite() || *b <= 0.0)
        || m.duration_buckets.windows(2).any(|w| w[0] >= w[1])
    {
        err(
            "metrics.duration_buckets".into(),
            "bounds must be positive, finite and strictly ascending".into(),
        );
    }
    if m.max_series == 0 {
        err("metrics.max_series".into(), "must be > 0".into());
    }
    let networks = |key: &str, list: &[String]| {
        for (i, net) in list.iter().enumerate() {
            if let Err(e) = net.parse::<garrison_core::IpNet>() {
                err(format!("{key}[{i}]"), e.to_string());
            }
        }
    };
    networks("metrics.allow_from", &m.allow_from);
    let mut own_paths = Vec::new();
    if !m.path.is_empty() {
        own_paths.push(("metrics.path", &m.path));
    }
    let h = &c.health;
    own_paths.push(("health.live_path", &h.live_path));
    own_paths.push(("health.ready_path", &h.ready_path));
    own_paths.push(("health.deep_path", &h.deep_path));
    for (i, (key, p)) in own_paths.iter().enumerate() {
        if !p.starts_with('/') {
            err((*key).into(), format!("`{p}` must start with `/`"));
        } else if let Some((other, _)) = own_paths[..i].iter().find(|(_, q)| q == p) {
            err((*key).into(), format!("`{p}` is already {other}"));
        }
    }

    networks("health.details_from", &h.details_from);
    for (status, code) in ["pass", "warn", "fail"].iter().zip(h.status_codes) {
        if !(200..=599).contains(&code) {
            err(
                format!("health.status_codes.{status}"),
                "must be between 200 and 599".into(),
            );
        }
    }

    // health checks
    for (name, check) in &h.checks {
        let path = format!("health.checks.{}", quote(name));
        if name.is_empty()
            || name.len() > 64
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            err(
                path.clone(),
                "check names are 1 to 64 letters, digits, '-', '_' or '.'".into(),
            );
        }
        let feature = match check.kind {
            CheckType::Http => None,
            CheckType::Redis => (!cfg!(feature = "redis")).then_some("redis"),
            CheckType::Postgres => (!cfg!(feature = "postgres")).then_some("postgres"),
            CheckType::Mysql => (!cfg!(feature = "mysql")).then_some("mysql"),
            CheckType::Sqlite => (!cfg!(feature = "sqlite")).then_some("sqlite"),
        };
        if let Some(f) = feature {
            err(
                format!("{path}.type"),
                format!("needs the `{f}` feature of the garrison crate"),
            );
        }
        if check.url.is_empty() {
            err(format!("{path}.url"), "must not be empty".into());
        }
        if check.timeout.is_zero() {
            err(format!("{path}.timeout"), "must be > 0".into());
        }
        if check.warn_response_time.is_zero() {
            err(format!("{path}.warn_response_time"), "must be > 0".into());
        }
        if check.interval.is_zero() {
            err(format!("{path}.interval"), "must be > 0".into());
        }
    }

    // rate limit
    let r = &c.ratelimit;
    let policy_names = || r.policies.keys().cloned().collect::<Vec<_>>().join(", ");
    if !r.default_policy.is_empty() && !r.policies.contains_key(&r.default_policy) {
        err(
            "ratelimit.default_policy".into(),
            format!(
                "no policy `{}`; defined: {}",
                r.default_policy,
                policy_names()
            ),
        );
    }
    let key_ok = |path: String, k: &KeyConfig| {
        if let KeyConfig::Header(h) = k {
            if http::HeaderName::try_from(h.as_str()).is_err() {
                err(path, format!("`{h}` is not a header name"));
            }
        }
    };
    key_ok("ratelimit.key".into(), &r.key);
    if let Err(e) = garrison_core::TrustedProxies::new(&r.trusted_proxies) {
        err("ratelimit.trusted_proxies".into(), e.to_string());
    }
    if r.max_keys == 0 {
        err("ratelimit.max_keys".into(), "must be > 0".into());
    }
    if !(1..=1_000_000).contains(&r.overflow_factor) {
        err(
            "ratelimit.overflow_factor".into(),
            "must be between 1 and 1000000".into(),
        );
    }
    if r.sweep_interval.is_zero() {
        err("ratelimit.sweep_interval".into(), "must be > 0".into());
    }
    if !(1..=128).contains(&r.ipv6_prefix) {
        err(
            "ratelimit.ipv6_prefix".into(),
            "must be between 1 and 128".into(),
        );
    }
    for (i, p) in r.exempt_routes.iter().enumerate() {
        pattern(format!("ratelimit.exempt_routes[{i}]"), p);
    }
    for (name, p) in &r.policies {
        let path = format!("ratelimit.policies.{}", quote(name));
        if p.limit == 0 {
            err(format!("{path}.limit"), "must be > 0".into());
        } else if p.limit > garrison_ratelimit::MAX_LIMIT {
            err(
                format!("{path}.limit"),
                format!("at most {}", garrison_ratelimit::MAX_LIMIT),
            );
        }
        if p.period.is_zero() {
            err(format!("{path}.period"), "must be > 0".into());
        }
        if p.burst == Some(0) {
            err(format!("{path}.burst"), "must be > 0".into());
        } else if p.limit > 0 && !p.period.is_zero() {
            let mut policy = garrison_ratelimit::Policy::new(name.as_str(), p.limit, p.period);
            if let Some(b) = p.burst {
                policy = policy.burst(b);
            }
            if let Err(e) = policy.validate() {
                err(path.clone(), e.to_string());
            }
        }
        if let Some(k) = &p.key {
            key_ok(format!("{path}.key"), k);
        }
    }
    for (route, policy) in &r.routes {
        let path = format!("ratelimit.routes.{}", quote(route));
        pattern(path.clone(), route);
        if !r.policies.contains_key(policy) {
            err(
                path,
                format!("no policy `{policy}`; defined: {}", policy_names()),
            );
        }
    }
    if !r.redis.url.is_empty() && !cfg!(feature = "redis") {
        err(
            "ratelimit.redis.url".into(),
            "a shared store needs the `redis` feature of the garrison crate".into(),
        );
    }
    if r.redis.timeout.is_zero() {
        err("ratelimit.redis.timeout".into(), "must be > 0".into());
    }
    if !(r.redis.lease_fraction >= 0.0 && r.redis.lease_fraction < 1.0) {
        err(
            "ratelimit.redis.lease_fraction".into(),
            "must be at least 0 and below 1".into(),
        );
    }

    // breaker
    let b = &c.breaker;
    if b.max_breakers == 0 {
        err("breaker.max_breakers".into(), "must be > 0".into());
    }
    let profile_names = || {
        let mut names: Vec<&str> = BUILT_IN_PROFILES.to_vec();
        names.extend(b.profiles.keys().map(String::as_str));
        names.sort_unstable();
        names.dedup();
        names.join(", ")
    };
    let known = |name: &str| BUILT_IN_PROFILES.contains(&name) || b.profiles.contains_key(name);
    if !known(&b.profile) {
        err(
            "breaker.profile".into(),
            format!("no profile `{}`; defined: {}", b.profile, profile_names()),
        );
    }
    for (name, p) in &b.profiles {
        let path = format!("breaker.profiles.{}", quote(name));
        if let Some(base) = &p.base {
            if !BUILT_IN_PROFILES.contains(&base.as_str()) {
                err(
                    format!("{path}.base"),
                    format!(
                        "no built-in profile `{base}`; built in: {}",
                        BUILT_IN_PROFILES.join(", ")
                    ),
                );
                continue;
            }
        }
        if let Err(e) = b.profile_config(name) {
            let text = e.to_string();
            let detail = text.strip_prefix("breaker.").unwrap_or(&text);
            let (key, reason) = detail.split_once(": ").unwrap_or(("", detail));
            err(join(&path, profile_key(key)), reason.to_owned());
        }
    }
    if !b.per_route && !b.routes.is_empty() {
        err(
            "breaker.routes".into(),
            "route profiles need `per_route = true`".into(),
        );
    }
    for (route, profile) in &b.routes {
        let path = format!("breaker.routes.{}", quote(route));
        pattern(path.clone(), route);
        if !known(profile) {
            err(
                path,
                format!("no profile `{profile}`; defined: {}", profile_names()),
            );
        }
    }

    // admission
    let a = &c.admission;
    let priority = |path: String, name: &str| {
        if let Err(e) = name.parse::<garrison_admission::Priority>() {
            err(path, e.to_string());
        }
    };
    priority("admission.default_priority".into(), &a.default_priority);
    if http::HeaderName::try_from(a.header.as_str()).is_err() {
        err(
            "admission.header".into(),
            format!("`{}` is not a header name", a.header),
        );
    }
    for (i, cidr) in a.trusted_callers.iter().enumerate() {
        if let Err(e) = cidr.parse::<garrison_core::IpNet>() {
            err(format!("admission.trusted_callers[{i}]"), e.to_string());
        }
    }
    if !a.profile.is_empty() && admission_profile(&a.profile).is_none() {
        err(
            "admission.profile".into(),
            format!(
                "no admission profile `{}`; built in: {}",
                a.profile,
                AdmissionConfig::PROFILES.join(", ")
            ),
        );
    }
    if a.max_in_flight == 0 {
        err("admission.max_in_flight".into(), "must be > 0".into());
    }
    let classes = || {
        let mut names: Vec<&str> = garrison_admission::Priority::ALL
            .iter()
            .map(|p| p.as_str())
            .collect();
        names.sort_unstable();
        names.join(", ")
    };
    for (name, d) in &a.queue_timeouts {
        if name.parse::<garrison_admission::Priority>().is_err() {
            err(
                format!("admission.queue_timeouts.{}", quote(name)),
                format!("unknown key; expected one of: {}", classes()),
            );
        } else if d.is_zero() {
            err(
                format!("admission.queue_timeouts.{name}"),
                "must be > 0".into(),
            );
        }
    }
    if a.retry_after.is_zero() {
        err("admission.retry_after".into(), "must be > 0".into());
    }
    for (route, p) in &a.routes {
        let path = format!("admission.routes.{}", quote(route));
        pattern(path.clone(), route);
        priority(path, p);
    }
    let ad = &a.adaptive;
    if ad.min == 0 {
        err("admission.adaptive.min".into(), "must be > 0".into());
    }
    if ad.max == 0 {
        err("admission.adaptive.max".into(), "must be > 0".into());
    }
    if ad.min > ad.max {
        err(
            "admission.adaptive.min".into(),
            "must be at most max".into(),
        );
    }
    if !(ad.backoff > 0.0 && ad.backoff < 1.0) {
        err(
            "admission.adaptive.backoff".into(),
            "must be between 0 and 1, both excluded".into(),
        );
    }
    if ad.latency_target.is_zero() {
        err(
            "admission.adaptive.latency_target".into(),
            "must be > 0".into(),
        );
    }

    // ops
    let o = &c.ops;
    let share = |path: &str, v: f64, upper_included: bool| {
        let ok = v > 0.0 && (v < 1.0 || (upper_included && v == 1.0));
        if !ok {
            let range = if upper_included {
                "above 0 and at most 1"
            } else {
                "between 0 and 1, both excluded"
            };
            err(path.into(), format!("must be {range}"));
        }
    };
    // buckets already refused are not judged again through the latency thresholds
    let buckets_ok = !issues
        .borrow()
        .iter()
        .any(|i| i.path == "metrics.duration_buckets");
    let bucket = |path: String, d: Duration| {
        let secs = d.as_secs_f64();
        if !buckets_ok {
            return;
        }
        if !c
            .metrics
            .duration_buckets
            .iter()
            .any(|b| (b - secs).abs() < 1e-9)
        {
            err(
                path,
                format!(
                    "must be one of [metrics] duration_buckets (seconds: {}): a latency SLO counts the requests under a bucket bound",
                    c.metrics.duration_buckets.iter().map(f64::to_string).collect::<Vec<_>>().join(", ")
                ),
            );
        }
    };
    share(
        "ops.availability_objective",
        o.availability_objective,
        false,
    );
    share("ops.latency_objective", o.latency_objective, false);
    bucket("ops.latency_threshold".into(), o.latency_threshold);
    share("ops.error_rate", o.error_rate, true);
    share("ops.pool_utilisation", o.pool_utilisation, false);
    share("ops.ratelimit_rejections", o.ratelimit_rejections, true);
    if o.breaker_openings_per_hour == 0 {
        err("ops.breaker_openings_per_hour".into(), "must be > 0".into());
    }
    if !(o.min_request_rate >= 0.0 && o.min_request_rate.is_finite()) {
        err(
            "ops.min_request_rate".into(),
            "must be a number of requests per second, 0 or more".into(),
        );
    }
    if o.p95_threshold.is_zero() {
        err("ops.p95_threshold".into(), "must be > 0".into());
    }
    if let Err(e) = super::check_selector(&o.selector) {
        err("ops.selector".into(), e);
    }
    if o.runbook_url.is_empty() {
        err("ops.runbook_url".into(), "must not be empty".into());
    }
    for (route, r) in &o.routes {
        let path = format!("ops.routes.{}", quote(route));
        pattern(path.clone(), route);
        if let Some(v) = r.availability_objective {
            share(&format!("{path}.availability_objective"), v, false);
        }
        if let Some(v) = r.latency_objective {
            share(&format!("{path}.latency_objective"), v, false);
        }
        if let Some(d) = r.latency_threshold {
            bucket(format!("{path}.latency_threshold"), d);
        }
    }
    *out = issues.into_inner();
}

/// The built-in breaker profiles.
/// The names of the breaker profiles every configuration has.
pub const BUILT_IN_PROFILES: &[&str] = &["analytics", "batch", "critical", "database", "default"];

/// The configuration key of a garrison-breaker setting's name.
fn profile_key(setting: &str) -> &str {
    match setting {
        "failure_rate_threshold" => "failure_rate",
        "slow_call_rate_threshold" => "slow_call_rate",
        other => other,
    }
}
