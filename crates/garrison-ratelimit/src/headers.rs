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
/// `X-RateLimit-Retry-After`, on a `429` with [`HeaderSet::with_retry_after`].
pub static X_RATELIMIT_RETRY_AFTER: HeaderName = HeaderName::from_static("x-ratelimit-retry-after");

/// Which rate-limit headers responses carry.
///
/// - IETF (draft-ietf-httpapi-ratelimit-headers-10): `RateLimit-Policy: "general";q=100;w=60`
///   and `RateLimit: "general";r=99;t=1`;
/// - legacy: `X-RateLimit-Limit: 100`, `X-RateLimit-Remaining: 99`, `X-RateLimit-Reset: 1`.
///
/// `q` and `X-RateLimit-Limit` are the burst size, `w` the seconds in which a spent burst
/// comes back (the period when the burst is the limit), `r` and `X-RateLimit-Remaining` the
/// requests the client may still send at once, `t` and `X-RateLimit-Reset` the seconds until
/// the allowance is whole again (a delta, rounded up). Two options change the legacy set:
/// [`reset_at_epoch`](Self::reset_at_epoch) (`X-RateLimit-Reset` as the Unix time, as
/// GitHub's API sends it) and [`with_retry_after`](Self::with_retry_after)
/// (`X-RateLimit-Retry-After` on a `429`, beside `Retry-After`).
///
/// ```
/// use garrison_ratelimit::HeaderSet;
///
/// let set = HeaderSet::LEGACY.reset_at_epoch().with_retry_after();
/// assert!(set.any());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HeaderSet {
    ietf: bool,
    legacy: bool,
    reset_epoch: bool,
    retry_after: bool,
}

impl HeaderSet {
    /// Both sets (the default).
    pub const ALL: HeaderSet = HeaderSet::of(true, true);
    /// Only `RateLimit-Policy` and `RateLimit`.
    pub const IETF: HeaderSet = HeaderSet::of(true, false);
    /// Only the `X-RateLimit-*` trio.
    pub const LEGACY: HeaderSet = HeaderSet::of(false, true);
    /// No rate-limit headers (a `429` still carries `Retry-After`).
    pub const NONE: HeaderSet = HeaderSet::of(false, false);

    const fn of(ietf: bool, legacy: bool) -> Self {
        Self {
            ietf,
            legacy,
            reset_epoch: false,
            retry_after: false,
        }
    }

    /// `X-RateLimit-Reset` as the Unix time (seconds) at which the allowance is whole again,
    /// instead of the seconds until then. `RateLimit`'s `t` stays a delta, as the IETF draft
    /// says.
    pub const fn reset_at_epoch(mut self) -> Self {
        self.reset_epoch = true;
        self
    }

