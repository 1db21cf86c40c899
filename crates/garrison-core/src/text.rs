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
