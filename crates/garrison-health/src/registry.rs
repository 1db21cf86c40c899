//! The registry of named checks, their background refresh and cached results.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use tokio::task::AbortHandle;

use crate::check::{Check, CheckOptions};
use crate::{CheckResult, Status};

/// The result of a check's last run, as probes see it.
#[derive(Clone, Debug)]
pub struct Observation {
    /// What the run found, with a failure capped to `warn` for a non-critical check.
    pub result: CheckResult,
    /// The status the check itself reported, before the cap.
    pub reported: Status,
    /// When the run finished (wall clock, for the `time` field).
    pub at: SystemTime,
    /// How long the run took.
    pub duration: Duration,
}

impl Observation {
    /// The status probes use.
    pub fn status(&self) -> Status {
        self.result.status()
    }
}

/// A change of a check's status, as [`HealthRegistry::on_change`] hands it to its callbacks.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct StatusChange<'a> {
    /// The check's name.
    pub check: &'a str,
    /// The status before (`None`: the check's first run).
    pub from: Option<Status>,
    /// The status now.
    pub to: Status,
    /// Why, when the check is not passing.
    pub reason: Option<&'a str>,
}

type Listener = Arc<dyn Fn(&StatusChange<'_>) + Send + Sync>;

/// The callbacks of [`HealthRegistry::on_change`], shared by every check of a registry.
pub(crate) type Listeners = Arc<RwLock<Vec<Listener>>>;

pub(crate) struct Entry {
    pub(crate) name: Arc<str>,
    listeners: Listeners,
    pub(crate) check: Arc<dyn Check>,
    pub(crate) opts: CheckOptions,
    pub(crate) last: RwLock<Option<Arc<Observation>>>,
    pub(crate) runs: AtomicU64,
    started: AtomicBool,
    /// One run at a time: a background run and a `refresh()` never overlap.
    running: tokio::sync::Mutex<()>,
}

/// Which callers see the details of a report (check names, outputs, values, versions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Details {
    /// Only callers that present the configured token as `Authorization: Bearer <token>`
    /// (the default; with no token configured, nobody).
    Token,
    /// Everybody: for a port only operators can reach.
    Always,
    /// Nobody: just the status.
    Never,
}

/// The HTTP status sent for each health status. Default: 200, 200, 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusCodes {
    /// For `pass`.
    pub pass: http::StatusCode,
    /// For `warn`.
    pub warn: http::StatusCode,
    /// For `fail`.
    pub fail: http::StatusCode,
}

impl Default for StatusCodes {
    fn default() -> Self {
        Self {
            pass: http::StatusCode::OK,
            warn: http::StatusCode::OK,
            fail: http::StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl StatusCodes {
    pub(crate) fn of(&self, s: Status) -> http::StatusCode {
        match s {
            Status::Pass => self.pass,
            Status::Warn => self.warn,
            Status::Fail => self.fail,
        }
    }
}

/// The words a report gives the three statuses. Default: the draft's `pass`, `warn`, `fail`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum StatusNames {
    /// `pass`, `warn`, `fail` (draft-inadarei-api-health-check).
    #[default]
    Draft,
    /// `healthy`, `degraded`, `unhealthy`, as many monitoring tools and runbooks say.
    Descriptive,
}

impl StatusNames {
    /// The word for `s`.
    pub fn of(self, s: Status) -> &'static str {
        match (self, s) {
            (StatusNames::Draft, s) => s.as_str(),
            (StatusNames::Descriptive, Status::Pass) => "healthy",
            (StatusNames::Descriptive, Status::Warn) => "degraded",
            (StatusNames::Descriptive, Status::Fail) => "unhealthy",
        }
    }
}

/// The paths the routes answer on. Default: `/health/live`, `/health/ready`, `/health`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// Liveness.
    pub live: String,
    /// Readiness.
    pub ready: String,
    /// The deep check.
    pub deep: String,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            live: "/health/live".into(),
            ready: "/health/ready".into(),
            deep: "/health".into(),
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct Config {
    pub(crate) service_id: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) release_id: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) token: Option<Vec<u8>>,
    pub(crate) details: Option<Details>,
    /// Networks callers must come from to see details (empty: any).
    pub(crate) details_from: Vec<garrison_core::IpNet>,
    pub(crate) codes: StatusCodes,
    pub(crate) names: StatusNames,
    pub(crate) paths: Paths,
}

