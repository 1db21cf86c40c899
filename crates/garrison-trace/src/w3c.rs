//! W3C Trace Context (`traceparent`, `tracestate`) and Baggage: strict, bounded parsers.
//!
//! Anything malformed is ignored, never an error for the request: a bad `traceparent` starts
//! a fresh trace, a bad `tracestate` or `baggage` is dropped. Sizes are capped so that a
//! hostile caller cannot make us copy or keep large headers.

use garrison_core::TraceId;
use http::header::{HeaderMap, HeaderName};
use http::HeaderValue;

/// A span id: 8 bytes, never zero.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub(crate) std::num::NonZeroU64);

impl SpanId {
    /// The id from its 8 bytes (big-endian); `None` for all zeros.
    pub const fn from_bytes(b: [u8; 8]) -> Option<Self> {
        match std::num::NonZeroU64::new(u64::from_be_bytes(b)) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// The 8 bytes.
    pub const fn to_bytes(self) -> [u8; 8] {
        self.0.get().to_be_bytes()
    }

    /// Lower-case hex into `buf`.
    pub fn to_hex<'b>(&self, buf: &'b mut [u8; 16]) -> &'b str {
        garrison_core::hex_encode(&self.to_bytes(), buf)
    }
}

impl std::fmt::Display for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.to_hex(&mut [0; 16]))
    }
}

impl std::fmt::Debug for SpanId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SpanId({self})")
    }
}

/// The caller's span, from a valid `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parent {
    /// The trace.
    pub trace_id: TraceId,
    /// The caller's span.
    pub span_id: SpanId,
    /// Whether the caller sampled the trace.
    pub sampled: bool,
}

/// Parses a `traceparent` value: version `00` exactly as specified; a higher version is read
/// for its first four fields as the spec asks (and must be longer only after a `-`); version
/// `ff`, upper-case hex, zero ids and any other shape are rejected.
pub fn parse_traceparent(v: &[u8]) -> Option<Parent> {
    if v.len() < 55 {
        return None;
    }
    let mut version = [0u8; 1];
    garrison_core::hex_decode(&v[0..2], &mut version)?;
    match version[0] {
        0xff => return None,
        0 if v.len() != 55 => return None,
        _ if v.len() > 55 && v[55] != b'-' => return None,
        _ => {}
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let mut trace = [0u8; 16];
    garrison_core::hex_decode(&v[3..35], &mut trace)?;
    let mut span = [0u8; 8];
    garrison_core::hex_decode(&v[36..52], &mut span)?;
    let mut flags = [0u8; 1];
    garrison_core::hex_decode(&v[53..55], &mut flags)?;
    Some(Parent {
        trace_id: TraceId::from_bytes(trace)?,
        span_id: SpanId::from_bytes(span)?,
        sampled: flags[0] & 1 == 1,
    })
}

/// `00-<trace>-<span>-<flags>`, 55 bytes.
pub fn format_traceparent(trace: TraceId, span: SpanId, sampled: bool) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    garrison_core::hex_write(&trace.to_bytes(), &mut out[3..35]);
    garrison_core::hex_write(&span.to_bytes(), &mut out[36..52]);
    out[53] = b'0';
    out[54] = if sampled { b'1' } else { b'0' };
    out
}

/// The largest `tracestate` kept (the spec asks vendors to propagate at least 512 bytes).
pub const MAX_TRACESTATE: usize = 512;
/// The most list members of a `tracestate`.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// The largest `baggage` kept, in bytes (the W3C Baggage limit).
pub const MAX_BAGGAGE: usize = 8192;
/// The most list members of a `baggage`.
pub const MAX_BAGGAGE_MEMBERS: usize = 64;

