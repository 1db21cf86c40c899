//! Wall-clock timestamps for log lines.

/// Now, in RFC 3339 UTC to the microsecond: `2026-11-22T09:30:00.123456Z`.
pub(crate) fn rfc3339_now() -> String {
    garrison_core::rfc3339(std::time::SystemTime::now(), 6)
}
