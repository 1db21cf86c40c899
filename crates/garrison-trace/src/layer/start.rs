//! Opening a request's trace: its ids and sampling, its request id, and its server span
//! with the OpenTelemetry HTTP attributes.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use garrison_core::TraceContext;
use http::header::{HOST, USER_AGENT};
use http::{Request, Version};

use super::finish::{Access, Finisher};
use super::traced::TracedRequest;
use super::{valid_request_id, Shared};
use crate::context::{RequestContext, RequestId};
use crate::ids;
use crate::sampler::Start;
use crate::span::{SpanKind, SpanRecord, Value};
use crate::w3c::Incoming;

/// Opens `req`'s trace: its ids, sampling, span and request id.
#[inline]
pub(super) fn start<B>(sh: &Shared, req: &mut Request<B>) -> TracedRequest {
    let (incoming, given_id) = Incoming::extract_with(req.headers(), Some(sh.request_id));
    #[cfg(feature = "tower-http")]
    let request_id = {
        let given = given_id.cloned();
        tower_http_request_id(sh, req, given.as_ref())
    };
    #[cfg(not(feature = "tower-http"))]
    let request_id = match given_id {
        Some(v) if valid_request_id(v) => RequestId::given(v.clone()),
        _ => RequestId::made(ids::request_id()),
    };
    #[cfg(feature = "otel")]
    let opened = match &sh.tracer.inner.pipeline {
        Some(p) => open_in_pipeline(sh, req, &incoming, p),
        None => open(sh, req, &incoming),
    };
    #[cfg(not(feature = "otel"))]
    let opened = open(sh, req, &incoming);
    let Opened {
        trace_id,
        span_id,
        sampled,
        local,
        root,
        #[cfg(feature = "otel")]
        otel,
    } = opened;
    #[cfg(feature = "otel")]
    let otel_recording = otel.as_ref().is_some_and(|o| o.is_recording());
    #[cfg(not(feature = "otel"))]
    let otel_recording = false;
    let recorded = local.is_some() || otel_recording;
    // the clock is only kept (an `Arc` clone) by requests that time themselves
    let started = (recorded || sh.access_log).then(|| {
        let clock = sh.tracer.inner.clock.clone();
        (clock.tick(), clock)
    });
    let ctx = Arc::new(RequestContext {
        trace_id,
        span_id,
        sampled,
        request_id,
        tracestate: incoming.tracestate,
        baggage: incoming.baggage,
        local,
        #[cfg(feature = "otel")]
        otel,
    });
    let ext = req.extensions_mut();
    if recorded {
        // garrison-metrics turns it into an exemplar; unsampled requests have none
        ext.insert(TraceContext {
            trace_id,
            span_id: Some(span_id.to_bytes()),
            sampled: true,
        });
    }
    let span = if sh.tracing_span {
        Some(Box::new(tracing::info_span!(
            target: "garrison_trace",
            "request",
            trace_id = %Hex(trace_id.to_bytes()),
            span_id = %Hex(span_id.to_bytes()),
            request_id = %ctx.request_id,
        )))
    } else {
        None
    };
    let access = sh.access_log.then(|| {
        let route = sh.resolver.resolve(req).as_str().to_owned();
        Box::new(Access {
            method: req.method().clone(),
            route,
            path: sh.redaction.path_and_query(req.uri()),
            enduser: enduser(req, sh),
        })
    });
    TracedRequest {
        finisher: Finisher {
            root,
            ctx,
            span,
            started,
            status: 0,
            access,
            done: false,
            caught: None,
        },
        request_id: sh.request_id,
        trace_response: sh.trace_response,
    }
}

