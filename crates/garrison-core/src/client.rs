//! The client address of a request, believing forwarding headers only from trusted proxies.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use http::{header, HeaderMap, Request};

/// The peer address of a connection, for services that are not served by axum.
///
/// axum puts `ConnectInfo<SocketAddr>` into the request extensions when the router is served
/// with `into_make_service_with_connect_info`; a plain hyper service inserts this instead.
/// [`TrustedProxies::client_ip`] reads either.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PeerAddr(pub SocketAddr);

/// Whether the peer of `req` ([`peer_addr`]) is inside one of `networks`; `false` when the
/// peer is not known.
pub fn peer_within<B>(req: &Request<B>, networks: &[IpNet]) -> bool {
    peer_addr(req).is_some_and(|a| networks.iter().any(|n| n.contains(a.ip())))
}

/// The peer address of a request: [`PeerAddr`], else axum's `ConnectInfo<SocketAddr>`.
pub fn peer_addr<B>(req: &Request<B>) -> Option<SocketAddr> {
    let ext = req.extensions();
    if let Some(p) = ext.get::<PeerAddr>() {
        return Some(p.0);
    }
    #[cfg(feature = "axum")]
    if let Some(c) = ext.get::<axum::extract::ConnectInfo<SocketAddr>>() {
        return Some(c.0);
    }
    None
}

/// An IP network in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`; a bare address is a
/// single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpNet {
    addr: u128,
    mask: u128,
    prefix: u8,
    v4: bool,
}

impl IpNet {
    /// Whether `ip` is inside this network. IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`)
    /// match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = normalize(ip);
        if ip.is_ipv4() != self.v4 {
            return false;
        }
        bits(ip) & self.mask == self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix
    }
}

/// A text that is not an IP network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpNetError {
    input: String,
    reason: &'static str,
}

impl fmt::Display for IpNetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not an IP network: {}", self.input, self.reason)
    }
}

impl std::error::Error for IpNetError {}

impl FromStr for IpNet {
    type Err = IpNetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| IpNetError {
            input: s.chars().take(64).collect(),
            reason,
        };
        let (ip, prefix) = match s.trim().split_once('/') {
            Some((ip, p)) => (ip, Some(p)),
            None => (s.trim(), None),
        };
        let ip = normalize(
            ip.parse::<IpAddr>()
                .map_err(|_| err("the address does not parse"))?,
        );
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| err("the prefix length is out of range"))?,
        };
        let mask = mask(ip.is_ipv4(), prefix);
        if bits(ip) & !mask != 0 {
            return Err(err("host bits are set below the prefix"));
        }
        Ok(IpNet {
            addr: bits(ip),
            mask,
            prefix,
            v4: ip.is_ipv4(),
        })
    }
}

fn mask(v4: bool, prefix: u8) -> u128 {
    let width = if v4 { 32 } else { 128 };
    if prefix == 0 {
        0
    } else {
        let ones = u128::MAX << (width - u32::from(prefix));
        if v4 {
            ones & u128::from(u32::MAX)
        } else {
            ones
        }
    }
}

fn bits(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) as the IPv4 address it carries.
pub fn normalize(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Which forwarding header the trusted proxies write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, most load balancers).
    #[default]
    XForwardedFor,
    /// RFC 7239 `Forwarded: for=client;proto=https, for="[2001:db8::1]:443"`.
    Forwarded,
}

/// The most hops of a forwarding header that are examined; entries further left are ignored.
pub const MAX_FORWARDED_HOPS: usize = 32;

