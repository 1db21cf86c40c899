//! What logs must not show: named headers, query parameters and fields.

use std::fmt::Write;

use crate::PiiPattern;

/// Names whose values logs replace with `[redacted]`: header names, query parameter names and
/// log field names, compared case-insensitively; and, on request, [patterns](Self::pattern)
/// of personal data replaced wherever they appear in the text of a JSON log line. The
/// default covers credentials and the usual names of personal data: headers
/// `authorization`, `proxy-authorization`, `cookie`, `set-cookie`, `x-api-key`; query
/// parameters and fields `token`, `access_token`, `refresh_token`, `id_token`, `api_key`,
/// `apikey`, `key`, `password`, `secret`, `signature`, `code`, and `email`, `phone`,
/// `phone_number`, `mobile`, `ssn`, `card_number`, `credit_card`, `iban`, `date_of_birth`;
/// no pattern.
///
/// ```
/// use garrison_trace::{PiiPattern, Redaction};
///
/// let r = Redaction::default().pattern(PiiPattern::Email);
/// assert!(r.is_secret_param("Email"));
/// assert_eq!(r.redact_text("sent to ada@example.com"), "sent to [redacted]");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Redaction {
    headers: Vec<String>,
    params: Vec<String>,
    patterns: Vec<PiiPattern>,
}

const REDACTED: &str = "[redacted]";

impl Default for Redaction {
    fn default() -> Self {
        let own = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect();
        Self {
            headers: own(&[
                "authorization",
                "proxy-authorization",
                "cookie",
                "set-cookie",
                "x-api-key",
            ]),
            params: own(&[
                "token",
                "access_token",
                "refresh_token",
                "id_token",
                "api_key",
                "apikey",
                "key",
                "password",
                "secret",
                "signature",
                "code",
                "email",
                "phone",
                "phone_number",
                "mobile",
                "ssn",
                "card_number",
                "credit_card",
                "iban",
                "date_of_birth",
            ]),
            patterns: Vec::new(),
        }
    }
}

impl Redaction {
    /// Nothing redacted.
    pub fn none() -> Self {
        Self {
            headers: Vec::new(),
            params: Vec::new(),
            patterns: Vec::new(),
        }
    }

    /// Also replace personal data of this kind wherever it appears in a JSON log line's text
    /// (fields, the message, the access log's path).
    pub fn pattern(mut self, p: PiiPattern) -> Self {
        if !self.patterns.contains(&p) {
            self.patterns.push(p);
        }
        self
    }

    /// `text` with the personal data of this redaction's patterns replaced by `[redacted]`
    /// (borrowed when there is none).
    pub fn redact_text<'a>(&self, text: &'a str) -> std::borrow::Cow<'a, str> {
        crate::pii::replace(text, &self.patterns, REDACTED)
    }

    /// Also redact this header.
    pub fn header(mut self, name: &str) -> Self {
        self.headers.push(name.to_ascii_lowercase());
        self
    }

    /// Also redact this query parameter and log field.
    pub fn param(mut self, name: &str) -> Self {
        self.params.push(name.to_ascii_lowercase());
        self
    }

    /// Whether the header `name` is redacted.
    pub fn is_secret_header(&self, name: &str) -> bool {
        self.headers.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// Whether the query parameter or log field `name` is redacted.
    ///
    /// The name is compared percent-decoded (and with `+` as a space), as the application
    /// reads it: `%74oken` is `token`.
    pub fn is_secret_param(&self, name: &str) -> bool {
        if name.contains(['%', '+']) {
            let decoded = percent_decoded(name);
            return self.params.iter().any(|h| h.eq_ignore_ascii_case(&decoded));
        }
        self.params.iter().any(|h| h.eq_ignore_ascii_case(name))
    }

    /// The path and query of `uri`, with redacted parameter values replaced, at most 2 KiB.
    pub fn path_and_query(&self, uri: &http::Uri) -> String {
        let path = garrison_core::truncate_str(uri.path(), 2048);
        let Some(query) = uri.query() else {
            return path.to_owned();
        };
        let mut out = String::with_capacity(path.len() + query.len() + 1);
        out.push_str(path);
        out.push('?');
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((k, _)) if self.is_secret_param(k) => {
                    let _ = write!(out, "{k}={REDACTED}");
                }
                _ => out.push_str(pair),
            }
            if out.len() > 4096 {
                out.push('…');
                break;
            }
        }
        out
    }
}

/// `s` with its `%XX` escapes decoded and `+` as a space (form encoding); a malformed escape
/// is kept as it is.
fn percent_decoded(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => match garrison_core::percent_escape(&b[i + 1..]) {
                Some(c) => {
                    out.push(c);
                    i += 3;
                    continue;
                }
                None => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_secrets_are_replaced() {
        let r = Redaction::default();
        let uri: http::Uri = "/cb?code=abc&state=x&Token=t&page=2".parse().unwrap();
        assert_eq!(
            r.path_and_query(&uri),
            "/cb?code=[redacted]&state=x&Token=[redacted]&page=2"
        );
        assert!(r.is_secret_header("Authorization"));
        // a name percent-encoded is the same name to the application
        let uri: http::Uri = "/cb?%74oken=t&%63%6F%64%65=c&a%zz=1".parse().unwrap();
        assert_eq!(
            r.path_and_query(&uri),
            "/cb?%74oken=[redacted]&%63%6F%64%65=[redacted]&a%zz=1"
        );
        assert!(!Redaction::none().is_secret_header("authorization"));
        assert!(Redaction::none()
            .param("session")
            .is_secret_param("SESSION"));
    }
}
