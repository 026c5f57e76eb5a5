//! Property tests (issue #13): the decision's invariants on generated rules,
//! subjects, actors and requests, and the parsers below the rules (token
//! validator, claims visitor, JWKS, YAML configuration) on arbitrary input.
//!
//! CI runs 2048 cases of each decision property and 256 of each parser
//! property (`PROPTEST_CASES` overrides both); for a longer run:
//! `PROPTEST_CASES=100000 cargo test --release --lib properties`.

use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;
use crate::trust::validator::Validated;

const IDP: &str = "https://idp.example";
const OTHER: &str = "https://other.example";

// ---------------------------------------------------------------------------
// Vocabularies: small on purpose, so that generated rules and inputs collide.

const SCOPES: &[&str] = &["a.read", "a.write", "b.read", "admin", "profile"];
const SCOPE_GLOBS: &[&str] = &["*", "a.*", "b.read", "admin", "x.*", "profile"];
const SUBJECTS: &[&str] = &["alice", "bob", "user-1", "user-2", "root"];
const SUBJECT_GLOBS: &[&str] = &["user-*", "bob", "*", "root"];
const ACTORS: &[&str] = &["spiffe://c/ns/a/sa/web", "spiffe://c/ns/b/sa/x", "ops-console", "svc"];
const ACTOR_GLOBS: &[&str] = &["spiffe://c/ns/a/sa/*", "spiffe://c/*", "ops-*", "svc", "*"];
const CLIENTS: &[&str] = &["web-app", "cli", "ops"];
const AUDIENCES: &[&str] = &["orders", "api://x", "payments"];
const AUDIENCE_GLOBS: &[&str] = &["orders", "api://*", "*"];
const ISSUERS: &[&str] = &[IDP, OTHER];

fn one(v: &'static [&'static str]) -> impl Strategy<Value = String> {
    proptest::sample::select(v).prop_map(str::to_owned)
}

fn some_of(v: &'static [&'static str], max: usize) -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec(one(v), 0..=max)
}

/// An `act` chain of depth 0–5 (outermost first), each entry maybe with `iss`.
fn act_chain() -> impl Strategy<Value = Option<Value>> {
    proptest::collection::vec((one(ACTORS), proptest::option::of(one(ISSUERS))), 0..=5).prop_map(|entries| {
        entries.into_iter().rev().fold(None, |inner, (sub, iss)| {
            let mut o = Map::new();
            o.insert("sub".into(), json!(sub));
            if let Some(iss) = iss {
                o.insert("iss".into(), json!(iss));
            }
            if let Some(inner) = inner {
                o.insert("act".into(), inner);
            }
            Some(Value::Object(o))
        })
    })
}

fn may_act() -> impl Strategy<Value = Option<Value>> {
    prop_oneof![
        2 => Just(None),
        1 => one(ACTORS).prop_map(|s| Some(json!({ "sub": s }))),
        1 => (one(ACTORS), one(ISSUERS)).prop_map(|(s, i)| Some(json!({ "sub": s, "iss": i }))),
    ]
}

fn subject() -> impl Strategy<Value = Validated> {
    (one(SUBJECTS), one(ISSUERS), some_of(SCOPES, 5), act_chain(), may_act(), proptest::option::of(one(CLIENTS)))
        .prop_map(|(sub, iss, scopes, act, may_act, client)| {
            let mut c = json!({ "iss": iss, "sub": sub, "aud": "orders", "scope": scopes.join(" ") });
            let o = c.as_object_mut().unwrap();
            if let Some(act) = act {
                o.insert("act".into(), act);
            }
            if let Some(m) = may_act {
                o.insert("may_act".into(), m);
            }
            if let Some(client) = client {
                o.insert("client_id".into(), json!(client));
            }
            super::tests::subject(c)
        })
}

fn actor() -> impl Strategy<Value = Option<Actor>> {
    prop_oneof![
        1 => Just(None),
        1 => one(ACTORS).prop_map(|sub| Some(Actor { kind: ActorKind::Peer, sub, iss: None, client_id: None, token: None })),
        2 => (one(ACTORS), one(ISSUERS), proptest::option::of(one(CLIENTS)), any::<bool>()).prop_map(
            |(sub, iss, client_id, both)| Some(Actor {
                kind: if both { ActorKind::PeerAndToken } else { ActorKind::Token },
                sub,
                iss: Some(iss),
                client_id,
                token: None,
            })
        ),
    ]
}