/// The request id, one whichever of tower-http's request-id layers and this one runs first:
/// tower-http's `RequestId` already in the extensions (its `SetRequestIdLayer` ran first), else
/// the request's header, else the user's maker, else ours; each only when it is a sane id. The
/// id chosen goes into the extensions as tower-http's `RequestId` and into the request's header,
/// for the handler and for tower-http's layers inside this one.
#[cfg(feature = "tower-http")]
fn tower_http_request_id<B>(
    sh: &Shared,
    req: &mut Request<B>,
    given: Option<&http::HeaderValue>,
) -> RequestId {
    use tower_http::request_id::RequestId as TowerId;
    let theirs = req
        .extensions()
        .get::<TowerId>()
        .map(TowerId::header_value)
        .filter(|v| valid_request_id(v));
    let id = match theirs.or(given.filter(|v| valid_request_id(v))) {
        Some(v) => RequestId::given(v.clone()),
        None => sh
            .make_request_id
            .as_ref()
            .and_then(|make| {
                let mut head = Request::new(());
                *head.method_mut() = req.method().clone();
                *head.uri_mut() = req.uri().clone();
                *head.version_mut() = req.version();
                *head.headers_mut() = req.headers().clone();
                make(&head)
            })
            .filter(valid_request_id)
            .map_or_else(|| RequestId::made(ids::request_id()), RequestId::given),
    };
    let value = id.to_header_value();
    if req.headers().get(sh.request_id) != Some(&value) {
        req.headers_mut().insert(sh.request_id, value.clone());
    }
    req.extensions_mut().insert(TowerId::new(value));
    id
}

/// What opening a request's trace decided: its ids and what records its spans.
struct Opened {
    trace_id: garrison_core::TraceId,
    span_id: crate::w3c::SpanId,
    /// The sampled flag sent downstream.
    sampled: bool,
    local: Option<Arc<crate::tracer::LocalTrace>>,
    root: Option<Box<SpanRecord>>,
    #[cfg(feature = "otel")]
    otel: Option<crate::otel::OtelRequest>,
}

/// Garrison's own tracer decides and records.
#[inline(always)]
fn open<B>(sh: &Shared, req: &Request<B>, incoming: &Incoming) -> Opened {
    let trace_id = incoming.parent.map_or_else(ids::trace_id, |p| p.trace_id);
    let span_id = ids::span_id();
    let sampler = &sh.tracer.inner.sampler;
    // a caller's sampled flag decides only when the caller is believed; otherwise the
    // sampler decides by a draw of its own, not by the caller's trace id
    let believed = match (&sh.sampled_from, &incoming.parent) {
        (Some(proxies), Some(_)) => {
            garrison_core::peer_addr(req).is_some_and(|p| proxies.is_trusted(p.ip()))
        }
        _ => true,
    };
    let (decide_by, parent) = if believed {
        (trace_id, incoming.parent.as_ref())
    } else {
        (ids::trace_id(), None)
    };
    let start = sampler.start(decide_by, parent);
    let local = (start != Start::Drop).then(|| sh.tracer.local(trace_id, start));
    let root = local.as_ref().map(|_| {
        let (name, attributes) = server_attributes(req, sh);
        let now = SystemTime::now();
        Box::new(SpanRecord {
            trace_id,
            span_id,
            parent: incoming.parent.map(|p| p.span_id),
            parent_remote: incoming.parent.is_some(),
            name: Cow::Owned(name),
            kind: SpanKind::Server,
            start: now,
            end: now,
            attributes,
            error: None,
            events: Vec::new(),
        })
    });
    let sampled = sampler.head_flag(start, decide_by);
    Opened {
        trace_id,
        span_id,
        sampled,
        local,
        root,
        // the handler's OpenTelemetry spans join this trace, under this span
        #[cfg(feature = "otel")]
        otel: sh
            .otel_context
            .then(|| crate::otel::garrison_span(trace_id, span_id, sampled, incoming)),
    }
}

