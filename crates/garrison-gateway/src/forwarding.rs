//! The headers a proxy rewrites: hop-by-hop headers removed (RFC 9110 §7.6.1), and
//! `Forwarded` (RFC 7239) with the `X-Forwarded-*` family added or appended to.

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use garrison::garrison_core::IpText;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub(crate) static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(crate) static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// The headers that say where a request came from: from an untrusted peer, dropped and then
/// written again from what the gateway saw.
pub(crate) fn is_forwarding(name: &HeaderName) -> bool {
    let n = name.as_str();
    match n.as_bytes().first() {
        Some(b'x') => n.starts_with("x-forwarded-") || n == "x-real-ip",
        Some(b'f') => n == "forwarded",
        _ => false,
    }
}

/// Drops the forwarding headers a client sent (one look at each name when there are none).
pub(crate) fn strip_forwarding(h: &mut HeaderMap) {
    if !h.keys().any(is_forwarding) {
        return;
    }
    for name in [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_FORWARDED_PREFIX,
        &X_FORWARDED_PORT,
        &X_REAL_IP,
        &header::FORWARDED,
    ] {
        h.remove(name);
    }
}

/// Joins the lines of a list header into one (`a, b`), so that appending to it keeps them
/// all.
pub(crate) fn join_lines(h: &mut HeaderMap, name: &HeaderName) {
    let mut lines = h.get_all(name).iter();
    let (Some(first), Some(_)) = (lines.next(), lines.next()) else {
        return;
    };
    let mut b = BytesMut::from(first.as_bytes());
    for line in h.get_all(name).iter().skip(1) {
        b.put_slice(b", ");
        b.put_slice(line.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(b.freeze()) {
        h.insert(name, v);
    }
}

/// The headers that belong to one connection (RFC 9110 §7.6.1), whatever `Connection`
/// names besides.
pub(crate) fn is_hop_by_hop(n: &HeaderName) -> bool {
    n == header::CONNECTION
        || n == header::TRANSFER_ENCODING
        || n == header::TE
        || n == header::TRAILER
        || n == header::UPGRADE
        || n == header::PROXY_AUTHENTICATE
        || n == header::PROXY_AUTHORIZATION
        || n == KEEP_ALIVE
        || n == PROXY_CONNECTION
}

/// Headers that belong to one connection (RFC 9110 §7.6.1), and those the `Connection`
/// header names: never forwarded.
pub(crate) fn remove_hop_by_hop(h: &mut HeaderMap) {
    // most messages have none: one look at each name instead of a removal of each kind
    if h.keys().any(is_hop_by_hop) {
        strip_hop_by_hop(h);
    }
}

/// The options that the `Connection` headers of `h` name (header names, `close`,
/// `upgrade`), trimmed.
pub(crate) fn connection_tokens(h: &HeaderMap) -> impl Iterator<Item = &str> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
}

/// [`remove_hop_by_hop`] for a map known to hold one.
pub(crate) fn strip_hop_by_hop(h: &mut HeaderMap) {
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = connection_tokens(h)
            .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
        h.remove(header::CONNECTION);
    }
    for n in [
        &KEEP_ALIVE,
        &PROXY_CONNECTION,
        &header::PROXY_AUTHENTICATE,
        &header::PROXY_AUTHORIZATION,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        h.remove(n);
    }
    // `TE: trailers` is the one TE value that may cross (gRPC needs it)
    if h.get(header::TE).is_some_and(|v| v != "trailers") {
        h.remove(header::TE);
    }
}

/// A header value written in place: one buffer, handed to the value without a copy.
fn value_of(b: BytesMut) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(b.freeze()).ok()
}

/// Text written in place made a header value whole: one allocation, and the value's clones
/// (the pool's copy of a request it may send again) count references instead of allocating,
/// as a value copied out of a buffer would on its first clone.
fn owned_value(text: impl AsRef<[u8]> + Send + 'static) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(Bytes::from_owner(text)).ok()
}

/// Text of at most `N` bytes, written in place: a whole `Forwarded` value, made a header
/// value whole ([`owned_value`]).
#[derive(Clone, Copy)]
struct Text<const N: usize> {
    buf: [u8; N],
    len: usize,
}