fn actor_match() -> impl Strategy<Value = Option<Value>> {
    proptest::option::of(
        (some_of(ACTOR_GLOBS, 2), some_of(ACTOR_GLOBS, 2), some_of(CLIENTS, 1), any::<bool>(), some_of(ISSUERS, 2))
            .prop_map(|(spiffe, sub, client_id, none, issuers)| {
                json!({ "spiffe": spiffe, "sub": sub, "client_id": client_id, "none": none, "issuers": issuers })
            }),
    )
}

fn rule(i: usize) -> impl Strategy<Value = Rule> {
    (
        (
            proptest::sample::select(&[Outcome::Exchange, Outcome::Delegation, Outcome::Impersonation][..]),
            some_of(SCOPE_GLOBS, 3),
            0usize..=5,
            proptest::option::of(proptest::sample::select(&["30s", "2m", "1h"][..])),
            some_of(SUBJECT_GLOBS, 2),
            any::<bool>(),
            any::<bool>(),
        ),
        (some_of(AUDIENCE_GLOBS, 2), some_of(ISSUERS, 2), actor_match()),
    )
        .prop_map(move |((outcome, scopes, depth, lifetime, imp, empty, act_as), (auds, issuers, actor))| {
            let mut grant = json!({
                "outcome": outcome.as_str(), "scopes": scopes, "max_chain_depth": depth,
                "impersonate_subjects": imp, "allow_empty_scope": empty,
                "delegation_shape": if act_as { "act_as" } else { "act" },
            });
            if let Some(l) = lifetime {
                grant["max_lifetime"] = json!(l);
            }
            let mut when = json!({ "audiences": auds, "issuers": issuers });
            if let Some(a) = actor {
                when["actor"] = a;
            }
            serde_json::from_value(json!({ "name": format!("r{i}"), "match": when, "grant": grant })).unwrap()
        })
}

fn rules() -> impl Strategy<Value = Vec<Rule>> {
    (0usize..=4).prop_flat_map(|n| (0..n).map(rule).collect::<Vec<_>>())
}

#[derive(Debug, Clone)]
struct Request {
    actor: Option<Actor>,
    audience: String,
    requested_scopes: Option<Vec<String>>,
    requested_subject: Option<String>,
}

fn request() -> impl Strategy<Value = Request> {
    (actor(), one(AUDIENCES), proptest::option::of(some_of(SCOPES, 4)), proptest::option::of(one(SUBJECTS))).prop_map(
        |(actor, audience, requested_scopes, requested_subject)| Request {
            actor,
            audience,
            requested_scopes,
            requested_subject,
        },
    )
}

fn rule_input<'a>(subject: &'a Validated, r: &'a Request) -> RuleInput<'a> {
    RuleInput {
        subject,
        actor: r.actor.as_ref(),
        audience: &r.audience,
        requested_scopes: r.requested_scopes.as_deref(),
        requested_subject: r.requested_subject.as_deref(),
        workloads: &[],
    }
}

// ---------------------------------------------------------------------------
// The invariants, as one checker so that it can itself be tested against
// broken decisions (`the_checker_refuses_broken_decisions`).

fn depth_of(act: Option<&Value>) -> usize {
    let mut d = 0;
    let mut cur = act;
    while let Some(v) = cur {
        d += 1;
        cur = v.get("act");
    }
    d
}

