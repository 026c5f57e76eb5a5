//! End to end with a REAL mTLS peer: client (rustls, client certificate) →
//! Envoy 1.40 terminating mutual TLS (`envoy/mtls.yaml.tmpl`) → ext_authz gRPC
//! → stsgate → echo upstream. Envoy sets `attributes.source.principal` from the
//! client certificate (first URI SAN, else first DNS SAN, else subject DN), and
//! stsgate uses it as the actor of a delegation (`act: {"sub": <SPIFFE ID>}`).
//! The PKI is in `tests/fixtures/mtls` (regenerate with its `gen.sh`).
//! Needs `scripts/install-tools.sh` (fails otherwise).

#[path = "e2e/mod.rs"]
mod e2e;
#[path = "e2e/mtls.rs"]
mod mtls;

use std::net::SocketAddr;

use e2e::{Echo, Envoy, Stsgate, TempDir, bearer, echoed_header, jwt_parts, verify_with_jwks};
use serde_json::Value;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const INTRUDER: &str = "spiffe://cluster.local/ns/shop/sa/intruder";

/// The e2e test configuration with one rule: the workload `web` may delegate
/// for users towards `orders`. Nobody else may, and there is no exchange rule.
fn mtls_stsgate_config(grpc_port: u16, http_port: u16) -> String {
    let base = e2e::stsgate_config(grpc_port, http_port);
    let head = &base[..=base.find("\nrules:\n").expect("the e2e config has rules")];
    let ext_authz = "ext_authz:\n  realm: stsgate-e2e\n";
    assert!(head.contains(ext_authz), "the e2e config changed: {head}");
    let head = head.replace(ext_authz, "ext_authz:\n  realm: stsgate-e2e\n  actor: { mode: any, peer: true }\n");
    format!(
        r#"{head}rules:
  - name: web-delegates-orders
    match:
      audiences: [orders]
      actor: {{ spiffe: ["{WEB}"] }}
    grant: {{ outcome: delegation, scopes: ["orders.*"], max_lifetime: 2m }}
"#
    )
}

/// stsgate + echo upstream + Envoy with the mTLS listener.
struct Stack {
    envoy: Envoy,
    sts: Stsgate,
    echo: Echo,
    _dir: TempDir,
}

impl Stack {
    async fn start(label: &str) -> Stack {
        let dir = TempDir::new(label);
        let echo = Echo::start().await;
        let sts = Stsgate::start_with(&dir, mtls_stsgate_config).await;
        let certs = mtls::certs_dir();
        let config = e2e::render(
            &e2e::envoy_file("mtls.yaml.tmpl"),
            &[
                ("admin_port", "0".into()),
                ("listen_port", "0".into()),
                ("stsgate_grpc_port", sts.grpc.port().to_string()),
                ("upstream_port", echo.addr.port().to_string()),
                ("certs", certs.to_str().expect("UTF-8 path").to_owned()),
            ],
        );
        let envoy = Envoy::start(&dir, &config).await;
        Stack { envoy, sts, echo, _dir: dir }
    }

    /// `https://127.0.0.1:<port>` (the server certificate has IP SAN 127.0.0.1).
    fn url(&self, path: &str) -> String {
        let SocketAddr::V4(addr) = self.envoy.addr else { panic!("listener is not IPv4: {}", self.envoy.addr) };
        format!("https://{addr}{path}")
    }

    async fn get(&self, identity: Option<&str>, path: &str, token: &str) -> reqwest::Result<reqwest::Response> {
        mtls::client(identity).get(self.url(path)).header("authorization", format!("Bearer {token}")).send().await
    }

