//! `listen`: where the listeners bind, and the limits on their connections.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::checks::Issues;
use super::clients::{Client, ClientAuthMethod};
use super::values::Dur;
use super::values::PeerNet;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    pub shutdown_grace: Dur,
    /// Most connections the gRPC listener holds at once; further ones are
    /// accepted and closed at once (each listener has its own cap, so a flood
    /// of one cannot take the file descriptors the other needs).
    pub grpc_max_connections: usize,
    /// Most connections the HTTP listener holds at once.
    pub http_max_connections: usize,
    /// A new connection must finish its TLS handshake (with `grpc_tls` or
    /// `http_tls`) and send the HTTP/2 preface (gRPC) or a complete first
    /// request head (HTTP) within this.
    pub handshake_timeout: Dur,
    /// HTTP listener, HTTP/1: a later request head must be complete this long
    /// after its first byte.
    pub header_read_timeout: Dur,
    /// HTTP listener: a request must be answered (body read included) within this.
    pub request_timeout: Dur,
    /// HTTP listener: a connection with no request in flight is closed after this.
    pub idle_timeout: Dur,
    /// Both listeners, HTTP/2: ping a connection that sent nothing for this long...
    pub http2_keepalive_interval: Dur,
    /// ...and close it when the ping is not answered within this.
    pub http2_keepalive_timeout: Dur,
    /// Mutual TLS on the gRPC listener: the Check caller proves who it is
    /// with a client certificate. None: plaintext.
    pub grpc_tls: Option<GrpcTls>,
    /// TLS on the HTTP listener (token endpoint, JWKS, metadata, probes),
    /// client certificates optional or required. None: plaintext.
    pub http_tls: Option<HttpTls>,
    /// Where the token endpoint learns a client's certificate for RFC 8705
    /// `tls_client_auth`. Unset: the TLS connection when `http_tls` has a
    /// `client_ca`, else nowhere.
    pub http_client_cert: Option<HttpClientCert>,
}

/// `listen.grpc_tls`: the gRPC listener's certificate and the CA its
/// clients' certificates must chain to. The paths are bound at start-up; the
/// files' contents are re-read when they change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTls {
    /// The server certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The CA certificates (PEM) client certificates must chain to; a client
    /// without a certificate is refused in the handshake.
    pub client_ca: PathBuf,
    /// How often the three files are read again; new content (a Kubernetes
    /// Secret update) is served to new connections.
    #[serde(default = "GrpcTls::default_reload_interval")]
    pub reload_interval: Dur,
}

impl GrpcTls {
    fn default_reload_interval() -> Dur {
        Dur::secs(30)
    }

    /// The three files, with their keys under `listen.grpc_tls`.
    pub(crate) fn files(&self) -> [(&'static str, &Path); 3] {
        [("cert", &self.cert), ("key", &self.key), ("client_ca", &self.client_ca)]
    }

    fn check(&self, issues: &mut Issues) {
        for (key, path) in self.files() {
            if path.as_os_str().is_empty() {
                issues.add(format!("listen.grpc_tls.{key}"), "must not be empty");
            }
        }
        let d = self.reload_interval.0;
        if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
            issues.add("listen.grpc_tls.reload_interval", "must be between 1s and 1day");
        }
    }
}

/// `listen.http_tls`: the HTTP listener's certificate and, optionally, the
/// CA client certificates are verified against. Like `grpc_tls`, the paths
/// are bound at start-up and the files' contents re-read when they change.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpTls {
    /// The server certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: PathBuf,
    /// The CA certificates (PEM) a client certificate must chain to; a
    /// client presenting one that does not is refused in the handshake.
    /// None: client certificates are not asked for.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// `optional` (default): a client may connect without a certificate, so
    /// that JWKS, metadata and probes stay reachable; `required`: every
    /// connection must present one (needs `client_ca`).
    #[serde(default)]
    pub client_auth: ClientCertPolicy,
    /// How often the files are read again.
    #[serde(default = "GrpcTls::default_reload_interval")]
    pub reload_interval: Dur,
}

/// Whether the HTTP listener's TLS handshake insists on a client certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertPolicy {
    #[default]
    Optional,
    Required,
}

/// `listen.http_client_cert`: where the token endpoint takes a client's
/// certificate from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpClientCert {
    pub source: ClientCertSource,
    /// `xfcc` only: the TCP peers (the mTLS-terminating proxy in front of
    /// stsgate) whose `x-forwarded-client-cert` is believed.
    #[serde(default)]
    pub xfcc_trusted_peers: Vec<PeerNet>,
}

