//! Prometheus recording and alert rules for a Garrison service, written from its
//! [`GarrisonConfig`]: the SLO targets and thresholds of `[ops]`, the histogram buckets of
//! `[metrics]`, and the health and scrape routes of `[health]` and `[metrics]` (kept out of
//! the SLOs: a probe is not a user).
//!
//! ```
//! use garrison::GarrisonConfig;
//!
//! let config = GarrisonConfig::from_toml(r#"
//!     [ops]
//!     selector = 'job="shop"'
//!     availability_objective = 0.9995
//!
//!     [ops.routes."/api/orders/{id}"]
//!     latency_threshold = "100ms"
//! "#)?;
//! let rules = garrison::ops::rules(&config);
//! assert!(rules.contains("alert: GarrisonAvailabilityBurnRateFast"));
//! assert!(rules.contains(r#"http_route="/api/orders/{id}""#));
//! # Ok::<(), garrison::ConfigError>(())
//! ```
//!
//! The file it writes is what `garrison-gateway ops rules` prints, and what
//! `examples/ops/garrison-rules.yml` holds for the default configuration. Every alert has a
//! `severity` label (`critical` or `warning`) and a `runbook_url` annotation naming one of
//! [`ALERTS`]' runbooks.
//!
//! The SLO alerts are the multiwindow, multi-burn-rate alerts of Google's SRE workbook
//! (chapter 5) for a 30-day budget: a page when the last hour burned 2% of the budget
//! (14.4× the sustainable rate, confirmed over 5 minutes) or the last 6 hours 5% (6×,
//! confirmed over 30 minutes); a ticket when the last day burned 10% (3×, confirmed over
//! 2 hours) or the last 3 days 10% (1×, confirmed over 6 hours).

use std::fmt::Write;
use std::time::Duration;

pub use crate::config::check_selector;
use crate::config::{GarrisonConfig, OpsConfig};

/// Every alert the rules can hold, each with a runbook `docs/runbooks/<name>.md`.
pub const ALERTS: &[&str] = &[
    "GarrisonHighErrorRate",
    "GarrisonHighLatency",
    "GarrisonDbPoolSaturated",
    "GarrisonDbPoolExhausted",
    "GarrisonBreakerOpen",
    "GarrisonBreakerFlapping",
    "GarrisonHealthCheckFailing",
    "GarrisonRateLimitRejections",
    "GarrisonUpstreamEjected",
    "GarrisonHandlerPanics",
    "GarrisonAvailabilityBurnRateFast",
    "GarrisonAvailabilityBurnRateSlow",
    "GarrisonLatencyBurnRateFast",
    "GarrisonLatencyBurnRateSlow",
];

/// The windows the SLO ratios are recorded over.
const WINDOWS: &[&str] = &["5m", "30m", "1h", "2h", "6h", "1d", "3d"];

/// (long window, short window, burn rate) of the page and of the ticket.
const FAST: [(&str, &str, f64); 2] = [("1h", "5m", 14.4), ("6h", "30m", 6.0)];
const SLOW: [(&str, &str, f64); 2] = [("1d", "2h", 3.0), ("3d", "6h", 1.0)];

const COUNT: &str = "http_server_request_duration_seconds_count";
const BUCKET: &str = "http_server_request_duration_seconds_bucket";

