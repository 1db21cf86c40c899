//! [`GatewayConfig`]: Garrison's sections plus `[gateway]`, read from one TOML file.
//!
//! ```
//! let config = garrison_gateway::GatewayConfig::from_toml(r#"
//!     [gateway.upstreams.shop]
//!     addresses = ["10.0.0.5:8080", "10.0.0.6:8080"]
//!
//!     [gateway.routes.login]
//!     path = "/auth/login"
//!     upstream = "shop"
//!     ratelimit = "auth"
//!
//!     [gateway.routes.everything]
//!     prefix = "/"
//!     upstream = "shop"
//! "#).unwrap();
//! assert_eq!(config.gateway.upstreams["shop"].addresses.len(), 2);
//!
//! let err = garrison_gateway::GatewayConfig::from_toml(
//!     "[gateway.routes.x]\nprefix = \"/x\"\nupstream = \"nowhere\"\n",
//! )
//! .unwrap_err();
//! assert!(err.to_string().contains("gateway.routes.x.upstream: no upstream `nowhere`"));
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use garrison::config::{ConfigError, ConfigIssue, GarrisonConfig};
use serde::{Deserialize, Deserializer};

/// The configuration the gateway starts with when it is given no file: a built-in demo
/// upstream, the seeds' rate-limit policies, an SQLite health check. `--print-default-config`
/// prints it; it documents every `[gateway]` key.
pub const DEFAULT_CONFIG: &str = include_str!("../gateway.toml");

/// An upstream address that names the gateway's built-in demo service, started on a free
/// loopback port (for `just run` and first steps).
pub const DEMO_ADDRESS: &str = "builtin:demo";

/// The whole gateway configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayConfig {
    /// Garrison's sections: `[service]`, `[trace]`, `[metrics]`, `[health]`, `[ratelimit]`,
    /// `[breaker]`.
    pub garrison: GarrisonConfig,
    /// `[gateway]`.
    pub gateway: GatewaySection,
}

/// The root sections the gateway reads beside Garrison's.
#[derive(Default, Deserialize)]
#[serde(default)]
struct Sections {
    gateway: GatewaySection,
}

