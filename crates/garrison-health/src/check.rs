//! The `Check` trait, closures as checks, and the options a check is registered with.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::CheckResult;

/// A boxed future, as [`Check::check`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A health check: one run looks at a dependency and says what it found.
///
/// The registry runs it in the background, one run at a time, cut off at the check's
/// timeout; probes only read the last result. Implement it for your own dependencies, or
/// use [`check_fn`] with an async closure.
pub trait Check: Send + Sync + 'static {
    /// Runs the check once.
    fn check(&self) -> BoxFuture<'_, CheckResult>;

    /// The draft's `componentType`: `datastore`, `component` or `system`.
    fn component_type(&self) -> Option<&'static str> {
        None
    }
}

/// A check made of an async closure.
///
/// ```
/// use garrison_health::{check_fn, CheckResult};
///
/// let disk = check_fn(|| async {
///     let free = 0.42; // look it up
///     if free < 0.1 { CheckResult::fail("disk almost full") } else { CheckResult::pass() }
/// });
/// # let _ = disk;
/// ```
pub fn check_fn<F, Fut>(f: F) -> FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckResult> + Send + 'static,
{
    FnCheck(f)
}

/// The check made by [`check_fn`].
#[derive(Clone, Copy)]
pub struct FnCheck<F>(F);

impl<F> std::fmt::Debug for FnCheck<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCheck")
    }
}

impl<F, Fut> Check for FnCheck<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = CheckResult> + Send + 'static,
{
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        Box::pin((self.0)())
    }
}

/// Which probes a check answers for. The deep route `/health` shows every check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// `/health/live`: only what says the process itself is broken (a stuck event loop), never
    /// a dependency, or an outage restarts every instance at once.
    Liveness,
    /// `/health/ready`: what the instance needs to serve traffic.
    Readiness,
    /// Both probes.
    Both,
    /// Only the deep route: dependencies worth watching that must not take the instance out
    /// of rotation.
    Deep,
}

impl CheckKind {
    pub(crate) fn live(self) -> bool {
        matches!(self, CheckKind::Liveness | CheckKind::Both)
    }

    pub(crate) fn ready(self) -> bool {
        matches!(self, CheckKind::Readiness | CheckKind::Both)
    }
}

/// How a check is run and what its failure means.
///
/// Defaults: readiness, critical, a timeout of 2 s, refreshed every 10 s.
///
/// ```
/// use std::time::Duration;
/// use garrison_health::CheckOptions;
///
/// let opts = CheckOptions::readiness()
///     .timeout(Duration::from_millis(500))
///     .interval(Duration::from_secs(5));
/// let breakers = CheckOptions::deep().non_critical();
/// # let _ = (opts, breakers);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckOptions {
    pub(crate) kind: CheckKind,
    pub(crate) critical: bool,
    pub(crate) timeout: Duration,
    pub(crate) interval: Duration,
}

/// The default timeout of a check run.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
/// The default time between two runs of a check (how long its result is cached).
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

impl Default for CheckOptions {
    fn default() -> Self {
        Self {
            kind: CheckKind::Readiness,
            critical: true,
            timeout: DEFAULT_TIMEOUT,
            interval: DEFAULT_INTERVAL,
        }
    }
}

impl CheckOptions {
    /// A readiness check.
    pub fn readiness() -> Self {
        Self::default()
    }

    /// A liveness check.
    pub fn liveness() -> Self {
        Self::default().kind(CheckKind::Liveness)
    }

    /// A check on both probes.
    pub fn both() -> Self {
        Self::default().kind(CheckKind::Both)
    }

    /// A check shown only on the deep route.
    pub fn deep() -> Self {
        Self::default().kind(CheckKind::Deep)
    }

    /// Sets the kind.
    pub fn kind(mut self, kind: CheckKind) -> Self {
        self.kind = kind;
        self
    }

    /// Whether a failure fails the service (`true`, the default) or only warns.
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = critical;
        self
    }

    /// A failure only warns.
    pub fn non_critical(self) -> Self {
        self.critical(false)
    }

    /// How long a run may take before it is cut off and reported as failed. At least 1 ms.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// How often the check runs in the background; probes read the cached result in
    /// between. At least 10 ms.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(10));
        self
    }
}