/// Whether `v` is a valid `tracestate` within the limits: comma-separated `key=value`
/// members (optional spaces and tabs around them), keys `[a-z0-9_\-*/@]` starting with a
/// letter or digit (at most 256 bytes), values of printable ASCII without `,` and `=` (at
/// most 256 bytes, not ending in a space), no key twice.
pub fn valid_tracestate(v: &[u8]) -> bool {
    if v.len() > MAX_TRACESTATE {
        return false;
    }
    let mut keys: [&[u8]; MAX_TRACESTATE_MEMBERS] = [&[]; MAX_TRACESTATE_MEMBERS];
    let mut n = 0;
    for member in v.split(|&c| c == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            continue; // empty members are allowed and ignored
        }
        if n == MAX_TRACESTATE_MEMBERS {
            return false;
        }
        let Some(eq) = member.iter().position(|&c| c == b'=') else {
            return false;
        };
        let (key, value) = (&member[..eq], &member[eq + 1..]);
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && (key[0].is_ascii_lowercase() || key[0].is_ascii_digit())
            && key.iter().all(|&c| {
                c.is_ascii_lowercase()
                    || c.is_ascii_digit()
                    || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
            });
        let value_ok = !value.is_empty()
            && value.len() <= 256
            && value.last() != Some(&b' ')
            && value
                .iter()
                .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=');
        if !key_ok || !value_ok || keys[..n].contains(&key) {
            return false;
        }
        keys[n] = key;
        n += 1;
    }
    true
}

/// Whether `v` is a valid `baggage` within the limits: comma-separated `key=value` members
/// with optional `;property` parts, keys HTTP tokens, values without control characters,
/// spaces, `"`, `,`, `;` or `\`.
pub fn valid_baggage(v: &[u8]) -> bool {
    if v.len() > MAX_BAGGAGE {
        return false;
    }
    let mut n = 0;
    for member in v.split(|&c| c == b',') {
        let member = member.trim_ascii();
        if member.is_empty() {
            return false;
        }
        n += 1;
        if n > MAX_BAGGAGE_MEMBERS {
            return false;
        }
        let kv = member.split(|&c| c == b';').next().unwrap_or_default();
        let Some(eq) = kv.iter().position(|&c| c == b'=') else {
            return false;
        };
        let key = kv[..eq].trim_ascii();
        let value = kv[eq + 1..].trim_ascii();
        if key.is_empty() || !key.iter().all(|&c| garrison_core::is_token_byte(c)) {
            return false;
        }
        if !value
            .iter()
            .all(|&c| (0x21..=0x7e).contains(&c) && !matches!(c, b'"' | b',' | b';' | b'\\'))
        {
            return false;
        }
    }
    true
}

/// What came in with a request: the parent span (if the `traceparent` was valid and alone),
/// and the `tracestate` and `baggage` to pass on (if valid; `tracestate` only with a parent).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Incoming {
    /// The caller's span.
    pub parent: Option<Parent>,
    /// The caller's `tracestate`, to pass on unchanged.
    pub tracestate: Option<HeaderValue>,
    /// The caller's `baggage`, to pass on unchanged (never copied to spans or logs).
    pub baggage: Option<HeaderValue>,
}

const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const BAGGAGE: HeaderName = HeaderName::from_static("baggage");

fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    // two traceparent headers are ambiguous: ignore both
    all.next().is_none().then_some(first)
}

/// Maps of at most this many names are read in one pass over their headers; larger ones
/// by a lookup of each name.
const SCAN_AT_MOST: usize = 24;

/// Whether `h` may hold a header named `name`: `false` only when it surely does not, told
/// by a pass over a small map's names (each comparison looks at the lengths first) rather
/// than a hash of `name`.
pub(crate) fn may_hold(h: &HeaderMap, name: &HeaderName) -> bool {
    if h.keys_len() > SCAN_AT_MOST {
        return true;
    }
    h.keys().any(|k| k.as_str() == name.as_str())
}

/// The values a request has of one header name: none, one, or more than one.
#[derive(Clone, Copy)]
enum Seen<'a> {
    None,
    One(&'a HeaderValue),
    Many,
}

