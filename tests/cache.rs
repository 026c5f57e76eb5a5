//! The minted-token and validated-token caches, through the real Check API:
//! identical requests reuse one token, anything that decided the result
//! differently gets its own, and impersonation is never answered from cache.

mod support;

use support::*;

fn jti(token: &str) -> String {
    let (_, claims) = peek(token);
    claims["jti"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_requests_reuse_the_minted_token_and_others_do_not() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read orders.write"));
    // Same subject, another token (a later login): its own cache entry.
    let mut later = idp.claims("alice", "orders.read orders.write");
    later["jti"] = serde_json::json!("another-login");
    let other = idp.token(&later);

    let first = allowed(&h.check_for(&token, "orders").await).bearer();
    let again = allowed(&h.check_for(&token, "orders").await).bearer();
    assert_eq!(first, again, "same subject token, audience and scope: one token");

    // Each deciding field gives a different token.
    let other_aud = allowed(&h.check_for(&token, "api://x").await).bearer();
    let other_scope =
        allowed(&h.check_token(&token, &[("audience", "orders"), ("scope", "orders.read")]).await).bearer();
    let other_subject = allowed(&h.check_for(&other, "orders").await).bearer();
    let all = [&first, &other_aud, &other_scope, &other_subject];
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            assert_ne!(jti(a), jti(b));
        }
    }
    assert_eq!(h.server.as_ref().unwrap().engine().caches().minted_len(), 4);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_answer_needs_no_idp_until_the_idp_withdraws_the_key() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let engine = h.server.as_ref().unwrap().engine();
    let issuer = engine.issuers.get(&idp.issuer).unwrap().clone();
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let first = allowed(&h.check_for(&token, "orders").await).bearer();

    // The IdP is down: the same request is answered from cache, and a new
    // audience for the same, already validated token still works.
    idp.down();
    assert_eq!(allowed(&h.check_for(&token, "orders").await).bearer(), first);
    allowed(&h.check_for(&token, "api://billing").await);
    idp.up();

    // A refresh that only adds a key keeps the cache.
    let extra = idp.new_key(KeyKind::Rsa, "extra", true);
    issuer.refresh().await.unwrap();
    assert_eq!(allowed(&h.check_for(&token, "orders").await).bearer(), first, "nothing was withdrawn");

    // The IdP withdraws the signing key (say it leaked). Until stsgate sees
    // the new JWKS the cached answer stands; from the refresh on, nothing that
    // key verified is answered from either cache.
    idp.unpublish(&idp.key().kid);
    assert_eq!(allowed(&h.check_for(&token, "orders").await).bearer(), first);
    issuer.refresh().await.unwrap();
    assert_invalid_token(&h.check_for(&token, "orders").await, "");
    assert_invalid_token(&h.check_for(&token, "api://billing").await, "");
    // Tokens from the keys still published keep working.
    allowed(&h.check_for(&extra.token(&idp.claims("alice", "orders.read")), "orders").await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_cache_mints_every_time() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).edit(|y| format!("{y}cache:\n  enabled: false\n")).start().await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let a = allowed(&h.check_for(&token, "orders").await).bearer();
    let b = allowed(&h.check_for(&token, "orders").await).bearer();
    assert_ne!(jti(&a), jti(&b));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tokens_are_never_cached_as_valid() {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let mut claims = idp.claims("alice", "orders.read");
    claims["exp"] = serde_json::json!(now() - 3600);
    let expired = idp.token(&claims);
    for _ in 0..2 {
        let resp = h.check_for(&expired, "orders").await;
        assert_eq!(resp.status.as_ref().unwrap().code, 16, "{resp:?}");
    }
    h.shutdown().await;
}
