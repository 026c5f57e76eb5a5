//! Opaque tokens introspected at an authorization server nobody here wrote:
//! `tests/authlib/introspection_server.py` serves Authlib's RFC 7662
//! IntrospectionEndpoint and RFC 7009 RevocationEndpoint. stsgate, as a
//! client of it (client_secret_basic), exchanges its opaque tokens at the
//! Check; revocation through Authlib's endpoint is seen once the cache bound
//! has passed.
//!
//! Authlib comes from `scripts/install-tools.sh` (`.tools/authlib/py`); a
//! missing install is a failure, never a skip.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use support::*;
use tokio::io::{AsyncBufReadExt, BufReader};

const CLIENT_ID: &str = "stsgate";
const SECRET: &str = "authlib-introspection-secret";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn authlib_path() -> PathBuf {
    let py = repo().join(".tools/authlib/py");
    assert!(
        py.join("authlib").is_dir() && py.join("requests").is_dir(),
        "Authlib is not installed in {}: run scripts/install-tools.sh",
        py.display()
    );
    py
}

/// The Authlib server, answering for tokens of `issuer`; killed on drop.
struct AuthlibServer {
    _child: tokio::process::Child,
    base: String,
}

async fn start_authlib(issuer: &str) -> AuthlibServer {
    let mut child = tokio::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(repo().join("tests/authlib/introspection_server.py"))
        .args([issuer, CLIENT_ID, SECRET])
        .env("PYTHONPATH", authlib_path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("the Authlib server starts within 30s")
        .unwrap()
        .expect("the Authlib server prints its port");
    let port = serde_json::from_str::<Value>(&first).unwrap()["port"].as_u64().expect("port");
    AuthlibServer { _child: child, base: format!("http://127.0.0.1:{port}") }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_introspection_drives_the_phantom_token_exchange() {
    let idp = MockIdp::start().await;
    let authlib = start_authlib(&idp.issuer).await;
    let dir = TempDir::new("authlib-introspection");
    let secret = dir.write("secret", SECRET);
    let mut b = Harness::builder(&idp)
        .issuer_option("audiences: [stsgate]")
        .issuer_option("opaque_tokens: true")
        .issuer_option("introspection:");
    for l in [
        format!("  endpoint: {}/introspect", authlib.base),
        format!("  client_id: {CLIENT_ID}"),
        format!("  client_secret_file: {}", secret.display()),
        "  cache_for: 1s".to_owned(),
        "  negative_cache_for: 1s".to_owned(),
    ] {
        b = b.issuer_option(&l);
    }
    let h = b.start().await;

    // Active: the minted JWT carries the subject and scopes Authlib answered.
    let ok = allowed(&h.check_for("authlib-live", "orders").await);
    let (_, claims) = h.verify_minted(&ok.bearer(), "orders").await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "orders.read orders.write");

    // Expired (Authlib answers active: false), unknown, and another audience.
    assert_invalid_token(&h.check_for("authlib-expired", "orders").await, "not active");
    assert_invalid_token(&h.check_for("never-issued", "orders").await, "not active");
    assert_invalid_token(&h.check_for("authlib-other-aud", "orders").await, "audience");

    // Revoked at Authlib's RFC 7009 endpoint: refused once the 1s bound passed.
    let revoked = reqwest::Client::new()
        .post(format!("{}/revoke", authlib.base))
        .basic_auth(CLIENT_ID, Some(SECRET))
        .form(&[("token", "authlib-live")])
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_invalid_token(&h.check_for("authlib-live", "orders").await, "not active");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_refusing_stsgates_credentials_is_503() {
    let idp = MockIdp::start().await;
    let authlib = start_authlib(&idp.issuer).await;
    let dir = TempDir::new("authlib-introspection");
    let secret = dir.write("secret", "not-the-secret");
    let mut b = Harness::builder(&idp).issuer_option("opaque_tokens: true").issuer_option("introspection:");
    for l in [
        format!("  endpoint: {}/introspect", authlib.base),
        format!("  client_id: {CLIENT_ID}"),
        format!("  client_secret_file: {}", secret.display()),
    ] {
        b = b.issuer_option(&l);
    }
    let h = b.start().await;
    let d = denial(&h.check_for("authlib-second", "orders").await);
    assert_eq!((d.http_status, d.error()), (503, "temporarily_unavailable"));
}
