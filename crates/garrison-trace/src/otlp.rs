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
#[non_exhaustive]
pub enum Protocol {
    /// OTLP/gRPC (default port 4317).
    Grpc,
    /// OTLP/HTTP with protobuf bodies (default port 4318).
    HttpProtobuf,
}

/// Where and how spans are sent. Unset options fall back to the standard environment
/// variables (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`,
/// `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_EXPORTER_OTLP_CERTIFICATE` and their `_TRACES_` forms,
/// `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), then to the OTLP defaults.
///
/// An `https://` endpoint is reached over TLS (rustls), trusting the webpki roots and the CA
/// certificates of [`ca_certificate`](Self::ca_certificate) (or
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`): a collector whose certificate is not trusted has its
/// exports fail, counted as dropped spans; requests never wait on it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OtlpConfig {
    protocol: Protocol,
    endpoint: Option<String>,
    headers: Vec<(String, String)>,
    timeout: Option<Duration>,
    service_name: Option<String>,
    ca_certificate: Option<std::path::PathBuf>,
}

/// The first of `names` that is set in the environment and not blank.
fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .find(|v| !v.trim().is_empty())
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
            ca_certificate: None,
        }
    }

    /// PEM CA certificates to trust beside the webpki roots, for an `https://` collector
    /// with a private CA. Default: `OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE` or
    /// `OTEL_EXPORTER_OTLP_CERTIFICATE`.
    pub fn ca_certificate(mut self, pem_file: impl Into<std::path::PathBuf>) -> Self {
        self.ca_certificate = Some(pem_file.into());
        self
    }

    /// Whether the collector is reached over TLS: the endpoint given, or else the one in the
    /// environment, starts with `https://`.
    fn is_https(&self) -> bool {
        self.endpoint
            .clone()
            .or_else(|| {
                env_first(&[
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                ])
            })
            .is_some_and(|e| e.trim().to_ascii_lowercase().starts_with("https://"))
    }

    /// The PEM text of the CA certificates to trust, read now: a missing file or one without
    /// a certificate is an error at start.
    fn ca_pem(&self) -> Result<Option<Vec<u8>>, OtlpError> {
        let path = match &self.ca_certificate {
            Some(p) => p.clone(),
            None => match env_first(&[
                "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                "OTEL_EXPORTER_OTLP_CERTIFICATE",
            ]) {
                Some(p) => p.into(),
                None => return Ok(None),
            },
        };
        let pem = std::fs::read(&path)
            .map_err(|e| OtlpError(format!("CA certificate {}: {e}", path.display())))?;
        if ca_certificates(&pem).is_empty() {
            return Err(OtlpError(format!(
                "CA certificate {}: no PEM certificate in it",
                path.display()
            )));
        }
        Ok(Some(pem))
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

fn ca_certificates(pem: &[u8]) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .collect()
}

/// The HTTP client of OTLP/HTTP: rustls with the ring provider, the webpki roots and `ca`.
fn http_client(ca: Option<&[u8]>, timeout: Option<Duration>) -> Result<reqwest::Client, OtlpError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for cert in ca.map(ca_certificates).unwrap_or_default() {
        roots
            .add(cert)
            .map_err(|e| OtlpError(format!("CA certificate: {e}")))?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| OtlpError(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut b = reqwest::Client::builder().tls_backend_preconfigured(tls);
    if let Some(t) = timeout {
        b = b.timeout(t);
    }
    b.build().map_err(|e| OtlpError(e.to_string()))
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
        let ca = config.ca_pem()?;
        let mut exporter = match config.protocol {
            Protocol::Grpc => {
                let mut b = opentelemetry_otlp::SpanExporter::builder().with_tonic();
                if let Some(e) = &config.endpoint {
                    b = b.with_endpoint(e.clone());
                }
                if let Some(t) = config.timeout {
                    b = b.with_timeout(t);
                }
                if config.is_https() {
                    let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
                    if let Some(pem) = &ca {
                        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
                    }
                    b = b.with_tls_config(tls);
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
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_http_client(http_client(ca.as_deref(), config.timeout)?);
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
        events: {
            let mut events = SpanEvents::default();
            events.events = r
                .events
                .into_iter()
                .map(|e| {
                    opentelemetry::trace::Event::new(
                        e.name,
                        e.time,
                        e.attributes
                            .into_iter()
                            .map(|(k, v)| match v {
                                Value::Str(s) => KeyValue::new(k, s.into_owned()),
                                Value::Int(i) => KeyValue::new(k, i),
                            })
                            .collect(),
                        0,
                    )
                })
                .collect();
            events
        },
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
