//! Client authentication at the token endpoint (`clients`, issue #12):
//! client_secret_basic, client_secret_post, public clients, requests
//! without client authentication, the failure rate limit and the metadata.

mod support;

use argon2::password_hash::{PasswordHasher, SaltString};
use base64::Engine as _;
use serde_json::Value;
use support::*;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The plain secret of `plain-basic` and `plain-post` (read from a file).
const PLAIN: &str = "s3cret&plain=value+x";
/// The secret whose argon2id hash `hashed` stores.
const HASHED: &str = "correct horse battery staple";

fn form(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        s.append_pair(k, v);
    }
    s.finish()
}

fn exchange<'a>(token: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v =
        vec![("grant_type", GRANT), ("subject_token", token), ("subject_token_type", AT), ("audience", "orders")];
    v.extend_from_slice(extra);
    v
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", enc(id), enc(secret))))
}

struct Answer {
    status: u16,
    www_authenticate: Option<String>,
    retry_after: Option<String>,
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
    let header = |n: &str| resp.headers().get(n).map(|v| v.to_str().unwrap().to_owned());
    let (www_authenticate, retry_after) = (header("www-authenticate"), header("retry-after"));
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).expect("JSON body");
    Answer { status, www_authenticate, retry_after, text, body }
}

fn assert_code(a: &Answer, status: u16, code: &str) {
    assert_eq!((a.status, a.body["error"].as_str().unwrap_or("")), (status, code), "{}", a.text);
    assert!(a.body.get("access_token").is_none());
}

fn assert_ok(a: &Answer) {
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.body["access_token"].is_string());
}

/// Secrets never appear in an answer.
fn assert_no_secret(a: &Answer) {
    for s in [PLAIN, HASHED, "wrong-secret", "s3cret"] {
        assert!(!a.text.contains(s), "the answer echoes a secret: {}", a.text);
    }
}

fn argon2id(secret: &str) -> String {
    let salt = SaltString::encode_b64(b"stsgate-test-salt").unwrap();
    argon2::Argon2::default().hash_password(secret.as_bytes(), &salt).unwrap().to_string()
}

/// A harness with the test clients, and `extra` YAML appended.
async fn start(idp: &MockIdp, extra: &str) -> (Harness, tempdir::Dir) {
    start_with(idp, DEFAULT_RULES, extra).await
}

/// `start` with `rules` instead of the default ones.
async fn start_with(idp: &MockIdp, rules: &str, extra: &str) -> (Harness, tempdir::Dir) {
    let dir = tempdir::Dir::new();
    let secret_file = dir.write("plain.secret", &format!("{PLAIN}\n"));
    let clients = format!(
        "clients:\n  \
         - {{ client_id: plain-basic, auth: client_secret_basic, secret_file: \"{f}\" }}\n  \
         - {{ client_id: plain-post, auth: client_secret_post, secret_file: \"{f}\" }}\n  \
         - {{ client_id: hashed, auth: client_secret_basic, secret_hash: \"{hash}\" }}\n  \
         - {{ client_id: spa, auth: none }}\n{extra}",
        f = secret_file.display(),
        hash = argon2id(HASHED),
    );
    let h = Harness::builder(idp).rules(rules).edit(move |y| format!("{y}{clients}")).start().await;
    (h, dir)
}

mod tempdir {
    use std::path::PathBuf;

