//! The HTTP listener of a real stsgate: its JWKS, OAuth/OIDC metadata, probes
//! and Prometheus metrics.

mod support;

use serde_json::json;
use support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_publishes_only_public_signing_keys() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .edit(|y| {
            y.replace(
                "      ephemeral: true\n",
                "      ephemeral: true\n    - kid: next-ed\n      alg: EdDSA\n      ephemeral: true\n    - kid: old-rsa\n      alg: RS256\n      ephemeral: true\n",
            )
        })
        .start()
        .await;
    let resp = h.get("/.well-known/jwks.json").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/jwk-set+json");
    assert!(resp.headers()["cache-control"].to_str().unwrap().contains("max-age"));
    let jwks: serde_json::Value = resp.json().await.unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    let kids: Vec<&str> = keys.iter().map(|k| k["kid"].as_str().unwrap()).collect();
    assert_eq!(kids, [STS_KID, "next-ed", "old-rsa"], "every configured key is published");
    for key in keys {
        assert_eq!(key["use"], "sig", "{key}");
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(key.get(private).is_none(), "private member {private} published: {key}");
        }
    }
    assert_eq!(keys[0]["kty"], "EC");
    assert_eq!(keys[0]["crv"], "P-256");
    assert_eq!(keys[0]["alg"], "ES256");
    assert_eq!(keys[1]["kty"], "OKP");
    assert_eq!(keys[2]["kty"], "RSA");
    // Every published key is usable by a standard JWT library.
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    for jwk in &set.keys {
        jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    }

    // The first key signs (no `signing.active`), and its token verifies.
    let resp = h.check_for(&idp.token(&idp.claims("alice", "x")), "api://x").await;
    let (header, _) = h.verify_minted(&allowed(&resp).bearer(), "api://x").await;
    assert_eq!(header.kid.as_deref(), Some(STS_KID));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_key_selects_the_signer() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .edit(|y| {
            y.replace("signing:\n", "signing:\n  active: next-ed\n").replace(
                "      ephemeral: true\n",
                "      ephemeral: true\n    - kid: next-ed\n      alg: EdDSA\n      ephemeral: true\n",
            )
        })
        .start()
        .await;
    let resp = h.check_for(&idp.token(&idp.claims("alice", "x")), "api://x").await;
    let (header, claims) = h.verify_minted(&allowed(&resp).bearer(), "api://x").await;
    assert_eq!(header.kid.as_deref(), Some("next-ed"));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);
    assert_eq!(claims["sub"], "alice");
    let meta = h.get_json("/.well-known/oauth-authorization-server").await;
    assert_eq!(meta["token_signing_alg_values_supported"], json!(["ES256", "EdDSA"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_documents_name_issuer_and_jwks_uri() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    for path in ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"] {
        let meta = h.get_json(path).await;
        assert_eq!(meta["issuer"], STS_ISSUER, "{path}: {meta}");
        assert_eq!(meta["jwks_uri"], format!("{STS_ISSUER}/.well-known/jwks.json"), "{path}");
        assert_eq!(meta["id_token_signing_alg_values_supported"], json!(["ES256"]), "{path}");
        assert_eq!(meta["subject_types_supported"], json!(["public"]), "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuer_with_a_path_serves_metadata_where_clients_look() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .edit(|y| y.replace(&format!("issuer: {STS_ISSUER}\n"), "issuer: https://sts.test/tenant-a\n"))
        .start()
        .await;
    // RFC 8414 §3 inserts the well-known segment before the path; OIDC appends it.
    for path in [
        "/.well-known/oauth-authorization-server/tenant-a",
        "/tenant-a/.well-known/openid-configuration",
        "/.well-known/openid-configuration",
    ] {
        let meta = h.get_json(path).await;
        assert_eq!(meta["issuer"], "https://sts.test/tenant-a", "{path}");
        assert_eq!(meta["jwks_uri"], "https://sts.test/tenant-a/.well-known/jwks.json", "{path}");
    }
    let jwks = h.get_json("/tenant-a/.well-known/jwks.json").await;
    assert_eq!(jwks["keys"][0]["kid"], STS_KID);

    // Minted tokens carry that issuer.
    let resp = h.check_for(&idp.token(&idp.claims("alice", "x")), "api://x").await;
    let token = allowed(&resp).bearer();
    let (_, claims) = verify_with_jwks(
        &h.http,
        &h.url("/tenant-a/.well-known/jwks.json"),
        "https://sts.test/tenant-a",
        &token,
        "api://x",
    )
    .await;
    assert_eq!(claims["iss"], "https://sts.test/tenant-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_report_liveness_and_readiness() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let resp = h.get("/healthz").await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.text().await.unwrap().trim(), "ok");
    let resp = h.get("/readyz").await;
    assert_eq!(resp.status(), 200);
    let report: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(report, json!({"ready": true, "draining": false, "issuers_not_loaded": 0}));
    assert_eq!(h.get("/no-such-endpoint").await.status(), 404);

    // Liveness does not depend on the IdP; readiness does.
    let down = MockIdp::start_in(Mode::Unavailable).await;
    let h2 = Harness::builder(&down).no_wait().start().await;
    assert_eq!(h2.get("/healthz").await.status(), 200);
    assert_eq!(h2.get("/readyz").await.status(), 503);
}

fn metric_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|lab| l.contains(lab)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_decisions() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let resp = h.get("/metrics").await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    let before = resp.text().await.unwrap();
    // The allow series exists from the start (so rate() works at once), at zero.
    assert_eq!(metric_value(&before, "stsgate_decisions_total", &["outcome=\"ok\""]), Some(0.0), "{before}");

    let token = idp.token(&idp.claims("alice", "orders.read"));
    allowed(&h.check_for(&token, "orders").await);
    allowed(&h.check_for(&token, "orders").await);
    denial(&h.check(&[], &[("audience", "orders")], "a.test", "/").await);
    denial(&h.check_for(&token, "payments").await);

    let text = h.get("/metrics").await.text().await.unwrap();
    assert!(text.contains("# TYPE stsgate_decisions counter"), "{text}");
    assert_eq!(
        metric_value(&text, "stsgate_decisions_total", &["outcome=\"ok\"", "reason=\"exchanged\""]),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "stsgate_decisions_total", &["outcome=\"unauthenticated\"", "reason=\"missing_token\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "stsgate_decisions_total", &["outcome=\"denied\"", "reason=\"no_rule\""]),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric_value(&text, "stsgate_request_duration_seconds_count", &["api=\"ext_authz\""]),
        Some(4.0),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics text ends with # EOF");
}
