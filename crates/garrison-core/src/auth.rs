//! Bearer tokens: the one check of `Authorization: Bearer <token>` that the parts guarding a
//! route share (the detailed health report, the scrape).

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};

/// The credentials of `Authorization: Bearer <token>` (scheme case-insensitive, the token
/// trimmed); `None` for another scheme or an empty token.
///
/// ```
/// use http::HeaderValue;
/// assert_eq!(garrison_core::bearer_token(&HeaderValue::from_static("Bearer abc")), Some(&b"abc"[..]));
/// assert_eq!(garrison_core::bearer_token(&HeaderValue::from_static("Basic abc")), None);
/// ```
pub fn bearer_token(v: &HeaderValue) -> Option<&[u8]> {
    let b = v.as_bytes();
    if b.len() < 7 || !b[..7].eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let t = b[7..].trim_ascii();
    (!t.is_empty()).then_some(t)
}

/// Whether `headers` present `token` as a bearer token, compared in a time that depends on
/// the lengths only.
///
/// ```
/// let mut h = http::HeaderMap::new();
/// h.insert("authorization", "Bearer s3cret".parse().unwrap());
/// assert!(garrison_core::bearer_matches(&h, b"s3cret"));
/// assert!(!garrison_core::bearer_matches(&h, b"s3creT"));
/// ```
pub fn bearer_matches(headers: &HeaderMap, token: &[u8]) -> bool {
    let Some(given) = headers.get(AUTHORIZATION).and_then(bearer_token) else {
        return false;
    };
    given.len() == token.len()
        && given
            .iter()
            .zip(token)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens() {
        let hv = HeaderValue::from_static;
        let bearer = bearer_token;
        assert_eq!(bearer(&hv("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&hv("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&hv("Basic abc")), None);
        assert_eq!(bearer(&hv("Bearer ")), None);
    }
}
