//! `AdmissionCheck`: the queue's depth for the health routes.

use garrison_health::{BoxFuture, Check, CheckResult, Measurement};

use crate::Admission;

/// `warn` when the admission queue has stayed at least `deep_queue` deep since the check's
/// previous run (a queue that fills and drains is normal; one that never drains means the
/// instance is short of capacity). Reported as `admission:queue` (the lowest depth since the
/// previous run), with the limit and the requests in flight. Never `fail`: shedding load is
/// what keeps the instance alive, and taking it out of rotation would move the load onto
/// the others.
///
/// ```
/// use garrison_admission::{Admission, AdmissionCheck};
/// use garrison_health::{CheckOptions, HealthRegistry};
///
/// let admission = Admission::builder().build().unwrap();
/// let health = HealthRegistry::new();
/// health
///     .register("admission", AdmissionCheck::new(&admission), CheckOptions::deep())
///     .unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct AdmissionCheck {
    admission: Admission,
}

impl AdmissionCheck {
    /// A check of `admission`'s queue.
    pub fn new(admission: &Admission) -> Self {
        Self {
            admission: admission.clone(),
        }
    }
}

impl Check for AdmissionCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        let (deep, low) = self.admission.stayed_deep();
        let mut m = Measurement::new("queue")
            .observed(low as u64, "requests")
            .field("limit", self.admission.limit() as f64)
            .field("in_flight", self.admission.in_flight() as f64);
        if deep {
            m = m.warn(format!(
                "the queue stayed at least {} deep since the last run (limit {})",
                self.admission.deep_queue(),
                self.admission.limit()
            ));
        }
        Box::pin(std::future::ready(CheckResult::pass().measurement(m)))
    }

    fn component_type(&self) -> Option<&'static str> {
        Some("component")
    }
}
