//! Delegation across hops (issue #11) through the Check front door of a real
//! stsgate: the gateway exchanges the user's IdP token for `web`; web's token
//! (one of stsgate's own) is re-exchanged for `orders` by web's mTLS identity,
//! and orders' for `payments` by orders', the chain growing at each hop:
//! `act = {sub: orders, act: {sub: web}}`. Every minted token is verified
//! against the published JWKS. And every way the chain must not go: a token
//! replayed by another workload, presented without an actor, pushed past the
//! depth limit, widened, or accepted when no rule lists `self`.

mod support;

use serde_json::{Value, json};
use stsgate::pb::envoy::service::auth::v3::CheckResponse;
use support::*;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const PAYMENTS: &str = "spiffe://cluster.local/ns/shop/sa/payments";
const BILLING: &str = "spiffe://cluster.local/ns/shop/sa/billing";

/// Users' tokens become web's; web, orders and payments pass theirs on
/// (`self`), at most two actors deep; `search` is for any issuer's tokens
/// (so never an own token's); `inventory` binds an IdP's token to a workload
/// of its audience.
fn chain_rules(idp: &str) -> String {
    format!(
        r#"
- name: users-to-web
  match: {{ issuers: ["{idp}"], audiences: [web] }}
  grant: {{ scopes: ["*"] }}
- name: any-issuer-search
  match: {{ audiences: [search] }}
  grant: {{ outcome: delegation, scopes: ["*"] }}
- name: mesh
  match: {{ issuers: [self], audiences: [orders, payments] }}
  grant: {{ outcome: delegation, scopes: ["orders.*", "payments.*"], max_lifetime: 2m, max_chain_depth: 2 }}
- name: inventory-for-its-audience
  match: {{ issuers: ["{idp}"], audiences: [inventory], presenter: audience }}
  grant: {{ outcome: delegation, scopes: ["*"] }}
"#
    )
}

const WORKLOADS: &str = r#"workloads:
  - { audience: web, spiffe: ["spiffe://cluster.local/ns/shop/sa/web"] }
  - { audience: orders, spiffe: ["spiffe://cluster.local/ns/shop/sa/orders"] }
  - { audience: payments, spiffe: ["spiffe://cluster.local/ns/shop/sa/payments"] }
"#;

async fn start(idp: &MockIdp) -> Harness {
    Harness::builder(idp).rules(&chain_rules(&idp.issuer)).edit(|y| format!("{y}{WORKLOADS}")).start().await
}

/// A Check presenting `token` for `audience`, from the mTLS `peer` if any,
/// asking for `scope` if any.
async fn hop(h: &Harness, token: &str, audience: &str, peer: Option<&str>, scope: Option<&str>) -> CheckResponse {
    let mut req = request_to("api.test", "/").bearer(token).context("audience", audience);
    if let Some(scope) = scope {
        req = req.context("scope", scope);
    }
    if let Some(peer) = peer {
        req = req.peer(peer);
    }
    h.check_request(req.build()).await
}

/// The minted token of an allowed hop, verified against the published JWKS
/// for `audience`, and its claims.
async fn minted(h: &Harness, resp: &CheckResponse, audience: &str) -> (String, Value) {
    let token = allowed(resp).bearer();
    let (header, claims) = h.verify_minted(&token, audience).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    (token, claims)
}

/// A 403 `error` with metric label `reason` whose description has each of `needles`.
#[track_caller]
fn forbidden(resp: &CheckResponse, error: &str, reason: &str, needles: &[&str]) -> Denial {
    let d = denial(resp);
    assert_eq!((d.rpc_code, d.http_status, d.error()), (RPC_PERMISSION_DENIED, 403, error), "{d:#?}");
    assert_eq!(d.metadata.get("reason").map(String::as_str), Some(reason), "{d:#?}");
    for needle in needles {
        assert!(d.description().contains(needle), "description {:?} lacks {needle:?}", d.description());
    }
    d
}

