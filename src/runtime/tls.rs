//! TLS on both listeners.
//!
//! Mutual TLS on the gRPC listener (`listen.grpc_tls`): the server
//! certificate, and the CA every client certificate must chain to (a client
//! without one fails the handshake). The caller's identity is the one URI SAN
//! of its certificate (its SPIFFE ID), read once per connection.
//!
//! TLS on the HTTP listener (`listen.http_tls`): the server certificate and,
//! with `client_ca`, client certificates asked for and verified against it;
//! `client_auth: optional` (the default) lets a client without one connect
//! (JWKS, metadata and probes need none), a certificate that does not chain
//! fails the handshake either way. The verified leaf certificate goes with
//! every request of the connection, for the token endpoint's RFC 8705
//! `tls_client_auth`.
//!
//! The files are read again every `reload_interval`; when their
//! content changed, a new rustls `ServerConfig` is built and swapped in: new
//! connections use it, open ones keep theirs. Files that do not build (a
//! half-written Secret, a key that does not match its certificate) keep the
//! previous configuration, with an error logged and counted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use aws_lc_rs::digest;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConnection, WebPkiClientVerifier};
use tokio::time::MissedTickBehavior;
use tracing::{error, info};
use x509_cert::der::Decode;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::ext::pkix::name::GeneralName;

use crate::ca_bundle::certificates;
use crate::config::{ClientCertPolicy, GrpcTls, HttpTls};
use crate::metrics::TlsMetrics;

/// A file of `listen.grpc_tls` or `listen.http_tls` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{section}.{key}: {path}: {why}")]
pub struct TlsError {
    /// `listen.grpc_tls` or `listen.http_tls`.
    pub section: &'static str,
    /// `cert`, `key` or `client_ca`.
    pub key: &'static str,
    pub path: String,
    pub why: String,
}

/// One listener's TLS settings, whichever listener it is.
#[derive(Debug, Clone)]
pub(crate) struct TlsSpec {
    /// The configuration key, for messages.
    section: &'static str,
    cert: PathBuf,
    key: PathBuf,
    /// None: client certificates are not asked for.
    client_ca: Option<PathBuf>,
    /// A client without a certificate fails the handshake.
    client_cert_required: bool,
    alpn: &'static [&'static [u8]],
    reload_interval: Duration,
}

impl TlsSpec {
    /// The files, with their keys under `section`.
    fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut files = vec![("cert", self.cert.as_path()), ("key", self.key.as_path())];
        if let Some(ca) = &self.client_ca {
            files.push(("client_ca", ca.as_path()));
        }
        files
    }
}

impl From<&GrpcTls> for TlsSpec {
    /// gRPC: HTTP/2 only, client certificates required.
    fn from(t: &GrpcTls) -> TlsSpec {
        TlsSpec {
            section: "listen.grpc_tls",
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_ca: Some(t.client_ca.clone()),
            client_cert_required: true,
            alpn: &[b"h2"],
            reload_interval: t.reload_interval.0,
        }
    }
}

impl From<GrpcTls> for TlsSpec {
    fn from(t: GrpcTls) -> TlsSpec {
        TlsSpec::from(&t)
    }
}

impl From<&HttpTls> for TlsSpec {
    /// HTTP: HTTP/2 or HTTP/1.1, client certificates as configured.
    fn from(t: &HttpTls) -> TlsSpec {
        TlsSpec {
            section: "listen.http_tls",
            cert: t.cert.clone(),
            key: t.key.clone(),
            client_ca: t.client_ca.clone(),
            client_cert_required: t.client_auth == ClientCertPolicy::Required,
            alpn: &[b"h2", b"http/1.1"],
            reload_interval: t.reload_interval.0,
        }
    }
}

impl From<HttpTls> for TlsSpec {
    fn from(t: HttpTls) -> TlsSpec {
        TlsSpec::from(&t)
    }
}

/// What the files held when they were read.
struct Files {
    bytes: Vec<Vec<u8>>,
    fingerprint: [u8; 32],
}

/// A server configuration built from the files.
pub(crate) struct Built {
    pub(crate) config: Arc<ServerConfig>,
    /// When the served certificate expires.
    pub(crate) not_after: Option<SystemTime>,
}

/// A listener's TLS: the configuration new connections use.
pub(crate) struct ServerTls {
    current: ArcSwap<ServerConfig>,
}

impl ServerTls {
    /// Reads and builds `tls` (start-up: an error stops stsgate).
    pub(crate) fn load(tls: impl Into<TlsSpec>, metrics: &TlsMetrics) -> Result<(Arc<ServerTls>, [u8; 32]), TlsError> {
        let tls = tls.into();
        let files = read(&tls).map_err(|(e, _)| e)?;
        let built = build(&tls, &files.bytes)?;
        metrics.serving(built.not_after);
        Ok((Arc::new(ServerTls { current: ArcSwap::new(built.config) }), files.fingerprint))
    }

