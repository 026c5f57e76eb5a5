//! The token endpoint driven by Authlib (issue #12 part 7), an OAuth client
//! library nobody here wrote: `tests/authlib/token_client.py`, knowing only
//! the RFC 8414 metadata URL and its credentials, discovers the token
//! endpoint and exchanges tokens with client_secret_basic, client_secret_post
//! and private_key_jwt, presents JWT bearer assertions (AssertionSession and
//! OAuth2Session), and provokes the wrong-credential matrix. It prints what
//! each request answered; this test asserts on it.
//!
//! Authlib comes from `scripts/install-tools.sh` (`.tools/authlib/py`); a
//! missing install is a failure, never a skip.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use stsgate::runtime::server::Listeners;
use support::*;
use tokio::io::AsyncWriteExt;

const SECRET: &str = "authlib-shared-secret";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";

const RULES: &str = r#"
- name: orders
  match: { audiences: [orders] }
  grant: { scopes: ["orders.*"] }
- name: payments
  match: { audiences: [payments], presenter: client_in_audience }
  grant: { scopes: ["*"] }
- name: asserted
  match: { issuers: [client], clients: [authlib-signer], audiences: [ledger] }
  grant: { scopes: ["ledger.*"] }
"#;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `.tools/authlib/py`, or a failure saying how to get it.
fn authlib_path() -> PathBuf {
    let py = repo().join(".tools/authlib/py");
    assert!(
        py.join("authlib").is_dir() && py.join("requests").is_dir(),
        "Authlib is not installed in {}: run scripts/install-tools.sh",
        py.display()
    );
    py
}

