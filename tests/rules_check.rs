//! The rule engine through the ext_authz Check front door: a real stsgate on
//! ephemeral ports, a real (mock) IdP, a tonic client. Every allowed case
//! verifies the minted token against stsgate's *published* JWKS before looking
//! at its claims; every refusal is checked down to the gRPC code, the HTTP
//! status, the JSON `error` and the rule/condition named in the description.

mod support;

use serde_json::{Value, json};
use stsgate::pb::envoy::service::auth::v3::CheckRequest;
use stsgate::pb::envoy::service::auth::v3::CheckResponse;
use stsgate::pb::envoy::service::auth::v3::attribute_context::Peer;
use support::*;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const ORDERS_SA: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const OTHER_SA: &str = "spiffe://cluster.local/ns/shop/sa/other";
const ADMIN_SA: &str = "spiffe://cluster.local/ns/shop/sa/admin";

const RPC_INVALID_ARGUMENT: i32 = 3;

// ---------------------------------------------------------------------------
// Local helpers
// ---------------------------------------------------------------------------

/// A Check for `authorization: Bearer <token>` plus `headers`, with these
/// context extensions and, when given, Envoy's `source.principal`.
fn request(token: &str, ctx: &[(&str, &str)], headers: &[(&str, &str)], peer: Option<&str>) -> CheckRequest {
    let bearer = format!("Bearer {token}");
    let mut all = vec![("authorization", bearer.as_str())];
    all.extend_from_slice(headers);
    let mut req = check_request(&all, ctx, "api.test", "/");
    if let Some(principal) = peer {
        req.attributes.as_mut().unwrap().source = Some(Peer { principal: principal.to_owned(), ..Default::default() });
    }
    req
}

async fn check(
    h: &Harness,
    token: &str,
    ctx: &[(&str, &str)],
    headers: &[(&str, &str)],
    peer: Option<&str>,
) -> CheckResponse {
    h.check_request(request(token, ctx, headers, peer)).await
}

fn scopes(claims: &Value) -> Vec<String> {
    let mut v: Vec<String> = claims["scope"].as_str().unwrap_or("").split_whitespace().map(str::to_owned).collect();
    v.sort();
    v
}

fn md<'a>(ok: &'a Allowed, key: &str) -> &'a str {
    ok.metadata.get(key).map(String::as_str).unwrap_or_else(|| panic!("no metadata {key:?} in {:?}", ok.metadata))
}

/// The allowed response's minted token, verified against the published JWKS
/// for `audience`; returns the `Allowed` view and the verified claims.
async fn minted(h: &Harness, resp: &CheckResponse, audience: &str) -> (Allowed, Value) {
    let ok = allowed(resp);
    let (header, claims) = h.verify_minted(&ok.bearer(), audience).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.kid.as_deref(), Some(STS_KID));
    assert_eq!(claims["iss"], STS_ISSUER);
    assert_eq!(claims["aud"], audience);
    (ok, claims)
}

/// Whether `token` verifies against the published JWKS for `audience` (no panic).
async fn verifies_for(h: &Harness, token: &str, audience: &str) -> bool {
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(h.get_json("/.well-known/jwks.json").await).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[STS_ISSUER]);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).is_ok()
}

