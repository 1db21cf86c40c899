//! The admin API, on its own listener. Every `/admin/*` route asks for
//! `Authorization: Bearer <admin token>`; `/metrics` and `/health/*` are open (scrapers and
//! probes), as on the main listener.
//!
//! | route | what it does |
//! |---|---|
//! | `GET /admin` | this list, and the generation in force |
//! | `GET /admin/breakers` | every breaker: state, window counts, time left open, calls |
//! | `POST /admin/breakers/{name}/reset` | closes it, window emptied |
//! | `POST /admin/breakers/{name}/open` | forces it open until reset |
//! | `POST /admin/breakers/{name}/disable` | lets every call through, recording nothing |
//! | `GET /admin/ratelimit` | the store (memory or Redis, up or falling back), keys, decisions by policy |
//! | `GET /admin/upstreams` | every address: failures in a row, ejection |
//! | `POST /admin/reload` | reads the configuration file again (as SIGHUP does) |
//! | `GET /admin/maintenance` | whether maintenance is on, with its message |
//! | `POST /admin/maintenance?message=…&retry_after=600` | maintenance on: every proxied request answered `503` with the message (health and scrape go on); kept across reloads |
//! | `DELETE /admin/maintenance` | maintenance off |
//! | `POST /admin/admission/drain` | sheds every request waiting for an admission slot |
//!
//! Breaker names hold `/` (`server:/api/{*path}`): percent-encode them in the path.

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use serde_json::{json, Value};

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::gateway::{Gateway, Generation};

/// The admin API's response body.
pub type AdminBody = Full<Bytes>;

/// Connections the admin listener serves at once; more wait in the kernel's backlog.
const ADMIN_MAX_CONNECTIONS: usize = 64;

/// The longest an admin connection stays open.
const ADMIN_CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// Serves the admin API of `gw` on `listener` until the gateway shuts down.
pub(crate) async fn serve(gw: Gateway, listener: TcpListener) {
    let mut stop = gw.shared.shutdown.subscribe();
    // scrapers, probes and operators: a few connections at once, never a crowd
    let slots = Arc::new(tokio::sync::Semaphore::new(ADMIN_MAX_CONNECTIONS));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let gw = gw.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                let gw = gw.clone();
                // who is asking: `[health] details_from` reads it
                req.extensions_mut()
                    .insert(garrison::garrison_core::PeerAddr(peer));
                async move { Ok::<_, Infallible>(handle(&gw, req).await) }
            });
            let mut b = auto::Builder::new(TokioExecutor::new());
            b.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10));
            // at most a minute each, whatever the client does
            let _ = tokio::time::timeout(
                ADMIN_CONNECTION_LIFETIME,
                b.serve_connection(TokioIo::new(stream), svc),
            )
            .await;
        });
    }
}