pub(crate) struct Inner {
    pub(crate) config: Config,
    /// When the registry was built: the service's uptime in reports.
    born: tokio::time::Instant,
    listeners: Listeners,
    pub(crate) checks: RwLock<Vec<Arc<Entry>>>,
    shutting_down: AtomicBool,
    tasks: Mutex<Vec<AbortHandle>>,
    /// Checks registered whose refresh has not started: probes start them.
    unstarted: AtomicUsize,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self.tasks.get_mut().drain(..) {
            t.abort();
        }
    }
}

/// Named health checks, refreshed in the background, and the reports probes read.
///
/// Cheap to clone: clones share the checks. Each check runs on its own interval in a tokio
/// task (started when the check is registered inside a runtime, or by the first probe); a
/// probe only reads the last result, so a thousand probes a second cost the database
/// nothing. A run that exceeds its timeout is cut off and reported as failed. Every change
/// of a check's status is logged once through `tracing`.
///
/// The tasks stop when the last clone of the registry is dropped.
#[derive(Clone)]
pub struct HealthRegistry {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self
            .inner
            .checks
            .read()
            .iter()
            .map(|e| e.name.clone())
            .collect();
        f.debug_struct("HealthRegistry")
            .field("checks", &names)
            .finish_non_exhaustive()
    }
}

impl Default for HealthRegistry {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a check could not be registered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterError {
    /// The name given.
    pub name: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for RegisterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "health check {:?}: {}", self.name, self.reason)
    }
}

impl std::error::Error for RegisterError {}

/// Builds a [`HealthRegistry`]: service facts for the report, the token, and the routes.
#[derive(Debug, Default)]
#[must_use]
pub struct HealthRegistryBuilder {
    config: Config,
}

impl HealthRegistryBuilder {
    /// `serviceId` in the report.
    pub fn service_id(mut self, id: impl Into<String>) -> Self {
        self.config.service_id = Some(id.into());
        self
    }

    /// `version` in the report (shown only with details).
    pub fn version(mut self, v: impl Into<String>) -> Self {
        self.config.version = Some(v.into());
        self
    }

    /// `releaseId` in the report (shown only with details).
    pub fn release_id(mut self, v: impl Into<String>) -> Self {
        self.config.release_id = Some(v.into());
        self
    }

    /// `description` in the report (shown only with details).
    pub fn description(mut self, v: impl Into<String>) -> Self {
        self.config.description = Some(v.into());
        self
    }

    /// The token that unlocks details: callers send `Authorization: Bearer <token>`. It is
    /// compared in constant time. Sets [`Details::Token`] unless another policy is set.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let t: String = token.into();
        self.config.token = (!t.is_empty()).then(|| t.into_bytes());
        self
    }

    /// Who sees details. Default: [`Details::Token`].
    pub fn details(mut self, d: Details) -> Self {
        self.config.details = Some(d);
        self
    }

    /// Only callers from these networks see details, on top of what
    /// [`details`](Self::details) asks (the token, say). The caller's address is the
    /// connection's peer ([`PeerAddr`](garrison_core::PeerAddr), or axum's `ConnectInfo`):
    /// answers that cannot know it ([`HealthRegistry::respond`], given headers only) show
    /// no details. Default: any network.
    pub fn details_from(
        mut self,
        networks: impl IntoIterator<Item = garrison_core::IpNet>,
    ) -> Self {
        self.config.details_from = networks.into_iter().collect();
        self
    }

    /// The HTTP status for each health status.
    pub fn status_codes(mut self, codes: StatusCodes) -> Self {
        self.config.codes = codes;
        self
    }

    /// The words reports give the statuses (default: [`StatusNames::Draft`]).
    pub fn status_names(mut self, names: StatusNames) -> Self {
        self.config.names = names;
        self
    }

    /// The route paths.
    pub fn paths(mut self, paths: Paths) -> Self {
        self.config.paths = paths;
        self
    }

    /// The registry.
    pub fn build(self) -> HealthRegistry {
        HealthRegistry {
            inner: Arc::new(Inner {
                config: self.config,
                born: tokio::time::Instant::now(),
                listeners: Listeners::default(),
                checks: RwLock::new(Vec::new()),
                shutting_down: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
                unstarted: AtomicUsize::new(0),
            }),
        }
    }
}