/// A 403 refusal: PERMISSION_DENIED, JSON `error`, the description containing
/// every `needle`, and the metrics/metadata `reason`.
#[track_caller]
fn assert_forbidden(resp: &CheckResponse, error: &str, reason: &str, needles: &[&str]) -> Denial {
    let d = denial(resp);
    assert_eq!(d.rpc_code, RPC_PERMISSION_DENIED, "{d:#?}");
    assert_eq!(d.http_status, 403, "{d:#?}");
    assert_eq!(d.error(), error, "{d:#?}");
    for needle in needles {
        assert!(d.description().contains(needle), "description {:?} lacks {needle:?}", d.description());
    }
    assert!(d.www_authenticate().is_none(), "a 403 carries no challenge: {d:#?}");
    assert_eq!(d.headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_eq!(d.metadata.get("decision").map(String::as_str), Some("denied"));
    assert_eq!(d.metadata.get("reason").map(String::as_str), Some(reason), "{d:#?}");
    d
}

/// Subject-token claims with extra members merged in.
fn claims_with(idp: &MockIdp, sub: &str, scope: &str, extra: Value) -> Value {
    let mut c = idp.claims(sub, scope);
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// `trusted_issuers` entries (discovery, RS256) for several mock IdPs.
fn trust(idps: &[&MockIdp]) -> String {
    idps.iter().map(|i| format!("- issuer: {}\n  discovery: true\n  algorithms: [RS256]\n", i.issuer)).collect()
}

const ACTOR_TOKENS: &str = "actor: { token_header: x-actor-token }\nrequested_subject_header: x-requested-subject\n";

// ---------------------------------------------------------------------------
// Delegation
// ---------------------------------------------------------------------------

const WEB_DELEGATES: &str = r#"
- name: web-delegates-to-orders
  match:
    audiences: [orders]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/sa/web"] }
  grant: { outcome: delegation, scopes: ["orders.*"], max_lifetime: 2m, max_chain_depth: 2 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_with_a_peer_names_the_spiffe_id_in_act() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).rules(WEB_DELEGATES).start().await;
    let token = idp.token(&idp.claims("alice", "orders.read profile"));

    let resp = check(&h, &token, &[("audience", "orders")], &[], Some(WEB)).await;
    let (ok, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["sub"], "alice");
    // Exactly {"sub": <SPIFFE ID>}: a peer has no issuer.
    assert_eq!(c["act"], json!({"sub": WEB}), "{c}");
    assert!(c.get("act_as").is_none(), "{c}");
    assert_eq!(scopes(&c), ["orders.read"]);
    assert_eq!(md(&ok, "actor"), WEB);
    assert_eq!(md(&ok, "decision"), "delegation");
    assert_eq!(md(&ok, "rule"), "web-delegates-to-orders");
    assert_eq!(md(&ok, "sub"), "alice");

    // Another workload, or none at all: the rule does not match (default deny).
    let resp = check(&h, &token, &[("audience", "orders")], &[], Some(OTHER_SA)).await;
    assert_forbidden(&resp, "invalid_target", "no_rule", &["\"orders\""]);
    let resp = check(&h, &token, &[("audience", "orders")], &[], None).await;
    assert_forbidden(&resp, "invalid_target", "no_rule", &["\"orders\""]);
    // The route can switch the peer off: then there is no actor to delegate to.
    let resp = check(&h, &token, &[("audience", "orders"), ("actor", "none")], &[], Some(WEB)).await;
    assert_forbidden(&resp, "invalid_target", "no_rule", &["\"orders\""]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_chain_wraps_the_prior_act_and_is_capped_by_max_chain_depth() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules(
            r#"
- name: orders-delegates-to-payments
  match:
    audiences: [payments]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/sa/orders"] }
  grant: { outcome: delegation, scopes: ["payments.*"], max_chain_depth: 2 }
"#,
        )
        .start()
        .await;

    // One prior actor (carried with whatever members it had): nested, untouched.
    let prior = json!({"sub": WEB, "iss": "https://mesh.example"});
    let token = idp.token(&claims_with(&idp, "alice", "payments.write", json!({"act": prior})));
    let resp = check(&h, &token, &[("audience", "payments")], &[], Some(ORDERS_SA)).await;
    let (ok, c) = minted(&h, &resp, "payments").await;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["act"], json!({"sub": ORDERS_SA, "act": prior}), "{c}");
    assert_eq!(c["act"]["act"], prior);
    assert_eq!(md(&ok, "actor"), ORDERS_SA, "the current actor, not a nested one");
    assert_eq!(md(&ok, "decision"), "delegation");

    // Two prior actors + this one = 3 > 2: refused, naming the rule and the limit.
    let deep = json!({"sub": WEB, "act": {"sub": "spiffe://cluster.local/ns/edge/sa/gateway"}});
    let token = idp.token(&claims_with(&idp, "alice", "payments.write", json!({"act": deep})));
    let resp = check(&h, &token, &[("audience", "payments")], &[], Some(ORDERS_SA)).await;
    assert_forbidden(
        &resp,
        "access_denied",
        "chain_too_deep",
        &["delegation chain of 3", "\"orders-delegates-to-payments\"", "limit of 2"],
    );

    // A malformed chain is refused, never trusted or silently dropped.
    let token = idp.token(&claims_with(&idp, "alice", "payments.write", json!({"act": {"act": {"sub": WEB}}})));
    let resp = check(&h, &token, &[("audience", "payments")], &[], Some(ORDERS_SA)).await;
    assert_forbidden(&resp, "access_denied", "bad_claim", &["act claim is malformed"]);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// Exchange
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_has_no_act_and_does_not_match_a_request_with_a_peer() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules("- name: plain-orders\n  match: { audiences: [orders] }\n  grant: { scopes: [\"orders.*\"] }\n")
        .start()
        .await;
    let token = idp.token(&idp.claims("alice", "orders.read"));

    let resp = check(&h, &token, &[("audience", "orders")], &[], None).await;
    let (ok, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["sub"], "alice");
    assert!(c.get("act").is_none() && c.get("act_as").is_none(), "{c}");
    assert_eq!(md(&ok, "decision"), "exchange");
    assert_eq!(ok.metadata.get("actor"), None, "no actor");

    // An mTLS peer makes it a request with an actor: an exchange rule does not fit.
    let resp = check(&h, &token, &[("audience", "orders")], &[], Some(WEB)).await;
    assert_forbidden(&resp, "invalid_target", "no_rule", &["no rule allows", "\"orders\""]);

    // The route decides explicitly that the peer is not an actor: it matches again.
    let resp = check(&h, &token, &[("audience", "orders"), ("actor", "none")], &[], Some(WEB)).await;
    let (ok, c) = minted(&h, &resp, "orders").await;
    assert!(c.get("act").is_none(), "{c}");
    assert_eq!(md(&ok, "decision"), "exchange");
    assert_eq!(ok.metadata.get("actor"), None, "no actor");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_or_exchange_is_chosen_by_the_presence_of_a_peer() {
    let idp = MockIdp::start().await;
    let rules = format!(
        "{WEB_DELEGATES}- name: plain-orders\n  match: {{ audiences: [orders] }}\n  grant: {{ scopes: [\"orders.read\"] }}\n"
    );
    let h = Harness::builder(&idp).rules(&rules).start().await;
    let token = idp.token(&idp.claims("alice", "orders.read orders.write"));

    let resp = check(&h, &token, &[("audience", "orders")], &[], Some(WEB)).await;
    let (ok, c) = minted(&h, &resp, "orders").await;
    assert_eq!((md(&ok, "rule"), md(&ok, "decision")), ("web-delegates-to-orders", "delegation"));
    assert_eq!(c["act"], json!({"sub": WEB}));
    assert_eq!(scopes(&c), ["orders.read", "orders.write"]);

    let resp = check(&h, &token, &[("audience", "orders")], &[], None).await;
    let (ok, c) = minted(&h, &resp, "orders").await;
    assert_eq!((md(&ok, "rule"), md(&ok, "decision")), ("plain-orders", "exchange"));
    assert!(c.get("act").is_none(), "{c}");
    assert_eq!(scopes(&c), ["orders.read"]);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// Impersonation
// ---------------------------------------------------------------------------

const SUPPORT_IMPERSONATES: &str = r#"
- name: support-impersonates-customers
  match:
    audiences: [orders]
    subject: { groups: [sre] }
    actor: { sub: [ops-console] }
  grant:
    outcome: impersonation
    scopes: ["orders.read"]
    impersonate_subjects: ["user-*"]
    audit_claim: impersonated_by
    max_lifetime: 1m
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_impersonates_a_customer_only_where_a_rule_allows_it() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).ext_authz(ACTOR_TOKENS).rules(SUPPORT_IMPERSONATES).start().await;
    let operator = idp.token(&claims_with(&idp, "operator", "orders.read orders.write", json!({"groups": ["sre"]})));
    let console = idp.token(&idp.claims("ops-console", ""));
    let ctx = [("audience", "orders")];

    let resp =
        check(&h, &operator, &ctx, &[("x-actor-token", &console), ("x-requested-subject", "user-123")], None).await;
    let (ok, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["sub"], "user-123");
    assert!(c.get("act").is_none() && c.get("act_as").is_none(), "impersonation carries no act: {c}");
    // The audit claim names the real actor (with its issuer: it is a token actor).
    assert_eq!(c["impersonated_by"], json!({"sub": "ops-console", "iss": idp.issuer}), "{c}");
    assert_eq!(scopes(&c), ["orders.read"]);
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert!(exp - iat <= 60 && exp > iat, "max_lifetime 1m: {}", exp - iat);
    assert_eq!(md(&ok, "decision"), "impersonation");
    assert_eq!(md(&ok, "sub"), "user-123");
    assert_eq!(md(&ok, "actor"), "ops-console");
    assert_eq!(md(&ok, "rule"), "support-impersonates-customers");
    // The consumed actor token and impersonation header never reach the upstream.
    assert!(ok.headers_to_remove.contains(&"x-actor-token".to_owned()), "{:?}", ok.headers_to_remove);
    assert!(ok.headers_to_remove.contains(&"x-requested-subject".to_owned()), "{:?}", ok.headers_to_remove);
    assert!(!ok.headers_to_remove.contains(&"authorization".to_owned()), "the output header is authorization");

    // A subject outside impersonate_subjects.
    let resp =
        check(&h, &operator, &ctx, &[("x-actor-token", &console), ("x-requested-subject", "admin-1")], None).await;
    assert_forbidden(
        &resp,
        "access_denied",
        "impersonation_refused",
        &["impersonating another subject", "names this actor"],
    );

    // An actor the rule does not name.
    let intruder = idp.token(&idp.claims("intruder-console", ""));
    let resp =
        check(&h, &operator, &ctx, &[("x-actor-token", &intruder), ("x-requested-subject", "user-123")], None).await;
    assert_forbidden(&resp, "access_denied", "impersonation_refused", &["impersonating another subject"]);

    // No actor at all.
    let resp = check(&h, &operator, &ctx, &[("x-requested-subject", "user-123")], None).await;
    assert_forbidden(&resp, "access_denied", "impersonation_refused", &["impersonating another subject"]);

    // The operator's own token must be in group sre.
    let dev = idp.token(&claims_with(&idp, "dev-1", "orders.read", json!({"groups": ["dev"]})));
    let resp = check(&h, &dev, &ctx, &[("x-actor-token", &console), ("x-requested-subject", "user-123")], None).await;
    assert_forbidden(&resp, "access_denied", "impersonation_refused", &["impersonating another subject"]);

    // An mTLS peer is not the named actor either, even with the right SPIFFE-ish name.
    let resp = check(&h, &operator, &ctx, &[("x-requested-subject", "user-123")], Some("ops-console")).await;
    assert_forbidden(&resp, "access_denied", "impersonation_refused", &["impersonating another subject"]);

    // An unreadable impersonation header is a 400, not a guess.
    let resp =
        check(&h, &operator, &ctx, &[("x-actor-token", &console), ("x-requested-subject", "user-1,user-2")], None)
            .await;
    let d = denial(&resp);
    assert_eq!((d.rpc_code, d.http_status), (RPC_INVALID_ARGUMENT, 400), "{d:#?}");
    assert_eq!(d.error(), "invalid_request");
    assert!(d.description().contains("requested subject"), "{}", d.description());
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// may_act, laundering, act_as
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn may_act_in_the_subject_token_must_name_the_actor() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules(
            r#"
- name: shop-delegates
  match:
    audiences: [orders]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/other"] }
  grant: { outcome: delegation, scopes: ["orders.*"] }
"#,
        )
        .start()
        .await;
    let ctx = [("audience", "orders")];
    let token = idp.token(&claims_with(&idp, "alice", "orders.read", json!({"may_act": {"sub": WEB}})));

    // The rule allows `other`, but the subject token only admits `web`.
    let resp = check(&h, &token, &ctx, &[], Some(OTHER_SA)).await;
    assert_forbidden(&resp, "access_denied", "may_act", &["may_act does not admit this actor"]);

    let resp = check(&h, &token, &ctx, &[], Some(WEB)).await;
    let (_, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["act"], json!({"sub": WEB}));
    assert!(c.get("may_act").is_none(), "may_act is not carried into the minted token: {c}");

    // may_act with an iss a peer cannot have.
    let token =
        idp.token(&claims_with(&idp, "alice", "orders.read", json!({"may_act": {"sub": WEB, "iss": idp.issuer}})));
    let resp = check(&h, &token, &ctx, &[], Some(WEB)).await;
    assert_forbidden(&resp, "access_denied", "may_act", &["may_act"]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_token_is_never_laundered_into_a_clean_one() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules(
            r#"
- name: launder
  match: { audiences: [orders] }
  grant: { outcome: impersonation, scopes: ["orders.*"] }
- name: keep
  match: { audiences: ["api://*"] }
  grant: { scopes: ["*"] }
"#,
        )
        .start()
        .await;
    let prior = json!({"sub": WEB, "act": {"sub": "spiffe://cluster.local/ns/edge/sa/gateway"}});
    let delegated = idp.token(&claims_with(&idp, "alice", "orders.read", json!({"act": prior})));

    let resp = check(&h, &delegated, &[("audience", "orders")], &[], None).await;
    assert_forbidden(&resp, "access_denied", "would_drop_act", &["\"launder\"", "would drop the act claim"]);

    // A clean token goes through the same impersonation rule (so it is the act that refuses).
    let clean = idp.token(&idp.claims("alice", "orders.read"));
    let (ok, c) = minted(&h, &check(&h, &clean, &[("audience", "orders")], &[], None).await, "orders").await;
    assert!(c.get("act").is_none(), "{c}");
    assert_eq!(md(&ok, "decision"), "impersonation");

    // An exchange keeps the chain exactly as it was.
    let resp = check(&h, &delegated, &[("audience", "api://x")], &[], None).await;
    let (ok, c) = minted(&h, &resp, "api://x").await;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["act"], prior, "{c}");
    assert_eq!(md(&ok, "decision"), "exchange");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn act_as_shape_puts_the_actor_in_sub_and_the_subject_in_act_as() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules(
            r#"
- name: web-acts-as-user
  match:
    audiences: [legacy]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/*"] }
  grant: { outcome: delegation, delegation_shape: act_as, scopes: ["legacy.*"] }
"#,
        )
        .start()
        .await;
    let token = idp.token(&idp.claims("alice", "legacy.read"));
    let resp = check(&h, &token, &[("audience", "legacy")], &[], Some(WEB)).await;
    let (ok, c) = minted(&h, &resp, "legacy").await;
    assert_eq!(c["sub"], WEB);
    assert_eq!(c["act_as"]["sub"], "alice", "{c}");
    assert_eq!(c["act_as"]["iss"], idp.issuer.as_str(), "{c}");
    assert!(c.get("act").is_none(), "{c}");
    assert_eq!(md(&ok, "decision"), "delegation");
    assert_eq!(md(&ok, "actor"), WEB);
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// Matching: subject claims, audiences, issuers, order, default deny
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_claims_audience_globs_and_issuer_lists_select_a_rule() {
    let idp = MockIdp::start().await;
    let other = MockIdp::start().await;
    let rules = format!(
        r#"
- name: staff-to-order-apis
  match:
    audiences: ["api://orders/*"]
    subject: {{ groups: [staff, sre], sub: ["emp-*"] }}
  grant: {{ scopes: ["*"] }}
- name: partner-reports
  match:
    issuers: ["{other}"]
    audiences: [reports]
  grant: {{ scopes: ["reports.*"] }}
"#,
        other = other.issuer
    );
    let h = Harness::bare().trusted_issuers(&trust(&[&idp, &other])).rules(&rules).start().await;
    let token = |sub: &str, groups: Value| idp.token(&claims_with(&idp, sub, "orders.read", json!({"groups": groups})));

    // groups is one-of (any element), sub is a glob, audience is a glob.
    for (sub, groups) in
        [("emp-7", json!(["customers", "sre"])), ("emp-8", json!(["staff"])), ("emp-9", json!("staff"))]
    {
        let resp = check(&h, &token(sub, groups), &[("audience", "api://orders/v1")], &[], None).await;
        let (ok, c) = minted(&h, &resp, "api://orders/v1").await;
        assert_eq!(c["sub"], sub);
        assert_eq!(md(&ok, "rule"), "staff-to-order-apis");
    }
    // Wrong group, wrong sub, no groups at all, audience outside the glob.
    for (sub, groups, aud) in [
        ("emp-7", json!(["customers"]), "api://orders/v1"),
        ("cust-1", json!(["staff"]), "api://orders/v1"),
        ("emp-7", json!([]), "api://orders/v1"),
        ("emp-7", json!(["staff"]), "api://billing/v1"),
        ("emp-7", json!(["staff"]), "api://orders"),
    ] {
        let resp = check(&h, &token(sub, groups.clone()), &[("audience", aud)], &[], None).await;
        assert_forbidden(&resp, "invalid_target", "no_rule", &[&format!("{aud:?}")]);
    }

    // Issuer list: the partner IdP's token, not ours, even for the same claims.
    let theirs = other.token(&other.claims("alice", "reports.read"));
    let (ok, c) = minted(&h, &check(&h, &theirs, &[("audience", "reports")], &[], None).await, "reports").await;
    assert_eq!(md(&ok, "subject_issuer"), other.issuer);
    assert_eq!(scopes(&c), ["reports.read"]);
    let ours = idp.token(&idp.claims("alice", "reports.read"));
    let resp = check(&h, &ours, &[("audience", "reports")], &[], None).await;
    assert_forbidden(&resp, "invalid_target", "no_rule", &["\"reports\""]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_matching_rule_decides_and_no_match_is_default_deny() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules(
            r#"
- name: vip-orders
  match: { audiences: [orders], subject: { tier: [vip] } }
  grant: { scopes: ["orders.*"], add_claims: { lane: fast } }
- name: orders
  match: { audiences: [orders] }
  grant: { scopes: ["orders.read"], add_claims: { lane: normal } }
- name: billing-wide
  match: { audiences: [billing] }
  grant: { scopes: ["billing.read"], add_claims: { lane: wide } }
- name: billing-vip
  match: { audiences: [billing], subject: { tier: [vip] } }
  grant: { scopes: ["billing.*"], add_claims: { lane: fast } }
"#,
        )
        .start()
        .await;
    let vip = idp.token(&claims_with(
        &idp,
        "alice",
        "orders.read orders.write billing.read billing.write",
        json!({"tier": "vip"}),
    ));
    let plain = idp.token(&claims_with(&idp, "bob", "orders.read orders.write billing.read", json!({"tier": "basic"})));

    let (ok, c) = minted(&h, &check(&h, &vip, &[("audience", "orders")], &[], None).await, "orders").await;
    assert_eq!((md(&ok, "rule"), c["lane"].as_str()), ("vip-orders", Some("fast")));
    assert_eq!(scopes(&c), ["orders.read", "orders.write"]);
    let (ok, c) = minted(&h, &check(&h, &plain, &[("audience", "orders")], &[], None).await, "orders").await;
    assert_eq!((md(&ok, "rule"), c["lane"].as_str()), ("orders", Some("normal")));
    assert_eq!(scopes(&c), ["orders.read"]);

    // The earlier, wider rule wins even where a later one is more specific.
    let (ok, c) = minted(&h, &check(&h, &vip, &[("audience", "billing")], &[], None).await, "billing").await;
    assert_eq!((md(&ok, "rule"), c["lane"].as_str()), ("billing-wide", Some("wide")));
    assert_eq!(scopes(&c), ["billing.read"]);

    // No rule for the audience: default deny, naming the audience.
    let d = assert_forbidden(
        &check(&h, &vip, &[("audience", "payments")], &[], None).await,
        "invalid_target",
        "no_rule",
        &["no rule allows this exchange", "\"payments\""],
    );
    assert!(!d.description().contains("alice"), "descriptions never echo token contents");
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// Scopes, lifetime, claims, downstream tokens
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_is_requested_and_subject_and_rule_intersection_and_lifetime_is_capped() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .tokens("lifetime: 5m")
        .rules(
            r#"
- name: narrow-orders
  match: { audiences: [orders] }
  grant: { scopes: [orders.read, orders.write, profile], max_lifetime: 60s }
"#,
        )
        .start()
        .await;
    let token = idp.token(&idp.claims("alice", "orders.read orders.admin profile email"));

    // requested {orders.read, orders.write, orders.admin, email}
    //   ∩ subject {orders.read, orders.admin, profile, email}
    //   ∩ rule {orders.read, orders.write, profile} = {orders.read}
    let ctx = [("audience", "orders"), ("scope", "orders.read orders.write orders.admin email")];
    let (ok, c) = minted(&h, &check(&h, &token, &ctx, &[], None).await, "orders").await;
    assert_eq!(scopes(&c), ["orders.read"]);
    assert_eq!(md(&ok, "scope"), "orders.read");
    let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
    assert!(exp - iat <= 60 && exp - iat > 0, "rule max_lifetime 60s: {}", exp - iat);

    // Nothing requested: subject ∩ rule.
    let (_, c) = minted(&h, &check(&h, &token, &[("audience", "orders")], &[], None).await, "orders").await;
    assert_eq!(scopes(&c), ["orders.read", "profile"]);

    // Empty intersection: invalid_scope naming the rule.
    for requested in ["orders.write", "orders.admin", "email", "nothing.at.all"] {
        let resp = check(&h, &token, &[("audience", "orders"), ("scope", requested)], &[], None).await;
        assert_forbidden(
            &resp,
            "invalid_scope",
            "no_scope",
            &["\"narrow-orders\"", "grants none of the requested scopes"],
        );
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_and_added_claims_and_downstream_tokens() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules(
            r#"
- name: checkout
  match: { audiences: [orders] }
  grant:
    scopes: ["orders.*", "payments.*"]
    copy_claims: [email, groups, not_in_token]
    add_claims: { tenant: acme, plan: { level: 2 } }
    downstream_tokens:
      - { audience: payments, header: x-payments-token, scopes: ["payments.read"] }
"#,
        )
        .start()
        .await;
    let subject = claims_with(
        &idp,
        "alice",
        "orders.read payments.read payments.write",
        json!({"email": "alice@example.com", "groups": ["customers", "beta"], "secret": "do-not-copy"}),
    );
    let resp = check(&h, &idp.token(&subject), &[("audience", "orders")], &[], None).await;
    let (ok, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["groups"], json!(["customers", "beta"]));
    assert_eq!(c["tenant"], "acme");
    assert_eq!(c["plan"], json!({"level": 2}));
    assert!(c.get("not_in_token").is_none() && c.get("secret").is_none(), "{c}");
    assert_eq!(scopes(&c), ["orders.read", "payments.read", "payments.write"]);

    // The downstream token: its own header (bare), its own audience, narrower scope.
    let mutation = ok.header("x-payments-token");
    let down = mutation.header.as_ref().unwrap().value.clone();
    assert!(!down.starts_with("Bearer "), "downstream headers carry the bare token");
    let (_, d) = h.verify_minted(&down, "payments").await;
    assert_eq!(d["iss"], STS_ISSUER);
    assert_eq!(d["sub"], "alice");
    assert_eq!(d["aud"], "payments");
    assert_eq!(scopes(&d), ["payments.read"]);
    assert_ne!(d["jti"], c["jti"], "each token has its own jti");
    assert!(d["exp"].as_i64().unwrap() <= c["exp"].as_i64().unwrap());
    // Each token is only for its own audience.
    assert!(!verifies_for(&h, &down, "orders").await, "the downstream token is not for orders");
    assert!(!verifies_for(&h, &ok.bearer(), "payments").await, "the main token is not for payments");
    assert!(!ok.headers_to_remove.contains(&"x-payments-token".to_owned()));
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// Actor tokens, spoofing, conflicts
// ---------------------------------------------------------------------------

const ANY_ACTOR_DELEGATES: &str = r#"
- name: delegate-orders
  match: { audiences: [orders] }
  grant: { outcome: delegation, scopes: ["orders.*"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_token_from_an_untrusted_issuer_is_401() {
    let idp = MockIdp::start().await;
    let stranger = MockIdp::start().await; // not in trusted_issuers
    let h = Harness::builder(&idp).ext_authz(ACTOR_TOKENS).rules(ANY_ACTOR_DELEGATES).start().await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let ctx = [("audience", "orders")];

    // The stranger's own token: an issuer stsgate does not trust.
    let foreign = stranger.token(&stranger.claims("svc-a", ""));
    let resp = check(&h, &subject, &ctx, &[("x-actor-token", &foreign)], None).await;
    let d = assert_invalid_token(&resp, "actor token:");
    assert!(d.description().contains("issuer is not trusted"), "{}", d.description());

    // The stranger's key claiming the trusted issuer: the signature does not verify.
    let mut claims = stranger.claims("svc-a", "");
    claims["iss"] = json!(idp.issuer);
    let forged = stranger.token(&claims);
    let d = assert_invalid_token(&check(&h, &subject, &ctx, &[("x-actor-token", &forged)], None).await, "actor token:");
    assert!(d.description().contains("signature"), "{}", d.description());

    // Unsigned, and expired, actor tokens.
    let none = forge_none(&idp.claims("svc-a", ""));
    assert_invalid_token(&check(&h, &subject, &ctx, &[("x-actor-token", &none)], None).await, "actor token:");
    let mut expired = idp.claims("svc-a", "");
    expired["exp"] = json!(now() - 3600);
    let expired = idp.token(&expired);
    assert_invalid_token(&check(&h, &subject, &ctx, &[("x-actor-token", &expired)], None).await, "actor token:");

    // The same actor from the trusted IdP is accepted: act names sub and iss.
    let good = idp.token(&idp.claims("svc-a", ""));
    let (ok, c) = minted(&h, &check(&h, &subject, &ctx, &[("x-actor-token", &good)], None).await, "orders").await;
    assert_eq!(c["act"], json!({"sub": "svc-a", "iss": idp.issuer}));
    assert_eq!(md(&ok, "actor"), "svc-a");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_identity_claimed_by_plain_headers_is_ignored() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules(
            r#"
- name: admin-delegates
  match:
    audiences: [orders]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/sa/admin"] }
  grant: { outcome: delegation, scopes: ["orders.*"] }
- name: plain-apis
  match: { audiences: ["api://*"] }
  grant: { scopes: ["*"] }
"#,
        )
        .start()
        .await;
    let xfcc = format!("By=spiffe://cluster.local/ns/shop/sa/orders;Hash=abc123;Subject=\"\";URI={ADMIN_SA}");
    let act_json = json!({"sub": ADMIN_SA}).to_string();
    let spoof: Vec<(&str, &str)> = vec![
        ("x-forwarded-client-cert", &xfcc),
        ("x-spiffe-id", ADMIN_SA),
        ("x-envoy-peer-principal", ADMIN_SA),
        ("x-actor", ADMIN_SA),
        ("act", &act_json),
        ("x-act", &act_json),
    ];
    let token = idp.token(&idp.claims("alice", "orders.read profile"));

    // No source.principal: the delegation rule for admin has no actor to match.
    let resp = check(&h, &token, &[("audience", "orders")], &spoof, None).await;
    assert_forbidden(&resp, "invalid_target", "no_rule", &["\"orders\""]);

    // Peer fields other than the principal are not an identity either.
    let mut req = request(&token, &[("audience", "orders")], &spoof, None);
    req.attributes.as_mut().unwrap().source = Some(Peer {
        service: ADMIN_SA.into(),
        labels: [("spiffe".to_owned(), ADMIN_SA.to_owned())].into_iter().collect(),
        ..Default::default()
    });
    assert_forbidden(&h.check_request(req).await, "invalid_target", "no_rule", &["\"orders\""]);

    // An exchange with the same headers: no actor, no act.
    let (ok, c) = minted(&h, &check(&h, &token, &[("audience", "api://x")], &spoof, None).await, "api://x").await;
    assert!(c.get("act").is_none(), "{c}");
    assert_eq!(ok.metadata.get("actor"), None, "no actor");
    assert_eq!(md(&ok, "decision"), "exchange");

    // A delegated subject token plus a header claiming another act: the token's
    // own chain is carried unchanged, and the header counts for nothing.
    let prior = json!({"sub": WEB});
    let delegated = idp.token(&claims_with(&idp, "alice", "orders.read profile", json!({"act": prior})));
    let (_, c) = minted(&h, &check(&h, &delegated, &[("audience", "api://x")], &spoof, None).await, "api://x").await;
    assert_eq!(c["act"], prior, "{c}");
    let resp = check(&h, &delegated, &[("audience", "orders")], &spoof, None).await;
    assert_forbidden(&resp, "invalid_target", "no_rule", &["\"orders\""]);

    // The real peer still works, and the headers change nothing about it.
    let (ok, c) =
        minted(&h, &check(&h, &delegated, &[("audience", "orders")], &spoof, Some(ADMIN_SA)).await, "orders").await;
    assert_eq!(c["act"], json!({"sub": ADMIN_SA, "act": prior}));
    assert_eq!(md(&ok, "actor"), ADMIN_SA);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_and_actor_token_must_name_the_same_party() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).ext_authz(ACTOR_TOKENS).rules(ANY_ACTOR_DELEGATES).start().await;
    let subject = idp.token(&idp.claims("alice", "orders.read"));
    let ctx = [("audience", "orders")];

    let orders_token = idp.token(&idp.claims(ORDERS_SA, ""));
    let resp = check(&h, &subject, &ctx, &[("x-actor-token", &orders_token)], Some(WEB)).await;
    assert_forbidden(&resp, "access_denied", "actor_conflict", &["actor identities disagree"]);

    let web_token = idp.token(&idp.claims(WEB, ""));
    let resp = check(&h, &subject, &ctx, &[("x-actor-token", &web_token)], Some(WEB)).await;
    let (ok, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["sub"], "alice");
    assert_eq!(c["act"], json!({"sub": WEB, "iss": idp.issuer}), "the token actor, with its issuer: {c}");
    assert_eq!(md(&ok, "actor"), WEB);
    assert!(ok.headers_to_remove.contains(&"x-actor-token".to_owned()));

    // A route that consults only the peer ignores the actor token (no conflict, no iss).
    let resp = check(
        &h,
        &subject,
        &[("audience", "orders"), ("actor", "peer")],
        &[("x-actor-token", &orders_token)],
        Some(WEB),
    )
    .await;
    let (_, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["act"], json!({"sub": WEB}));
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_subject_does_not_inherit_the_operators_copied_claims() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .ext_authz(ACTOR_TOKENS)
        .rules(
            r#"
- name: support-impersonates-customers
  match:
    subject: { groups: [sre] }
    actor: { sub: [ops-console] }
  grant:
    outcome: impersonation
    scopes: ["orders.read"]
    impersonate_subjects: ["user-*"]
    copy_claims: [email, groups]
    add_claims: { via: support }
"#,
        )
        .start()
        .await;
    let operator = idp.token(&claims_with(
        &idp,
        "operator",
        "orders.read",
        json!({"groups": ["sre"], "email": "operator@corp.example"}),
    ));
    let console = idp.token(&idp.claims("ops-console", ""));
    let ctx = [("audience", "orders")];

    // As user-123: the operator's email and groups describe the operator, not
    // user-123, and must not be minted into user-123's token.
    let resp =
        check(&h, &operator, &ctx, &[("x-actor-token", &console), ("x-requested-subject", "user-123")], None).await;
    let (_, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["sub"], "user-123");
    assert!(c.get("groups").is_none(), "user-123 must not carry the operator's groups: {c}");
    assert!(c.get("email").is_none(), "user-123 must not carry the operator's email: {c}");
    assert_eq!(c["via"], "support", "static claims are still added");

    // Without another subject the token is about the operator: claims are copied.
    let resp = check(&h, &operator, &ctx, &[("x-actor-token", &console)], None).await;
    let (_, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["sub"], "operator");
    assert_eq!(c["groups"], json!(["sre"]));
    assert_eq!(c["email"], "operator@corp.example");
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// Two IdPs: actor tokens are believed only from the issuers a rule admits,
// and minted tokens say whose subject they carry (security review, issue #9)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_token_from_another_idp_cannot_impersonate_or_satisfy_may_act() {
    let idp = MockIdp::start().await;
    let other = MockIdp::start().await;
    let rules = format!(
        r#"
- name: support-impersonates-customers
  match:
    issuers: ["{idp}"]
    audiences: [orders]
    actor: {{ sub: [support-console] }}
  grant:
    outcome: impersonation
    scopes: ["orders.read"]
    impersonate_subjects: ["user-*"]
    audit_claim: impersonated_by
- name: payments-delegates
  match:
    audiences: [payments]
    actor: {{ issuers: ["{idp}", "{other}"] }}
  grant: {{ outcome: delegation, scopes: ["payments.*"] }}
"#,
        idp = idp.issuer,
        other = other.issuer
    );
    let h = Harness::bare().trusted_issuers(&trust(&[&idp, &other])).ext_authz(ACTOR_TOKENS).rules(&rules).start().await;
    let operator = idp.token(&claims_with(&idp, "operator", "orders.read", json!({"groups": ["sre"]})));
    let console = |from: &MockIdp| {
        from.token(&claims_with(from, "support-console", "", json!({"client_id": format!("console@{}", from.issuer)})))
    };
    let ctx = [("audience", "orders")];

    // The other IdP's support-console is not ours: no impersonation.
    let resp = check(
        &h,
        &operator,
        &ctx,
        &[("x-actor-token", &console(&other)), ("x-requested-subject", "user-123")],
        None,
    )
    .await;
    assert_forbidden(&resp, "access_denied", "impersonation_refused", &["impersonating another subject"]);

    // Ours is: the audit claim and sub_id name the issuers, client_id is the console's.
    let resp =
        check(&h, &operator, &ctx, &[("x-actor-token", &console(&idp)), ("x-requested-subject", "user-123")], None)
            .await;
    let (ok, c) = minted(&h, &resp, "orders").await;
    assert_eq!(c["sub"], "user-123");
    assert_eq!(c["impersonated_by"], json!({"sub": "support-console", "iss": idp.issuer}), "{c}");
    assert_eq!(c["sub_id"], json!({"format": "iss_sub", "iss": idp.issuer, "sub": "user-123"}), "{c}");
    assert_eq!(c["client_id"], format!("console@{}", idp.issuer));
    assert_eq!(md(&ok, "decision"), "impersonation");

    // may_act without iss names a party of the subject token's own IdP, even
    // where the rule admits actor tokens from both.
    let alice = idp.token(&claims_with(&idp, "alice", "payments.read", json!({"may_act": {"sub": "svc-pay"}})));
    let pay = |from: &MockIdp| {
        from.token(&claims_with(from, "svc-pay", "", json!({"client_id": format!("pay@{}", from.issuer)})))
    };
    let resp = check(&h, &alice, &[("audience", "payments")], &[("x-actor-token", &pay(&other))], None).await;
    assert_forbidden(&resp, "access_denied", "may_act", &["may_act does not admit this actor"]);
    let resp = check(&h, &alice, &[("audience", "payments")], &[("x-actor-token", &pay(&idp))], None).await;
    let (_, c) = minted(&h, &resp, "payments").await;
    assert_eq!(c["act"], json!({"sub": "svc-pay", "iss": idp.issuer}), "{c}");
    assert_eq!(c["client_id"], format!("pay@{}", idp.issuer));

    // An actor token from an issuer the rule does not admit contributes
    // nothing: not its iss, not its client_id; the request is refused.
    let bob = other.token(&claims_with(&other, "bob", "orders.read", json!({"client_id": "bob-app"})));
    let resp = check(&h, &bob, &ctx, &[("x-actor-token", &console(&idp))], None).await;
    assert_forbidden(&resp, "invalid_target", "no_rule", &["\"orders\""]);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_sub_from_two_idps_is_told_apart_by_sub_id() {
    let idp = MockIdp::start().await;
    let other = MockIdp::start().await;
    let h = Harness::bare()
        .trusted_issuers(&trust(&[&idp, &other]))
        .rules(
            r#"
- name: any-idp
  match: { audiences: [orders] }
  grant:
    scopes: ["orders.*", "payments.*"]
    downstream_tokens:
      - { audience: payments, header: x-payments-token, scopes: ["payments.*"] }
"#,
        )
        .start()
        .await;
    for from in [&idp, &other] {
        let admin = from.token(&from.claims("admin", "orders.read payments.read"));
        let resp = check(&h, &admin, &[("audience", "orders")], &[], None).await;
        let (ok, c) = minted(&h, &resp, "orders").await;
        let want = json!({"format": "iss_sub", "iss": from.issuer, "sub": "admin"});
        assert_eq!(c["sub"], "admin");
        assert_eq!(c["sub_id"], want, "{c}");
        // stsgate's own downstream tokens say it too.
        let (_, d) = h.verify_minted(&ok.header_value("x-payments-token"), "payments").await;
        assert_eq!(d["sub_id"], want, "{d}");
    }
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_token_expiring_inside_the_leeway_is_named_and_nothing_is_minted() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .issuer_option("leeway: 60s")
        .ext_authz(ACTOR_TOKENS)
        .rules(SUPPORT_IMPERSONATES)
        .start()
        .await;
    let operator = idp.token(&claims_with(&idp, "operator", "orders.read", json!({"groups": ["sre"]})));
    // Expired 10 seconds ago: valid inside the leeway, but nothing left to hand on.
    let mut console = idp.claims("ops-console", "");
    console["exp"] = json!(now() - 10);
    console["iat"] = json!(now() - 100);
    console["nbf"] = json!(now() - 100);
    let console = idp.token(&console);
    let resp = check(
        &h,
        &operator,
        &[("audience", "orders")],
        &[("x-actor-token", &console), ("x-requested-subject", "user-123")],
        None,
    )
    .await;
    let d = assert_invalid_token(&resp, "actor token: token has expired");
    assert_eq!(d.description(), "actor token: token has expired");
    h.shutdown().await;
}