    /// A listener TLS counter (`listener.mtls.ssl.<name>`), 0 when absent.
    async fn ssl_stat(&self, name: &str) -> u64 {
        self.envoy.stat(&format!("listener.mtls.ssl.{name}")).await.unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn web_certificate_makes_a_delegation_with_its_spiffe_id_as_actor() {
    let s = Stack::start("mtls-web").await;
    let subject = s.sts.mint("alice", "orders.read orders.write").await;

    // A header claiming another identity changes nothing: only the TLS peer counts.
    let resp = mtls::client(Some("web"))
        .get(s.url("/orders/7"))
        .header("authorization", format!("Bearer {subject}"))
        .header("x-forwarded-client-cert", format!("URI={INTRUDER}"))
        .header("x-actor", INTRUDER)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!("GET /orders/7 with the web certificate: {}\n{}", mtls::error_chain(&e), s.envoy.log())
        });
    let status = resp.status();
    let body = resp.text().await.unwrap();
    assert_eq!(status, 200, "{body}\n{}", s.sts.log_text());
    let echoed: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("echo answer is not JSON ({e}): {body}"));
    assert_eq!(echoed["path"], "/orders/7");

    let minted = bearer(
        echoed_header(&echoed, "authorization").unwrap_or_else(|| panic!("no authorization upstream: {echoed}")),
    );
    assert_ne!(minted, subject, "the upstream got the original token");
    assert!(!echoed.to_string().contains(&subject), "the original token leaked upstream: {echoed}");

    let claims = verify_with_jwks(&s.sts, minted, "orders").await;
    let (header, _) = jwt_parts(minted);
    assert_eq!(header["typ"], "at+jwt", "{header}");
    assert_eq!(claims["iss"], s.sts.issuer(), "{claims}");
    assert_eq!(claims["sub"], "alice", "the user stays the subject: {claims}");
    assert_eq!(claims["aud"], "orders", "{claims}");
    assert_eq!(claims["scope"], "orders.read", "{claims}");
    assert_eq!(claims["act"], serde_json::json!({ "sub": WEB }), "act names the mTLS peer, nothing else: {claims}");

    let line = s
        .envoy
        .wait_access_log(&[
            "\"GET /orders/7\" 200",
            &format!("peer_uri_san={WEB} "),
            "decision=delegation",
            "sub=alice",
            "aud=orders ",
            &format!("actor={WEB} "),
            "rule=web-delegates-orders ",
            &format!("jti={}", claims["jti"].as_str().unwrap()),
        ])
        .await;
    assert!(line.contains(&format!("upstream={}", s.echo.addr)), "{line}");
    assert_eq!(s.echo.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intruder_certificate_is_refused_by_stsgate() {
    let s = Stack::start("mtls-intruder").await;
    let subject = s.sts.mint("alice", "orders.read orders.write").await;

    let resp = s.get(Some("intruder"), "/orders/7", &subject).await.unwrap_or_else(|e| {
        panic!("the intruder's certificate is valid for TLS: {}\n{}", mtls::error_chain(&e), s.envoy.log())
    });
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_target", "{body}");
    assert!(body["error_description"].as_str().unwrap().contains("no rule allows"), "{body}");

    // The TLS peer is the intruder, and stsgate, not Envoy, said no.
    s.envoy
        .wait_access_log(&[
            "\"GET /orders/7\" 403",
            &format!("peer_uri_san={INTRUDER} "),
            "decision=denied",
            "reason=no_rule",
        ])
        .await;
    let log = s.sts.log_text();
    assert!(log.contains(INTRUDER), "stsgate's debug log should name the refused actor:\n{log}");
    assert_eq!(s.echo.hits(), 0, "a refused request reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_is_refused_without_a_certificate_from_the_ca() {
    let s = Stack::start("mtls-nocert").await;
    let subject = s.sts.mint("alice", "orders.read").await;

    // No client certificate at all.
    let err = s.get(None, "/orders/7", &subject).await.expect_err("Envoy answered a client without a certificate");
    assert!(!err.is_status(), "{}", mtls::error_chain(&err));
    // A certificate with the web SPIFFE ID, self-signed rather than from the CA.
    let err2 =
        s.get(Some("rogue"), "/orders/7", &subject).await.expect_err("Envoy answered a self-signed client certificate");
    assert!(!err2.is_status(), "{}", mtls::error_chain(&err2));

    // Both were refused by Envoy's TLS layer, before any HTTP (rustls reports the TLS 1.3
    // alerts CertificateRequired and UnknownCA; the counters are the stable proof).
    assert!(
        s.ssl_stat("fail_verify_no_cert").await >= 1,
        "no-certificate error: {}\n{}",
        mtls::error_chain(&err),
        s.envoy.log()
    );
    assert!(
        s.ssl_stat("fail_verify_error").await >= 1,
        "rogue-certificate error: {}\n{}",
        mtls::error_chain(&err2),
        s.envoy.log()
    );
    assert_eq!(s.ssl_stat("handshake").await, 0, "a handshake completed");
    assert_eq!(s.echo.hits(), 0);
    assert!(s.envoy.access_log().is_empty(), "an HTTP request got through:\n{}", s.envoy.access_log());
    assert!(!s.sts.log_text().contains("exchanged"), "stsgate was consulted:\n{}", s.sts.log_text());
}
