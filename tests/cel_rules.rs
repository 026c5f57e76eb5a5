//! CEL policy expressions in rules (`match.condition`,
//! `grant.computed_claims`), through a real stsgate at both doors with real
//! tokens: the README's worked examples, and a cache that never hands an
//! answer to a request the rules would answer differently.

mod support;

use serde_json::{Value, json};
use stsgate::pb::envoy::service::auth::v3::CheckResponse;
use support::*;

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";

/// The README's examples: read-only methods get read scopes, the tenant in
/// the token must be the route's, a tenant claim computed from the email.
const RULES: &str = r#"
- name: tenant-reads
  match:
    audiences: [orders]
    condition: >-
      request.method in ['GET', 'HEAD'] && subject.tenant == request.context.tenant
  grant:
    scopes: ["orders.read"]
    computed_claims:
      tenant: "subject.email.split('@')[1].split('.')[0]"
- name: tenant-writes
  match:
    audiences: [orders]
    condition: "subject.tenant == request.context.tenant"
  grant:
    scopes: ["orders.*"]
- name: debug-header
  match:
    audiences: [debug]
    condition: "request.headers['x-debug'] == 'on' && 'sre' in subject.groups"
  grant:
    scopes: ["*"]
- name: plain
  match:
    audiences: [plain]
  grant:
    scopes: ["*"]
- name: token-endpoint
  match:
    audiences: [billing]
    condition: "request == null && subject.tenant == 'acme'"
  grant:
    scopes: ["billing.*"]
    computed_claims:
      tenant: "subject.tenant"
      roles: "subject.groups.filter(g, g.startsWith('billing-'))"
"#;

fn jti(token: &str) -> String {
    let (_, claims) = peek(token);
    claims["jti"].as_str().unwrap().to_owned()
}

fn alice(idp: &MockIdp) -> String {
    let mut c = idp.claims("alice", "orders.read orders.write billing.read");
    c["tenant"] = json!("acme");
    c["email"] = json!("alice@acme.example");
    c["groups"] = json!(["sre", "billing-admin", "dev"]);
    idp.token(&c)
}

