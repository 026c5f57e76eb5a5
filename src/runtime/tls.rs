//! Mutual TLS on the gRPC listener (`listen.grpc_tls`): the server
//! certificate, and the CA every client certificate must chain to (a client
//! without one fails the handshake). The caller's identity is the one URI SAN
//! of its certificate (its SPIFFE ID), read once per connection.
//!
//! The three files are read again every `reload_interval`; when their
//! content changed, a new rustls `ServerConfig` is built and swapped in: new
//! connections use it, open ones keep theirs. Files that do not build (a
//! half-written Secret, a key that does not match its certificate) keep the
//! previous configuration, with an error logged and counted.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

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

use crate::config::GrpcTls;
use crate::metrics::TlsMetrics;

/// A file of `listen.grpc_tls` that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("listen.grpc_tls.{key}: {path}: {why}")]
pub struct TlsError {
    /// `cert`, `key` or `client_ca`.
    pub key: &'static str,
    pub path: String,
    pub why: String,
}

/// What the three files held when they were read.
struct Files {
    bytes: [Vec<u8>; 3],
    fingerprint: [u8; 32],
}

/// A server configuration built from the files.
pub(crate) struct Built {
    pub(crate) config: Arc<ServerConfig>,
    /// When the served certificate expires.
    pub(crate) not_after: Option<SystemTime>,
}

/// The gRPC listener's TLS: the configuration new connections use.
pub(crate) struct ServerTls {
    current: ArcSwap<ServerConfig>,
}

impl ServerTls {
    /// Reads and builds `tls` (start-up: an error stops stsgate).
    pub(crate) fn load(tls: &GrpcTls, metrics: &TlsMetrics) -> Result<(Arc<ServerTls>, [u8; 32]), TlsError> {
        let files = read(tls).map_err(|(e, _)| e)?;
        let built = build(tls, &files.bytes)?;
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
    pub(crate) async fn watch(self: Arc<Self>, tls: GrpcTls, mut seen: [u8; 32], metrics: Arc<TlsMetrics>) {
        let mut ticker = tokio::time::interval(tls.reload_interval.0);
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
                        "listen.grpc_tls: new certificate files, new connections use them"
                    );
                }
                Err((e, _)) => {
                    metrics.reloaded(false);
                    error!("listen.grpc_tls changed but cannot be used, the previous certificate stays in use: {e}");
                }
            }
        }
    }
}

/// Checks that the files of `tls` build a server configuration
/// (`check-config`).
pub fn check_files(tls: &GrpcTls) -> Result<(), TlsError> {
    let files = read(tls).map_err(|(e, _)| e)?;
    build(tls, &files.bytes).map(|_| ())
}

/// Reads the three files; on failure also the fingerprint of the failure, so
/// that the same failure is reported once.
fn read(tls: &GrpcTls) -> Result<Files, (TlsError, [u8; 32])> {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut bytes: [Vec<u8>; 3] = Default::default();
    let mut failed = None;
    for (i, (key, path)) in tls.files().into_iter().enumerate() {
        match std::fs::read(path) {
            Ok(b) => {
                ctx.update(&(b.len() as u64).to_le_bytes());
                ctx.update(&b);
                bytes[i] = b;
            }
            Err(e) => {
                let why = format!("cannot read: {e}");
                ctx.update(why.as_bytes());
                failed.get_or_insert_with(|| problem(key, path, why));
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

fn problem(key: &'static str, path: &Path, why: impl Into<String>) -> TlsError {
    TlsError { key, path: path.display().to_string(), why: why.into() }
}

/// A rustls server configuration from the contents of cert, key and
/// client_ca: HTTP/2 only (ALPN `h2`), client certificates required.
fn build(tls: &GrpcTls, [cert, key, ca]: &[Vec<u8>; 3]) -> Result<Built, TlsError> {
    let chain = certificates(cert).map_err(|why| problem("cert", &tls.cert, why))?;
    let not_after = not_after(&chain[0]);
    let private = PrivateKeyDer::from_pem_slice(key)
        .map_err(|e| problem("key", &tls.key, format!("not a PEM private key (PKCS#8, SEC1 or PKCS#1): {e}")))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in certificates(ca).map_err(|why| problem("client_ca", &tls.client_ca, why))? {
        roots.add(c).map_err(|e| problem("client_ca", &tls.client_ca, format!("not a usable CA certificate: {e}")))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| problem("client_ca", &tls.client_ca, e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| problem("cert", &tls.cert, e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private)
        .map_err(|e| problem("key", &tls.key, format!("does not go with the certificate: {e}")))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Built { config: Arc::new(config), not_after })
}

/// The certificates of a PEM file; at least one.
fn certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate".into());
    }
    Ok(certs)
}

fn not_after(cert: &CertificateDer<'_>) -> Option<SystemTime> {
    let cert = x509_cert::Certificate::from_der(cert).ok()?;
    Some(UNIX_EPOCH + cert.tbs_certificate.validity.not_after.to_unix_duration())
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
        let tls = GrpcTls {
            cert: "/tls/tls.crt".into(),
            key: "/tls/tls.key".into(),
            client_ca: "/tls/ca.crt".into(),
            reload_interval: Dur::secs(30),
        };
        let files = |cert: &str, key: &str, ca: &str| {
            [cert.as_bytes().to_vec(), key.as_bytes().to_vec(), ca.as_bytes().to_vec()]
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
        }
    }
}
