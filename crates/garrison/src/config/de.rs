//! A serde `Deserializer` over a TOML table that reports every problem with its path.
//!
//! The configuration structs derive `Deserialize` with `#[serde(default)]`, so a key's name,
//! type and default are written once, on the struct. This deserializer reads them with the
//! configuration file's own words:
//!
//! - a key of the wrong type says what was expected and what was found
//!   (`expected a string, found integer`);
//! - a `Duration` is a string such as `"250ms"` (see [`parse_duration`]);
//! - an enum is one of its variants' names, and a wrong name lists them;
//! - a key no struct knows is reported with the keys it does know, and skipped.
//!
//! serde stops at the first error, so [`read`] reads the table again without each key that
//! failed (the key keeps its default) until a read succeeds: every problem is reported at
//! once, and the other values can still be judged by `validate`.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use toml::{Table, Value};

use super::{parse_duration, ConfigIssue};

/// One step of a key's path: a table key or an array index.
#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

/// A path as TOML writes it: `ratelimit.routes."/login"`, `service.routes[2]`.
fn render(path: &[Step]) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(&quote(k));
            }
            Step::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// A key as TOML writes it in a path: bare when it can be, quoted otherwise (route
/// patterns).
pub(super) fn quote(key: &str) -> String {
    if !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

/// A problem found while deserializing; `at` is filled in by the innermost value that knows
/// its path.
#[derive(Debug)]
pub(super) struct Error {
    at: Option<Vec<Step>>,
    message: String,
}

impl Error {
    fn or_at(mut self, path: &[Step]) -> Self {
        if self.at.is_none() {
            self.at = Some(path.to_vec());
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self {
            at: None,
            message: msg.to_string(),
        }
    }
}

/// What one read of a table found besides its values.
#[derive(Default)]
pub(super) struct Found {
    /// Values that could not be read, in the order they were met.
    pub(super) unreadable: Vec<ConfigIssue>,
    /// Keys no struct knows.
    pub(super) unknown: Vec<ConfigIssue>,
    /// Every key a struct knows, at each place a struct was read (for the example file's
    /// test).
    pub(super) asked: Vec<String>,
}

struct Ctx<'k> {
    /// Keys whose value failed in an earlier pass: read as if absent.
    skip: HashSet<String>,
    /// More keys known at the root (another reader's sections).
    root_known: &'k [&'static str],
    unknown: RefCell<Vec<ConfigIssue>>,
    asked: RefCell<Vec<String>>,
}

/// Reads `T` from `table`, adding what it found to `found`; a key that cannot be read keeps
/// its default. `root_known` are root keys read by someone else, not unknown here.
pub(super) fn read<T: DeserializeOwned + Default>(
    table: &Table,
    root_known: &[&'static str],
    found: &mut Found,
) -> T {
    let root = Value::Table(table.clone());
    let mut ctx = Ctx {
        skip: HashSet::new(),
        root_known,
        unknown: RefCell::default(),
        asked: RefCell::default(),
    };
    loop {
        ctx.unknown.borrow_mut().clear();
        ctx.asked.borrow_mut().clear();
        let de = ValueDe {
            value: &root,
            path: Vec::new(),
            ctx: &ctx,
        };
        match T::deserialize(de) {
            Ok(value) => {
                found.unknown.extend(ctx.unknown.take());
                found.asked.extend(ctx.asked.take());
                return value;
            }
            Err(e) => {
                let at = e.at.unwrap_or_default();
                found.unreadable.push(ConfigIssue {
                    path: render(&at),
                    message: e.message,
                });
                // the table key holding the bad value (an array's whole key)
                let key_len = at
                    .iter()
                    .rposition(|s| matches!(s, Step::Key(_)))
                    .map_or(0, |i| i + 1);
                if key_len == 0 || !ctx.skip.insert(render(&at[..key_len])) {
                    return T::default();
                }
            }
        }
    }
}

/// The keys a struct deriving `Deserialize` knows (empty for anything else).
pub(super) fn fields_of<'de, T: de::Deserialize<'de>>() -> &'static [&'static str] {
    names_of::<T>().0
}

/// The variant names of an enum deriving `Deserialize` (empty for anything else).
pub(super) fn variants_of<'de, T: de::Deserialize<'de>>() -> &'static [&'static str] {
    names_of::<T>().1
}

fn names_of<'de, T: de::Deserialize<'de>>() -> (&'static [&'static str], &'static [&'static str]) {
    let probe = Probe::default();
    let _ = T::deserialize(&probe);
    (probe.fields.get(), probe.variants.get())
}