/// Runs the client script with `args`, `stdin` as its input; its stdout as JSON.
async fn run_client(args: &[&str], stdin: Option<&Value>) -> Value {
    let script = repo().join("tests/authlib/token_client.py");
    let mut child = tokio::process::Command::new(std::env::var("PYTHON").unwrap_or_else(|_| "python3".into()))
        .arg(&script)
        .args(args)
        .env("PYTHONPATH", authlib_path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run python3");
    let mut input = child.stdin.take().unwrap();
    if let Some(v) = stdin {
        input.write_all(v.to_string().as_bytes()).await.unwrap();
    }
    drop(input);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the Authlib client finishes within a minute")
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "token_client.py {args:?} failed ({}):\n{stderr}\n{stdout}", out.status);
    serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("token_client.py printed no JSON ({e}):\n{stdout}\n{stderr}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authlib_discovers_the_endpoint_and_gets_the_rfc_answers() {
    let idp = MockIdp::start().await;
    let key = run_client(&["keygen"], None).await;
    let dir = TempDir::new("authlib");
    let secret = dir.write("secret", SECRET);

    // The metadata names the token endpoint from the issuer URL, which must
    // be where this server really listens for a client that only discovers.
    let port = free_port();
    let issuer = format!("http://127.0.0.1:{port}");
    let clients = format!(
        "clients:\n  \
         - {{ client_id: basic-client, auth: client_secret_basic, secret_file: \"{f}\", grant_types: [token_exchange] }}\n  \
         - {{ client_id: post-client, auth: client_secret_post, secret_file: \"{f}\" }}\n  \
         - {{ client_id: authlib-signer, auth: private_key_jwt, jwks: {{ keys: [{jwk}] }} }}\n",
        f = secret.display(),
        jwk = key["jwk"],
    );
    let mut builder = Harness::builder(&idp)
        .rules(RULES)
        .ext_authz("default_audience: ledger")
        .edit(move |y| format!("{y}{clients}"));
    let yaml = builder.yaml().replace(&format!("issuer: {STS_ISSUER}\n"), &format!("issuer: {issuer}\n"));
    assert!(yaml.contains(&issuer), "{yaml}");
    let listeners = Listeners::bind_addrs("127.0.0.1:0".parse().unwrap(), format!("127.0.0.1:{port}").parse().unwrap())
        .await
        .expect("bind");
    let server = start_server(&yaml, listeners).await;

    let subject = idp.token(&idp.claims("alice", "orders.read orders.write"));
    let out = run_client(
        &[],
        Some(&json!({
            "metadata_url": format!("{issuer}/.well-known/oauth-authorization-server"),
            "subject_token": subject,
            "audience": "orders",
            "scope": "orders.read",
            "basic": { "client_id": "basic-client", "client_secret": SECRET },
            "post": { "client_id": "post-client", "client_secret": SECRET },
            "jwt": { "client_id": "authlib-signer", "private_pem": key["private_pem"] },
            "asserted_subject": "user-42",
            "asserted_scope": "ledger.read ledger.write",
            "asserted_audience": "ledger",
            "bound_audience": "payments",
        })),
    )
    .await;
    assert_eq!(out["token_endpoint"], format!("{issuer}/token"), "discovered from the metadata");
    let cases = &out["cases"];
    let case = |name: &str| -> &Value {
        let c = &cases[name];
        assert!(c.is_object(), "no case {name}: {out}");
        c
    };
    let http = reqwest::Client::new();
    let jwks = format!("{issuer}/.well-known/jwks.json");

    // Successes: each minted token verifies against the published JWKS and
    // names the client that authenticated.
    for (name, audience, sub, client) in [
        ("exchange_basic", "orders", "alice", "basic-client"),
        ("exchange_post", "orders", "alice", "post-client"),
        ("exchange_private_key_jwt", "orders", "alice", "authlib-signer"),
        ("client_assertion_first", "orders", "alice", "authlib-signer"),
        ("assertion_session", "ledger", "user-42", "authlib-signer"),
        ("jwt_bearer", "ledger", "user-42", "authlib-signer"),
    ] {
        let c = case(name);
        assert_eq!((c["status"].as_u64(), &c["error"]), (Some(200), &Value::Null), "{name}: {c}");
        assert_eq!(c["token_type"], "Bearer", "{name}");
        assert_eq!(c["refresh_token"], Value::Null, "{name}: no refresh tokens");
        let token = c["access_token"].as_str().unwrap();
        let (_, claims) = verify_with_jwks(&http, &jwks, &issuer, token, audience).await;
        assert_eq!((claims["sub"].as_str(), claims["client_id"].as_str()), (Some(sub), Some(client)), "{name}");
        if audience == "orders" {
            assert_eq!(c["issued_token_type"], AT, "{name}");
            assert_eq!(c["scope"], "orders.read", "{name}");
        } else {
            // A client-asserted subject is named in the client's namespace.
            assert_eq!(claims["sub_id"], json!({ "format": "iss_sub", "iss": "authlib-signer", "sub": "user-42" }));
            assert_eq!(c["issued_token_type"], Value::Null, "{name}: not a token exchange");
            assert_eq!(c["scope"], "ledger.read ledger.write", "{name}");
        }
    }

    // Every error is the one the RFCs name, with its status.
    for (name, status, error) in [
        ("wrong_secret", 401, "invalid_client"),
        ("wrong_method", 401, "invalid_client"),
        ("unknown_client", 401, "invalid_client"),
        ("client_assertion_replayed", 401, "invalid_client"),
        ("client_assertion_wrong_aud", 401, "invalid_client"),
        ("client_assertion_expired", 401, "invalid_client"),
        ("assertion_replayed", 400, "invalid_grant"),
        ("assertion_expired", 400, "invalid_grant"),
        ("assertion_wrong_aud", 400, "invalid_grant"),
        ("assertion_hour_long", 400, "invalid_grant"),
        ("wrong_target", 400, "invalid_target"),
        ("wrong_scope", 400, "invalid_scope"),
        ("not_in_audience", 403, "access_denied"),
        ("grant_not_allowed", 400, "unauthorized_client"),
        ("refresh_token", 400, "unsupported_grant_type"),
    ] {
        let c = case(name);
        assert_eq!((c["status"].as_u64(), c["error"].as_str()), (Some(status), Some(error)), "{name}: {c}");
    }
    // RFC 6749 §5.2: a client that tried Basic is challenged with Basic.
    for name in ["wrong_secret", "wrong_method"] {
        let challenge = case(name)["www_authenticate"].as_str().unwrap_or_default();
        assert!(challenge.starts_with("Basic"), "{name}: {challenge:?}");
    }
    assert_eq!(case("unknown_client")["www_authenticate"], Value::Null, "client_secret_post is not challenged");
    assert!(case("assertion_replayed")["description"].as_str().unwrap().contains("used before"));
    assert!(case("assertion_hour_long")["description"].as_str().unwrap().contains("5 minutes"));

    tokio::time::timeout(WAIT, server.shutdown()).await.expect("shutdown");
}
