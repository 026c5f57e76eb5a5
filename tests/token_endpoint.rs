//! The RFC 8693 token endpoint of a real stsgate (`POST /token` on the HTTP
//! listener), called with reqwest as a service outside the mesh would.

mod support;

use serde_json::{Value, json};
use support::*;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

/// Any rule delegates to `orders` (scopes `orders.*`).
const ANY_ACTOR_DELEGATES: &str = r#"
- name: delegate-orders
  match: { audiences: [orders] }
  grant: { outcome: delegation, scopes: ["orders.*"] }
"#;

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

/// The usual exchange parameters for `token` towards `audience`, plus `extra`.
fn exchange<'a>(token: &'a str, audience: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v =
        vec![("grant_type", GRANT), ("subject_token", token), ("subject_token_type", AT), ("audience", audience)];
    v.extend_from_slice(extra);
    v
}

async fn post_raw(h: &Harness, path: &str, content_type: &str, body: String) -> reqwest::Response {
    h.http
        .post(h.url(path))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

/// POSTs the form and returns status, the no-store check, and the JSON body.
async fn post(h: &Harness, pairs: &[(&str, &str)]) -> (u16, Value) {
    let resp = post_raw(h, "/token", "application/x-www-form-urlencoded", form(pairs)).await;
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["cache-control"], "no-store", "every answer is no-store ({status})");
    assert_eq!(resp.headers()["pragma"], "no-cache", "{status}");
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    (status, resp.json().await.expect("JSON body"))
}

