//! Trusted issuers against a real (mock) IdP: key rotation without restart,
//! the unknown-kid re-fetch throttle, readiness while an IdP is down, a lying
//! discovery document, JWKS files and JWKS documents with junk in them.

mod support;

use std::sync::Arc;

use serde_json::json;
use support::*;
use tonic_health::pb::health_check_response::ServingStatus;

const SERVING: Option<i32> = Some(ServingStatus::Serving as i32);
const NOT_SERVING: Option<i32> = Some(ServingStatus::NotServing as i32);
const AUTHZ: &str = "envoy.service.auth.v3.Authorization";

#[track_caller]
fn assert_503(resp: &stsgate::pb::envoy::service::auth::v3::CheckResponse) {
    let d = denial(resp);
    assert_eq!(d.rpc_code, RPC_UNAVAILABLE, "{d:#?}");
    assert_eq!(d.http_status, 503, "{d:#?}");
    assert_eq!(d.error(), "temporarily_unavailable");
}

async fn assert_not_ready(h: &Harness, idp_issuer: &str) {
    assert_eq!(h.health("").await, NOT_SERVING, "overall gRPC health");
    assert_eq!(h.health(AUTHZ).await, NOT_SERVING, "{AUTHZ} health");
    let resp = h.get("/readyz").await;
    assert_eq!(resp.status(), 503);
    let body = resp.text().await.unwrap();
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["ready"], false, "{report}");
    assert_eq!(report["issuers_not_loaded"], 1, "{report}");
    // Anyone may probe: the body counts issuers but does not name them.
    assert!(!body.contains(idp_issuer) && !body.contains("127.0.0.1"), "{body}");
    assert!(!h.is_ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_key_is_picked_up_without_restart() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let old_token = idp.token(&idp.claims("alice", "orders.read"));
    allowed(&h.check_for(&old_token, "orders").await);
    let fetches = idp.jwks_fetches();
    assert_eq!(fetches, 1, "one initial load");

    // The IdP rotates after stsgate loaded its keys.
    idp.rotate("rsa-2");
    let new_token = idp.token(&idp.claims("bob", "orders.read"));
    assert_eq!(peek(&new_token).0["kid"], "rsa-2");
    let ok = allowed(&h.check_for(&new_token, "orders").await);
    assert_eq!(ok.metadata.get("sub").map(String::as_str), Some("bob"));
    assert_eq!(idp.jwks_fetches(), fetches + 1, "exactly one re-fetch for the new kid");

    // Now cached: no further fetches, and the old key still works.
    allowed(&h.check_for(&new_token, "orders").await);
    allowed(&h.check_for(&old_token, "orders").await);
    assert_eq!(idp.jwks_fetches(), fetches + 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetch_is_throttled() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).issuer_option("unknown_kid_refetch_interval: 1h").start().await;
    let base = idp.jwks_fetches();

    // A kid the IdP never published: one re-fetch, then refused.
    let ghost = idp.new_key(KeyKind::Rsa, "ghost", false);
    let token = ghost.token(&idp.claims("alice", "orders.read"));
    assert_invalid_token(&h.check_for(&token, "orders").await, "matches the token's kid");
    assert_eq!(idp.jwks_fetches(), base + 1);

    // Repeating it, or naming another unknown kid, inside the interval does not fetch again...
    for _ in 0..5 {
        assert_invalid_token(&h.check_for(&token, "orders").await, "matches the token's kid");
    }
    let rotated = idp.rotate("rsa-3");
    let rotated_token = rotated.token(&idp.claims("alice", "orders.read"));
    assert_invalid_token(&h.check_for(&rotated_token, "orders").await, "matches the token's kid");
    assert_eq!(idp.jwks_fetches(), base + 1, "throttled: no fetch inside the interval");
    // ...while known keys keep working.
    allowed(&h.check_for(&idp.key_by_kid("rsa-1").unwrap().token(&idp.claims("a", "orders.read")), "orders").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetch_resumes_after_the_interval() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).issuer_option("unknown_kid_refetch_interval: 1s").start().await;
    let base = idp.jwks_fetches();
    let ghost = idp.new_key(KeyKind::Rsa, "ghost", false);
    assert_invalid_token(&h.check_for(&ghost.token(&idp.claims("a", "orders.read")), "orders").await, "no key");
    assert_eq!(idp.jwks_fetches(), base + 1);

    // Published now, but the interval has not passed: still unknown.
    idp.publish(&ghost);
    let token = ghost.token(&idp.claims("a", "orders.read"));
    assert_invalid_token(&h.check_for(&token, "orders").await, "no key");
    assert_eq!(idp.jwks_fetches(), base + 1);

    // Once it has, the next miss fetches again and the key is found.
    eventually("the ghost key is accepted after the refetch interval", || async {
        rpc_code(&h.check_for(&token, "orders").await) == RPC_OK
    })
    .await;
    assert_eq!(idp.jwks_fetches(), base + 2, "exactly one more fetch, however often we polled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_for_a_new_kid_share_one_fetch() {
    let idp = MockIdp::start().await;
    let h = Arc::new(Harness::start(&idp).await);
    let base = idp.jwks_fetches();
    let key = idp.rotate("rsa-2");
    let token = Arc::new(key.token(&idp.claims("alice", "orders.read")));
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let (h, token) = (h.clone(), token.clone());
        tasks.push(tokio::spawn(async move { rpc_code(&h.check_for(&token, "orders").await) }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), RPC_OK);
    }
    assert_eq!(idp.jwks_fetches(), base + 1);
}