/// `[gateway]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct GatewaySection {
    /// `listen`: the proxy's address. `GARRISON_LISTEN` overrides it. Default:
    /// `"127.0.0.1:3000"`.
    #[serde(deserialize_with = "listen")]
    pub listen: SocketAddr,
    /// `admin_listen`: the admin API's address (and `/metrics`, `/health/*` with
    /// `observability = "admin"`). `""`: no admin listener. Default: `"127.0.0.1:3001"`.
    #[serde(deserialize_with = "admin_listen")]
    pub admin_listen: Option<SocketAddr>,
    /// `admin_token`: the bearer token the admin API asks for. `""`: the
    /// `GARRISON_ADMIN_TOKEN` variable, else a random token printed at start. Default: `""`.
    pub admin_token: String,
    /// `observability`: where `/metrics` and `/health/*` are answered: `"main"` (the proxy's
    /// listener, before the rate limiter: anyone who reaches the proxy reads upstream
    /// addresses and breaker states) or `"admin"` (the admin listener only). Default:
    /// `"admin"` (the embedded demo configuration says `"main"`).
    pub observability: Observability,
    /// `http2`: accept HTTP/2 over cleartext (h2c, prior knowledge) beside HTTP/1.1.
    /// Default: `true`.
    pub http2: bool,
    /// `header_read_timeout`: a client must send a request's whole head within this (from
    /// its connection's start, or after the previous response on keep-alive); slower
    /// clients are cut off (at most 20 ms after it: the gateway's coarse timer). Default:
    /// `"10s"`.
    pub header_read_timeout: Duration,
    /// `max_header_bytes`: a request head larger than this gets `431` and the connection is
    /// closed (at least 8192). Default: `16384`.
    pub max_header_bytes: usize,
    /// `max_headers`: more header fields than this get `431`. Default: `100`.
    pub max_headers: usize,
    /// `max_body_bytes`: the largest request body the proxy forwards, for routes that set
    /// none of their own. A request whose `Content-Length` says more gets `413` before any
    /// upstream is asked; a streamed body that grows past it is cut off, and the request
    /// gets `413` unless the upstream has answered already. `0`: no limit. Default: `0`.
    pub max_body_bytes: u64,
    /// `max_connections`: connections at once; further ones wait in the kernel's backlog.
    /// Default: `10000`.
    pub max_connections: usize,
    /// `idle_timeout`: a connection (HTTP/1 or HTTP/2) that starts no request for this long
    /// is closed gracefully (requests in flight finish); one that starts none within
    /// `header_read_timeout` of its first byte, such as an HTTP/2 client that sends its
    /// preface and nothing more, is closed then. Default: `"60s"`.
    pub idle_timeout: Duration,
    /// `send_timeout`: the longest a write to a client may wait for the client to read; a
    /// client that stops reading has its connection closed. Over HTTP/2, a response that
    /// waits this long for its stream's flow-control window closes the connection too
    /// (found between one and two `send_timeout`s after the wait began). Default: `"60s"`.
    pub send_timeout: Duration,
    /// `normalize_path`: before routing, decode percent-encoded unreserved characters, merge
    /// repeated slashes and remove `.` and `..` segments; the upstream gets the normalised
    /// path, so the route, policy and breaker applied are those of the path it serves. A path
    /// above the root gets `400`. Default: `true`.
    pub normalize_path: bool,
    /// `escaped_slashes`: a `%2F`, `%5C` or `\` in a path: `"reject"` (`400`), `"keep"` or
    /// `"decode"` (into `/`). Default: `"reject"`.
    pub escaped_slashes: crate::path::EscapedSlashes,
    /// `shutdown_grace`: on SIGTERM or SIGINT, how long in-flight requests may finish.
    /// Default: `"30s"`.
    pub shutdown_grace: Duration,
    /// `workers`: threads serving connections, each with its own event loop and upstream
    /// connection pools (as nginx's worker processes). `0`: one per core. Read at start.
    /// Default: `0`.
    pub workers: usize,
    /// `[gateway.upstreams.<name>]`. Default: none.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// `[gateway.routes.<name>]`: by path prefix or pattern, to an upstream. The longest
    /// match wins (a pattern's static part beats a prefix's wildcard). Default: none.
    pub routes: BTreeMap<String, RouteConfig>,
}

impl Default for GatewaySection {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 3001))),
            admin_token: String::new(),
            observability: Observability::Admin,
            http2: true,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_body_bytes: 0,
            max_connections: 10_000,
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            normalize_path: true,
            escaped_slashes: crate::path::EscapedSlashes::Reject,
            shutdown_grace: Duration::from_secs(30),
            workers: 0,
            upstreams: BTreeMap::new(),
            routes: BTreeMap::new(),
        }
    }
}

/// The `observability` of `[gateway]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Observability {
    /// `"main"`.
    Main,
    /// `"admin"`.
    Admin,
}

/// `[gateway.upstreams.<name>]`: where requests go.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct UpstreamConfig {
    /// `addresses`: `host:port` (or `http://host:port`), taken in turn; or
    /// [`DEMO_ADDRESS`]. Required, at least one. A request that one address refuses or does
    /// not connect in time goes to the next (over HTTP/1.1 with its body, none of which was
    /// sent; over h2c when it has none).
    pub addresses: Vec<String>,
    /// `protocol`: `"http1"` or `"h2c"` (HTTP/2 over cleartext). Default: `"http1"`.
    pub protocol: UpstreamProtocol,
    /// `connect_timeout`: a connection not made in this time is `504`. Default: `"2s"`.
    pub connect_timeout: Duration,
    /// `timeout`: the response head not received in this time is `504` (at most 20 ms after
    /// it: the gateway's coarse timer). It runs from the request's start, so it also cuts off
    /// a client that sends its body too slowly. Default: `"30s"`.
    pub timeout: Duration,
    /// `eject_after`: consecutive failures (refused connections, connect or response
    /// timeouts) that take an address out of the rotation. Default: `3`.
    pub eject_after: u32,
    /// `eject_for`: how long an ejected address stays out. Default: `"10s"`.
    pub eject_for: Duration,
    /// `host`: the `Host` sent upstream: `"preserve"` (the client's) or `"upstream"` (the
    /// address's). Default: `"preserve"`.
    pub host: HostMode,
    /// `pool_idle_timeout`: idle upstream connections are closed after this (HTTP/1.1: after
    /// between 1× and 1.25× this, checked four times per timeout).
    /// Default: `"90s"`.
    pub pool_idle_timeout: Duration,
    /// `max_connections_per_address`: HTTP/1.1 connections open at once to one address, over
    /// every worker. A request that needs one more gets `503` with `Retry-After` (a crowd of
    /// slow or stalled clients cannot pin every connection an upstream accepts); it is not
    /// counted against the address. Default: `1024`.
    pub max_connections_per_address: usize,
    /// `tunnel_idle_timeout`: an upgraded connection (a WebSocket) that moves no byte either
    /// way for this long is closed (after between 1× and 2× this). Default: `"5m"`.
    pub tunnel_idle_timeout: Duration,
    /// `body_idle_timeout`: an upstream that sends nothing of a response body for this long
    /// (between two chunks) has the response cut off and its connection closed. Default:
    /// `"60s"`.
    pub body_idle_timeout: Duration,
}