/// Asserts an RFC 6749 §5.2 error with `code` whose description contains `needle`.
fn assert_error(got: &(u16, Value), status: u16, code: &str, needle: &str) {
    let (s, body) = got;
    assert_eq!((*s, body["error"].as_str().unwrap_or("")), (status, code), "{body}");
    let desc = body["error_description"].as_str().unwrap_or("");
    assert!(desc.contains(needle), "description {desc:?} should mention {needle:?}");
    assert!(body.get("access_token").is_none(), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchanges_a_subject_token_for_an_audience() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let subject = idp.token(&idp.claims("alice", "orders.read profile"));

    let (status, body) = post(&h, &exchange(&subject, "orders", &[])).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], AT);
    assert_eq!(body["token_type"], "Bearer");
    // The `orders` rule grants orders.* only: the answer says what was granted.
    assert_eq!(body["scope"], "orders.read");
    let token = body["access_token"].as_str().expect("access_token");
    let (header, claims) = h.verify_minted(token, "orders").await;
    assert_eq!(header.kid.as_deref(), Some(STS_KID));
    assert_eq!(claims["aud"], "orders");
    assert_eq!(claims["sub"], "alice");
    assert!(claims.get("act").is_none(), "no actor token, no act: {claims}");
    assert_eq!(claims["client_id"], "stsgate-ext-authz", "the default client id is ext_authz.client_id");
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    let expires_in = body["expires_in"].as_i64().expect("expires_in is a number");
    assert!((expires_in - lifetime).abs() <= 1, "expires_in {expires_in} vs exp-iat {lifetime}");
    assert!(lifetime <= 120, "the rule caps the lifetime at 2m: {lifetime}");
    let keys: Vec<&String> = body.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 5, "only the RFC 8693 §2.2.1 members: {keys:?}");

    // A requested JWT type is named back; `resource` works like `audience`.
    let pairs = [
        ("grant_type", GRANT),
        ("subject_token", subject.as_str()),
        ("subject_token_type", JWT),
        ("resource", "api://billing"),
        ("requested_token_type", JWT),
        ("scope", "profile"),
        ("client_id", "ignored-unknown-parameter"),
    ];
    let (status, body) = post(&h, &pairs).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["issued_token_type"], JWT);
    assert_eq!(body["scope"], "profile");
    let (_, claims) = h.verify_minted(body["access_token"].as_str().unwrap(), "api://billing").await;
    assert_eq!(claims["scope"], "profile");

    // Counted like ext_authz decisions, with their own duration series.
    assert_eq!(h.metric("stsgate_request_duration_seconds_count", &["api=\"token\""]).await, Some(2.0));
    assert_eq!(h.metric("stsgate_decisions_total", &["outcome=\"ok\""]).await, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_token_makes_a_delegated_token() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).rules(ANY_ACTOR_DELEGATES).start().await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let actor = idp.token(&idp.claims("svc-web", ""));

    let (status, body) =
        post(&h, &exchange(&subject, "orders", &[("actor_token", &actor), ("actor_token_type", AT)])).await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = h.verify_minted(body["access_token"].as_str().unwrap(), "orders").await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["act"], json!({"sub": "svc-web", "iss": idp.issuer}), "{claims}");

    // Without an actor token the delegation rule does not match.
    assert_error(&post(&h, &exchange(&subject, "orders", &[])).await, 400, "invalid_target", "no rule allows");
    // Half an actor.
    assert_error(
        &post(&h, &exchange(&subject, "orders", &[("actor_token", &actor)])).await,
        400,
        "invalid_request",
        "actor_token_type",
    );
    // A subject token whose may_act names someone else: a policy refusal, 403.
    let mut claims = idp.claims("bob", "orders.read");
    claims["may_act"] = json!({"sub": "svc-other"});
    let bob = idp.token(&claims);
    let got = post(&h, &exchange(&bob, "orders", &[("actor_token", &actor), ("actor_token_type", AT)])).await;
    assert_error(&got, 403, "access_denied", "may_act");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_actor_tokens_are_invalid_request() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).rules(ANY_ACTOR_DELEGATES).start().await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));

    // RFC 8693 §2.2.2: an invalid or unacceptable actor token is
    // invalid_request, the description naming the actor token.
    let forged = forge_none(&idp.claims("svc-web", ""));
    let got = post(&h, &exchange(&subject, "orders", &[("actor_token", &forged), ("actor_token_type", AT)])).await;
    assert_error(&got, 400, "invalid_request", "actor token: unsigned tokens");

    let stranger = MockIdp::start().await;
    let foreign = stranger.token(&stranger.claims("svc-web", ""));
    let got = post(&h, &exchange(&subject, "orders", &[("actor_token", &foreign), ("actor_token_type", AT)])).await;
    assert_error(&got, 400, "invalid_request", "actor token: ");
    assert_eq!(
        h.metric("stsgate_decisions_total", &["outcome=\"ok\""]).await.unwrap_or(0.0),
        0.0,
        "nothing was issued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_an_actor_is_invalid_request() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).rules(ANY_ACTOR_DELEGATES).start().await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let actor = idp.token(&idp.claims("svc-web", ""));

    // RFC 8693 §2.1: actor_token_type is REQUIRED when actor_token is present
    // (and means nothing without it): neither is ignored.
    let got = post(&h, &exchange(&subject, "orders", &[("actor_token", &actor)])).await;
    assert_error(&got, 400, "invalid_request", "actor_token_type is required with actor_token");
    let got = post(&h, &exchange(&subject, "orders", &[("actor_token_type", AT)])).await;
    assert_error(&got, 400, "invalid_request", "actor_token_type is given without actor_token");
    // An unknown actor token type is refused too, not read as some other type.
    let saml = "urn:ietf:params:oauth:token-type:saml2";
    let got = post(&h, &exchange(&subject, "orders", &[("actor_token", &actor), ("actor_token_type", saml)])).await;
    assert_error(&got, 400, "invalid_request", "actor_token_type");
}

/// Impersonation as tests/rules_check.rs configures it: `ops-console` may
/// become `user-*` for `orders`; any other request for `orders` is an exchange.
const CONSOLE_IMPERSONATES: &str = r#"
- name: support-impersonates-customers
  match:
    audiences: [orders]
    actor: { sub: [ops-console] }
  grant:
    outcome: impersonation
    scopes: ["orders.read"]
    impersonate_subjects: ["user-*"]
    audit_claim: impersonated_by
    max_lifetime: 1m
- name: orders
  match: { audiences: [orders] }
  grant: { scopes: ["orders.*"] }
"#;