impl<const N: usize> Default for Text<N> {
    fn default() -> Self {
        Self {
            buf: [0; N],
            len: 0,
        }
    }
}

impl<const N: usize> Text<N> {
    /// Appends `b`, cut at the capacity.
    fn push(&mut self, b: &[u8]) {
        let end = (self.len + b.len()).min(N);
        self.buf[self.len..end].copy_from_slice(&b[..end - self.len]);
        self.len = end;
    }

    fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text as a header value, if it is a valid one.
    fn value(self) -> Option<HeaderValue> {
        owned_value(self)
    }
}

impl<const N: usize> AsRef<[u8]> for Text<N> {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// The longest `Forwarded` value written in place ([`Text`]); a longer one (a long host, or
/// the caller's own `Forwarded` before ours) is written into an allocated buffer.
const FORWARDED_IN_PLACE: usize = 160;

/// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host` and `Forwarded`
/// (appended, RFC 7239).
pub(crate) fn add_forwarded(
    h: &mut HeaderMap,
    peer: Option<SocketAddr>,
    host: Option<&HeaderValue>,
) {
    use http::header::Entry;
    // each name is hashed once: looked up and set through its entry
    let ip = peer.map(|p| (p.is_ipv6(), IpText::new(p.ip())));
    if let Some((_, ip)) = &ip {
        match h.entry(&X_FORWARDED_FOR) {
            Entry::Occupied(mut e) => {
                let prev = e.get().as_bytes();
                let mut b = BytesMut::with_capacity(prev.len() + 2 + ip.len());
                b.put_slice(prev);
                b.put_slice(b", ");
                b.put_slice(ip.as_bytes());
                if let Some(v) = value_of(b) {
                    e.insert(v);
                }
            }
            Entry::Vacant(e) => {
                if let Some(v) = owned_value(*ip) {
                    e.insert(v);
                }
            }
        }
    }
    if let Entry::Vacant(e) = h.entry(&X_FORWARDED_PROTO) {
        e.insert(HeaderValue::from_static("http"));
    }
    if let Some(host) = host {
        if let Entry::Vacant(e) = h.entry(&X_FORWARDED_HOST) {
            e.insert(host.clone());
        }
    }
    let host = host.map(HeaderValue::as_bytes);
    let forwarded = h.entry(header::FORWARDED);
    let prev = match &forwarded {
        Entry::Occupied(e) => Some(e.get().as_bytes()),
        Entry::Vacant(_) => None,
    };
    let len = prev.map_or(0, |p| p.len() + 2) + 64 + host.map_or(0, |h| h.len() + 8);
    let value = if len <= FORWARDED_IN_PLACE {
        let mut t = Text::<FORWARDED_IN_PLACE>::default();
        forwarded_value(&mut |b| t.push(b), prev, ip.as_ref(), host);
        t.value()
    } else {
        let mut b = BytesMut::with_capacity(len);
        forwarded_value(&mut |s| b.put_slice(s), prev, ip.as_ref(), host);
        value_of(b)
    };
    if let Some(v) = value {
        match forwarded {
            Entry::Occupied(mut e) => {
                e.insert(v);
            }
            Entry::Vacant(e) => {
                e.insert(v);
            }
        }
    }
}

/// [`HOST_BYTE`]: the byte may stand in a `host=` token as written.
const TOKEN: u8 = 1;
/// [`HOST_BYTE`]: the byte may stand in a quoted string without an escape.
const QUOTABLE: u8 = 2;

/// What each byte of a host may be in `Forwarded`: [`TOKEN`] (letters, digits and `.-_~`),
/// [`QUOTABLE`] (printable ASCII but `"` and `\`), both, or neither.
static HOST_BYTE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0usize;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'_' | b'~') {
            t[b] |= TOKEN;
        }
        if c >= 0x20 && c < 0x7f && c != b'"' && c != b'\\' {
            t[b] |= QUOTABLE;
        }
        b += 1;
    }
    t
};

