//! Table-driven tests of the rule engine.

use serde_json::{Value, json};

use super::*;
use crate::trust::claims::Claims;
use crate::trust::validator::Validated;

/// `decide` with the variables of its own request.
fn decide(rule: &Rule, input: &RuleInput<'_>, req: Requester<'_>) -> Result<Decision, Denied> {
    super::decide(rule, input, req, &cel::Vars::new(input, req.client, req.request))
}

const IDP: &str = "https://idp.example";

fn rules(yaml: &str) -> Vec<Rule> {
    serde_yaml_ng::from_str(yaml).expect("test rules parse")
}

/// A `Validated` from claims (iss and sub default to the test IdP's alice);
/// also used by the property tests.
pub(super) fn subject(claims: Value) -> Validated {
    let mut claims = claims;
    let obj = claims.as_object_mut().unwrap();
    obj.entry("iss").or_insert(json!(IDP));
    obj.entry("sub").or_insert(json!("alice"));
    let parsed = Claims::from_json(&claims.to_string()).unwrap();
    let scopes = parsed
        .scope
        .as_ref()
        .and_then(Value::as_str)
        .map(|s| s.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .unwrap_or_default();
    Validated {
        issuer: parsed.iss.clone().unwrap(),
        sub: parsed.sub.clone().unwrap(),
        exp: 4_000_000_000,
        scopes,
        client_id: parsed.client_id.clone(),
        claims: parsed,
        own_sub_id: None,
    }
}

fn peer(id: &str) -> Actor {
    Actor { kind: ActorKind::Peer, sub: id.into(), iss: None, client_id: None, token: None }
}

fn token_actor(sub: &str, iss: &str, client_id: Option<&str>) -> Actor {
    Actor {
        kind: ActorKind::Token,
        sub: sub.into(),
        iss: Some(iss.into()),
        client_id: client_id.map(Into::into),
        token: None,
    }
}

fn input<'a>(subject: &'a Validated, actor: Option<&'a Actor>, audience: &'a str) -> RuleInput<'a> {
    RuleInput { subject, actor, audience, requested_scopes: None, requested_subject: None, workloads: &[] }
}

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

