//! The rate-limit response headers.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use crate::gcra::Decision;
use crate::Policy;

/// `RateLimit-Policy` (IETF draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit` (IETF draft-ietf-httpapi-ratelimit-headers).
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `X-RateLimit-Limit`.
pub static X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `X-RateLimit-Remaining`.
pub static X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `X-RateLimit-Reset`.
pub static X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Which rate-limit headers responses carry.
///
/// - IETF (draft-ietf-httpapi-ratelimit-headers-10): `RateLimit-Policy: "general";q=100;w=60`
///   and `RateLimit: "general";r=99;t=1`;
/// - legacy: `X-RateLimit-Limit: 100`, `X-RateLimit-Remaining: 99`, `X-RateLimit-Reset: 1`.
///
/// `q` and `X-RateLimit-Limit` are the burst size, `w` the seconds in which a spent burst
/// comes back (the period when the burst is the limit), `r` and `X-RateLimit-Remaining` the
/// requests the client may still send at once, `t` and `X-RateLimit-Reset` the seconds until
/// the allowance is whole again (a delta, rounded up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderSet {
    ietf: bool,
    legacy: bool,
}

impl HeaderSet {
    /// Both sets (the default).
    pub const ALL: HeaderSet = HeaderSet {
        ietf: true,
        legacy: true,
    };
    /// Only `RateLimit-Policy` and `RateLimit`.
    pub const IETF: HeaderSet = HeaderSet {
        ietf: true,
        legacy: false,
    };
    /// Only the `X-RateLimit-*` trio.
    pub const LEGACY: HeaderSet = HeaderSet {
        ietf: false,
        legacy: true,
    };
    /// No rate-limit headers (a `429` still carries `Retry-After`).
    pub const NONE: HeaderSet = HeaderSet {
        ietf: false,
        legacy: false,
    };

    /// Whether any header is sent.
    pub fn any(&self) -> bool {
        self.ietf || self.legacy
    }
}

impl Default for HeaderSet {
    fn default() -> Self {
        HeaderSet::ALL
    }
}

/// The constant headers of one policy, made once and interned: one copy per distinct policy
/// text per process, so that an allowed request carries a reference.
#[derive(Debug)]
pub(crate) struct PolicyHeaders {
    /// `"general";q=100;w=60`
    policy: HeaderValue,
    /// `"general"`
    quoted: Box<str>,
    /// `100`
    limit: HeaderValue,
}

impl PolicyHeaders {
    pub(crate) fn new(p: &Policy) -> &'static Self {
        let q = p.quota();
        let window = (u128::from(q.emission) * u128::from(q.burst)).div_ceil(1_000_000_000);
        // Policy names are validated to letters, digits and `_-.:`: no escaping is needed.
        let quoted = format!("\"{}\"", p.name());
        let policy = format!("{quoted};q={};w={window}", q.burst);
        static POOL: OnceLock<Mutex<HashMap<String, &'static PolicyHeaders>>> = OnceLock::new();
        let mut pool = POOL
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        pool.entry(policy.clone()).or_insert_with(|| {
            Box::leak(Box::new(PolicyHeaders {
                policy: HeaderValue::from_str(&policy).expect("policy names are header-safe"),
                quoted: quoted.into_boxed_str(),
                limit: HeaderValue::from(q.burst),
            }))
        })
    }

    /// Adds the headers of `set` for `d` to `h`.
    #[inline]
    pub(crate) fn apply(&self, set: HeaderSet, remaining: u32, reset_secs: u64, h: &mut HeaderMap) {
        // One growth of the map instead of one per header, with room for the two headers a
        // trace layer above adds (`x-request-id`, `traceresponse`): a map that grows twice
        // rehashes twice.
        h.reserve(2 * usize::from(set.ietf) + 3 * usize::from(set.legacy) + 2);
        if set.ietf {
            h.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
            let mut buf = [0u8; 128];
            let mut n = 0;
            for part in [
                self.quoted.as_bytes(),
                b";r=",
                itoa::Buffer::new().format(remaining).as_bytes(),
                b";t=",
                itoa::Buffer::new().format(reset_secs).as_bytes(),
            ] {
                buf[n..n + part.len()].copy_from_slice(part);
                n += part.len();
            }
            if let Ok(v) = HeaderValue::from_bytes(&buf[..n]) {
                h.insert(RATELIMIT.clone(), v);
            }
        }
        if set.legacy {
            h.insert(X_RATELIMIT_LIMIT.clone(), self.limit.clone());
            h.insert(X_RATELIMIT_REMAINING.clone(), number(u64::from(remaining)));
            h.insert(X_RATELIMIT_RESET.clone(), number(reset_secs));
        }
    }

    pub(crate) fn apply_decision(&self, set: HeaderSet, d: &Decision, h: &mut HeaderMap) {
        self.apply(set, d.remaining, d.reset_secs(), h);
    }
}