/// A deserializer that only notes the field or variant names it is asked for.
#[derive(Default)]
struct Probe {
    fields: std::cell::Cell<&'static [&'static str]>,
    variants: std::cell::Cell<&'static [&'static str]>,
}

impl<'de> de::Deserializer<'de> for &Probe {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
        Err(de::Error::custom("probe"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Error> {
        self.fields.set(fields);
        Err(de::Error::custom("probe"))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Error> {
        self.variants.set(variants);
        Err(de::Error::custom("probe"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map identifier
        ignored_any
    }
}

/// `"a", "b", "c"`.
pub(super) fn one_of(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("\"{n}\"")).collect();
    quoted.join(", ")
}

struct ValueDe<'a, 'c> {
    value: &'a Value,
    path: Vec<Step>,
    ctx: &'c Ctx<'c>,
}

/// What a visitor expects, as its own words (`a string`, or a custom type's description).
struct Expecting<'v, V>(&'v V);

impl<'de, V: Visitor<'de>> fmt::Display for Expecting<'_, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.expecting(f)
    }
}

impl<'a, 'c> ValueDe<'a, 'c> {
    fn fail(&self, message: impl Into<String>) -> Error {
        Error {
            at: Some(self.path.clone()),
            message: message.into(),
        }
    }

    fn wrong(&self, expected: impl fmt::Display) -> Error {
        self.fail(format!(
            "expected {expected}, found {}",
            self.value.type_str()
        ))
    }

    fn child(&self, step: Step, value: &'a Value) -> ValueDe<'a, 'c> {
        let mut path = self.path.clone();
        path.push(step);
        ValueDe {
            value,
            path,
            ctx: self.ctx,
        }
    }

    fn unsigned<V: Visitor<'a>>(self, max: u64, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Integer(i) if *i >= 0 && (*i as u64) <= max => {
                self.at(visitor.visit_u64(*i as u64))
            }
            Value::Integer(_) => Err(self.fail(format!("must be between 0 and {max}"))),
            _ => Err(self.wrong("an integer")),
        }
    }

    fn signed<V: Visitor<'a>>(self, min: i64, max: i64, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Integer(i) if (min..=max).contains(i) => self.at(visitor.visit_i64(*i)),
            Value::Integer(_) => Err(self.fail(format!("must be between {min} and {max}"))),
            _ => Err(self.wrong("an integer")),
        }
    }

    /// A visitor's own error (a custom type's message) belongs to this value's path.
    fn at<T>(&self, result: Result<T, Error>) -> Result<T, Error> {
        result.map_err(|e| e.or_at(&self.path))
    }

    fn entries(&self, table: &'a Table, known: Option<&[&str]>) -> Entries<'a, 'c> {
        let mut kept = Vec::with_capacity(table.len());
        for (key, value) in table {
            let mut path = self.path.clone();
            path.push(Step::Key(key.clone()));
            if let Some(fields) = known {
                let root = self.path.is_empty();
                let extra = root && self.ctx.root_known.contains(&key.as_str());
                if extra {
                    continue;
                }
                if !fields.contains(&key.as_str()) {
                    let mut names: Vec<&str> = fields.to_vec();
                    if root {
                        names.extend(self.ctx.root_known);
                    }
                    names.sort_unstable();
                    self.ctx.unknown.borrow_mut().push(ConfigIssue {
                        path: render(&path),
                        message: format!("unknown key; expected one of: {}", names.join(", ")),
                    });
                    continue;
                }
            }
            if self.ctx.skip.contains(&render(&path)) {
                continue;
            }
            kept.push((key.as_str(), value, path));
        }
        Entries {
            items: kept.into_iter(),
            value: None,
            ctx: self.ctx,
        }
    }
}

