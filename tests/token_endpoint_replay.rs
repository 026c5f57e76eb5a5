//! Issue #12: one-time use of `private_key_jwt` client assertions across
//! replicas (`token_endpoint.replay_store`: two stsgate instances sharing a
//! real `redis-server`, Redis paused, killed and back, Redis over TLS with a
//! client certificate, the in-memory store across a reload), client keys
//! from a `jwks_url`, and the configurable per-client failure rate
//! (`token_endpoint.client_failures_per_minute`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::*;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
const PREFIX: &str = "stsgate-test:jti:";

struct Answer {
    status: u16,
    retry_after: Option<String>,
    text: String,
    body: Value,
}

async fn post(h: &Harness, pairs: &[(&str, &str)]) -> Answer {
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        form.append_pair(k, v);
    }
    let resp = h
        .http
        .post(h.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form.finish())
        .send()
        .await
        .expect("POST /token");
    let status = resp.status().as_u16();
    let retry_after = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or_else(|e| panic!("JSON body ({e}): {text}"));
    Answer { status, retry_after, text, body }
}

/// A token exchange authenticated by `assertion`.
async fn exchange(h: &Harness, subject: &str, assertion: &str) -> Answer {
    let pairs = [
        ("grant_type", GRANT),
        ("subject_token", subject),
        ("subject_token_type", AT),
        ("audience", "orders"),
        ("client_assertion_type", JWT_BEARER),
        ("client_assertion", assertion),
    ];
    post(h, &pairs).await
}

fn assert_ok(a: &Answer) {
    assert_eq!(a.status, 200, "{}", a.text);
    assert!(a.body["access_token"].is_string(), "{}", a.text);
}

fn assert_code(a: &Answer, status: u16, code: &str) {
    assert_eq!((a.status, a.body["error"].as_str().unwrap_or("")), (status, code), "{}", a.text);
    assert!(a.body.get("access_token").is_none(), "{}", a.text);
}

/// A `private_key_jwt` assertion of `client`, valid for a minute.
fn assertion(key: &IdpKey, client: &str, jti: &str) -> String {
    let now = now();
    key.token(&json!({ "iss": client, "sub": client, "aud": STS_ISSUER, "exp": now + 60, "iat": now, "jti": jti }))
}

/// An instance whose client `signer` signs with `key` (inline JWKS), its
/// assertions recorded where `token_endpoint` (YAML mapping) says.
async fn replica(idp: &MockIdp, key: &Arc<IdpKey>, token_endpoint: &str) -> Harness {
    let jwks = jwks_doc(std::slice::from_ref(key), &[]);
    let extra = format!(
        "clients:\n  - {{ client_id: signer, auth: private_key_jwt, jwks: {jwks} }}\ntoken_endpoint: {token_endpoint}\n"
    );
    Harness::builder(idp).edit(move |y| format!("{y}{extra}")).start().await
}

fn redis_store(url: &str) -> String {
    format!("{{ replay_store: {{ redis: {{ url: \"{url}\", key_prefix: \"{PREFIX}\", timeout: 200ms }} }} }}")
}