    /// A `429` also carries `X-RateLimit-Retry-After` (the seconds of `Retry-After`), for
    /// clients that read only the `X-RateLimit-*` headers; with the legacy set only.
    pub const fn with_retry_after(mut self) -> Self {
        self.retry_after = true;
        self
    }

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
    /// The headers of [`HeaderSet::IETF`], [`HeaderSet::LEGACY`] and [`HeaderSet::ALL`], in
    /// that order, with the constant values set and the others to be filled in: see
    /// [`apply`](Self::apply).
    templates: [HeaderMap; 3],
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
            // Leaked with the rest of the interned headers: a static value's copies for the
            // responses count no references (a shared one's cost two atomic operations each).
            let statik = |text: String| {
                HeaderValue::from_str(&text).expect("policy names are header-safe");
                HeaderValue::from_static(Box::leak(text.into_boxed_str()))
            };
            let policy = statik(policy.clone());
            let limit = statik(q.burst.to_string());
            let templates = [HeaderSet::IETF, HeaderSet::LEGACY, HeaderSet::ALL]
                .map(|set| template(set, &policy, &limit));
            Box::leak(Box::new(PolicyHeaders {
                policy,
                quoted: quoted.into_boxed_str(),
                limit,
                templates,
            }))
        })
    }

    /// Adds the headers of `set` to `h`, replacing any of the same names, with room left
    /// for `room` more headers that the caller adds next (a stack's `x-request-id`).
    ///
    /// When `h` has room, they are inserted. When it must grow first, and it holds no more
    /// headers than `set` adds (a handler's response: `content-type`, perhaps
    /// `content-length`), `h`'s headers move into a copy of the policy's template instead:
    /// inserting a custom header name into a `HeaderMap` hashes it byte by byte, and these
    /// are up to five of them (80 bytes); the template's were hashed once, when the policy
    /// was made, and only the values that change are written into the copy.
    #[inline]
    pub(crate) fn apply(
        &self,
        set: HeaderSet,
        remaining: u32,
        reset_secs: u64,
        h: &mut HeaderMap,
        room: usize,
    ) {
        let template = match (set.ietf, set.legacy) {
            (true, false) => &self.templates[0],
            (false, true) => &self.templates[1],
            (true, true) => &self.templates[2],
            (false, false) => return,
        };
        let ratelimit = set.ietf.then(|| self.ratelimit(remaining, reset_secs));
        let remaining = || number(u64::from(remaining));
        let needed = h.len() + template.len() + room;
        if needed <= h.capacity() || h.len() > template.len() {
            // one growth of the map at most, not one per header
            h.reserve(template.len() + room);
            if let Some(v) = ratelimit {
                h.insert(RATELIMIT_POLICY.clone(), self.policy.clone());
                h.insert(RATELIMIT.clone(), v);
            }
            if set.legacy {
                h.insert(X_RATELIMIT_LIMIT.clone(), self.limit.clone());
                h.insert(X_RATELIMIT_REMAINING.clone(), remaining());
                h.insert(X_RATELIMIT_RESET.clone(), reset(set, reset_secs));
            }
            return;
        }
        let mut out = template.clone();
        // The template's order: `ratelimit-policy`, `ratelimit` (IETF), then
        // `x-ratelimit-limit`, `x-ratelimit-remaining`, `x-ratelimit-reset` (legacy).
        let mut values = out.values_mut();
        if let Some(v) = ratelimit {
            values.next(); // `ratelimit-policy`, constant
            if let Some(slot) = values.next() {
                *slot = v;
            }
        }
        if set.legacy {
            values.next(); // `x-ratelimit-limit`, constant
            if let (Some(r), Some(t)) = (values.next(), values.next()) {
                *r = remaining();
                *t = reset(set, reset_secs);
            }
        }
        out.reserve(h.len() + room);
        // `h`'s headers of the same names as ours are replaced by ours, as `insert` would
        let mut ours = false;
        let mut last = None;
        for (name, value) in std::mem::take(h) {
            if let Some(name) = name {
                ours = template.keys().any(|k| *k == name);
                last = Some(name);
            }
            if let (false, Some(name)) = (ours, &last) {
                out.append(name, value);
            }
        }
        *h = out;
    }

    /// The `RateLimit` value: `"general";r=99;t=1`.
    #[inline]
    fn ratelimit(&self, remaining: u32, reset_secs: u64) -> HeaderValue {
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
        // policy names are validated to header-safe characters: this never fails
        HeaderValue::from_bytes(&buf[..n]).unwrap_or_else(|_| HeaderValue::from_static("\"\""))
    }

    pub(crate) fn apply_decision(&self, set: HeaderSet, d: &Decision, h: &mut HeaderMap) {
        self.apply(set, d.remaining, d.reset_secs(), h, ROOM_AFTER);
    }

    /// A refusal's headers: the policy's, and `X-RateLimit-Retry-After` when `set` asks.
    pub(crate) fn apply_refusal(
        &self,
        set: HeaderSet,
        d: &Decision,
        retry_after_secs: u64,
        h: &mut HeaderMap,
    ) {
        self.apply_decision(set, d, h);
        if set.legacy && set.retry_after {
            h.insert(X_RATELIMIT_RETRY_AFTER.clone(), number(retry_after_secs));
        }
    }
}

