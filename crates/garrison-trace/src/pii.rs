//! Values that look like personal data, found in free text without a regular expression.

use std::borrow::Cow;
use std::ops::Range;

/// A kind of personal data that [`Redaction::pattern`](crate::Redaction::pattern) replaces
/// wherever it appears in a log line's text (a field's value, the message, a path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PiiPattern {
    /// An e-mail address: `local@domain.tld`.
    Email,
    /// A telephone number written in international form (`+44 20 7946 0958`), with an area
    /// code in parentheses (`(555) 010-4477`), or as ten digits grouped 3-3-4
    /// (`555-010-4477`). Bare runs of digits (ids, timestamps) are left alone.
    Phone,
    /// A payment card number: 13 to 19 digits, perhaps grouped by spaces or dashes, that pass
    /// the Luhn check.
    Card,
}

impl PiiPattern {
    /// The configuration's name: `email`, `phone`, `card`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Phone => "phone",
            Self::Card => "card",
        }
    }

    /// Every pattern.
    pub const ALL: [PiiPattern; 3] = [Self::Email, Self::Phone, Self::Card];
}

impl std::str::FromStr for PiiPattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not one of \"email\", \"phone\", \"card\""))
    }
}

/// `text` with each match of `patterns` replaced by `replacement`; borrowed when nothing
/// matched.
pub(crate) fn replace<'a>(
    text: &'a str,
    patterns: &[PiiPattern],
    replacement: &str,
) -> Cow<'a, str> {
    if patterns.is_empty() {
        return Cow::Borrowed(text);
    }
    let mut found: Vec<Range<usize>> = Vec::new();
    if patterns.contains(&PiiPattern::Email) {
        emails(text, &mut found);
    }
    let (phone, card) = (
        patterns.contains(&PiiPattern::Phone),
        patterns.contains(&PiiPattern::Card),
    );
    if phone || card {
        numbers(text, phone, card, &mut found);
    }
    if found.is_empty() {
        return Cow::Borrowed(text);
    }
    found.sort_by_key(|r| r.start);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for r in found {
        if r.start < at {
            continue; // inside a match already replaced
        }
        out.push_str(&text[at..r.start]);
        out.push_str(replacement);
        at = r.end;
    }
    out.push_str(&text[at..]);
    Cow::Owned(out)
}

fn emails(text: &str, found: &mut Vec<Range<usize>>) {
    let b = text.as_bytes();
    let local = |c: u8| c.is_ascii_alphanumeric() || b"._%+-".contains(&c);
    let domain = |c: u8| c.is_ascii_alphanumeric() || c == b'.' || c == b'-';
    for (at, _) in text.match_indices('@') {
        let mut start = at;
        while start > 0 && local(b[start - 1]) {
            start -= 1;
        }
        let mut end = at + 1;
        while end < b.len() && domain(b[end]) {
            end += 1;
        }
        // a sentence's full stop after the address is not part of it
        while end > at + 1 && b[end - 1] == b'.' {
            end -= 1;
        }
        let host = &text[at + 1..end];
        let tld_ok = host.rsplit_once('.').is_some_and(|(name, tld)| {
            !name.is_empty() && tld.len() >= 2 && tld.bytes().all(|c| c.is_ascii_alphabetic())
        });
        if start < at && tld_ok {
            found.push(start..end);
        }
    }
}

fn numbers(text: &str, phone: bool, card: bool, found: &mut Vec<Range<usize>>) {
    let b = text.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let starts = c.is_ascii_digit()
            || ((c == b'+' || c == b'(') && b.get(i + 1).is_some_and(u8::is_ascii_digit));
        // a number starts after a character that is not part of a word or number
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if !(starts && boundary) {
            i += 1;
            continue;
        }
        let mut end = i;
        while end < b.len() && (b[end].is_ascii_digit() || b" -.()+".contains(&b[end])) {
            end += 1;
        }
        // trailing separators belong to the text around the number
        while end > i && !b[end - 1].is_ascii_digit() && b[end - 1] != b')' {
            end -= 1;
        }
        let run = &text[i..end];
        let word_follows = b
            .get(end)
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_');
        if !word_follows && ((card && is_card(run)) || (phone && is_phone(run))) {
            found.push(i..end);
        }
        i = end.max(i + 1);
    }
}

fn digits(run: &str) -> Vec<u8> {
    run.bytes()
        .filter(u8::is_ascii_digit)
        .map(|c| c - b'0')
        .collect()
}

fn is_card(run: &str) -> bool {
    if !run
        .bytes()
        .all(|c| c.is_ascii_digit() || c == b' ' || c == b'-')
    {
        return false;
    }
    let d = digits(run);
    if !(13..=19).contains(&d.len()) {
        return false;
    }
    let sum: u32 = d
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &x)| {
            let x = u32::from(x);
            if i % 2 == 1 {
                let y = x * 2;
                if y > 9 {
                    y - 9
                } else {
                    y
                }
            } else {
                x
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

fn is_phone(run: &str) -> bool {
    let n = digits(run).len();
    if run.starts_with('+') {
        return (8..=15).contains(&n);
    }
    if run.starts_with('(') {
        return (9..=11).contains(&n) && run.contains(')');
    }
    // 555-010-4477, 555.010.4477, 555 010 4477
    let groups: Vec<usize> = run.split([' ', '-', '.']).map(str::len).collect();
    groups == [3, 3, 4] && n == 10
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> String {
        replace(text, &PiiPattern::ALL, "[redacted]").into_owned()
    }

    #[test]
    fn emails_phones_and_cards_are_found_in_text() {
        assert_eq!(
            all("mail ada@example.com, or Ada.L+x@mail.example.co.uk."),
            "mail [redacted], or [redacted]."
        );
        assert_eq!(
            all("call +44 20 7946 0958 or (555) 010-4477 or 555-010-4477"),
            "call [redacted] or [redacted] or [redacted]"
        );
        assert_eq!(
            all("card 4111 1111 1111 1111 and 4111-1111-1111-1111 and 4111111111111111"),
            "card [redacted] and [redacted] and [redacted]"
        );
    }

    #[test]
    fn ids_dates_and_numbers_that_are_not_personal_stay() {
        for text in [
            "order 1234567890 took 35 ms",
            "at 2026-12-03 10:22:01",
            "card 4111 1111 1111 1112",
            "user@localhost",
            "v1.2.3 build 20261203",
            "id abc4111111111111111",
            "status 503",
        ] {
            assert_eq!(all(text), text);
        }
        assert!(matches!(
            replace("ada@example.com", &[], "x"),
            Cow::Borrowed(_)
        ));
        assert_eq!(
            replace(
                "ada@example.com +44 20 7946 0958",
                &[PiiPattern::Phone],
                "x"
            ),
            "ada@example.com x"
        );
    }
}