const MESH: &str = r#"
- name: web-delegates-to-orders
  match:
    audiences: [orders]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/sa/*"] }
  grant: { outcome: delegation, scopes: ["orders.*"], max_lifetime: 2m }
- name: admins-impersonate
  match:
    subject: { groups: [sre, admins] }
    actor: { sub: [ops-console] }
  grant:
    outcome: impersonation
    scopes: ["*"]
    impersonate_subjects: ["user-*"]
    audit_claim: impersonated_by
- name: external-to-internal
  match:
    issuers: ["https://idp.example"]
    audiences: ["api://*"]
    subject: { sub: ["alice", "bob"] }
  grant:
    scopes: [profile, "orders.read"]
    copy_claims: [email, groups]
    add_claims: { tenant: acme }
"#;

#[test]
fn each_match_dimension_and_default_deny() {
    let rs = rules(MESH);
    let alice = subject(json!({"scope": "orders.read orders.write profile", "email": "a@x", "groups": ["dev"]}));
    let carol = subject(json!({"sub": "carol", "scope": "profile"}));
    let web = peer(WEB);
    let other_ns = peer("spiffe://cluster.local/ns/evil/sa/web");
    struct Case<'a> {
        what: &'a str,
        subject: &'a Validated,
        actor: Option<&'a Actor>,
        audience: &'a str,
        want: Result<&'a str, &'a str>,
    }
    let cases = [
        Case {
            what: "delegation by SPIFFE glob",
            subject: &alice,
            actor: Some(&web),
            audience: "orders",
            want: Ok("web-delegates-to-orders"),
        },
        Case {
            what: "actor outside the glob",
            subject: &alice,
            actor: Some(&other_ns),
            audience: "orders",
            want: Err("no_rule"),
        },
        Case {
            what: "delegation needs an actor",
            subject: &alice,
            actor: None,
            audience: "orders",
            want: Err("no_rule"),
        },
        Case {
            what: "audience glob + subject sub one-of",
            subject: &alice,
            actor: None,
            audience: "api://billing",
            want: Ok("external-to-internal"),
        },
        Case {
            what: "subject not in one-of",
            subject: &carol,
            actor: None,
            audience: "api://billing",
            want: Err("no_rule"),
        },
        Case {
            what: "exchange refuses an actor",
            subject: &alice,
            actor: Some(&web),
            audience: "api://billing",
            want: Err("no_rule"),
        },
        Case { what: "default deny", subject: &alice, actor: None, audience: "payments", want: Err("no_rule") },
    ];
    for c in cases {
        let got = evaluate(&rs, &input(c.subject, c.actor, c.audience));
        match (c.want, &got) {
            (Ok(name), Ok(d)) => assert_eq!(d.rule, name, "{}", c.what),
            (Err(label), Err(d)) => assert_eq!(d.label(), label, "{}: {d}", c.what),
            _ => panic!("{}: got {got:?}", c.what),
        }
    }
}

#[test]
fn issuer_dimension() {
    let rs = rules(MESH);
    let mut other = subject(json!({"scope": "profile"}));
    other.issuer = "https://other.example".into();
    assert_eq!(evaluate(&rs, &input(&other, None, "api://x")).unwrap_err().label(), "no_rule");
    let trace = verdicts(&rs, &input(&other, None, "api://x"));
    assert_eq!(trace[2].1.as_deref(), Some("subject token issuer is not listed"));
}

#[test]
fn group_claim_matches_any_element() {
    let rs = rules(MESH);
    let ops = token_actor("ops-console", IDP, None);
    let admin = subject(json!({"sub": "root", "groups": ["dev", "admins"], "scope": "x"}));
    let dev = subject(json!({"sub": "root", "groups": ["dev"], "scope": "x"}));
    assert_eq!(evaluate(&rs, &input(&admin, Some(&ops), "anything")).unwrap().rule, "admins-impersonate");
    assert_eq!(evaluate(&rs, &input(&dev, Some(&ops), "anything")).unwrap_err().label(), "no_rule");
}

#[test]
fn order_decides_first_match() {
    let rs = rules(
        r#"
- name: narrow
  match: { audiences: [orders] }
  grant: { scopes: [orders.read] }
- name: wide
  grant: { scopes: ["*"] }
"#,
    );
    let s = subject(json!({"scope": "orders.read orders.write"}));
    let d = evaluate(&rs, &input(&s, None, "orders")).unwrap();
    assert_eq!((d.rule.as_str(), d.scopes.clone()), ("narrow", vec!["orders.read".to_string()]));
    assert_eq!(evaluate(&rs, &input(&s, None, "other")).unwrap().rule, "wide");
}

#[test]
fn scopes_are_requested_and_held_and_allowed() {
    let rs = rules(MESH);
    let alice = subject(json!({"scope": "orders.read orders.write profile"}));
    let web = peer(WEB);
    type Case<'a> = (Option<Vec<&'a str>>, Result<Vec<&'a str>, &'a str>);
    let cases: [Case<'_>; 5] = [
        (None, Ok(vec!["orders.read", "orders.write"])),
        (Some(vec!["orders.read"]), Ok(vec!["orders.read"])),
        (Some(vec!["orders.read", "orders.admin"]), Ok(vec!["orders.read"])),
        (Some(vec!["orders.admin"]), Err("no_scope")),
        (Some(vec!["profile"]), Err("no_scope")),
    ];
    for (requested, want) in cases {
        let req: Option<Vec<String>> = requested.map(|v| v.into_iter().map(String::from).collect());
        let mut i = input(&alice, Some(&web), "orders");
        i.requested_scopes = req.as_deref();
        match (want, evaluate(&rs, &i)) {
            (Ok(scopes), Ok(d)) => assert_eq!(d.scopes, scopes),
            (Err(label), Err(d)) => assert_eq!(d.label(), label),
            (w, g) => panic!("want {w:?} got {g:?}"),
        }
    }
}

#[test]
fn empty_scope_is_refused_unless_allowed() {
    let strict = rules("- name: r\n  grant: { scopes: [a] }\n");
    let lax = rules("- name: r\n  grant: { scopes: [a], allow_empty_scope: true }\n");
    let s = subject(json!({}));
    assert_eq!(evaluate(&strict, &input(&s, None, "x")).unwrap_err(), Denied::NoScope { rule: "r".into() });
    assert_eq!(evaluate(&lax, &input(&s, None, "x")).unwrap().scopes, Vec::<String>::new());
}

#[test]
fn lifetime_cap_comes_from_the_rule() {
    let rs = rules(MESH);
    let alice = subject(json!({"scope": "orders.read"}));
    let d = evaluate(&rs, &input(&alice, Some(&peer(WEB)), "orders")).unwrap();
    assert_eq!(d.max_lifetime, Some(Duration::from_secs(120)));
}

fn nested(depth: usize) -> Option<Value> {
    let mut act: Option<Value> = None;
    for i in 0..depth {
        let mut obj = json!({"sub": format!("svc-{i}")});
        if let Some(inner) = act {
            obj["act"] = inner;
        }
        act = Some(obj);
    }
    act
}

#[test]
fn delegation_nests_prior_actors_up_to_the_limit() {
    let rs = rules(
        r#"
- name: d
  grant: { outcome: delegation, scopes: ["*"], allow_empty_scope: true, max_chain_depth: 3 }
"#,
    );
    let web = peer(WEB);
    for prior in 0..=3 {
        let mut claims = json!({});
        if let Some(act) = nested(prior) {
            claims["act"] = act;
        }
        let s = subject(claims);
        let got = evaluate(&rs, &input(&s, Some(&web), "x"));
        if prior < 3 {
            let d = got.unwrap();
            let act = d.act.expect("act");
            assert_eq!(act["sub"], WEB, "outermost act is the current actor");
            assert!(act.get("iss").is_none(), "a SPIFFE actor has no iss");
            assert_eq!(chain_depth(Some(&act)).unwrap(), prior + 1);
            if prior > 0 {
                assert_eq!(act["act"], nested(prior).unwrap(), "prior chain nested unchanged");
            }
            assert_eq!(d.sub, "alice");
        } else {
            assert_eq!(got.unwrap_err(), Denied::ChainTooDeep { rule: "d".into(), depth: 4, max: 3 });
        }
    }
}

#[test]
fn token_actor_act_names_its_issuer() {
    let rs = rules(
        "- name: d\n  match: { actor: { issuers: [\"https://ci.example\"] } }\n  grant: { outcome: delegation, allow_empty_scope: true }\n",
    );
    let s = subject(json!({}));
    let actor = token_actor("batch-job", "https://ci.example", Some("ci"));
    let d = evaluate(&rs, &input(&s, Some(&actor), "x")).unwrap();
    assert_eq!(d.act, Some(json!({"sub": "batch-job", "iss": "https://ci.example"})));
    assert_eq!(d.client_id.as_deref(), Some("ci"));
    // Without actor.issuers only the subject token's issuer may send actor tokens.
    let any = rules("- name: d\n  grant: { outcome: delegation, allow_empty_scope: true }\n");
    assert_eq!(evaluate(&any, &input(&s, Some(&actor), "x")).unwrap_err().label(), "no_rule");
}

#[test]
fn malformed_act_is_refused() {
    let rs = rules("- name: d\n  grant: { outcome: delegation, allow_empty_scope: true }\n");
    let s = subject(json!({"act": "svc"}));
    assert_eq!(evaluate(&rs, &input(&s, Some(&peer(WEB)), "x")).unwrap_err(), Denied::BadClaim("act"));
}

#[test]
fn may_act_admits_only_the_named_actor() {
    let rs = rules(
        "- name: d\n  match: { actor: { issuers: [\"https://ci.example\"] } }\n  grant: { outcome: delegation, allow_empty_scope: true }\n",
    );
    let web = peer(WEB);
    let tok = token_actor("batch", "https://ci.example", None);
    let cases = [
        (json!({"sub": WEB}), &web, Ok(())),
        (json!({"sub": "spiffe://cluster.local/ns/shop/sa/other"}), &web, Err(Denied::MayAct)),
        (json!({"sub": WEB, "iss": "https://x"}), &web, Err(Denied::MayAct)),
        (json!({"sub": "batch", "iss": "https://ci.example"}), &tok, Ok(())),
        (json!({"sub": "batch", "iss": "https://evil.example"}), &tok, Err(Denied::MayAct)),
        (json!(["batch"]), &tok, Err(Denied::BadClaim("may_act"))),
    ];
    for (may_act, actor, want) in cases {
        let s = subject(json!({"may_act": may_act}));
        let got = evaluate(&rs, &input(&s, Some(actor), "x")).map(|_| ());
        assert_eq!(got, want, "may_act {may_act}");
    }
    // may_act refuses even when a rule would allow the actor.
    let s = subject(json!({"may_act": {"sub": "someone-else"}}));
    assert_eq!(evaluate(&rs, &input(&s, Some(&web), "x")).unwrap_err(), Denied::MayAct);
}

#[test]
fn a_delegated_token_is_never_laundered() {
    let imp = rules("- name: i\n  grant: { outcome: impersonation, allow_empty_scope: true }\n");
    let s = subject(json!({"act": {"sub": "svc-a"}}));
    assert_eq!(
        evaluate(&imp, &input(&s, Some(&peer(WEB)), "x")).unwrap_err(),
        Denied::WouldDropAct { rule: "i".into() }
    );
    // An exchange keeps the chain as it is.
    let ex = rules("- name: e\n  grant: { allow_empty_scope: true }\n");
    let d = evaluate(&ex, &input(&s, None, "x")).unwrap();
    assert_eq!(d.act, Some(json!({"sub": "svc-a"})));
}

#[test]
fn impersonation_of_another_subject_needs_a_named_actor_and_is_audited() {
    let rs = rules(MESH);
    let admin = subject(json!({"sub": "root", "groups": ["sre"], "scope": "orders.read"}));
    let ops = token_actor("ops-console", IDP, None);
    let mut i = input(&admin, Some(&ops), "orders-api");
    i.requested_subject = Some("user-123");
    let d = evaluate(&rs, &i).unwrap();
    assert_eq!(d.outcome, Outcome::Impersonation);
    assert_eq!(d.sub, "user-123");
    assert_eq!(d.act, None);
    assert_eq!(d.claims["impersonated_by"], json!({"sub": "ops-console", "iss": IDP}));
    assert!(d.audit.unwrap().contains("user-123"));

    i.requested_subject = Some("admin-1");
    assert_eq!(evaluate(&rs, &i).unwrap_err(), Denied::ImpersonationRefused);

    // A different actor cannot use the same rule.
    let intruder = token_actor("intruder", IDP, None);
    let mut i = input(&admin, Some(&intruder), "orders-api");
    i.requested_subject = Some("user-123");
    assert_eq!(evaluate(&rs, &i).unwrap_err(), Denied::ImpersonationRefused);
}

#[test]
fn act_as_shape_puts_the_actor_in_sub() {
    let rs = rules("- name: d\n  grant: { outcome: delegation, delegation_shape: act_as, allow_empty_scope: true }\n");
    let s = subject(json!({}));
    let d = evaluate(&rs, &input(&s, Some(&peer(WEB)), "x")).unwrap();
    assert_eq!(d.sub, WEB);
    assert_eq!(d.act, None);
    assert_eq!(d.act_as, Some(json!({"sub": "alice", "iss": IDP})));
}

#[test]
fn claims_are_copied_and_added() {
    let rs = rules(MESH);
    let alice = subject(json!({"scope": "profile", "email": "a@x", "groups": ["dev"], "secret": "no"}));
    let d = evaluate(&rs, &input(&alice, None, "api://x")).unwrap();
    assert_eq!(Value::Object(d.claims), json!({"email": "a@x", "groups": ["dev"], "tenant": "acme"}));
}

#[test]
fn downstream_tokens_are_narrower() {
    let rs = rules(
        r#"
- name: r
  grant:
    scopes: ["*"]
    downstream_tokens:
      - { audience: payments, header: x-payments-token, scopes: ["payments.*"] }
      - { audience: audit, header: x-audit-token }
"#,
    );
    let s = subject(json!({"scope": "orders.read payments.charge"}));
    let d = evaluate(&rs, &input(&s, None, "orders")).unwrap();
    assert_eq!(
        d.downstream[0],
        DownstreamGrant {
            audience: "payments".into(),
            header: "x-payments-token".into(),
            scopes: vec!["payments.charge".into()]
        }
    );
    assert_eq!(d.downstream[1].scopes, d.scopes);
}

#[test]
fn lint_reports_shadowed_rules() {
    let rs = rules(
        r#"
- name: all-orders
  match: { audiences: ["orders*"] }
  grant: { scopes: ["*"] }
- name: orders-read
  match: { audiences: [orders] , subject: { sub: [alice] } }
  grant: { scopes: [orders.read] }
- name: billing
  match: { audiences: [billing] }
  grant: { scopes: ["*"] }
- name: delegation-orders
  match: { audiences: [orders] }
  grant: { outcome: delegation, scopes: ["*"] }
"#,
    );
    let issues = lint(&rs);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].contains("orders-read") && issues[0].contains("all-orders"));
}

#[test]
fn an_actor_proven_by_peer_and_token_matches_either_name() {
    let by_spiffe = rules(
        "- name: d\n  match: { actor: { spiffe: [\"spiffe://*\"] } }\n  grant: { outcome: delegation, allow_empty_scope: true }\n",
    );
    let by_sub = rules(
        "- name: d\n  match: { actor: { sub: [\"spiffe://*\"] } }\n  grant: { outcome: delegation, allow_empty_scope: true }\n",
    );
    let s = subject(json!({}));
    let both = Actor { kind: ActorKind::PeerAndToken, ..token_actor(WEB, IDP, None) };
    assert!(evaluate(&by_spiffe, &input(&s, Some(&both), "x")).is_ok());
    assert!(evaluate(&by_sub, &input(&s, Some(&both), "x")).is_ok());
    // A token alone does not satisfy a rule that demands the mTLS identity.
    assert!(evaluate(&by_spiffe, &input(&s, Some(&token_actor(WEB, IDP, None)), "x")).is_err());
}

#[test]
fn downstream_tokens_with_no_scope_left_follow_allow_empty_scope() {
    let strict = rules(
        "- name: r\n  grant:\n    scopes: [\"*\"]\n    downstream_tokens: [{ audience: pay, header: x-pay, scopes: [\"pay.*\"] }]\n",
    );
    let s = subject(json!({"scope": "orders.read"}));
    assert!(evaluate(&strict, &input(&s, None, "orders")).unwrap().downstream.is_empty());
    let lax = rules(
        "- name: r\n  grant:\n    scopes: [\"*\"]\n    allow_empty_scope: true\n    downstream_tokens: [{ audience: pay, header: x-pay, scopes: [\"pay.*\"] }]\n",
    );
    assert_eq!(evaluate(&lax, &input(&s, None, "orders")).unwrap().downstream[0].scopes, Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// Two issuers: an actor token's names mean something only in its issuer's
// namespace (security review, issue #9).
// ---------------------------------------------------------------------------

const IDP_B: &str = "https://idp-b.example";

/// Impersonation pinned to IDP's subjects, naming the actor by `sub`.
const SUPPORT_PINNED: &str = r#"
- name: support
  match:
    issuers: ["https://idp.example"]
    actor: { sub: [support-console] }
  grant: { outcome: impersonation, scopes: ["*"], allow_empty_scope: true, impersonate_subjects: ["user-*"], audit_claim: impersonated_by }
"#;

fn impersonating<'a>(subject: &'a Validated, actor: Option<&'a Actor>, who: &'a str) -> RuleInput<'a> {
    RuleInput { requested_subject: Some(who), ..input(subject, actor, "orders") }
}

#[test]
fn actor_token_from_another_issuer_does_not_match_a_rule_pinned_to_the_subjects() {
    let rs = rules(SUPPORT_PINNED);
    let operator = subject(json!({"sub": "operator"}));
    let ours = token_actor("support-console", IDP, Some("console"));
    let theirs = token_actor("support-console", IDP_B, Some("console"));

    let d = evaluate(&rs, &impersonating(&operator, Some(&ours), "user-123")).unwrap();
    assert_eq!(d.sub, "user-123");
    assert_eq!(d.claims["impersonated_by"], json!({"sub": "support-console", "iss": IDP}));

    // Same sub, other IdP: a different party, whatever its name.
    let i = impersonating(&operator, Some(&theirs), "user-123");
    assert_eq!(evaluate(&rs, &i).unwrap_err(), Denied::ImpersonationRefused);
    let why = verdicts(&rs, &i)[0].1.clone().unwrap();
    assert!(why.contains("actor token issuer") && why.contains(IDP_B), "{why}");
    // Not even as the operator's own subject.
    assert_eq!(evaluate(&rs, &input(&operator, Some(&theirs), "orders")).unwrap_err().label(), "no_rule");

    // actor.issuers admits exactly the listed issuers, and only those.
    let rs = rules(
        &SUPPORT_PINNED
            .replace("sub: [support-console]", "issuers: [\"https://idp-b.example\"], sub: [support-console]"),
    );
    let d = evaluate(&rs, &impersonating(&operator, Some(&theirs), "user-123")).unwrap();
    assert_eq!(d.claims["impersonated_by"], json!({"sub": "support-console", "iss": IDP_B}));
    let i = impersonating(&operator, Some(&ours), "user-123");
    assert_eq!(evaluate(&rs, &i).unwrap_err(), Denied::ImpersonationRefused);
    assert!(verdicts(&rs, &i)[0].1.as_deref().unwrap().contains("is not in actor.issuers"));

    // A client_id glob is a name in the issuer's namespace too.
    let by_client = rules(&SUPPORT_PINNED.replace("sub: [support-console]", "client_id: [console]"));
    assert!(evaluate(&by_client, &impersonating(&operator, Some(&ours), "user-1")).is_ok());
    assert_eq!(
        evaluate(&by_client, &impersonating(&operator, Some(&theirs), "user-1")).unwrap_err(),
        Denied::ImpersonationRefused
    );
}

#[test]
fn a_peer_and_token_actor_needs_its_token_from_an_admitted_issuer() {
    // Matched by its SPIFFE ID, but the token half would put IDP_B's iss in
    // act and its client in client_id: both proofs must hold under the rule.
    let rs = rules(
        "- name: d\n  match: { actor: { spiffe: [\"spiffe://*\"] } }\n  grant: { outcome: delegation, allow_empty_scope: true }\n",
    );
    let s = subject(json!({}));
    let ours = Actor { kind: ActorKind::PeerAndToken, ..token_actor(WEB, IDP, Some("web")) };
    let theirs = Actor { kind: ActorKind::PeerAndToken, ..token_actor(WEB, IDP_B, Some("web-b")) };
    let d = evaluate(&rs, &input(&s, Some(&ours), "x")).unwrap();
    assert_eq!(d.act, Some(json!({"sub": WEB, "iss": IDP})));
    assert_eq!(d.client_id.as_deref(), Some("web"));
    assert_eq!(evaluate(&rs, &input(&s, Some(&theirs), "x")).unwrap_err().label(), "no_rule");
    // The peer alone is still the SPIFFE ID the rule names.
    assert!(evaluate(&rs, &input(&s, Some(&peer(WEB)), "x")).is_ok());
}

#[test]
fn may_act_without_iss_names_a_party_of_the_subject_tokens_issuer() {
    // The rule admits actor tokens from both IdPs: only may_act decides here.
    let rs = rules(
        "- name: d\n  match: { actor: { issuers: [\"https://idp.example\", \"https://idp-b.example\"] } }\n  grant: { outcome: delegation, allow_empty_scope: true }\n",
    );
    let pay_a = token_actor("svc-pay", IDP, None);
    let pay_b = token_actor("svc-pay", IDP_B, None);
    let web_both_b = Actor { kind: ActorKind::PeerAndToken, ..token_actor(WEB, IDP_B, None) };
    let cases = [
        (json!({"sub": "svc-pay"}), &pay_a, Ok(())),
        (json!({"sub": "svc-pay"}), &pay_b, Err(Denied::MayAct)),
        (json!({"sub": "svc-pay", "iss": IDP_B}), &pay_b, Ok(())),
        (json!({"sub": "svc-pay", "iss": IDP_B}), &pay_a, Err(Denied::MayAct)),
        // A SPIFFE ID names its own trust domain: the mTLS proof suffices.
        (json!({"sub": WEB}), &web_both_b, Ok(())),
    ];
    for (may_act, actor, want) in cases {
        let s = subject(json!({"may_act": may_act}));
        let got = evaluate(&rs, &input(&s, Some(actor), "x")).map(|_| ());
        assert_eq!(got, want, "may_act {may_act} vs {actor:?}");
    }
    // A peer whose identity is no SPIFFE ID is not the IdP's `svc-pay`.
    let s = subject(json!({"may_act": {"sub": "svc-pay"}}));
    assert_eq!(evaluate(&rs, &input(&s, Some(&peer("svc-pay")), "x")).unwrap_err(), Denied::MayAct);
    let s = subject(json!({"may_act": {"sub": WEB}}));
    assert!(evaluate(&rs, &input(&s, Some(&peer(WEB)), "x")).is_ok());
}

#[test]
fn client_id_comes_only_from_an_admitted_actor_token() {
    let rs = rules("- name: d\n  grant: { outcome: delegation, allow_empty_scope: true }\n");
    let s = subject(json!({"client_id": "subject-app"}));
    let ours = token_actor("batch", IDP, Some("batch-client"));
    let theirs = token_actor("batch", IDP_B, Some("foreign-client"));
    assert_eq!(evaluate(&rs, &input(&s, Some(&ours), "x")).unwrap().client_id.as_deref(), Some("batch-client"));
    assert_eq!(evaluate(&rs, &input(&s, Some(&peer(WEB)), "x")).unwrap().client_id.as_deref(), Some("subject-app"));
    assert_eq!(evaluate(&rs, &input(&s, Some(&theirs), "x")).unwrap_err().label(), "no_rule");
    // Defence in depth: even past matching, a foreign actor token decides nothing.
    assert_eq!(decide(&rs[0], &input(&s, Some(&theirs), "x"), Requester::default()).unwrap_err().label(), "no_rule");
}

#[test]
fn impersonating_another_subject_needs_a_proven_actor() {
    // `none: true` on such a rule is refused by check-config; the engine
    // refuses the request anyway.
    let rs = rules(&SUPPORT_PINNED.replace("sub: [support-console]", "sub: [support-console], none: true"));
    let operator = subject(json!({"sub": "operator"}));
    let i = impersonating(&operator, None, "user-123");
    assert_eq!(evaluate(&rs, &i).unwrap_err(), Denied::ImpersonationRefused);
    assert!(verdicts(&rs, &i)[0].1.as_deref().unwrap().contains("needs a proven actor"), "{:?}", verdicts(&rs, &i));
    assert_eq!(decide(&rs[0], &i, Requester::default()).unwrap_err(), Denied::ImpersonationRefused);
    // With no other subject asked for, the token keeps its own subject.
    let d = evaluate(&rs, &input(&operator, None, "orders")).unwrap();
    assert_eq!(d.sub, "operator");
    assert!(d.claims.get("impersonated_by").is_none());
}

#[test]
fn sub_id_names_the_minted_subject_in_its_issuers_namespace() {
    let iss_sub = |iss: &str, sub: &str| SubId::IssSub { iss: iss.into(), sub: sub.into() };
    let alice = subject(json!({"scope": "profile"}));
    let ex = rules("- name: e\n  grant: { allow_empty_scope: true }\n");
    assert_eq!(evaluate(&ex, &input(&alice, None, "x")).unwrap().sub_id, iss_sub(IDP, "alice"));
    let mut theirs = alice.clone();
    theirs.issuer = IDP_B.into();
    assert_eq!(evaluate(&ex, &input(&theirs, None, "x")).unwrap().sub_id, iss_sub(IDP_B, "alice"));

    // Delegation keeps the subject; act_as puts the actor in sub, and sub_id follows it.
    let act = rules("- name: d\n  grant: { outcome: delegation, allow_empty_scope: true }\n");
    assert_eq!(evaluate(&act, &input(&alice, Some(&peer(WEB)), "x")).unwrap().sub_id, iss_sub(IDP, "alice"));
    let act_as =
        rules("- name: d\n  grant: { outcome: delegation, delegation_shape: act_as, allow_empty_scope: true }\n");
    assert_eq!(
        evaluate(&act_as, &input(&alice, Some(&peer(WEB)), "x")).unwrap().sub_id,
        SubId::Uri { uri: WEB.into() }
    );
    assert_eq!(
        evaluate(&act_as, &input(&alice, Some(&peer("web.shop.svc")), "x")).unwrap().sub_id,
        SubId::Opaque { id: "web.shop.svc".into() }
    );
    let job = token_actor("job", IDP, None);
    assert_eq!(evaluate(&act_as, &input(&alice, Some(&job), "x")).unwrap().sub_id, iss_sub(IDP, "job"));

    // Impersonation: the impersonated subject, under the subject token's issuer.
    let rs = rules(SUPPORT_PINNED);
    let operator = subject(json!({"sub": "operator"}));
    let console = token_actor("support-console", IDP, None);
    let d = evaluate(&rs, &impersonating(&operator, Some(&console), "user-123")).unwrap();
    assert_eq!(d.sub_id, iss_sub(IDP, "user-123"));
    assert_eq!(serde_json::to_value(&d.sub_id).unwrap(), json!({"format": "iss_sub", "iss": IDP, "sub": "user-123"}));
}

#[test]
fn impersonation_audit_names_both_issuers() {
    let rs = rules(
        &SUPPORT_PINNED
            .replace("sub: [support-console]", "issuers: [\"https://idp-b.example\"], sub: [support-console]"),
    );
    let operator = subject(json!({"sub": "operator"}));
    let console = token_actor("support-console", IDP_B, None);
    let audit = evaluate(&rs, &impersonating(&operator, Some(&console), "user-123")).unwrap().audit.unwrap();
    assert!(audit.contains(&format!("actor \"support-console\" (issuer {IDP_B:?})")), "{audit}");
    assert!(audit.contains(&format!("token subject \"operator\", issuer {IDP:?}")), "{audit}");
    assert!(audit.contains("acts as subject \"user-123\""), "{audit}");
}

#[test]
fn lint_keeps_rules_that_admit_other_actor_issuers() {
    let rs = rules(
        r#"
- name: same-idp-actors
  grant: { outcome: delegation, scopes: ["*"] }
- name: ci-actors
  match: { actor: { issuers: ["https://ci.example"] } }
  grant: { outcome: delegation, scopes: ["*"] }
- name: ci-actors-again
  match: { audiences: [orders], actor: { issuers: ["https://ci.example"] } }
  grant: { outcome: delegation, scopes: ["*"] }
"#,
    );
    let issues = lint(&rs);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].contains("ci-actors-again") && issues[0].contains("rules[1]"), "{issues:?}");
}

// ---------------------------------------------------------------------------
// stsgate's own tokens (`issuers: [self]`) and presenter binding (issue #11)
// ---------------------------------------------------------------------------

const STS: &str = "https://sts.example";
const ORDERS: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const BILLING: &str = "spiffe://cluster.local/ns/shop/sa/billing";

/// One of stsgate's own tokens, as the validator hands it over: minted for
/// `aud` from alice's IdP token, with `claims` merged in.
fn own(aud: &str, claims: Value) -> Validated {
    let mut c = json!({"iss": STS, "aud": aud, "client_id": "web-app"});
    for (k, v) in claims.as_object().unwrap() {
        c[k] = v.clone();
    }
    let mut v = subject(c);
    v.own_sub_id = Some(SubId::IssSub { iss: IDP.into(), sub: "alice".into() });
    v
}

fn workloads() -> Vec<Workload> {
    serde_yaml_ng::from_str(
        r#"
- { audience: web, spiffe: ["spiffe://cluster.local/ns/shop/sa/web"] }
- { audience: orders, spiffe: ["spiffe://cluster.local/ns/shop/sa/orders"], sub: [orders-batch], client_id: [orders-cli] }
"#,
    )
    .unwrap()
}

fn bound<'a>(subject: &'a Validated, actor: Option<&'a Actor>, audience: &'a str, w: &'a [Workload]) -> RuleInput<'a> {
    RuleInput { workloads: w, ..input(subject, actor, audience) }
}

const CHAIN: &str = r#"
- name: any-issuer-delegates
  match: { audiences: [search] }
  grant: { outcome: delegation, scopes: ["*"] }
- name: idp-to-web
  match: { issuers: ["https://idp.example"], audiences: [web] }
  grant: { scopes: ["*"] }
- name: mesh
  match: { issuers: [self], audiences: [orders, payments] }
  grant: { outcome: delegation, scopes: ["orders.*", "payments.*"], max_chain_depth: 2 }
"#;

#[test]
fn own_tokens_match_only_rules_that_list_self() {
    let rs = rules(CHAIN);
    let w = workloads();
    let web = peer(WEB);
    let hop1 = own("web", json!({"scope": "orders.read payments.charge profile"}));

    // Re-exchange: the subject stays, the actor is named, the original IdP is kept.
    let d = evaluate(&rs, &bound(&hop1, Some(&web), "orders", &w)).unwrap();
    assert_eq!((d.rule.as_str(), d.sub.as_str()), ("mesh", "alice"));
    assert_eq!(d.act, Some(json!({"sub": WEB})));
    assert_eq!(d.sub_id, SubId::IssSub { iss: IDP.into(), sub: "alice".into() });
    assert_eq!(d.scopes, ["orders.read", "payments.charge"], "narrowed by the rule, never widened");
    assert_eq!(d.client_id.as_deref(), Some("web-app"), "a peer has no client: the token's stays");

    // A rule without `issuers` never matches an own token (explicit opt-in).
    let i = bound(&hop1, Some(&web), "search", &w);
    assert_eq!(evaluate(&rs, &i).unwrap_err().label(), "no_rule");
    assert!(verdicts(&rs, &i)[0].1.as_deref().unwrap().contains("list `self`"), "{:?}", verdicts(&rs, &i));
    // ... nor does a rule listing only IdPs.
    assert_eq!(evaluate(&rs, &bound(&hop1, None, "web", &w)).unwrap_err().label(), "presenter_mismatch");
    assert_eq!(evaluate(&rs, &bound(&hop1, Some(&web), "web", &w)).unwrap_err().label(), "no_rule");
    assert_eq!(verdicts(&rs, &bound(&hop1, Some(&web), "web", &w))[1].1.as_deref(), Some("`self` is not listed"));

    // A rule listing `self` never matches an IdP's token...
    let alice = subject(json!({"aud": "web", "scope": "orders.read"}));
    assert_eq!(evaluate(&rs, &bound(&alice, Some(&web), "orders", &w)).unwrap_err().label(), "no_rule");
    let trace = verdicts(&rs, &bound(&alice, Some(&web), "orders", &w));
    assert_eq!(trace[2].1.as_deref(), Some("subject token issuer is not listed"));
    // ... unless it lists that issuer too.
    let both = rules(&CHAIN.replace("issuers: [self]", "issuers: [self, \"https://idp.example\"]"));
    assert_eq!(evaluate(&both, &bound(&alice, Some(&web), "orders", &w)).unwrap().rule, "mesh");
}

#[test]
fn an_own_token_is_presented_only_by_a_workload_of_its_audience() {
    // Even a rule that admits any actor cannot widen the binding.
    let rs = rules(
        r#"
- name: mesh
  match: { issuers: [self], actor: { spiffe: ["*"], sub: ["*"], issuers: ["https://idp.example"] } }
  grant: { outcome: delegation, scopes: ["*"] }
"#,
    );
    let w = workloads();
    let hop2 = own("orders", json!({"scope": "orders.read", "act": {"sub": WEB}}));
    let (orders, billing, web) = (peer(ORDERS), peer(BILLING), peer(WEB));

    let d = evaluate(&rs, &bound(&hop2, Some(&orders), "payments", &w)).unwrap();
    assert_eq!(d.act, Some(json!({"sub": ORDERS, "act": {"sub": WEB}})), "the chain grows");

    // Another workload replaying orders' token, the previous hop, nobody.
    let refused = |actor: Option<&Actor>| evaluate(&rs, &bound(&hop2, actor, "payments", &w)).unwrap_err();
    let d = refused(Some(&billing));
    assert_eq!(d, Denied::PresenterMismatch { issued_to: vec!["orders".into()], actor: Some(BILLING.into()) });
    assert_eq!(d.label(), "presenter_mismatch");
    assert_eq!(
        d.to_string(),
        format!("the token was issued to \"orders\"; actor \"{BILLING}\" is not a workload of it")
    );
    assert_eq!(refused(Some(&web)).label(), "presenter_mismatch", "the party before cannot reuse it");
    let d = refused(None);
    assert_eq!(
        d.to_string(),
        "the token was issued to \"orders\"; only a workload of it may present it, and the request has no actor"
    );
    // No workloads table: nobody at all.
    assert_eq!(evaluate(&rs, &bound(&hop2, Some(&orders), "payments", &[])).unwrap_err().label(), "presenter_mismatch");

    // Actor tokens are named by sub or client_id, like a rule's actor match.
    let batch = token_actor("orders-batch", IDP, None);
    let cli = token_actor("someone", IDP, Some("orders-cli"));
    let stranger = token_actor("someone", IDP, Some("other-cli"));
    assert!(evaluate(&rs, &bound(&hop2, Some(&batch), "payments", &w)).is_ok());
    assert!(evaluate(&rs, &bound(&hop2, Some(&cli), "payments", &w)).is_ok());
    assert_eq!(refused(Some(&stranger)).label(), "presenter_mismatch");
    // A token naming orders' SPIFFE ID is not its mTLS identity.
    assert_eq!(refused(Some(&token_actor(ORDERS, IDP, None))).label(), "presenter_mismatch");
}

#[test]
fn presenter_audience_binds_an_idp_token_by_aud_or_azp() {
    let rs = rules(
        r#"
- name: bound
  match: { audiences: [orders], presenter: audience }
  grant: { outcome: delegation, scopes: ["*"] }
- name: unbound
  grant: { outcome: delegation, scopes: ["*"] }
"#,
    );
    let w = workloads();
    let web = peer(WEB);
    let for_web = subject(json!({"aud": ["account", "web"], "scope": "orders.read"}));
    let azp_web = subject(json!({"aud": "account", "azp": "web", "scope": "orders.read"}));
    let for_other = subject(json!({"aud": "account", "azp": "mobile", "scope": "orders.read"}));
    assert_eq!(evaluate(&rs, &bound(&for_web, Some(&web), "orders", &w)).unwrap().rule, "bound");
    assert_eq!(evaluate(&rs, &bound(&azp_web, Some(&web), "orders", &w)).unwrap().rule, "bound");
    let d = evaluate(&rs, &bound(&for_other, Some(&web), "orders", &w)).unwrap_err();
    assert_eq!(
        d,
        Denied::PresenterMismatch { issued_to: vec!["account".into(), "mobile".into()], actor: Some(WEB.into()) }
    );
    assert!(d.to_string().ends_with("is not a workload of any of them"), "{d}");
    // The rule decides: a later, unbound rule is not tried.
    assert_eq!(
        evaluate(&rs, &bound(&for_web, Some(&peer(BILLING)), "orders", &w)).unwrap_err().label(),
        "presenter_mismatch"
    );
    // Without the binding, any actor the rule admits.
    assert_eq!(evaluate(&rs, &bound(&for_other, Some(&web), "search", &w)).unwrap().rule, "unbound");
    let none = subject(json!({"scope": "orders.read"}));
    let d = evaluate(&rs, &bound(&none, Some(&web), "orders", &w)).unwrap_err();
    assert_eq!(d.to_string(), "the token names no audience, so no workload may present it");
}

#[test]
fn an_own_token_keeps_its_subject_and_its_chain() {
    let w = workloads();
    let orders = peer(ORDERS);
    let delegated = own("orders", json!({"scope": "x", "act": {"sub": WEB}}));
    let plain = own("orders", json!({"scope": "x"}));

    // Impersonation would drop the chain of a delegated own token.
    let imp = rules("- name: i\n  match: { issuers: [self] }\n  grant: { outcome: impersonation, scopes: [\"*\"] }\n");
    assert_eq!(
        evaluate(&imp, &bound(&delegated, Some(&orders), "payments", &w)).unwrap_err(),
        Denied::WouldDropAct { rule: "i".into() }
    );
    // Never for another subject, whatever impersonate_subjects says.
    let other = rules(
        "- name: i\n  match: { issuers: [self], actor: { spiffe: [\"*\"] } }\n  grant: { outcome: impersonation, scopes: [\"*\"], impersonate_subjects: [\"*\"] }\n",
    );
    let mut i = bound(&plain, Some(&orders), "payments", &w);
    i.requested_subject = Some("bob");
    assert_eq!(evaluate(&other, &i).unwrap_err(), Denied::ImpersonationRefused);
    assert_eq!(decide(&other[0], &i, Requester::default()).unwrap_err(), Denied::ImpersonationRefused);
    // An act_as token would lose its subject in any re-issue.
    let act_as = own("orders", json!({"scope": "x", "act_as": {"sub": "alice", "iss": IDP}}));
    let del = rules("- name: d\n  match: { issuers: [self] }\n  grant: { outcome: delegation, scopes: [\"*\"] }\n");
    assert_eq!(
        evaluate(&del, &bound(&act_as, Some(&orders), "payments", &w)).unwrap_err(),
        Denied::WouldDropAct { rule: "d".into() }
    );
    // The chain is capped like any other.
    let shallow = rules(
        "- name: d\n  match: { issuers: [self] }\n  grant: { outcome: delegation, scopes: [\"*\"], max_chain_depth: 1 }\n",
    );
    assert_eq!(
        evaluate(&shallow, &bound(&delegated, Some(&orders), "payments", &w)).unwrap_err(),
        Denied::ChainTooDeep { rule: "d".into(), depth: 2, max: 1 }
    );
    // Scopes only narrow: a scope the token does not hold is never granted.
    let mut i = bound(&plain, Some(&orders), "payments", &w);
    let wider = vec!["x".to_string(), "y".to_string()];
    i.requested_scopes = Some(&wider);
    assert_eq!(evaluate(&del, &i).unwrap().scopes, ["x"]);
}

#[test]
fn lint_knows_a_rule_without_issuers_does_not_cover_self() {
    let rs = rules(
        r#"
- name: anyone
  grant: { outcome: delegation, scopes: ["*"] }
- name: mesh
  match: { issuers: [self] }
  grant: { outcome: delegation, scopes: ["*"] }
- name: mesh-again
  match: { issuers: [self], audiences: [orders] }
  grant: { outcome: delegation, scopes: ["*"] }
"#,
    );
    let issues = lint(&rs);
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].contains("mesh-again") && issues[0].contains("\"mesh\""), "{issues:?}");
}

#[test]
fn the_dev_config_shows_a_chain() {
    let cfg =
        crate::config::Config::from_yaml_validated(&crate::config::DEV_YAML.replace("{http_addr}", "127.0.0.1:8080"))
            .unwrap();
    assert!(lint(&cfg.rules).is_empty(), "{:?}", lint(&cfg.rules));
    let (rs, w) = (&cfg.rules, cfg.workloads.as_slice());
    let mut alice = subject(json!({"scope": "orders.read"}));
    alice.issuer = cfg.trusted_issuers[0].issuer.clone();
    let web = peer(WEB);
    assert_eq!(evaluate(rs, &bound(&alice, None, "echo", w)).unwrap().rule, "dev-exchange");
    assert_eq!(evaluate(rs, &bound(&alice, Some(&web), "web", w)).unwrap().rule, "dev-delegate");
    // Hop two: web's token re-exchanged by web for orders, and by nobody else.
    let mut hop1 = own("web", json!({"scope": "orders.read"}));
    hop1.issuer = cfg.issuer.clone();
    let d = evaluate(rs, &bound(&hop1, Some(&web), "orders", w)).unwrap();
    assert_eq!((d.rule.as_str(), d.act), ("dev-re-exchange", Some(json!({"sub": WEB}))));
    assert_eq!(
        evaluate(rs, &bound(&hop1, Some(&peer(ORDERS)), "orders", w)).unwrap_err().label(),
        "presenter_mismatch"
    );
    assert_eq!(evaluate(rs, &bound(&hop1, None, "orders", w)).unwrap_err().label(), "presenter_mismatch");
}

/// A subject `client` asserted itself (JWT bearer grant): its issuer is the client.
fn client_asserted(client: &str) -> Validated {
    subject(json!({ "iss": client, "sub": "user-7", "scope": "ledger.read" }))
}

#[test]
fn client_asserted_subjects_match_only_rules_listing_client() {
    let rs = rules(
        r#"
- name: any-issuer
  match: { audiences: [ledger] }
  grant: { scopes: ["*"] }
- name: asserted
  match: { issuers: [client], clients: [signer], audiences: [ledger] }
  grant: { scopes: ["ledger.*"] }
"#,
    );
    let asserted = client_asserted("signer");
    let by = |client| Requester { client: Some(client), client_asserted: true, ..Requester::default() };
    // Not the first rule (no `client` in its issuers): the second decides.
    let d = evaluate_as(&rs, &input(&asserted, None, "ledger"), by("signer")).unwrap();
    assert_eq!((d.rule.as_str(), d.sub.as_str()), ("asserted", "user-7"));
    assert_eq!(d.sub_id, SubId::IssSub { iss: "signer".into(), sub: "user-7".into() });
    // Another client's assertion: the rule would match but for its clients.
    let e = evaluate_as(&rs, &input(&client_asserted("rogue"), None, "ledger"), by("rogue")).unwrap_err();
    assert_eq!(e, Denied::ClientNotAllowed { client: Some("rogue".into()) });
    // The same token from a trusted issuer is no client assertion: `client` does not match it.
    let idp_token = subject(json!({ "scope": "ledger.read" }));
    let d = evaluate_for(&rs, &input(&idp_token, None, "ledger"), Some("signer")).unwrap();
    assert_eq!(d.rule, "any-issuer");
    let only_asserted =
        rules("- name: asserted\n  match: { issuers: [client], clients: [signer] }\n  grant: { scopes: [\"*\"] }\n");
    let e = evaluate_for(&only_asserted, &input(&idp_token, None, "ledger"), Some("signer")).unwrap_err();
    assert_eq!(e, Denied::NoRule { audience: "ledger".into() });
    let why = verdicts_as(&rs, &input(&asserted, None, "ledger"), by("signer"));
    assert!(why[0].1.as_deref().unwrap().contains("list `client`"), "{why:?}");
}

#[test]
fn client_in_audience_admits_only_a_client_named_by_aud_or_azp() {
    let rs = rules(
        "- name: bound\n  match: { audiences: [payments], presenter: client_in_audience }\n  grant: { scopes: [\"*\"] }\n",
    );
    let token = subject(json!({ "aud": ["web", "mobile"], "azp": "spa", "scope": "pay" }));
    let i = input(&token, None, "payments");
    for ok in ["web", "mobile", "spa"] {
        assert!(evaluate_for(&rs, &i, Some(ok)).is_ok(), "{ok}");
    }
    let e = evaluate_for(&rs, &i, Some("billing")).unwrap_err();
    assert_eq!(e, Denied::ClientNotInAudience { client: Some("billing".into()) });
    assert_eq!(e.label(), "client_not_in_audience");
    assert_eq!(e.to_string(), "client \"billing\" is not in the subject token's audience (aud or azp)");
    // No client (the ext_authz Check): refused, not skipped.
    let e = evaluate(&rs, &i).unwrap_err();
    assert_eq!(e, Denied::ClientNotInAudience { client: None });
}

#[test]
fn lint_compares_client_lists() {
    let rs = rules(
        "- name: a\n  match: { clients: [app] }\n  grant: { scopes: [\"*\"] }\n\
         - name: b\n  grant: { scopes: [\"*\"] }\n\
         - name: c\n  match: { clients: [app] }\n  grant: { scopes: [\"*\"] }\n",
    );
    // `a` (one client) does not hide `b` (any request); `b` hides `c`.
    let found = lint(&rs);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].starts_with("rules[2] \"c\""), "{found:?}");
}

/// A rule whose `match.condition` is `cond`, granting `orders.*`.
fn conditional(cond: &str) -> Vec<Rule> {
    rules(&format!("- name: c\n  match: {{ condition: {} }}\n  grant: {{ scopes: [\"orders.*\"] }}\n", json!(cond)))
}

fn check_request(method: &str, path: &str, headers: &[(&str, &str)], context: &[(&str, &str)]) -> RequestAttrs {
    RequestAttrs {
        method: method.into(),
        path: path.into(),
        host: "orders.shop".into(),
        headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        context: context.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

#[test]
fn cel_conditions_true_false_and_errors() {
    let alice = subject(json!({
        "scope": "orders.read orders.write", "tenant": "acme", "email": "alice@acme.example",
        "groups": ["dev", "sre"], "level": 3, "verified": true
    }));
    let web = peer(WEB);
    let get = check_request("GET", "/tenants/acme/orders", &[("x-tenant", "acme")], &[("tenant", "acme")]);
    // (expression, actor, request, Ok(matches) or Err(part of the reason))
    type Row<'a> = (&'a str, Option<&'a Actor>, Option<&'a RequestAttrs>, Result<bool, &'a str>);
    let table: &[Row<'_>] = &[
        ("subject.tenant == 'acme'", None, None, Ok(true)),
        ("subject.tenant == 'globex'", None, None, Ok(false)),
        ("'sre' in subject.groups", None, None, Ok(true)),
        ("subject.groups.exists(g, g.startsWith('adm'))", None, None, Ok(false)),
        ("subject.level >= 3 && subject.verified", None, None, Ok(true)),
        ("subject.email.endsWith('@acme.example')", None, None, Ok(true)),
        ("subject.iss == 'https://idp.example' && subject.sub == 'alice'", None, None, Ok(true)),
        ("audience == 'orders' && 'orders.read' in scopes", None, None, Ok(true)),
        ("client == null", None, None, Ok(true)),
        ("actor == null", None, None, Ok(true)),
        ("actor.kind == 'peer' && actor.id.endsWith('/sa/web')", Some(&web), None, Ok(true)),
        ("has(subject.department)", None, None, Ok(false)),
        // A missing claim, a type mismatch, a non-boolean: errors, never a match.
        ("subject.department == 'it'", None, None, Err("No such key")),
        ("subject.level == 'three' || subject.level + 'x' == 1", None, None, Err("")),
        ("subject.tenant", None, None, Err("not a boolean")),
        ("actor.id == 'x'", None, None, Err("")),
        // The request: on the Check path only.
        ("request.method in ['GET', 'HEAD']", None, Some(&get), Ok(true)),
        ("request.method in ['POST']", None, Some(&get), Ok(false)),
        ("subject.tenant == request.context.tenant", None, Some(&get), Ok(true)),
        ("request.path.startsWith('/tenants/' + subject.tenant + '/')", None, Some(&get), Ok(true)),
        ("request.headers['x-tenant'] == subject.tenant", None, Some(&get), Ok(true)),
        ("has(request.headers.x_debug)", None, Some(&get), Ok(false)),
        ("request.headers['x-missing'] == 'a'", None, Some(&get), Err("No such key")),
        // At the token endpoint `request` is null: reading it is an error.
        ("request.method == 'GET'", None, None, Err("")),
        ("request == null", None, None, Ok(true)),
        ("!has(request.headers.x_debug)", None, None, Err("there is no request")),
        ("request.context.tenant == 'acme'", None, None, Err("there is no request")),
    ];
    for (expr, actor, request, want) in table {
        let rs = conditional(expr);
        let i = input(&alice, *actor, "orders");
        let i = RuleInput { requested_scopes: Some(&["orders.read".to_string()][..]), ..i };
        let owned;
        let i = if actor.is_some() {
            owned = rules(&format!(
                "- name: c\n  match: {{ condition: {} }}\n  grant: {{ outcome: delegation, scopes: [\"orders.*\"] }}\n",
                json!(expr)
            ));
            (&owned, i)
        } else {
            (&rs, i)
        };
        let (rs, i) = i;
        let req = Requester { request: *request, ..Requester::default() };
        let got = evaluate_as(rs, &i, req);
        let why = verdicts_as(rs, &i, req)[0].1.clone();
        match want {
            Ok(true) => assert!(got.is_ok(), "{expr}: {got:?} {why:?}"),
            Ok(false) => {
                assert!(matches!(got, Err(Denied::NoRule { .. })), "{expr}: {got:?}");
                assert_eq!(why.as_deref(), Some("match.condition is false"), "{expr}");
            }
            Err(part) => {
                assert!(matches!(got, Err(Denied::NoRule { .. })), "{expr}: {got:?}");
                let why = why.unwrap_or_default();
                assert!(why.starts_with("match.condition failed") && why.contains(part), "{expr}: {why}");
            }
        }
    }
}

#[test]
fn cel_read_only_methods_get_read_scopes() {
    let rs = rules(
        r#"
- name: reads
  match: { audiences: [orders], condition: "request.method in ['GET', 'HEAD', 'OPTIONS']" }
  grant: { scopes: ["orders.read"] }
- name: writes
  match: { audiences: [orders] }
  grant: { scopes: ["orders.*"] }
"#,
    );
    let alice = subject(json!({"scope": "orders.read orders.write"}));
    let i = input(&alice, None, "orders");
    let scopes = |method: &str| {
        let r = check_request(method, "/orders", &[], &[]);
        let d = evaluate_as(&rs, &i, Requester { request: Some(&r), ..Requester::default() }).unwrap();
        (d.rule, d.scopes)
    };
    assert_eq!(scopes("GET"), ("reads".into(), vec!["orders.read".to_string()]));
    assert_eq!(scopes("POST"), ("writes".into(), vec!["orders.read".to_string(), "orders.write".to_string()]));
    // A conditional rule shadows nothing, and is shadowed like any other.
    assert!(lint(&rs).is_empty(), "{:?}", lint(&rs));
}

#[test]
fn cel_computed_claims() {
    let rs = rules(
        r#"
- name: computed
  grant:
    scopes: ["*"]
    computed_claims:
      tenant: "subject.email.split('@')[1]"
      admin_groups: "subject.groups.filter(g, g.startsWith('admin-'))"
      level: "subject.level * 2"
      nothing: "null"
      broken: "subject.department + '!'"
"#,
    );
    let alice = subject(
        json!({"scope": "a", "email": "alice@acme.example", "groups": ["dev", "admin-db", "admin-net"], "level": 2}),
    );
    let d = evaluate(&rs, &input(&alice, None, "orders")).unwrap();
    assert_eq!(d.claims.get("tenant"), Some(&json!("acme.example")));
    assert_eq!(d.claims.get("admin_groups"), Some(&json!(["admin-db", "admin-net"])));
    assert_eq!(d.claims.get("level"), Some(&json!(4)));
    // Null and errors leave the claim out, like a claim missing from copy_claims.
    assert!(!d.claims.contains_key("nothing") && !d.claims.contains_key("broken"), "{:?}", d.claims);
    let shown = expression_values(&rs, &input(&alice, None, "orders"), Requester::default());
    let broken = shown.iter().find(|(_, at, _, _)| at == "grant.computed_claims.broken").unwrap();
    assert!(broken.3.starts_with("error: No such key"), "{shown:?}");
    let tenant = shown.iter().find(|(_, at, _, _)| at == "grant.computed_claims.tenant").unwrap();
    assert_eq!(tenant.3, "\"acme.example\"");
}

#[test]
fn cel_request_reads_are_worked_out_at_compile_time() {
    use crate::config::{CelExpr, Keys};
    let reads = |e: &str| CelExpr::new(e).reads();
    let r = reads("request.method == 'GET' && request.headers['x-tenant'] == request.context.tenant");
    assert!(r.method && !r.path && !r.host);
    assert_eq!(r.headers, Keys::Some(["x-tenant".to_string()].into()));
    assert_eq!(r.context, Keys::Some(["tenant".to_string()].into()));
    assert!(reads("subject.tenant == 'a'").is_empty());
    // Whole maps (iterated, or indexed by a computed key) and the whole request.
    assert_eq!(reads("request.headers.exists(k, k == 'x')").headers, Keys::All);
    assert_eq!(reads("request.headers[subject.h] == 'x'").headers, Keys::All);
    let all = reads("size(request) > 0");
    assert!(all.method && all.path && all.headers == Keys::All && all.context == Keys::All);
    assert!(reads("has(request.headers.x_a)").headers == Keys::Some(["x_a".to_string()].into()));
    // `request == null` reads only which door asks.
    let presence = reads("request == null && subject.a == 'x'");
    assert!(presence.named && !presence.method && presence.headers == Keys::None && !presence.is_empty());
    // A comprehension variable is not the request.
    assert!(reads("subject.groups.exists(request_x, request_x == 'a')").is_empty());
    // Different values of a read attribute give different cache keys; others do not.
    let r = reads("request.method == 'GET' && request.headers['x-tenant'] == 'a'");
    let get = check_request("GET", "/a", &[("x-tenant", "a"), ("x-request-id", "1")], &[]);
    let other_id = check_request("GET", "/b", &[("x-tenant", "a"), ("x-request-id", "2")], &[]);
    let post = check_request("POST", "/a", &[("x-tenant", "a")], &[]);
    let no_tenant = check_request("GET", "/a", &[], &[]);
    let empty_tenant = check_request("GET", "/a", &[("x-tenant", "")], &[]);
    assert_eq!(get.key_bytes(&r), other_id.key_bytes(&r));
    let keys = [&get, &post, &no_tenant, &empty_tenant].map(|q| q.key_bytes(&r));
    for (a, ka) in keys.iter().enumerate() {
        for kb in &keys[a + 1..] {
            assert_ne!(ka, kb);
        }
    }
}

#[test]
fn cel_actor_claims_and_reads_of_the_subject() {
    let alice = subject(json!({"scope": "orders.read", "tenant": "acme", "groups": ["dev"]}));
    let svc = subject(json!({"sub": "svc-web", "env": "prod", "team": "web"}));
    let token = Actor { token: Some(ActorToken(std::sync::Arc::new(svc))), ..token_actor("svc-web", IDP, None) };
    let web = peer(WEB);
    let table: &[(&str, &Actor, Result<bool, &str>)] = &[
        ("actor.claims.env == 'prod' && actor.claims.team == 'web'", &token, Ok(true)),
        ("actor.claims['env'] == 'staging'", &token, Ok(false)),
        ("has(actor.claims.team) && !has(actor.claims.tenant)", &token, Ok(true)),
        ("actor.claims.sub == actor.id", &token, Ok(true)),
        // A whole map read: every claim is there.
        ("actor.claims.exists(k, k == 'team') && size(subject) > 3", &token, Ok(true)),
        // A peer proves no claims: an empty map.
        ("has(actor.claims.env)", &web, Ok(false)),
        ("actor.claims.env == 'prod'", &web, Err("No such key")),
    ];
    for (expr, actor, want) in table {
        let rs = rules(&format!(
            "- name: c\n  match: {{ condition: {} }}\n  grant: {{ outcome: delegation, scopes: [\"orders.*\"] }}\n",
            json!(expr)
        ));
        let i = input(&alice, Some(actor), "orders");
        let got = evaluate(&rs, &i);
        let why = verdicts(&rs, &i)[0].1.clone().unwrap_or_default();
        match want {
            Ok(true) => assert!(got.is_ok(), "{expr}: {got:?} {why}"),
            Ok(false) => assert_eq!(why, "match.condition is false", "{expr}"),
            Err(part) => assert!(why.starts_with("match.condition failed") && why.contains(part), "{expr}: {why}"),
        }
    }
    // Which variables each expression still builds whole, and which actor
    // claims it can read (the cache key holds their values).
    use crate::config::{CelExpr, Keys};
    let some = |names: &[&str]| Keys::Some(names.iter().map(|n| n.to_string()).collect());
    let compiled = |e: &str| {
        let c = CelExpr::new(e);
        let c = c.compiled().unwrap_or_else(|| panic!("{e}: {:?}", CelExpr::new(e).error()));
        (c.variables.clone(), c.actor_claims.clone())
    };
    assert_eq!(compiled("subject.email.endsWith('@a') && has(subject.tenant)"), (vec![], Keys::None));
    assert_eq!(compiled("subject['x-y'] == 'a' && actor.claims.env == 'p'"), (vec![], some(&["env"])));
    assert_eq!(compiled("size(subject) > 1 && actor.kind == 'peer'"), (vec!["subject", "actor"], Keys::None));
    assert_eq!(compiled("actor != null && actor.claims.exists(k, true)"), (vec!["actor"], Keys::All));
    assert_eq!(compiled("[actor].size() == 1").1, Keys::All);
    let err = CelExpr::new("actor.name == 'x'").error().map(str::to_owned);
    assert!(err.as_deref().is_some_and(|e| e.contains("actor has no field \"name\"")), "{err:?}");
}

/// `narrow` straight: requested ∩ held ∩ allowed, sorted and de-duplicated,
/// whichever of the requested or held lists is out of order or repeats a
/// name; nothing requested = every held scope the rule allows.
#[test]
fn narrow_sorts_and_deduplicates_what_is_requested_held_and_allowed() {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let held = strings(&["profile", "b.write", "a.read", "b.write", "email", "a.read"]);
    let allowed = |s: &str| s != "email";
    assert_eq!(narrow(None, &held, allowed), ["a.read", "b.write", "profile"]);
    let requested = strings(&["zzz", "profile", "a.read", "profile", "email", "b.read"]);
    assert_eq!(narrow(Some(&requested), &held, allowed), ["a.read", "profile"]);
    assert_eq!(narrow(Some(&[]), &held, allowed), Vec::<String>::new());
    assert_eq!(narrow(None, &[], allowed), Vec::<String>::new());
    assert_eq!(narrow(None, &held, |_| false), Vec::<String>::new());
}
