//! The mTLS test PKI of `tests/fixtures/mtls` (regenerate with its `gen.sh`)
//! for the end-to-end tests: fixture paths, a rustls client that presents one
//! of its certificates, and a grpcurl run over mutual TLS.
//!
//! Include next to the harness with `#[path = "e2e/mtls.rs"] mod mtls;`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

/// `tests/fixtures/mtls`.
pub fn certs_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests").join("fixtures").join("mtls")
}

/// The absolute path of a fixture, as a string for configurations.
pub fn cert_path(name: &str) -> String {
    certs_dir().join(name).to_str().expect("UTF-8 path").to_owned()
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = certs_dir().join(name);
    std::fs::read(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e} (see tests/fixtures/mtls/gen.sh)", path.display()))
}

/// A client that trusts only the test CA and presents `identity` (a fixture
/// base name such as `web`: `web.pem` + `web-key.pem`), or no certificate.
pub fn client(identity: Option<&str>) -> reqwest::Client {
    stsgate::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(&fixture("ca.pem")).expect("ca.pem");
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0);
    if let Some(name) = identity {
        let mut pem = fixture(&format!("{name}.pem"));
        pem.extend(fixture(&format!("{name}-key.pem")));
        builder =
            builder.identity(reqwest::Identity::from_pem(&pem).unwrap_or_else(|e| panic!("{name} identity: {e}")));
    }
    builder.build().expect("reqwest mTLS client")
}

/// The whole error chain, for messages.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// How grpcurl reaches stsgate's gRPC listener.
#[derive(Clone, Copy, Debug)]
pub enum Transport<'a> {
    /// No TLS at all.
    Plaintext,
    /// TLS, trusting the test CA, presenting no client certificate.
    TlsNoCert,
    /// TLS with the client certificate of this fixture base name.
    Tls(&'a str),
}

/// One `Authorization/Check` with the real grpcurl, from the repository's own
/// `proto/` files (no reflection needed). `Ok(CheckResponse as JSON)` when the
/// RPC completed, `Err(grpcurl's output)` when it did not (refused handshake,
/// gRPC error).
pub fn grpcurl_check(
    grpcurl: &std::path::Path,
    addr: SocketAddr,
    transport: Transport,
    request: &serde_json::Value,
) -> Result<serde_json::Value, String> {
    let proto = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    let mut cmd = Command::new(grpcurl);
    // grpcurl retries a refused handshake until the connect timeout: keep it
    // short where the handshake is meant to fail.
    let connect_timeout = if matches!(transport, Transport::Tls(_)) { "5" } else { "1" };
    cmd.args(["-connect-timeout", connect_timeout, "-max-time", "20", "-format-error"]);
    match transport {
        Transport::Plaintext => {
            cmd.arg("-plaintext");
        }
        Transport::TlsNoCert => {
            cmd.arg("-cacert").arg(cert_path("ca.pem"));
        }
        Transport::Tls(name) => {
            cmd.arg("-cacert").arg(cert_path("ca.pem"));
            cmd.arg("-cert").arg(cert_path(&format!("{name}.pem")));
            cmd.arg("-key").arg(cert_path(&format!("{name}-key.pem")));
        }
    }
    cmd.arg("-import-path").arg(&proto).args(["-proto", "envoy/service/auth/v3/external_auth.proto"]);
    cmd.args(["-d", &request.to_string()]).arg(addr.to_string()).arg("envoy.service.auth.v3.Authorization/Check");
    let Output { status, stdout, stderr } = cmd.output().expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&stdout).into_owned();
    let text = format!("{stdout}{}", String::from_utf8_lossy(&stderr));
    if !status.success() {
        return Err(text);
    }
    serde_json::from_str(&stdout).map_err(|e| format!("grpcurl printed no JSON ({e}):\n{text}"))
}
