//! The token endpoint's grants and answers (issue #12 parts 3–6): the RFC
//! 7523 §2.1 JWT bearer grant (assertions from a trusted issuer, or signed by
//! the client itself under a rule listing `client`), per-client permissions
//! (`match.presenter: client_in_audience`, the minted `client_id` naming the
//! presenting client), and every RFC 6749 §5.2 / RFC 8693 §2.2.2 error code
//! with its status.

mod support;

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{Value, json};
use support::*;

const EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
const SECRET: &str = "grants-test-secret";

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn basic(id: &str, secret: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")))
}

struct Answer {
    status: u16,
    text: String,
    body: Value,
}

async fn post(h: &Harness, authorization: Option<&str>, pairs: &[(&str, &str)]) -> Answer {
    let mut req = h.http.post(h.url("/token")).header("content-type", "application/x-www-form-urlencoded");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let resp = req.body(form(pairs)).send().await.expect("POST /token");
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|_| panic!("JSON body: {text}"));
    Answer { status, text, body }
}

#[track_caller]
fn assert_code(a: &Answer, status: u16, code: &str, description: &str) {
    assert_eq!((a.status, a.body["error"].as_str().unwrap_or("")), (status, code), "{}", a.text);
    let got = a.body["error_description"].as_str().unwrap_or("");
    assert!(got.contains(description), "description {got:?} lacks {description:?}");
    assert!(a.body.get("access_token").is_none());
}

#[track_caller]
fn assert_ok(a: &Answer) -> &str {
    assert_eq!(a.status, 200, "{}", a.text);
    a.body["access_token"].as_str().expect("access_token")
}

/// RFC 7523 assertion claims from `iss` about `sub`, addressed to stsgate,
/// valid for `exp_in` seconds.
fn assertion(iss: &str, sub: &str, exp_in: i64, jti: &str) -> Value {
    let now = now();
    json!({ "iss": iss, "sub": sub, "aud": STS_ISSUER, "iat": now, "exp": now + exp_in, "jti": jti,
            "scope": "orders.read orders.write" })
}

/// Rules for these tests: the default ones, `payments` only for a client in
/// the token's audience, and `asserted` for subjects `signer` asserts itself.
const RULES: &str = r#"
- name: orders
  match: { audiences: [orders] }
  grant: { scopes: ["orders.*"], max_lifetime: 2m }
- name: payments
  match: { audiences: [payments], presenter: client_in_audience }
  grant: { scopes: ["payments.*"] }
- name: asserted
  match: { issuers: [client], clients: [signer], audiences: [ledger] }
  grant: { scopes: ["ledger.*"] }
"#;

struct Setup {
    h: Harness,
    /// The key `signer` (private_key_jwt) signs with; `rogue` has one too.
    signer: Arc<IdpKey>,
    rogue: Arc<IdpKey>,
    _dir: TempDir,
}

/// Clients: `app` and `other` (client_secret_basic; `other` may not use the
/// JWT bearer grant), `signer` and `rogue`
/// (private_key_jwt; only `signer` may assert subjects), requests without a
/// client allowed.
async fn start(idp: &MockIdp) -> Setup {
    let dir = TempDir::new("grants");
    let secret = dir.write("secret", SECRET);
    let signer = IdpKey::generate(KeyKind::P256, "signer-key");
    let rogue = IdpKey::generate(KeyKind::P256, "rogue-key");
    let clients = format!(
        "clients:\n  \
         - {{ client_id: app, auth: client_secret_basic, secret_file: \"{f}\" }}\n  \
         - {{ client_id: other, auth: client_secret_basic, secret_file: \"{f}\", grant_types: [token_exchange] }}\n  \
         - {{ client_id: signer, auth: private_key_jwt, jwks: {s} }}\n  \
         - {{ client_id: rogue, auth: private_key_jwt, jwks: {r} }}\n\
         token_endpoint: {{ allow_unauthenticated: true }}\n",
        f = secret.display(),
        s = jwks_doc(std::slice::from_ref(&signer), &[]),
        r = jwks_doc(std::slice::from_ref(&rogue), &[]),
    );
    let h = Harness::builder(idp).rules(RULES).edit(move |y| format!("{y}{clients}")).start().await;
    Setup { h, signer, rogue, _dir: dir }
}

