//! `stsgate explain`: the dry run users reach for when a request is refused.
//! It must fetch the IdP's keys like the server, show each rule's verdict and
//! the claims that would be minted, and exit non-zero on a refusal.

mod support;

use std::process::Command;

use serde_json::Value;
use support::*;

const BIN: &str = env!("CARGO_BIN_EXE_stsgate");
const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

fn config(idp: &MockIdp) -> String {
    format!(
        r#"
issuer: https://sts.test
signing:
  keys: [{{ kid: k1, ephemeral: true }}]
trusted_issuers:
  - issuer: {iss}
    jwks_url: {jwks}
rules:
  - name: gateway-exchange
    match: {{ audiences: ["api://*"] }}
    grant: {{ scopes: ["*"] }}
  - name: web-delegates-to-orders
    match:
      audiences: [orders]
      actor: {{ spiffe: ["spiffe://cluster.local/ns/shop/sa/*"] }}
    grant: {{ outcome: delegation, scopes: ["orders.*"], max_lifetime: 1m }}
"#,
        iss = idp.issuer,
        jwks = idp.jwks_url()
    )
}

async fn explain(idp: &MockIdp, args: &[&str]) -> (i32, Value) {
    let dir = TempDir::new("explain");
    let cfg = dir.write("config.yaml", config(idp));
    run_explain(&cfg, args).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_delegation_shows_the_rule_trace_and_the_claims() {
    let idp = MockIdp::start().await;
    let token = idp.token(&idp.claims("alice", "orders.read profile"));
    let (code, out) = explain(&idp, &["--subject-token", &token, "--audience", "orders", "--peer", WEB]).await;
    assert_eq!(code, 0, "{out:#}");
    assert_eq!(out["allowed"], true);
    assert_eq!(out["outcome"], "delegation");
    assert_eq!(out["rule"], "web-delegates-to-orders");
    assert_eq!(out["claims"]["sub"], "alice");
    assert_eq!(out["claims"]["act"]["sub"], WEB);
    assert_eq!(out["claims"]["scope"], "orders.read");
    assert_eq!(out["claims"]["iss"], "https://sts.test");
    let rules = out["rules"].as_array().unwrap();
    assert_eq!(rules[0]["matches"], false);
    assert!(rules[0]["why_not"].as_str().unwrap().contains("audience"), "{out:#}");
    assert_eq!(rules[1]["matches"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_names_each_rules_failed_condition_and_exits_2() {
    let idp = MockIdp::start().await;
    let token = idp.token(&idp.claims("alice", "orders.read"));
    let intruder = "spiffe://cluster.local/ns/evil/sa/x";
    let (code, out) = explain(&idp, &["--subject-token", &token, "--audience", "orders", "--peer", intruder]).await;
    assert_eq!(code, 2, "{out:#}");
    assert_eq!(out["allowed"], false);
    assert!(out["reason"].as_str().unwrap().contains("no rule allows"), "{out:#}");
    let why: Vec<&str> = out["rules"].as_array().unwrap().iter().map(|r| r["why_not"].as_str().unwrap()).collect();
    assert!(why[0].contains("audience"), "{why:?}");
    assert!(why[1].contains("is not listed"), "{why:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_subject_token_is_explained_at_its_stage() {
    let idp = MockIdp::start().await;
    let mut claims = idp.claims("alice", "orders.read");
    claims["exp"] = serde_json::json!(now() - 3600);
    let (code, out) = explain(&idp, &["--subject-token", &idp.token(&claims), "--audience", "api://x"]).await;
    assert_eq!(code, 2);
    assert_eq!(out["stage"], "subject_token");
    assert_eq!(out["reason"], "token has expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_token_from_another_idp_is_explained_and_an_impersonation_shows_its_audit() {
    let (idp, other) = (MockIdp::start().await, MockIdp::start().await);
    let dir = TempDir::new("explain");
    let cfg = dir.write(
        "config.yaml",
        format!(
            r#"
issuer: https://sts.test
signing:
  keys: [{{ kid: k1, ephemeral: true }}]
trusted_issuers:
  - {{ issuer: "{a}", jwks_url: "{a_jwks}" }}
  - {{ issuer: "{b}", jwks_url: "{b_jwks}" }}
ext_authz: {{ requested_subject_header: x-requested-subject }}
rules:
  - name: support
    match: {{ actor: {{ sub: [support-console] }} }}
    grant: {{ outcome: impersonation, scopes: ["*"], impersonate_subjects: ["user-*"] }}
"#,
            a = idp.issuer,
            a_jwks = idp.jwks_url(),
            b = other.issuer,
            b_jwks = other.jwks_url()
        ),
    );
    let run = |args: Vec<String>| {
        let cfg = cfg.clone();
        async move {
            let mut cmd = Command::new(BIN);
            cmd.arg("explain").arg("--config").arg(&cfg).args(&args);
            let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
            let json: Value = serde_json::from_slice(&out.stdout).expect("explain prints JSON");
            (out.status.code().unwrap_or(-1), json)
        }
    };
    let operator = idp.token(&idp.claims("operator", "orders.read"));
    let args = |actor: &str| {
        ["--subject-token", &operator, "--actor-token", actor, "--audience", "orders", "--requested-subject", "user-1"]
            .map(String::from)
            .to_vec()
    };

    let (code, out) = run(args(&other.token(&other.claims("support-console", "")))).await;
    assert_eq!(code, 2, "{out:#}");
    let why = out["rules"][0]["why_not"].as_str().unwrap();
    assert!(why.contains("actor token issuer") && why.contains(&other.issuer), "{out:#}");
    assert!(out.get("audit").is_none(), "{out:#}");

    let (code, out) = run(args(&idp.token(&idp.claims("support-console", "")))).await;
    assert_eq!(code, 0, "{out:#}");
    assert_eq!(out["claims"]["sub_id"], serde_json::json!({"format": "iss_sub", "iss": idp.issuer, "sub": "user-1"}));
    let audit = out["audit"].as_str().unwrap();
    let jti = out["claims"]["jti"].as_str().unwrap();
    assert!(audit.contains(jti) && audit.contains(&idp.issuer) && audit.contains("\"user-1\""), "{audit}");
}
