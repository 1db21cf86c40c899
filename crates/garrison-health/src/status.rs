//! What a check found: a status, measurements, and an output on failure.

use std::borrow::Cow;
use std::fmt;

/// The health of a check or of the whole service, ordered from best to worst.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Healthy.
    Pass,
    /// Healthy, with a concern (a pool near its limit, an open breaker, a non-critical
    /// dependency down).
    Warn,
    /// Unhealthy.
    Fail,
}

impl Status {
    /// Every status, best first.
    pub const ALL: [Status; 3] = [Status::Pass, Status::Warn, Status::Fail];

    /// `pass`, `warn` or `fail`, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An observed value.
#[derive(Clone, Debug, PartialEq)]
pub enum Observed {
    /// A number (a latency, a count, a percentage).
    Number(f64),
    /// A short text.
    Text(Cow<'static, str>),
}

impl From<f64> for Observed {
    fn from(v: f64) -> Self {
        Observed::Number(v)
    }
}

impl From<u64> for Observed {
    fn from(v: u64) -> Self {
        Observed::Number(v as f64)
    }
}

impl From<u32> for Observed {
    fn from(v: u32) -> Self {
        Observed::Number(f64::from(v))
    }
}

impl From<&'static str> for Observed {
    fn from(v: &'static str) -> Self {
        Observed::Text(Cow::Borrowed(v))
    }
}

impl From<String> for Observed {
    fn from(v: String) -> Self {
        Observed::Text(Cow::Owned(v))
    }
}

/// One measurement of a check: reported under the key `component:measurement`
/// (`postgres:responseTime`).
#[derive(Clone, Debug, PartialEq)]
pub struct Measurement {
    pub(crate) name: Cow<'static, str>,
    pub(crate) status: Status,
    pub(crate) value: Option<Observed>,
    pub(crate) unit: Option<Cow<'static, str>>,
    pub(crate) output: Option<String>,
    pub(crate) fields: Vec<(&'static str, f64)>,
}

impl Measurement {
    /// A passing measurement named `name` (`responseTime`, `utilization`, `connections`).
    pub fn new(name: impl Into<Cow<'static, str>>) -> Self {
        Self {
            name: name.into(),
            status: Status::Pass,
            value: None,
            unit: None,
            output: None,
            fields: Vec::new(),
        }
    }

    /// The observed value and its unit (`ms`, `percent`, `connections`).
    pub fn observed(
        mut self,
        value: impl Into<Observed>,
        unit: impl Into<Cow<'static, str>>,
    ) -> Self {
        self.value = Some(value.into());
        self.unit = Some(unit.into());
        self
    }

    /// Sets the status.
    pub fn status(mut self, status: Status) -> Self {
        self.status = status;
        self
    }

    /// Sets the status to `warn` with a reason.
    pub fn warn(self, output: impl Into<String>) -> Self {
        self.status(Status::Warn).output(output)
    }

    /// Sets the status to `fail` with a reason.
    pub fn fail(self, output: impl Into<String>) -> Self {
        self.status(Status::Fail).output(output)
    }

    /// A human-readable reason, shown (to callers allowed to see details) when the status is
    /// not `pass`. Anything that looks like a URL with credentials is redacted.
    pub fn output(mut self, output: impl Into<String>) -> Self {
        self.output = Some(crate::redact::redact(&output.into()));
        self
    }

    /// An extra numeric field next to the standard ones (the pool check adds `size`, `idle`,
    /// `used`, `max`).
    pub fn field(mut self, key: &'static str, value: f64) -> Self {
        self.fields.push((key, value));
        self
    }

    /// The measurement's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The measurement's status.
    pub fn get_status(&self) -> Status {
        self.status
    }

    /// The observed value.
    pub fn value(&self) -> Option<&Observed> {
        self.value.as_ref()
    }

    /// The output, if any.
    pub fn get_output(&self) -> Option<&str> {
        self.output.as_deref()
    }

    /// An extra field by key.
    pub fn get_field(&self, key: &str) -> Option<f64> {
        self.fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// What one run of a check found: either a plain status (reported under the check's name)
/// or measurements (reported as `name:measurement`, the worst of them being the check's
/// status).
///
/// ```
/// use garrison_health::{CheckResult, Measurement, Status};
///
/// let r = CheckResult::pass()
///     .measurement(Measurement::new("responseTime").observed(1.5, "ms"))
///     .measurement(Measurement::new("utilization").observed(85.0, "percent").warn("85% of the pool in use"));
/// assert_eq!(r.status(), Status::Warn);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct CheckResult {
    pub(crate) status: Status,
    pub(crate) output: Option<String>,
    pub(crate) measurements: Vec<Measurement>,
}

impl CheckResult {
    /// Healthy.
    pub fn pass() -> Self {
        Self {
            status: Status::Pass,
            output: None,
            measurements: Vec::new(),
        }
    }

    /// Healthy with a concern.
    pub fn warn(output: impl Into<String>) -> Self {
        Self::pass().with_status(Status::Warn, output)
    }

    /// Unhealthy, with the reason.
    pub fn fail(output: impl Into<String>) -> Self {
        Self::pass().with_status(Status::Fail, output)
    }

    fn with_status(mut self, status: Status, output: impl Into<String>) -> Self {
        self.status = status;
        self.output = Some(crate::redact::redact(&output.into()));
        self
    }

    /// Adds a measurement.
    pub fn measurement(mut self, m: Measurement) -> Self {
        self.measurements.push(m);
        self
    }

    /// The worst of the plain status and every measurement's.
    pub fn status(&self) -> Status {
        self.measurements
            .iter()
            .map(|m| m.status)
            .fold(self.status, Status::max)
    }

    /// The plain output, if any.
    pub fn output(&self) -> Option<&str> {
        self.output.as_deref()
    }

    /// The measurements.
    pub fn measurements(&self) -> &[Measurement] {
        &self.measurements
    }

    /// A measurement by name.
    pub fn get(&self, name: &str) -> Option<&Measurement> {
        self.measurements.iter().find(|m| m.name == name)
    }

    /// The first output of anything that is not `pass`.
    pub fn reason(&self) -> Option<&str> {
        self.output.as_deref().or_else(|| {
            self.measurements
                .iter()
                .filter(|m| m.status != Status::Pass)
                .find_map(|m| m.output.as_deref())
        })
    }

    /// Caps every status at `max` (a failing non-critical check is a `warn`).
    pub(crate) fn cap(&mut self, max: Status) {
        self.status = self.status.min(max);
        for m in &mut self.measurements {
            m.status = m.status.min(max);
        }
    }
}

/// Milliseconds, for `observedValue` with `observedUnit: "ms"`.
#[allow(dead_code)]
pub(crate) fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