/// The OpenTelemetry pipeline decides and records (its sampler, ids and processors).
#[cfg(feature = "otel")]
#[inline(never)]
fn open_in_pipeline<B>(
    sh: &Shared,
    req: &Request<B>,
    incoming: &Incoming,
    pipeline: &crate::otel::Pipeline,
) -> Opened {
    use crate::otel::{ids as otel_ids, remote_parent, OtelRequest};
    let parent = remote_parent(incoming);
    let method = garrison_core::MethodLabel::from_method(req.method());
    let otel = OtelRequest::start(pipeline, SpanKind::Server, method.as_str(), &parent);
    let Some((trace_id, span_id, sampled)) = otel_ids(&otel.cx) else {
        // a provider that is shut down makes invalid spans: the request keeps garrison's ids
        return Opened {
            otel: None,
            ..open(sh, req, incoming)
        };
    };
    if otel.is_recording() {
        let (name, attributes) = server_attributes(req, sh);
        otel.describe(Cow::Owned(name), attributes);
    }
    Opened {
        trace_id,
        span_id,
        sampled,
        local: None,
        root: None,
        otel: Some(otel),
    }
}

/// The user's identity, when the layer reads one and the request has it.
fn enduser<B>(req: &Request<B>, sh: &Shared) -> Option<String> {
    let id = (sh.enduser?)(req.extensions())?;
    let id = String::from_utf8_lossy(&id[..id.len().min(128)]);
    Some(garrison_core::truncate_str(&id, 128).to_owned())
}

/// The server span's name (`GET /users/{id}`) and its attributes in the OpenTelemetry HTTP
/// conventions.
fn server_attributes<B>(req: &Request<B>, sh: &Shared) -> (String, Vec<(&'static str, Value)>) {
    let resolver = &sh.resolver;
    let method = req.method().as_str();
    let method_label = garrison_core::MethodLabel::from_method(req.method());
    let route = resolver.resolve(req).as_str();
    let mut name = String::with_capacity(method.len() + 1 + route.len());
    name.push_str(method_label.as_str());
    name.push(' ');
    name.push_str(route);
    let mut attributes: Vec<(&'static str, Value)> = Vec::with_capacity(12);
    let s = |v: &str| Value::Str(Cow::Owned(v.to_owned()));
    attributes.push((
        "http.request.method",
        Value::Str(Cow::Borrowed(method_label.as_str())),
    ));
    if method_label == garrison_core::MethodLabel::Other {
        attributes.push((
            "http.request.method_original",
            s(&method[..method.len().min(64)]),
        ));
    }
    attributes.push(("http.route", s(route)));
    if let Some(id) = enduser(req, sh) {
        attributes.push(("enduser.id", Value::Str(Cow::Owned(id))));
    }
    attributes.push((
        "url.path",
        s(garrison_core::truncate_str(req.uri().path(), 1024)),
    ));
    attributes.push((
        "url.scheme",
        Value::Str(Cow::Borrowed(match req.uri().scheme_str() {
            Some("https") => "https",
            _ => "http",
        })),
    ));
    let host = req.uri().host().map(str::to_owned).or_else(|| {
        req.headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(|h| strip_port(h).to_owned())
    });
    if let Some(h) = host {
        attributes.push(("server.address", s(garrison_core::truncate_str(&h, 255))));
    }
    if let Some(peer) = garrison_core::peer_addr(req) {
        attributes.push((
            "client.address",
            Value::Str(Cow::Owned(
                garrison_core::IpText::new(peer.ip()).as_str().to_owned(),
            )),
        ));
    }
    if let Some(ua) = req.headers().get(USER_AGENT).and_then(|v| v.to_str().ok()) {
        attributes.push((
            "user_agent.original",
            s(garrison_core::truncate_str(ua, 512)),
        ));
    }
    attributes.push((
        "network.protocol.version",
        Value::Str(Cow::Borrowed(match req.version() {
            Version::HTTP_09 => "0.9",
            Version::HTTP_10 => "1.0",
            Version::HTTP_2 => "2",
            Version::HTTP_3 => "3",
            _ => "1.1",
        })),
    ));
    (name, attributes)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split(']').next().map_or(host, |h| &h[1..]);
    }
    host.rsplit_once(':').map_or(host, |(h, _)| h)
}

/// Hex of a trace or span id, formatted only if a log line asks.
struct Hex<const N: usize>([u8; N]);

impl<const N: usize> std::fmt::Display for Hex<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut buf = [0u8; 64];
        f.write_str(garrison_core::hex_encode(&self.0, &mut buf[..2 * N]))
    }
}