/// Decides which address a request comes from.
///
/// The peer address of the connection is the client, unless the peer is one of the trusted
/// proxies: then the forwarding header the proxies write is read from right to left, skipping
/// further trusted proxies, and the first address not among them is the client. A header sent
/// by anybody else changes nothing, so a client cannot choose its own key by sending
/// `X-Forwarded-For`. An entry that does not parse stops the walk at the last address that did
/// (the proxy that wrote it); at most [`MAX_FORWARDED_HOPS`] entries are examined.
///
/// ```
/// use garrison_core::{PeerAddr, TrustedProxies};
/// use http::Request;
///
/// let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
///
/// // From the load balancer: the header is believed.
/// let mut req = Request::get("/").header("x-forwarded-for", "198.51.100.7, 10.1.2.3").body(()).unwrap();
/// req.extensions_mut().insert(PeerAddr("10.0.0.1:5000".parse().unwrap()));
/// assert_eq!(proxies.client_ip(&req), Some("198.51.100.7".parse().unwrap()));
///
/// // From anybody else: the header is ignored.
/// let mut req = Request::get("/").header("x-forwarded-for", "1.2.3.4").body(()).unwrap();
/// req.extensions_mut().insert(PeerAddr("203.0.113.9:5000".parse().unwrap()));
/// assert_eq!(proxies.client_ip(&req), Some("203.0.113.9".parse().unwrap()));
/// ```
#[derive(Clone, Debug, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
    header: ForwardedHeader,
}

impl TrustedProxies {
    /// Trusts no proxy: the client is always the peer address.
    pub fn none() -> Self {
        Self::default()
    }

    /// Trusts the given networks (CIDR notation or single addresses).
    pub fn new<I, S>(cidrs: I) -> Result<Self, IpNetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nets = cidrs
            .into_iter()
            .map(|s| s.as_ref().parse())
            .collect::<Result<_, _>>()?;
        Ok(Self {
            nets,
            header: ForwardedHeader::default(),
        })
    }

    /// Reads `header` from trusted proxies (default: `X-Forwarded-For`).
    pub fn header(mut self, header: ForwardedHeader) -> Self {
        self.header = header;
        self
    }

    /// The trusted networks.
    pub fn networks(&self) -> &[IpNet] {
        &self.nets
    }

    /// Whether `ip` is a trusted proxy.
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(ip))
    }

    /// The client address of `req`, or `None` when the request carries no peer address.
    pub fn client_ip<B>(&self, req: &Request<B>) -> Option<IpAddr> {
        let peer = normalize(peer_addr(req)?.ip());
        Some(self.resolve(peer, req.headers()))
    }

    /// The client address for a connection from `peer` that sent `headers`.
    pub fn resolve(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = normalize(peer);
        if self.nets.is_empty() || !self.is_trusted(peer) {
            return peer;
        }
        let mut client = peer;
        let mut hops = 0;
        let name = match self.header {
            ForwardedHeader::XForwardedFor => "x-forwarded-for",
            ForwardedHeader::Forwarded => header::FORWARDED.as_str(),
        };
        // Several header lines form one list, the last line holding the nearest hops.
        for line in headers.get_all(name).iter().rev() {
            let Ok(line) = line.to_str() else {
                return client;
            };
            for entry in line.rsplit(',') {
                hops += 1;
                if hops > MAX_FORWARDED_HOPS {
                    return client;
                }
                let parsed = match self.header {
                    ForwardedHeader::XForwardedFor => parse_xff_entry(entry),
                    ForwardedHeader::Forwarded => parse_forwarded_entry(entry),
                };
                let Some(ip) = parsed else {
                    return client;
                };
                client = normalize(ip);
                if !self.is_trusted(client) {
                    return client;
                }
            }
        }
        client
    }
}

fn parse_xff_entry(entry: &str) -> Option<IpAddr> {
    let e = entry.trim();
    if let Ok(ip) = e.parse::<IpAddr>() {
        return Some(ip);
    }
    // Some proxies write `ip:port` or `[v6]:port`.
    e.parse::<SocketAddr>().ok().map(|s| s.ip())
}

