use garrison_breaker::{BreakerRegistry, State};

use crate::check::BoxFuture;
use crate::{Check, CheckResult, Measurement, Status};

/// Looks at every breaker of a garrison-breaker registry: any open (or forced open) breaker
/// makes the check `warn` — one dependency's breaker opening must not take the whole instance
/// out of rotation — or `fail` when built with [`critical`](Self::critical).
///
/// Reported as `breakers:open` (the number of open breakers; the output names them).
#[derive(Clone, Debug)]
pub struct BreakerCheck {
    registry: BreakerRegistry,
    open_status: Status,
}

impl BreakerCheck {
    /// A check over `registry`'s breakers.
    pub fn new(registry: &BreakerRegistry) -> Self {
        Self {
            registry: registry.clone(),
            open_status: Status::Warn,
        }
    }

    /// An open breaker fails the check rather than warning.
    pub fn critical(mut self) -> Self {
        self.open_status = Status::Fail;
        self
    }
}

impl Check for BreakerCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let open: Vec<String> = self
            .registry
            .list()
            .into_iter()
            .filter(|b| matches!(b.state, State::Open | State::ForcedOpen))
            .map(|b| b.name)
            .collect();
        let mut m = Measurement::new("open").observed(open.len() as u64, "breakers");
        if !open.is_empty() {
            m = m
                .status(self.open_status)
                .output(format!("open: {}", open.join(", ")));
        }
        Box::pin(std::future::ready(CheckResult::pass().measurement(m)))
    }

    fn component_type(&self) -> Option<&'static str> {
        Some("component")
    }
}
