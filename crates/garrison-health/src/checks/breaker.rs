use garrison_breaker::{BreakerRegistry, State};

use crate::check::BoxFuture;
use crate::{Check, CheckResult, Measurement, Status};

/// Looks at every breaker of a garrison-breaker registry: any open (or forced open) breaker
/// makes the check `warn` — one dependency's breaker opening must not take the whole instance
/// out of rotation — or `fail` when built with [`critical`](Self::critical).
///
/// Reported as `breakers:open` (the number of open breakers; the output names them), and
/// with [`verbose`](Self::verbose) every breaker under its own name: its state as the
/// observed value (`closed`, `open`, `half_open`, `forced_open`, `disabled`), its window's
/// `calls`, `failures`, `slow`, `failureRate` and `slowRate` (percent), `trips`, and
/// `openRemainingMs` while it is open.
#[derive(Clone, Debug)]
pub struct BreakerCheck {
    registry: BreakerRegistry,
    open_status: Status,
    verbose: bool,
}

impl BreakerCheck {
    /// A check over `registry`'s breakers.
    pub fn new(registry: &BreakerRegistry) -> Self {
        Self {
            registry: registry.clone(),
            open_status: Status::Warn,
            verbose: false,
        }
    }

    /// Reports every breaker with its state and window figures, not only the open ones.
    pub fn verbose(mut self) -> Self {
        self.verbose = true;
        self
    }

    /// An open breaker fails the check rather than warning.
    pub fn critical(mut self) -> Self {
        self.open_status = Status::Fail;
        self
    }
}

impl Check for BreakerCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let breakers = self.registry.list();
        let is_open = |s: State| matches!(s, State::Open | State::ForcedOpen);
        let open: Vec<&str> = breakers
            .iter()
            .filter(|b| is_open(b.state))
            .map(|b| b.name.as_str())
            .collect();
        let mut m = Measurement::new("open").observed(open.len() as u64, "breakers");
        if !open.is_empty() {
            m = m
                .status(self.open_status)
                .output(format!("open: {}", open.join(", ")));
        }
        let mut result = CheckResult::pass().measurement(m);
        if self.verbose {
            for b in &breakers {
                let w = &b.window;
                let mut m = Measurement::new(b.name.clone())
                    .observed(b.state.as_str(), "state")
                    .field("calls", w.calls as f64)
                    .field("failures", w.failures as f64)
                    .field("slow", w.slow as f64)
                    .field("failureRate", w.failure_rate() * 100.0)
                    .field("slowRate", w.slow_rate() * 100.0)
                    .field("trips", f64::from(b.trips));
                if let Some(left) = b.open_remaining {
                    m = m.field("openRemainingMs", left.as_secs_f64() * 1e3);
                }
                if is_open(b.state) {
                    m = m
                        .status(self.open_status)
                        .output(format!("{} is open", b.name));
                }
                result = result.measurement(m);
            }
        }
        Box::pin(std::future::ready(result))
    }

    fn component_type(&self) -> Option<&'static str> {
        Some("component")
    }
}
