//! Reports in `application/health+json` (draft-inadarei-api-health-check) and the HTTP
//! answer to a probe.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Request, Response};

use crate::registry::{Config, Details, Entry, HealthRegistry, Observation, StatusNames};
use crate::status::{Measurement, Observed};
use crate::Status;

/// The media type of health reports.
pub const HEALTH_JSON: &str = "application/health+json";

/// Which probe a report answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// `/health/live`.
    Live,
    /// `/health/ready`.
    Ready,
    /// `/health`.
    Deep,
}

/// A report: the overall status and, per check, its last observation.
#[derive(Clone)]
pub struct Report {
    probe: Probe,
    status: Status,
    entries: Vec<(Arc<Entry>, Option<Arc<Observation>>)>,
    shutting_down: bool,
}

impl std::fmt::Debug for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Report")
            .field("probe", &self.probe)
            .field("status", &self.status)
            .field("checks", &self.entries.len())
            .finish_non_exhaustive()
    }
}

const PENDING: &str = "not checked yet";

impl Report {
    pub(crate) fn new(
        probe: Probe,
        entries: Vec<(Arc<Entry>, Option<Arc<Observation>>)>,
        shutting_down: bool,
    ) -> Self {
        let mut status = if shutting_down {
            Status::Fail
        } else {
            Status::Pass
        };
        for (e, obs) in &entries {
            let s = match obs {
                Some(o) => o.status(),
                None => pending_status(probe, e),
            };
            status = status.max(s);
        }
        Self {
            probe,
            status,
            entries,
            shutting_down,
        }
    }

    /// The overall status: the worst of the checks'.
    pub fn status(&self) -> Status {
        self.status
    }

    /// The probe answered.
    pub fn probe(&self) -> Probe {
        self.probe
    }

    /// The report as `application/health+json`: with `details`, the service facts, the
    /// report's `time` and the service's `uptime` (seconds), the output and the checks;
    /// without, only the status.
    pub fn to_json(&self, registry: &HealthRegistry, details: bool) -> String {
        let mut out = String::with_capacity(if details {
            256 * (self.entries.len() + 1)
        } else {
            24
        });
        let names = registry.inner.config.names;
        out.push_str("{\"status\":\"");
        out.push_str(names.of(self.status));
        out.push('"');
        if !details {
            out.push('}');
            return out;
        }
        let c = &registry.inner.config;
        for (k, v) in [
            ("version", &c.version),
            ("releaseId", &c.release_id),
            ("serviceId", &c.service_id),
            ("description", &c.description),
        ] {
            if let Some(v) = v {
                push_key(&mut out, k);
                garrison_core::push_json_string(&mut out, v);
            }
        }
        // when the report was made, and for how long the service has been up
        push_key(&mut out, "time");
        garrison_core::push_json_string(
            &mut out,
            &garrison_core::rfc3339(std::time::SystemTime::now(), 3),
        );
        push_key(&mut out, "uptime");
        push_number(&mut out, registry.uptime().as_secs_f64());
        if self.shutting_down {
            push_key(&mut out, "output");
            out.push_str("\"shutting down\"");
        } else if let Some(reason) = self.first_reason() {
            push_key(&mut out, "output");
            garrison_core::push_json_string(&mut out, reason);
        }
        push_key(&mut out, "checks");
        out.push('{');
        let mut first = true;
        for (e, obs) in &self.entries {
            let ctype = e.check.component_type();
            let Some(obs) = obs else {
                comma(&mut out, &mut first);
                garrison_core::push_json_string(&mut out, &e.name);
                out.push_str(":[{");
                push_component_type(&mut out, ctype);
                out.push_str("\"status\":\"");
                out.push_str(names.of(pending_status(self.probe, e)));
                out.push_str("\",\"output\":\"");
                out.push_str(PENDING);
                out.push_str("\"}]");
                continue;
            };
            // RFC 3339 in UTC, to the millisecond: `2026-11-22T09:30:00.123Z`
            let time = garrison_core::rfc3339(obs.at, 3);
            let r = &obs.result;
            if r.measurements.is_empty() || r.status != Status::Pass {
                // the check's own status, under its bare name, with the run's duration
                comma(&mut out, &mut first);
                garrison_core::push_json_string(&mut out, &e.name);
                out.push_str(":[{");
                push_component_type(&mut out, ctype);
                if r.measurements.is_empty() {
                    out.push_str("\"observedValue\":");
                    push_number(&mut out, obs.duration.as_secs_f64() * 1e3);
                    out.push_str(",\"observedUnit\":\"ms\",");
                }
                out.push_str("\"status\":\"");
                out.push_str(names.of(r.status));
                out.push_str("\",\"time\":\"");
                out.push_str(&time);
                out.push('"');
                if let (Some(o), true) = (&r.output, r.status != Status::Pass) {
                    out.push_str(",\"output\":");
                    garrison_core::push_json_string(&mut out, o);
                }
                out.push_str("}]");
            }
            for m in &r.measurements {
                comma(&mut out, &mut first);
                let mut key = String::with_capacity(e.name.len() + 1 + m.name.len());
                key.push_str(&e.name);
                key.push(':');
                key.push_str(&m.name);
                garrison_core::push_json_string(&mut out, &key);
                out.push_str(":[{");
                push_component_type(&mut out, ctype);
                push_measurement(&mut out, m, &time, names);
                out.push_str("}]");
            }
        }
        out.push_str("}}");
        out
    }

