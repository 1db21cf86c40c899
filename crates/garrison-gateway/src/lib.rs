#![doc = include_str!("../README.md")]
//!
//! # What a request goes through
//!
//! 1. the connection limits: `header_read_timeout` (slow clients are cut off),
//!    `max_header_bytes` and `max_headers` (`431`), `max_connections`;
//! 2. Garrison's layer, in the order of the design: trace, metrics, health routes and
//!    `/metrics`, rate limit, breaker — configured by the same sections as
//!    `garrison-config.example.toml`, with each route's `ratelimit` policy and `breaker`
//!    profile applied to its patterns;
//! 3. the [`Proxy`]: a request body over its route's `max_body_bytes` is `413` (at once
//!    when its `Content-Length` says so, else once it grows past the limit on its way); the
//!    most specific route's upstream, addresses in turn with passive
//!    ejection, hop-by-hop headers removed, `Forwarded` and `X-Forwarded-*` added,
//!    `traceparent` carried on with a client span, bodies streamed both ways; a refused
//!    connection is `502`, a connect or response timeout `504`, each with a JSON body.
//!    A request that an address refuses, or cannot be connected to in time, goes to the
//!    next address: with its body, which none of it was sent (HTTP/1.1 upstreams), or
//!    when it has none (h2c upstreams, whose client keeps a request it could not send).
//!
//! # Operating it
//!
//! - The admin API ([`admin`]) on `admin_listen`: breakers (list, reset, force open,
//!   disable), the rate-limit store, upstream addresses, reload. Bearer token required.
//! - `/metrics` has the gateway's families beside the stack's: each upstream address in the
//!   rotation or not (`garrison_gateway_upstream_address_up`), its failures in a row and
//!   ejections, the tunnels open and ended, by how, and the bytes they carried each way.
//!   The deep `/health` route has a `gateway-upstreams` check (not critical): `warn` while
//!   some addresses of an upstream are ejected, `fail` while all are.
//! - [`Gateway::reload`] (SIGHUP, or `POST /admin/reload`): a valid file takes over from
//!   the next request without dropping a connection; an invalid one is refused with every
//!   problem and the old configuration keeps serving.
//! - [`Gateway::shutdown`] (SIGTERM, SIGINT): readiness fails, listeners close, requests
//!   in flight finish within `shutdown_grace`, spans are flushed.
//!
//! Protocol upgrades: an HTTP/1.1 request that asks to switch to a protocol its route's
//! `upgrades` names (default: `websocket`) goes upstream over a new connection of its own
//! (HTTP/1.1, whatever the upstream's `protocol`), and once the upstream answers `101
//! Switching Protocols` the client's connection and that one are joined into a tunnel until
//! either side closes it, or until it moves no byte for the upstream's
//! `tunnel_idle_timeout`. The request and its `101` pass through the whole stack (traced,
//! measured, rate limited, counted by the breaker); the tunnel's bytes do not. A tunnel keeps
//! its client connection's place among `max_connections`, and a shutdown closes the open
//! tunnels at once. Any other `Upgrade` is removed, as a hop-by-hop header;
//! HTTP/2's extended `CONNECT` (RFC 8441) is not proxied.

#![deny(missing_docs)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod admin;
mod body;
pub mod config;
pub mod demo;
mod failure;
mod forwarding;
mod gateway;
mod metrics;
pub mod path;
mod pool;
mod proxy;
mod server;
mod stall;
mod timer;
mod tunnel;
mod upstream;

pub use body::{ClientBody, UpstreamBody};
pub use config::{GatewayConfig, GatewaySection, RouteConfig, UpstreamConfig, DEFAULT_CONFIG};
pub use gateway::{Gateway, GatewayService, Generation};
pub use pool::PooledBody;
pub use proxy::{Proxy, ProxyBody};
pub use server::bind;
pub use upstream::{AddressState, Upstream};