impl<'a, 'c> de::Deserializer<'a> for ValueDe<'a, 'c> {
    type Error = Error;

    fn deserialize_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Boolean(b) => self.at(visitor.visit_bool(*b)),
            Value::Integer(i) => self.at(visitor.visit_i64(*i)),
            Value::Float(f) => self.at(visitor.visit_f64(*f)),
            Value::String(s) => self.at(visitor.visit_borrowed_str(s)),
            Value::Datetime(d) => self.at(visitor.visit_string(d.to_string())),
            Value::Array(_) => self.deserialize_seq(visitor),
            Value::Table(_) => self.deserialize_map(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Boolean(b) => self.at(visitor.visit_bool(*b)),
            _ => Err(self.wrong("true or false")),
        }
    }

    fn deserialize_i8<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.signed(i8::MIN.into(), i8::MAX.into(), visitor)
    }

    fn deserialize_i16<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.signed(i16::MIN.into(), i16::MAX.into(), visitor)
    }

    fn deserialize_i32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.signed(i32::MIN.into(), i32::MAX.into(), visitor)
    }

    fn deserialize_i64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.signed(i64::MIN, i64::MAX, visitor)
    }

    fn deserialize_u8<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.unsigned(u8::MAX.into(), visitor)
    }

    fn deserialize_u16<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.unsigned(u16::MAX.into(), visitor)
    }

    fn deserialize_u32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.unsigned(u32::MAX.into(), visitor)
    }

    fn deserialize_u64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        // TOML's integers are 64-bit signed
        self.unsigned(i64::MAX as u64, visitor)
    }

    fn deserialize_f32<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_f64(visitor)
    }

    fn deserialize_f64<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Float(f) => self.at(visitor.visit_f64(*f)),
            Value::Integer(i) => self.at(visitor.visit_f64(*i as f64)),
            _ => Err(self.wrong("a number")),
        }
    }

    fn deserialize_str<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::String(s) => self.at(visitor.visit_borrowed_str(s)),
            _ => Err(self.wrong(Expecting(&visitor))),
        }
    }

    fn deserialize_string<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        // an absent key is `None` by the struct's default; a present one is `Some`
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'a>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Array(items) => {
                let items: Vec<ValueDe<'a, 'c>> = items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| self.child(Step::Index(i), v))
                    .collect();
                let mut seq = de::value::SeqDeserializer::new(items.into_iter());
                let value = self.at(visitor.visit_seq(&mut seq))?;
                self.at(seq.end()).map(|()| value)
            }
            _ => Err(self.wrong("an array")),
        }
    }

    fn deserialize_tuple<V: Visitor<'a>>(self, _: usize, visitor: V) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.value {
            Value::Table(t) => {
                let entries = self.entries(t, None);
                self.at(visitor.visit_map(entries))
            }
            _ => Err(self.wrong("a table")),
        }
    }

    fn deserialize_struct<V: Visitor<'a>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        if name == "Duration" && fields == ["secs", "nanos"] {
            return match self.value {
                Value::String(s) => match parse_duration(s) {
                    Ok(d) => {
                        let parts = [d.as_secs(), d.subsec_nanos().into()];
                        let mut seq = de::value::SeqDeserializer::new(parts.into_iter());
                        self.at(visitor.visit_seq(&mut seq))
                    }
                    Err(e) => Err(self.fail(e)),
                },
                _ => Err(self.wrong("a duration such as \"250ms\" or \"15m\"")),
            };
        }
        match self.value {
            Value::Table(t) => {
                let mut asked = self.ctx.asked.borrow_mut();
                for field in fields {
                    let mut path = self.path.clone();
                    path.push(Step::Key((*field).to_owned()));
                    asked.push(render(&path));
                }
                drop(asked);
                let entries = self.entries(t, Some(fields));
                self.at(visitor.visit_map(entries))
            }
            _ => Err(self.wrong("a table")),
        }
    }

    fn deserialize_enum<V: Visitor<'a>>(
        self,
        _: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.value {
            Value::String(s) if variants.contains(&s.as_str()) => {
                let variant: de::value::BorrowedStrDeserializer<'a, Error> =
                    de::value::BorrowedStrDeserializer::new(s);
                self.at(visitor.visit_enum(variant))
            }
            Value::String(s) => Err(self.fail(format!("`{s}` is not one of {}", one_of(variants)))),
            _ => Err(self.wrong(format!("one of {}", one_of(variants)))),
        }
    }

    fn deserialize_ignored_any<V: Visitor<'a>>(self, visitor: V) -> Result<V::Value, Error> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        <W: Visitor<'a>> i128 u128 bytes byte_buf unit unit_struct tuple_struct
    }
}

impl<'a, 'c> IntoDeserializer<'a, Error> for ValueDe<'a, 'c> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

/// A table's entries as a serde map: keys as strings, values at their paths.
struct Entries<'a, 'c> {
    items: std::vec::IntoIter<(&'a str, &'a Value, Vec<Step>)>,
    value: Option<(&'a Value, Vec<Step>)>,
    ctx: &'c Ctx<'c>,
}

impl<'a, 'c> de::MapAccess<'a> for Entries<'a, 'c> {
    type Error = Error;

