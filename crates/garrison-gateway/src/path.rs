//! Request paths normalised before routing (as Envoy's `normalize_path` and `merge_slashes`):
//! the route, the rate-limit policy and the breaker are chosen for the path the upstream will
//! serve, so `//auth/login`, `/x/../auth/login` and `/%61uth/login` cannot slip past the
//! `auth` route's policy.

use std::borrow::Cow;

/// What to do with a percent-encoded slash (`%2F`) or backslash (`%5C`, or a raw `\`) in a
/// path: `[gateway] escaped_slashes`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashes {
    /// `"reject"`: answer `400` (the default: an upstream may decode them into separators).
    #[default]
    Reject,
    /// `"keep"`: forward them as they are (upper-cased escapes).
    Keep,
    /// `"decode"`: turn them into `/` before routing.
    Decode,
}

/// Why a path cannot be forwarded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadPath {
    /// `..` segments climb above the root.
    AboveRoot,
    /// An encoded slash or backslash, with `escaped_slashes = "reject"`.
    EscapedSlash,
    /// A `%` not followed by two hex digits.
    BadEscape,
}

impl BadPath {
    /// The reason, for the `400`'s body.
    pub fn reason(self) -> &'static str {
        match self {
            BadPath::AboveRoot => "the path climbs above the root",
            BadPath::EscapedSlash => "the path holds an encoded slash or backslash",
            BadPath::BadEscape => "the path holds a malformed percent escape",
        }
    }
}

fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// `path` (without its query) normalised: percent-encoded unreserved characters decoded, other
/// escapes upper-cased, encoded slashes per `slashes`, repeated slashes merged, and `.` and
/// `..` segments removed (RFC 3986 §5.2.4). Borrowed when nothing changes, which is the common
/// case and costs one pass over the bytes.
pub fn normalize(path: &str, slashes: EscapedSlashes) -> Result<Cow<'_, str>, BadPath> {
    let b = path.as_bytes();
    // one pass: an escape, a backslash, or a slash followed by a slash or a dot
    let mut suspicious = false;
    let mut after_slash = false;
    for &c in b {
        match c {
            b'%' | b'\\' => {
                suspicious = true;
                break;
            }
            b'/' | b'.' if after_slash => {
                suspicious = true;
                break;
            }
            _ => {}
        }
        after_slash = c == b'/';
    }
    // `*` (OPTIONS) and other forms that are not a path are left alone
    if !suspicious || !path.starts_with('/') {
        return Ok(Cow::Borrowed(path));
    }
    // 1. escapes: decode the unreserved ones, upper-case the rest, apply the slash rule
    let mut decoded = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let Some(c) = garrison::garrison_core::percent_escape(&b[i + 1..]) else {
                    return Err(BadPath::BadEscape);
                };
                if unreserved(c) {
                    decoded.push(c);
                } else if c == b'/' || c == b'\\' {
                    match slashes {
                        EscapedSlashes::Reject => return Err(BadPath::EscapedSlash),
                        EscapedSlashes::Decode => decoded.push(b'/'),
                        EscapedSlashes::Keep => {
                            decoded.extend_from_slice(if c == b'/' { b"%2F" } else { b"%5C" })
                        }
                    }
                } else {
                    const HEX: &[u8; 16] = b"0123456789ABCDEF";
                    decoded.push(b'%');
                    decoded.push(HEX[usize::from(c >> 4)]);
                    decoded.push(HEX[usize::from(c & 0xf)]);
                }
                i += 3;
            }
            b'\\' => {
                match slashes {
                    EscapedSlashes::Reject => return Err(BadPath::EscapedSlash),
                    EscapedSlashes::Decode => decoded.push(b'/'),
                    EscapedSlashes::Keep => decoded.extend_from_slice(b"%5C"),
                }
                i += 1;
            }
            c => {
                decoded.push(c);
                i += 1;
            }
        }
    }
    // 2. segments: merge empty ones, drop `.`, pop on `..`
    let trailing = decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    let mut out: Vec<&[u8]> = Vec::new();
    for seg in decoded.split(|&c| c == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                if out.pop().is_none() {
                    return Err(BadPath::AboveRoot);
                }
            }
            s => out.push(s),
        }
    }
    let mut text = Vec::with_capacity(decoded.len());
    for seg in &out {
        text.push(b'/');
        text.extend_from_slice(seg);
    }
    if text.is_empty() || (trailing && !text.ends_with(b"/")) {
        text.push(b'/');
    }
    // only bytes of the input or ASCII were written, and every decoded byte is ASCII
    let text = String::from_utf8(text).map_err(|_| BadPath::BadEscape)?;
    Ok(if text == path {
        Cow::Borrowed(path)
    } else {
        Cow::Owned(text)
    })
}

/// A request the gateway refuses before any part of the stack chooses a route for it: the
/// proxy answers it `400` with this reason (so the stack still measures and traces it).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Refused(pub(crate) &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_variants_normalise_to_the_path_the_upstream_serves() {
        let n = |p| normalize(p, EscapedSlashes::Reject);
        for (raw, want) in [
            ("/auth/login", "/auth/login"),
            ("/", "/"),
            ("//auth/login", "/auth/login"),
            ("/auth//login", "/auth/login"),
            ("/./auth/login", "/auth/login"),
            ("/x/../auth/login", "/auth/login"),
            ("/x/%2e%2e/auth/login", "/auth/login"),
            ("/x/%2E%2E/auth/login", "/auth/login"),
            ("/%61uth/login", "/auth/login"),
            ("/%41uth/%6C%6Fgin", "/Auth/login"),
            ("/files/a%20b", "/files/a%20b"),
            ("/files/a%c3%a9", "/files/a%C3%A9"),
            ("/auth/login/", "/auth/login/"),
            ("/auth/login/.", "/auth/login/"),
            ("/auth/x/..", "/auth/"),
            ("/.well-known/x", "/.well-known/x"),
            ("/a/..b/c", "/a/..b/c"),
        ] {
            assert_eq!(n(raw).as_deref(), Ok(want), "{raw}");
        }
        assert!(matches!(n("/users/42"), Ok(Cow::Borrowed(_))));
        assert_eq!(n("/../etc/passwd"), Err(BadPath::AboveRoot));
        assert_eq!(n("/a/%2e%2e/%2e%2e/etc"), Err(BadPath::AboveRoot));
        assert_eq!(n("/a%2Fb"), Err(BadPath::EscapedSlash));
        assert_eq!(n("/a%5cb"), Err(BadPath::EscapedSlash));
        assert_eq!(n("/a\\b"), Err(BadPath::EscapedSlash));
        assert_eq!(n("/a%zz"), Err(BadPath::BadEscape));
        assert_eq!(n("/a%4"), Err(BadPath::BadEscape));
        assert_eq!(
            normalize("/a%2fb/%5C", EscapedSlashes::Keep).as_deref(),
            Ok("/a%2Fb/%5C")
        );
        assert_eq!(
            normalize("/a%2Fb//c", EscapedSlashes::Decode).as_deref(),
            Ok("/a/b/c")
        );
    }
}
