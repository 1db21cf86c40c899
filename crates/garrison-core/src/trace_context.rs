use std::fmt;

/// A W3C trace id: 16 bytes, never all zero (so `Option<TraceId>` is 16 bytes too).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(std::num::NonZeroU128);

impl TraceId {
    /// The trace id of these bytes, or `None` for the invalid all-zero id.
    pub const fn from_bytes(bytes: [u8; 16]) -> Option<Self> {
        match std::num::NonZeroU128::new(u128::from_be_bytes(bytes)) {
            Some(v) => Some(Self(v)),
            None => None,
        }
    }

    /// Parses the 32 lowercase hex digits of a `traceparent` trace id.
    pub fn from_hex(hex: &str) -> Option<Self> {
        let mut out = [0u8; 16];
        crate::hex_decode(hex.as_bytes(), &mut out)?;
        Self::from_bytes(out)
    }

    /// The bytes.
    pub const fn to_bytes(self) -> [u8; 16] {
        self.0.get().to_be_bytes()
    }

    /// Writes the 32 lowercase hex digits into `buf` and returns them as a `str`, without
    /// allocating.
    pub fn to_hex<'b>(&self, buf: &'b mut [u8; 32]) -> &'b str {
        crate::hex_encode(&self.to_bytes(), buf)
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = [0u8; 32];
        f.write_str(self.to_hex(&mut buf))
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceId({self})")
    }
}

/// The trace a request runs under.
///
/// Garrison's trace layer inserts it into the request's extensions once it has joined or
/// started a trace; any middleware of your own may do the same. The metrics layer reads it to
/// attach exemplars, so the two crates need not depend on each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id.
    pub trace_id: TraceId,
    /// The id of the server span, when there is one.
    pub span_id: Option<[u8; 8]>,
    /// Whether the trace is sampled (exported). Exemplars link only to sampled traces.
    pub sampled: bool,
}

impl TraceContext {
    /// A sampled context with no span id.
    pub fn sampled(trace_id: TraceId) -> Self {
        Self {
            trace_id,
            span_id: None,
            sampled: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips() {
        let hex = "4bf92f3577b34da6a3ce929d0e0e4736";
        let id = TraceId::from_hex(hex).unwrap();
        assert_eq!(id.to_string(), hex);
    }

    #[test]
    fn bytes_round_trip_and_option_is_free() {
        let bytes = *b"0123456789abcdef";
        assert_eq!(TraceId::from_bytes(bytes).unwrap().to_bytes(), bytes);
        assert_eq!(std::mem::size_of::<Option<TraceId>>(), 16);
    }

    #[test]
    fn invalid_ids_are_rejected() {
        assert!(TraceId::from_hex("00000000000000000000000000000000").is_none());
        assert!(TraceId::from_hex("4BF92F3577B34DA6A3CE929D0E0E4736").is_none());
        assert!(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e473").is_none());
        assert!(TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e47zz").is_none());
        assert!(TraceId::from_hex("é bf92f3577b34da6a3ce929d0e0e473").is_none());
    }
}
