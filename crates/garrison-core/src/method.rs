use http::Method;

/// An HTTP method as a metric or span label.
///
/// The nine methods of RFC 9110 and RFC 5789 keep their names; every other method becomes
/// `_OTHER`, as the OpenTelemetry HTTP conventions ask, so a client that invents methods cannot
/// grow the number of series.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum MethodLabel {
    /// `GET`
    Get = 0,
    /// `HEAD`
    Head,
    /// `POST`
    Post,
    /// `PUT`
    Put,
    /// `DELETE`
    Delete,
    /// `CONNECT`
    Connect,
    /// `OPTIONS`
    Options,
    /// `TRACE`
    Trace,
    /// `PATCH`
    Patch,
    /// Any other method: `_OTHER`.
    Other,
}

impl MethodLabel {
    /// Every label, in index order.
    pub const ALL: [MethodLabel; 10] = [
        MethodLabel::Get,
        MethodLabel::Head,
        MethodLabel::Post,
        MethodLabel::Put,
        MethodLabel::Delete,
        MethodLabel::Connect,
        MethodLabel::Options,
        MethodLabel::Trace,
        MethodLabel::Patch,
        MethodLabel::Other,
    ];

    /// The number of distinct labels.
    pub const COUNT: usize = Self::ALL.len();

    /// The label of a request's method.
    #[inline]
    pub fn from_method(method: &Method) -> Self {
        match method.as_str() {
            "GET" => MethodLabel::Get,
            "HEAD" => MethodLabel::Head,
            "POST" => MethodLabel::Post,
            "PUT" => MethodLabel::Put,
            "DELETE" => MethodLabel::Delete,
            "CONNECT" => MethodLabel::Connect,
            "OPTIONS" => MethodLabel::Options,
            "TRACE" => MethodLabel::Trace,
            "PATCH" => MethodLabel::Patch,
            _ => MethodLabel::Other,
        }
    }

    /// The label text, e.g. `GET` or `_OTHER`.
    #[inline]
    pub const fn as_str(self) -> &'static str {
        match self {
            MethodLabel::Get => "GET",
            MethodLabel::Head => "HEAD",
            MethodLabel::Post => "POST",
            MethodLabel::Put => "PUT",
            MethodLabel::Delete => "DELETE",
            MethodLabel::Connect => "CONNECT",
            MethodLabel::Options => "OPTIONS",
            MethodLabel::Trace => "TRACE",
            MethodLabel::Patch => "PATCH",
            MethodLabel::Other => "_OTHER",
        }
    }

    /// A dense index in `0..MethodLabel::COUNT`, for arrays indexed by method.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The label with the given [`index`](Self::index), if any.
    pub const fn from_index(index: usize) -> Option<Self> {
        if index < Self::COUNT {
            Some(Self::ALL[index])
        } else {
            None
        }
    }
}

impl std::fmt::Display for MethodLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_methods_keep_their_names() {
        for m in [
            Method::GET,
            Method::HEAD,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::CONNECT,
            Method::OPTIONS,
            Method::TRACE,
            Method::PATCH,
        ] {
            assert_eq!(MethodLabel::from_method(&m).as_str(), m.as_str());
        }
    }

    #[test]
    fn unknown_and_lowercase_methods_are_other() {
        for raw in ["BREW", "get", "PROPFIND", "X", "QUERY"] {
            let m = Method::from_bytes(raw.as_bytes()).unwrap();
            assert_eq!(MethodLabel::from_method(&m), MethodLabel::Other, "{raw}");
        }
    }

    #[test]
    fn index_round_trips() {
        for (i, m) in MethodLabel::ALL.iter().enumerate() {
            assert_eq!(m.index(), i);
            assert_eq!(MethodLabel::from_index(i), Some(*m));
        }
        assert_eq!(MethodLabel::from_index(MethodLabel::COUNT), None);
    }
}