/// Numbers below this come from a static table, so their header values cost no allocation.
const TABLE: u64 = 10_000;
const TABLE_LEN: usize = 10 + 90 * 2 + 900 * 3 + 9000 * 4;

const fn digits() -> [u8; TABLE_LEN] {
    let mut out = [0u8; TABLE_LEN];
    let mut n = 0u64;
    let mut at = 0;
    while n < TABLE {
        let width = width(n);
        let mut i = 0;
        let mut v = n;
        while i < width {
            out[at + width - 1 - i] = b'0' + (v % 10) as u8;
            v /= 10;
            i += 1;
        }
        at += width;
        n += 1;
    }
    out
}

const fn width(n: u64) -> usize {
    if n < 10 {
        1
    } else if n < 100 {
        2
    } else if n < 1000 {
        3
    } else {
        4
    }
}

const fn start(n: u64) -> usize {
    let n = n as usize;
    if n < 10 {
        n
    } else if n < 100 {
        10 + (n - 10) * 2
    } else if n < 1000 {
        190 + (n - 100) * 3
    } else {
        2890 + (n - 1000) * 4
    }
}

static DIGITS: [u8; TABLE_LEN] = digits();
static DIGITS_STR: &str = match std::str::from_utf8(&DIGITS) {
    Ok(s) => s,
    Err(_) => panic!("the digit table is ASCII"),
};

/// A header value holding `n`, without allocating for `n` below 10 000.
#[inline]
pub(crate) fn number(n: u64) -> HeaderValue {
    if n < TABLE {
        let at = start(n);
        HeaderValue::from_static(&DIGITS_STR[at..at + width(n)])
    } else {
        HeaderValue::from(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn number_table() {
        for n in [
            0, 7, 9, 10, 42, 99, 100, 999, 1000, 4711, 9999, 10_000, 123_456,
        ] {
            assert_eq!(number(n).to_str().unwrap(), n.to_string());
        }
    }

    #[test]
    fn header_texts() {
        let p = Policy::new("auth", 5, Duration::from_secs(900));
        let ph = PolicyHeaders::new(&p);
        let mut h = HeaderMap::new();
        ph.apply(HeaderSet::ALL, 4, 180, &mut h);
        assert_eq!(h["ratelimit-policy"], "\"auth\";q=5;w=900");
        assert_eq!(h["ratelimit"], "\"auth\";r=4;t=180");
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], "4");
        assert_eq!(h["x-ratelimit-reset"], "180");
        // A burst below the limit: the window is the time the burst takes to come back.
        let ph = PolicyHeaders::new(&Policy::per_minute("general", 100).burst(10));
        let mut h = HeaderMap::new();
        ph.apply(HeaderSet::IETF, 10, 0, &mut h);
        assert_eq!(h["ratelimit-policy"], "\"general\";q=10;w=6");
        assert!(h.get("x-ratelimit-limit").is_none());
        let mut h = HeaderMap::new();
        ph.apply(HeaderSet::LEGACY, 10, 0, &mut h);
        assert!(h.get("ratelimit").is_none() && h.get("x-ratelimit-limit").is_some());
        // Interned once.
        assert!(std::ptr::eq(PolicyHeaders::new(&p), PolicyHeaders::new(&p)));
    }
}