/// `private_key_jwt` client authentication parameters for `client`.
fn client_assertion(key: &IdpKey, client: &str, jti: &str) -> [(&'static str, String); 2] {
    let claims = json!({ "iss": client, "sub": client, "aud": STS_ISSUER, "exp": now() + 60, "jti": jti });
    [("client_assertion_type", ASSERTION_TYPE.to_owned()), ("client_assertion", key.token(&claims))]
}

fn bearer<'a>(assertion: &'a str, audience: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("grant_type", JWT_BEARER), ("assertion", assertion), ("audience", audience)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_bearer_assertion_from_a_trusted_issuer() {
    let idp = MockIdp::start().await;
    let s = start(&idp).await;
    let h = &s.h;
    let app = basic("app", SECRET);

    let a1 = idp.token(&assertion(&idp.issuer, "alice", 120, "bearer-1"));
    let a = post(h, Some(&app), &[bearer(&a1, "orders"), vec![("scope", "orders.read")]].concat()).await;
    let token = assert_ok(&a).to_owned();
    // RFC 6749 §5.1 answer; RFC 8693's issued_token_type belongs to token exchange only.
    assert_eq!(a.body["token_type"], "Bearer");
    assert_eq!(a.body["scope"], "orders.read");
    assert!(a.body.get("issued_token_type").is_none(), "{}", a.text);
    assert!(a.body.get("refresh_token").is_none(), "{}", a.text);
    let expires_in = a.body["expires_in"].as_i64().unwrap();
    assert!((1..=120).contains(&expires_in), "never past the assertion's exp: {expires_in}");
    let (_, claims) = h.verify_minted(&token, "orders").await;
    assert_eq!((claims["sub"].as_str(), claims["client_id"].as_str()), (Some("alice"), Some("app")));
    assert_eq!(claims["sub_id"], json!({ "format": "iss_sub", "iss": idp.issuer, "sub": "alice" }));
    assert!(claims["exp"].as_i64().unwrap() <= now() + 121);

    // The same assertion again: replayed.
    let a = post(h, Some(&app), &bearer(&a1, "orders")).await;
    assert_code(&a, 400, "invalid_grant", "used before");
    // Replays are refused whoever presents them, and with no client at all.
    assert_code(&post(h, None, &bearer(&a1, "orders")).await, 400, "invalid_grant", "used before");

    // aud may also be the token endpoint URL; no client needed where allowed.
    let mut c = assertion(&idp.issuer, "bob", 60, "bearer-2");
    c["aud"] = json!([format!("{STS_ISSUER}/token"), "someone-else"]);
    let a = post(h, None, &bearer(&idp.token(&c), "orders")).await;
    let (_, claims) = h.verify_minted(assert_ok(&a), "orders").await;
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["scope"], "orders.read orders.write");

    // The rules decide as for a token exchange: a target no rule allows, a
    // scope the assertion does not hold, a rule for clients in the audience.
    let a = post(h, Some(&app), &bearer(&idp.token(&assertion(&idp.issuer, "c", 60, "b3")), "nowhere")).await;
    assert_code(&a, 400, "invalid_target", "no rule allows");
    let a3 = idp.token(&assertion(&idp.issuer, "c", 60, "b4"));
    let a = post(h, Some(&app), &[bearer(&a3, "orders"), vec![("scope", "orders.delete")]].concat()).await;
    assert_code(&a, 400, "invalid_scope", "none of the requested scopes");
    let a = post(h, Some(&app), &bearer(&idp.token(&assertion(&idp.issuer, "c", 60, "b5")), "payments")).await;
    assert_code(&a, 403, "access_denied", "client \"app\" is not in the subject token's audience");

    let meta = h.get_json("/.well-known/oauth-authorization-server").await;
    assert_eq!(meta["grant_types_supported"], json!([EXCHANGE, JWT_BEARER]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_assertions_are_invalid_grant() {
    let idp = MockIdp::start().await;
    let s = start(&idp).await;
    let h = &s.h;
    let app = basic("app", SECRET);
    let iss = idp.issuer.clone();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = assertion(&iss, "alice", 60, &format!("bad-{}", rand_suffix()));
        f(&mut c);
        c
    };
    let untrusted = IdpKey::generate(KeyKind::Rsa, idp.key().kid.as_str());
    let cases: Vec<(&str, String, &str)> = vec![
        ("aud not stsgate", idp.token(&with(&|c| c["aud"] = json!("stsgate"))), "aud must name stsgate"),
        ("no aud", idp.token(&with(&|c| drop(c.as_object_mut().unwrap().remove("aud")))), "aud must name stsgate"),
        ("exp far ahead", idp.token(&with(&|c| c["exp"] = json!(now() + 600))), "more than 5 minutes ahead"),
        ("expired", idp.token(&with(&|c| c["exp"] = json!(now() - 120))), "expired"),
        ("no exp", idp.token(&with(&|c| drop(c.as_object_mut().unwrap().remove("exp")))), "exp"),
        ("no jti", idp.token(&with(&|c| drop(c.as_object_mut().unwrap().remove("jti")))), "jti is required"),
        ("not yet valid", idp.token(&with(&|c| c["nbf"] = json!(now() + 200))), "nbf"),
        ("issued in future", idp.token(&with(&|c| c["iat"] = json!(now() + 200))), "iat"),
        ("wrong key", untrusted.token(&with(&|_| {})), "signature"),
        ("untrusted issuer", idp.token(&with(&|c| c["iss"] = json!("https://evil.test"))), "not trusted"),
        ("alg none", forge_none(&with(&|_| {})), "alg none"),
        ("garbage", "not.a.jwt".to_owned(), "malformed"),
    ];
    for (what, assertion, description) in &cases {
        let a = post(h, Some(&app), &bearer(assertion, "orders")).await;
        assert_code(&a, 400, "invalid_grant", description);
        assert!(a.body["error_description"].as_str().unwrap().starts_with("assertion: "), "{what}: {}", a.text);
    }

    // Parameters that would change the meaning of the grant are refused.
    let good = idp.token(&with(&|_| {}));
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    for (name, value) in [
        ("requested_subject", "bob"),
        ("actor_token", subject.as_str()),
        ("subject_token", subject.as_str()),
        ("subject_token_type", AT),
        ("requested_token_type", AT),
    ] {
        let a = post(h, Some(&app), &[bearer(&good, "orders"), vec![(name, value)]].concat()).await;
        assert_code(&a, 400, "invalid_request", &format!("{name} is not a parameter of the JWT bearer grant"));
    }
    let a = post(h, Some(&app), &[("grant_type", JWT_BEARER), ("audience", "orders")]).await;
    assert_code(&a, 400, "invalid_request", "assertion is required");
    // None of these refusals used the assertion up.
    assert_ok(&post(h, Some(&app), &bearer(&good, "orders")).await);
    // An assertion with a token exchange is refused too.
    let te =
        [("grant_type", EXCHANGE), ("subject_token", &*subject), ("subject_token_type", AT), ("assertion", &*good)];
    assert_code(&post(h, Some(&app), &te).await, 400, "invalid_request", "assertion is a parameter of the JWT bearer");
    let refused = h.metric("stsgate_decisions_total", &["reason=\"assertion_replayed\""]).await;
    assert_eq!(refused, None, "no replay among these");
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_asserts_subjects_only_under_a_rule_listing_client() {
    let idp = MockIdp::start().await;
    let s = start(&idp).await;
    let h = &s.h;

    // `signer` authenticates (private_key_jwt) and asserts user-7 with the same key.
    let a1 = s.signer.token(&assertion("signer", "user-7", 60, "grant-1"));
    let auth = client_assertion(&s.signer, "signer", "auth-1");
    let pairs: Vec<(&str, &str)> = bearer(&a1, "ledger")
        .into_iter()
        .chain(auth.iter().map(|(k, v)| (*k, v.as_str())))
        .chain([("scope", "ledger.read")])
        .collect();
    let a = post(h, None, &pairs).await;
    // The assertion's scopes are orders.*: none is a ledger scope.
    assert_code(&a, 400, "invalid_scope", "none of the requested scopes");
    let mut c = assertion("signer", "user-7", 60, "grant-2");
    c["scope"] = json!("ledger.read ledger.write");
    let a2 = s.signer.token(&c);
    let auth = client_assertion(&s.signer, "signer", "auth-2");
    let pairs: Vec<(&str, &str)> = bearer(&a2, "ledger")
        .into_iter()
        .chain(auth.iter().map(|(k, v)| (*k, v.as_str())))
        .chain([("scope", "ledger.read")])
        .collect();
    let a = post(h, None, &pairs).await;
    let (_, claims) = h.verify_minted(assert_ok(&a), "ledger").await;
    assert_eq!((claims["sub"].as_str(), claims["client_id"].as_str()), (Some("user-7"), Some("signer")));
    // The subject is named in the client's namespace.
    assert_eq!(claims["sub_id"], json!({ "format": "iss_sub", "iss": "signer", "sub": "user-7" }));
    assert_eq!(claims["scope"], "ledger.read");
    // Replayed, even with fresh client authentication.
    let auth = client_assertion(&s.signer, "signer", "auth-3");
    let pairs: Vec<(&str, &str)> =
        bearer(&a2, "ledger").into_iter().chain(auth.iter().map(|(k, v)| (*k, v.as_str()))).collect();
    assert_code(&post(h, None, &pairs).await, 400, "invalid_grant", "used before");

    // A client-asserted subject matches only rules listing `client`.
    let mut c = assertion("signer", "user-7", 60, "grant-3");
    c["scope"] = json!("orders.read");
    let a3 = s.signer.token(&c);
    let auth = client_assertion(&s.signer, "signer", "auth-4");
    let pairs: Vec<(&str, &str)> =
        bearer(&a3, "orders").into_iter().chain(auth.iter().map(|(k, v)| (*k, v.as_str()))).collect();
    assert_code(&post(h, None, &pairs).await, 400, "invalid_target", "no rule allows");

    // `rogue` has keys too but no rule lets it assert: its iss is no trusted issuer.
    let mut c = assertion("rogue", "user-7", 60, "grant-4");
    c["scope"] = json!("ledger.read");
    let a4 = s.rogue.token(&c);
    let auth = client_assertion(&s.rogue, "rogue", "auth-5");
    let pairs: Vec<(&str, &str)> =
        bearer(&a4, "ledger").into_iter().chain(auth.iter().map(|(k, v)| (*k, v.as_str()))).collect();
    assert_code(&post(h, None, &pairs).await, 400, "invalid_grant", "issuer is not trusted");
    // An assertion with `signer`'s iss presented by another client (or none) is not `signer`'s word.
    let mut c = assertion("signer", "user-7", 60, "grant-5");
    c["scope"] = json!("ledger.read");
    let a5 = s.signer.token(&c);
    let a = post(h, Some(&basic("app", SECRET)), &bearer(&a5, "ledger")).await;
    assert_code(&a, 400, "invalid_grant", "issuer is not trusted");
    assert_code(&post(h, None, &bearer(&a5, "ledger")).await, 400, "invalid_grant", "issuer is not trusted");
    // Signed by another key than `signer`'s: no key of the client fits.
    let mut c = assertion("signer", "user-7", 60, "grant-6");
    c["scope"] = json!("ledger.read");
    let forged = s.rogue.sign(&json!({"alg": "ES256", "kid": "signer-key"}), &c);
    let auth = client_assertion(&s.signer, "signer", "auth-6");
    let pairs: Vec<(&str, &str)> =
        bearer(&forged, "ledger").into_iter().chain(auth.iter().map(|(k, v)| (*k, v.as_str()))).collect();
    assert_code(&post(h, None, &pairs).await, 400, "invalid_grant", "signature");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_in_audience_and_the_presenting_client_named() {
    let idp = MockIdp::start().await;
    let s = start(&idp).await;
    let h = &s.h;
    let exchange = |token: &str, audience: &str| -> Vec<(String, String)> {
        [("grant_type", EXCHANGE), ("subject_token", token), ("subject_token_type", AT), ("audience", audience)]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    let send = |auth: Option<String>, pairs: Vec<(String, String)>| async move {
        let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        post(h, auth.as_deref(), &refs).await
    };

    // Keycloak: the requester must be in the subject token's audience (aud or azp).
    let mut c = idp.claims("alice", "payments.read");
    c["aud"] = json!(["app", "orders"]);
    let for_app = idp.token(&c);
    let a = send(Some(basic("app", SECRET)), exchange(&for_app, "payments")).await;
    let (_, claims) = h.verify_minted(assert_ok(&a), "payments").await;
    assert_eq!(claims["client_id"], "app");
    let a = send(Some(basic("other", SECRET)), exchange(&for_app, "payments")).await;
    assert_code(&a, 403, "access_denied", "client \"other\" is not in the subject token's audience (aud or azp)");
    let a = send(None, exchange(&for_app, "payments")).await;
    assert_code(&a, 403, "access_denied", "the request has no authenticated client");
    let mut c = idp.claims("alice", "payments.read");
    c["azp"] = json!("other");
    let a = send(Some(basic("other", SECRET)), exchange(&idp.token(&c), "payments")).await;
    assert_ok(&a);
    // The ext_authz Check has no client: such a rule refuses there.
    let d = denial(&h.check_for(&for_app, "payments").await);
    assert_eq!(d.error(), "access_denied", "{}", d.description());

    // Cloudentity: client B (other) presents client A's (app's) token; the new
    // token names client B, not the client the subject token was issued to.
    let mut c = idp.claims("alice", "orders.read");
    c["client_id"] = json!("app");
    let from_a = idp.token(&c);
    let a = send(Some(basic("other", SECRET)), exchange(&from_a, "orders")).await;
    let (_, claims) = h.verify_minted(assert_ok(&a), "orders").await;
    assert_eq!(claims["client_id"], "other");
    // Without client authentication the subject token's client stays.
    let a = send(None, exchange(&from_a, "orders")).await;
    let (_, claims) = h.verify_minted(assert_ok(&a), "orders").await;
    assert_eq!(claims["client_id"], "app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_code_with_its_status() {
    let idp = MockIdp::start().await;
    let s = start(&idp).await;
    let h = &s.h;
    let app = basic("app", SECRET);
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let te = |extra: &[(&'static str, &'static str)]| -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> =
            [("grant_type", EXCHANGE), ("subject_token", subject.as_str()), ("subject_token_type", AT)]
                .iter()
                .chain(extra)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        if !extra.iter().any(|(k, _)| *k == "audience" || *k == "resource") {
            v.push(("audience".into(), "orders".into()));
        }
        v
    };
    let send = |auth: Option<&str>, pairs: Vec<(String, String)>| {
        let auth = auth.map(str::to_owned);
        async move {
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            post(h, auth.as_deref(), &refs).await
        }
    };
    let owned = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();

    // invalid_request: a missing, repeated or meaning-changing parameter; a bad subject token.
    assert_code(
        &send(Some(&app), owned(&[("subject_token", subject.as_str())])).await,
        400,
        "invalid_request",
        "grant_type",
    );
    let twice = [te(&[]), owned(&[("scope", "a"), ("scope", "b")])].concat();
    assert_code(&send(Some(&app), twice).await, 400, "invalid_request", "more than once");
    let rd = te(&[("authorization_details", "[{\"type\":\"x\"}]")]);
    assert_code(&send(Some(&app), rd).await, 400, "invalid_request", "authorization_details is not supported");
    let refresh = te(&[("requested_token_type", "urn:ietf:params:oauth:token-type:refresh_token")]);
    assert_code(&send(Some(&app), refresh).await, 400, "invalid_request", "cannot be issued");
    let mut bad = te(&[]);
    bad[1].1 = forge_none(&idp.claims("alice", "orders.read"));
    assert_code(&send(Some(&app), bad).await, 400, "invalid_request", "subject token:");
    // invalid_client, 401 (the Basic challenge: tests/token_endpoint_clients.rs).
    let a = send(Some(&basic("app", "wrong")), te(&[])).await;
    assert_code(&a, 401, "invalid_client", "client authentication failed");
    // unsupported_grant_type: refresh tokens and every other grant.
    for grant in ["refresh_token", "client_credentials", "authorization_code", "password"] {
        let a = send(Some(&app), owned(&[("grant_type", grant), ("refresh_token", "x")])).await;
        assert_code(&a, 400, "unsupported_grant_type", "is not supported");
    }
    // invalid_grant: a JWT bearer assertion that does not hold.
    let a =
        send(Some(&app), owned(&[("grant_type", JWT_BEARER), ("assertion", subject.as_str()), ("audience", "orders")]))
            .await;
    assert_code(&a, 400, "invalid_grant", "assertion:");
    // unauthorized_client: a grant the client's grant_types do not list,
    // refused before its assertion is even read.
    let other = basic("other", SECRET);
    let a =
        send(Some(&other), owned(&[("grant_type", JWT_BEARER), ("assertion", "x.y.z"), ("audience", "orders")])).await;
    assert_code(&a, 400, "unauthorized_client", &format!("client \"other\" may not use grant_type {JWT_BEARER}"));
    assert_ok(&send(Some(&other), te(&[])).await);
    // invalid_scope, invalid_target.
    assert_code(&send(Some(&app), te(&[("scope", "admin")])).await, 400, "invalid_scope", "none of the requested");
    assert_code(&send(Some(&app), te(&[("audience", "nowhere")])).await, 400, "invalid_target", "no rule allows");
    let two = te(&[("audience", "orders"), ("resource", "api://x")]);
    assert_code(&send(Some(&app), two).await, 400, "invalid_target", "one audience or resource");
    // access_denied, 403: a policy.
    assert_code(&send(Some(&app), te(&[("audience", "payments")])).await, 403, "access_denied", "not in the subject");
    // Unknown parameters are ignored (RFC 6749 §3.2), repeated or not.
    let ok = te(&[("x-trace", "1"), ("x-trace", "2"), ("nonce", "n")]);
    assert_ok(&send(Some(&app), ok).await);
    // The issued token type is the one asked for, never a refresh token.
    let a = send(Some(&app), te(&[("requested_token_type", "urn:ietf:params:oauth:token-type:jwt")])).await;
    assert_ok(&a);
    assert_eq!(a.body["issued_token_type"], "urn:ietf:params:oauth:token-type:jwt");
    assert!(a.body.get("refresh_token").is_none());
}
