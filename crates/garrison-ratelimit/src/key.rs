//! Which bucket a request counts against.

use std::borrow::Cow;
use std::fmt;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;

use foldhash::fast::FixedState;
use garrison_core::{normalize_ip, TrustedProxies};
use http::{Extensions, HeaderName, Request};

/// The bucket a request counts against: a 64-bit keyed hash of the key material, so that a
/// tracked client costs the same whatever its key, and API keys are never kept in clear.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey(pub u64);

impl fmt::Display for ClientKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

type ExtensionGetter = fn(&Extensions) -> Option<&[u8]>;

/// The parts of a request a [`KeyExtractor`] may read.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct RequestParts<'r> {
    /// The method.
    pub method: &'r http::Method,
    /// The target.
    pub uri: &'r http::Uri,
    /// The headers.
    pub headers: &'r http::HeaderMap,
    /// The extensions (your authentication layer's identity, say).
    pub extensions: &'r Extensions,
}

/// Names the client of a request from anything in it: a JWT's subject, a tenant from two
/// headers, an API key's owner. What it returns is hashed with the limiter's seed and never
/// stored; `None` falls back to the client address, as the built-in sources do.
///
/// ```
/// use std::borrow::Cow;
/// use garrison_ratelimit::{KeyExtractor, KeySource, RequestParts};
///
/// /// The tenant, from `x-tenant`, and the region, from `x-region`: one bucket per pair.
/// struct TenantRegion;
/// impl KeyExtractor for TenantRegion {
///     fn extract<'r>(&self, req: RequestParts<'r>) -> Option<Cow<'r, [u8]>> {
///         let tenant = req.headers.get("x-tenant")?.as_bytes();
///         let region = req.headers.get("x-region").map_or(&b"-"[..], |v| v.as_bytes());
///         Some(Cow::Owned([tenant, b"/", region].concat()))
///     }
/// }
/// let source = KeySource::custom(TenantRegion);
/// # let _ = source;
/// ```
pub trait KeyExtractor: Send + Sync + 'static {
    /// The key material of `req`'s client, or `None` for the client address.
    fn extract<'r>(&self, req: RequestParts<'r>) -> Option<Cow<'r, [u8]>>;
}

/// Where the client key of a request comes from.
///
/// Every source but [`Global`](KeySource::Global) falls back to the client address when the
/// request lacks what it names (no header, no identity), and requests that carry no peer
/// address at all share one bucket.
#[derive(Clone)]
pub enum KeySource {
    /// The client address: the peer address, or the forwarding header when the peer is a
    /// trusted proxy (see [`TrustedProxies`]). IPv6 clients are keyed by their network
    /// prefix ([`ipv6_prefix`](crate::RateLimitBuilder::ipv6_prefix), /64 by default): one
    /// subscriber gets a whole /64, so keying single IPv6 addresses is no limit at all.
    ClientIp,
    /// A request header such as an API key. Its value is hashed; it is never stored or logged.
    Header(HeaderName),
    /// An identity your authentication layer put into the request extensions (see
    /// [`KeySource::extension`]).
    Extension(ExtensionGetter),
    /// One bucket for every request.
    Global,
    /// Your own [`KeyExtractor`] (see [`KeySource::custom`]).
    Custom(Arc<dyn KeyExtractor>),
}

impl KeySource {
    /// Keys requests by the value of the extension `T` (bytes such as a user id), which your
    /// authentication layer inserts before the rate limiter runs.
    ///
    /// ```
    /// use garrison_ratelimit::KeySource;
    ///
    /// #[derive(Clone)]
    /// struct UserId(String);
    /// impl AsRef<[u8]> for UserId {
    ///     fn as_ref(&self) -> &[u8] { self.0.as_bytes() }
    /// }
    /// let source = KeySource::extension::<UserId>();
    /// # let _ = source;
    /// ```
    pub fn extension<T>() -> Self
    where
        T: AsRef<[u8]> + Clone + Send + Sync + 'static,
    {
        fn get<T: AsRef<[u8]> + Clone + Send + Sync + 'static>(e: &Extensions) -> Option<&[u8]> {
            e.get::<T>().map(AsRef::as_ref)
        }
        KeySource::Extension(get::<T>)
    }

    /// Keys requests by what `extractor` names.
    pub fn custom(extractor: impl KeyExtractor) -> Self {
        KeySource::Custom(Arc::new(extractor))
    }

    /// Keys requests by a header, e.g. `KeySource::header("x-api-key")`.
    ///
    /// # Panics
    /// When `name` is not a valid header name.
    pub fn header(name: &str) -> Self {
        KeySource::Header(HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"))
    }

    fn tag(&self) -> u8 {
        match self {
            KeySource::ClientIp => 1,
            KeySource::Header(_) => 2,
            KeySource::Extension(_) => 3,
            KeySource::Global => 4,
            KeySource::Custom(_) => 5,
        }
    }
}

impl fmt::Debug for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::ClientIp => f.write_str("ClientIp"),
            KeySource::Header(h) => f.debug_tuple("Header").field(h).finish(),
            KeySource::Extension(_) => f.write_str("Extension"),
            KeySource::Global => f.write_str("Global"),
            KeySource::Custom(_) => f.write_str("Custom"),
        }
    }
}

