//! Small text helpers the layers share.

use std::fmt::Write as _;

/// Whether `b` may stand in an HTTP token (RFC 9110 §5.6.2): a header name, a protocol
/// name, a baggage key.
///
/// ```
/// assert!(b"websocket".iter().all(|&b| garrison_core::is_token_byte(b)));
/// assert!(!garrison_core::is_token_byte(b' '));
/// ```
pub fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary: how
/// a value is cut to fit an attribute, a log field or a message without splitting a character.
///
/// ```
/// assert_eq!(garrison_core::truncate_str("héllo", 2), "h");
/// assert_eq!(garrison_core::truncate_str("héllo", 3), "hé");
/// assert_eq!(garrison_core::truncate_str("abc", 10), "abc");
/// ```
pub fn truncate_str(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

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

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Two lower-case hex digits per byte value.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut t = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = [HEX[i >> 4], HEX[i & 15]];
        i += 1;
    }
    t
};

/// Writes `bytes` as lower-case hex into the first `2 * bytes.len()` bytes of `buf` and
/// returns them as text. Panics if `buf` is shorter.
///
/// ```
/// let mut buf = [0u8; 4];
/// assert_eq!(garrison_core::hex_encode(&[0x0f, 0xa0], &mut buf), "0fa0");
/// ```
#[inline]
pub fn hex_encode<'b>(bytes: &[u8], buf: &'b mut [u8]) -> &'b str {
    hex_write(bytes, buf);
    std::str::from_utf8(&buf[..bytes.len() * 2]).unwrap_or_default()
}