async fn down_at_start_then_up(mode: Mode) {
    let idp = MockIdp::start_in(mode).await;
    let h = Harness::builder(&idp).no_wait().start().await;
    assert_not_ready(&h, &idp.issuer).await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    assert_503(&h.check_for(&token, "orders").await);
    // stsgate keeps trying while the IdP is down.
    eventually("stsgate retries the IdP", || async {
        let attempts = if mode == Mode::Refuse { idp.dropped_connections() } else { idp.discovery_fetches() };
        attempts >= 2
    })
    .await;
    assert_not_ready(&h, &idp.issuer).await;

    // The IdP comes back: ready without a restart.
    idp.up();
    eventually("gRPC health SERVING", || async { h.health("").await == SERVING && h.health(AUTHZ).await == SERVING })
        .await;
    let resp = h.get("/readyz").await;
    assert_eq!(resp.status(), 200);
    let report: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(report["ready"], true, "{report}");
    assert_eq!(report["issuers_not_loaded"], 0);
    allowed(&h.check_for(&token, "orders").await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_answering_503_at_start_then_up() {
    down_at_start_then_up(Mode::Unavailable).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_dropping_connections_at_start_then_up() {
    down_at_start_then_up(Mode::Refuse).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_nobody_listens_for_stays_not_serving() {
    // A port that was free a moment ago: connection refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let issuer = format!("http://127.0.0.1:{port}");
    let h = Harness::bare()
        .trusted_issuers(&format!("- issuer: {issuer}\n  jwks_url: {issuer}/jwks.json\n  fetch_timeout: 500ms\n"))
        .no_wait()
        .start()
        .await;
    assert_not_ready(&h, &issuer).await;
    let key = IdpKey::generate(KeyKind::Rsa, "rsa-1");
    let mut claims =
        json!({"iss": issuer, "sub": "alice", "aud": "stsgate", "exp": now() + 600, "scope": "orders.read"});
    assert_503(&h.check_for(&key.token(&claims), "orders").await);
    // Untrusted issuers are still refused as such, not with a 503.
    claims["iss"] = json!("https://else.test");
    assert_invalid_token(&h.check_for(&key.token(&claims), "orders").await, "not trusted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_document_lying_about_its_issuer_is_never_trusted() {
    let idp = MockIdp::start().await;
    idp.lie_about_issuer(Some("https://evil.test"));
    let h = Harness::builder(&idp).no_wait().start().await;
    // Let stsgate read the lying document more than once.
    eventually("stsgate fetched the discovery document twice", || async { idp.discovery_fetches() >= 2 }).await;
    assert_eq!(idp.jwks_fetches(), 0, "the jwks_uri of a lying document is never followed");
    assert_not_ready(&h, &idp.issuer).await;
    assert_503(&h.check_for(&idp.token(&idp.claims("alice", "orders.read")), "orders").await);

    // Telling the truth again: keys load on the next retry, no restart.
    idp.lie_about_issuer(None);
    eventually("ready once discovery is honest", || async { h.health("").await == SERVING }).await;
    allowed(&h.check_for(&idp.token(&idp.claims("alice", "orders.read")), "orders").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_url_must_name_the_configured_issuer() {
    let idp = MockIdp::start().await;
    // The document at discovery_url is honest about *its* issuer, which is not ours.
    let h = Harness::bare()
        .trusted_issuers(&format!("- issuer: https://idp.test\n  discovery_url: {}\n", idp.discovery_url()))
        .no_wait()
        .start()
        .await;
    eventually("discovery fetched", || async { idp.discovery_fetches() >= 2 }).await;
    assert_eq!(idp.jwks_fetches(), 0);
    assert_not_ready(&h, "https://idp.test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_url_issuer_needs_no_discovery() {
    let idp = MockIdp::start().await;
    let url = idp.jwks_url();
    let h =
        Harness::builder(&idp).edit(move |y| y.replace("discovery: true", &format!("jwks_url: {url}"))).start().await;
    allowed(&h.check_for(&idp.token(&idp.claims("alice", "orders.read")), "orders").await);
    assert_eq!(idp.discovery_fetches(), 0);
    assert_eq!(idp.jwks_fetches(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_file_issuer_works_and_is_reread_for_new_kids() {
    let dir = TempDir::new("jwks-file");
    let k1 = IdpKey::generate(KeyKind::P256, "file-ec-1");
    let path = dir.write("jwks.json", jwks_doc(std::slice::from_ref(&k1), &[]).to_string());
    let issuer = "https://file-idp.test";
    let h = Harness::bare()
        .trusted_issuers(&format!(
            "- issuer: {issuer}\n  jwks_file: {}\n  algorithms: [ES256]\n  unknown_kid_refetch_interval: 1s\n",
            path.display()
        ))
        .start()
        .await;
    let claims = |sub: &str| json!({"iss": issuer, "sub": sub, "aud": "stsgate", "iat": now(), "exp": now() + 600, "scope": "orders.read"});
    let ok = allowed(&h.check_for(&k1.token(&claims("alice")), "orders").await);
    assert_eq!(ok.metadata.get("subject_issuer").map(String::as_str), Some(issuer));

    // The file is rotated in place: a new kid is found by re-reading it.
    let k2 = IdpKey::generate(KeyKind::P256, "file-ec-2");
    dir.write("jwks.json", jwks_doc(&[k1.clone(), k2.clone()], &[]).to_string());
    allowed(&h.check_for(&k2.token(&claims("bob")), "orders").await);
    // A forged key under a published kid does not verify.
    let forged = IdpKey::generate(KeyKind::P256, "file-ec-2");
    assert_invalid_token(&h.check_for(&forged.token(&claims("mallory")), "orders").await, "signature is invalid");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn junk_keys_beside_a_good_one_do_not_break_the_set() {
    let idp = MockIdp::start().await;
    idp.set_junk(junk_jwks_entries());
    let h = Harness::builder(&idp)
        .edit(|y| y.replace("algorithms: [RS256]", "algorithms: [RS256, ES256]"))
        .issuer_option("unknown_kid_refetch_interval: 1h")
        .start()
        .await;
    allowed(&h.check_for(&idp.token(&idp.claims("alice", "orders.read")), "orders").await);

    // The skipped entries are really unusable: an encryption key and an EC key
    // pinned to RS256 never verify, whoever holds their kid.
    for kid in ["enc-1", "mismatch-1"] {
        let k = IdpKey::generate(KeyKind::P256, kid);
        assert_invalid_token(
            &h.check_for(&k.token(&idp.claims("alice", "orders.read")), "orders").await,
            "matches the token's kid",
        );
    }
    // The symmetric entry is no HMAC key either.
    let forged = forge_hs256(b"secret-secret-secret", Some("hmac-1"), &idp.claims("alice", "orders.read"));
    assert_invalid_token(&h.check_for(&forged, "orders").await, "symmetric");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idp_outage_after_load_keeps_the_cached_keys() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    idp.down();
    allowed(&h.check_for(&idp.token(&idp.claims("alice", "orders.read")), "orders").await);
    assert_eq!(h.health("").await, SERVING, "a failed re-fetch does not make stsgate unready");

    // A new kid while the IdP is down: stsgate cannot know, so 503 (retry), not 401.
    let new_key = idp.rotate("rsa-2");
    let rotated = new_key.token(&idp.claims("alice", "orders.read"));
    assert_503(&h.check_for(&rotated, "orders").await);
    assert_eq!(h.get("/readyz").await.status(), 200);
    // Again within the re-fetch throttle: still "cannot tell now", since the
    // last read failed (a 401 here would tell the client its valid token is bad).
    assert_503(&h.check_for(&rotated, "api://billing").await);
}

/// Reloads more often than `refresh_interval` must not postpone the refresh:
/// a key the IdP withdraws stops working within about one interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_reloads_do_not_postpone_the_refresh_of_keys() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .issuer_option("refresh_interval: 10s")
        .issuer_option("unknown_kid_refetch_interval: 1h")
        .start()
        .await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    allowed(&h.check_for(&token, "orders").await);
    let withdrawn_at = std::time::Instant::now();
    idp.rotate("rsa-2");
    idp.unpublish("rsa-1");
    // A reload every second; each one used to restart the 10 s wait.
    loop {
        h.reload_yaml(&h.yaml).await.expect("reload");
        let resp = h.check_for(&token, "api://billing").await;
        if refused(&resp) {
            break;
        }
        let waited = withdrawn_at.elapsed().as_secs_f64();
        assert!(waited < 15.0, "the withdrawn key is still trusted after {waited:.1} s of reloads");
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
    assert_invalid_token(&h.check_for(&token, "orders").await, "kid");
}

fn refused(resp: &stsgate::pb::envoy::service::auth::v3::CheckResponse) -> bool {
    rpc_code(resp) != RPC_OK
}

/// A token is accepted and cached; then the IdP publishes a JWKS whose
/// entries (`junk`, beside no signing key) are all unusable: the refresh
/// swaps it in, and the token is refused from then on, after a reload too.
async fn publishing_no_usable_key_revokes_the_old_ones(junk: Vec<serde_json::Value>) {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).issuer_option("unknown_kid_refetch_interval: 1h").start().await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let first = allowed(&h.check_for(&token, "orders").await).bearer();
    assert_eq!(allowed(&h.check_for(&token, "orders").await).bearer(), first, "answered from cache");

    idp.unpublish("rsa-1");
    idp.set_junk(junk);
    let issuer = h.server().engine().issuers.get(&idp.issuer).unwrap().clone();
    assert_eq!(issuer.refresh().await.expect("a JWKS without usable keys is an answer, not a failure"), 0);
    // Neither the cached answer nor a fresh validation outlives the withdrawal:
    // a 401 for the token, not a 503, and stsgate stays ready.
    assert_invalid_token(&h.check_for(&token, "orders").await, "kid");
    assert_invalid_token(&h.check_for(&token, "api://billing").await, "kid");
    let other = idp.token(&idp.claims("bob", "orders.read"));
    assert_invalid_token(&h.check_for(&other, "orders").await, "kid");
    assert_eq!(h.get("/readyz").await.status(), 200);
    assert_eq!(h.health("").await, SERVING);

    // A reload with the issuer unchanged keeps its current, empty key set.
    h.reload_yaml(&h.yaml).await.expect("reload");
    assert_invalid_token(&h.check_for(&token, "orders").await, "kid");
    assert_invalid_token(&h.check_for(&other, "api://billing").await, "kid");
    assert!(h.is_ready());

    // A key published again is found at the next refresh.
    let rotated = idp.rotate("rsa-2");
    h.server().engine().issuers.get(&idp.issuer).unwrap().refresh().await.unwrap();
    allowed(&h.check_for(&rotated.token(&idp.claims("carol", "orders.read")), "orders").await);
    assert_invalid_token(&h.check_for(&token, "orders").await, "kid");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_jwks_revokes_the_old_keys() {
    publishing_no_usable_key_revokes_the_old_ones(vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_with_only_an_oct_key_revokes_the_old_keys() {
    // Under the withdrawn key's kid, even.
    publishing_no_usable_key_revokes_the_old_ones(vec![
        json!({"kty": "oct", "kid": "rsa-1", "k": b64(b"0123456789abcdef")}),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jwks_with_only_a_1024_bit_rsa_key_revokes_the_old_keys() {
    let n = b64(&[0xC5u8; 128]);
    publishing_no_usable_key_revokes_the_old_ones(vec![json!({"kty": "RSA", "kid": "rsa-1", "n": n, "e": "AQAB"})])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idp_without_usable_keys_at_start_is_ready_and_its_tokens_get_401() {
    let idp = MockIdp::start().await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    idp.unpublish("rsa-1");
    let h = Harness::start(&idp).await;
    assert_eq!(h.health("").await, SERVING);
    assert_eq!(h.get("/readyz").await.status(), 200);
    assert_invalid_token(&h.check_for(&token, "orders").await, "kid");
}