/// Where a token endpoint client's certificate comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertSource {
    /// The certificate the client presented in the TLS handshake with the
    /// HTTP listener (`listen.http_tls.client_ca`).
    Tls,
    /// The last element of `x-forwarded-client-cert`, set by a proxy that
    /// verified the client's certificate, from `xfcc_trusted_peers` only.
    Xfcc,
}

impl ClientCertSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientCertSource::Tls => "tls",
            ClientCertSource::Xfcc => "xfcc",
        }
    }
}

impl HttpTls {
    /// The files, with their keys under `listen.http_tls`.
    pub(crate) fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = vec![("cert", self.cert.as_path()), ("key", self.key.as_path())];
        if let Some(ca) = &self.client_ca {
            files.push(("client_ca", ca.as_path()));
        }
        files
    }

    fn check(&self, issues: &mut Issues) {
        for (key, path) in self.files() {
            if path.as_os_str().is_empty() {
                issues.add(format!("listen.http_tls.{key}"), "must not be empty");
            }
        }
        if self.client_auth == ClientCertPolicy::Required && self.client_ca.is_none() {
            issues.add("listen.http_tls.client_auth", "required needs a client_ca to verify client certificates with");
        }
        let d = self.reload_interval.0;
        if d < Duration::from_secs(1) || d > Duration::from_secs(86_400) {
            issues.add("listen.http_tls.reload_interval", "must be between 1s and 1day");
        }
    }
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            grpc: SocketAddr::from(([0, 0, 0, 0], 9191)),
            http: SocketAddr::from(([0, 0, 0, 0], 8080)),
            shutdown_grace: Dur::secs(10),
            // Envoys (one or two connections per worker) are the gRPC clients: room
            // for a few thousand sidecars per replica. Both caps together stay far
            // below the usual 65536 or more descriptors of a container; start-up
            // lowers them to fit a smaller RLIMIT_NOFILE (see `listener::fit_to_fd_limit`).
            grpc_max_connections: 4096,
            http_max_connections: 1024,
            handshake_timeout: Dur::secs(10),
            header_read_timeout: Dur::secs(10),
            request_timeout: Dur::secs(30),
            idle_timeout: Dur::secs(60),
            http2_keepalive_interval: Dur::secs(30),
            http2_keepalive_timeout: Dur::secs(10),
            grpc_tls: None,
            http_tls: None,
            http_client_cert: None,
        }
    }
}

