//! The process's `tracing` subscriber: the logs on standard error and, when
//! `telemetry.otlp_endpoint` is set, the OpenTelemetry layer that exports the
//! request path's spans (`crate::trace`) over OTLP.
//!
//! Off, the OpenTelemetry layer is not installed at all, and the logs'
//! filter refuses the spans' target: their callsites are disabled once, and
//! the hot path pays a cached-interest load per span. The section is read
//! once at start; a reload that changes it is refused (`runtime::reload`).

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, SpanExporter};
use tracing::{Level, Subscriber};
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::Registry;

use crate::ca_bundle;
use crate::config::{OtlpProtocol, TelemetryConfig};
use crate::trace::TARGET;

/// The exporting half of the telemetry: flushed and stopped by `shutdown`.
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Sends the spans still queued and stops the exporter (bounded by the
    /// export timeout).
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("telemetry: last spans not exported: {e}");
        }
    }
}

/// The `telemetry` section of the configuration file at `path`, read before
/// the rest of the file is checked (the subscriber comes first). `None` when
/// the file cannot be read or parsed: the full load that follows reports why.
pub fn section_of(path: &Path) -> Option<TelemetryConfig> {
    let text = std::fs::read_to_string(path).ok()?;
    // Relative paths (`ca_file`) are relative to the file, as in the full load.
    let cfg = crate::config::Config::from_file_text(&text, path).ok()?;
    cfg.check().is_ok().then_some(cfg.telemetry)
}

/// Starts the OTLP exporter `cfg` asks for, or `None` when it asks for none.
/// Must be called inside the Tokio runtime (the gRPC channel lives there).
/// Errs when a header's environment variable is unset or not a header value.
pub fn start(cfg: &TelemetryConfig) -> Result<Option<Telemetry>, String> {
    let Some(endpoint) = cfg.otlp_endpoint.clone() else {
        return Ok(None);
    };
    let mut headers = HashMap::new();
    for (name, var) in &cfg.headers_from_env {
        let value = std::env::var(var)
            .map_err(|_| format!("telemetry.headers_from_env.{name}: environment variable {var} is not set"))?;
        http::HeaderValue::from_str(&value)
            .map_err(|_| format!("telemetry.headers_from_env.{name}: {var} is not a valid header value"))?;
        headers.insert(name.clone(), value);
    }
    let timeout = cfg.timeout.0;
    // The CA bundle an `https` endpoint's certificate must chain to, instead
    // of the public roots; errors name the key and the path.
    let ca =
        cfg.ca_file.as_deref().map(ca_bundle::read).transpose().map_err(|why| format!("telemetry.ca_file: {why}"))?;
    let tls = reqwest::Url::parse(&endpoint).is_ok_and(|u| u.scheme() == "https");
    let exporter = match cfg.protocol {
        OtlpProtocol::Grpc => {
            let mut metadata = tonic::metadata::MetadataMap::new();
            for (name, value) in &headers {
                let key = tonic::metadata::MetadataKey::from_bytes(name.as_bytes())
                    .map_err(|_| format!("telemetry.headers_from_env.{name}: not a gRPC metadata key"))?;
                let value = value.parse().map_err(|_| format!("telemetry.headers_from_env.{name}: not a value"))?;
                metadata.insert(key, value);
            }
            let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
            if tls {
                let tls = tonic::transport::ClientTlsConfig::new();
                let tls = match &ca {
                    Some(pem) => tls.ca_certificate(tonic::transport::Certificate::from_pem(pem)),
                    None => tls.with_webpki_roots(),
                };
                builder = builder.with_tls_config(tls);
            }
            builder.with_endpoint(endpoint).with_timeout(timeout).with_metadata(metadata).build()
        }
        OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(HttpClient(
                http_client(timeout, ca.as_deref()).map_err(|e| format!("telemetry: HTTP client: {e}"))?,
            ))
            .with_endpoint(endpoint)
            .with_timeout(timeout)
            .with_headers(headers)
            .build(),
    }
    .map_err(|e| format!("telemetry: cannot build the OTLP exporter: {e}"))?;
    Ok(Some(Telemetry { provider: provider(cfg, exporter) }))
}

/// A tracer provider exporting to `exporter` with `cfg`'s sampling, service
/// name and batch delay (public for the benches' in-process exporter).
pub fn provider(cfg: &TelemetryConfig, exporter: impl SpanExporter + 'static) -> SdkTracerProvider {
    let batch = BatchConfigBuilder::default().with_scheduled_delay(cfg.batch_delay.0).build();
    SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter).with_batch_config(batch).build())
        // A caller's sampling decision (the `traceparent` flag) is followed;
        // traces that start here are kept at `sample_ratio`.
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sample_ratio))))
        .with_resource(Resource::builder().with_service_name(cfg.service_name.clone()).build())
        .build()
}

impl From<SdkTracerProvider> for Telemetry {
    fn from(provider: SdkTracerProvider) -> Telemetry {
        Telemetry { provider }
    }
}

