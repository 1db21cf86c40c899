//! Which traces are recorded and exported.

use std::time::Duration;

use garrison_core::TraceId;

use crate::w3c::Parent;

/// The sampling policy of a [`Tracer`](crate::Tracer).
///
/// Head decisions on new traces compare the trace id's lower 64 bits with the ratio, so
/// every service with the same ratio makes the same decision for a trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Sampler {
    /// Record and export every trace.
    Always,
    /// Record nothing (ids and propagation still work).
    Never,
    /// Parent-based: follow the caller's sampled flag; for new traces, this share (0 to 1).
    Ratio(f64),
    /// Tail-based in process: record every request, then keep the trace if its server span
    /// ended in error (5xx, service error, cancelled) or took longer than `slow`, or if the
    /// caller sampled it, or else with probability `ratio` — "100% of errors, 10% of
    /// successes" is `ErrorBiased { ratio: 0.1, slow: .. }`.
    ErrorBiased {
        /// The share of other traces kept.
        ratio: f64,
        /// Server spans at least this long are kept.
        slow: Duration,
    },
}

impl Default for Sampler {
    /// `Ratio(1.0)`: parent-based, every new trace.
    fn default() -> Self {
        Sampler::Ratio(1.0)
    }
}

/// The decision when a request starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// Record and export.
    Sample,
    /// Record, decide at the end.
    Defer,
    /// Record nothing.
    Drop,
}

pub(crate) fn ratio_keeps(ratio: f64, trace: TraceId) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio.is_nan() || ratio <= 0.0 {
        return false;
    }
    let low = u64::from_be_bytes(trace.to_bytes()[8..].try_into().unwrap_or_default());
    (low as f64) < ratio * (u64::MAX as f64)
}

impl Sampler {
    /// The sampler that `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` name, as the
    /// OpenTelemetry specification defines them; `None` when it is unset or names a sampler
    /// this crate does not have.
    ///
    /// `always_on` is [`Always`](Self::Always), `always_off` [`Never`](Self::Never),
    /// `parentbased_always_on` `Ratio(1.0)`, `parentbased_always_off` `Ratio(0.0)`, and
    /// `parentbased_traceidratio` and `traceidratio` `Ratio(arg)` (this crate's ratio always
    /// follows a caller's decision). A missing or invalid argument is 1.0, as the
    /// specification says.
    pub fn from_env() -> Option<Sampler> {
        let name = std::env::var("OTEL_TRACES_SAMPLER").ok()?;
        let arg = || {
            std::env::var("OTEL_TRACES_SAMPLER_ARG")
                .ok()
                .and_then(|a| a.trim().parse::<f64>().ok())
                .filter(|r| (0.0..=1.0).contains(r))
                .unwrap_or(1.0)
        };
        Some(match name.trim() {
            "always_on" => Sampler::Always,
            "always_off" => Sampler::Never,
            "parentbased_always_on" => Sampler::Ratio(1.0),
            "parentbased_always_off" => Sampler::Ratio(0.0),
            "traceidratio" | "parentbased_traceidratio" => Sampler::Ratio(arg()),
            _ => return None,
        })
    }

    pub(crate) fn start(&self, trace: TraceId, parent: Option<&Parent>) -> Start {
        match *self {
            Sampler::Always => Start::Sample,
            Sampler::Never => Start::Drop,
            Sampler::Ratio(r) => match parent {
                Some(p) if p.sampled => Start::Sample,
                Some(_) => Start::Drop,
                None if ratio_keeps(r, trace) => Start::Sample,
                None => Start::Drop,
            },
            Sampler::ErrorBiased { .. } => match parent {
                Some(p) if p.sampled => Start::Sample,
                _ => Start::Defer,
            },
        }
    }

    /// The sampled flag sent downstream while the decision may still be pending.
    pub(crate) fn head_flag(&self, start: Start, trace: TraceId) -> bool {
        match (start, self) {
            (Start::Sample, _) => true,
            (Start::Drop, _) => false,
            (Start::Defer, Sampler::ErrorBiased { ratio, .. }) => ratio_keeps(*ratio, trace),
            (Start::Defer, _) => false,
        }
    }

    /// The decision for a deferred trace at the end of its local root.
    pub(crate) fn keep(&self, trace: TraceId, error: bool, took: Duration) -> bool {
        match *self {
            Sampler::ErrorBiased { ratio, slow } => {
                error || took >= slow || ratio_keeps(ratio, trace)
            }
            Sampler::Always => true,
            Sampler::Never => false,
            Sampler::Ratio(r) => ratio_keeps(r, trace),
        }
    }
}