fn parse_forwarded_entry(entry: &str) -> Option<IpAddr> {
    let value = entry.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
    })?;
    let v = value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(value);
    if let Some(rest) = v.strip_prefix('[') {
        let (ip, _) = rest.split_once(']')?;
        return ip.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = v.parse::<IpAddr>() {
        return Some(ip);
    }
    v.parse::<SocketAddr>().ok().map(|s| s.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(peer: &str, name: &str, values: &[&str]) -> Request<()> {
        let mut b = Request::get("/");
        for v in values {
            b = b.header(name, *v);
        }
        let mut r = b.body(()).unwrap();
        r.extensions_mut().insert(PeerAddr(peer.parse().unwrap()));
        r
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let n: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(n.contains(ip("10.255.0.1")));
        assert!(n.contains(ip("::ffff:10.1.1.1")));
        assert!(!n.contains(ip("11.0.0.1")));
        assert!(!n.contains(ip("::1")));
        let v6: IpNet = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")));
        assert!(!v6.contains(ip("2001:db9::5")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let host: IpNet = "192.0.2.1".parse().unwrap();
        assert!(host.contains(ip("192.0.2.1")) && !host.contains(ip("192.0.2.2")));
        for bad in [
            "10.0.0.1/8",
            "10.0.0.0/33",
            "nonsense",
            "::/129",
            "10.0.0.0/x",
        ] {
            let e = bad.parse::<IpNet>().unwrap_err();
            assert!(e.to_string().contains(bad), "{e}");
        }
    }

    #[test]
    fn untrusted_peer_headers_are_ignored() {
        let p = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        let r = req("203.0.113.9:1", "x-forwarded-for", &["1.2.3.4"]);
        assert_eq!(p.client_ip(&r), Some(ip("203.0.113.9")));
        let none = TrustedProxies::none();
        let r = req("10.0.0.1:1", "x-forwarded-for", &["1.2.3.4"]);
        assert_eq!(none.client_ip(&r), Some(ip("10.0.0.1")));
    }

    #[test]
    fn walks_right_to_left_over_trusted_hops() {
        let p = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        // The client put a spoofed entry first; the proxies appended the real hops.
        let r = req(
            "10.0.0.1:1",
            "x-forwarded-for",
            &["6.6.6.6, 198.51.100.7", "10.9.9.9"],
        );
        assert_eq!(p.client_ip(&r), Some(ip("198.51.100.7")));
        // A malformed entry stops the walk at the last good hop.
        let r = req("10.0.0.1:1", "x-forwarded-for", &["garbage, 10.2.2.2"]);
        assert_eq!(p.client_ip(&r), Some(ip("10.2.2.2")));
        // Ports are tolerated.
        let r = req("10.0.0.1:1", "x-forwarded-for", &["[2001:db8::1]:443"]);
        assert_eq!(p.client_ip(&r), Some(ip("2001:db8::1")));
    }

    #[test]
    fn huge_headers_are_bounded() {
        let p = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
        let long = vec!["10.0.0.2"; 10_000].join(",");
        let r = req("10.0.0.1:1", "x-forwarded-for", &[&long]);
        assert_eq!(p.client_ip(&r), Some(ip("10.0.0.2")));
    }

    #[test]
    fn forwarded_header() {
        let p = TrustedProxies::new(["10.0.0.0/8"])
            .unwrap()
            .header(ForwardedHeader::Forwarded);
        let r = req(
            "10.0.0.1:1",
            "forwarded",
            &["for=6.6.6.6, for=\"[2001:db8::7]:4711\";proto=https"],
        );
        assert_eq!(p.client_ip(&r), Some(ip("2001:db8::7")));
        let r = req("10.0.0.1:1", "forwarded", &["for=_hidden;by=10.0.0.1"]);
        assert_eq!(p.client_ip(&r), Some(ip("10.0.0.1")));
        // The proxies write Forwarded: an X-Forwarded-For from the client is not read.
        let r = req("10.0.0.1:1", "x-forwarded-for", &["6.6.6.6"]);
        assert_eq!(p.client_ip(&r), Some(ip("10.0.0.1")));
    }

    #[test]
    fn no_peer_means_no_client() {
        let p = TrustedProxies::none();
        assert_eq!(p.client_ip(&Request::get("/").body(()).unwrap()), None);
    }
}