/// The process's subscriber: logs (`json` or text) at `filter` to `writer`,
/// never showing the exported spans; and those spans to `telemetry`'s
/// exporter when there is one.
pub fn subscriber<W>(
    json: bool,
    filter: EnvFilter,
    writer: W,
    telemetry: Option<&Telemetry>,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = if json { fmt.json().boxed() } else { fmt.boxed() };
    let logs = fmt.with_filter(filter.and(filter_fn(|meta| meta.target() != TARGET)));
    let registry = tracing_subscriber::registry().with(logs);
    match telemetry {
        None => Box::new(registry),
        Some(t) => {
            let tracer = t.provider.tracer("stsgate");
            let otel = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_tracked_inactivity(false)
                .with_target(false)
                .with_level(false)
                // Only the spans made for export, and none of the logs' events.
                .with_filter(Targets::new().with_target(TARGET, Level::TRACE));
            Box::new(registry.with(otel))
        }
    }
}

/// The OTLP/HTTP client: the public roots, or only the CAs of `ca` (PEM).
fn http_client(timeout: Duration, ca: Option<&[u8]>) -> reqwest::Result<reqwest::Client> {
    crate::install_crypto_provider();
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("stsgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(pem) = ca {
        builder = builder.tls_built_in_root_certs(false);
        for cert in reqwest::Certificate::from_pem_bundle(pem)? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build()
}

/// The largest OTLP/HTTP response body read.
const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// OTLP/HTTP over the reqwest stsgate already uses for its IdPs (the
/// exporter's own reqwest feature would pull a second major version).
#[derive(Debug, Clone)]
struct HttpClient(reqwest::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for HttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let url = parts.uri.to_string();
        let mut response = self.0.request(parts.method, url).headers(parts.headers).body(body).send().await?;
        let mut out = http::Response::builder().status(response.status());
        if let Some(headers) = out.headers_mut() {
            *headers = response.headers().clone();
        }
        // A collector answers with a small status message: read no more.
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(opentelemetry_http::ResponseBodyTooLarge::new().into());
            }
            body.extend_from_slice(&chunk);
        }
        Ok(out.body(body.into())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TelemetryConfig;
    use crate::trace::continue_trace;

    #[derive(Debug)]
    struct Drop;

    impl SpanExporter for Drop {
        async fn export(&self, _: Vec<opentelemetry_sdk::trace::SpanData>) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
    }

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn off_the_spans_are_disabled_and_the_logs_are_not() {
        let off = subscriber(false, EnvFilter::new("trace"), std::io::sink, None);
        tracing::subscriber::with_default(off, || {
            let span = tracing::info_span!(target: TARGET, "check");
            assert!(span.is_disabled(), "no layer wants the exported spans");
            assert!(!continue_trace(&span, Some(PARENT), None));
            assert!(!tracing::info_span!("logged").is_disabled(), "the logs' own spans still are");
        });
    }

    #[test]
    fn on_the_spans_take_a_valid_traceparent_only() {
        let telemetry = Telemetry::from(provider(&TelemetryConfig::default(), Drop));
        let on = subscriber(false, EnvFilter::new("info"), std::io::sink, Some(&telemetry));
        tracing::subscriber::with_default(on, || {
            let span = tracing::info_span!(target: TARGET, "check");
            assert!(!span.is_disabled());
            assert!(continue_trace(&span, Some(PARENT), Some("vendor=1")));
            let bad = [
                "",
                "junk",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                "00-4bf9-00f0-01",
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0é",
            ];
            for bad in bad {
                assert!(!continue_trace(&tracing::info_span!(target: TARGET, "check"), Some(bad), None), "{bad:?}");
            }
            assert!(!continue_trace(&tracing::info_span!(target: TARGET, "check"), None, Some("vendor=1")));
            // A future version's extra fields are allowed; an overlong tracestate is dropped, not fatal.
            let v1 = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future";
            assert!(continue_trace(&tracing::info_span!(target: TARGET, "check"), Some(v1), None));
            let long = "k=v,".repeat(400);
            assert!(continue_trace(&tracing::info_span!(target: TARGET, "check"), Some(PARENT), Some(&long)));
        });
        telemetry.shutdown();
    }

    #[test]
    fn a_missing_header_variable_is_an_error_naming_it() {
        let cfg = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            headers_from_env: [("authorization".into(), "STSGATE_TEST_UNSET_OTLP_AUTH".into())].into(),
            ..TelemetryConfig::default()
        };
        let err = start(&cfg).err().expect("unset variable");
        assert_eq!(
            err,
            "telemetry.headers_from_env.authorization: environment variable STSGATE_TEST_UNSET_OTLP_AUTH is not set"
        );
        assert!(start(&TelemetryConfig::default()).unwrap().is_none(), "off without an endpoint");
    }

    /// `ca_file` is read at start: a file that cannot be read, or holds no
    /// certificate, stops the start with the key and the path.
    #[test]
    fn a_ca_file_that_cannot_serve_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("stsgate-telemetry-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ca.pem");
        for protocol in [OtlpProtocol::Grpc, OtlpProtocol::Http] {
            let cfg = TelemetryConfig {
                otlp_endpoint: Some("https://collector.example:4317".into()),
                protocol,
                ca_file: Some(path.clone()),
                ..TelemetryConfig::default()
            };
            let err = start(&cfg).err().expect("no file");
            assert!(err.starts_with(&format!("telemetry.ca_file: cannot read {}: ", path.display())), "{err}");
            std::fs::write(&path, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
            let err = start(&cfg).err().expect("no certificate");
            assert_eq!(err, format!("telemetry.ca_file: {} holds no PEM certificate", path.display()));
            std::fs::remove_file(&path).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
