//! Small text helpers the layers share.

use std::fmt::Write as _;

/// Appends `s` to `out` as a JSON string literal, quotes included, escaping quotes,
/// backslashes and control characters.
///
/// ```
/// let mut out = String::new();
/// garrison_core::push_json_string(&mut out, "a \"b\"\n");
/// assert_eq!(out, r#""a \"b\"\n""#);
/// ```
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `t` in RFC 3339, UTC, with `fraction` decimals of the second (0 to 9):
/// `2026-11-22T09:30:00.123Z` for 3.
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// let t = UNIX_EPOCH + Duration::from_millis(951_782_400_250); // 2000-02-29, a leap day
/// assert_eq!(garrison_core::rfc3339(t, 3), "2000-02-29T00:00:00.250Z");
/// assert_eq!(garrison_core::rfc3339(t, 0), "2000-02-29T00:00:00Z");
/// ```
pub fn rfc3339(t: std::time::SystemTime, fraction: u8) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let rem = secs % 86_400;
    // Howard Hinnant's days-to-civil
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let mut out = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    let digits = usize::from(fraction.min(9));
    if digits > 0 {
        let nanos = format!("{:09}", d.subsec_nanos());
        out.push('.');
        out.push_str(&nanos[..digits]);
    }
    out.push('Z');
    out
}
