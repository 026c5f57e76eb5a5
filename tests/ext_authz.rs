//! The ext_authz v3 Check front door against a real stsgate and a real (mock)
//! IdP: what an allowed exchange hands Envoy, how the target audience is
//! chosen, and every refusal with its gRPC code, HTTP status, challenge and body.

mod support;

use serde_json::json;
use stsgate::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use stsgate::pb::envoy::config::core::v3::{HeaderMap, HeaderValue};
use support::*;

fn scopes(claims: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = claims["scope"].as_str().unwrap_or("").split_whitespace().map(str::to_owned).collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_token_is_exchanged_for_a_verifiable_at_jwt() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let mut claims = idp.claims("alice", "orders.read orders.write profile");
    claims["client_id"] = json!("web-app");
    let subject_exp = claims["exp"].as_i64().unwrap();
    let before = now();

    let resp = h.check_token(&idp.token(&claims), &[("audience", "orders")]).await;
    let ok = allowed(&resp);

    // One authorization header, overwriting the caller's.
    let mutation = ok.header("authorization");
    assert_eq!(mutation.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
    let minted = ok.bearer();
    assert!(ok.headers_to_remove.is_empty(), "same header in and out: nothing to remove");

    // Verifies against the published JWKS, independently of stsgate's code.
    let (header, c) = h.verify_minted(&minted, "orders").await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.kid.as_deref(), Some(STS_KID));
    assert_eq!(header.alg, jsonwebtoken::Algorithm::ES256);
    assert_eq!(c["iss"], STS_ISSUER);
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["aud"], "orders");
    assert_eq!(c["client_id"], "web-app");
    assert!(c["jti"].as_str().is_some_and(|j| j.len() >= 16), "{c}");
    assert_ne!(c["jti"], claims["jti"], "a fresh jti, not the subject token's");
    // No scope requested: everything the subject has that the rule grants.
    assert_eq!(scopes(&c), ["orders.read", "orders.write"]);
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert!(iat >= before && iat <= now(), "iat {iat}");
    assert!(exp <= subject_exp, "never outlives the subject token");
    assert_eq!(exp - iat, 120, "the orders rule caps the lifetime at 2m");

    let md = &ok.metadata;
    // The rule's outcome (the default: a plain exchange, no actor).
    assert_eq!(md.get("decision").map(String::as_str), Some("exchange"));
    assert_eq!(md.get("actor"), None, "no actor: the field is absent");
    assert_eq!(md.get("sub").map(String::as_str), Some("alice"));
    assert_eq!(md.get("aud").map(String::as_str), Some("orders"));
    assert_eq!(md.get("rule").map(String::as_str), Some("orders"));
    assert_eq!(md.get("subject_issuer"), Some(&idp.issuer));
    assert_eq!(md.get("jti"), Some(&c["jti"].as_str().unwrap().to_owned()));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_is_requested_and_subject_and_rule_intersection() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read orders.write profile"));

    // requested {orders.read, profile, orders.admin} ∩ subject ∩ rule orders.* = {orders.read}
    let resp = h.check_token(&token, &[("audience", "orders"), ("scope", "orders.read profile orders.admin")]).await;
    let (_, c) = h.verify_minted(&allowed(&resp).bearer(), "orders").await;
    assert_eq!(scopes(&c), ["orders.read"]);

    // A wide rule (`*`) still never grants more than the subject token has.
    let resp = h.check_token(&token, &[("audience", "api://x"), ("scope", "profile admin")]).await;
    let (_, c) = h.verify_minted(&allowed(&resp).bearer(), "api://x").await;
    assert_eq!(scopes(&c), ["profile"]);
    assert_eq!(allowed(&resp).metadata.get("scope").map(String::as_str), Some("profile"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_is_capped_by_config_and_by_subject_expiry() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).tokens("lifetime: 90s").start().await;

    // A rule without max_lifetime: the configured lifetime.
    let resp = h.check_for(&idp.token(&idp.claims("alice", "x")), "api://x").await;
    let (_, c) = h.verify_minted(&allowed(&resp).bearer(), "api://x").await;
    assert_eq!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap(), 90);

    // A subject token expiring sooner caps the minted token's exp.
    let mut claims = idp.claims("alice", "x");
    let subject_exp = now() + 40;
    claims["exp"] = json!(subject_exp);
    let resp = h.check_for(&idp.token(&claims), "api://x").await;
    let (_, c) = h.verify_minted(&allowed(&resp).bearer(), "api://x").await;
    assert_eq!(c["exp"].as_i64().unwrap(), subject_exp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_id_defaults_to_the_configured_one() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).ext_authz("client_id: mesh-gateway").start().await;
    let resp = h.check_for(&idp.token(&idp.claims("alice", "x")), "api://x").await;
    let (_, c) = h.verify_minted(&allowed(&resp).bearer(), "api://x").await;
    assert_eq!(c["client_id"], "mesh-gateway");

    // `azp` names the client when `client_id` is absent.
    let mut claims = idp.claims("alice", "x");
    claims["azp"] = json!("spa");
    let resp = h.check_for(&idp.token(&claims), "api://x").await;
    let (_, c) = h.verify_minted(&allowed(&resp).bearer(), "api://x").await;
    assert_eq!(c["client_id"], "spa");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audience_comes_from_context_then_routes_then_default() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .ext_authz(
            r#"
default_audience: "api://fallback"
routes:
  - host: "*.shop.test"
    path_prefix: /orders
    audience: orders
    scope: orders.read
"#,
        )
        .start()
        .await;
    let bearer = format!("Bearer {}", idp.token(&idp.claims("alice", "orders.read orders.write profile")));
    let auth = [("authorization", bearer.as_str())];
    let minted_aud = |resp: &stsgate::pb::envoy::service::auth::v3::CheckResponse| {
        let (_, c) = peek(&allowed(resp).bearer());
        (c["aud"].as_str().unwrap().to_owned(), scopes(&c))
    };

    // 1. The route's context extension wins over the table.
    let resp = h.check(&auth, &[("audience", "api://billing")], "api.shop.test", "/orders/1").await;
    assert_eq!(minted_aud(&resp).0, "api://billing");

    // 2. The host/path table (port and query ignored), with the route's scope.
    let resp = h.check(&auth, &[], "api.shop.test:8443", "/orders/1?page=2").await;
    assert_eq!(minted_aud(&resp), ("orders".to_owned(), vec!["orders.read".to_owned()]));
    // ... and a context `scope` still overrides the route's.
    let resp = h.check(&auth, &[("scope", "orders.write")], "api.shop.test", "/orders").await;
    assert_eq!(minted_aud(&resp), ("orders".to_owned(), vec!["orders.write".to_owned()]));

    // 3. Neither: the default audience.
    let resp = h.check(&auth, &[], "other.test", "/orders").await;
    assert_eq!(minted_aud(&resp).0, "api://fallback");
    let resp = h.check(&auth, &[], "api.shop.test", "/cart").await;
    assert_eq!(minted_aud(&resp).0, "api://fallback");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_audience_at_all_is_forbidden_never_ok() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).ext_authz("routes:\n  - host: only.test\n    audience: orders\n").start().await;
    let bearer = format!("Bearer {}", idp.token(&idp.claims("alice", "orders.read")));
    for (ctx, host) in [(vec![], "elsewhere.test"), (vec![("audience", "")], "elsewhere.test")] {
        let resp = h.check(&[("authorization", &bearer)], &ctx, host, "/").await;
        let d = denial(&resp);
        assert_eq!(d.rpc_code, RPC_PERMISSION_DENIED, "{d:#?}");
        assert_eq!(d.http_status, 403);
        assert_eq!(d.error(), "invalid_target");
        assert!(d.www_authenticate().is_none(), "403 has no challenge");
        assert_eq!(d.metadata.get("reason").map(String::as_str), Some("no_audience"));
    }
    // The routed host still works.
    allowed(&h.check(&[("authorization", &bearer)], &[], "only.test", "/").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_output_header_removes_the_subject_header() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).ext_authz("output_header: x-sts-token\noutput_scheme: \"\"").start().await;
    let resp = h.check_for(&idp.token(&idp.claims("alice", "x")), "api://x").await;
    let ok = allowed(&resp);
    assert_eq!(ok.headers.len(), 1, "{:?}", ok.headers);
    let mutation = ok.header("x-sts-token");
    assert_eq!(mutation.append_action, HeaderAppendAction::OverwriteIfExistsOrAdd as i32);
    let token = ok.header_value("x-sts-token");
    assert_eq!(token.split('.').count(), 3, "a bare token without scheme: {token}");
    h.verify_minted(&token, "api://x").await;
    assert_eq!(ok.headers_to_remove, ["authorization"]);

    // Keeping the subject header is a choice.
    let h2 = Harness::builder(&idp).ext_authz("output_header: x-sts-token\nremove_subject_header: false").start().await;
    let ok = allowed(&h2.check_for(&idp.token(&idp.claims("alice", "x")), "api://x").await);
    assert!(ok.headers_to_remove.is_empty());
    assert!(ok.header_value("x-sts-token").starts_with("Bearer "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamic_metadata_is_opt_in_and_denials_always_explain() {
    let idp = MockIdp::start().await;
    let token = idp.token(&idp.claims("alice", "orders.read"));

    // The default: who and for whom (sub, aud; actor only when there is one).
    let h = Harness::builder(&idp).default_metadata().start().await;
    let ok = allowed(&h.check_token(&token, &[("audience", "orders")]).await);
    let mut keys: Vec<&str> = ok.metadata.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["aud", "sub"]);

    // Turned off: an allowed request carries no metadata at all (Envoy pays per field).
    let h = Harness::builder(&idp).ext_authz("dynamic_metadata: []").start().await;
    let resp = h.check_token(&token, &[("audience", "orders")]).await;
    allowed(&resp);
    assert!(resp.dynamic_metadata.is_none(), "{:?}", resp.dynamic_metadata);
    // A denial still says why.
    let d = denial(&h.check_token(&token, &[("audience", "nobody-grants-this")]).await);
    assert_eq!(d.http_status, 403);
    assert_eq!(d.metadata.get("decision").map(String::as_str), Some("denied"));
    assert_eq!(d.metadata.get("reason").map(String::as_str), Some("no_rule"));

    // Exactly the listed fields, in any order.
    let h = Harness::builder(&idp).ext_authz("dynamic_metadata: [rule, sub]").start().await;
    let ok = allowed(&h.check_token(&token, &[("audience", "orders")]).await);
    let mut keys: Vec<&str> = ok.metadata.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["rule", "sub"]);
    assert_eq!(ok.metadata["sub"], "alice");
    assert_eq!(ok.metadata["rule"], "orders");

    // A field listed twice is a config error.
    let yaml = Harness::builder(&idp).ext_authz("dynamic_metadata: [sub, sub]").yaml();
    let err = stsgate::config::Config::from_yaml_validated(&yaml).unwrap_err().to_string();
    assert!(err.contains("ext_authz.dynamic_metadata[1]") && err.contains("listed twice"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_credential_headers_the_request_carries_are_removed() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .ext_authz("output_header: x-sts-token\nactor: { mode: none, token_header: x-actor-token }\nrequested_subject_header: x-act-as")
        .start()
        .await;
    let bearer = format!("Bearer {}", idp.token(&idp.claims("alice", "x")));
    let ok = allowed(&h.check(&[("authorization", &bearer)], &[("audience", "api://x")], "a.test", "/").await);
    assert_eq!(ok.headers_to_remove, ["authorization"], "absent actor/impersonation headers are not named");
    let ok = allowed(
        &h.check(
            &[("authorization", &bearer), ("x-actor-token", "ignored-by-mode-none")],
            &[("audience", "api://x")],
            "a.test",
            "/",
        )
        .await,
    );
    assert_eq!(ok.headers_to_remove, ["authorization", "x-actor-token"], "a present one is never forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn custom_subject_header_and_raw_header_map_are_read() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).ext_authz("subject_header: x-id-token\nsubject_scheme: \"\"").start().await;
    let token = idp.token(&idp.claims("alice", "x"));
    let ok = allowed(&h.check(&[("x-id-token", &token)], &[("audience", "api://x")], "a.test", "/").await);
    assert_eq!(ok.headers_to_remove, ["x-id-token"]);

    // Envoy with `encode_raw_headers: true` sends header_map with raw bytes.
    let mut req = check_request(&[], &[("audience", "api://x")], "a.test", "/");
    let http = req.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
    http.header_map = Some(HeaderMap {
        headers: vec![HeaderValue {
            key: "x-id-token".into(),
            value: String::new(),
            raw_value: token.clone().into_bytes(),
        }],
    });
    allowed(&h.check_request(req).await);
}

// ---------------------------------------------------------------------------
// Refusals
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_token_gets_a_bare_challenge() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    for headers in [vec![], vec![("authorization", "")], vec![("x-other", "Bearer a.b.c")]] {
        let d = denial(&h.check(&headers, &[("audience", "orders")], "api.test", "/").await);
        assert_eq!(d.rpc_code, RPC_UNAUTHENTICATED);
        assert_eq!(d.http_status, 401);
        // RFC 6750 §3.1: no error code when the request had no credentials.
        assert_eq!(d.www_authenticate(), Some("Bearer realm=\"stsgate\""));
        assert_eq!(d.error(), "unauthorized");
        assert!(d.description().contains("no bearer token"), "{}", d.description());
        assert_eq!(d.headers.get("content-type").map(String::as_str), Some("application/json"));
        assert_eq!(d.headers.get("cache-control").map(String::as_str), Some("no-store"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn realm_is_configurable() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).ext_authz("realm: shop").start().await;
    let d = denial(&h.check(&[], &[("audience", "orders")], "api.test", "/").await);
    assert_eq!(d.www_authenticate(), Some("Bearer realm=\"shop\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_scheme_two_tokens_and_empty_bearer_are_invalid_requests() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let good = idp.token(&idp.claims("alice", "orders.read"));
    let two = format!("Bearer {good},Bearer {good}");
    let two_spaced = format!("Bearer {good} {good}");
    for (value, needle) in [
        ("Basic YWxpY2U6c2VjcmV0".to_owned(), "not a Bearer token"),
        (two, "more than one credential"),
        (two_spaced, "more than one credential"),
        ("Bearer".to_owned(), "empty"),
    ] {
        let d = denial(&h.check(&[("authorization", &value)], &[("audience", "orders")], "api.test", "/").await);
        assert_eq!(d.rpc_code, RPC_UNAUTHENTICATED, "{value}");
        assert_eq!(d.http_status, 401);
        assert_eq!(d.error(), "invalid_request", "{value}");
        assert!(d.description().contains(needle), "{value}: {}", d.description());
        let challenge = d.www_authenticate().unwrap();
        assert!(challenge.starts_with("Bearer realm=\"stsgate\", error=\"invalid_request\""), "{challenge}");
    }

    // Two authorization headers sent raw (header_map) are joined, then refused.
    let mut req = check_request(&[], &[("audience", "orders")], "api.test", "/");
    let http = req.attributes.as_mut().unwrap().request.as_mut().unwrap().http.as_mut().unwrap();
    let raw = |v: String| HeaderValue { key: "authorization".into(), value: String::new(), raw_value: v.into_bytes() };
    http.header_map = Some(HeaderMap { headers: vec![raw(format!("Bearer {good}")), raw(format!("Bearer {good}"))] });
    let d = denial(&h.check_request(req).await);
    assert_eq!(d.error(), "invalid_request");
    assert!(d.description().contains("more than one"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_tokens_are_invalid() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    for bad in ["not-a-jwt", "a.b", "%%%.###.$$$", "eyJhbGciOiJSUzI1NiJ9.bm90IGpzb24.c2ln"] {
        assert_invalid_token(&h.check_for(bad, "orders").await, "malformed");
    }
    // Five parts: an encrypted token (JWE).
    assert_invalid_token(&h.check_for("a.b.c.d.e", "orders").await, "encrypted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_claims_are_enforced_with_leeway() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let t = now();
    let with = |f: &dyn Fn(&mut serde_json::Value)| {
        let mut c = idp.claims("alice", "orders.read");
        f(&mut c);
        idp.token(&c)
    };

    let expired = with(&|c| c["exp"] = json!(t - 120));
    let d = assert_invalid_token(&h.check_for(&expired, "orders").await, "expired");
    assert!(d.www_authenticate().unwrap().contains("error_description=\"token has expired\""));

    assert_invalid_token(&h.check_for(&with(&|c| c["nbf"] = json!(t + 120)), "orders").await, "not valid yet");
    assert_invalid_token(&h.check_for(&with(&|c| c["iat"] = json!(t + 120)), "orders").await, "issued in the future");
    assert_invalid_token(
        &h.check_for(
            &with(&|c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            "orders",
        )
        .await,
        "claim exp",
    );

    // Within the default 30s leeway: still accepted.
    allowed(&h.check_for(&with(&|c| c["nbf"] = json!(t + 10)), "orders").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_audience_must_match_when_the_issuer_lists_audiences() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).issuer_option("audiences: [stsgate, sts-alt]").start().await;
    let mut claims = idp.claims("alice", "orders.read");
    claims["aud"] = json!("someone-else");
    assert_invalid_token(&h.check_for(&idp.token(&claims), "orders").await, "audience");

    claims["aud"] = json!(["someone-else", "sts-alt"]);
    allowed(&h.check_for(&idp.token(&claims), "orders").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_issuer_is_refused_even_with_a_valid_signature() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let mut claims = idp.claims("alice", "orders.read");
    claims["iss"] = json!("https://evil.test");
    assert_invalid_token(&h.check_for(&idp.token(&claims), "orders").await, "issuer is not trusted");
    // stsgate's own tokens are not subject tokens either.
    claims["iss"] = json!(STS_ISSUER);
    assert_invalid_token(&h.check_for(&idp.token(&claims), "orders").await, "issuer is not trusted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_and_symmetric_tokens_are_refused() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let claims = idp.claims("alice", "orders.read");

    assert_invalid_token(&h.check_for(&forge_none(&claims), "orders").await, "alg none");
    // alg none with some bytes where the signature goes.
    let none_sig = format!("{}.{}.AAAA", b64json(&json!({"alg": "none"})), b64json(&claims));
    assert_invalid_token(&h.check_for(&none_sig, "orders").await, "alg none");

    // Alg confusion: HS256 keyed with the IdP's RSA public key (PEM and DER).
    let key = idp.key();
    let forged = forge_hs256(key.public_pem.as_bytes(), Some(&key.kid), &claims);
    assert_invalid_token(&h.check_for(&forged, "orders").await, "symmetric (HMAC) algorithms");
    let der = pem::parse(&key.public_pem).unwrap().into_contents();
    let forged = forge_hs256(&der, Some(&key.kid), &claims);
    assert_invalid_token(&h.check_for(&forged, "orders").await, "symmetric (HMAC) algorithms");
}

/// Header values are caller-controlled: none of them may reach the gRPC
/// status, the challenge or the JSON body (where they would also reach the
/// log line that reports the refusal, forging entries with a newline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_header_values_are_never_reflected() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let key = idp.key();
    let claims = idp.claims("alice", "orders.read");
    let forged = "X\nstsgate::audit: impersonation approved INJECTED";
    let with = |field: &str, value: &str| {
        let mut header = key.header();
        header[field] = json!(value);
        key.sign(&header, &claims)
    };
    let cases = [
        ("alg", with("alg", &format!("RS256{forged}")), "algorithm is not one stsgate verifies"),
        ("alg HS", with("alg", &format!("HS256{forged}")), "symmetric (HMAC)"),
        ("kid", with("kid", &format!("ghost{forged}")), "matches the token's kid"),
        ("typ", with("typ", &format!("logout+jwt{forged}")), "not an access token"),
    ];
    for (what, token, expected) in cases {
        let resp = h.check_for(&token, "orders").await;
        let d = assert_invalid_token(&resp, expected);
        let status = resp.status.as_ref().unwrap().message.clone();
        for text in [status.as_str(), d.description(), d.www_authenticate().unwrap()] {
            assert!(!text.contains("INJECTED") && !text.contains('\n'), "{what}: header value reflected in {text:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn algorithm_must_be_in_the_issuers_allow_list() {
    let idp = MockIdp::start().await;
    let ec = idp.new_key(KeyKind::P256, "ec-1", true);
    let claims = idp.claims("alice", "orders.read");
    let token = ec.token(&claims);

    // The issuer allows only RS256: a real, published EC key does not help.
    let h = Harness::start(&idp).await;
    assert_invalid_token(&h.check_for(&token, "orders").await, "algorithm ES256 is not allowed");
    // Nor does claiming RS256 while naming the EC key.
    let lying = ec.sign(&json!({"alg": "RS256", "kid": "ec-1"}), &claims);
    let d = denial(&h.check_for(&lying, "orders").await);
    assert_eq!(d.http_status, 401, "{d:#?}");
    assert_eq!(d.error(), "invalid_token");
    h.shutdown().await;

    // Control: allowed, it is accepted.
    let h =
        Harness::builder(&idp).edit(|y| y.replace("algorithms: [RS256]", "algorithms: [RS256, ES256]")).start().await;
    allowed(&h.check_for(&token, "orders").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_supported_key_type_verifies_when_allowed() {
    let idp = MockIdp::start().await;
    let keys = [
        idp.new_key(KeyKind::P256, "ec-256", true),
        idp.new_key(KeyKind::P384, "ec-384", true),
        idp.new_key(KeyKind::Ed25519, "ed-1", true),
        idp.key(),
    ];
    let h = Harness::builder(&idp)
        .edit(|y| y.replace("algorithms: [RS256]", "algorithms: [RS256, ES256, ES384, EdDSA]"))
        .start()
        .await;
    for key in &keys {
        let resp = h.check_for(&key.token(&idp.claims(&format!("user-{}", key.kid), "orders.read")), "orders").await;
        let ok = allowed(&resp);
        assert_eq!(ok.metadata.get("sub"), Some(&format!("user-{}", key.kid)), "{}", key.kid);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_supplied_keys_are_refused() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let key = idp.key();
    let claims = idp.claims("alice", "orders.read");
    for (name, value) in [
        ("jku", json!("https://evil.test/jwks.json")),
        ("x5u", json!("https://evil.test/cert.pem")),
        ("jwk", key.jwk.clone()),
        ("x5c", json!(["MIIBIjANBgkq"])),
    ] {
        let mut header = key.header();
        header[name] = value;
        // Correctly signed by the trusted key: the header parameter alone is the problem.
        let token = idp.token_with_header(&header, &claims);
        assert_invalid_token(&h.check_for(&token, "orders").await, &format!("header parameter {name}"));
    }
    let mut header = key.header();
    header["crit"] = json!(["exp"]);
    assert_invalid_token(&h.check_for(&key.sign(&header, &claims), "orders").await, "critical");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_token_is_refused_before_parsing() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).tokens("lifetime: 5m\nmax_token_bytes: 1024").start().await;
    let mut claims = idp.claims("alice", "orders.read");
    claims["padding"] = json!("x".repeat(1500));
    let big = idp.token(&claims);
    assert!(big.len() > 1024);
    assert_invalid_token(&h.check_for(&big, "orders").await, "larger than 1024 bytes");
    // Garbage that large is refused the same way (no parsing).
    assert_invalid_token(&h.check_for(&"A".repeat(5000), "orders").await, "larger than");
    allowed(&h.check_for(&idp.token(&idp.claims("alice", "orders.read")), "orders").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_payload_fails_the_signature() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let parts: Vec<&str> = token.split('.').collect();
    let tampered = format!("{}.{}.{}", parts[0], b64json(&idp.claims("mallory", "orders.read orders.write")), parts[2]);
    assert_invalid_token(&h.check_for(&tampered, "orders").await, "signature is invalid");
    // Signed by a key that is not the IdP's but claims its kid.
    let impostor = IdpKey::generate(KeyKind::Rsa, "rsa-1");
    assert_invalid_token(
        &h.check_for(&impostor.token(&idp.claims("alice", "orders.read")), "orders").await,
        "signature is invalid",
    );
    // The genuine token still passes.
    allowed(&h.check_for(&token, "orders").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_type_is_checked() {
    let idp = MockIdp::start().await;
    let key = idp.key();
    let claims = idp.claims("alice", "orders.read");
    let typed = |typ: Option<&str>| {
        let mut header = key.header();
        match typ {
            Some(t) => header["typ"] = json!(t),
            None => {
                header.as_object_mut().unwrap().remove("typ");
            }
        }
        key.sign(&header, &claims)
    };

    let strict = Harness::builder(&idp).issuer_option("require_at_jwt: true").start().await;
    for typ in [Some("JWT"), None] {
        assert_invalid_token(&strict.check_for(&typed(typ), "orders").await, "must be at+jwt");
    }
    allowed(&strict.check_for(&typed(Some("at+jwt")), "orders").await);
    allowed(&strict.check_for(&typed(Some("application/at+jwt")), "orders").await);
    strict.shutdown().await;

    // Without require_at_jwt, JWT and no typ pass, but another kind of JWT never does.
    let lax = Harness::start(&idp).await;
    allowed(&lax.check_for(&typed(Some("JWT")), "orders").await);
    allowed(&lax.check_for(&typed(None), "orders").await);
    assert_invalid_token(&lax.check_for(&typed(Some("logout+jwt")), "orders").await, "not an access token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_sub_is_refused() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let mut claims = idp.claims("alice", "orders.read");
    claims["sub"] = json!("");
    assert_invalid_token(&h.check_for(&idp.token(&claims), "orders").await, "claim sub");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_without_a_matching_rule_is_forbidden() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read payments.write"));
    let d = denial(&h.check_for(&token, "payments").await);
    assert_eq!(d.rpc_code, RPC_PERMISSION_DENIED, "{d:#?}");
    assert_eq!(d.http_status, 403);
    assert_eq!(d.error(), "invalid_target");
    assert!(d.description().contains("\"payments\""), "{}", d.description());
    assert!(d.www_authenticate().is_none());
    assert_eq!(d.headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_eq!(d.metadata.get("reason").map(String::as_str), Some("no_rule"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_issuer_match_is_enforced() {
    let idp = MockIdp::start().await;
    let other = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .edit({
            let (mine, theirs) = (idp.issuer.clone(), other.issuer.clone());
            move |y| {
                y.replace(
                    "trusted_issuers:\n",
                    &format!("trusted_issuers:\n  - issuer: {theirs}\n    discovery: true\n"),
                )
                .replace("rules:\n", &format!("rules:\n  - name: mine-only\n    match: {{ issuers: [\"{mine}\"], audiences: [billing] }}\n    grant: {{ scopes: [\"*\"] }}\n"))
            }
        })
        .start()
        .await;
    allowed(&h.check_for(&idp.token(&idp.claims("alice", "b")), "billing").await);
    let d = denial(&h.check_for(&other.token(&other.claims("alice", "b")), "billing").await);
    assert_eq!(d.error(), "invalid_target");
    // The other issuer's token is otherwise valid.
    allowed(&h.check_for(&other.token(&other.claims("alice", "orders.read")), "orders").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_scope_intersection_is_invalid_scope() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read profile"));
    for ctx_scope in [Some("orders.admin"), Some("profile")] {
        let mut ctx = vec![("audience", "orders")];
        ctx.extend(ctx_scope.map(|s| ("scope", s)));
        let d = denial(&h.check_token(&token, &ctx).await);
        assert_eq!(d.rpc_code, RPC_PERMISSION_DENIED);
        assert_eq!(d.http_status, 403);
        assert_eq!(d.error(), "invalid_scope");
        assert!(d.description().contains("\"orders\""), "{}", d.description());
    }
    // A subject without any orders scope gets nothing from the orders rule.
    let d = denial(&h.check_for(&idp.token(&idp.claims("bob", "profile")), "orders").await);
    assert_eq!(d.error(), "invalid_scope");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_empty_scope_mints_a_token_without_scope() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules("- name: open\n  grant: { scopes: [\"x.*\"], allow_empty_scope: true }\n")
        .start()
        .await;
    let resp = h.check_for(&idp.token(&idp.claims("alice", "profile")), "anything").await;
    let (_, c) = h.verify_minted(&allowed(&resp).bearer(), "anything").await;
    assert!(c.get("scope").is_none(), "no scope claim at all: {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_not_loaded_is_503_not_401() {
    let idp = MockIdp::start_in(Mode::Unavailable).await;
    let h = Harness::builder(&idp).no_wait().start().await;
    let resp = h.check_for(&idp.token(&idp.claims("alice", "orders.read")), "orders").await;
    let d = denial(&resp);
    assert_eq!(d.rpc_code, RPC_UNAVAILABLE, "{d:#?}");
    assert_eq!(d.http_status, 503);
    assert_eq!(d.error(), "temporarily_unavailable");
    assert_eq!(d.headers.get("retry-after").map(String::as_str), Some("1"));
    assert!(d.www_authenticate().is_none(), "not the caller's fault: no challenge");
    // Header checks that need no key still answer precisely.
    assert_invalid_token(&h.check_for(&forge_none(&idp.claims("alice", "x")), "orders").await, "alg none");
}

/// A typo in a route's `actor` context extension is refused with a reason
/// naming it: read as `none`, it would drop the mTLS peer and turn a refused
/// delegation into an allowed actor-less exchange.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_actor_context_extension_is_refused() {
    use stsgate::pb::envoy::service::auth::v3::attribute_context::Peer;
    let idp = MockIdp::start().await;
    // `orders` is a plain exchange (no actor); with the peer taken into account
    // the request has an actor and must not match it.
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let bearer = format!("Bearer {token}");
    let with_peer = |mode: &str| {
        let mut req =
            check_request(&[("authorization", &bearer)], &[("audience", "orders"), ("actor", mode)], "api.test", "/");
        req.attributes.as_mut().unwrap().source =
            Some(Peer { principal: "spiffe://cluster.local/ns/shop/sa/web".into(), ..Default::default() });
        req
    };
    for typo in ["Peer", "mtls", "", "peer\nINJECTED-and-a-very-long-tail-that-goes-on-and-on"] {
        let d = denial(&h.check_request(with_peer(typo)).await);
        assert_eq!(
            (d.rpc_code, d.http_status, d.error()),
            (RPC_PERMISSION_DENIED, 403, "access_denied"),
            "{typo:?}: {d:#?}"
        );
        assert!(d.description().contains("actor context extension"), "{d:#?}");
        assert!(
            !d.description().contains('\n') && !d.description().contains("on-and-on"),
            "escaped and cut short: {d:#?}"
        );
        assert_eq!(d.metadata.get("reason").map(String::as_str), Some("unknown_actor_mode"));
    }
    // Known modes behave as documented: `none` ignores the peer, `peer` uses it.
    allowed(&h.check_request(with_peer("none")).await);
    let d = denial(&h.check_request(with_peer("peer")).await);
    assert_eq!(d.http_status, 403, "{d:#?}");
}

/// Every configured downstream-token header that an answer does not set is
/// removed, so a caller cannot forge one for the upstream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caller_supplied_downstream_token_headers_never_pass() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules(
            r#"
- name: checkout
  match: { audiences: [orders] }
  grant:
    scopes: ["orders.*", "payments.*"]
    downstream_tokens:
      - { audience: payments, header: x-payments-token, scopes: ["payments.read"] }
- name: billing
  match: { audiences: [billing] }
  grant:
    scopes: ["*"]
    downstream_tokens:
      - { audience: ledger, header: x-ledger-token, scopes: ["ledger.read"] }
"#,
        )
        .start()
        .await;
    let forged = [("x-payments-token", "FORGED"), ("x-ledger-token", "FORGED")];
    let check = |token: String, audience: &'static str| {
        let bearer = format!("Bearer {token}");
        let mut headers = vec![("authorization", bearer.clone())];
        headers.extend(forged.iter().map(|(k, v)| (*k, v.to_string())));
        let h = &h;
        async move {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            allowed(&h.check(&headers, &[("audience", audience)], "api.test", "/").await)
        }
    };

    // No payments scope left: the payments token is not minted, and the
    // forged one is removed; so is the other rule's header.
    let ok = check(idp.token(&idp.claims("alice", "orders.read")), "orders").await;
    assert!(!ok.headers.iter().any(|h| h.header.as_ref().unwrap().key == "x-payments-token"), "{ok:?}");
    for name in ["x-payments-token", "x-ledger-token"] {
        assert!(ok.headers_to_remove.contains(&name.to_owned()), "{name} must be removed: {ok:?}");
    }

    // Minted: stsgate's token overwrites the header; the other rule's is removed.
    let ok = check(idp.token(&idp.claims("alice", "orders.read payments.read")), "orders").await;
    assert_ne!(ok.header_value("x-payments-token"), "FORGED");
    assert!(!ok.headers_to_remove.contains(&"x-payments-token".to_owned()), "{ok:?}");
    assert!(ok.headers_to_remove.contains(&"x-ledger-token".to_owned()), "{ok:?}");
}