/// Writes the `Forwarded` value through `put`: `prev` (the caller's own, if any), then ours,
/// for the client `ip` (`true`: IPv6) and `host`.
fn forwarded_value(
    put: &mut impl FnMut(&[u8]),
    prev: Option<&[u8]>,
    ip: Option<&(bool, IpText)>,
    host: Option<&[u8]>,
) {
    if let Some(prev) = prev {
        put(prev);
        put(b", ");
    }
    match &ip {
        Some((false, ip)) => {
            put(b"for=");
            put(ip.as_bytes());
            put(b";");
        }
        Some((true, ip)) => {
            put(b"for=\"[");
            put(ip.as_bytes());
            put(b"]\";");
        }
        None => {}
    }
    if let Some(host) = host {
        // a token when it can be, else a quoted string (RFC 7239 §4): both told in one pass
        let class = host
            .iter()
            .fold(TOKEN | QUOTABLE, |c, &b| c & HOST_BYTE[b as usize]);
        if class & TOKEN != 0 {
            put(b"host=");
            put(host);
            put(b";");
        } else if class & QUOTABLE != 0 {
            put(b"host=\"");
            put(host);
            put(b"\";");
        }
    }
    put(b"proto=http");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_and_those_connection_names_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
        let mut grpc = HeaderMap::new();
        grpc.insert(header::TE, HeaderValue::from_static("trailers"));
        remove_hop_by_hop(&mut grpc);
        assert_eq!(grpc[header::TE], "trailers");
    }

    #[test]
    fn forwarded_headers_are_appended_to_what_came_in() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
        h.insert(
            header::FORWARDED,
            HeaderValue::from_static("for=203.0.113.9"),
        );
        let host = HeaderValue::from_static("shop.example:8080");
        add_forwarded(&mut h, Some("10.1.2.3:5555".parse().unwrap()), Some(&host));
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "shop.example:8080");
        assert_eq!(
            h[header::FORWARDED],
            "for=203.0.113.9, for=10.1.2.3;host=\"shop.example:8080\";proto=http"
        );
        let mut v6 = HeaderMap::new();
        add_forwarded(&mut v6, Some("[2001:db8::1]:80".parse().unwrap()), None);
        assert_eq!(v6[header::FORWARDED], "for=\"[2001:db8::1]\";proto=http");
        // a host as a token, as a quoted string, or left out when it would need escapes
        for (host, want) in [
            ("shop.example", "for=10.1.2.3;host=shop.example;proto=http"),
            ("a_b-c~d.e", "for=10.1.2.3;host=a_b-c~d.e;proto=http"),
            ("[::1]:80", "for=10.1.2.3;host=\"[::1]:80\";proto=http"),
            ("a b", "for=10.1.2.3;host=\"a b\";proto=http"),
            ("a\"b", "for=10.1.2.3;proto=http"),
            ("a\\b", "for=10.1.2.3;proto=http"),
        ] {
            let mut h = HeaderMap::new();
            let v = HeaderValue::from_str(host).unwrap();
            add_forwarded(&mut h, Some("10.1.2.3:1".parse().unwrap()), Some(&v));
            assert_eq!(h[header::FORWARDED], want, "host {host}");
        }
    }

    #[test]
    fn forwarded_values_are_whole_in_place_and_past_it() {
        // the longest address text, and hosts on both sides of what is written in place
        let ip = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
        let peer = SocketAddr::new(ip.parse().unwrap(), 80);
        for prev in [None, Some("for=192.0.2.1;proto=https")] {
            for n in [0, 1, 50, 80, 87, 88, 89, 90, 120, 300] {
                let name = "h".repeat(n);
                let mut h = HeaderMap::new();
                if let Some(p) = prev {
                    h.insert(header::FORWARDED, HeaderValue::from_static(p));
                }
                let host = HeaderValue::from_str(&name).unwrap();
                add_forwarded(&mut h, Some(peer), (n > 0).then_some(&host));
                let ours = match n {
                    0 => format!("for=\"[{ip}]\";proto=http"),
                    _ => format!("for=\"[{ip}]\";host={name};proto=http"),
                };
                let want = match prev {
                    Some(p) => format!("{p}, {ours}"),
                    None => ours,
                };
                assert_eq!(h[header::FORWARDED], want.as_str(), "host of {n}, {prev:?}");
                assert_eq!(h["x-forwarded-for"], ip);
            }
        }
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_is_left_alone() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("shop.example"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        let before = h.clone();
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
        h.insert(KEEP_ALIVE.clone(), HeaderValue::from_static("timeout=5"));
        remove_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }
}
