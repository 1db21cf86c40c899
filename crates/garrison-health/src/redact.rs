//! Keeps connection strings and passwords out of health outputs.

/// Replaces every `scheme://…` token with `scheme://<redacted>`, and `password=…` pairs
/// with `password=<redacted>`: error messages of database drivers can carry either.
pub(crate) fn redact(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        // The scheme: the letters, digits, `+`, `-` and `.` just before `://`.
        let head = &rest[..i];
        let scheme_start = head
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |p| p + 1);
        out.push_str(&rest[..i + 3]);
        let tail = &rest[i + 3..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`' | ')' | '>'))
            .unwrap_or(tail.len());
        if scheme_start < i {
            out.push_str("<redacted>");
        } else {
            out.push_str(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    redact_pairs(&out)
}

fn redact_pairs(s: &str) -> String {
    let lower = s.to_ascii_lowercase();
    let mut out = String::with_capacity(s.len());
    let mut last = 0;
    let mut i = 0;
    while i < s.len() {
        let found = ["password=", "pwd="]
            .iter()
            .filter_map(|k| lower[i..].find(k).map(|p| (i + p, k.len())))
            .min();
        let Some((at, klen)) = found else { break };
        let vstart = at + klen;
        let vend = s[vstart..]
            .find(|c: char| c.is_whitespace() || matches!(c, ';' | '&' | ',' | '"' | '\''))
            .map_or(s.len(), |p| vstart + p);
        out.push_str(&s[last..vstart]);
        out.push_str("<redacted>");
        last = vend;
        i = vend.max(vstart);
    }
    out.push_str(&s[last..]);
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn urls_and_passwords_are_removed() {
        assert_eq!(
            redact("cannot reach postgres://app:hunter2@db.internal:5432/orders: refused"),
            "cannot reach postgres://<redacted> refused"
        );
        assert_eq!(
            redact("bad DSN host=db user=app password=hunter2; retry"),
            "bad DSN host=db user=app password=<redacted>; retry"
        );
        assert_eq!(redact("PWD=x"), "PWD=<redacted>");
        assert_eq!(redact("plain words, no secrets"), "plain words, no secrets");
        assert_eq!(redact("://odd"), "://odd");
    }
}