impl UpstreamConfig {
    /// An upstream of these addresses, with the defaults.
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(addresses: I) -> Self {
        Self {
            addresses: addresses.into_iter().map(Into::into).collect(),
            protocol: UpstreamProtocol::Http1,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(30),
            eject_after: 3,
            eject_for: Duration::from_secs(10),
            host: HostMode::Preserve,
            pool_idle_timeout: Duration::from_secs(90),
            max_connections_per_address: 1024,
            tunnel_idle_timeout: Duration::from_secs(5 * 60),
            body_idle_timeout: Duration::from_secs(60),
        }
    }
}

/// The `protocol` of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    /// `"http1"`.
    Http1,
    /// `"h2c"`.
    H2c,
}

/// The `host` of an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostMode {
    /// `"preserve"`.
    Preserve,
    /// `"upstream"`.
    Upstream,
}

/// `[gateway.routes.<name>]`: one of `prefix` or `path`, and an upstream.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default)]
pub struct RouteConfig {
    /// `prefix`: `/api` matches `/api` and everything under `/api/`.
    pub prefix: Option<String>,
    /// `path`: a route pattern, `/users/{id}` or `/files/{*path}`.
    pub path: Option<String>,
    /// `upstream`: a name of `[gateway.upstreams]`. Required.
    pub upstream: String,
    /// `strip_prefix`: send `/api/x` as `/x`. Default: `false`.
    pub strip_prefix: bool,
    /// `ratelimit`: this route's policy (instead of `[ratelimit] default_policy`); `"none"`:
    /// not limited. Default: unset.
    pub ratelimit: Option<String>,
    /// `breaker`: this route's breaker profile (instead of `[breaker] profile`).
    /// Default: unset.
    pub breaker: Option<String>,
    /// `priority`: this route's admission class (`critical`, `high`, `normal`, `low`,
    /// `batch`; with `[admission] enabled = true`). Default: unset
    /// (`[admission] default_priority`).
    pub priority: Option<String>,
    /// `upgrades`: the protocols an HTTP/1.1 client may switch this route's connections to
    /// (`Connection: upgrade` and `Upgrade: <protocol>`, compared without case): such a
    /// request goes to the upstream over a connection of its own, and when the upstream
    /// answers `101 Switching Protocols` the two connections are joined into a tunnel that
    /// carries bytes both ways until either side closes, or until the upstream's
    /// `tunnel_idle_timeout`. Any other `Upgrade` is removed, as a hop-by-hop header.
    /// `[]`: none. Default: `["websocket"]`.
    pub upgrades: Vec<String>,
    /// `max_body_bytes`: this route's limit on request bodies (see
    /// [`GatewaySection::max_body_bytes`]; `0`: no limit). Default: unset (the gateway's).
    pub max_body_bytes: Option<u64>,
    /// `timeout`: this route's wait for a response head, instead of its upstream's
    /// `timeout` (a long-poll route, a slow report). Default: unset (the upstream's).
    pub timeout: Option<Duration>,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            prefix: None,
            path: None,
            upstream: String::new(),
            strip_prefix: false,
            ratelimit: None,
            breaker: None,
            priority: None,
            upgrades: vec!["websocket".to_owned()],
            max_body_bytes: None,
            timeout: None,
        }
    }
}

