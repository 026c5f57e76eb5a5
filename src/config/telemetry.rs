//! `telemetry`: OpenTelemetry traces exported over OTLP (see
//! `runtime::telemetry`). Off unless `otlp_endpoint` is set; read once at
//! start (a reload that changes it is refused).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::checks::{Issues, check_url};
use super::values::Dur;

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OtlpProtocol {
    /// OTLP/gRPC (usually port 4317): HTTP/2, in plaintext to an `http`
    /// URL (a collector beside stsgate: sidecar, node agent), over TLS to an
    /// `https` one.
    #[default]
    Grpc,
    /// OTLP/HTTP with protobuf bodies (usually port 4318, path `/v1/traces`);
    /// `https` URLs are verified against the web PKI roots.
    Http,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Where spans are sent, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://collector:4318/v1/traces` (HTTP). Unset: no traces at all, and
    /// no tracing layer installed.
    pub otlp_endpoint: Option<String>,
    pub protocol: OtlpProtocol,
    /// The `service.name` resource attribute.
    pub service_name: String,
    /// The fraction of traces started here that are kept, 0.0 to 1.0. A
    /// request that carries a W3C `traceparent` follows its sampled flag.
    pub sample_ratio: f64,
    /// Longest a finished span waits before it is sent.
    pub batch_delay: Dur,
    /// Deadline of one export.
    pub timeout: Dur,
    /// Headers sent with every export (a collector's credentials), as
    /// header name → the environment variable holding the value, so that
    /// the secret is not in the file.
    pub headers_from_env: BTreeMap<String, String>,
    /// For an `https` endpoint: the CA certificates (PEM) that sign the
    /// collector's certificate, trusted instead of the public roots.
    pub ca_file: Option<PathBuf>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: None,
            protocol: OtlpProtocol::Grpc,
            service_name: "stsgate".into(),
            sample_ratio: 1.0,
            batch_delay: Dur::secs(5),
            timeout: Dur::secs(10),
            headers_from_env: BTreeMap::new(),
            ca_file: None,
        }
    }
}

impl TelemetryConfig {
    /// Whether traces are exported.
    pub fn enabled(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    pub(super) fn check(&self, issues: &mut Issues) {
        if let Some(url) = &self.otlp_endpoint {
            if let Err(why) = check_url(url) {
                issues.add("telemetry.otlp_endpoint", why);
            } else if self.ca_file.is_some() && !reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "https") {
                issues.add("telemetry.ca_file", format!("is for TLS, but otlp_endpoint {url} is not https"));
            }
        } else if self.ca_file.is_some() {
            issues.add("telemetry.ca_file", "is for the OTLP endpoint's TLS, and otlp_endpoint is not set");
        }
        if self.service_name.trim().is_empty() {
            issues.add("telemetry.service_name", "must not be empty");
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            issues.add("telemetry.sample_ratio", "must be between 0.0 and 1.0");
        }
        if self.batch_delay.0.is_zero() || self.batch_delay.0.as_secs() > 60 {
            issues.add("telemetry.batch_delay", "must be more than 0s and at most 60s");
        }
        if self.timeout.0.is_zero() || self.timeout.0.as_secs() > 60 {
            issues.add("telemetry.timeout", "must be more than 0s and at most 60s");
        }
        for (name, var) in &self.headers_from_env {
            let path = format!("telemetry.headers_from_env.{name}");
            let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
            if name.is_empty() || !name.bytes().all(token) || name.bytes().any(|b| b.is_ascii_uppercase()) {
                issues.add(&path, format!("{name:?} is not a lower-case HTTP header name"));
            }
            if var.is_empty() || !var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                issues.add(&path, format!("{var:?} is not an environment variable name"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::{MINIMAL, issues_in};

    fn issues(telemetry: &str) -> Vec<String> {
        issues_in(&format!("telemetry: {telemetry}\n{MINIMAL}"))
    }

    #[test]
    fn off_by_default_with_the_documented_defaults() {
        let cfg = Config::from_yaml_str(MINIMAL).unwrap();
        assert_eq!(cfg.telemetry, TelemetryConfig::default());
        assert!(!cfg.telemetry.enabled());
        let spelled = "telemetry:\n  protocol: grpc\n  service_name: stsgate\n  sample_ratio: 1.0\n  \
                       batch_delay: 5s\n  timeout: 10s\n";
        assert_eq!(Config::from_yaml_str(&format!("{spelled}{MINIMAL}")).unwrap().telemetry, cfg.telemetry);
        let on = Config::from_yaml_str(&format!("telemetry: {{ otlp_endpoint: 'http://127.0.0.1:4317' }}\n{MINIMAL}"));
        assert!(on.unwrap().telemetry.enabled());
    }

    #[test]
    fn bad_values_are_named_by_key_path() {
        assert!(issues("{ otlp_endpoint: 'http://otel:4317', sample_ratio: 0.25, batch_delay: 100ms }").is_empty());
        assert!(issues("{ otlp_endpoint: 'https://otel/v1/traces', protocol: http }").is_empty());
        assert_eq!(issues("{ otlp_endpoint: 'otel:4317' }").len(), 1);
        assert!(issues("{ otlp_endpoint: 'otel:4317' }")[0].starts_with("telemetry.otlp_endpoint: "));
        assert!(issues("{ otlp_endpoint: 'https://otel:4317' }").is_empty(), "OTLP/gRPC over TLS");
        assert!(issues("{ otlp_endpoint: 'https://otel:4317', ca_file: /etc/otel/ca.pem }").is_empty());
        assert_eq!(
            issues("{ otlp_endpoint: 'http://otel:4317', ca_file: /etc/otel/ca.pem }"),
            ["telemetry.ca_file: is for TLS, but otlp_endpoint http://otel:4317 is not https"]
        );
        assert_eq!(
            issues("{ ca_file: /etc/otel/ca.pem }"),
            ["telemetry.ca_file: is for the OTLP endpoint's TLS, and otlp_endpoint is not set"]
        );
        assert_eq!(issues("{ sample_ratio: 1.5 }"), ["telemetry.sample_ratio: must be between 0.0 and 1.0"]);
        assert_eq!(issues("{ sample_ratio: .nan }"), ["telemetry.sample_ratio: must be between 0.0 and 1.0"]);
        assert_eq!(issues("{ service_name: ' ' }"), ["telemetry.service_name: must not be empty"]);
        assert_eq!(issues("{ batch_delay: 0s }"), ["telemetry.batch_delay: must be more than 0s and at most 60s"]);
        assert_eq!(issues("{ timeout: 2m }"), ["telemetry.timeout: must be more than 0s and at most 60s"]);
        assert_eq!(
            issues("{ headers_from_env: { Authorization: 'OTLP-AUTH' } }"),
            [
                "telemetry.headers_from_env.Authorization: \"Authorization\" is not a lower-case HTTP header name",
                "telemetry.headers_from_env.Authorization: \"OTLP-AUTH\" is not an environment variable name",
            ]
        );
        assert!(issues("{ headers_from_env: { authorization: OTLP_AUTH } }").is_empty());
        let err = Config::from_yaml_str(&format!("telemetry: {{ protocol: udp }}\n{MINIMAL}")).unwrap_err().to_string();
        assert!(err.contains("`telemetry.protocol`"), "{err}");
    }
}