    fn first_reason(&self) -> Option<&str> {
        if self.status == Status::Pass {
            return None;
        }
        self.entries.iter().find_map(|(_, o)| {
            o.as_ref()
                .filter(|o| o.status() == self.status)
                .and_then(|o| o.result.reason())
        })
    }
}

fn pending_status(probe: Probe, e: &Entry) -> Status {
    match probe {
        // the process is up; a liveness check that has not run yet says nothing against it
        Probe::Live => Status::Pass,
        _ if e.opts.critical => Status::Fail,
        _ => Status::Warn,
    }
}

fn comma(out: &mut String, first: &mut bool) {
    if !*first {
        out.push(',');
    }
    *first = false;
}

fn push_key(out: &mut String, k: &str) {
    out.push_str(",\"");
    out.push_str(k);
    out.push_str("\":");
}

fn push_component_type(out: &mut String, t: Option<&'static str>) {
    if let Some(t) = t {
        out.push_str("\"componentType\":");
        garrison_core::push_json_string(out, t);
        out.push(',');
    }
}

fn push_measurement(out: &mut String, m: &Measurement, time: &str, names: StatusNames) {
    if let Some(v) = &m.value {
        out.push_str("\"observedValue\":");
        match v {
            Observed::Number(n) => push_number(out, *n),
            Observed::Text(t) => garrison_core::push_json_string(out, t),
        }
        out.push(',');
    }
    if let Some(u) = &m.unit {
        out.push_str("\"observedUnit\":");
        garrison_core::push_json_string(out, u);
        out.push(',');
    }
    for (k, v) in &m.fields {
        garrison_core::push_json_string(out, k);
        out.push(':');
        push_number(out, *v);
        out.push(',');
    }
    out.push_str("\"status\":\"");
    out.push_str(names.of(m.status));
    out.push_str("\",\"time\":\"");
    out.push_str(time);
    out.push('"');
    if let (Some(o), true) = (&m.output, m.status != Status::Pass) {
        out.push_str(",\"output\":");
        garrison_core::push_json_string(out, o);
    }
}

/// A JSON number: integers without a fraction, three decimals at most, `null` for NaN.
fn push_number(out: &mut String, v: f64) {
    if !v.is_finite() {
        out.push_str("null");
        return;
    }
    let r = (v * 1000.0).round() / 1000.0;
    if r.fract() == 0.0 && r.abs() < 9e15 {
        out.push_str(itoa::Buffer::new().format(r as i64));
    } else {
        use std::fmt::Write;
        let _ = write!(out, "{r}");
    }
}