impl RouteConfig {
    /// The route patterns this route answers, as Garrison's route table and labels see
    /// them: a prefix is the prefix itself and everything under it.
    pub fn patterns(&self) -> Vec<String> {
        if let Some(p) = &self.path {
            return vec![p.clone()];
        }
        let prefix = self.prefix.as_deref().unwrap_or("/").trim_end_matches('/');
        if prefix.is_empty() {
            vec!["/".into(), "/{*path}".into()]
        } else {
            vec![prefix.to_owned(), format!("{prefix}/{{*path}}")]
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self::from_toml(DEFAULT_CONFIG).expect("the embedded default configuration is valid")
    }
}

impl GatewayConfig {
    /// Reads a configuration: every bad key, Garrison's and `[gateway]`'s, is reported at
    /// once with its path.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let (garrison, Sections { gateway }) = GarrisonConfig::from_toml_with(text, check)?;
        Ok(Self { garrison, gateway })
    }

    /// Reads a configuration file.
    pub fn from_file(path: impl AsRef<std::path::Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(vec![ConfigIssue {
                path: String::new(),
                message: format!("cannot read {}: {e}", path.display()),
            }])
        })?;
        Self::from_toml(&text)
    }

    /// Garrison's configuration with the gateway's routes added: their patterns name
    /// requests, and their policies and profiles apply to those patterns.
    pub fn stack_config(&self) -> GarrisonConfig {
        let mut c = self.garrison.clone();
        for route in self.gateway.routes.values() {
            for p in route.patterns() {
                if let Some(policy) = &route.ratelimit {
                    if policy == "none" {
                        c.ratelimit.exempt_routes.push(p.clone());
                    } else {
                        c.ratelimit.routes.insert(p.clone(), policy.clone());
                    }
                }
                if let Some(profile) = &route.breaker {
                    c.breaker.routes.insert(p.clone(), profile.clone());
                }
                if let Some(priority) = &route.priority {
                    c.admission.routes.insert(p.clone(), priority.clone());
                }
                c.service.routes.push(p);
            }
        }
        if self.gateway.observability == Observability::Admin {
            // answered by the admin listener only
            c.metrics.path.clear();
        }
        c
    }
}

impl Default for UpstreamConfig {
    /// No address: a file's upstream needs at least one.
    fn default() -> Self {
        Self::new(Vec::<String>::new())
    }
}

fn listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!("`{text}` is not an address such as 127.0.0.1:3000"))
    })
}

fn admin_listen<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "`{text}` is not an address such as 127.0.0.1:3001 (\"\" turns it off)"
        ))
    })
}