pub(crate) async fn handle<B>(gw: &Gateway, req: Request<B>) -> Response<AdminBody> {
    let gen = gw.current();
    let path = req.uri().path();
    let garrison = gen.garrison();
    let metrics_path = match garrison.config().metrics.path.as_str() {
        "" => "/metrics",
        p => p,
    };
    if path == metrics_path {
        return garrison.metrics().exporter().respond(&req);
    }
    let health = garrison.health();
    if let Some(probe) = health.probe_for(path) {
        return health.respond_to(probe, &req).map(Full::new);
    }
    if path != "/admin" && !path.starts_with("/admin/") {
        return reply(StatusCode::NOT_FOUND, json!({"error": "not found"}));
    }
    if !authorized(&gw.admin_token(), req.headers().get(header::AUTHORIZATION)) {
        let mut r = reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "the admin API needs Authorization: Bearer <admin token>"}),
        );
        r.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return r;
    }
    let method = req.method().clone();
    let route = path.trim_end_matches('/');
    if let Some(action) = route
        .strip_prefix("/admin")
        .filter(|r| matches!(*r, "/maintenance" | "/admission/drain"))
    {
        // the emergency actions, as a library user mounts them: under `/admin/`
        let mut parts = http::uri::Parts::default();
        parts.path_and_query = match req.uri().query() {
            Some(q) => format!("{action}?{q}").parse().ok(),
            None => action.parse().ok(),
        };
        let uri = http::Uri::from_parts(parts).unwrap_or_default();
        let inner = Request::builder()
            .method(req.method())
            .uri(uri)
            .body(())
            .unwrap_or_default();
        return garrison
            .emergency_service()
            .respond(&inner)
            .map(|b| Full::new(b.into()));
    }
    match (method, route) {
        (Method::GET, "/admin") => reply(
            StatusCode::OK,
            json!({
                "generation": gen.number(),
                "routes": [
                    "GET /admin/breakers",
                    "POST /admin/breakers/{name}/reset|open|disable",
                    "GET /admin/ratelimit",
                    "GET /admin/admission",
                    "GET /admin/upstreams",
                    "POST /admin/reload",
                    "GET|POST|DELETE /admin/maintenance",
                    "POST /admin/admission/drain",
                ],
            }),
        ),
        (Method::GET, "/admin/breakers") => {
            let list: Vec<Value> = garrison.breakers().list().iter().map(breaker).collect();
            reply(StatusCode::OK, json!({ "breakers": list }))
        }
        (Method::GET, "/admin/ratelimit") => reply(StatusCode::OK, ratelimit(&gen)),
        (Method::GET, "/admin/admission") => reply(StatusCode::OK, admission(&gen)),
        (Method::GET, "/admin/upstreams") => {
            let mut out = serde_json::Map::new();
            for (name, u) in gen.upstreams() {
                let addresses: Vec<Value> = u
                    .states()
                    .into_iter()
                    .map(|a| {
                        json!({
                            "address": a.address,
                            "failures_in_a_row": a.failures,
                            "ejected_for_ms": a.ejected_for.map(|d| d.as_millis() as u64),
                            "ejections": a.ejections,
                        })
                    })
                    .collect();
                out.insert(name.clone(), json!({ "addresses": addresses }));
            }
            reply(StatusCode::OK, json!({ "upstreams": out }))
        }
        (Method::POST, "/admin/reload") => match gw.reload().await {
            Ok(n) => reply(StatusCode::OK, json!({ "reloaded": true, "generation": n })),
            Err(e) => {
                let issues: Vec<Value> = e
                    .issues()
                    .iter()
                    .map(|i| json!({ "path": i.path, "message": i.message }))
                    .collect();
                tracing::warn!(error = %e, "reload refused: the configuration in force stays");
                reply(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({
                        "reloaded": false,
                        "error": "the new configuration is invalid; the one in force stays",
                        "issues": issues,
                        "generation": gen.number(),
                    }),
                )
            }
        },
        (Method::POST, r) if r.starts_with("/admin/breakers/") => {
            let rest = &r["/admin/breakers/".len()..];
            let Some((encoded, action)) = rest.rsplit_once('/') else {
                return reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": "POST /admin/breakers/{name}/reset|open|disable"}),
                );
            };
            let Some(name) = percent_decode(encoded) else {
                return reply(
                    StatusCode::BAD_REQUEST,
                    json!({"error": "the breaker name is not valid percent-encoded UTF-8"}),
                );
            };
            let b = garrison.breakers();
            let done = match action {
                "reset" => b.reset(&name),
                "open" => b.force_open(&name),
                "disable" => b.disable(&name),
                _ => {
                    return reply(
                        StatusCode::NOT_FOUND,
                        json!({"error": format!("`{action}` is not reset, open or disable")}),
                    )
                }
            };
            match done {
                Ok(()) => {
                    tracing::info!(breaker = %name, action, "breaker changed by an operator");
                    let snapshot = b.get(&name).map(|x| breaker(&x.snapshot()));
                    reply(StatusCode::OK, json!({ "breaker": snapshot }))
                }
                Err(_) => reply(
                    StatusCode::NOT_FOUND,
                    json!({"error": format!("no breaker `{name}` (GET /admin/breakers lists them)")}),
                ),
            }
        }
        (_, r) if r.starts_with("/admin") => reply(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown admin route or method (GET /admin lists them)"}),
        ),
        _ => reply(StatusCode::NOT_FOUND, json!({"error": "not found"})),
    }
}

