use std::path::PathBuf;

use garrison_metrics::ProcessStats;

use crate::check::BoxFuture;
use crate::{Check, CheckResult, Measurement};

/// The process's own limits: warns when its open file descriptors reach a share of their
/// limit (default 80%), or its resident memory a share of its cgroup's memory limit (default
/// 90%), before the kernel refuses a socket or the OOM killer ends the service.
///
/// Reported as `process:openFiles` (open descriptors, with `max`) and `process:memory`
/// (resident bytes, with `limit` when the cgroup has one; cgroup v2's `memory.max`, else v1's
/// `memory.limit_in_bytes`). Reads `/proc` and `/sys/fs/cgroup` (Linux); elsewhere it
/// passes with nothing measured.
///
/// ```
/// use garrison_health::{CheckOptions, HealthRegistry, ProcessCheck};
///
/// let health = HealthRegistry::new();
/// health
///     .register("process", ProcessCheck::new().warn_open_files(0.9), CheckOptions::deep())
///     .unwrap();
/// ```
#[derive(Clone, Debug)]
pub struct ProcessCheck {
    files_share: f64,
    memory_share: f64,
    cgroup: PathBuf,
}

impl Default for ProcessCheck {
    fn default() -> Self {
        Self::new()
    }
}

impl ProcessCheck {
    /// Warns from 80% of the descriptor limit and 90% of the cgroup memory limit.
    pub fn new() -> Self {
        Self {
            files_share: 0.8,
            memory_share: 0.9,
            cgroup: PathBuf::from("/sys/fs/cgroup"),
        }
    }

    /// The share (0 to 1) of the open-file limit from which the check warns.
    pub fn warn_open_files(mut self, share: f64) -> Self {
        self.files_share = share_or(share, 0.8);
        self
    }

    /// The share (0 to 1) of the cgroup memory limit from which the check warns.
    pub fn warn_memory(mut self, share: f64) -> Self {
        self.memory_share = share_or(share, 0.9);
        self
    }

    /// Where the process's cgroup is mounted (default `/sys/fs/cgroup`).
    pub fn cgroup_root(mut self, path: impl Into<PathBuf>) -> Self {
        self.cgroup = path.into();
        self
    }

    /// The cgroup's memory limit in bytes, if it has one.
    fn memory_limit(&self) -> Option<u64> {
        ["memory.max", "memory/memory.limit_in_bytes"]
            .iter()
            .find_map(|f| std::fs::read_to_string(self.cgroup.join(f)).ok())
            // "max" (v2), or a huge number (v1), when there is no limit
            .and_then(|v| v.trim().parse::<u64>().ok())
            .filter(|&b| b < u64::MAX / 2)
    }

    fn measure(&self) -> CheckResult {
        let Some(p) = ProcessStats::read() else {
            return CheckResult::pass();
        };
        let mut files = Measurement::new("openFiles").observed(p.open_fds, "files");
        if let Some(max) = p.max_fds {
            files = files.field("max", max as f64);
            if max > 0 && p.open_fds as f64 >= self.files_share * max as f64 {
                files = files.warn(format!(
                    "{} of {max} file descriptors open ({:.0}%)",
                    p.open_fds,
                    100.0 * p.open_fds as f64 / max as f64
                ));
            }
        }
        let mut memory =
            Measurement::new("memory").observed(p.resident_memory_bytes as f64, "bytes");
        if let Some(limit) = self.memory_limit() {
            memory = memory.field("limit", limit as f64);
            if p.resident_memory_bytes as f64 >= self.memory_share * limit as f64 {
                memory = memory.warn(format!(
                    "{} MiB resident of a {} MiB memory limit",
                    p.resident_memory_bytes >> 20,
                    limit >> 20
                ));
            }
        }
        CheckResult::pass().measurement(files).measurement(memory)
    }
}

fn share_or(share: f64, default: f64) -> f64 {
    if share.is_finite() {
        share.clamp(0.0, 1.0)
    } else {
        default
    }
}

impl Check for ProcessCheck {
    fn check(&self) -> BoxFuture<'_, CheckResult> {
        Box::pin(std::future::ready(self.measure()))
    }

    fn component_type(&self) -> Option<&'static str> {
        Some("system")
    }
}