async fn metric(h: &Harness, name: &str, label: &str) -> f64 {
    h.metric(name, &[label]).await.unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assertion_used_at_one_replica_is_refused_at_the_others() {
    let redis = RedisServer::start().await;
    let idp = MockIdp::start().await;
    let key = IdpKey::generate(KeyKind::P256, "client-key");
    let a = replica(&idp, &key, &redis_store(&redis.url())).await;
    // B reads the same URL from a file (a mounted Secret).
    let dir = TempDir::new("replay-url");
    let file = dir.write("redis-url", format!("{}\n", redis.url()));
    let from_file = format!(
        "{{ replay_store: {{ redis: {{ url_file: \"{}\", key_prefix: \"{PREFIX}\", timeout: 200ms }} }} }}",
        file.display()
    );
    let b = replica(&idp, &key, &from_file).await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));

    let first = assertion(&key, "signer", "jti-1");
    assert_ok(&exchange(&a, &subject, &first).await);
    // Seen by A: refused by B, and by A itself.
    assert_code(&exchange(&b, &subject, &first).await, 401, "invalid_client");
    assert_code(&exchange(&a, &subject, &first).await, 401, "invalid_client");
    let stored = redis.keys(PREFIX).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    // Kept for the assertion's remaining minute plus the clock margin.
    let ttl = redis.ttl(&stored[0]).await;
    assert!((100..=121).contains(&ttl), "TTL {ttl}");
    assert_eq!(stored[0].len(), PREFIX.len() + 64, "prefix + hex SHA-256: {}", stored[0]);

    // Other jtis pass, wherever they are used first.
    assert_ok(&exchange(&b, &subject, &assertion(&key, "signer", "jti-2")).await);
    assert_ok(&exchange(&a, &subject, &assertion(&key, "signer", "jti-3")).await);
    assert_eq!(redis.keys(PREFIX).await.len(), 3);

    let replayed = "reason=\"replayed_client_assertion\"";
    assert_eq!(metric(&a, "stsgate_client_auth_failures_total", replayed).await, 1.0);
    assert_eq!(metric(&b, "stsgate_client_auth_failures_total", replayed).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_refuses_assertions_and_forgets_nothing() {
    let redis = RedisServer::start().await;
    let idp = MockIdp::start().await;
    let key = IdpKey::generate(KeyKind::P256, "client-key");
    let a = replica(&idp, &key, &redis_store(&redis.url())).await;
    let b = replica(&idp, &key, &redis_store(&redis.url())).await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let used = assertion(&key, "signer", "used-before");
    assert_ok(&exchange(&a, &subject, &used).await);

    // Paused: connections are accepted, nothing answers, the data survives.
    redis.pause();
    for (h, what, token) in [
        (&a, "a fresh assertion", assertion(&key, "signer", "during-1")),
        (&b, "a replay", used.clone()),
        (&b, "a fresh assertion at B", assertion(&key, "signer", "during-2")),
    ] {
        let started = Instant::now();
        let answer = exchange(h, &subject, &token).await;
        assert_code(&answer, 503, "temporarily_unavailable");
        assert_eq!(answer.retry_after.as_deref(), Some("1"), "{what}");
        assert!(started.elapsed() < Duration::from_secs(2), "{what}: answered after {:?}", started.elapsed());
    }
    let errors = metric(&a, "stsgate_replay_store_errors_total", "reason=\"timeout\"").await;
    assert_eq!(errors, 1.0);
    // Not the client's failure (no rate limit), and the instance stays ready:
    // the Check path does not need Redis.
    let failures = metric(&b, "stsgate_client_auth_failures_total", "reason=\"replay_store_unavailable\"").await;
    assert_eq!(failures, 0.0);
    assert_eq!(a.get("/readyz").await.status().as_u16(), 200);

    redis.resume();
    // Back: the same connections answer again.
    let mut n = 0;
    eventually_some("assertions accepted again after Redis resumed", WAIT, || {
        n += 1;
        let token = assertion(&key, "signer", &format!("after-{n}"));
        let (b, subject) = (&b, &subject);
        async move { (exchange(b, subject, &token).await.status == 200).then_some(()) }
    })
    .await;
    // What was recorded before the outage is still refused everywhere.
    for h in [&a, &b] {
        assert_code(&exchange(h, &subject, &used).await, 401, "invalid_client");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_redis_is_reconnected() {
    let mut redis = RedisServer::start().await;
    let idp = MockIdp::start().await;
    let key = IdpKey::generate(KeyKind::P256, "client-key");
    let a = replica(&idp, &key, &redis_store(&redis.url())).await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    assert_ok(&exchange(&a, &subject, &assertion(&key, "signer", "before")).await);

    redis.kill();
    let answer = exchange(&a, &subject, &assertion(&key, "signer", "while-down")).await;
    assert_code(&answer, 503, "temporarily_unavailable");
    let errors = a.metric("stsgate_replay_store_errors_total", &["store=\"redis\""]).await;
    assert!(errors.is_some_and(|n| n >= 1.0), "{errors:?}");

    redis.restart().await;
    let mut n = 0;
    eventually_some("assertions accepted again after Redis restarted", WAIT, || {
        n += 1;
        let token = assertion(&key, "signer", &format!("after-{n}"));
        let (a, subject) = (&a, &subject);
        async move { (exchange(a, subject, &token).await.status == 200).then_some(()) }
    })
    .await;
    // Without persistence the restarted Redis holds only what came after it
    // (see README: a restart forgets jtis still within their life).
    assert_eq!(redis.keys(PREFIX).await.len(), 1);
}

/// `rediss://` to a Redis that serves TLS only and asks for a client
/// certificate: the store trusts the CA of `ca_file` and presents
/// `client_cert_file`. A store that trusts another CA, or presents no
/// certificate, cannot reach Redis and fails closed: 503, never an accepted
/// replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_speaks_tls_to_redis_and_fails_closed_without_the_right_certificates() {
    let ca = Ca::new("redis test CA");
    let redis = RedisServer::start_tls(&ca).await;
    let tls = redis.tls().unwrap();
    assert!(redis.url().starts_with("rediss://"), "{}", redis.url());
    let dir = TempDir::new("redis-tls");
    let ca_file = dir.write("ca.pem", &tls.ca);
    let rogue_ca = dir.write("rogue-ca.pem", Ca::new("another CA").pem());
    let (cert, key_file) = (dir.write("client.pem", &tls.client.cert), dir.write("client-key.pem", &tls.client.key));
    let store = |ca: &std::path::Path, client: bool| {
        let client = if client {
            format!(", client_cert_file: \"{}\", client_key_file: \"{}\"", cert.display(), key_file.display())
        } else {
            String::new()
        };
        format!(
            "{{ replay_store: {{ redis: {{ url: \"{}\", key_prefix: \"{PREFIX}\", timeout: 500ms, ca_file: \"{}\"{client} }} }} }}",
            redis.url(),
            ca.display()
        )
    };
    let idp = MockIdp::start().await;
    let key = IdpKey::generate(KeyKind::P256, "client-key");
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let a = replica(&idp, &key, &store(&ca_file, true)).await;
    let first = assertion(&key, "signer", "tls-1");
    assert_ok(&exchange(&a, &subject, &first).await);
    assert_code(&exchange(&a, &subject, &first).await, 401, "invalid_client");
    assert_eq!(redis.keys(PREFIX).await.len(), 1, "recorded in Redis, over TLS");

    for (what, config) in [("another CA", store(&rogue_ca, true)), ("no client certificate", store(&ca_file, false))] {
        let b = replica(&idp, &key, &config).await;
        for token in [assertion(&key, "signer", &format!("tls-{what}")), first.clone()] {
            let answer = exchange(&b, &subject, &token).await;
            assert_code(&answer, 503, "temporarily_unavailable");
            assert!(!answer.text.contains(&redis.password), "{what}: the password is shown: {}", answer.text);
        }
        let errors = metric(&b, "stsgate_replay_store_errors_total", "reason=\"connection\"").await;
        assert!(errors >= 1.0, "{what}: {errors} store errors counted");
    }
    assert_eq!(redis.keys(PREFIX).await.len(), 1, "nothing recorded by the replicas that could not connect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_memory_store_keeps_its_record_across_a_reload() {
    let idp = MockIdp::start().await;
    let key = IdpKey::generate(KeyKind::P256, "client-key");
    let h = replica(&idp, &key, "{ client_failures_per_minute: 10 }").await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let used = assertion(&key, "signer", "used");
    assert_ok(&exchange(&h, &subject, &used).await);

    let changed = h.yaml.replace("client_failures_per_minute: 10", "client_failures_per_minute: 20");
    assert_ne!(changed, h.yaml);
    h.reload_yaml(&changed).await.expect("reload");
    assert_code(&exchange(&h, &subject, &used).await, 401, "invalid_client");
    let replayed = metric(&h, "stsgate_client_auth_failures_total", "reason=\"replayed_client_assertion\"").await;
    assert_eq!(replayed, 1.0);
    assert_ok(&exchange(&h, &subject, &assertion(&key, "signer", "new")).await);
}

/// A harness whose client `signer` takes its keys from `jwks_url`.
async fn jwks_url_client(idp: &MockIdp, jwks_url: &str) -> Harness {
    let extra = format!("clients:\n  - {{ client_id: signer, auth: private_key_jwt, jwks_url: \"{jwks_url}\" }}\n");
    Harness::builder(idp).edit(move |y| format!("{y}{extra}")).start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_keys_from_a_jwks_url_are_fetched_at_load_and_on_an_unknown_kid() {
    let idp = MockIdp::start().await;
    // The client's own key server (its RS256 key rsa-1 published).
    let client_keys = MockIdp::start().await;
    let h = jwks_url_client(&idp, &client_keys.jwks_url()).await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));

    // Fetched when the engine loads (metadata lists what the keys allow).
    eventually("the client's JWKS is fetched at load", || async {
        h.get_json("/.well-known/oauth-authorization-server").await["token_endpoint_auth_signing_alg_values_supported"]
            == json!(["RS256"])
    })
    .await;
    assert_eq!(client_keys.jwks_fetches(), 1);
    assert_ok(&exchange(&h, &subject, &assertion(&client_keys.key(), "signer", "k1")).await);
    assert_eq!(client_keys.jwks_fetches(), 1, "a known kid needs no fetch");

    // The client rotates: the unknown kid fetches the JWKS once more.
    let rotated = client_keys.rotate("rsa-2");
    assert_ok(&exchange(&h, &subject, &assertion(&rotated, "signer", "k2")).await);
    assert_eq!(client_keys.jwks_fetches(), 2);

    // Another unknown kid right after: no fetch (at most once per 30 s).
    let unpublished = client_keys.new_key(KeyKind::Rsa, "rsa-3", false);
    for jti in ["k3", "k4"] {
        assert_code(&exchange(&h, &subject, &assertion(&unpublished, "signer", jti)).await, 401, "invalid_client");
    }
    assert_eq!(client_keys.jwks_fetches(), 2);

    // A reload keeps the keys fetched for an unchanged jwks_url.
    h.reload_yaml(&format!("{}token_endpoint: {{ client_failures_per_minute: 11 }}\n", h.yaml)).await.expect("reload");
    assert_ok(&exchange(&h, &subject, &assertion(&rotated, "signer", "k5")).await);
    assert_eq!(client_keys.jwks_fetches(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_url_that_cannot_be_fetched_fails_the_client_not_the_start() {
    let idp = MockIdp::start().await;
    let client_keys = MockIdp::start().await;
    client_keys.down();
    let h = jwks_url_client(&idp, &client_keys.jwks_url()).await;
    eventually("the fetch at load was tried", || async { client_keys.jwks_fetches() >= 1 }).await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let a = exchange(&h, &subject, &assertion(&client_keys.key(), "signer", "k1")).await;
    assert_code(&a, 401, "invalid_client");
    // Nothing else suffers: the instance is ready and the Check path serves.
    assert!(h.is_ready());
    let resp = h.check_for(&subject, "orders").await;
    assert_eq!(rpc_code(&resp), RPC_OK);
    allowed(&resp);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_failure_rate_is_configurable() {
    let idp = MockIdp::start().await;
    let dir = TempDir::new("failure-rate");
    let secret = dir.write("secret", "right-secret\n");
    let extra = format!(
        "clients:\n  - {{ client_id: c, auth: client_secret_post, secret_file: \"{}\" }}\n\
         token_endpoint: {{ client_failures_per_minute: 3 }}\n",
        secret.display()
    );
    let h = Harness::builder(&idp).edit(move |y| format!("{y}{extra}")).start().await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let with = |secret: &'static str| {
        vec![
            ("grant_type", GRANT),
            ("subject_token", subject.as_str()),
            ("subject_token_type", AT),
            ("audience", "orders"),
            ("client_id", "c"),
            ("client_secret", secret),
        ]
    };
    assert_ok(&post(&h, &with("right-secret")).await);
    for i in 0..3 {
        let a = post(&h, &with("wrong")).await;
        assert_eq!(a.status, 401, "failure {i}: {}", a.text);
    }
    let a = post(&h, &with("wrong")).await;
    assert_code(&a, 429, "invalid_client");
    assert!(a.retry_after.is_some());
    assert_code(&post(&h, &with("right-secret")).await, 429, "invalid_client");
}