    /// A directory removed on drop.
    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> Dir {
            let n = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
            let p = std::env::temp_dir().join(format!("stsgate-clients-{}-{n}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }

        pub fn write(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).unwrap();
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_basic_right_wrong_and_unknown() {
    let idp = MockIdp::start().await;
    let (h, _dir) = start(&idp, "").await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));

    assert_ok(&post(&h, Some(&basic("plain-basic", PLAIN)), &exchange(&subject, &[])).await);
    // client_id in the form too, the same one: fine.
    assert_ok(
        &post(&h, Some(&basic("plain-basic", PLAIN)), &exchange(&subject, &[("client_id", "plain-basic")])).await,
    );

    for auth in [basic("plain-basic", "wrong-secret"), basic("nobody", PLAIN), basic("plain-basic", "")] {
        let a = post(&h, Some(&auth), &exchange(&subject, &[])).await;
        assert_code(&a, 401, "invalid_client");
        assert_eq!(a.www_authenticate.as_deref(), Some("Basic realm=\"stsgate\""), "{auth}");
        assert_eq!(a.body["error_description"], "client authentication failed");
        assert_no_secret(&a);
    }
    let a = post(&h, Some("Basic !!!"), &exchange(&subject, &[])).await;
    assert_code(&a, 401, "invalid_client");
    assert!(a.www_authenticate.is_some());
    // A Basic client_id that differs from the form's.
    let a = post(&h, Some(&basic("plain-basic", PLAIN)), &exchange(&subject, &[("client_id", "spa")])).await;
    assert_code(&a, 400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argon2id_hashes_verify() {
    let idp = MockIdp::start().await;
    let (h, _dir) = start(&idp, "").await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    // Twice: the second is answered from the short verification cache.
    for _ in 0..2 {
        assert_ok(&post(&h, Some(&basic("hashed", HASHED)), &exchange(&subject, &[])).await);
    }
    let a = post(&h, Some(&basic("hashed", "wrong-secret")), &exchange(&subject, &[])).await;
    assert_code(&a, 401, "invalid_client");
    assert_no_secret(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_post_right_and_wrong() {
    let idp = MockIdp::start().await;
    let (h, _dir) = start(&idp, "").await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));

    let right = [("client_id", "plain-post"), ("client_secret", PLAIN)];
    assert_ok(&post(&h, None, &exchange(&subject, &right)).await);
    let a =
        post(&h, None, &exchange(&subject, &[("client_id", "plain-post"), ("client_secret", "wrong-secret")])).await;
    assert_code(&a, 401, "invalid_client");
    // Not tried with Basic: no Basic challenge.
    assert_eq!(a.www_authenticate, None);
    assert_no_secret(&a);
    let a = post(&h, None, &exchange(&subject, &[("client_secret", PLAIN)])).await;
    assert_code(&a, 400, "invalid_request");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_method_the_client_is_not_configured_for_is_invalid_client() {
    let idp = MockIdp::start().await;
    let (h, _dir) = start(&idp, "").await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    // plain-basic's right secret, but posted in the form.
    let a = post(&h, None, &exchange(&subject, &[("client_id", "plain-basic"), ("client_secret", PLAIN)])).await;
    assert_code(&a, 401, "invalid_client");
    // plain-post's right secret, but in the Basic header.
    let a = post(&h, Some(&basic("plain-post", PLAIN)), &exchange(&subject, &[])).await;
    assert_code(&a, 401, "invalid_client");
    // A confidential client presenting only its id, as if public.
    let a = post(&h, None, &exchange(&subject, &[("client_id", "plain-post")])).await;
    assert_code(&a, 401, "invalid_client");
    // private_key_jwt is not configured for anyone.
    let jwt = [
        ("client_id", "plain-post"),
        ("client_assertion_type", "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"),
        ("client_assertion", "a.b.c"),
    ];
    assert_code(&post(&h, None, &exchange(&subject, &jwt)).await, 401, "invalid_client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_methods_at_once_are_invalid_request() {
    let idp = MockIdp::start().await;
    let (h, _dir) = start(&idp, "").await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let a = post(&h, Some(&basic("plain-basic", PLAIN)), &exchange(&subject, &[("client_secret", PLAIN)])).await;
    assert_code(&a, 400, "invalid_request");
    assert!(a.body["error_description"].as_str().unwrap().contains("one client authentication method"), "{}", a.text);
    assert_no_secret(&a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_clients_and_unauthenticated_requests() {
    let idp = MockIdp::start().await;
    let (h, _dir) = start(&idp, "").await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    // A public client: its id only.
    assert_ok(&post(&h, None, &exchange(&subject, &[("client_id", "spa")])).await);
    // Unknown, and no client at all: refused once clients are configured.
    assert_code(&post(&h, None, &exchange(&subject, &[("client_id", "nobody")])).await, 401, "invalid_client");
    let a = post(&h, None, &exchange(&subject, &[])).await;
    assert_code(&a, 401, "invalid_client");
    assert_eq!(a.body["error_description"], "client authentication is required");
    assert_eq!(a.www_authenticate, None);
    h.shutdown().await;

    // ... unless token_endpoint.allow_unauthenticated says so.
    let (h, _dir) = start(&idp, "token_endpoint: { allow_unauthenticated: true }\n").await;
    assert_ok(&post(&h, None, &exchange(&subject, &[])).await);
    // A wrong secret is still refused.
    let a = post(&h, Some(&basic("plain-basic", "wrong-secret")), &exchange(&subject, &[])).await;
    assert_code(&a, 401, "invalid_client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_clients_the_endpoint_stays_open() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    assert_ok(&post(&h, None, &exchange(&subject, &[])).await);
    assert_ok(&post(&h, None, &exchange(&subject, &[("client_id", "anyone")])).await);
    // A secret nobody can check is refused, not ignored.
    let a = post(&h, Some(&basic("anyone", "wrong-secret")), &exchange(&subject, &[])).await;
    assert_code(&a, 401, "invalid_client");
    let meta = h.get_json("/.well-known/oauth-authorization-server").await;
    assert_eq!(meta["token_endpoint_auth_methods_supported"], serde_json::json!(["none"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_are_rate_limited() {
    let idp = MockIdp::start().await;
    let (h, _dir) = start(&idp, "").await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let wrong = basic("plain-basic", "wrong-secret");
    // token_endpoint.client_failures_per_minute (default 10) failures are answered 401 ...
    for i in 0..10 {
        let a = post(&h, Some(&wrong), &exchange(&subject, &[])).await;
        assert_eq!(a.status, 401, "failure {i}: {}", a.text);
    }
    // ... the next is 429, and then even the right secret waits.
    let a = post(&h, Some(&wrong), &exchange(&subject, &[])).await;
    assert_code(&a, 429, "invalid_client");
    let wait: u64 = a.retry_after.as_deref().expect("Retry-After").parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let a = post(&h, Some(&basic("plain-basic", PLAIN)), &exchange(&subject, &[])).await;
    assert_code(&a, 429, "invalid_client");
    // Another client is not affected.
    assert_ok(&post(&h, None, &exchange(&subject, &[("client_id", "plain-post"), ("client_secret", PLAIN)])).await);

    let failures = h.metric("stsgate_client_auth_failures_total", &["reason=\"bad_client_secret\""]).await;
    assert_eq!(failures, Some(10.0));
    let limited = h.metric("stsgate_client_auth_failures_total", &["reason=\"client_rate_limited\""]).await;
    assert_eq!(limited, Some(2.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_lists_exactly_the_configured_methods() {
    let idp = MockIdp::start().await;
    let (h, _dir) = start(&idp, "").await;
    let meta = h.get_json("/.well-known/oauth-authorization-server").await;
    let expected = serde_json::json!(["client_secret_basic", "client_secret_post", "none"]);
    assert_eq!(meta["token_endpoint_auth_methods_supported"], expected);
    h.shutdown().await;

    let dir = tempdir::Dir::new();
    let f = dir.write("s", "x");
    let only_post =
        format!("clients:\n  - {{ client_id: c, auth: client_secret_post, secret_file: \"{}\" }}\n", f.display());
    let h = Harness::builder(&idp).edit(move |y| format!("{y}{only_post}")).start().await;
    let meta = h.get_json("/.well-known/oauth-authorization-server").await;
    assert_eq!(meta["token_endpoint_auth_methods_supported"], serde_json::json!(["client_secret_post"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn match_clients_allows_listed_clients_only() {
    let idp = MockIdp::start().await;
    let rules = format!(
        "{DEFAULT_RULES}- name: payments-for-plain-clients\n  match: {{ audiences: [payments], clients: [\"plain-*\"] }}\n  \
         grant: {{ scopes: [\"payments.*\"] }}\n"
    );
    let (h, _dir) = start_with(&idp, &rules, "token_endpoint: { allow_unauthenticated: true }\n").await;
    let subject = idp.token(&idp.claims("alice", "payments.read"));
    let to_payments = |extra: &'static [(&'static str, &'static str)]| {
        let mut v = exchange(&subject, extra);
        v.retain(|(k, _)| *k != "audience");
        v.push(("audience", "payments"));
        v
    };

    let a = post(&h, Some(&basic("plain-basic", PLAIN)), &to_payments(&[])).await;
    assert_ok(&a);
    // The minted client_id is the authenticated client.
    let (_, claims) = h.verify_minted(a.body["access_token"].as_str().unwrap(), "payments").await;
    assert_eq!(claims["client_id"], "plain-basic");
    assert_eq!(claims["sub"], "alice");

    // A client the rule does not list: 403 access_denied naming it.
    let a = post(&h, None, &to_payments(&[("client_id", "spa")])).await;
    assert_code(&a, 403, "access_denied");
    assert_eq!(a.body["error_description"], "client \"spa\" may not make this exchange");
    // No client at all (allowed here): still not this rule's.
    let a = post(&h, None, &to_payments(&[])).await;
    assert_code(&a, 403, "access_denied");
    assert_eq!(a.body["error_description"], "this exchange needs an authenticated client");
    // The ext_authz Check has no client: a rule with clients never matches there.
    let resp = h.check_for(&subject, "payments").await;
    let d = denial(&resp);
    assert_eq!((d.error(), d.description()), ("access_denied", "this exchange needs an authenticated client"));
    // An audience no rule names at all stays invalid_target.
    let mut other = to_payments(&[]);
    other.retain(|(k, _)| *k != "audience");
    other.push(("audience", "nowhere"));
    assert_code(&post(&h, Some(&basic("plain-basic", PLAIN)), &other).await, 400, "invalid_target");
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// A harness whose client `signer` authenticates with private_key_jwt (the
/// public half of `key`, inline).
async fn start_jwt(idp: &MockIdp, key: &std::sync::Arc<IdpKey>) -> (Harness, tempdir::Dir) {
    let jwks = jwks_doc(std::slice::from_ref(key), &[]);
    start(idp, &format!("  - {{ client_id: signer, auth: private_key_jwt, jwks: {jwks} }}\n")).await
}

fn assertion_claims(aud: &str, exp_in: i64, jti: Option<&str>) -> Value {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    let mut c = serde_json::json!({ "iss": "signer", "sub": "signer", "aud": aud, "exp": now + exp_in, "iat": now });
    if let Some(j) = jti {
        c["jti"] = serde_json::json!(j);
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_right_and_wrong() {
    let idp = MockIdp::start().await;
    let key = IdpKey::generate(KeyKind::P256, "client-key");
    let (h, _dir) = start_jwt(&idp, &key).await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let with = |assertion: &str| -> Vec<(String, String)> {
        exchange(&subject, &[("client_assertion_type", JWT_BEARER)])
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .chain([("client_assertion".to_owned(), assertion.to_owned())])
            .collect()
    };
    let send = |pairs: Vec<(String, String)>| {
        let h = &h;
        async move {
            let refs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            post(h, None, &refs).await
        }
    };
    let token_endpoint = format!("{STS_ISSUER}/token");

    // Right: aud = the issuer, or the token endpoint URL.
    let first = key.token(&assertion_claims(STS_ISSUER, 60, Some("jti-1")));
    let a = send(with(&first)).await;
    assert_ok(&a);
    let (_, claims) = h.verify_minted(a.body["access_token"].as_str().unwrap(), "orders").await;
    assert_eq!(claims["client_id"], "signer");
    assert_ok(&send(with(&key.token(&assertion_claims(&token_endpoint, 60, Some("jti-2"))))).await);
    // Replayed.
    let a = send(with(&first)).await;
    assert_code(&a, 401, "invalid_client");

    // Wrong key (same kid), wrong aud, exp too far ahead, expired, no jti.
    let other = IdpKey::generate(KeyKind::P256, "client-key");
    for (what, assertion) in [
        ("wrong key", other.token(&assertion_claims(STS_ISSUER, 60, Some("w1")))),
        ("wrong aud", key.token(&assertion_claims("https://elsewhere.test", 60, Some("w2")))),
        ("exp too far", key.token(&assertion_claims(STS_ISSUER, 301 + 5, Some("w3")))),
        ("expired", key.token(&assertion_claims(STS_ISSUER, -10, Some("w4")))),
        ("no jti", key.token(&assertion_claims(STS_ISSUER, 60, None))),
    ] {
        let a = send(with(&assertion)).await;
        assert_code(&a, 401, "invalid_client");
        assert_eq!(a.www_authenticate, None, "{what}");
    }
    // sub other than the client.
    let mut c = assertion_claims(STS_ISSUER, 60, Some("w5"));
    c["sub"] = serde_json::json!("someone-else");
    assert_code(&send(with(&key.token(&c))).await, 401, "invalid_client");
    // An assertion for a client configured for another method.
    let mut c = assertion_claims(STS_ISSUER, 60, Some("w6"));
    c["iss"] = serde_json::json!("plain-post");
    c["sub"] = serde_json::json!("plain-post");
    assert_code(&send(with(&key.token(&c))).await, 401, "invalid_client");
    // The right assertion is still accepted (not rate limited by 8 failures).
    assert_ok(&send(with(&key.token(&assertion_claims(STS_ISSUER, 60, Some("jti-3"))))).await);
    // An assertion beside a secret: two methods.
    let mut two = with(&key.token(&assertion_claims(STS_ISSUER, 60, Some("jti-4"))));
    two.push(("client_secret".into(), PLAIN.into()));
    assert_code(&send(two).await, 400, "invalid_request");
    let failures = h.metric("stsgate_client_auth_failures_total", &["reason=\"bad_client_assertion\""]).await;
    assert_eq!(failures, Some(6.0));
    let replayed = h.metric("stsgate_client_auth_failures_total", &["reason=\"replayed_client_assertion\""]).await;
    assert_eq!(replayed, Some(1.0));

    let meta = h.get_json("/.well-known/oauth-authorization-server").await;
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        serde_json::json!(["client_secret_basic", "client_secret_post", "private_key_jwt", "none"])
    );
    assert_eq!(meta["token_endpoint_auth_signing_alg_values_supported"], serde_json::json!(["ES256"]));
}