/// `X-RateLimit-Reset`: the seconds until the allowance is whole, or with
/// [`HeaderSet::reset_at_epoch`] the Unix time then.
#[inline]
fn reset(set: HeaderSet, secs: u64) -> HeaderValue {
    if !set.reset_epoch {
        return number(secs);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    number(now.saturating_add(secs))
}

/// Headers a stack adds to a response after the limiter's, left room for so that the map
/// grows once at most: the `content-length` axum's router sets after every layer, and a
/// trace part's `x-request-id` and `traceresponse`.
pub(crate) const ROOM_AFTER: usize = 3;

/// The headers of `set` with the constant values of a policy (`policy`, `limit`) and empty
/// ones where [`PolicyHeaders::apply`] writes a request's numbers.
fn template(set: HeaderSet, policy: &HeaderValue, limit: &HeaderValue) -> HeaderMap {
    // room for the handler's headers and a trace layer's, so that copies of the template
    // grow their index once at most
    let mut t = HeaderMap::with_capacity(12);
    let empty = || HeaderValue::from_static("");
    if set.ietf {
        t.insert(RATELIMIT_POLICY.clone(), policy.clone());
        t.insert(RATELIMIT.clone(), empty());
    }
    if set.legacy {
        t.insert(X_RATELIMIT_LIMIT.clone(), limit.clone());
        t.insert(X_RATELIMIT_REMAINING.clone(), empty());
        t.insert(X_RATELIMIT_RESET.clone(), empty());
    }
    t
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
        ph.apply(HeaderSet::ALL, 4, 180, &mut h, 0);
        assert_eq!(h["ratelimit-policy"], "\"auth\";q=5;w=900");
        assert_eq!(h["ratelimit"], "\"auth\";r=4;t=180");
        assert_eq!(h["x-ratelimit-limit"], "5");
        assert_eq!(h["x-ratelimit-remaining"], "4");
        assert_eq!(h["x-ratelimit-reset"], "180");
        // A burst below the limit: the window is the time the burst takes to come back.
        let ph = PolicyHeaders::new(&Policy::per_minute("general", 100).burst(10));
        let mut h = HeaderMap::new();
        ph.apply(HeaderSet::IETF, 10, 0, &mut h, 0);
        assert_eq!(h["ratelimit-policy"], "\"general\";q=10;w=6");
        assert!(h.get("x-ratelimit-limit").is_none());
        let mut h = HeaderMap::new();
        ph.apply(HeaderSet::LEGACY, 10, 0, &mut h, 0);
        assert!(h.get("ratelimit").is_none() && h.get("x-ratelimit-limit").is_some());
        // Interned once.
        assert!(std::ptr::eq(PolicyHeaders::new(&p), PolicyHeaders::new(&p)));
    }

    /// Both ways of adding the headers (into a copy of the template when the service's map
    /// is no larger than the template, into the map itself otherwise) give the same result:
    /// the service's headers with their values in order, ours in place of any of our names.
    #[test]
    fn the_service_keeps_its_headers_and_ours_replace_same_named_ones() {
        let ph = PolicyHeaders::new(&Policy::per_minute("general", 100));
        let plain = [
            ("content-type", "text/plain"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ];
        let clashing = [
            ("x-ratelimit-remaining", "stale"),
            ("ratelimit", "stale"),
            ("ratelimit", "stale too"),
        ];
        let extras: Vec<(String, String)> = (0..8)
            .map(|i| (format!("x-extra-{i}"), i.to_string()))
            .collect();
        let mut big: Vec<(&str, &str)> = plain.iter().chain(&clashing).copied().collect();
        big.extend(extras.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        for service in [&plain[..], &clashing[..], &big[..]] {
            for (set, room) in [HeaderSet::ALL, HeaderSet::IETF, HeaderSet::LEGACY]
                .into_iter()
                .flat_map(|set| [(set, 0), (set, 2)])
            {
                let mut h = HeaderMap::new();
                for (n, v) in service {
                    h.append(
                        HeaderName::from_bytes(n.as_bytes()).unwrap(),
                        HeaderValue::from_str(v).unwrap(),
                    );
                }
                ph.apply(set, 42, 7, &mut h, room);
                let ours: Vec<(&str, &str)> = [
                    (set.ietf, "ratelimit-policy", "\"general\";q=100;w=60"),
                    (set.ietf, "ratelimit", "\"general\";r=42;t=7"),
                    (set.legacy, "x-ratelimit-limit", "100"),
                    (set.legacy, "x-ratelimit-remaining", "42"),
                    (set.legacy, "x-ratelimit-reset", "7"),
                ]
                .into_iter()
                .filter_map(|(on, n, v)| on.then_some((n, v)))
                .collect();
                let mut expected: Vec<(&str, &str)> = service
                    .iter()
                    .filter(|(n, _)| !ours.iter().any(|(o, _)| o == n))
                    .copied()
                    .collect();
                expected.extend(&ours);
                let mut names: Vec<&str> = expected.iter().map(|(n, _)| *n).collect();
                names.dedup();
                for name in names {
                    let got: Vec<&str> = h
                        .get_all(name)
                        .iter()
                        .map(|v| v.to_str().unwrap())
                        .collect();
                    let want: Vec<&str> = expected
                        .iter()
                        .filter(|(n, _)| *n == name)
                        .map(|(_, v)| *v)
                        .collect();
                    assert_eq!(
                        got,
                        want,
                        "{name} with {set:?} over {} headers",
                        service.len()
                    );
                }
                assert_eq!(
                    h.len(),
                    expected.len(),
                    "{set:?} over {} headers",
                    service.len()
                );
            }
        }
        // The template itself is never written to: two requests, two sets of numbers.
        for (r, t) in [(1, 2), (3, 4)] {
            let mut h = HeaderMap::new();
            ph.apply(HeaderSet::ALL, r, t, &mut h, 1);
            assert_eq!(h["ratelimit"], format!("\"general\";r={r};t={t}").as_str());
            assert_eq!(h["x-ratelimit-remaining"], r.to_string().as_str());
        }
        assert_eq!(ph.templates[2]["x-ratelimit-remaining"], "");
    }
}