impl HealthRegistry {
    /// A registry with no service facts, no token (no details shown) and default routes.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A builder.
    pub fn builder() -> HealthRegistryBuilder {
        HealthRegistryBuilder::default()
    }

    /// Registers a check under `name` (letters, digits, `-`, `_`, `.`; at most 64 bytes; the
    /// component part of its keys). Inside a tokio runtime its background refresh starts at
    /// once; otherwise on the first probe or [`start`](Self::start).
    pub fn register(
        &self,
        name: &str,
        check: impl Check,
        opts: CheckOptions,
    ) -> Result<(), RegisterError> {
        let err = |reason| RegisterError {
            name: name.to_owned(),
            reason,
        };
        if name.is_empty() || name.len() > 64 {
            return Err(err("names are 1 to 64 bytes long"));
        }
        if !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(err("names use letters, digits, '-', '_' and '.' only"));
        }
        let entry = Arc::new(Entry {
            name: name.into(),
            listeners: self.inner.listeners.clone(),
            check: Arc::new(check),
            opts,
            last: RwLock::new(None),
            runs: AtomicU64::new(0),
            started: AtomicBool::new(false),
            running: tokio::sync::Mutex::new(()),
        });
        {
            let mut checks = self.inner.checks.write();
            if checks.iter().any(|e| &*e.name == name) {
                return Err(err("a check with this name is already registered"));
            }
            checks.push(entry.clone());
            self.inner.unstarted.fetch_add(1, Ordering::AcqRel);
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            self.spawn(&rt, entry);
        }
        Ok(())
    }

    fn spawn(&self, rt: &tokio::runtime::Handle, entry: Arc<Entry>) {
        if entry.started.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.unstarted.fetch_sub(1, Ordering::AcqRel);
        let handle = rt.spawn(async move {
            loop {
                entry.run().await;
                tokio::time::sleep(entry.opts.interval).await;
            }
        });
        self.inner.tasks.lock().push(handle.abort_handle());
    }

    /// Starts the background refresh of every check that has not started (checks registered
    /// outside a runtime). Probes call it; call it yourself to have results before the first
    /// probe. Needs a tokio runtime; does nothing outside one.
    pub fn start(&self) {
        if self.inner.unstarted.load(Ordering::Acquire) == 0 {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let entries: Vec<_> = self.inner.checks.read().clone();
        for e in entries {
            self.spawn(&rt, e);
        }
    }

    /// Runs every check once now, in parallel, and waits for the results (each within its
    /// timeout): for start-up, before the service reports ready, and for tests.
    pub async fn refresh(&self) {
        let entries = self.inner.checks.read().clone();
        let runs: Vec<_> = entries
            .into_iter()
            .map(|e| tokio::spawn(async move { e.run().await }))
            .collect();
        for r in runs {
            let _ = r.await;
        }
    }

    /// Marks the start of graceful shutdown: readiness fails from now on, so the load
    /// balancer stops sending traffic before the listeners close. Liveness is unchanged.
    pub fn begin_shutdown(&self) {
        if !self.inner.shutting_down.swap(true, Ordering::Relaxed) {
            tracing::info!("health: shutdown started, readiness now fails");
        }
    }

    /// Calls `f` after every change of a check's status, its first result included (in the
    /// task that ran the check: keep it short, or hand the change to a task of your own).
    ///
    /// ```
    /// use garrison_health::{check_fn, CheckOptions, CheckResult, HealthRegistry, Status};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let health = HealthRegistry::new();
    /// health.on_change(|c| {
    ///     if c.to == Status::Fail {
    ///         eprintln!("{} fails: {}", c.check, c.reason.unwrap_or(""));
    ///     }
    /// });
    /// health
    ///     .register("queue", check_fn(|| async { CheckResult::fail("full") }), CheckOptions::default())
    ///     .unwrap();
    /// health.refresh().await;
    /// # }
    /// ```
    pub fn on_change(&self, f: impl Fn(&StatusChange<'_>) + Send + Sync + 'static) {
        self.inner.listeners.write().push(Arc::new(f));
    }

    /// How long the registry has lived: the service's uptime, reported as `uptime` (seconds)
    /// in a detailed report.
    pub fn uptime(&self) -> Duration {
        self.inner.born.elapsed()
    }

    /// Whether [`begin_shutdown`](Self::begin_shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Relaxed)
    }

    /// The last result of the check `name`, if it ran.
    pub fn last(&self, name: &str) -> Option<Arc<Observation>> {
        self.entry(name).and_then(|e| e.last.read().clone())
    }

    /// How many times the check `name` has run.
    pub fn runs(&self, name: &str) -> Option<u64> {
        self.entry(name).map(|e| e.runs.load(Ordering::Relaxed))
    }

    /// The names of the registered checks, in registration order.
    pub fn names(&self) -> Vec<String> {
        self.inner
            .checks
            .read()
            .iter()
            .map(|e| e.name.to_string())
            .collect()
    }

    fn entry(&self, name: &str) -> Option<Arc<Entry>> {
        self.inner
            .checks
            .read()
            .iter()
            .find(|e| &*e.name == name)
            .cloned()
    }
}

