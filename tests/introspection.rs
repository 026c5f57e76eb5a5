//! Opaque subject and actor tokens validated by RFC 7662 introspection (the
//! phantom-token pattern), through both front doors of a real stsgate: the
//! ext_authz Check and `POST /token`. The IdP's introspection endpoint is
//! `MockIntrospection`, which counts and records every request.

mod support;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use support::*;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
const CLIENT_ID: &str = "stsgate-at-idp";
const SECRET: &str = "s3cret:with/odd&chars";
/// An opaque token as an IdP hands them out.
const OPAQUE: &str = "2YotnFZFEjr1zCsicMWpAA";

struct Setup {
    idp: MockIdp,
    intro: MockIntrospection,
    h: Harness,
    _dir: TempDir,
}

/// stsgate trusting the mock IdP, whose opaque tokens are introspected at
/// `MockIntrospection` with `auth`; `extra` lines go into the introspection
/// block, `issuer_extra` beside it.
async fn setup_with(auth: &str, extra: &[&str], issuer_extra: &[&str]) -> Setup {
    let idp = MockIdp::start().await;
    let intro = MockIntrospection::start(&idp.issuer).await;
    let dir = TempDir::new("introspection");
    let secret = dir.write("secret", format!("{SECRET}\n"));
    let mut b = Harness::builder(&idp).issuer_option("opaque_tokens: true").issuer_option("introspection:");
    let mut lines = vec![
        format!("  endpoint: {}", intro.url),
        format!("  client_id: {CLIENT_ID}"),
        format!("  auth: {auth}"),
        "  timeout: 500ms".to_owned(),
    ];
    if auth != "private_key_jwt" {
        lines.push(format!("  client_secret_file: {}", secret.display()));
    }
    lines.extend(extra.iter().map(|l| format!("  {l}")));
    for l in &lines {
        b = b.issuer_option(l);
    }
    for l in issuer_extra {
        b = b.issuer_option(l);
    }
    let h = b.rules(RULES).start().await;
    Setup { idp, intro, h, _dir: dir }
}

async fn setup() -> Setup {
    setup_with("client_secret_basic", &[], &[]).await
}

/// `orders` (scopes orders.*), any `api://*`, and delegation to `billing`
/// by any actor.
const RULES: &str = r#"
- name: orders
  match: { audiences: [orders] }
  grant: { scopes: ["orders.*"] }
- name: apis
  match: { audiences: ["api://*"] }
  grant: { scopes: ["*"] }
- name: billing
  match: { audiences: [billing] }
  grant: { outcome: delegation, scopes: ["*"] }