fn user_token(idp: &MockIdp, scope: &str) -> String {
    idp.token(&idp.claims("alice", scope))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hops_keep_the_user_and_nest_the_actors() {
    let idp = MockIdp::start().await;
    let h = start(&idp).await;
    let user = user_token(&idp, "orders.read payments.charge profile");
    let original = json!({"format": "iss_sub", "iss": idp.issuer, "sub": "alice"});

    // Hop one, at the gateway: the user's token for web, no actor.
    let resp = hop(&h, &user, "web", None, None).await;
    let (web, c1) = minted(&h, &resp, "web").await;
    assert_eq!((c1["sub"].as_str(), c1.get("act")), (Some("alice"), None), "{c1}");
    assert_eq!(c1["sub_id"], original);
    assert_eq!(c1["scope"], "orders.read payments.charge profile");

    // Hop two: web calls orders; web's token, presented by web.
    let resp = hop(&h, &web, "orders", Some(WEB), None).await;
    let md = allowed(&resp).metadata;
    assert_eq!((md["rule"].as_str(), md["decision"].as_str()), ("mesh", "delegation"));
    assert_eq!((md["actor"].as_str(), md["subject_issuer"].as_str()), (WEB, STS_ISSUER));
    let (orders, c2) = minted(&h, &resp, "orders").await;
    assert_eq!(c2["sub"], "alice");
    assert_eq!(c2["act"], json!({"sub": WEB}));
    assert_eq!(c2["sub_id"], original, "the user's own IdP, not stsgate");
    assert_eq!(c2["scope"], "orders.read payments.charge", "the rule narrows, never widens");
    assert_eq!(c2["client_id"], c1["client_id"]);
    assert!(c2["exp"].as_i64() <= c1["exp"].as_i64(), "never outlives the token it came from");

    // Hop three: orders calls payments; orders' token, presented by orders.
    let resp = hop(&h, &orders, "payments", Some(ORDERS), None).await;
    let (payments, c3) = minted(&h, &resp, "payments").await;
    assert_eq!(c3["sub"], "alice");
    assert_eq!(c3["act"], json!({"sub": ORDERS, "act": {"sub": WEB}}));
    assert_eq!(c3["sub_id"], original);
    assert!(c3["exp"].as_i64() <= c2["exp"].as_i64());

    // A fourth hop would carry three actors: past the rule's limit of two.
    let resp = hop(&h, &payments, "orders", Some(PAYMENTS), None).await;
    forbidden(&resp, "access_denied", "chain_too_deep", &["delegation chain of 3", "\"mesh\"", "limit of 2"]);
    assert_eq!(h.metric("stsgate_decisions_total", &["reason=\"chain_too_deep\""]).await, Some(1.0));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_token_is_re_exchanged_only_by_the_workload_it_was_issued_to() {
    let idp = MockIdp::start().await;
    let h = start(&idp).await;
    let user = user_token(&idp, "orders.read payments.charge");
    let web = allowed(&hop(&h, &user, "web", None, None).await).bearer();
    let orders = allowed(&hop(&h, &web, "orders", Some(WEB), None).await).bearer();
    // orders' own hop, answered from cache next time.
    allowed(&hop(&h, &orders, "payments", Some(ORDERS), None).await);

    // billing replays orders' token (also after orders' answer was cached).
    let resp = hop(&h, &orders, "payments", Some(BILLING), None).await;
    let d = forbidden(&resp, "access_denied", "presenter_mismatch", &[]);
    assert_eq!(
        d.description(),
        format!("the token was issued to \"orders\"; actor \"{BILLING}\" is not a workload of it")
    );
    assert_eq!(d.metadata.get("actor").map(String::as_str), Some(BILLING), "access logs name who was refused");
    // The party before it cannot reuse it either.
    forbidden(&hop(&h, &orders, "payments", Some(WEB), None).await, "access_denied", "presenter_mismatch", &[WEB]);
    // Without an actor (no peer, or the route switches it off), nobody presents it.
    for resp in [
        hop(&h, &web, "orders", None, None).await,
        h.check_request(
            request_to("api.test", "/")
                .bearer(&web)
                .context("audience", "orders")
                .context("actor", "none")
                .peer(WEB)
                .build(),
        )
        .await,
    ] {
        forbidden(&resp, "access_denied", "presenter_mismatch", &["\"web\"", "the request has no actor"]);
    }
    assert_eq!(
        h.metric("stsgate_decisions_total", &["outcome=\"denied\"", "reason=\"presenter_mismatch\""]).await,
        Some(4.0)
    );

    // A rule without `issuers` never matches an own token, even for its workload...
    forbidden(&hop(&h, &web, "search", Some(WEB), None).await, "invalid_target", "no_rule", &["\"search\""]);
    // ... which the user's token gets.
    allowed(&hop(&h, &user, "search", Some(WEB), None).await);
    // A rule listing only `self` never matches the IdP's token.
    forbidden(&hop(&h, &user, "orders", Some(WEB), None).await, "invalid_target", "no_rule", &["\"orders\""]);

    // An own token is never an actor token: it names a user, not a workload.
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
            ("subject_token", user.as_str()),
            ("subject_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("actor_token", web.as_str()),
            ("actor_token_type", "urn:ietf:params:oauth:token-type:access_token"),
            ("audience", "search"),
        ])
        .finish();
    let resp = h
        .http
        .post(h.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    // RFC 8693 §2.2.2: an unacceptable actor token is invalid_request.
    assert_eq!(body["error"], "invalid_request", "{body}");
    assert_eq!(
        body["error_description"], "actor token: stsgate's own tokens are not accepted as actor tokens",
        "{body}"
    );
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scopes_only_narrow_along_the_chain() {
    let idp = MockIdp::start().await;
    let h = start(&idp).await;
    let user = user_token(&idp, "orders.read orders.write payments.charge");
    let web = allowed(&hop(&h, &user, "web", None, None).await).bearer();

    let resp = hop(&h, &web, "orders", Some(WEB), Some("orders.read")).await;
    let (orders, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["scope"], "orders.read");
    // What orders' token no longer holds is never granted again.
    let resp = hop(&h, &orders, "payments", Some(ORDERS), Some("orders.read payments.charge")).await;
    assert_eq!(minted(&h, &resp, "payments").await.1["scope"], "orders.read");
    let resp = hop(&h, &orders, "payments", Some(ORDERS), Some("payments.charge")).await;
    forbidden(&resp, "invalid_scope", "no_scope", &["\"mesh\""]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_second_hop_is_answered_from_cache() {
    let idp = MockIdp::start().await;
    let h = start(&idp).await;
    let user = user_token(&idp, "orders.read");
    let web = allowed(&hop(&h, &user, "web", None, None).await).bearer();
    let caches = || h.server().engine().caches().minted_len();
    let before = caches();
    let first = allowed(&hop(&h, &web, "orders", Some(WEB), None).await).bearer();
    let again = allowed(&hop(&h, &web, "orders", Some(WEB), None).await).bearer();
    assert_eq!(first, again, "the same token, jti included: the cached answer");
    assert_eq!(caches(), before + 1);
    // A different actor is a different entry, and is refused.
    forbidden(&hop(&h, &web, "orders", Some(BILLING), None).await, "access_denied", "presenter_mismatch", &[]);
    assert_eq!(caches(), before + 1);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_tokens_are_untrusted_unless_a_rule_lists_self() {
    let idp = MockIdp::start().await;
    // web's delegation rule has no `issuers`: it matches the IdP's tokens only.
    let rules = format!(
        "- name: users-to-web\n  match: {{ issuers: [\"{}\"], audiences: [web] }}\n  grant: {{ scopes: [\"*\"] }}\n\
         - name: delegate-to-orders\n  match: {{ audiences: [orders] }}\n  grant: {{ outcome: delegation, scopes: [\"*\"] }}\n",
        idp.issuer
    );
    let h = Harness::builder(&idp).rules(&rules).edit(|y| format!("{y}{WORKLOADS}")).start().await;
    let web = allowed(&hop(&h, &user_token(&idp, "orders.read"), "web", None, None).await).bearer();
    assert_invalid_token(&hop(&h, &web, "orders", Some(WEB), None).await, "issuer is not trusted");
    let untrusted =
        h.metric("stsgate_decisions_total", &["outcome=\"unauthenticated\"", "reason=\"untrusted_issuer\""]).await;
    assert_eq!(untrusted, Some(1.0));

    // A reload that adds a `self` rule accepts them, from then on.
    let yaml = h.yaml.replace(
        "  - name: delegate-to-orders",
        "  - name: mesh\n    match: { issuers: [self] }\n    grant: { outcome: delegation, scopes: [\"*\"] }\n  - name: delegate-to-orders",
    );
    h.reload_yaml(&yaml).await.expect("reload");
    let resp = hop(&h, &web, "orders", Some(WEB), None).await;
    assert_eq!(minted(&h, &resp, "orders").await.1["act"], json!({"sub": WEB}));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_token_signed_by_any_published_key_verifies() {
    let idp = MockIdp::start().await;
    let h = start(&idp).await;
    let web = allowed(&hop(&h, &user_token(&idp, "orders.read"), "web", None, None).await).bearer();
    assert_eq!(peek(&web).0["kid"], STS_KID);

    // Rotation: a new active key; the old one stays published (an ephemeral
    // key keeps its material across a reload while its kid stays).
    let rotated = h.yaml.replace(
        &format!("  keys:\n    - kid: {STS_KID}\n"),
        &format!("  active: sts-next\n  keys:\n    - {{ kid: sts-next, alg: EdDSA, ephemeral: true }}\n    - kid: {STS_KID}\n"),
    );
    assert_ne!(rotated, h.yaml);
    h.reload_yaml(&rotated).await.expect("reload with a new active key");
    let resp = hop(&h, &web, "orders", Some(WEB), None).await;
    let (orders, c) = minted(&h, &resp, "orders").await;
    assert_eq!((peek(&orders).0["kid"].as_str(), c["act"].clone()), (Some("sts-next"), json!({"sub": WEB})));

    // Once the old key is withdrawn, tokens it signed are not stsgate's any more.
    let withdrawn = rotated.replace(&format!("    - kid: {STS_KID}\n      alg: ES256\n      ephemeral: true\n"), "");
    assert_ne!(withdrawn, rotated);
    h.reload_yaml(&withdrawn).await.expect("reload without the old key");
    assert_invalid_token(&hop(&h, &web, "orders", Some(WEB), None).await, "no key of the issuer matches");
    allowed(&hop(&h, &orders, "payments", Some(ORDERS), None).await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presenter_audience_binds_an_idp_token_to_a_workload_of_its_audience() {
    let idp = MockIdp::start().await;
    let h = start(&idp).await;
    // Keycloak-style: the requesting client is in the token's audience (or azp).
    let token = |aud: Value, azp: Option<&str>| {
        let mut c = idp.claims("alice", "inventory.read");
        c["aud"] = aud;
        if let Some(azp) = azp {
            c["azp"] = json!(azp);
        }
        idp.token(&c)
    };
    let for_web = token(json!(["account", "web"]), None);
    let resp = hop(&h, &for_web, "inventory", Some(WEB), None).await;
    assert_eq!(minted(&h, &resp, "inventory").await.1["act"], json!({"sub": WEB}));
    allowed(&hop(&h, &token(json!("account"), Some("web")), "inventory", Some(WEB), None).await);

    let resp = hop(&h, &for_web, "inventory", Some(BILLING), None).await;
    forbidden(&resp, "access_denied", "presenter_mismatch", &["\"account\", \"web\"", BILLING, "any of them"]);
    let resp = hop(&h, &token(json!("account"), Some("mobile")), "inventory", Some(WEB), None).await;
    forbidden(&resp, "access_denied", "presenter_mismatch", &["\"account\", \"mobile\""]);
    h.shutdown().await;
}