impl Entry {
    /// One run: cut off at the timeout, panics caught, status changes logged.
    pub(crate) async fn run(&self) {
        let _one = match self.running.try_lock() {
            Ok(guard) => guard,
            Err(_) => {
                // a run is under way: its result is as fresh as ours would be
                let _wait = self.running.lock().await;
                return;
            }
        };
        let timeout = self.opts.timeout;
        let started = tokio::time::Instant::now();
        let check = self.check.clone();
        let task = tokio::spawn(async move { check.check().await });
        let abort = task.abort_handle();
        let mut result = match tokio::time::timeout(timeout, task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.is_panic() => CheckResult::fail("the check panicked"),
            Ok(Err(_)) => CheckResult::fail("the check was cancelled"),
            Err(_) => {
                abort.abort();
                CheckResult::fail(format!("timed out after {}", human_duration(timeout)))
            }
        };
        let duration = started.elapsed();
        let reported = result.status();
        if !self.opts.critical {
            result.cap(Status::Warn);
        }
        let obs = Arc::new(Observation {
            result,
            reported,
            at: SystemTime::now(),
            duration,
        });
        let now = obs.status();
        let before = self.last.write().replace(obs.clone());
        self.runs.fetch_add(1, Ordering::Relaxed);
        let was = before.map(|b| b.status());
        if was != Some(now) {
            let reason = obs.result.reason();
            let from = was.map_or("unknown", Status::as_str);
            let why = reason.unwrap_or("");
            match now {
                Status::Pass => {
                    tracing::info!(check = %self.name, from, to = "pass", "health check passes")
                }
                Status::Warn => {
                    tracing::warn!(check = %self.name, from, to = "warn", reason = why, "health check warns")
                }
                Status::Fail => {
                    tracing::error!(check = %self.name, from, to = "fail", reason = why, "health check fails")
                }
            }
            let listeners = self.listeners.read().clone();
            let change = StatusChange {
                check: &self.name,
                from: was,
                to: now,
                reason,
            };
            for f in &listeners {
                f(&change);
            }
        }
    }
}

/// `1.5s`, `250ms`, `2m`: how a timeout reads in an output.
pub(crate) fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 || !ms.is_multiple_of(1000) {
        format!("{ms}ms")
    } else if ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else {
        format!("{}s", ms / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_read_in_the_largest_whole_unit() {
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(human_duration(Duration::from_secs(2)), "2s");
        assert_eq!(human_duration(Duration::from_secs(120)), "2m");
    }
}