"#;

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// `POST /token` exchanging `subject` (an access token) for `audience`.
async fn post_token(
    h: &Harness,
    subject: &str,
    audience: &str,
    extra: &[(&str, &str)],
) -> (u16, Option<String>, Value) {
    let mut pairs =
        vec![("grant_type", GRANT), ("subject_token", subject), ("subject_token_type", AT), ("audience", audience)];
    pairs.extend_from_slice(extra);
    let resp = h
        .http
        .post(h.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&pairs))
        .send()
        .await
        .expect("POST /token");
    let status = resp.status().as_u16();
    let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    (status, retry, resp.json().await.expect("JSON body"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_opaque_token_is_exchanged_at_both_doors() {
    let s = setup().await;
    s.intro.activate(OPAQUE, "alice", "orders.read orders.write profile");

    let ok = allowed(&s.h.check_for(OPAQUE, "orders").await);
    let (_, claims) = s.h.verify_minted(&ok.bearer(), "orders").await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["scope"], "orders.read orders.write");
    assert_eq!(claims["iss"], STS_ISSUER);
    // The minted token names the subject in its IdP's namespace.
    assert_eq!(claims["sub_id"], json!({"format": "iss_sub", "iss": s.idp.issuer, "sub": "alice"}));
    assert!(claims["exp"].as_i64().unwrap() <= now() + 600);

    let (status, _, body) = post_token(&s.h, OPAQUE, "orders", &[]).await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = s.h.verify_minted(body["access_token"].as_str().unwrap(), "orders").await;
    assert_eq!((claims["sub"].as_str(), claims["scope"].as_str()), (Some("alice"), Some("orders.read orders.write")));

    // What the IdP saw: the token, the hint, and stsgate's Basic credentials
    // (each part form-urlencoded first, RFC 6749 §2.3.1).
    let calls = s.intro.calls();
    assert_eq!(calls.len(), 1, "the second door used the cached answer: {calls:?}");
    assert_eq!(calls[0].form.get("token").map(String::as_str), Some(OPAQUE));
    assert_eq!(calls[0].form.get("token_type_hint").map(String::as_str), Some("access_token"));
    assert!(!calls[0].form.contains_key("client_secret"));
    use base64::Engine as _;
    let encoded = form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{encoded}"));
    assert_eq!(calls[0].authorization.as_deref(), Some(format!("Basic {basic}").as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_that_do_not_vouch_for_the_token_are_refused_at_both_doors() {
    let s = setup_with("client_secret_basic", &[], &["audiences: [stsgate]"]).await;
    let good = s.intro.activate("base", "alice", "orders.read");
    let mut cases: Vec<(&str, Value, &str)> = vec![
        ("inactive", json!({"active": false}), "not active"),
        ("missing", json!({"sub": "alice", "exp": now() + 600}), "not active"),
        ("string", json!({"active": "true", "sub": "alice", "exp": now() + 600}), "not active"),
    ];
    let mut vary = |name: &'static str, key: &str, v: Value, needle: &'static str| {
        let mut a = good.clone();
        a[key] = v;
        cases.push((name, a, needle));
    };
    vary("wrongiss", "iss", json!("https://evil.test"), "issuer is not trusted");
    vary("wrongaud", "aud", json!("someone-else"), "audience");
    vary("expired", "exp", json!(now() - 120), "expired");
    vary("refresh", "token_type", json!("refresh_token"), "not an access token");
    for (token, answer, needle) in cases {
        s.intro.answer(token, answer);
        assert_invalid_token(&s.h.check_for(token, "orders").await, needle);
        let (status, _, body) = post_token(&s.h, token, "orders", &[]).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{token}: {body}");
        let desc = body["error_description"].as_str().unwrap();
        assert!(desc.starts_with("subject token: ") && desc.contains(needle), "{token}: {desc}");
    }
    // Inactive answers are cached briefly too: the token endpoint asked no second time.
    let asked = s.intro.calls().iter().filter(|c| c.form["token"] == "inactive").count();
    assert_eq!(asked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_bound_is_the_revocation_latency() {
    let s = setup_with("client_secret_basic", &["cache_for: 2s", "negative_cache_for: 1s"], &[]).await;
    s.intro.activate(OPAQUE, "alice", "orders.read");
    allowed(&s.h.check_for(OPAQUE, "orders").await);
    allowed(&s.h.check_for(OPAQUE, "orders").await);
    // Another audience is another exchange, still the same introspection answer.
    allowed(&s.h.check_for(OPAQUE, "api://x").await);
    assert_eq!(s.intro.call_count(), 1, "cached answers make no second call");

    s.intro.revoke(OPAQUE);
    allowed(&s.h.check_for(OPAQUE, "orders").await);
    assert_eq!(s.intro.call_count(), 1, "within the bound the revocation is not seen");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Neither the introspection cache nor the cached exchange outlive the bound.
    assert_invalid_token(&s.h.check_for(OPAQUE, "orders").await, "not active");
    assert_eq!(s.intro.call_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_for_one_token_make_one_call() {
    let s = setup().await;
    s.intro.activate(OPAQUE, "alice", "orders.read");
    s.intro.set_mode(IntrospectionMode::Slow(Duration::from_millis(300)));
    let h = Arc::new(s.h);
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let h = h.clone();
            // Distinct audiences: no exchange is answered from the minted cache.
            tokio::spawn(async move { h.check_for(OPAQUE, &format!("api://svc-{i}")).await })
        })
        .collect();
    for t in tasks {
        allowed(&t.await.unwrap());
    }
    assert_eq!(s.intro.call_count(), 1, "16 concurrent requests share one introspection call");
    // The per-issuer series on /metrics: one call, answered active; the
    // other requests shared it (the later ones from the cache).
    let issuer = format!("issuer=\"{}\"", s.idp.issuer);
    let calls = h.metric("stsgate_introspection_requests_total", &[&issuer, "result=\"active\""]).await;
    assert_eq!(calls, Some(1.0));
    let seconds = h.metric("stsgate_introspection_duration_seconds_count", &[&issuer]).await;
    assert_eq!(seconds, Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_503_while_cached_tokens_keep_working() {
    let s = setup().await;
    s.intro.activate("cached", "alice", "orders.read");
    s.intro.activate("fresh", "bob", "orders.read");
    allowed(&s.h.check_for("cached", "orders").await);

    for mode in [
        IntrospectionMode::Down,
        IntrospectionMode::Slow(Duration::from_secs(2)),
        IntrospectionMode::Garbage,
        IntrospectionMode::Huge,
    ] {
        s.intro.set_mode(mode);
        let d = denial(&s.h.check_for("fresh", "orders").await);
        assert_eq!(
            (d.http_status, d.rpc_code, d.error()),
            (503, RPC_UNAVAILABLE, "temporarily_unavailable"),
            "{mode:?}"
        );
        assert_eq!(d.headers.get("retry-after").map(String::as_str), Some("1"), "{mode:?}");
        let (status, retry, body) = post_token(&s.h, "fresh", "orders", &[]).await;
        assert_eq!((status, body["error"].as_str()), (503, Some("temporarily_unavailable")), "{mode:?}: {body}");
        assert_eq!(retry.as_deref(), Some("1"));
        // The already cached token is answered as before, at both doors.
        allowed(&s.h.check_for("cached", "api://during-outage").await);
        let (status, _, body) = post_token(&s.h, "cached", "orders", &[]).await;
        assert_eq!(status, 200, "{mode:?}: {body}");
    }
    // Failures are not cached: back up, the token is accepted at once.
    s.intro.set_mode(IntrospectionMode::Up);
    allowed(&s.h.check_for("fresh", "orders").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_sends_the_secret_in_the_form() {
    let s = setup_with("client_secret_post", &[], &[]).await;
    s.intro.require_secret(CLIENT_ID, SECRET);
    s.intro.activate(OPAQUE, "alice", "orders.read");
    allowed(&s.h.check_for(OPAQUE, "orders").await);
    let call = &s.intro.calls()[0];
    assert_eq!(call.authorization, None);
    assert_eq!(call.form.get("client_id").map(String::as_str), Some(CLIENT_ID));
    assert_eq!(call.form.get("client_secret").map(String::as_str), Some(SECRET));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_at_the_idp_are_503_not_the_tokens_fault() {
    let s = setup().await;
    s.intro.require_secret(CLIENT_ID, "another secret");
    s.intro.activate(OPAQUE, "alice", "orders.read");
    let d = denial(&s.h.check_for(OPAQUE, "orders").await);
    assert_eq!((d.http_status, d.error()), (503, "temporarily_unavailable"));
    // Nothing about the IdP's answer or stsgate's secret reaches the caller.
    assert!(!d.description().contains("secret") && !d.description().contains("401"), "{}", d.description());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_signs_with_stsgates_published_key() {
    let s = setup_with("private_key_jwt", &[], &[]).await;
    s.intro.activate(OPAQUE, "alice", "orders.read");
    allowed(&s.h.check_for(OPAQUE, "orders").await);
    let call = &s.intro.calls()[0];
    assert_eq!(call.authorization, None);
    assert_eq!(
        call.form.get("client_assertion_type").map(String::as_str),
        Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
    );
    // The IdP verifies the assertion with stsgate's published JWKS.
    let assertion = &call.form["client_assertion"];
    let (_, claims) =
        verify_with_jwks(&s.h.http, &s.h.url("/.well-known/jwks.json"), CLIENT_ID, assertion, &s.intro.url).await;
    assert_eq!(claims["sub"], CLIENT_ID);
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
    assert!(claims["exp"].as_i64().unwrap() <= now() + 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opaque_actor_token_delegates() {
    let s = setup().await;
    let subject = s.idp.token(&s.idp.claims("alice", "orders.read"));
    s.intro.activate("actor-opaque", "svc-billing", "");
    let (status, _, body) =
        post_token(&s.h, &subject, "billing", &[("actor_token", "actor-opaque"), ("actor_token_type", AT)]).await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = s.h.verify_minted(body["access_token"].as_str().unwrap(), "billing").await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["act"]["sub"], "svc-billing");
    // A revoked opaque actor token is the actor token's fault.
    s.intro.revoke("actor-revoked");
    let (status, _, body) =
        post_token(&s.h, &subject, "billing", &[("actor_token", "actor-revoked"), ("actor_token_type", AT)]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");
    assert!(body["error_description"].as_str().unwrap().starts_with("actor token: token is not active"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_introspected_only_where_configured() {
    // Without for_jwts a JWT never reaches the endpoint.
    let s = setup().await;
    let jwt = s.idp.token(&s.idp.claims("alice", "orders.read"));
    allowed(&s.h.check_for(&jwt, "orders").await);
    assert_eq!(s.intro.call_count(), 0);

    let s = setup_with("client_secret_basic", &["for_jwts: true"], &[]).await;
    let jwt = s.idp.token(&s.idp.claims("alice", "orders.read"));
    // The signature is fine, but the IdP revoked the token.
    assert_invalid_token(&s.h.check_for(&jwt, "orders").await, "not active");
    let live = s.idp.token(&s.idp.claims("bob", "orders.read"));
    s.intro.activate(&live, "bob", "orders.read");
    let ok = allowed(&s.h.check_for(&live, "orders").await);
    let (_, claims) = s.h.verify_minted(&ok.bearer(), "orders").await;
    assert_eq!(claims["sub"], "bob");
    assert_eq!(s.intro.call_count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_opaque_token_issuer_opaque_tokens_stay_malformed() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    assert_invalid_token(&h.check_for(OPAQUE, "orders").await, "expected three dot-separated parts");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_outside_rfc6750_characters_are_not_sent_to_the_idp() {
    let s = setup().await;
    assert_invalid_token(&s.h.check_for("a\"b", "orders").await, "RFC 6750");
    assert_eq!(s.intro.call_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn userinfo_validates_opaque_tokens_of_an_idp_without_introspection() {
    let idp = MockIdp::start().await;
    let intro = MockIntrospection::start(&idp.issuer).await;
    let mut b = Harness::builder(&idp).issuer_option("opaque_tokens: true").issuer_option("userinfo:");
    for l in
        [format!("  endpoint: {}", intro.userinfo_url()), "  cache_for: 2s".into(), "  negative_cache_for: 1s".into()]
    {
        b = b.issuer_option(&l);
    }
    let h = b.rules(RULES).start().await;
    intro.userinfo(OPAQUE, json!({"sub": "alice", "email": "alice@example.com", "scope": "orders.read"}));

    let ok = allowed(&h.check_for(OPAQUE, "orders").await);
    let (_, claims) = h.verify_minted(&ok.bearer(), "orders").await;
    assert_eq!((claims["sub"].as_str(), claims["scope"].as_str()), (Some("alice"), Some("orders.read")));
    // No `exp` in a userinfo answer: the minted token lives no longer than the bound.
    assert!(claims["exp"].as_i64().unwrap() <= now() + 2, "{claims}");
    let calls = intro.calls();
    assert_eq!(calls[0].authorization.as_deref(), Some(format!("Bearer {OPAQUE}").as_str()));

    // Unknown to the endpoint (401): refused at both doors.
    assert_invalid_token(&h.check_for("unknown-token", "orders").await, "not active");
    let (status, _, body) = post_token(&h, "unknown-token", "orders", &[]).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_request")), "{body}");

    // Revoked: refused once the bound has passed.
    intro.userinfo_revoke(OPAQUE);
    allowed(&h.check_for(OPAQUE, "api://cached").await);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_invalid_token(&h.check_for(OPAQUE, "orders").await, "not active");

    // Down: 503.
    intro.set_mode(IntrospectionMode::Down);
    let d = denial(&h.check_for("another", "orders").await);
    assert_eq!((d.http_status, d.error()), (503, "temporarily_unavailable"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_issuer_concurrency_limit_protects_the_idp() {
    // One request at a time, 400ms each, and a 500ms timeout that includes
    // the wait for a turn: of three distinct tokens at once, one is answered;
    // the others are 503 (fail closed) instead of piling up on the IdP.
    let s = setup_with("client_secret_basic", &["max_concurrency: 1"], &[]).await;
    s.intro.set_mode(IntrospectionMode::Slow(Duration::from_millis(400)));
    for t in ["one", "two", "three"] {
        s.intro.activate(t, "alice", "orders.read");
    }
    let h = Arc::new(s.h);
    let tasks = ["one", "two", "three"].map(|t| {
        let h = h.clone();
        tokio::spawn(async move { h.check_for(t, "orders").await })
    });
    let (mut ok, mut unavailable) = (0, 0);
    for t in tasks {
        let resp = t.await.unwrap();
        if rpc_code(&resp) == RPC_OK {
            ok += 1;
        } else {
            let d = denial(&resp);
            assert_eq!((d.http_status, d.error()), (503, "temporarily_unavailable"));
            unavailable += 1;
        }
    }
    assert_eq!((ok, unavailable), (1, 2));
    // The second got its turn after 400ms, too late; the third none at all.
    let calls = s.intro.call_count();
    assert!((1..3).contains(&calls), "{calls} requests reached the IdP");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_keeps_the_answers_of_unchanged_introspection_settings() {
    let s = setup().await;
    s.intro.activate(OPAQUE, "alice", "orders.read");
    allowed(&s.h.check_for(OPAQUE, "orders").await);
    s.intro.set_mode(IntrospectionMode::Down);
    // The same file again: a new engine, the same introspection cache.
    s.h.reload_yaml(&s.h.yaml.clone()).await.expect("reload");
    allowed(&s.h.check_for(OPAQUE, "api://after-reload").await);
    // Changed settings start afresh: the IdP is down, so the token is 503 now.
    let changed = s.h.yaml.replace("timeout: 500ms", "timeout: 400ms");
    assert_ne!(changed, s.h.yaml);
    s.h.reload_yaml(&changed).await.expect("reload");
    let d = denial(&s.h.check_for(OPAQUE, "api://after-second-reload").await);
    assert_eq!(d.http_status, 503);
}

/// `stsgate explain` introspects an opaque subject token as an exchange
/// would: the verdicts of an active one, the reason for an inactive one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_introspects_an_opaque_subject_token() {
    let s = setup().await;
    s.intro.activate(OPAQUE, "alice", "orders.read");
    s.intro.revoke("revoked-opaque");
    let cfg = s._dir.write("config.yaml", s.h.yaml.clone());
    let explain = |token: &'static str| {
        let cfg = cfg.clone();
        async move { run_explain(&cfg, &["--subject-token", token, "--audience", "orders"]).await }
    };
    let (code, out) = explain(OPAQUE).await;
    assert_eq!((code, &out["allowed"], &out["rule"]), (0, &json!(true), &json!("orders")), "{out:#}");
    assert_eq!(out["subject"]["sub"], "alice", "{out:#}");
    let (code, out) = explain("revoked-opaque").await;
    assert_eq!((code, &out["stage"]), (2, &json!("subject_token")), "{out:#}");
    assert!(out["reason"].as_str().unwrap().contains("not active"), "{out:#}");
}