impl HealthRegistry {
    /// The report for a probe, from cached results.
    pub fn report(&self, probe: Probe) -> Report {
        self.start();
        let entries: Vec<_> = self
            .inner
            .checks
            .read()
            .iter()
            .filter(|e| match probe {
                Probe::Live => e.opts.kind.live(),
                Probe::Ready => e.opts.kind.ready(),
                Probe::Deep => true,
            })
            .map(|e| (e.clone(), e.last.read().clone()))
            .collect();
        let shutting_down = probe == Probe::Ready && self.is_shutting_down();
        Report::new(probe, entries, shutting_down)
    }

    /// `/health/live`: the liveness checks (a process with none is alive).
    pub fn live(&self) -> Report {
        self.report(Probe::Live)
    }

    /// `/health/ready`: the readiness checks; fails during shutdown and while a critical check
    /// has no result yet.
    pub fn ready(&self) -> Report {
        self.report(Probe::Ready)
    }

    /// `/health`: every check.
    pub fn deep(&self) -> Report {
        self.report(Probe::Deep)
    }

    /// Whether a caller with these request headers may see details (never when
    /// [`details_from`](crate::HealthRegistryBuilder::details_from) restricts the networks:
    /// the headers do not say where the caller is; see
    /// [`allows_details_for`](Self::allows_details_for)).
    pub fn allows_details(&self, headers: &HeaderMap) -> bool {
        self.inner.config.details_from.is_empty() && self.policy_allows(headers)
    }

    /// Whether the caller of `req` may see details: its network and its headers.
    pub fn allows_details_for<B>(&self, req: &Request<B>) -> bool {
        let nets = &self.inner.config.details_from;
        let from_allowed = nets.is_empty()
            || garrison_core::peer_addr(req)
                .is_some_and(|a| nets.iter().any(|n| n.contains(a.ip())));
        from_allowed && self.policy_allows(req.headers())
    }

    fn policy_allows(&self, headers: &HeaderMap) -> bool {
        let c: &Config = &self.inner.config;
        let policy = c.details.unwrap_or(Details::Token);
        match policy {
            Details::Always => true,
            Details::Never => false,
            Details::Token => c
                .token
                .as_ref()
                .is_some_and(|token| garrison_core::bearer_matches(headers, token)),
        }
    }

    /// The HTTP answer to `probe` for a request with these headers: the status code mapped
    /// from the report's status, `application/health+json`, `Cache-Control: no-store`.
    /// [`respond_to`](Self::respond_to) also knows the caller's address.
    pub fn respond(&self, probe: Probe, headers: &HeaderMap) -> Response<Bytes> {
        self.answer(probe, self.allows_details(headers))
    }

    /// The HTTP answer to `probe` for `req` (its headers and its peer address decide the
    /// details).
    pub fn respond_to<B>(&self, probe: Probe, req: &Request<B>) -> Response<Bytes> {
        self.answer(probe, self.allows_details_for(req))
    }

    fn answer(&self, probe: Probe, details: bool) -> Response<Bytes> {
        let report = self.report(probe);
        let body = report.to_json(self, details);
        let mut resp = Response::new(Bytes::from(body));
        *resp.status_mut() = self.inner.config.codes.of(report.status());
        let h = resp.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(HEALTH_JSON));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        resp
    }

    /// Which probe a request path asks for, if any.
    pub fn probe_for(&self, path: &str) -> Option<Probe> {
        let p = &self.inner.config.paths;
        if path == p.live {
            Some(Probe::Live)
        } else if path == p.ready {
            Some(Probe::Ready)
        } else if path == p.deep {
            Some(Probe::Deep)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_have_three_decimals_at_most() {
        let mut s = String::new();
        push_number(&mut s, 3.0);
        s.push(' ');
        push_number(&mut s, 1.23456);
        s.push(' ');
        push_number(&mut s, f64::NAN);
        assert_eq!(s, "3 1.235 null");
    }
}