impl<'a> Seen<'a> {
    fn add(&mut self, v: &'a HeaderValue) {
        *self = match self {
            Seen::None => Seen::One(v),
            _ => Seen::Many,
        };
    }

    fn single(self) -> Option<&'a HeaderValue> {
        match self {
            Seen::One(v) => Some(v),
            _ => None,
        }
    }
}

impl Incoming {
    /// Reads the three headers.
    pub fn extract(headers: &HeaderMap) -> Self {
        Self::extract_with(headers, None).0
    }

    /// [`extract`](Self::extract), and the first value of `also` (the request id).
    ///
    /// A request has few headers: one pass over them, comparing lengths first, costs less
    /// than hashing four names to look each up (each name of its own is hashed byte by
    /// byte). A map of many names is looked up instead.
    pub(crate) fn extract_with<'a>(
        headers: &'a HeaderMap,
        also: Option<&HeaderName>,
    ) -> (Self, Option<&'a HeaderValue>) {
        if headers.keys_len() > SCAN_AT_MOST {
            let also = also.and_then(|n| headers.get(n));
            return (Self::looked_up(headers), also);
        }
        let (mut tp, mut ts, mut bg) = (Seen::None, Seen::None, Seen::None);
        let mut first_also = None;
        for (name, value) in headers {
            // a comparison of names looks at their lengths first
            let n = name.as_str();
            if n == TRACEPARENT.as_str() {
                tp.add(value);
            } else if n == TRACESTATE.as_str() {
                ts.add(value);
            } else if n == BAGGAGE.as_str() {
                bg.add(value);
            }
            if first_also.is_none() && also == Some(name) {
                first_also = Some(value);
            }
        }
        let parent = tp.single().and_then(|v| parse_traceparent(v.as_bytes()));
        let tracestate = parent
            .and(ts.single())
            .filter(|v| valid_tracestate(v.as_bytes()))
            .cloned();
        let baggage = bg.single().filter(|v| valid_baggage(v.as_bytes())).cloned();
        let incoming = Self {
            parent,
            tracestate,
            baggage,
        };
        (incoming, first_also)
    }

    /// [`extract`](Self::extract) by a lookup of each name.
    fn looked_up(headers: &HeaderMap) -> Self {
        let Some(tp) = single(headers, &TRACEPARENT) else {
            return Self {
                parent: None,
                tracestate: None,
                baggage: baggage(headers),
            };
        };
        let parent = parse_traceparent(tp.as_bytes());
        let tracestate = parent
            .and(single(headers, &TRACESTATE))
            .filter(|v| valid_tracestate(v.as_bytes()))
            .cloned();
        Self {
            parent,
            tracestate,
            baggage: baggage(headers),
        }
    }
}

