//! OTLP export through opentelemetry-otlp.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId as OtelSpanId, SpanKind as OtelKind, Status, TraceFlags,
    TraceId as OtelTraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use opentelemetry_sdk::Resource;

use crate::span::{SpanKind, SpanRecord, Value};
use crate::tracer::{BoxFuture, SpanSink};

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318).
    HttpProtobuf,
}

/// Where and how spans are sent. Unset options fall back to the standard environment
/// variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
/// `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`), then to the OTLP defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    protocol: Protocol,
    endpoint: Option<String>,
    headers: Vec<(String, String)>,
    timeout: Option<Duration>,
    service_name: Option<String>,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        Self::from_env()
    }
}

impl OtlpConfig {
    /// gRPC, or what `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` / `OTEL_EXPORTER_OTLP_PROTOCOL`
    /// say (`grpc`, `http/protobuf`).
    pub fn from_env() -> Self {
        let protocol = std::env::var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|_| std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .map_or(Protocol::Grpc, |p| match p.trim() {
                "http/protobuf" => Protocol::HttpProtobuf,
                _ => Protocol::Grpc,
            });
        Self {
            protocol,
            endpoint: None,
            headers: Vec::new(),
            timeout: None,
            service_name: None,
        }
    }

    /// The transport.
    pub fn protocol(mut self, p: Protocol) -> Self {
        self.protocol = p;
        self
    }

    /// The collector: `http://collector:4317` for gRPC, `http://collector:4318/v1/traces`
    /// for HTTP.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// A header (gRPC metadata) sent with every export, e.g. an API key.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// How long one export may take inside the exporter.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = Some(t);
        self
    }

    /// `service.name` of the resource.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }
}

/// Why the OTLP exporter could not be built.
#[derive(Debug)]
pub struct OtlpError(String);

impl fmt::Display for OtlpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OTLP exporter: {}", self.0)
    }
}

impl std::error::Error for OtlpError {}

/// Sends spans to an OpenTelemetry collector over OTLP. Give it to
/// [`TracerBuilder::sink`](crate::TracerBuilder::sink); a collector that is down or hangs
/// costs requests nothing: the tracer's queue fills and further spans are dropped and
/// counted.
pub struct OtlpSink {
    exporter: opentelemetry_otlp::SpanExporter,
    scope: InstrumentationScope,
}

impl fmt::Debug for OtlpSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpSink").finish_non_exhaustive()
    }
}

impl OtlpSink {
    /// An exporter for `config`. Must be called inside a tokio runtime (gRPC channels are
    /// opened lazily, so a collector that is down is not an error here).
    pub fn new(config: OtlpConfig) -> Result<Self, OtlpError> {
        let err = |e: &dyn fmt::Display| OtlpError(e.to_string());
        let mut exporter = match config.protocol {
            Protocol::Grpc => {
                let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                if let Some(e) = &config.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if let Some(t) = config.timeout {
                    b = b.with_timeout(t);
                }
                if !config.headers.is_empty() {
                    let mut map = opentelemetry_otlp::tonic_types::metadata::MetadataMap::new();
                    for (k, v) in &config.headers {
                        let key = tonic::metadata::MetadataKey::from_bytes(
                            k.to_ascii_lowercase().as_bytes(),
                        )
                        .map_err(|e| err(&e))?;
                        map.insert(key, v.parse().map_err(|e| err(&e))?);
                    }
                    b = b.with_metadata(map);
                }
                b.build().map_err(|e| err(&e))?
            }
            Protocol::HttpProtobuf => {
                let mut b = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary);
                if let Some(e) = &config.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if let Some(t) = config.timeout {
                    b = b.with_timeout(t);
                }
                if !config.headers.is_empty() {
                    b = b.with_headers(config.headers.iter().cloned().collect::<HashMap<_, _>>());
                }
                b.build().map_err(|e| err(&e))?
            }
        };
        let mut resource = Resource::builder();
        if let Some(name) = config.service_name {
            resource = resource.with_service_name(name);
        }
        exporter.set_resource(&resource.build());
        Ok(Self {
            exporter,
            scope: InstrumentationScope::builder("garrison-trace")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }
}

pub(crate) fn to_span_data(r: SpanRecord, scope: &InstrumentationScope) -> SpanData {
    let ctx = SpanContext::new(
        OtelTraceId::from_bytes(r.trace_id.to_bytes()),
        OtelSpanId::from_bytes(r.span_id.to_bytes()),
        TraceFlags::SAMPLED,
        false,
        TraceState::default(),
    );
    let attributes = r
        .attributes
        .into_iter()
        .map(|(k, v)| match v {
            Value::Str(s) => KeyValue::new(k, s.into_owned()),
            Value::Int(i) => KeyValue::new(k, i),
        })
        .collect();
    SpanData {
        span_context: ctx,
        parent_span_id: r.parent.map_or(OtelSpanId::INVALID, |p| {
            OtelSpanId::from_bytes(p.to_bytes())
        }),
        parent_span_is_remote: r.parent_remote,
        span_kind: match r.kind {
            SpanKind::Server => OtelKind::Server,
            SpanKind::Client => OtelKind::Client,
        },
        name: r.name,
        start_time: r.start,
        end_time: r.end,
        attributes,
        dropped_attributes_count: 0,
        events: SpanEvents::default(),
        links: SpanLinks::default(),
        status: match r.error {
            Some(e) => Status::error(e),
            None => Status::Unset,
        },
        instrumentation_scope: scope.clone(),
    }
}

impl SpanSink for OtlpSink {
    fn export(&self, batch: Vec<SpanRecord>) -> BoxFuture<'_, Result<(), String>> {
        let data: Vec<SpanData> = batch
            .into_iter()
            .map(|r| to_span_data(r, &self.scope))
            .collect();
        Box::pin(async move { self.exporter.export(data).await.map_err(|e| e.to_string()) })
    }
}