/// Turns key material into [`ClientKey`]s with a seeded hash.
#[derive(Clone, Debug)]
pub(crate) struct KeyHasher {
    state: FixedState,
    ipv6_prefix: u8,
}

/// The key of requests that carry no peer address.
const TAG_UNKNOWN: u8 = 0;

impl KeyHasher {
    pub(crate) fn new(seed: u64, ipv6_prefix: u8) -> Self {
        Self {
            state: FixedState::with_seed(seed),
            ipv6_prefix: ipv6_prefix.min(128),
        }
    }

    #[inline]
    pub(crate) fn bytes(&self, tag: u8, bytes: &[u8]) -> ClientKey {
        ClientKey(self.state.hash_one((tag, bytes)))
    }

    #[inline]
    pub(crate) fn ip(&self, ip: IpAddr) -> ClientKey {
        let (v4, bits) = match normalize_ip(ip) {
            IpAddr::V4(v4) => (true, u128::from(u32::from(v4))),
            IpAddr::V6(v6) => {
                let keep = u32::from(self.ipv6_prefix);
                let mask = if keep == 0 {
                    0
                } else {
                    u128::MAX << (128 - keep)
                };
                (false, u128::from(v6) & mask)
            }
        };
        ClientKey(self.state.hash_one((KeySource::ClientIp.tag(), v4, bits)))
    }

    pub(crate) fn global(&self) -> ClientKey {
        self.bytes(KeySource::Global.tag(), b"")
    }

    /// The key of `req` under `source`.
    #[inline]
    pub(crate) fn key<B>(
        &self,
        source: &KeySource,
        proxies: &TrustedProxies,
        req: &Request<B>,
    ) -> ClientKey {
        match source {
            KeySource::Global => return self.global(),
            KeySource::Header(name) => {
                if let Some(v) = req.headers().get(name) {
                    return self.bytes(source.tag(), v.as_bytes());
                }
            }
            KeySource::Extension(get) => {
                if let Some(v) = get(req.extensions()) {
                    return self.bytes(source.tag(), v);
                }
            }
            KeySource::Custom(extractor) => {
                let parts = RequestParts {
                    method: req.method(),
                    uri: req.uri(),
                    headers: req.headers(),
                    extensions: req.extensions(),
                };
                if let Some(v) = extractor.extract(parts) {
                    return self.bytes(source.tag(), &v);
                }
            }
            KeySource::ClientIp => {}
        }
        match proxies.client_ip(req) {
            Some(ip) => self.ip(ip),
            None => self.bytes(TAG_UNKNOWN, b""),
        }
    }

    /// The key a request would get whose `source` value is `value` (for exemptions).
    pub(crate) fn value_key(&self, source: &KeySource, value: &[u8]) -> ClientKey {
        self.bytes(source.tag(), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use garrison_core::PeerAddr;

    fn req(peer: &str) -> Request<()> {
        let mut r = Request::get("/").body(()).unwrap();
        r.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        r
    }

    #[test]
    fn ipv6_clients_share_their_prefix() {
        let h = KeyHasher::new(7, 64);
        let none = TrustedProxies::none();
        let a = h.key(&KeySource::ClientIp, &none, &req("[2001:db8:1:2::1]:1"));
        let b = h.key(
            &KeySource::ClientIp,
            &none,
            &req("[2001:db8:1:2:ffff::9]:1"),
        );
        let c = h.key(&KeySource::ClientIp, &none, &req("[2001:db8:1:3::1]:1"));
        assert_eq!(a, b);
        assert_ne!(a, c);
        let full = KeyHasher::new(7, 128);
        assert_ne!(
            full.key(&KeySource::ClientIp, &none, &req("[2001:db8:1:2::1]:1")),
            full.key(&KeySource::ClientIp, &none, &req("[2001:db8:1:2::2]:1"))
        );
        // IPv4-mapped addresses are the IPv4 client.
        assert_eq!(
            h.key(&KeySource::ClientIp, &none, &req("[::ffff:192.0.2.1]:1")),
            h.key(&KeySource::ClientIp, &none, &req("192.0.2.1:1"))
        );
    }

    #[test]
    fn header_and_extension_keys_fall_back_to_the_address() {
        let h = KeyHasher::new(7, 64);
        let none = TrustedProxies::none();
        let src = KeySource::header("x-api-key");
        let mut with = req("192.0.2.1:1");
        with.headers_mut()
            .insert("x-api-key", "k1".parse().unwrap());
        assert_eq!(h.key(&src, &none, &with), h.value_key(&src, b"k1"));
        assert_eq!(
            h.key(&src, &none, &req("192.0.2.1:1")),
            h.key(&KeySource::ClientIp, &none, &req("192.0.2.1:1"))
        );
        // The same bytes from another source are another key.
        assert_ne!(
            h.value_key(&src, b"k1"),
            h.value_key(&KeySource::extension::<String>(), b"k1")
        );
        // Different seeds, different keys.
        assert_ne!(
            KeyHasher::new(8, 64).value_key(&src, b"k1"),
            h.value_key(&src, b"k1")
        );
    }
}
