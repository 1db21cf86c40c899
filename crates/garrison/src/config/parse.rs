//! Reading a [`GarrisonConfig`] from a TOML table, collecting every problem with its path.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::Duration;

use toml::{Table, Value};

use super::*;

type Issues = RefCell<Vec<ConfigIssue>>;

/// What reading one table collects: the problems, and every key asked for.
#[derive(Default)]
pub(super) struct Ctx {
    issues: Issues,
    asked: RefCell<Vec<String>>,
}

/// One TOML table being read, for sections of your own beside Garrison's (see
/// [`GarrisonConfig::from_table_with`]): typed getters that keep the default when a key is
/// absent, record every problem with its path, and remember the keys they were asked for so
/// that [`Section::finish`] can name the keys nobody knows.
pub struct Section<'a> {
    table: &'a Table,
    path: String,
    ctx: &'a Ctx,
    issues: &'a Issues,
    known: Vec<&'static str>,
}

impl std::fmt::Debug for Section<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Section")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl<'a> Section<'a> {
    /// A table found under `parent` (an entry of [`named`](Self::named), say), read at
    /// `path`; its problems are reported with its parent's.
    pub fn nested(table: &'a Table, path: String, parent: &Section<'a>) -> Self {
        Self::new(table, path, parent.ctx)
    }

    pub(super) fn new(table: &'a Table, path: String, ctx: &'a Ctx) -> Self {
        Self {
            table,
            path,
            ctx,
            issues: &ctx.issues,
            known: Vec::new(),
        }
    }

    /// The path of `key` in this table, e.g. `gateway.routes.api.prefix`.
    pub fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Records a problem with `key` of this table.
    pub fn err(&self, key: &str, message: impl Into<String>) {
        push(self.issues, self.at(key), message);
    }

    /// The raw value of `key` (remembered as a known key).
    pub fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.ctx.asked.borrow_mut().push(self.at(key));
        self.table.get(key)
    }

    /// Records that `key` holds `found` where `expected` was expected.
    pub fn wrong(&self, key: &str, expected: &str, found: &Value) {
        self.err(
            key,
            format!("expected {expected}, found {}", found.type_str()),
        );
    }

    /// `key` as a boolean into `target`.
    pub fn bool(&mut self, key: &'static str, target: &mut bool) {
        match self.get(key) {
            Some(Value::Boolean(b)) => *target = *b,
            Some(v) => self.wrong(key, "true or false", v),
            None => {}
        }
    }

    /// `key` as a string into `target`.
    pub fn string(&mut self, key: &'static str, target: &mut String) {
        match self.get(key) {
            Some(Value::String(s)) => s.clone_into(target),
            Some(v) => self.wrong(key, "a string", v),
            None => {}
        }
    }

    /// `key` as an integer between `min` and `max`.
    pub fn integer(&mut self, key: &'static str, min: i64, max: i64) -> Option<i64> {
        match self.get(key)? {
            Value::Integer(i) if (min..=max).contains(i) => Some(*i),
            Value::Integer(_) if min == 1 && max == i64::MAX => {
                self.err(key, "must be > 0");
                None
            }
            Value::Integer(_) => {
                self.err(key, format!("must be between {min} and {max}"));
                None
            }
            v => {
                self.wrong(key, "an integer", v);
                None
            }
        }
    }

    /// `key` as an integer of at least `min` into `target`.
    pub fn usize(&mut self, key: &'static str, min: i64, target: &mut usize) {
        if let Some(i) = self.integer(key, min, i64::MAX) {
            *target = i as usize;
        }
    }

    /// A `u32` that may be 0 here: ranges are checked by `validate`, which also sees
    /// configurations built in code.
    /// `key` as a `u32` (0 allowed).
    pub fn u32(&mut self, key: &'static str) -> Option<u32> {
        self.integer(key, 0, u32::MAX.into()).map(|i| i as u32)
    }

    /// `key` as a number.
    pub fn float(&mut self, key: &'static str) -> Option<f64> {
        match self.get(key)? {
            Value::Float(f) => Some(*f),
            Value::Integer(i) => Some(*i as f64),
            v => {
                self.wrong(key, "a number", v);
                None
            }
        }
    }

    /// `key` as a duration string (`"250ms"`, `"15m"`).
    pub fn duration(&mut self, key: &'static str) -> Option<Duration> {
        match self.get(key)? {
            Value::String(s) => match parse_duration(s) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.err(key, e);
                    None
                }
            },
            v => {
                self.wrong(key, "a duration such as \"250ms\" or \"15m\"", v);
                None
            }
        }
    }

    /// `key` as a duration string into `target`.
    pub fn set_duration(&mut self, key: &'static str, target: &mut Duration) {
        if let Some(d) = self.duration(key) {
            *target = d;
        }
    }

    /// `key` as an array of strings into `target`.
    pub fn strings(&mut self, key: &'static str, target: &mut Vec<String>) {
        match self.get(key) {
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::String(s) => out.push(s.clone()),
                        v => self.wrong(&format!("{key}[{i}]"), "a string", v),
                    }
                }
                *target = out;
            }
            Some(v) => self.wrong(key, "an array of strings", v),
            None => {}
        }
    }

    /// `key` as an array of numbers into `target`.
    pub fn floats(&mut self, key: &'static str, target: &mut Vec<f64>) {
        match self.get(key) {
            Some(Value::Array(items)) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    match item {
                        Value::Float(f) => out.push(*f),
                        Value::Integer(n) => out.push(*n as f64),
                        v => self.wrong(&format!("{key}[{i}]"), "a number", v),
                    }
                }
                *target = out;
            }
            Some(v) => self.wrong(key, "an array of numbers", v),
            None => {}
        }
    }

    /// `key` as one of the named `options` into `target`.
    pub fn choice<T: Copy>(&mut self, key: &'static str, options: &[(&str, T)], target: &mut T) {
        match self.get(key) {
            Some(Value::String(s)) => match options.iter().find(|(name, _)| name == s) {
                Some((_, v)) => *target = *v,
                None => self.err(key, format!("`{s}` is not one of {}", one_of(options))),
            },
            Some(v) => self.wrong(key, &format!("one of {}", one_of(options)), v),
            None => {}
        }
    }

    /// The sub-table `key`; call [`finish`](Self::finish) on it when read.
    pub fn table(&mut self, key: &'static str) -> Option<Section<'a>> {
        match self.get(key)? {
            Value::Table(t) => Some(Section::new(t, self.at(key), self.ctx)),
            v => {
                self.wrong(key, "a table", v);
                None
            }
        }
    }

    /// The entries of a table whose keys are names chosen by the user.
    /// The entries of the table `key`, whose keys are names the user chose.
    pub fn named(&mut self, key: &'static str) -> Vec<(&'a str, &'a Value)> {
        match self.get(key) {
            Some(Value::Table(t)) => t.iter().map(|(k, v)| (k.as_str(), v)).collect(),
            Some(v) => {
                self.wrong(key, "a table", v);
                Vec::new()
            }
            None => Vec::new(),
        }
    }

    /// A table of names to strings, e.g. `[ratelimit.routes]`.
    /// The table `key` of names to strings into `target`.
    pub fn string_map(&mut self, key: &'static str, target: &mut BTreeMap<String, String>) {
        for (name, v) in self.named(key) {
            match v {
                Value::String(s) => {
                    target.insert(name.to_owned(), s.clone());
                }
                v => self.wrong(&format!("{key}.{}", quote(name)), "a string", v),
            }
        }
    }

    /// Records every key of this table that no getter asked for.
    pub fn finish(self) {
        for key in self.table.keys() {
            if !self.known.contains(&key.as_str()) {
                let mut known = self.known.clone();
                known.sort_unstable();
                self.err(
                    &quote(key),
                    format!("unknown key; expected one of: {}", known.join(", ")),
                );
            }
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// A key as TOML writes it in a path: bare when it can be, quoted otherwise (route
/// patterns).
fn quote(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn one_of<T>(options: &[(&str, T)]) -> String {
    let names: Vec<String> = options.iter().map(|(n, _)| format!("\"{n}\"")).collect();
    names.join(", ")
}

fn push(issues: &Issues, path: String, message: impl Into<String>) {
    issues.borrow_mut().push(ConfigIssue {
        path,
        message: message.into(),
    });
}

pub(super) fn config(table: &Table) -> Result<GarrisonConfig, ConfigError> {
    read(table, &Ctx::default(), |_| {}, |_, _, _| {}).map(|(c, ())| c)
}

pub(super) fn config_with<T>(
    table: &Table,
    extra: impl FnOnce(&mut Section<'_>) -> T,
    check: impl FnOnce(&GarrisonConfig, &T, &mut Vec<ConfigIssue>),
) -> Result<(GarrisonConfig, T), ConfigError> {
    read(table, &Ctx::default(), extra, check)
}

/// Every key the reader asks for when it reads `table` (the example file's test proves the
/// file shows each one).
#[cfg(test)]
pub(super) fn asked_keys(table: &Table) -> Vec<String> {
    let ctx = Ctx::default();
    let _ = read(table, &ctx, |_| {}, |_, _, _| {});
    ctx.asked.into_inner()
}

fn read<T>(
    table: &Table,
    ctx: &Ctx,
    extra: impl FnOnce(&mut Section<'_>) -> T,
    check: impl FnOnce(&GarrisonConfig, &T, &mut Vec<ConfigIssue>),
) -> Result<(GarrisonConfig, T), ConfigError> {
    let mut cfg = GarrisonConfig::default();
    let mut root = Section::new(table, String::new(), ctx);
    if let Some(mut s) = root.table("service") {
        service(&mut s, &mut cfg.service);
        s.finish();
    }
    if let Some(mut s) = root.table("trace") {
        trace(&mut s, &mut cfg.trace);
        s.finish();
    }
    if let Some(mut s) = root.table("metrics") {
        metrics(&mut s, &mut cfg.metrics);
        s.finish();
    }
    if let Some(mut s) = root.table("health") {
        health(&mut s, &mut cfg.health);
        s.finish();
    }
    if let Some(mut s) = root.table("ratelimit") {
        ratelimit(&mut s, &mut cfg.ratelimit);
        s.finish();
    }
    if let Some(mut s) = root.table("admission") {
        admission(&mut s, &mut cfg.admission);
        s.finish();
    }
    if let Some(mut s) = root.table("breaker") {
        breaker(&mut s, &mut cfg.breaker);
        s.finish();
    }
    if let Some(mut s) = root.table("ops") {
        ops(&mut s, &mut cfg.ops);
        s.finish();
    }
    let own = extra(&mut root);
    root.finish();
    let mut found = ctx.issues.take();
    // keys that failed to read keep their defaults, so the other values can still be judged
    validate(&cfg, &mut found);
    check(&cfg, &own, &mut found);
    if found.is_empty() {
        Ok((cfg, own))
    } else {
        Err(ConfigError::new(found))
    }
}

fn service(s: &mut Section<'_>, c: &mut ServiceConfig) {
    s.string("name", &mut c.name);
    s.string("version", &mut c.version);
    s.strings("routes", &mut c.routes);
}

const SAMPLERS: &[(&str, SamplerKind)] = &[
    ("ratio", SamplerKind::Ratio),
    ("always", SamplerKind::Always),
    ("never", SamplerKind::Never),
    ("error_biased", SamplerKind::ErrorBiased),
];

fn trace(s: &mut Section<'_>, c: &mut TraceConfig) {
    s.bool("enabled", &mut c.enabled);
    s.choice("sampler", SAMPLERS, &mut c.sampler);
    if let Some(r) = s.float("ratio") {
        c.ratio = r;
    }
    s.set_duration("slow", &mut c.slow);
    s.string("request_id_header", &mut c.request_id_header);
    s.bool("trace_response", &mut c.trace_response);
    s.bool("access_log", &mut c.access_log);
    s.bool("tracing_span", &mut c.tracing_span);
    s.bool("otel_context", &mut c.otel_context);
    s.choice(
        "sampled_from",
        &[
            ("any", SampledFrom::Any),
            ("trusted_proxies", SampledFrom::TrustedProxies),
        ],
        &mut c.sampled_from,
    );
    s.strings("redact_headers", &mut c.redact_headers);
    s.strings("redact_params", &mut c.redact_params);
    s.usize("queue", 1, &mut c.queue);
    s.usize("batch", 1, &mut c.batch);
    s.set_duration("export_timeout", &mut c.export_timeout);
    s.set_duration("flush_every", &mut c.flush_every);
    if let Some(mut o) = s.table("otlp") {
        o.string("endpoint", &mut c.otlp.endpoint);
        o.choice(
            "protocol",
            &[
                ("grpc", OtlpProtocol::Grpc),
                ("http/protobuf", OtlpProtocol::HttpProtobuf),
            ],
            &mut c.otlp.protocol,
        );
        o.set_duration("timeout", &mut c.otlp.timeout);
        o.string_map("headers", &mut c.otlp.headers);
        o.finish();
    }
}

fn metrics(s: &mut Section<'_>, c: &mut MetricsConfig) {
    s.bool("enabled", &mut c.enabled);
    s.string("path", &mut c.path);
    s.floats("duration_buckets", &mut c.duration_buckets);
    s.usize("max_series", 1, &mut c.max_series);
    s.bool("exemplars", &mut c.exemplars);
    s.bool("process_metrics", &mut c.process_metrics);
    s.bool("runtime_metrics", &mut c.runtime_metrics);
    s.string("token", &mut c.token);
    networks(s, "allow_from", &mut c.allow_from);
}

/// `key` as a list of networks (CIDR), each one checked.
fn networks(s: &mut Section<'_>, key: &'static str, target: &mut Vec<String>) {
    s.strings(key, target);
    for (i, net) in target.iter().enumerate() {
        if let Err(e) = net.parse::<garrison_core::IpNet>() {
            s.err(&format!("{key}[{i}]"), e.to_string());
        }
    }
}

const CHECK_TYPES: &[(&str, CheckType)] = &[
    ("http", CheckType::Http),
    ("redis", CheckType::Redis),
    ("postgres", CheckType::Postgres),
    ("mysql", CheckType::Mysql),
    ("sqlite", CheckType::Sqlite),
];

fn health(s: &mut Section<'_>, c: &mut HealthConfig) {
    s.bool("enabled", &mut c.enabled);
    s.string("live_path", &mut c.live_path);
    s.string("ready_path", &mut c.ready_path);
    s.string("deep_path", &mut c.deep_path);
    s.string("token", &mut c.token);
    s.choice(
        "details",
        &[
            ("token", DetailsMode::Token),
            ("always", DetailsMode::Always),
            ("never", DetailsMode::Never),
        ],
        &mut c.details,
    );
    s.bool("breakers", &mut c.breakers);
    s.bool("breakers_verbose", &mut c.breakers_verbose);
    networks(s, "details_from", &mut c.details_from);
    s.bool("process", &mut c.process);
    s.choice(
        "status_names",
        &[
            ("draft", StatusNamesMode::Draft),
            ("descriptive", StatusNamesMode::Descriptive),
        ],
        &mut c.status_names,
    );
    if let Some(mut codes) = s.table("status_codes") {
        for (i, key) in ["pass", "warn", "fail"].into_iter().enumerate() {
            if let Some(code) = codes.integer(key, 200, 599) {
                c.status_codes[i] = code as u16;
            }
        }
        codes.finish();
    }
    for (name, v) in s.named("checks") {
        let path = join(&s.at("checks"), &quote(name));
        let Value::Table(t) = v else {
            push(
                s.issues,
                path,
                format!("expected a table, found {}", v.type_str()),
            );
            continue;
        };
        let mut cs = Section::new(t, path, s.ctx);
        let mut kind = None;
        match cs.get("type") {
            Some(Value::String(k)) => match CHECK_TYPES.iter().find(|(n, _)| n == k) {
                Some((_, t)) => kind = Some(*t),
                None => cs.err(
                    "type",
                    format!("`{k}` is not one of {}", one_of(CHECK_TYPES)),
                ),
            },
            Some(v) => cs.wrong("type", &format!("one of {}", one_of(CHECK_TYPES)), v),
            None => cs.err("type", format!("required: one of {}", one_of(CHECK_TYPES))),
        }
        let mut check = CheckConfig {
            kind: kind.unwrap_or(CheckType::Http),
            url: String::new(),
            probe: ProbeKind::Readiness,
            critical: true,
            timeout: garrison_health::DEFAULT_TIMEOUT,
            interval: garrison_health::DEFAULT_INTERVAL,
            warn_response_time: Duration::from_secs(5),
        };
        if cs.table.get("url").is_none() {
            cs.err("url", "required");
        }
        cs.string("url", &mut check.url);
        cs.choice(
            "probe",
            &[
                ("readiness", ProbeKind::Readiness),
                ("liveness", ProbeKind::Liveness),
                ("both", ProbeKind::Both),
                ("deep", ProbeKind::Deep),
            ],
            &mut check.probe,
        );
        cs.bool("critical", &mut check.critical);
        cs.set_duration("timeout", &mut check.timeout);
        cs.set_duration("interval", &mut check.interval);
        cs.set_duration("warn_response_time", &mut check.warn_response_time);
        cs.finish();
        c.checks.insert(name.to_owned(), check);
    }
}

fn key_config(s: &Section<'_>, key: &str, v: &Value) -> Option<KeyConfig> {
    match v {
        Value::String(k) => match k.as_str() {
            "ip" => Some(KeyConfig::Ip),
            "global" => Some(KeyConfig::Global),
            other => match other.strip_prefix("header:") {
                Some(h) => Some(KeyConfig::Header(h.trim().to_owned())),
                None => {
                    s.err(
                        key,
                        format!("`{other}` is not one of \"ip\", \"global\", \"header:<name>\""),
                    );
                    None
                }
            },
        },
        v => {
            s.wrong(key, "\"ip\", \"global\" or \"header:<name>\"", v);
            None
        }
    }
}

fn ratelimit(s: &mut Section<'_>, c: &mut RateLimitConfig) {
    s.bool("enabled", &mut c.enabled);
    s.string("default_policy", &mut c.default_policy);
    if let Some(v) = s.get("key") {
        if let Some(k) = key_config(s, "key", v) {
            c.key = k;
        }
    }
    s.strings("trusted_proxies", &mut c.trusted_proxies);
    s.choice(
        "headers",
        &[
            ("all", HeadersMode::All),
            ("ietf", HeadersMode::Ietf),
            ("legacy", HeadersMode::Legacy),
            ("none", HeadersMode::None),
        ],
        &mut c.headers,
    );
    s.usize("max_keys", 1, &mut c.max_keys);
    if let Some(n) = s.integer("overflow_factor", 1, 1_000_000) {
        c.overflow_factor = n as u32;
    }
    s.set_duration("sweep_interval", &mut c.sweep_interval);
    if let Some(p) = s.integer("ipv6_prefix", 1, 128) {
        c.ipv6_prefix = p as u8;
    }
    s.strings("exempt_routes", &mut c.exempt_routes);
    s.strings("exempt_keys", &mut c.exempt_keys);
    for (name, v) in s.named("policies") {
        let path = join(&s.at("policies"), &quote(name));
        let Value::Table(t) = v else {
            push(
                s.issues,
                path,
                format!("expected a table, found {}", v.type_str()),
            );
            continue;
        };
        let mut ps = Section::new(t, path, s.ctx);
        let base = c.policies.get(name).cloned();
        if base.is_none() {
            for required in ["limit", "period"] {
                if !t.contains_key(required) {
                    ps.err(required, "required for a new policy");
                }
            }
        }
        let mut p = base.unwrap_or(PolicyConfig::new(0, Duration::ZERO));
        if let Some(limit) = ps.u32("limit") {
            p.limit = limit;
        }
        if let Some(period) = ps.duration("period") {
            p.period = period;
        }
        if let Some(burst) = ps.u32("burst") {
            p.burst = Some(burst);
        }
        if let Some(v) = ps.get("key") {
            p.key = key_config(&ps, "key", v);
        }
        ps.finish();
        c.policies.insert(name.to_owned(), p);
    }
    s.string_map("routes", &mut c.routes);
    if let Some(mut r) = s.table("redis") {
        r.string("url", &mut c.redis.url);
        r.set_duration("timeout", &mut c.redis.timeout);
        r.set_duration("retry_interval", &mut c.redis.retry_interval);
        r.choice(
            "fail_mode",
            &[
                ("open", FailModeConfig::Open),
                ("closed", FailModeConfig::Closed),
            ],
            &mut c.redis.fail_mode,
        );
        r.string("key_prefix", &mut c.redis.key_prefix);
        if let Some(f) = r.float("lease_fraction") {
            c.redis.lease_fraction = f;
        }
        r.finish();
    }
}

fn breaker(s: &mut Section<'_>, c: &mut BreakerSection) {
    s.bool("enabled", &mut c.enabled);
    s.string("name", &mut c.name);
    s.bool("per_route", &mut c.per_route);
    s.usize("max_breakers", 1, &mut c.max_breakers);
    s.string("profile", &mut c.profile);
    for (name, v) in s.named("profiles") {
        let path = join(&s.at("profiles"), &quote(name));
        let Value::Table(t) = v else {
            push(
                s.issues,
                path,
                format!("expected a table, found {}", v.type_str()),
            );
            continue;
        };
        let mut ps = Section::new(t, path, s.ctx);
        let mut p = ProfileConfig::default();
        if let Some(Value::String(b)) = ps.get("base") {
            p.base = Some(b.clone());
        } else if let Some(v) = t.get("base") {
            ps.wrong("base", "a profile name", v);
        }
        match ps.get("window") {
            Some(Value::String(w)) => match w.trim().strip_suffix("calls") {
                Some(n) => match n.trim().parse::<u32>() {
                    Ok(n) => p.window = Some(WindowConfig::Calls(n)),
                    Err(_) => ps.err("window", format!("`{w}`: expected \"<n> calls\"")),
                },
                None => match parse_duration(w) {
                    Ok(d) => p.window = Some(WindowConfig::Time(d)),
                    Err(e) => ps.err("window", format!("{e}, or \"<n> calls\"")),
                },
            },
            Some(v) => ps.wrong("window", "\"<n> calls\" or a duration such as \"30s\"", v),
            None => {}
        }
        p.minimum_calls = ps.u32("minimum_calls");
        p.failure_rate = ps.float("failure_rate");
        p.slow_call_rate = ps.float("slow_call_rate");
        p.slow_call_duration = ps.duration("slow_call_duration");
        p.wait_in_open = ps.duration("wait_in_open");
        p.max_wait_in_open = ps.duration("max_wait_in_open");
        p.wait_multiplier = ps.float("wait_multiplier");
        p.half_open_calls = ps.u32("half_open_calls");
        ps.finish();
        c.profiles.insert(name.to_owned(), p);
    }
    s.string_map("routes", &mut c.routes);
}

/// The checks a configuration must pass however it was made: ranges, cross-references,
/// patterns, and features the options need.
fn admission(s: &mut Section<'_>, c: &mut AdmissionConfig) {
    s.bool("enabled", &mut c.enabled);
    s.usize("max_in_flight", 1, &mut c.max_in_flight);
    s.usize("max_queue", 0, &mut c.max_queue);
    s.set_duration("aging", &mut c.aging);
    s.set_duration("retry_after", &mut c.retry_after);
    s.string("default_priority", &mut c.default_priority);
    s.string("header", &mut c.header);
    s.strings("trusted_callers", &mut c.trusted_callers);
    s.usize("deep_queue", 0, &mut c.deep_queue);
    if let Some(mut t) = s.table("queue_timeouts") {
        for p in garrison_admission::Priority::ALL {
            if let Some(d) = t.duration(p.as_str()) {
                c.queue_timeouts.insert(p.as_str().to_owned(), d);
            }
        }
        t.finish();
    }
    s.string_map("routes", &mut c.routes);
    if let Some(mut a) = s.table("adaptive") {
        let a2 = &mut c.adaptive;
        a.bool("enabled", &mut a2.enabled);
        a.usize("min", 1, &mut a2.min);
        a.usize("max", 1, &mut a2.max);
        a.set_duration("latency_target", &mut a2.latency_target);
        if let Some(f) = a.float("backoff") {
            a2.backoff = f;
        }
        a.finish();
    }
}

fn ops(s: &mut Section<'_>, c: &mut OpsConfig) {
    s.string("selector", &mut c.selector);
    s.string("runbook_url", &mut c.runbook_url);
    let float = |s: &mut Section<'_>, key, target: &mut f64| {
        if let Some(f) = s.float(key) {
            *target = f;
        }
    };
    float(s, "availability_objective", &mut c.availability_objective);
    float(s, "latency_objective", &mut c.latency_objective);
    s.set_duration("latency_threshold", &mut c.latency_threshold);
    float(s, "error_rate", &mut c.error_rate);
    float(s, "min_request_rate", &mut c.min_request_rate);
    s.set_duration("p95_threshold", &mut c.p95_threshold);
    float(s, "pool_utilisation", &mut c.pool_utilisation);
    float(s, "ratelimit_rejections", &mut c.ratelimit_rejections);
    for (pattern, v) in s.named("routes") {
        let path = format!("routes.{}", quote(pattern));
        let Value::Table(t) = v else {
            s.wrong(&path, "a table", v);
            continue;
        };
        let mut r = Section::nested(t, s.at(&path), s);
        let route = RouteSloConfig {
            availability_objective: r.float("availability_objective"),
            latency_objective: r.float("latency_objective"),
            latency_threshold: r.duration("latency_threshold"),
        };
        r.finish();
        c.routes.insert(pattern.to_owned(), route);
    }
}

pub(super) fn validate(c: &GarrisonConfig, out: &mut Vec<ConfigIssue>) {
    let issues = RefCell::new(std::mem::take(out));
    // one problem per key: a key that could not be read is not judged again
    let err = |path: String, msg: String| {
        let known = issues.borrow().iter().any(|i| i.path == path);
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
    for (name, d) in &a.queue_timeouts {
        if d.is_zero() {
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
pub const BUILT_IN_PROFILES: &[&str] = &["batch", "critical", "database", "default"];

/// The configuration key of a garrison-breaker setting's name.
fn profile_key(setting: &str) -> &str {
    match setting {
        "failure_rate_threshold" => "failure_rate",
        "slow_call_rate_threshold" => "slow_call_rate",
        other => other,
    }
}
