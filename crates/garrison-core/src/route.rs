use std::fmt;
use std::sync::Arc;

use http::Request;

/// The route label of a request that matched no known route.
pub const UNMATCHED: &str = "unmatched";

/// The route template a request is labelled with.
///
/// Borrowed from the request (axum's `MatchedPath`) or from the [`RouteTable`]; resolving a
/// label allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteLabel<'a> {
    /// The template axum matched, from its `MatchedPath` extension.
    Matched(&'a str),
    /// The pattern of the configured [`RouteTable`] that matched the path.
    Table(&'a str),
    /// No template is known: the label is [`UNMATCHED`].
    Unmatched,
}

impl<'a> RouteLabel<'a> {
    /// The label text.
    #[inline]
    pub fn as_str(&self) -> &'a str {
        match *self {
            RouteLabel::Matched(s) | RouteLabel::Table(s) => s,
            RouteLabel::Unmatched => UNMATCHED,
        }
    }
}

impl fmt::Display for RouteLabel<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A pattern in a [`RouteTable`] was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTableError {
    pattern: String,
    reason: String,
}

impl RouteTableError {
    /// The pattern that was rejected.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
}

impl fmt::Display for RouteTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "route pattern `{}`: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for RouteTableError {}

/// A table of route patterns, for services that have no router of their own (a plain hyper
/// service, a gateway) or for paths that axum's router does not see.
///
/// Patterns use axum's (matchit's) syntax: `/users/{id}` for one segment and `/files/{*path}`
/// for the rest of the path.
#[derive(Clone, Default)]
pub struct RouteTable {
    router: matchit::Router<Box<str>>,
    patterns: Vec<Box<str>>,
}

impl RouteTable {
    /// An empty table: every path is [`UNMATCHED`].
    pub fn new() -> Self {
        Self::default()
    }

    /// A table of the given patterns.
    pub fn from_patterns<I, S>(patterns: I) -> Result<Self, RouteTableError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut table = Self::new();
        for p in patterns {
            table.insert(p.as_ref())?;
        }
        Ok(table)
    }

    /// Adds a pattern.
    pub fn insert(&mut self, pattern: &str) -> Result<(), RouteTableError> {
        if !pattern.starts_with('/') {
            return Err(RouteTableError {
                pattern: pattern.to_owned(),
                reason: "must start with `/`".to_owned(),
            });
        }
        self.router
            .insert(pattern, pattern.into())
            .map_err(|e| RouteTableError {
                pattern: pattern.to_owned(),
                reason: e.to_string(),
            })?;
        self.patterns.push(pattern.into());
        Ok(())
    }

    /// The pattern that matches `path`, if any.
    #[inline]
    pub fn lookup(&self, path: &str) -> Option<&str> {
        self.router.at(path).ok().map(|m| &**m.value)
    }

    /// The patterns, in insertion order.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|p| &**p)
    }

    /// The number of patterns.
    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    /// Whether the table has no pattern.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

impl fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteTable")
            .field("patterns", &self.patterns)
            .finish()
    }
}

/// Finds the route label of a request: axum's `MatchedPath` when present, otherwise the
/// configured [`RouteTable`], otherwise [`UNMATCHED`]. Never the raw path.
#[derive(Clone, Debug, Default)]
pub struct RouteResolver {
    table: Option<Arc<RouteTable>>,
    use_matched_path: bool,
}

impl RouteResolver {
    /// A resolver that reads axum's `MatchedPath` and has no table.
    pub fn new() -> Self {
        Self {
            table: None,
            use_matched_path: true,
        }
    }

    /// Uses `table` for requests that carry no `MatchedPath`.
    pub fn with_table(mut self, table: RouteTable) -> Self {
        self.table = (!table.is_empty()).then(|| Arc::new(table));
        self
    }

    /// Whether to believe axum's `MatchedPath` (default: yes). A gateway in front of other
    /// services turns this off and labels by its own table only.
    pub fn use_matched_path(mut self, yes: bool) -> Self {
        self.use_matched_path = yes;
        self
    }

    /// The table, if one is configured.
    pub fn table(&self) -> Option<&RouteTable> {
        self.table.as_deref()
    }

    /// The route label of `req`.
    #[inline]
    pub fn resolve<'a, B>(&'a self, req: &'a Request<B>) -> RouteLabel<'a> {
        #[cfg(feature = "axum")]
        if self.use_matched_path {
            if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
                return RouteLabel::Matched(m.as_str());
            }
        }
        match &self.table {
            Some(t) => match t.lookup(req.uri().path()) {
                Some(p) => RouteLabel::Table(p),
                None => RouteLabel::Unmatched,
            },
            None => RouteLabel::Unmatched,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(path: &str) -> Request<()> {
        Request::get(path).body(()).unwrap()
    }

    #[test]
    fn table_matches_templates_not_paths() {
        let r = RouteResolver::new()
            .with_table(RouteTable::from_patterns(["/users/{id}", "/files/{*rest}", "/"]).unwrap());
        assert_eq!(
            r.resolve(&req("/users/1")),
            RouteLabel::Table("/users/{id}")
        );
        assert_eq!(r.resolve(&req("/users/2")).as_str(), "/users/{id}");
        assert_eq!(r.resolve(&req("/files/a/b/c")).as_str(), "/files/{*rest}");
        assert_eq!(r.resolve(&req("/")).as_str(), "/");
        assert_eq!(r.resolve(&req("/users/1/extra")), RouteLabel::Unmatched);
        assert_eq!(r.resolve(&req("/nope")).as_str(), UNMATCHED);
    }

    #[test]
    fn hostile_paths_are_unmatched() {
        let r = RouteResolver::new().with_table(RouteTable::from_patterns(["/a"]).unwrap());
        let long = format!("/{}", "x".repeat(10_000));
        for p in ["/%2e%2e/%2e%2e", long.as_str(), "/a/", "/A", "//a"] {
            assert_eq!(r.resolve(&req(p)), RouteLabel::Unmatched, "{p}");
        }
    }

    #[test]
    fn bad_patterns_are_named_in_the_error() {
        let err = RouteTable::from_patterns(["/ok", "no-slash"]).unwrap_err();
        assert_eq!(err.pattern(), "no-slash");
        assert!(err.to_string().contains("must start with `/`"));
        let err = RouteTable::from_patterns(["/u/{id}", "/u/{name}"]).unwrap_err();
        assert_eq!(err.pattern(), "/u/{name}");
    }

    #[test]
    fn no_table_means_unmatched() {
        assert_eq!(
            RouteResolver::new().resolve(&req("/x")),
            RouteLabel::Unmatched
        );
    }

    #[cfg(feature = "axum")]
    #[tokio::test]
    async fn matched_path_wins_over_table() {
        use axum::{routing::get, Router};
        use tower::ServiceExt;

        let resolver =
            RouteResolver::new().with_table(RouteTable::from_patterns(["/users/{x}"]).unwrap());
        let app = Router::new().route(
            "/users/{id}",
            get(move |req: axum::extract::Request| {
                let resolver = resolver.clone();
                async move { resolver.resolve(&req).as_str().to_owned() }
            }),
        );
        let resp = app
            .oneshot(
                Request::get("/users/7")
                    .body(axum::body::Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let body = axum::body::to_bytes(resp.into_body(), 1024).await.unwrap();
        assert_eq!(&body[..], b"/users/{id}");
    }
}