/// The Prometheus rule file (YAML) for `config`: recording rules for per-route rates, error
/// ratios and latency quantiles, the SLO ratios over every burn-rate window, and the alerts.
pub fn rules(config: &GarrisonConfig) -> String {
    let o = &config.ops;
    let user = o.selector.trim();
    // matchers of every request series: the user's, without probes and scrapes
    let base_m = matchers(&[user, &excluded_routes(config)]);
    let base = selector(&[&base_m]);
    let user_sel = selector(&[user]);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Prometheus rules for a Garrison service, written by `garrison-gateway ops rules`\n\
         # from its configuration ([ops], [metrics], [health]); check with\n\
         # `promtool check rules`. Service SLOs: {} of requests without a 5xx, {} faster\n\
         # than {}s, over 30 days.",
        percent(o.availability_objective),
        percent(o.latency_objective),
        seconds(o.latency_threshold),
    );
    out.push_str("groups:\n");

    // per-route RED
    let mut g = Group::new(&mut out, "garrison-red");
    g.record(
        "job_route:http_server_requests:rate5m",
        &format!("sum by (job, http_route) (rate({COUNT}{base}[5m]))"),
    );
    g.record(
        "job_route:http_server_errors:rate5m",
        &format!(
            "sum by (job, http_route) (rate({COUNT}{}[5m]))",
            selector(&[&base_m, r#"http_response_status_code=~"5..""#])
        ),
    );
    g.record(
        "job_route:http_server_error_ratio:rate5m",
        "(\n  job_route:http_server_errors:rate5m\n  or job_route:http_server_requests:rate5m * 0\n)\n\
         / job_route:http_server_requests:rate5m",
    );
    for (q, name) in [(0.5, "p50"), (0.95, "p95"), (0.99, "p99")] {
        g.record(
            &format!("job_route:http_server_request_duration_seconds:{name}_5m"),
            &format!(
                "histogram_quantile({q}, sum by (job, http_route, le) (rate({BUCKET}{base}[5m])))"
            ),
        );
    }

    // SLO ratios: the service's, then each route's own
    let mut g = Group::new(g.done(), "garrison-slo");
    slo_records(&mut g, "job", &base_m, o.latency_threshold);
    for (route, r) in &o.routes {
        let route_m = matchers(&[&base_m, &format!("http_route={}", string(route))]);
        slo_records(
            &mut g,
            "job_route",
            &route_m,
            r.latency_threshold.unwrap_or(o.latency_threshold),
        );
    }

    // alerts
    let mut g = Group::new(g.done(), "garrison-alerts");
    g.alert(Alert {
        name: "GarrisonHighErrorRate",
        expr: format!(
            "job_route:http_server_error_ratio:rate5m > {}\n\
             and on (job, http_route) job_route:http_server_requests:rate5m > {}",
            number(o.error_rate),
            number(o.min_request_rate)
        ),
        for_: Some("5m"),
        severity: "critical",
        summary: "{{ $labels.job }} {{ $labels.http_route }}: {{ $value | humanizePercentage }} of requests fail",
        description: format!(
            "More than {} of the requests to this route have ended in a 5xx for 5 minutes.",
            percent(o.error_rate)
        ),
    }, o);
    g.alert(Alert {
        name: "GarrisonHighLatency",
        expr: format!(
            "job_route:http_server_request_duration_seconds:p95_5m > {}\n\
             and on (job, http_route) job_route:http_server_requests:rate5m > {}",
            seconds(o.p95_threshold),
            number(o.min_request_rate)
        ),
        for_: Some("10m"),
        severity: "warning",
        summary: "{{ $labels.job }} {{ $labels.http_route }}: p95 latency {{ $value | humanizeDuration }}",
        description: format!(
            "The 95th percentile of this route's latency has been above {}s for 10 minutes.",
            seconds(o.p95_threshold)
        ),
    }, o);
    let utilisation = format!(
        "db_client_connection_usage{}\n  / ignoring (db_client_connection_state) db_client_connection_max{user_sel}",
        selector(&[user, r#"db_client_connection_state="used""#])
    );
    g.alert(Alert {
        name: "GarrisonDbPoolSaturated",
        expr: format!("{utilisation}\n> {}", number(o.pool_utilisation)),
        for_: Some("5m"),
        severity: "warning",
        summary: "{{ $labels.instance }} pool {{ $labels.db_client_connection_pool_name }}: {{ $value | humanizePercentage }} of connections in use",
        description: format!(
            "More than {} of the pool's connections have been in use for 5 minutes; requests will soon wait for one.",
            percent(o.pool_utilisation)
        ),
    }, o);
    g.alert(Alert {
        name: "GarrisonDbPoolExhausted",
        expr: format!("{utilisation}\n>= 1"),
        for_: Some("5m"),
        severity: "critical",
        summary: "{{ $labels.instance }} pool {{ $labels.db_client_connection_pool_name }}: every connection in use",
        description: "Every connection of the pool has been in use for 5 minutes: requests wait for a connection or time out.".into(),
    }, o);
    g.alert(Alert {
        name: "GarrisonBreakerOpen",
        expr: format!(
            "max by (job, instance, breaker) (garrison_breaker_state{}) == 1",
            selector(&[user, r#"state=~"open|half_open|forced_open""#])
        ),
        for_: Some("5m"),
        severity: "critical",
        summary: "{{ $labels.instance }}: breaker {{ $labels.breaker }} not closed for 5 minutes",
        description: "The circuit breaker has been open (or probing, or forced open) for 5 minutes: its route answers 503.".into(),
    }, o);
    g.alert(Alert {
        name: "GarrisonBreakerFlapping",
        expr: format!(
            "sum by (job, instance, breaker) (increase(garrison_breaker_transitions_total{}[1h]))\n>= {}",
            selector(&[user, r#"to="open""#]),
            o.breaker_openings_per_hour
        ),
        for_: None,
        severity: "warning",
        summary: "{{ $labels.instance }}: breaker {{ $labels.breaker }} opened {{ $value | printf \"%.0f\" }} times in the last hour",
        description: format!(
            "The circuit breaker opened at least {} times in an hour: what it guards fails on and off, and its callers see bursts of 503.",
            o.breaker_openings_per_hour
        ),
    }, o);
    g.alert(Alert {
        name: "GarrisonHealthCheckFailing",
        expr: format!(
            "garrison_health_check_status{} == 1",
            selector(&[user, r#"status="fail""#])
        ),
        for_: Some("2m"),
        severity: "critical",
        summary: "{{ $labels.instance }}: health check {{ $labels.check }} fails",
        description: "A health check has reported `fail` for 2 minutes; if it is critical, the instance is out of rotation.".into(),
    }, o);
    let decisions = |extra: &str| {
        format!(
            "sum by (job, policy) (rate(garrison_ratelimit_decisions_total{}[5m]))",
            selector(&[user, extra])
        )
    };
    g.alert(Alert {
        name: "GarrisonRateLimitRejections",
        expr: format!(
            "{}\n  / {}\n> {}\nand on (job, policy) {} > {}",
            decisions(r#"decision=~"limited|unavailable""#),
            decisions(""),
            number(o.ratelimit_rejections),
            decisions(""),
            number(o.min_request_rate),
        ),
        for_: Some("10m"),
        severity: "warning",
        summary: "{{ $labels.job }} policy {{ $labels.policy }}: {{ $value | humanizePercentage }} of requests refused",
        description: format!(
            "The rate limiter has refused more than {} of this policy's requests for 10 minutes.",
            percent(o.ratelimit_rejections)
        ),
    }, o);
    g.alert(Alert {
        name: "GarrisonUpstreamEjected",
        expr: format!(
            "sum by (job, instance, upstream, address) (\n  increase(garrison_gateway_upstream_ejections_total{user_sel}[10m])\n) > 0"
        ),
        for_: None,
        severity: "warning",
        summary: "{{ $labels.instance }}: upstream {{ $labels.upstream }} address {{ $labels.address }} ejected",
        description: "The gateway took this upstream address out of its rotation in the last 10 minutes, after failures in a row (refused connections, connect or response timeouts); its requests go to the other addresses.".into(),
    }, o);
    // a counter's first sample is not an increase: a location that panics for the first time
    // is a new series, seen by `unless ... offset`
    let panics = format!("garrison_panics_total{user_sel}");
    g.alert(Alert {
        name: "GarrisonHandlerPanics",
        expr: format!(
            "sum by (job, instance, http_route, location) (increase({panics}[10m])) > 0\nor\nsum by (job, instance, http_route, location) ({panics} unless {panics} offset 10m)"
        ),
        for_: None,
        severity: "warning",
        summary: "{{ $labels.instance }}: the handler of {{ $labels.http_route }} panicked at {{ $labels.location }}",
        description: "The service panicked on this route in the last 10 minutes; the stack answered 500 and kept serving. A panic is a bug: find it by its location, its trace (an `exception` event) and its `garrison::caught` log line.".into(),
    }, o);
    burn_alerts(
        &mut g,
        o,
        "job",
        "",
        o.availability_objective,
        o.latency_objective,
    );
    for (route, r) in &o.routes {
        burn_alerts(
            &mut g,
            o,
            "job_route",
            &format!("{{http_route={}}}", string(route)),
            r.availability_objective.unwrap_or(o.availability_objective),
            r.latency_objective.unwrap_or(o.latency_objective),
        );
    }
    g.done();
    out
}

/// The SLO ratios of the requests that the matcher list `m` selects.
fn slo_records(g: &mut Group<'_>, level: &str, m: &str, threshold: Duration) {
    let by = if level == "job" {
        "job"
    } else {
        "job, http_route"
    };
    let sel = selector(&[m]);
    let errors = selector(&[m, r#"http_response_status_code=~"5..""#]);
    let fast = selector(&[m, &le(threshold)]);
    for w in WINDOWS {
        let total = format!("sum by ({by}) (rate({COUNT}{sel}[{w}]))");
        g.record(
            &format!("{level}:slo_availability_errors:ratio_rate{w}"),
            &format!(
                "(\n  sum by ({by}) (rate({COUNT}{errors}[{w}]))\n  or {total} * 0\n)\n/ {total}"
            ),
        );
        g.record(
            &format!("{level}:slo_latency_errors:ratio_rate{w}"),
            &format!("1 - (\n  sum by ({by}) (rate({BUCKET}{fast}[{w}]))\n  / {total}\n)"),
        );
    }
}

fn burn_alerts(
    g: &mut Group<'_>,
    o: &OpsConfig,
    level: &str,
    matcher: &str,
    availability: f64,
    latency: f64,
) {
    let route = if level == "job" {
        "{{ $labels.job }}"
    } else {
        "{{ $labels.job }} {{ $labels.http_route }}"
    };
    let slos = [
        (
            "availability",
            "Availability",
            availability,
            "requests answered without a 5xx",
            [
                "GarrisonAvailabilityBurnRateFast",
                "GarrisonAvailabilityBurnRateSlow",
            ],
        ),
        (
            "latency",
            "Latency",
            latency,
            "requests faster than the latency threshold",
            ["GarrisonLatencyBurnRateFast", "GarrisonLatencyBurnRateSlow"],
        ),
    ];
    for (slo, title, objective, what, [fast, slow]) in slos {
        let budget = 1.0 - objective;
        let expr = |windows: &[(&str, &str, f64); 2]| {
            windows
                .iter()
                .map(|(long, short, rate)| {
                    let t = number(rate * budget);
                    format!(
                        "(\n  {level}:slo_{slo}_errors:ratio_rate{long}{matcher} > {t}\n  and\n  {level}:slo_{slo}_errors:ratio_rate{short}{matcher} > {t}\n)"
                    )
                })
                .collect::<Vec<_>>()
                .join("\nor\n")
        };
        g.alert(
            Alert {
                name: fast,
                expr: expr(&FAST),
                for_: None,
                severity: "critical",
                summary: &format!("{route}: {title} SLO budget burning fast"),
                description: format!(
                    "The {} SLO ({} of {what}) burned 2% of its 30-day error budget in the last hour, or 5% in the last 6 hours: at this rate it is gone in 2 to 5 days.",
                    slo,
                    percent(objective)
                ),
            },
            o,
        );
        g.alert(
            Alert {
                name: slow,
                expr: expr(&SLOW),
                for_: None,
                severity: "warning",
                summary: &format!("{route}: {title} SLO budget burning"),
                description: format!(
                    "The {} SLO ({} of {what}) is burning its 30-day error budget faster than it can last: 10% of it in a day, or 10% in 3 days.",
                    slo,
                    percent(objective)
                ),
            },
            o,
        );
    }
}

struct Alert<'a> {
    name: &'static str,
    expr: String,
    for_: Option<&'static str>,
    severity: &'static str,
    summary: &'a str,
    description: String,
}

/// One rule group being written.
struct Group<'a> {
    out: &'a mut String,
}

impl<'a> Group<'a> {
    fn new(out: &'a mut String, name: &str) -> Self {
        let _ = writeln!(out, "  - name: {name}\n    rules:");
        Self { out }
    }

    fn done(self) -> &'a mut String {
        self.out
    }

    fn record(&mut self, name: &str, expr: &str) {
        let _ = writeln!(self.out, "      - record: {name}\n        expr: |");
        block(self.out, expr);
    }

    fn alert(&mut self, a: Alert<'_>, o: &OpsConfig) {
        let _ = writeln!(self.out, "      - alert: {}\n        expr: |", a.name);
        block(self.out, &a.expr);
        if let Some(f) = a.for_ {
            let _ = writeln!(self.out, "        for: {f}");
        }
        let _ = writeln!(
            self.out,
            "        labels:\n          severity: {}\n        annotations:\n          summary: {}\n          description: {}\n          runbook_url: {}",
            a.severity,
            yaml(a.summary),
            yaml(&a.description),
            yaml(&format!("{}/{}.md", o.runbook_url.trim_end_matches('/'), a.name)),
        );
    }
}

/// A YAML literal block's lines, indented under `expr: |`.
fn block(out: &mut String, text: &str) {
    for line in text.lines() {
        let _ = writeln!(out, "          {line}");
    }
}

/// A double-quoted YAML string.
fn yaml(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// A double-quoted PromQL string.
fn string(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                q.push('\\');
                q.push(c);
            }
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

/// The non-empty matcher lists given, joined: `a, b`.
fn matchers(parts: &[&str]) -> String {
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `{a, b}` of the non-empty matcher lists given, or nothing when all are empty.
fn selector(parts: &[&str]) -> String {
    let inner = matchers(parts);
    if inner.is_empty() {
        inner
    } else {
        format!("{{{inner}}}")
    }
}

/// `http_route!~"…"` for the health and scrape routes that the configuration mounts.
fn excluded_routes(config: &GarrisonConfig) -> String {
    let mut paths: Vec<&str> = Vec::new();
    if config.health.enabled {
        paths.extend([
            config.health.live_path.as_str(),
            config.health.ready_path.as_str(),
            config.health.deep_path.as_str(),
        ]);
    }
    if config.metrics.enabled {
        paths.push(config.metrics.path.as_str());
    }
    paths.retain(|p| !p.is_empty());
    if paths.is_empty() {
        return String::new();
    }
    let alternatives: Vec<String> = paths.iter().map(|p| regex_escape(p)).collect();
    format!("http_route!~{}", string(&alternatives.join("|")))
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `le` matcher of a bucket bound: `le="0.25"`, or `le=~"1|1.0"` for whole seconds
/// (exposition writes `1`, Prometheus 3 stores `1.0`).
fn le(threshold: Duration) -> String {
    let s = seconds(threshold);
    if s.contains('.') {
        format!("le={}", string(&s))
    } else {
        format!("le=~{}", string(&format!("{s}|{s}\\.0")))
    }
}

fn seconds(d: Duration) -> String {
    number(d.as_secs_f64())
}

/// A number as short as it reads, without float noise (`0.0144`, not `0.014400000000000001`).
fn number(x: f64) -> String {
    let s = format!("{x:.12}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s.is_empty() || s == "-" {
        "0".into()
    } else {
        s.into()
    }
}

fn percent(share: f64) -> String {
    format!("{}%", number(share * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_checked() {
        for ok in [
            "",
            r#"job="shop""#,
            r#" job = "a\"b" , env=~"prod|stage",x!="" "#,
        ] {
            check_selector(ok).unwrap();
        }
        for bad in [
            r#"{job="shop"}"#,
            "job=shop",
            r#"job="shop" env="x""#,
            r#"job"#,
            r#"job="x"#,
        ] {
            assert!(check_selector(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numbers_read_as_written() {
        assert_eq!(number(14.4 * (1.0 - 0.999)), "0.0144");
        assert_eq!(number(6.0 * (1.0 - 0.9995)), "0.003");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(1.0), "1");
        assert_eq!(le(Duration::from_millis(250)), r#"le="0.25""#);
        assert_eq!(le(Duration::from_secs(1)), r#"le=~"1|1\\.0""#);
    }

    #[test]
    fn probes_and_scrapes_are_kept_out_of_the_slos() {
        let rules = rules(&GarrisonConfig::default());
        assert!(
            rules.contains(r#"http_route!~"/health/live|/health/ready|/health|/metrics""#),
            "{rules}"
        );
        for alert in ALERTS {
            assert!(rules.contains(&format!("alert: {alert}\n")), "{alert}");
        }
    }
}