async fn check(
    h: &Harness,
    token: &str,
    method: &str,
    audience: &str,
    tenant: &str,
    headers: &[(&str, &str)],
) -> CheckResponse {
    let req = request_to("orders.shop", "/orders")
        .method(method)
        .bearer(token)
        .headers(headers.iter().copied())
        .context("audience", audience)
        .context("tenant", tenant)
        .build();
    h.check_request(req).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_and_computed_claims_at_the_check() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).rules(RULES).start().await;
    let token = alice(&idp);

    // A read on the user's own tenant: read scope and the computed tenant.
    let get = allowed(&check(&h, &token, "GET", "orders", "acme", &[]).await).bearer();
    let (_, claims) = h.verify_minted(&get, "orders").await;
    assert_eq!(claims["scope"], "orders.read");
    assert_eq!(claims["tenant"], "acme");
    // A write on it: the write rule, all orders scopes, no computed claim.
    let post = allowed(&check(&h, &token, "POST", "orders", "acme", &[]).await).bearer();
    let (_, claims) = h.verify_minted(&post, "orders").await;
    assert_eq!(claims["scope"], "orders.read orders.write");
    assert!(claims.get("tenant").is_none(), "{claims}");
    // Another tenant's route: no rule.
    let d = denial(&check(&h, &token, "GET", "orders", "globex", &[]).await);
    assert!(d.description().contains("no rule allows"), "{}", d.description());
    // A token without the claim: an evaluation error, never an allow.
    let no_tenant = idp.token(&idp.claims("bob", "orders.read"));
    denial(&check(&h, &no_tenant, "GET", "orders", "acme", &[]).await);

    // Header conditions.
    allowed(&check(&h, &token, "GET", "debug", "acme", &[("x-debug", "on")]).await);
    denial(&check(&h, &token, "GET", "debug", "acme", &[("x-debug", "off")]).await);
    denial(&check(&h, &token, "GET", "debug", "acme", &[]).await);
    // The token endpoint's rule reads `request == null`: never at the Check.
    denial(&check(&h, &token, "GET", "billing", "acme", &[]).await);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cache_key_holds_every_attribute_an_expression_reads() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).rules(RULES).start().await;
    let token = alice(&idp);

    // Differ only in the method: different rules, never one cached answer.
    let get = allowed(&check(&h, &token, "GET", "orders", "acme", &[]).await).bearer();
    let post = allowed(&check(&h, &token, "POST", "orders", "acme", &[]).await).bearer();
    assert_ne!(jti(&get), jti(&post));
    assert_eq!(peek(&post).1["scope"], "orders.read orders.write");
    // In a header an expression reads: allowed, then refused, not the cached allow.
    allowed(&check(&h, &token, "GET", "debug", "acme", &[("x-debug", "on")]).await);
    denial(&check(&h, &token, "GET", "debug", "acme", &[("x-debug", "off")]).await);
    // In a context extension an expression reads: refused, not the cached allow.
    denial(&check(&h, &token, "GET", "orders", "globex", &[]).await);
    // The same request again is answered from cache.
    assert_eq!(allowed(&check(&h, &token, "GET", "orders", "acme", &[]).await).bearer(), get);
    // A header no expression reads does not split the cache.
    let with_id = check(&h, &token, "GET", "orders", "acme", &[("x-request-id", "42")]).await;
    assert_eq!(allowed(&with_id).bearer(), get);
    // A rule without request reads answers identical requests from cache.
    let plain = allowed(&check(&h, &token, "GET", "plain", "acme", &[]).await).bearer();
    assert_eq!(allowed(&check(&h, &token, "GET", "plain", "acme", &[]).await).bearer(), plain);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditions_and_computed_claims_at_the_token_endpoint() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).rules(RULES).start().await;
    let token = alice(&idp);
    let post = |audience: &'static str, token: String| {
        let h = &h;
        async move {
            let mut s = form_urlencoded::Serializer::new(String::new());
            for (k, v) in
                [("grant_type", GRANT), ("subject_token", &token), ("subject_token_type", AT), ("audience", audience)]
            {
                s.append_pair(k, v);
            }
            let resp = h
                .http
                .post(h.url("/token"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(s.finish())
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        }
    };
    let (status, body) = post("billing", token.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (_, claims) = h.verify_minted(body["access_token"].as_str().unwrap(), "billing").await;
    assert_eq!(claims["tenant"], "acme");
    assert_eq!(claims["roles"], json!(["billing-admin"]));
    assert_eq!(claims["scope"], "billing.read");
    // A rule that reads `request.*` never matches here: `request` is null.
    let (status, body) = post("orders", token.clone()).await;
    assert_eq!((status, body["error"].as_str()), (400, Some("invalid_target")), "{body}");
    // Another tenant: no rule.
    let mut other = idp.claims("carol", "billing.read");
    other["tenant"] = json!("globex");
    let (status, _) = post("billing", idp.token(&other)).await;
    assert_ne!(status, 200);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_with_a_bad_expression_is_refused_with_its_key_path() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp).rules(RULES).start().await;
    let bad =
        h.yaml.replace("subject.tenant == request.context.tenant\"", "subject.tenant == requests.context.tenant\"");
    assert_ne!(bad, h.yaml);
    let err = h.reload_yaml(&bad).await.expect_err("an unknown variable is refused").to_string();
    assert!(err.contains("rules[1].match.condition") && err.contains("unknown variable \"requests\""), "{err}");
    let bad = h.yaml.replace("      tenant: \"subject.tenant\"", "      sub: \"subject.tenant\"");
    let err = h.reload_yaml(&bad).await.expect_err("a reserved claim is refused").to_string();
    assert!(err.contains("rules[4].grant.computed_claims.sub"), "{err}");
    h.shutdown().await;
}

