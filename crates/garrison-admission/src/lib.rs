#![doc = include_str!("../README.md")]
//!
//! # Behaviour
//!
//! - **Priorities**: [`Priority::Critical`], `High`, `Normal` (the default), `Low`, `Batch`.
//!   A request's priority comes from, first to last: a [`Priority`] in its extensions (put
//!   there by your auth layer), the `x-priority` header when the caller's address is in
//!   [`trusted_callers`](AdmissionLayer::trusted_callers) (anyone else's is ignored), its
//!   route template ([`route`](AdmissionLayer::route)), the
//!   [default](AdmissionLayer::default_priority).
//! - **Queue**: when every slot is taken, a request waits; a freed slot goes to the best
//!   class, and within a class to the earliest arrival. A request that waits longer than
//!   its class's [queue timeout](AdmissionBuilder::queue_timeout) is shed (`timeout`).
//! - **Full queue**: an arrival evicts the newest waiter of the lowest class below its own
//!   (`evicted`), or is shed itself when nothing waiting is of lower priority
//!   (`queue_full`).
//! - **No starvation**: a waiting request moves up one class for every
//!   [`aging`](AdmissionBuilder::aging) it has waited (1 s by default), so a steady stream
//!   of critical requests delays a batch request by at most 4 × `aging` once it is the
//!   oldest (its timeout permitting).
//! - **Adaptive limit** ([`Adaptive`]): AIMD from observed latency within bounds.
//! - **Shed**: `503 Service Unavailable`, `Retry-After`, `Cache-Control: no-store`, and
//!   `{"error":"overloaded","reason":…,"priority":…}`; the inner service is not called.
//!   The permit is held until the inner service's response (head) is ready.
//! - **Metrics** ([`AdmissionBuilder::metrics`]): `garrison_admission_in_flight`,
//!   `garrison_admission_limit`, `garrison_admission_queue_depth{priority}`,
//!   `garrison_admission_wait_seconds{priority}`,
//!   `garrison_admission_admitted_total{priority}`,
//!   `garrison_admission_shed_total{priority,reason}`.
//! - **Health** (feature `health`): [`AdmissionCheck`] turns `warn` when the queue stayed
//!   deep between two runs.
//! - **Databases** (feature `sqlx`): [`acquire_connection`] puts the same admission in front
//!   of a sqlx pool's acquires.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod admission;
#[cfg(feature = "health")]
mod health;
mod layer;
#[cfg(feature = "sqlx")]
mod pool {
    include!("pool_impl.rs");
}

/// [`acquire_connection`] for pools of sqlx 0.8 (feature
/// `sqlx-0_8`), for services that have not moved to sqlx 0.9 yet.
#[cfg(feature = "sqlx-0_8")]
pub mod sqlx_0_8 {
    use ::sqlx_0_8 as sqlx;
    include!("pool_impl.rs");
}

use std::fmt;
use std::str::FromStr;

pub use admission::{
    Acquire, Adaptive, Admission, AdmissionBuilder, BuildError, Permit, Shed, ShedReason,
    DEFAULT_QUEUE_TIMEOUTS,
};
pub use garrison_core::{Part, RequestInfo};
#[cfg(feature = "health")]
pub use health::AdmissionCheck;
pub use layer::{
    AdmissionLayer, AdmissionService, Queued, ResponseFuture, DEFAULT_PRIORITY_HEADER,
};
#[cfg(feature = "sqlx")]
pub use pool::{acquire_connection, Admitted, PoolAcquireError};

/// A request's class: critical goes first, batch last.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// User-facing calls that must not wait behind anything (checkout, login).
    Critical,
    /// User-facing calls.
    High,
    /// Everything not classed otherwise.
    #[default]
    Normal,
    /// Background work a user does not wait for.
    Low,
    /// Analytics, exports, batch jobs: shed first.
    Batch,
}

impl Priority {
    /// Every class, critical first.
    pub const ALL: [Priority; 5] = [
        Self::Critical,
        Self::High,
        Self::Normal,
        Self::Low,
        Self::Batch,
    ];

    /// The class's name: `critical`, `high`, `normal`, `low`, `batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::High => "high",
            Self::Normal => "normal",
            Self::Low => "low",
            Self::Batch => "batch",
        }
    }

    /// 0 for critical to 4 for batch.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A priority name that is not one of `critical`, `high`, `normal`, `low`, `batch`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnknownPriority(pub String);

impl fmt::Display for UnknownPriority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a priority: critical, high, normal, low or batch",
            self.0
        )
    }
}

impl std::error::Error for UnknownPriority {}

impl FromStr for Priority {
    type Err = UnknownPriority;

    /// Case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownPriority(s.to_owned()))
    }
}