impl Listen {
    /// The connection limits, as `(key, value)`: bound at start-up, so a
    /// reload may not change them.
    pub(crate) fn limit_settings(&self) -> [(&'static str, String); 8] {
        [
            ("listen.grpc_max_connections", self.grpc_max_connections.to_string()),
            ("listen.http_max_connections", self.http_max_connections.to_string()),
            ("listen.handshake_timeout", self.handshake_timeout.to_string()),
            ("listen.header_read_timeout", self.header_read_timeout.to_string()),
            ("listen.request_timeout", self.request_timeout.to_string()),
            ("listen.idle_timeout", self.idle_timeout.to_string()),
            ("listen.http2_keepalive_interval", self.http2_keepalive_interval.to_string()),
            ("listen.http2_keepalive_timeout", self.http2_keepalive_timeout.to_string()),
        ]
    }

    pub(super) fn check(&self, issues: &mut Issues) {
        for (key, max) in
            [("grpc_max_connections", self.grpc_max_connections), ("http_max_connections", self.http_max_connections)]
        {
            if !(1..=1_000_000).contains(&max) {
                issues.add(format!("listen.{key}"), "must be between 1 and 1000000");
            }
        }
        let secs = Duration::from_secs;
        for (key, d, max) in [
            ("handshake_timeout", self.handshake_timeout, secs(300)),
            ("header_read_timeout", self.header_read_timeout, secs(300)),
            ("request_timeout", self.request_timeout, secs(600)),
            ("idle_timeout", self.idle_timeout, secs(3600)),
            ("http2_keepalive_interval", self.http2_keepalive_interval, secs(3600)),
            ("http2_keepalive_timeout", self.http2_keepalive_timeout, secs(300)),
        ] {
            if d.0 < secs(1) || d.0 > max {
                issues.add(format!("listen.{key}"), format!("must be between 1s and {}", Dur(max)));
            }
        }
        if let Some(tls) = &self.grpc_tls {
            tls.check(issues);
        }
        if let Some(tls) = &self.http_tls {
            tls.check(issues);
        }
        self.check_client_cert(issues);
    }

    /// Where the token endpoint takes client certificates from: as
    /// configured, else the TLS handshake when it asks for them, else nowhere.
    pub fn client_cert_source(&self) -> Option<ClientCertSource> {
        match (&self.http_client_cert, &self.http_tls) {
            (Some(c), _) => Some(c.source),
            (None, Some(tls)) if tls.client_ca.is_some() => Some(ClientCertSource::Tls),
            _ => None,
        }
    }

    fn check_client_cert(&self, issues: &mut Issues) {
        let Some(c) = &self.http_client_cert else { return };
        let verifies = self.http_tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        match c.source {
            ClientCertSource::Tls if !verifies => issues.add(
                "listen.http_client_cert.source",
                "tls needs listen.http_tls with a client_ca: the HTTP listener verifies the client certificate",
            ),
            ClientCertSource::Tls if !c.xfcc_trusted_peers.is_empty() => {
                issues.add("listen.http_client_cert.xfcc_trusted_peers", "is only used with source: xfcc")
            }
            ClientCertSource::Xfcc if c.xfcc_trusted_peers.is_empty() => issues.add(
                "listen.http_client_cert.xfcc_trusted_peers",
                "source xfcc needs the addresses of the proxy that verifies client certificates",
            ),
            _ => {}
        }
    }

    /// Clients that authenticate with a certificate need somewhere to take
    /// it from.
    pub(super) fn check_clients(&self, clients: &[Client], issues: &mut Issues) {
        if self.client_cert_source().is_some() {
            return;
        }
        for (i, c) in clients.iter().enumerate() {
            if c.auth == ClientAuthMethod::TlsClientAuth {
                issues.add(
                    format!("clients[{i}].auth"),
                    "tls_client_auth needs client certificates: set listen.http_tls.client_ca, or \
                     listen.http_client_cert with source xfcc behind an mTLS-terminating proxy",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    #[test]
    fn defaults_are_the_documented_ones() {
        // The values of the README's configuration reference, spelled out.
        let text = "listen:\n  grpc: 0.0.0.0:9191\n  http: 0.0.0.0:8080\n  shutdown_grace: 10s\n  \
                    grpc_max_connections: 4096\n  http_max_connections: 1024\n  handshake_timeout: 10s\n  \
                    header_read_timeout: 10s\n  request_timeout: 30s\n  idle_timeout: 60s\n  \
                    http2_keepalive_interval: 30s\n  http2_keepalive_timeout: 10s\n";
        let spelled = Config::from_yaml_str(&format!("{text}{MINIMAL}")).unwrap();
        assert_eq!(spelled.listen, Listen::default());
        let empty = Config::from_yaml_str(&format!("listen: {{}}\n{MINIMAL}")).unwrap();
        assert_eq!(empty.listen, Listen::default());
    }

    #[test]
    fn limits_have_defaults_and_are_checked() {
        let cfg = Config::from_yaml_validated(MINIMAL).unwrap();
        assert_eq!(cfg.listen.grpc.port(), 9191);
        assert_eq!(cfg.listen.http.port(), 8080);
        assert_eq!(cfg.listen.grpc_max_connections, 4096);
        assert_eq!(cfg.listen.http_max_connections, 1024);
        assert_eq!(cfg.listen.handshake_timeout.0, Duration::from_secs(10));
        assert_eq!(cfg.listen.header_read_timeout.0, Duration::from_secs(10));
        assert_eq!(cfg.listen.request_timeout.0, Duration::from_secs(30));
        assert_eq!(cfg.listen.idle_timeout.0, Duration::from_secs(60));
        assert_eq!(cfg.listen.http2_keepalive_interval.0, Duration::from_secs(30));
        assert_eq!(cfg.listen.http2_keepalive_timeout.0, Duration::from_secs(10));

        let ok = "listen:\n  grpc_max_connections: 2\n  http_max_connections: 1000000\n  idle_timeout: 1h\n";
        Config::from_yaml_validated(&format!("{ok}{MINIMAL}")).unwrap();

        for (line, path) in [
            ("grpc_max_connections: 0", "listen.grpc_max_connections"),
            ("http_max_connections: 1000001", "listen.http_max_connections"),
            ("handshake_timeout: 500ms", "listen.handshake_timeout"),
            ("header_read_timeout: 6m", "listen.header_read_timeout"),
            ("request_timeout: 11m", "listen.request_timeout"),
            ("idle_timeout: 2h", "listen.idle_timeout"),
            ("http2_keepalive_interval: 0s", "listen.http2_keepalive_interval"),
            ("http2_keepalive_timeout: 10m", "listen.http2_keepalive_timeout"),
        ] {
            let text = format!("listen:\n  {line}\n{MINIMAL}");
            let issues = Config::from_yaml_str(&text).unwrap().check().unwrap_err();
            assert_eq!(issues.len(), 1, "{line}: {issues:?}");
            assert_eq!(issues[0].path, path, "{line}");
            assert!(issues[0].message.starts_with("must be between"), "{line}: {}", issues[0].message);
        }
        // A negative count or a word is a parse error that names the key.
        let err = Config::from_yaml_str(&format!("listen:\n  http_max_connections: -1\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("listen.http_max_connections"), "{err}");
        let err = Config::from_yaml_str(&format!("listen:\n  idle_timeout: forever\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("listen.idle_timeout"), "{err}");
    }

    #[test]
    fn http_tls_and_the_client_certificate_source_are_checked() {
        let text = "listen:\n  http_tls: { cert: /tls/tls.crt, key: /tls/tls.key }\n";
        let cfg = Config::from_yaml_validated(&format!("{text}{MINIMAL}")).unwrap();
        let tls = cfg.listen.http_tls.as_ref().expect("http_tls");
        assert_eq!((tls.client_auth, tls.reload_interval), (ClientCertPolicy::Optional, Dur::secs(30)));
        assert_eq!(tls.files().len(), 2, "no client_ca: two files");
        assert_eq!(cfg.listen.client_cert_source(), None, "no client_ca: no certificates");

        let text = "listen:\n  http_tls: { cert: /c, key: /k, client_ca: /ca }\n";
        let cfg = Config::from_yaml_validated(&format!("{text}{MINIMAL}")).unwrap();
        assert_eq!(cfg.listen.client_cert_source(), Some(ClientCertSource::Tls), "the default with a client_ca");
        let text = "listen:\n  http_client_cert: { source: xfcc, xfcc_trusted_peers: [127.0.0.6/32] }\n";
        let cfg = Config::from_yaml_validated(&format!("{text}{MINIMAL}")).unwrap();
        assert_eq!(cfg.listen.client_cert_source(), Some(ClientCertSource::Xfcc));

        let issues = |text: &str| -> Vec<String> {
            let cfg = Config::from_yaml_str(&format!("listen:\n{text}{MINIMAL}")).unwrap();
            cfg.check().err().unwrap_or_default().iter().map(ToString::to_string).collect()
        };
        assert_eq!(
            issues("  http_tls: { cert: \"\", key: /k, client_auth: required }\n"),
            [
                "listen.http_tls.cert: must not be empty",
                "listen.http_tls.client_auth: required needs a client_ca to verify client certificates with"
            ]
        );
        assert_eq!(
            issues(
                "  http_tls: { cert: /c, key: /k, client_ca: /ca }\n  http_client_cert: { source: tls, xfcc_trusted_peers: [10.0.0.1] }\n"
            ),
            ["listen.http_client_cert.xfcc_trusted_peers: is only used with source: xfcc"]
        );
        assert_eq!(
            issues("  http_client_cert: { source: tls }\n"),
            ["listen.http_client_cert.source: tls needs listen.http_tls with a client_ca: the HTTP listener verifies \
              the client certificate"]
        );
        let tls_client = "clients: [{ client_id: a, auth: tls_client_auth, tls_client_auth_san_dns: a.example }]\n";
        let cfg = Config::from_yaml_str(&format!("{MINIMAL}{tls_client}")).unwrap();
        let got: Vec<String> = cfg.check().unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("clients[0].auth: tls_client_auth needs client certificates"), "{got:?}");
        let err = Config::from_yaml_str(&format!("listen:\n  http_client_cert: {{ source: both }}\n{MINIMAL}"));
        assert!(err.unwrap_err().to_string().contains("listen.http_client_cert.source"));
    }

    #[test]
    fn grpc_tls_names_three_files_and_is_checked() {
        let text = "listen:\n  grpc_tls:\n    cert: /tls/tls.crt\n    key: /tls/tls.key\n    client_ca: /tls/ca.crt\n";
        let cfg = Config::from_yaml_validated(&format!("{text}{MINIMAL}")).unwrap();
        let tls = cfg.listen.grpc_tls.expect("grpc_tls");
        assert_eq!(tls.reload_interval, Dur::secs(30));
        assert_eq!(
            tls.files().map(|(k, p)| format!("{k}={}", p.display())),
            ["cert=/tls/tls.crt", "key=/tls/tls.key", "client_ca=/tls/ca.crt"]
        );

        // mTLS: without client_ca it is not.
        let err = Config::from_yaml_str(&format!("listen:\n  grpc_tls: {{ cert: a, key: b }}\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("`listen.grpc_tls`") && err.to_string().contains("client_ca"), "{err}");
        let text =
            format!("listen:\n  grpc_tls: {{ cert: \"\", key: b, client_ca: c, reload_interval: 500ms }}\n{MINIMAL}");
        let issues = Config::from_yaml_str(&text).unwrap().check().unwrap_err();
        let issues: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(
            issues,
            ["listen.grpc_tls.cert: must not be empty", "listen.grpc_tls.reload_interval: must be between 1s and 1day"]
        );
    }
}
