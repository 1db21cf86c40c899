//! Process and tokio runtime metrics, read at scrape time.

use crate::exposition::{MetricType, MetricWriter};

/// Clock ticks per second of `/proc/<pid>/stat` times: `USER_HZ`, fixed at 100 by the Linux
/// user-space ABI on every architecture Rust supports.
#[cfg(target_os = "linux")]
const USER_HZ: f64 = 100.0;

/// Figures of the running process, as the Prometheus client libraries export them.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ProcessStats {
    /// User and system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_memory_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_memory_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors, when there is one.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    /// Reads the figures of this process from `/proc` (Linux); `None` elsewhere or when
    /// `/proc` cannot be read.
    pub fn read() -> Option<Self> {
        #[cfg(target_os = "linux")]
        {
            read_linux()
        }
        #[cfg(not(target_os = "linux"))]
        {
            None
        }
    }
}

#[cfg(target_os = "linux")]
fn read_linux() -> Option<ProcessStats> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // fields[0] is field 3 (state) of proc(5).
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    let utime = field(14)?;
    let stime = field(15)?;
    let start_ticks = field(22)?;

    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_ascii_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .map(|v| v * 1024)
    };
    let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))
            .and_then(|v| v.trim().parse::<u64>().ok())
    })?;
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_ascii_whitespace().nth(3))
                .and_then(|v| v.parse::<u64>().ok())
        });
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / USER_HZ,
        resident_memory_bytes: kib("VmRSS:").unwrap_or(0),
        virtual_memory_bytes: kib("VmSize:").unwrap_or(0),
        open_fds,
        max_fds,
        start_time_seconds: boot_time as f64 + start_ticks as f64 / USER_HZ,
    })
}

pub(crate) fn collect_process(w: &mut MetricWriter<'_>) {
    let Some(p) = ProcessStats::read() else {
        return;
    };
    w.family(
        "process_cpu_seconds",
        MetricType::Counter,
        "Total user and system CPU time spent in seconds.",
    );
    w.sample_f64("process_cpu_seconds", &[], p.cpu_seconds);
    w.family(
        "process_resident_memory_bytes",
        MetricType::Gauge,
        "Resident memory size in bytes.",
    );
    w.sample_u64(
        "process_resident_memory_bytes",
        &[],
        p.resident_memory_bytes,
    );
    w.family(
        "process_virtual_memory_bytes",
        MetricType::Gauge,
        "Virtual memory size in bytes.",
    );
    w.sample_u64("process_virtual_memory_bytes", &[], p.virtual_memory_bytes);
    w.family(
        "process_open_fds",
        MetricType::Gauge,
        "Number of open file descriptors.",
    );
    w.sample_u64("process_open_fds", &[], p.open_fds);
    if let Some(max) = p.max_fds {
        w.family(
            "process_max_fds",
            MetricType::Gauge,
            "Maximum number of open file descriptors.",
        );
        w.sample_u64("process_max_fds", &[], max);
    }
    w.family(
        "process_start_time_seconds",
        MetricType::Gauge,
        "Start time of the process since unix epoch in seconds.",
    );
    w.sample_f64("process_start_time_seconds", &[], p.start_time_seconds);
}

/// How often the scheduling-delay probe wakes.
pub(crate) const LAG_PROBE_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

/// The tokio counterpart of an event loop's lag: a task that sleeps [`LAG_PROBE_INTERVAL`] at
/// a time and measures how late it woke. A runtime whose threads are kept busy (a blocking
/// call, a long poll, too much work) wakes it late. Started on the runtime of the first
/// scrape; it ends when its registry is dropped.
#[derive(Debug, Default)]
pub(crate) struct LagProbe {
    started: std::sync::atomic::AtomicBool,
    /// The last delay measured, in nanoseconds.
    delay_ns: std::sync::atomic::AtomicU64,
}

impl LagProbe {
    /// Starts the probe on `handle`'s runtime, once.
    fn start(self: &std::sync::Arc<Self>, handle: &tokio::runtime::Handle) {
        use std::sync::atomic::Ordering;
        if self.started.swap(true, Ordering::Relaxed) {
            return;
        }
        let probe = std::sync::Arc::downgrade(self);
        handle.spawn(async move {
            loop {
                let asleep = tokio::time::Instant::now();
                tokio::time::sleep(LAG_PROBE_INTERVAL).await;
                let late = asleep.elapsed().saturating_sub(LAG_PROBE_INTERVAL);
                let Some(p) = probe.upgrade() else { break };
                let ns = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX);
                p.delay_ns.store(ns, Ordering::Relaxed);
            }
        });
    }

    /// The last delay measured, in seconds (0 before the first).
    fn seconds(&self) -> f64 {
        self.delay_ns.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e9
    }
}

pub(crate) fn collect_runtime(w: &mut MetricWriter<'_>, lag: &std::sync::Arc<LagProbe>) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    lag.start(&handle);
    w.family(
        "tokio_runtime_scheduling_delay_seconds",
        MetricType::Gauge,
        "How late a probe task of the tokio runtime woke after its timer, last measured: the runtime's lag.",
    );
    w.sample_f64("tokio_runtime_scheduling_delay_seconds", &[], lag.seconds());
    let m = handle.metrics();
    w.family(
        "tokio_runtime_workers",
        MetricType::Gauge,
        "Number of worker threads of the tokio runtime.",
    );
    w.sample_u64("tokio_runtime_workers", &[], m.num_workers() as u64);
    w.family(
        "tokio_runtime_alive_tasks",
        MetricType::Gauge,
        "Number of tasks alive in the tokio runtime.",
    );
    w.sample_u64("tokio_runtime_alive_tasks", &[], m.num_alive_tasks() as u64);
    w.family(
        "tokio_runtime_global_queue_depth",
        MetricType::Gauge,
        "Number of tasks waiting in the tokio runtime's global queue.",
    );
    w.sample_u64(
        "tokio_runtime_global_queue_depth",
        &[],
        m.global_queue_depth() as u64,
    );
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let p = ProcessStats::read().expect("/proc is readable");
        assert!(p.resident_memory_bytes > 0);
        assert!(
            p.open_fds >= 3,
            "stdin, stdout, stderr at least: {}",
            p.open_fds
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(p.start_time_seconds <= now + 1.0 && p.start_time_seconds > now - 86_400.0 * 365.0);
    }
}