    /// The configuration for a connection accepted now.
    pub(crate) fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the files every `tls.reload_interval` and swaps in a new
    /// configuration when their content changed and builds. `seen` is the
    /// fingerprint of what is served now.
    pub(crate) async fn watch(self: Arc<Self>, tls: impl Into<TlsSpec>, mut seen: [u8; 32], metrics: Arc<TlsMetrics>) {
        let tls = tls.into();
        let section = tls.section;
        let mut ticker = tokio::time::interval(tls.reload_interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let named = tls.clone();
            let Ok(outcome) = tokio::task::spawn_blocking(move || {
                let files = read(&named);
                let fingerprint = match &files {
                    Ok(f) => f.fingerprint,
                    Err((_, fp)) => *fp,
                };
                (fingerprint, files.and_then(|f| build(&named, &f.bytes).map_err(|e| (e, f.fingerprint))))
            })
            .await
            else {
                continue;
            };
            let (fingerprint, built) = outcome;
            if fingerprint == seen {
                continue;
            }
            // Logged once per content, good or bad: the next change is tried anew.
            seen = fingerprint;
            match built {
                Ok(built) => {
                    self.current.store(built.config);
                    metrics.reloaded(true);
                    metrics.serving(built.not_after);
                    let expires = built.not_after.map(|t| humantime::format_rfc3339_seconds(t).to_string());
                    info!(
                        expires = expires.as_deref().unwrap_or("unknown"),
                        "{section}: new certificate files, new connections use them"
                    );
                }
                Err((e, _)) => {
                    metrics.reloaded(false);
                    error!("{section} changed but cannot be used, the previous certificate stays in use: {e}");
                }
            }
        }
    }
}

/// Checks that the files of `tls` build a server configuration
/// (`check-config`).
pub fn check_files(tls: &GrpcTls) -> Result<(), TlsError> {
    check_spec(&tls.into())
}

/// Checks that the files of `listen.http_tls` build a server configuration
/// (`check-config`).
pub fn check_http_files(tls: &HttpTls) -> Result<(), TlsError> {
    check_spec(&tls.into())
}

fn check_spec(tls: &TlsSpec) -> Result<(), TlsError> {
    let files = read(tls).map_err(|(e, _)| e)?;
    build(tls, &files.bytes).map(|_| ())
}

/// Reads the files; on failure also the fingerprint of the failure, so
/// that the same failure is reported once.
fn read(tls: &TlsSpec) -> Result<Files, (TlsError, [u8; 32])> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut bytes = Vec::new();
    let mut failed = None;
    for (key, path) in tls.files() {
        match std::fs::read(path) {
            Ok(b) => {
                ctx.update(&(b.len() as u64).to_le_bytes());
                ctx.update(&b);
                bytes.push(b);
            }
            Err(e) => {
                let why = format!("cannot read: {e}");
                ctx.update(why.as_bytes());
                bytes.push(Vec::new());
                failed.get_or_insert_with(|| problem(tls.section, key, path, why));
            }
        }
    }
    let mut fingerprint = [0; 32];
    fingerprint.copy_from_slice(ctx.finish().as_ref());
    match failed {
        Some(e) => Err((e, fingerprint)),
        None => Ok(Files { bytes, fingerprint }),
    }
}

fn problem(section: &'static str, key: &'static str, path: &Path, why: impl Into<String>) -> TlsError {
    TlsError { section, key, path: path.display().to_string(), why: why.into() }
}

/// A rustls server configuration from the contents of cert, key and (if
/// any) client_ca, in the order of `TlsSpec::files`.
fn build(tls: &TlsSpec, files: &[Vec<u8>]) -> Result<Built, TlsError> {
    let problem = |key, path: &Path, why: String| problem(tls.section, key, path, why);
    let (cert, key) = (&files[0], &files[1]);
    let chain = certificates(cert).map_err(|why| problem("cert", &tls.cert, why))?;
    let not_after = not_after(&chain[0]);
    let private = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| problem("key", &tls.key, format!("not a PEM private key (PKCS#8, SEC1 or PKCS#1): {e}")))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| problem("cert", &tls.cert, e.to_string()))?;
    let builder = match (&tls.client_ca, files.get(2)) {
        (Some(ca_path), Some(ca)) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca).map_err(|why| problem("client_ca", ca_path, why))? {
                roots.add(c).map_err(|e| problem("client_ca", ca_path, format!("not a usable CA certificate: {e}")))?;
            }
            let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            if !tls.client_cert_required {
                // No certificate is fine; one that does not chain still fails.
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier.build().map_err(|e| problem("client_ca", ca_path, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, private)
        .map_err(|e| problem("key", &tls.key, format!("does not go with the certificate: {e}")))?;
    config.alpn_protocols = tls.alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Built { config: Arc::new(config), not_after })
}

/// The certificates of a PEM file; at least one.
fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let cert = x509_cert::Certificate::from_der(cert).ok()?;
    Some(UNIX_EPOCH + cert.tbs_certificate.validity.not_after.to_unix_duration())
}

/// The leaf certificate a client presented and the handshake verified
/// (DER); none when it presented none.
pub(crate) fn peer_leaf(conn: &ServerConnection) -> Option<Arc<[u8]>> {
    conn.peer_certificates()?.first().map(|c| Arc::from(c.as_ref()))
}