fn breaker(s: &garrison::garrison_breaker::BreakerSnapshot) -> Value {
    let calls: serde_json::Map<String, Value> = s
        .calls
        .iter()
        .map(|(k, v)| ((*k).to_owned(), json!(v)))
        .collect();
    json!({
        "name": s.name,
        "state": s.state.as_str(),
        "window": {
            "calls": s.window.calls,
            "failures": s.window.failures,
            "slow": s.window.slow,
            "failure_rate": s.window.failure_rate(),
            "slow_rate": s.window.slow_rate(),
        },
        "open_remaining_ms": s.open_remaining.map(|d| d.as_millis() as u64),
        "trips": s.trips,
        "calls": calls,
    })
}

/// The admission controller's state: limit, in flight, queue by class, admitted and shed.
fn admission(gen: &Generation) -> Value {
    use garrison::garrison_admission::{Priority, ShedReason};
    let Some(a) = gen.garrison().admission() else {
        return json!({ "enabled": false });
    };
    let queued = a.queued_by_priority();
    let (admitted, shed) = a.counts();
    let classes: Vec<Value> = Priority::ALL
        .iter()
        .map(|p| {
            let i = p.index();
            let shed: serde_json::Map<String, Value> = ShedReason::ALL
                .iter()
                .enumerate()
                .map(|(r, reason)| (reason.as_str().to_owned(), json!(shed[i][r])))
                .collect();
            json!({
                "priority": p.as_str(),
                "queued": queued[i],
                "admitted": admitted[i],
                "shed": shed,
            })
        })
        .collect();
    json!({
        "enabled": true,
        "limit": a.limit(),
        "in_flight": a.in_flight(),
        "queued": a.queued(),
        "classes": classes,
    })
}

fn ratelimit(gen: &Generation) -> Value {
    let Some(l) = gen.garrison().rate_limiter() else {
        return json!({ "enabled": false });
    };
    let policies: Vec<Value> = l
        .policies()
        .map(|p| {
            let (allowed, limited, exempt) = l.decisions(p.name()).unwrap_or_default();
            json!({
                "name": p.name(),
                "limit": p.limit(),
                "period_s": p.period().as_secs_f64(),
                "burst": p.burst_size(),
                "decisions": { "allowed": allowed, "limited": limited, "exempt": exempt },
            })
        })
        .collect();
    #[allow(unused_mut)]
    let mut store = json!({ "kind": "memory" });
    #[cfg(feature = "redis")]
    if let Some(r) = l.redis_store() {
        let (ok, errors, fallbacks, lease_hits) = r.stats();
        store = json!({
            "kind": "redis",
            "available": r.is_available(),
            "mode": if r.is_available() { "redis" } else { "fallback" },
            "calls_ok": ok,
            "errors": errors,
            "fallback_decisions": fallbacks,
            "lease_hits": lease_hits,
        });
    }
    json!({
        "enabled": true,
        "store": store,
        "tracked_keys": l.tracked_keys(),
        "memory_bytes": l.memory_bytes(),
        "policies": policies,
    })
}

fn reply(status: StatusCode, body: Value) -> Response<AdminBody> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `Bearer <token>`, compared in constant time.
fn authorized(token: &str, given: Option<&HeaderValue>) -> bool {
    let Some(given) = given.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let Some(presented) = given
        .strip_prefix("Bearer ")
        .or_else(|| given.strip_prefix("bearer "))
    else {
        return false;
    };
    let (a, b) = (token.as_bytes(), presented.trim().as_bytes());
    if token.is_empty() || a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_must_match_exactly() {
        let ok = HeaderValue::from_static("Bearer s3cret");
        assert!(authorized("s3cret", Some(&ok)));
        for bad in ["Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"] {
            assert!(
                !authorized("s3cret", Some(&HeaderValue::from_static(bad))),
                "{bad}"
            );
        }
        assert!(!authorized("s3cret", None));
        assert!(!authorized("", Some(&HeaderValue::from_static("Bearer "))));
    }

    #[test]
    fn breaker_names_are_percent_decoded() {
        assert_eq!(
            percent_decode("server%3A%2Fapi%2F%7B*path%7D").unwrap(),
            "server:/api/{*path}"
        );
        assert!(percent_decode("bad%zz").is_none());
        assert!(percent_decode("cut%2").is_none());
    }
}