    fn next_key_seed<K: de::DeserializeSeed<'a>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value, path)) = self.items.next() else {
            return Ok(None);
        };
        let key_de: de::value::BorrowedStrDeserializer<'a, Error> =
            de::value::BorrowedStrDeserializer::new(key);
        let k = seed.deserialize(key_de).map_err(|e| e.or_at(&path))?;
        self.value = Some((value, path));
        Ok(Some(k))
    }

    fn next_value_seed<S: de::DeserializeSeed<'a>>(&mut self, seed: S) -> Result<S::Value, Error> {
        let (value, path) = self
            .value
            .take()
            .ok_or_else(|| <Error as de::Error>::custom("a value without its key"))?;
        // a `deserialize_with` function's own error is raised after its value was read
        let at = path.clone();
        let de = ValueDe {
            value,
            path,
            ctx: self.ctx,
        };
        seed.deserialize(de).map_err(|e| e.or_at(&at))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// Reads a string through a type's `FromStr`, whose error is the message; `expecting` says
/// what a value of another type should have been.
pub(super) struct FromStrVisitor<T> {
    expecting: &'static str,
    to: std::marker::PhantomData<T>,
}

impl<T> FromStrVisitor<T> {
    pub(super) fn new(expecting: &'static str) -> Self {
        Self {
            expecting,
            to: std::marker::PhantomData,
        }
    }
}

impl<T: std::str::FromStr<Err = String>> Visitor<'_> for FromStrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<T, E> {
        text.parse().map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(default)]
    struct Root {
        app: App,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default)]
    struct App {
        name: String,
        port: u16,
        wait: Duration,
        slow: Option<Duration>,
        timeouts: BTreeMap<String, Duration>,
        hosts: Vec<String>,
        mode: Mode,
    }

    impl Default for App {
        fn default() -> Self {
            Self {
                name: "app".into(),
                port: 80,
                wait: Duration::from_secs(1),
                slow: None,
                timeouts: BTreeMap::new(),
                hosts: Vec::new(),
                mode: Mode::Fast,
            }
        }
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Fast,
        Careful,
    }

    fn read_text(text: &str) -> (Root, Vec<String>) {
        let table: Table = text.parse().unwrap();
        let mut found = Found::default();
        let root: Root = read(&table, &[], &mut found);
        let issues = found
            .unreadable
            .iter()
            .chain(&found.unknown)
            .map(|i| format!("{}: {}", i.path, i.message))
            .collect();
        (root, issues)
    }

    #[test]
    fn durations_are_strings_wherever_they_are() {
        let (root, issues) = read_text(
            "[app]\nwait = \"250ms\"\nslow = \"2s\"\nmode = \"careful\"\n[app.timeouts]\n\"/a b\" = \"1m\"\n",
        );
        assert!(issues.is_empty(), "{issues:?}");
        assert_eq!(root.app.wait, Duration::from_millis(250));
        assert_eq!(root.app.slow, Some(Duration::from_secs(2)));
        assert_eq!(root.app.timeouts["/a b"], Duration::from_secs(60));
        assert_eq!(root.app.mode, Mode::Careful);
        assert_eq!(root.app.name, "app", "an unset key keeps its default");
    }

    #[test]
    fn every_bad_value_is_reported_and_the_good_ones_are_kept() {
        let (root, issues) = read_text(
            r#"
            [app]
            name = "shop"
            port = 70000
            wait = 5
            mode = "reckless"
            hosts = ["a", 7]
            colour = "red"
            [app.timeouts]
            "/x y" = "soon"
            "#,
        );
        assert_eq!(
            issues,
            [
                "app.hosts[1]: expected a string, found integer",
                "app.mode: `reckless` is not one of \"fast\", \"careful\"",
                "app.port: must be between 0 and 65535",
                "app.timeouts.\"/x y\": `soon` is not a duration: write it as \"250ms\", \"15m\" or \"1h30m\"",
                "app.wait: expected a duration such as \"250ms\" or \"15m\", found integer",
                "app.colour: unknown key; expected one of: hosts, mode, name, port, slow, timeouts, wait",
            ]
        );
        assert_eq!(
            root.app.name, "shop",
            "a good value beside bad ones is read"
        );
        assert_eq!(root.app.port, 80, "a bad value keeps its default");
        assert!(root.app.hosts.is_empty());
    }

    #[test]
    fn a_table_of_the_wrong_type_is_one_problem() {
        let (root, issues) = read_text("app = 3\n");
        assert_eq!(issues, ["app: expected a table, found integer"]);
        assert_eq!(root, Root::default());
    }

    #[test]
    fn the_probe_names_fields_and_variants() {
        assert_eq!(fields_of::<Root>(), ["app"]);
        assert_eq!(variants_of::<Mode>(), ["fast", "careful"]);
        assert!(fields_of::<()>().is_empty());
    }
}