/// What the types of `[gateway]` do not say: ranges, a route's `prefix` or `path`, names
/// in lower case, `""` as unset; then cross-references against the rest (upstreams,
/// policies, profiles) and routes that collide.
fn check(c: &GarrisonConfig, sections: &mut Sections, issues: &mut Vec<ConfigIssue>) {
    let g = &mut sections.gateway;
    let mut err = |path: String, message: String| issues.push(ConfigIssue { path, message });
    if g.max_header_bytes < 8192 {
        err(
            "gateway.max_header_bytes".into(),
            "must be at least 8192".into(),
        );
    }
    for (key, n) in [
        ("max_headers", g.max_headers),
        ("max_connections", g.max_connections),
    ] {
        if n == 0 {
            err(format!("gateway.{key}"), "must be > 0".into());
        }
    }
    for (name, u) in &g.upstreams {
        let at = |key: &str| format!("gateway.upstreams.{name}.{key}");
        if u.addresses.is_empty() {
            err(at("addresses"), "needs at least one address".into());
        }
        for (i, a) in u.addresses.iter().enumerate() {
            if a != DEMO_ADDRESS && authority(a).is_none() {
                err(
                    at(&format!("addresses[{i}]")),
                    format!("`{a}` is not host:port (or http://host:port, or {DEMO_ADDRESS})"),
                );
            }
        }
        if u.max_connections_per_address == 0 {
            err(at("max_connections_per_address"), "must be > 0".into());
        }
    }
    for (name, r) in &mut g.routes {
        let at = |key: &str| format!("gateway.routes.{name}.{key}");
        for unset in [
            &mut r.prefix,
            &mut r.path,
            &mut r.ratelimit,
            &mut r.breaker,
            &mut r.priority,
        ] {
            if unset.as_deref() == Some("") {
                *unset = None;
            }
        }
        match (&r.prefix, &r.path) {
            (None, None) => err(at("prefix"), "a route needs `prefix` or `path`".into()),
            (Some(_), Some(_)) => {
                err(
                    at("path"),
                    "a route has `prefix` or `path`, not both".into(),
                );
                r.path = None;
            }
            (Some(prefix), None) if !prefix.starts_with('/') => {
                err(at("prefix"), format!("`{prefix}` must start with /"));
                r.prefix = None;
            }
            _ => {}
        }
        if r.upstream.is_empty() {
            err(
                at("upstream"),
                "required: a name of [gateway.upstreams]".into(),
            );
        }
        if r.strip_prefix && r.prefix.is_none() {
            err(
                at("strip_prefix"),
                "only a `prefix` route can strip it".into(),
            );
        }
        if let Some(p) = &r.priority {
            if let Err(e) = p.parse::<garrison::garrison_admission::Priority>() {
                err(at("priority"), e.to_string());
            }
        }
        if r.timeout.is_some_and(|t| t.is_zero()) {
            err(at("timeout"), "must be > 0".into());
        }
        for (i, p) in r.upgrades.iter_mut().enumerate() {
            if p.is_empty() || !p.bytes().all(garrison::garrison_core::is_token_byte) {
                err(
                    at(&format!("upgrades[{i}]")),
                    format!("`{p}` is not a protocol name such as websocket"),
                );
            }
            p.make_ascii_lowercase();
            if p == "h2c" {
                // a tunnel past every layer: the requests inside it would be neither routed,
                // limited nor broken (h2c smuggling)
                err(
                    at(&format!("upgrades[{i}]")),
                    "h2c cannot be an upgrade: its requests would pass the gateway unseen (clients speak h2c to the gateway directly, `http2 = true`)".to_owned(),
                );
            }
        }
    }
    let mut table = matchit::Router::new();
    for (name, r) in &g.routes {
        let at = |key: &str| format!("gateway.routes.{name}.{key}");
        if !r.upstream.is_empty() && !g.upstreams.contains_key(&r.upstream) {
            err(
                at("upstream"),
                format!("no upstream `{}` in [gateway.upstreams]", r.upstream),
            );
        }
        if let Some(p) = &r.ratelimit {
            if p != "none" && !c.ratelimit.policies.contains_key(p) {
                err(
                    at("ratelimit"),
                    format!("no policy `{p}` in [ratelimit.policies] (or \"none\")"),
                );
            }
        }
        if let Some(p) = &r.breaker {
            let builtin = garrison::config::BUILT_IN_PROFILES.contains(&p.as_str());
            if !builtin && !c.breaker.profiles.contains_key(p) {
                err(at("breaker"), format!("no breaker profile `{p}`"));
            }
        }
        if r.prefix.is_none() && r.path.is_none() {
            continue;
        }
        for p in r.patterns() {
            if let Err(e) = table.insert(p.as_str(), ()) {
                let key = if r.path.is_some() { "path" } else { "prefix" };
                err(at(key), format!("`{p}` cannot be routed: {e}"));
                break;
            }
        }
    }
}