/// `requested_subject_header` is an ext_authz key, and check-config wants it
/// for any impersonation rule.
async fn impersonation_harness(idp: &MockIdp) -> Harness {
    Harness::builder(idp)
        .ext_authz("requested_subject_header: x-requested-subject")
        .rules(CONSOLE_IMPERSONATES)
        .start()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requested_subject_is_honoured_only_under_an_impersonation_rule_naming_the_actor() {
    let idp = MockIdp::start().await;
    let h = impersonation_harness(&idp).await;
    let operator = idp.token(&idp.claims("operator", "orders.read orders.write"));
    let console = idp.token(&idp.claims("ops-console", ""));
    let web = idp.token(&idp.claims("svc-web", ""));
    let by_console = [("actor_token", console.as_str()), ("actor_token_type", AT)];
    let by_web = [("actor_token", web.as_str()), ("actor_token_type", AT)];
    /// `operator`'s exchange for `orders` by `actor`, asking to become `who`.
    fn asking<'a>(operator: &'a str, actor: &[(&'a str, &'a str)], who: &'a str) -> Vec<(&'a str, &'a str)> {
        let mut pairs = exchange(operator, "orders", actor);
        pairs.push(("requested_subject", who));
        pairs
    }

    // The proven actor named by the rule becomes a listed subject: no act,
    // the rule's audit claim names the real actor.
    let (status, body) = post(&h, &asking(&operator, &by_console, "user-123")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["scope"], "orders.read");
    let (_, claims) = h.verify_minted(body["access_token"].as_str().unwrap(), "orders").await;
    assert_eq!(claims["sub"], "user-123", "{claims}");
    assert!(claims.get("act").is_none(), "impersonation carries no act: {claims}");
    assert_eq!(claims["impersonated_by"], json!({"sub": "ops-console", "iss": idp.issuer}), "{claims}");

    // No actor at all: refused, never silently a token for the original subject.
    let got = post(&h, &asking(&operator, &[], "user-123")).await;
    assert_error(&got, 403, "access_denied", "impersonating another subject needs a rule that names this actor");
    // A subject the rule does not list.
    assert_error(
        &post(&h, &asking(&operator, &by_console, "admin-1")).await,
        403,
        "access_denied",
        "impersonating another subject",
    );
    // A proven actor the rule does not name.
    assert_error(
        &post(&h, &asking(&operator, &by_web, "user-123")).await,
        403,
        "access_denied",
        "impersonating another subject",
    );

    assert_eq!(
        h.metric("stsgate_decisions_total", &["outcome=\"denied\"", "reason=\"impersonation_refused\""]).await,
        Some(3.0)
    );
    // Asking for oneself is no impersonation: the ordinary exchange.
    let (status, body) = post(&h, &asking(&operator, &[], "operator")).await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = h.verify_minted(body["access_token"].as_str().unwrap(), "orders").await;
    assert_eq!(claims["sub"], "operator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_requested_subjects_are_invalid_request() {
    let idp = MockIdp::start().await;
    let h = impersonation_harness(&idp).await;
    let operator = idp.token(&idp.claims("operator", "orders.read"));
    let console = idp.token(&idp.claims("ops-console", ""));
    let actor = [("actor_token", console.as_str()), ("actor_token_type", AT)];

    // The ext_authz header's limits: one identifier, at most 256 bytes, no
    // comma, no control character; the value is never echoed.
    let too_long = format!("user-{}", "x".repeat(252));
    for bad in ["user-123\nstsgate::audit: INJECTED", "user-123\u{7f}", "user-1,user-2", too_long.as_str()] {
        let mut pairs = exchange(&operator, "orders", &actor);
        pairs.push(("requested_subject", bad));
        let got = post(&h, &pairs).await;
        assert_error(&got, 400, "invalid_request", "requested_subject must hold one subject identifier");
        assert!(!got.1["error_description"].as_str().unwrap().contains("INJECTED"), "{}", got.1);
    }
    // 256 bytes is still one identifier (refused by the rule, not the parser).
    let longest = format!("user-{}", "x".repeat(251));
    let mut pairs = exchange(&operator, "orders", &[]);
    pairs.push(("requested_subject", longest.as_str()));
    assert_error(&post(&h, &pairs).await, 403, "access_denied", "impersonating another subject");
    // Single-valued like the others.
    let mut twice = exchange(&operator, "orders", &actor);
    twice.extend([("requested_subject", "user-1"), ("requested_subject", "user-2")]);
    assert_error(&post(&h, &twice).await, 400, "invalid_request", "requested_subject is given more than once");
    assert_eq!(
        h.metric("stsgate_decisions_total", &["outcome=\"bad_request\"", "reason=\"bad_requested_subject\""]).await,
        Some(4.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_invalid_request() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));

    let wrong_grant =
        [("grant_type", "client_credentials"), ("subject_token", subject.as_str()), ("subject_token_type", AT)];
    assert_error(&post(&h, &wrong_grant).await, 400, "unsupported_grant_type", "client_credentials");
    let missing = [("grant_type", GRANT), ("subject_token_type", AT), ("audience", "orders")];
    assert_error(&post(&h, &missing).await, 400, "invalid_request", "subject_token is required");
    let no_type = [("grant_type", GRANT), ("subject_token", subject.as_str()), ("audience", "orders")];
    assert_error(&post(&h, &no_type).await, 400, "invalid_request", "subject_token_type");
    let saml = exchange(&subject, "orders", &[("subject_token_type", "urn:ietf:params:oauth:token-type:saml2")]);
    // Given twice (once by `exchange`): a repeat is refused before the type is looked at.
    assert_error(&post(&h, &saml).await, 400, "invalid_request", "subject_token_type is given more than once");
    let mut saml = exchange(&subject, "orders", &[]);
    saml[2] = ("subject_token_type", "urn:ietf:params:oauth:token-type:saml2");
    assert_error(&post(&h, &saml).await, 400, "invalid_request", "token-type:saml2");
    let twice = exchange(&subject, "orders", &[("scope", "orders.read"), ("scope", "orders.write")]);
    assert_error(&post(&h, &twice).await, 400, "invalid_request", "scope is given more than once");
    let two_targets = exchange(&subject, "orders", &[("audience", "api://x")]);
    assert_error(&post(&h, &two_targets).await, 400, "invalid_target", "one audience or resource per request");
    let aud_and_resource = exchange(&subject, "orders", &[("resource", "api://x")]);
    assert_error(&post(&h, &aud_and_resource).await, 400, "invalid_target", "one audience or resource per request");
    let mut none = exchange(&subject, "orders", &[]);
    none.pop();
    assert_error(&post(&h, &none).await, 400, "invalid_target", "no audience");
    let wrong_out =
        exchange(&subject, "orders", &[("requested_token_type", "urn:ietf:params:oauth:token-type:id_token")]);
    assert_error(&post(&h, &wrong_out).await, 400, "invalid_request", "requested_token_type");

    // Not a form.
    let json_body = json!({"grant_type": GRANT, "subject_token": subject, "subject_token_type": AT}).to_string();
    let resp = post_raw(&h, "/token", "application/json", json_body).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    // Too large.
    let huge = form(&exchange(&subject, "orders", &[("pad", &"x".repeat(70 * 1024))]));
    let resp = post_raw(&h, "/token", "application/x-www-form-urlencoded", huge).await;
    assert_eq!(resp.status(), 413);
    // The rest of the body was never read: the client must not reuse the connection.
    assert_eq!(resp.headers()["connection"], "close");
    assert_eq!(resp.json::<Value>().await.unwrap()["error"], "invalid_request");
    // Not a POST.
    let resp = h.get("/token").await;
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");
    assert_eq!(resp.headers()["connection"], "close");

    assert!(
        h.metric("stsgate_decisions_total", &["outcome=\"bad_request\"", "reason=\"content_type\""]).await == Some(1.0),
        "bad requests are counted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subject_tokens_are_invalid_request_and_refusals_follow_the_rules() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).ext_authz("default_audience: api://fallback").start().await;

    let mut expired = idp.claims("alice", "orders.read");
    let t = now();
    expired["iat"] = json!(t - 1200);
    expired["nbf"] = json!(t - 1200);
    expired["exp"] = json!(t - 600);
    // RFC 8693 §2.2.2: an invalid or unacceptable subject token is
    // invalid_request (not invalid_grant), described as before.
    let got = post(&h, &exchange(&idp.token(&expired), "orders", &[])).await;
    assert_error(&got, 400, "invalid_request", "subject token: token has expired");

    let forged = forge_none(&idp.claims("alice", "orders.read"));
    assert_error(&post(&h, &exchange(&forged, "orders", &[])).await, 400, "invalid_request", "alg none");

    let stranger = MockIdp::start().await;
    let foreign = stranger.token(&stranger.claims("alice", "orders.read"));
    assert_error(&post(&h, &exchange(&foreign, "orders", &[])).await, 400, "invalid_request", "issuer is not trusted");

    // No rule for the audience: Denied::NoRule is invalid_target (400).
    let subject = idp.token(&idp.claims("alice", "orders.read profile"));
    assert_error(&post(&h, &exchange(&subject, "payments", &[])).await, 400, "invalid_target", "no rule allows");

    // `orders` grants orders.* and has no allow_empty_scope: asking only for a
    // scope outside it leaves nothing, which is invalid_scope.
    let got = post(&h, &exchange(&subject, "orders", &[("scope", "profile")])).await;
    assert_error(&got, 400, "invalid_scope", "grants none of the requested scopes");

    // No audience at all: ext_authz.default_audience.
    let mut pairs = exchange(&subject, "unused", &[]);
    pairs.pop();
    let (status, body) = post(&h, &pairs).await;
    assert_eq!(status, 200, "{body}");
    h.verify_minted(body["access_token"].as_str().unwrap(), "api://fallback").await;

    assert_eq!(h.metric("stsgate_decisions_total", &["outcome=\"denied\"", "reason=\"no_scope\""]).await, Some(1.0));
    assert_eq!(
        h.metric("stsgate_decisions_total", &["outcome=\"unauthenticated\"", "reason=\"expired\""]).await,
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_header_values_are_never_reflected() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let key = idp.key();
    let claims = idp.claims("alice", "orders.read");
    for field in ["alg", "kid", "typ"] {
        let mut header = key.header();
        header[field] = json!(format!("{}\nstsgate::audit: INJECTED", header[field].as_str().unwrap_or("x")));
        let token = key.sign(&header, &claims);
        let (status, body) = post(&h, &exchange(&token, "orders", &[])).await;
        assert!(status == 400 || status == 401, "{field}: {status} {body}");
        let desc = body["error_description"].as_str().unwrap_or("");
        assert!(
            !desc.is_empty() && !desc.contains("INJECTED") && !desc.contains('\n'),
            "{field}: reflected in {desc:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_issuer_keys_are_503_with_retry_after() {
    let idp = MockIdp::start_in(Mode::Unavailable).await;
    let h = Harness::builder(&idp).no_wait().start().await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let resp =
        post_raw(&h, "/token", "application/x-www-form-urlencoded", form(&exchange(&subject, "orders", &[]))).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "1");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "temporarily_unavailable", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_advertises_the_endpoint_only_when_enabled() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    for path in ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"] {
        let meta = h.get_json(path).await;
        assert_eq!(meta["token_endpoint"], format!("{STS_ISSUER}/token"), "{path}: {meta}");
        let grants = json!([GRANT, "urn:ietf:params:oauth:grant-type:jwt-bearer"]);
        assert_eq!(meta["grant_types_supported"], grants, "{path}");
    }

    let off = Harness::builder(&idp).edit(|y| format!("{y}token_endpoint: {{ enabled: false }}\n")).start().await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let resp =
        post_raw(&off, "/token", "application/x-www-form-urlencoded", form(&exchange(&subject, "orders", &[]))).await;
    assert_eq!(resp.status(), 404);
    for path in ["/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"] {
        let meta = off.get_json(path).await;
        assert!(meta.get("token_endpoint").is_none(), "{path}: {meta}");
        assert_eq!(meta["grant_types_supported"], json!([]), "{path}");
    }

    // A custom path, under an issuer with a path: served where the metadata points.
    let tenant = Harness::builder(&idp)
        .edit(|y| {
            let y = y.replace(&format!("issuer: {STS_ISSUER}\n"), "issuer: https://sts.test/tenant-a\n");
            format!("{y}token_endpoint: {{ path: /oauth2/token }}\n")
        })
        .start()
        .await;
    let meta = tenant.get_json("/.well-known/oauth-authorization-server/tenant-a").await;
    assert_eq!(meta["token_endpoint"], "https://sts.test/tenant-a/oauth2/token");
    for path in ["/tenant-a/oauth2/token", "/oauth2/token"] {
        let resp =
            post_raw(&tenant, path, "application/x-www-form-urlencoded", form(&exchange(&subject, "orders", &[])))
                .await;
        assert_eq!(resp.status(), 200, "{path}");
    }
    assert_eq!(post_raw(&tenant, "/token", "application/x-www-form-urlencoded", String::new()).await.status(), 404);
}