/// [`hex_encode`] for a caller that needs the digits as bytes (a header value, a larger
/// buffer): the same digits, without checking again that they are text.
///
/// ```
/// let mut buf = *b"id=....";
/// garrison_core::hex_write(&[0xbe, 0xef], &mut buf[3..]);
/// assert_eq!(&buf, b"id=beef");
/// ```
#[inline]
pub fn hex_write(bytes: &[u8], buf: &mut [u8]) {
    let out = &mut buf[..bytes.len() * 2];
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Decodes lower-case hex `src` (exactly `2 * out.len()` digits) into `out`; `None` on any
/// other character or length (upper case included, as W3C Trace Context requires).
///
/// ```
/// let mut out = [0u8; 2];
/// assert_eq!(garrison_core::hex_decode(b"0fa0", &mut out), Some(()));
/// assert_eq!(out, [0x0f, 0xa0]);
/// assert_eq!(garrison_core::hex_decode(b"0FA0", &mut out), None);
/// ```
#[inline]
pub fn hex_decode(src: &[u8], out: &mut [u8]) -> Option<()> {
    if src.len() != out.len() * 2 {
        return None;
    }
    for (o, pair) in out.iter_mut().zip(src.chunks_exact(2)) {
        *o = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(())
}

#[inline]
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// An IP address as text, written in place, as its `Display` writes it (IPv4 without
/// `core::fmt`): for the client address that layers write on every request they trace or
/// forward.
///
/// ```
/// use garrison_core::IpText;
/// use std::net::IpAddr;
///
/// let ip: IpAddr = "192.0.2.10".parse().unwrap();
/// assert_eq!(IpText::new(ip).as_str(), "192.0.2.10");
/// let ip: IpAddr = "2001:db8::1".parse().unwrap();
/// assert_eq!(IpText::new(ip).as_bytes(), b"2001:db8::1");
/// ```
#[derive(Clone, Copy)]
pub struct IpText {
    buf: [u8; IpText::MAX],
    len: u8,
}

impl IpText {
    /// Room for the longest text of an IP address (an IPv6 address with an IPv4 tail, 45
    /// bytes, where `Display` writes at most 39).
    pub const MAX: usize = 45;

    /// `ip` as text.
    #[inline]
    pub fn new(ip: std::net::IpAddr) -> Self {
        let mut t = IpText {
            buf: [0; IpText::MAX],
            len: 0,
        };
        match ip {
            std::net::IpAddr::V4(v4) => {
                // at most 15 bytes: no check of the room is needed
                let mut at = 0;
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.buf[at] = b'.';
                        at += 1;
                    }
                    if o >= 100 {
                        t.buf[at] = b'0' + o / 100;
                        at += 1;
                    }
                    if o >= 10 {
                        t.buf[at] = b'0' + o / 10 % 10;
                        at += 1;
                    }
                    t.buf[at] = b'0' + o % 10;
                    at += 1;
                }
                t.len = at as u8;
            }
            std::net::IpAddr::V6(v6) => {
                let _ = write!(t, "{v6}");
            }
        }
        t
    }

    /// Appends `b`, cut at the capacity (which no address reaches).
    fn push(&mut self, b: &[u8]) {
        let at = usize::from(self.len);
        let end = (at + b.len()).min(IpText::MAX);
        self.buf[at..end].copy_from_slice(&b[..end - at]);
        self.len = end as u8;
    }

    /// The text.
    #[inline]
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// The text, as a `str`.
    #[inline]
    pub fn as_str(&self) -> &str {
        // only ASCII is ever written
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// Its length in bytes.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether it is empty (never, for an address).
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::fmt::Write for IpText {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

impl AsRef<[u8]> for IpText {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl std::fmt::Display for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for IpText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// The nodes of a Redis Cluster URL (`redis+cluster://h1:p1,h2:p2`, `rediss+cluster://…`, with
/// an optional `user:password@` for every node) as single-node URLs (`redis://h1:p1`); `None`
/// for the URL of a single server. The rate limiter's store and the Redis health check both
/// read cluster URLs this way.
///
/// ```
/// assert_eq!(
///     garrison_core::redis_cluster_nodes("redis+cluster://:pw@10.0.0.1:7000,10.0.0.2:7000"),
///     Some(vec![":pw@10.0.0.1:7000", ":pw@10.0.0.2:7000"].into_iter().map(|n| format!("redis://{n}")).collect())
/// );
/// assert_eq!(garrison_core::redis_cluster_nodes("redis://127.0.0.1:6379"), None);
/// ```
pub fn redis_cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = url.split_once("://")?;
    let single = scheme.strip_suffix("+cluster")?;
    let (auth, hosts) = match rest.rsplit_once('@') {
        Some((auth, hosts)) => (format!("{auth}@"), hosts),
        None => (String::new(), rest),
    };
    let hosts = hosts.split('/').next().unwrap_or_default();
    Some(
        hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(|h| format!("{single}://{auth}{h}"))
            .collect(),
    )
}

/// The byte a percent escape stands for: `rest` is what follows the `%` (`2Fab` → `0x2F`),
/// hex digits of either case; `None` when its first two bytes are not both hex digits.
///
/// ```
/// assert_eq!(garrison_core::percent_escape(b"2f/x"), Some(b'/'));
/// assert_eq!(garrison_core::percent_escape(b"C3"), Some(0xC3));
/// assert_eq!(garrison_core::percent_escape(b"zz"), None);
/// assert_eq!(garrison_core::percent_escape(b"4"), None);
/// ```
#[inline]
pub fn percent_escape(rest: &[u8]) -> Option<u8> {
    let digit = |c: &u8| (*c as char).to_digit(16);
    let (hi, lo) = (digit(rest.first()?)?, digit(rest.get(1)?)?);
    Some((hi << 4 | lo) as u8)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::rfc3339;

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(UNIX_EPOCH, 3), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_338_000_123);
        assert_eq!(rfc3339(t, 3), "2026-11-22T09:00:00.123Z");
        assert_eq!(rfc3339(t, 6), "2026-11-22T09:00:00.123000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339(leap, 3), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn addresses_are_written_as_their_display_has_them() {
        use std::net::{IpAddr, Ipv4Addr};

        use super::IpText;

        for ip in [
            "0.0.0.0",
            "9.10.99.100",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "2001:db8::ff00:42:8329",
            "::ffff:192.0.2.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255",
        ] {
            let addr: IpAddr = ip.parse().unwrap();
            let text = IpText::new(addr);
            assert_eq!(text.as_str(), addr.to_string());
            assert_eq!(text.len(), addr.to_string().len());
        }
        // every octet value in every place
        for o in 0..=255u8 {
            for addr in [[o, 0, 0, 0], [1, o, 2, 3], [10, 0, o, 99], [250, 9, 100, o]] {
                let addr = IpAddr::V4(Ipv4Addr::from(addr));
                assert_eq!(IpText::new(addr).as_str(), addr.to_string());
            }
        }
    }
}