/// `stsgate explain` with request attributes: each expression's value or
/// error, the verdicts, and what the cache key holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_shows_each_expression_and_takes_request_attributes() {
    let idp = MockIdp::start().await;
    let token = alice(&idp);
    let dir = TempDir::new("cel-explain");
    let cfg = dir.write(
        "config.yaml",
        format!(
            "issuer: https://sts.test\nsigning:\n  keys: [{{ kid: k1, ephemeral: true }}]\n\
             trusted_issuers:\n  - issuer: {}\n    jwks_url: {}\nrules:\n{}",
            idp.issuer,
            idp.jwks_url(),
            RULES.lines().map(|l| format!("  {l}\n")).collect::<String>()
        ),
    );
    let run = |args: Vec<String>| {
        let cfg = cfg.clone();
        async move { run_explain(&cfg, &args).await }
    };
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = ["--subject-token", &token, "--audience", "debug"].map(String::from).to_vec();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let (code, out) =
        run(args(&["--method", "GET", "--path", "/x", "--header", "X-Debug: on", "--context", "tenant=acme"])).await;
    assert_eq!((code, &out["rule"]), (0, &json!("debug-header")), "{out:#}");
    let exprs = out["expressions"].as_array().unwrap();
    let value = |rule: &str, at: &str| {
        exprs.iter().find(|e| e["rule"] == rule && e["at"] == at).map(|e| e["value"].as_str().unwrap().to_owned())
    };
    assert_eq!(value("tenant-reads", "match.condition").as_deref(), Some("true"));
    assert_eq!(value("debug-header", "match.condition").as_deref(), Some("true"));
    assert_eq!(value("tenant-reads", "grant.computed_claims.tenant").as_deref(), Some("\"acme\""));
    assert_eq!(value("token-endpoint", "match.condition").as_deref(), Some("false"));
    let cache = out["cache"].as_str().unwrap();
    assert!(cache.contains("request.method") && cache.contains("request.headers[\"x-debug\"]"), "{cache}");

    // Without the header: an error, shown, and the rule's reason names it.
    let (code, out) = run(args(&["--method", "GET"])).await;
    assert_eq!(code, 2, "{out:#}");
    let debug = out["rules"].as_array().unwrap().iter().find(|r| r["rule"] == "debug-header").unwrap();
    assert!(debug["why_not"].as_str().unwrap().starts_with("match.condition failed: No such key"), "{debug}");
    let exprs = out["expressions"].as_array().unwrap();
    let shown = exprs.iter().find(|e| e["rule"] == "debug-header").unwrap();
    assert!(shown["value"].as_str().unwrap().starts_with("error: "), "{shown}");

    // A malformed --header is a precise error, not a panic.
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stsgate"));
    cmd.arg("explain").arg("--config").arg(&cfg).args(args(&["--header", "no-colon"]));
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expected `name: value`"));
}

/// `actor.claims`: an actor token's claims decide, and two actor tokens of
/// the same party that differ in a claim an expression reads never share a
/// cached answer (the cache key holds what is read, not only who acts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_token_claims_decide_and_split_the_cache() {
    let idp = MockIdp::start().await;
    let rules = r#"
- name: by-env
  match:
    audiences: [orders]
    actor: { sub: [svc-web] }
    condition: "actor.kind == 'token' && actor.claims.env == 'prod' && has(actor.claims.team)"
  grant:
    outcome: delegation
    scopes: ["orders.*"]
    computed_claims:
      team: "actor.claims.team"
"#;
    let h = Harness::builder(&idp).ext_authz("actor: { token_header: x-actor-token }").rules(rules).start().await;
    let token = alice(&idp);
    let actor = |env: &str, team: Option<&str>| {
        let mut c = idp.claims("svc-web", "");
        c["env"] = json!(env);
        if let Some(t) = team {
            c["team"] = json!(t);
        }
        idp.token(&c)
    };
    let (prod, staging, anonymous) = (actor("prod", Some("web")), actor("staging", Some("web")), actor("prod", None));
    let with = |a: &str| {
        let req = request_to("orders.shop", "/orders")
            .bearer(&token)
            .header("x-actor-token", a)
            .context("audience", "orders")
            .build();
        h.check_request(req)
    };
    let minted = allowed(&with(&prod).await).bearer();
    let (_, claims) = h.verify_minted(&minted, "orders").await;
    assert_eq!((&claims["team"], &claims["act"]["sub"]), (&json!("web"), &json!("svc-web")), "{claims}");
    // Same actor `sub`, issuer and client: only the read claim differs.
    let d = denial(&with(&staging).await);
    assert!(d.description().contains("no rule allows"), "{}", d.description());
    denial(&with(&anonymous).await);
    // The same actor token again is answered from cache.
    assert_eq!(allowed(&with(&prod).await).bearer(), minted);
    h.shutdown().await;
}