/// The identity a finished handshake proved: the one URI SAN of the
/// client's (verified) certificate; none without one, or with several.
pub(crate) fn certified_identity(conn: &ServerConnection) -> Option<Arc<str>> {
    identity_of(conn.peer_certificates()?.first()?)
}

/// The one URI SAN of a DER certificate.
fn identity_of(der: &[u8]) -> Option<Arc<str>> {
    let mut uris = uri_sans(der)?.into_iter();
    match (uris.next(), uris.next()) {
        (Some(uri), None) => Some(Arc::from(uri)),
        _ => None,
    }
}

/// Every URI SAN of a DER certificate; none when it cannot be read.
fn uri_sans(der: &[u8]) -> Option<Vec<String>> {
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let (_, san) = cert.tbs_certificate.get::<SubjectAltName>().ok()??;
    Some(
        san.0
            .into_iter()
            .filter_map(|name| match name {
                GeneralName::UniformResourceIdentifier(uri) => Some(uri.as_str().to_owned()),
                _ => None,
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;
    use crate::config::Dur;

    fn cert(sans: Vec<SanType>) -> (rcgen::Certificate, KeyPair) {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.subject_alt_names = sans;
        let key = KeyPair::generate().unwrap();
        (params.self_signed(&key).unwrap(), key)
    }

    fn uri(s: &str) -> SanType {
        SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn the_identity_is_the_one_uri_san() {
        let web = "spiffe://cluster.local/ns/shop/sa/web";
        let dns = SanType::DnsName("web.shop".try_into().unwrap());
        let (one, _) = cert(vec![dns.clone(), uri(web)]);
        assert_eq!(identity_of(one.der()).as_deref(), Some(web));
        let (none, _) = cert(vec![dns]);
        assert_eq!(identity_of(none.der()), None);
        let (two, _) = cert(vec![uri(web), uri("spiffe://cluster.local/ns/shop/sa/other")]);
        assert_eq!(identity_of(two.der()), None, "two URI SANs name no single identity");
        assert_eq!(identity_of(b"not a certificate"), None);
    }

    #[test]
    fn files_that_do_not_build_name_their_key() {
        let (ca, _) = cert(vec![]);
        let (server, server_key) = cert(vec![SanType::DnsName("localhost".try_into().unwrap())]);
        let (_, other_key) = cert(vec![]);
        let tls = TlsSpec::from(GrpcTls {
            cert: "/tls/tls.crt".into(),
            key: "/tls/tls.key".into(),
            client_ca: "/tls/ca.crt".into(),
            reload_interval: Dur::secs(30),
        });
        let files = |cert: &str, key: &str, ca: &str| {
            vec![cert.as_bytes().to_vec(), key.as_bytes().to_vec(), ca.as_bytes().to_vec()]
        };
        let built = build(&tls, &files(&server.pem(), &server_key.serialize_pem(), &ca.pem())).unwrap();
        assert_eq!(built.config.alpn_protocols, [b"h2".to_vec()]);
        assert!(built.not_after.is_some());
        for (files, key, why) in [
            (files("", &server_key.serialize_pem(), &ca.pem()), "cert", "holds no PEM certificate"),
            (files(&server.pem(), &other_key.serialize_pem(), &ca.pem()), "key", "does not go with the certificate"),
            (files(&server.pem(), "", &ca.pem()), "key", "not a PEM private key"),
            (files(&server.pem(), &server_key.serialize_pem(), "junk"), "client_ca", "holds no PEM certificate"),
        ] {
            let e = build(&tls, &files).err().unwrap();
            assert_eq!(e.key, key, "{e}");
            assert!(e.why.contains(why), "{e}");
            assert!(e.to_string().starts_with(&format!("listen.grpc_tls.{key}: ")), "{e}");
        }
    }

    #[test]
    fn http_tls_serves_both_http_versions_and_names_its_section() {
        let (ca, _) = cert(vec![]);
        let (server, server_key) = cert(vec![SanType::DnsName("localhost".try_into().unwrap())]);
        let http = |client_ca: Option<&str>, client_auth| {
            TlsSpec::from(HttpTls {
                cert: "/tls/tls.crt".into(),
                key: "/tls/tls.key".into(),
                client_ca: client_ca.map(Into::into),
                client_auth,
                reload_interval: Dur::secs(30),
            })
        };
        let (c, k) = (server.pem().into_bytes(), server_key.serialize_pem().into_bytes());
        // Whether a certificate is asked for and required is shown by real
        // handshakes in tests/http_tls.rs.
        let plain = build(&http(None, ClientCertPolicy::Optional), &[c.clone(), k.clone()]).unwrap();
        assert_eq!(plain.config.alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        build(&http(Some("/tls/ca.crt"), ClientCertPolicy::Required), &[c.clone(), k.clone(), ca.pem().into()])
            .unwrap();
        let e = build(&http(Some("/tls/ca.crt"), ClientCertPolicy::Optional), &[c, k, b"junk".to_vec()]).err().unwrap();
        assert_eq!(e.to_string(), "listen.http_tls.client_ca: /tls/ca.crt: holds no PEM certificate");
    }
}