/// `host:port` or `http://host:port` as a URI authority.
pub(crate) fn authority(address: &str) -> Option<http::uri::Authority> {
    let bare = address.strip_prefix("http://").unwrap_or(address);
    let a: http::uri::Authority = bare.trim_end_matches('/').parse().ok()?;
    a.port_u16().is_some().then_some(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_defaults_are_valid_and_route_to_the_demo() {
        let c = GatewayConfig::default();
        assert_eq!(c.gateway.upstreams["demo"].addresses, [DEMO_ADDRESS]);
        assert!(c.gateway.routes.len() >= 3);
        c.stack_config().validate().unwrap();
    }

    #[test]
    fn the_embedded_file_states_the_upgrade_and_body_defaults_of_the_code() {
        let c = GatewayConfig::default();
        let up = &c.gateway.upstreams["demo"];
        let code = UpstreamConfig::new([DEMO_ADDRESS]);
        assert_eq!(up.tunnel_idle_timeout, code.tunnel_idle_timeout);
        assert_eq!(
            *up, code,
            "every upstream key of the file is the code's default"
        );
        let route = &c.gateway.routes["everything"];
        assert_eq!(route.upgrades, RouteConfig::default().upgrades);
        assert_eq!(route.upgrades, ["websocket"]);
        assert_eq!(route.max_body_bytes, None, "the gateway's limit");
        assert_eq!(
            c.gateway.max_body_bytes,
            GatewaySection::default().max_body_bytes
        );
        assert_eq!(c.gateway.routes["upload"].max_body_bytes, Some(10 << 20));
        // unset, the same; and names are compared in lower case
        let c = GatewayConfig::from_toml(
            "[gateway.upstreams.a]\naddresses = [\"127.0.0.1:1\"]\n\
             [gateway.routes.r]\nprefix = \"/\"\nupstream = \"a\"\n\
             [gateway.routes.s]\nprefix = \"/s\"\nupstream = \"a\"\nupgrades = [\"WebSocket\"]\n",
        )
        .unwrap();
        assert_eq!(c.gateway.routes["r"].upgrades, ["websocket"]);
        let smuggle = GatewayConfig::from_toml(
            "[gateway.upstreams.a]\naddresses = [\"127.0.0.1:1\"]\n\
             [gateway.routes.r]\nprefix = \"/\"\nupstream = \"a\"\nupgrades = [\"H2C\"]\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            smuggle.contains("upgrades[0]") && smuggle.contains("h2c"),
            "{smuggle}"
        );
        assert_eq!(c.gateway.routes["s"].upgrades, ["websocket"]);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_path() {
        let err = GatewayConfig::from_toml(
            r#"
            [gateway]
            listen = "nowhere"
            speed = 11
            max_body_bytes = -1
            [gateway.upstreams.a]
            addresses = ["no port", "127.0.0.1:1"]
            protocol = "h3"
            [gateway.routes.r]
            prefix = "api"
            upstream = "b"
            ratelimit = "unknown"
            breaker = "nope"
            [gateway.routes.both]
            prefix = "/x"
            path = "/y"
            upstream = "a"
            [ratelimit.policies.auth]
            limit = 0
            period = "1m"
            "#,
        )
        .unwrap_err();
        let paths: Vec<&str> = err.issues().iter().map(|i| i.path.as_str()).collect();
        for want in [
            "gateway.listen",
            "gateway.speed",
            "gateway.max_body_bytes",
            "gateway.upstreams.a.addresses[0]",
            "gateway.upstreams.a.protocol",
            "gateway.routes.r.prefix",
            "gateway.routes.r.upstream",
            "gateway.routes.r.ratelimit",
            "gateway.routes.r.breaker",
            "gateway.routes.both.path",
            "ratelimit.policies.auth.limit",
        ] {
            assert!(paths.contains(&want), "{want} missing from {paths:?}");
        }
    }

    #[test]
    fn prefixes_become_two_patterns_and_carry_their_policies() {
        let c = GatewayConfig::from_toml(
            r#"
            [gateway.upstreams.a]
            addresses = ["127.0.0.1:9"]
            [gateway.routes.api]
            prefix = "/api/"
            upstream = "a"
            ratelimit = "auth"
            breaker = "critical"
            priority = "high"
            [gateway.routes.root]
            prefix = "/"
            upstream = "a"
            ratelimit = "none"
            "#,
        )
        .unwrap();
        let s = c.stack_config();
        assert_eq!(s.ratelimit.routes["/api/{*path}"], "auth");
        assert_eq!(s.ratelimit.routes["/api"], "auth");
        assert_eq!(s.breaker.routes["/api/{*path}"], "critical");
        assert_eq!(s.admission.routes["/api/{*path}"], "high");
        assert!(s.ratelimit.exempt_routes.contains(&"/{*path}".to_string()));
    }

    #[test]
    fn addresses_take_an_optional_scheme_and_need_a_port() {
        assert_eq!(
            authority("http://a.example:81/").unwrap().as_str(),
            "a.example:81"
        );
        assert_eq!(authority("10.0.0.1:8080").unwrap().port_u16(), Some(8080));
        assert!(authority("a.example").is_none());
    }
}