/// Every invariant a granted decision must keep; `Err` names the one broken.
fn check_decision(rules: &[Rule], input: &RuleInput<'_>, d: &Decision) -> Result<(), String> {
    let rule = rules.iter().find(|r| r.name == d.rule).ok_or("decided by an unknown rule")?;
    let g = &rule.grant;
    let subject = input.subject;
    if d.outcome != g.outcome {
        return Err("outcome is not the rule's".into());
    }
    // Scopes: requested ∩ subject ∩ rule, sorted and de-duplicated.
    for s in &d.scopes {
        if !subject.scopes.contains(s) {
            return Err(format!("granted scope {s:?} the subject does not hold"));
        }
        if input.requested_scopes.is_some_and(|r| !r.contains(s)) {
            return Err(format!("granted scope {s:?} that was not requested"));
        }
        if !g.scopes.iter().any(|p| p.matches(s)) {
            return Err(format!("granted scope {s:?} that no pattern of the rule allows"));
        }
    }
    if d.scopes.windows(2).any(|w| w[0] >= w[1]) {
        return Err("scopes not sorted and unique".into());
    }
    if d.scopes.is_empty() && !g.allow_empty_scope {
        return Err("empty scope under a rule that does not allow it".into());
    }
    // The act chain: kept, unchanged, never dropped; depth within the cap.
    let prior = subject.claims.act.as_ref();
    let out_chain = match (d.outcome, g.delegation_shape) {
        (Outcome::Exchange, _) => {
            if d.act.as_ref() != prior {
                return Err("an exchange changed the act chain".into());
            }
            d.act.as_ref()
        }
        (Outcome::Delegation, DelegationShape::Act) => {
            let act = d.act.as_ref().ok_or("a delegation without act")?;
            let actor = input.actor.ok_or("a delegation without an actor")?;
            if act.get("sub").and_then(Value::as_str) != Some(actor.sub.as_str()) {
                return Err("act.sub is not the actor".into());
            }
            if act.get("act") != prior {
                return Err("the prior act chain is not nested unchanged under the new actor".into());
            }
            d.act.as_ref()
        }
        (Outcome::Delegation, DelegationShape::ActAs) => {
            let act_as = d.act_as.as_ref().ok_or("act_as shape without act_as")?;
            if act_as.get("act") != prior {
                return Err("act_as does not carry the prior chain unchanged".into());
            }
            if d.act.is_some() {
                return Err("act_as shape with act".into());
            }
            Some(act_as)
        }
        (Outcome::Impersonation, _) => {
            if prior.is_some() {
                return Err("impersonation dropped the act chain of a delegated token".into());
            }
            if d.act.is_some() || d.act_as.is_some() {
                return Err("impersonation with an act chain".into());
            }
            None
        }
    };
    let depth = match (d.outcome, g.delegation_shape) {
        (Outcome::Delegation, DelegationShape::ActAs) => depth_of(prior) + 1,
        _ => depth_of(out_chain),
    };
    if depth > g.max_chain_depth {
        return Err(format!("chain depth {depth} exceeds the rule's {}", g.max_chain_depth));
    }
    // The minted sub: the subject's, the actor's (act_as), or an impersonated one.
    let act_as_shape = d.outcome == Outcome::Delegation && g.delegation_shape == DelegationShape::ActAs;
    if act_as_shape {
        if Some(d.sub.as_str()) != input.actor.map(|a| a.sub.as_str()) {
            return Err("act_as shape whose sub is not the actor".into());
        }
    } else if d.sub != subject.sub {
        if d.outcome != Outcome::Impersonation {
            return Err("another subject without an impersonation rule".into());
        }
        let actor = input.actor.ok_or("another subject impersonated without an actor")?;
        if input.requested_subject != Some(d.sub.as_str()) {
            return Err("impersonated a subject nobody asked for".into());
        }
        if !g.impersonate_subjects.iter().any(|p| p.matches(&d.sub)) {
            return Err("impersonated a subject the rule does not list".into());
        }
        if let Some(am) = &rule.when.actor {
            if am.names_someone() && !names(actor, &am.spiffe, &am.sub, &am.client_id) {
                return Err("impersonation by an actor the rule does not name".into());
            }
        }
    }
    if input.requested_subject.is_some_and(|s| s != subject.sub)
        && d.sub != input.requested_subject.unwrap()
        && !act_as_shape
    {
        return Err("a requested subject was ignored".into());
    }
    if d.outcome == Outcome::Impersonation && d.audit.is_none() {
        return Err("an impersonation without an audit record".into());
    }
    // may_act is honoured.
    if let (Some(m), Some(actor)) = (&subject.claims.may_act, input.actor) {
        if m.get("sub").and_then(Value::as_str) != Some(actor.sub.as_str()) {
            return Err("may_act.sub is not the actor".into());
        }
        if let Some(iss) = m.get("iss").and_then(Value::as_str) {
            if actor.token_issuer() != Some(iss) {
                return Err("may_act.iss is not the actor token's issuer".into());
            }
        }
    }
    // An actor token only from an issuer the rule admits.
    if let Some(iss) = input.actor.and_then(Actor::token_issuer) {
        let admitted = match rule.when.actor.as_ref().filter(|a| !a.issuers.is_empty()) {
            Some(am) => am.issuers.iter().any(|i| i == iss),
            None => iss == subject.issuer,
        };
        if !admitted {
            return Err("an actor token from an issuer the rule does not admit".into());
        }
    }
    if d.max_lifetime != g.max_lifetime.map(|l| l.0) {
        return Err("lifetime cap is not the rule's".into());
    }
    Ok(())
}