fn baggage(headers: &HeaderMap) -> Option<HeaderValue> {
    single(headers, &BAGGAGE)
        .filter(|v| valid_baggage(v.as_bytes()))
        .cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn may_hold_is_false_only_for_a_small_map_without_the_name() {
        let mut h = HeaderMap::new();
        assert!(!may_hold(&h, &TRACESTATE));
        h.insert("host", HeaderValue::from_static("a"));
        h.insert("x-tracestat", HeaderValue::from_static("a"));
        assert!(!may_hold(&h, &TRACESTATE));
        h.append("tracestate", HeaderValue::from_static("k=v"));
        assert!(may_hold(&h, &TRACESTATE));
        let mut big = HeaderMap::new();
        for i in 0..=SCAN_AT_MOST {
            big.insert(
                HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                HeaderValue::from_static("f"),
            );
        }
        assert!(may_hold(&big, &TRACESTATE), "a large map is not scanned");
    }

    #[test]
    fn one_pass_and_lookups_read_the_same_headers() {
        let tp = ("traceparent", TP);
        let bad_tp = ("traceparent", "00-zz");
        let ts = ("tracestate", "congo=t61rcWkgMzE");
        let bad_ts = ("tracestate", "=x");
        let bg = ("baggage", "userId=alice");
        let rid = ("x-correlation-id", "req-7");
        let rid2 = ("x-correlation-id", "req-8");
        let others = [("host", "a.example"), ("accept", "*/*"), ("x-trace", "1")];
        let cases: Vec<Vec<(&str, &str)>> = vec![
            vec![],
            vec![tp],
            vec![tp, tp],
            vec![bad_tp, ts],
            vec![tp, ts, bg, rid],
            vec![tp, bad_ts, bg, bg],
            vec![ts, bg],
            vec![rid, rid2, tp, ts, ts],
        ];
        let id = HeaderName::from_static("x-correlation-id");
        for case in cases {
            // with few other headers (read in one pass), and with many (looked up)
            for extra in [0, SCAN_AT_MOST + 1] {
                let mut h = HeaderMap::new();
                for (k, v) in others.iter().chain(&case) {
                    h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
                }
                for i in 0..extra {
                    h.insert(
                        HeaderName::try_from(format!("x-filler-{i}")).unwrap(),
                        HeaderValue::from_static("f"),
                    );
                }
                let (got, given) = Incoming::extract_with(&h, Some(&id));
                assert_eq!(got, Incoming::looked_up(&h), "{case:?} + {extra}");
                assert_eq!(given, h.get(&id), "{case:?} + {extra}");
                assert_eq!(Incoming::extract(&h), got);
            }
        }
        // and what they read is what the spec says
        let mut h = HeaderMap::new();
        for (k, v) in [tp, ts, bg] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let got = Incoming::extract(&h);
        assert_eq!(got.parent, parse_traceparent(TP.as_bytes()));
        assert_eq!(got.tracestate.unwrap(), ts.1);
        assert_eq!(got.baggage.unwrap(), bg.1);
        h.append(TRACEPARENT, HeaderValue::from_static(TP));
        let got = Incoming::extract(&h);
        assert_eq!(
            (got.parent, got.tracestate),
            (None, None),
            "two traceparents"
        );
    }

    #[test]
    fn traceparent_round_trips() {
        let p = parse_traceparent(TP.as_bytes()).unwrap();
        assert!(p.sampled);
        assert_eq!(p.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(p.span_id.to_string(), "00f067aa0ba902b7");
        assert_eq!(
            &format_traceparent(p.trace_id, p.span_id, true)[..],
            TP.as_bytes()
        );
    }

    #[test]
    fn traceparent_rejects_what_the_spec_rejects() {
        for bad in [
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "",
        ] {
            assert_eq!(parse_traceparent(bad.as_bytes()), None, "{bad}");
        }
        // a future version with more fields is read for the four we know
        let p = parse_traceparent(
            b"cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
        );
        assert!(p.is_some_and(|p| p.sampled));
    }

    #[test]
    fn tracestate_and_baggage_rules() {
        assert!(valid_tracestate(b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
        assert!(valid_tracestate(b"a@b=1 , ,c=2"));
        assert!(!valid_tracestate(b"Upper=1"));
        assert!(!valid_tracestate(b"a=1,a=2"));
        assert!(!valid_tracestate(b"a"));
        assert!(!valid_tracestate(&b"a=1,".repeat(200)));
        let many: Vec<u8> = (0..33)
            .flat_map(|i| format!("k{i}=v,").into_bytes())
            .collect();
        assert!(!valid_tracestate(&many));
        assert!(valid_baggage(b"userId=alice,serverNode=DF%2028;p=1"));
        assert!(!valid_baggage(b"user id=alice"));
        assert!(!valid_baggage(b"a=\"quoted\""));
        assert!(!valid_baggage(b"a=1,,b=2"));
        assert!(!valid_baggage(&b"k=v,".repeat(3000)));
    }
}