/// Pure and cheap (about 0.4 ms a case in a debug build): 2048 cases unless
/// `PROPTEST_CASES` says otherwise.
fn decision_config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(2048);
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(decision_config())]

    /// Every granted decision keeps every invariant; a refusal is fine.
    #[test]
    fn granted_decisions_keep_every_invariant(rs in rules(), s in subject(), r in request()) {
        let input = rule_input(&s, &r);
        if let Ok(d) = evaluate(&rs, &input) {
            if let Err(why) = check_decision(&rs, &input, &d) {
                prop_assert!(false, "{why}\nrules: {rs:#?}\ninput: {input:#?}\ndecision: {d:#?}");
            }
        }
    }

    /// Default deny: no rules, or only rules for other audiences, never grant.
    #[test]
    fn no_matching_rule_never_grants(rs in rules(), s in subject(), r in request()) {
        let input = rule_input(&s, &r);
        prop_assert!(evaluate(&[], &input).is_err());
        let mut elsewhere = rs.clone();
        for rule in &mut elsewhere {
            rule.when.audiences = vec![serde_json::from_value(json!("nowhere-*")).unwrap()];
        }
        prop_assert!(evaluate(&elsewhere, &input).is_err());
    }

    /// Only the first matching rule decides, and evaluating is deterministic.
    #[test]
    fn the_first_matching_rule_decides(rs in rules(), s in subject(), r in request()) {
        let input = rule_input(&s, &r);
        let first = verdicts(&rs, &input).into_iter().find(|(_, why)| why.is_none()).map(|(name, _)| name);
        if let Ok(d) = evaluate(&rs, &input) {
            prop_assert_eq!(Some(d.rule.clone()), first);
        }
        prop_assert_eq!(evaluate(&rs, &input), evaluate(&rs, &input));
    }
}

/// The checker is not vacuous: the generators reach grants of each outcome,
/// and each way of breaking a granted decision is caught.
#[test]
fn the_checker_refuses_broken_decisions() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = (rules(), subject(), request());
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    let mut broken = std::collections::BTreeMap::<&str, usize>::new();
    for _ in 0..5_000 {
        let (rs, s, r) = strategy.new_tree(&mut runner).unwrap().current();
        let input = rule_input(&s, &r);
        let Ok(d) = evaluate(&rs, &input) else {
            continue;
        };
        check_decision(&rs, &input, &d).unwrap();
        *seen.entry(d.outcome.as_str()).or_default() += 1;
        if s.claims.act.is_some() {
            *seen.entry("with prior act").or_default() += 1;
        }
        if d.sub != s.sub && d.outcome == Outcome::Impersonation {
            *seen.entry("other subject").or_default() += 1;
        }
        let mut mutants: Vec<(&str, Decision)> = Vec::new();
        let mut m = d.clone();
        m.scopes.push("zz.not-held".into());
        mutants.push(("extra scope", m));
        if let Some(act) = d.act.as_ref().filter(|_| s.claims.act.is_some()) {
            let mut m = d.clone();
            m.act = if d.outcome == Outcome::Exchange { None } else { Some(json!({ "sub": act["sub"] })) };
            mutants.push(("dropped act", m));
        }
        if d.outcome == Outcome::Impersonation {
            let mut m = d.clone();
            m.audit = None;
            mutants.push(("no audit", m));
        } else if d.sub == s.sub {
            let mut m = d.clone();
            m.sub = "mallory".into();
            mutants.push(("other subject", m));
        }
        for (what, m) in mutants {
            assert!(check_decision(&rs, &input, &m).is_err(), "{what} not caught: {m:#?}");
            *broken.entry(what).or_default() += 1;
        }
    }
    for outcome in ["exchange", "delegation", "impersonation", "with prior act", "other subject"] {
        assert!(seen.get(outcome).copied().unwrap_or(0) >= 5, "generators rarely reach {outcome}: {seen:?}");
    }
    for what in ["extra scope", "dropped act", "no audit", "other subject"] {
        assert!(broken.get(what).copied().unwrap_or(0) >= 5, "mutant {what} rarely tried: {broken:?}");
    }
}

mod parsers;
