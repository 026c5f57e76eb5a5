//! The rule engine: who may exchange, delegate or impersonate, for which
//! subjects, towards which audiences, with which scopes and for how long.
//!
//! Pure (no I/O, no clock) so it can be tested as a table. Rules are evaluated
//! in order; the first rule whose `match` fits decides, and no match is a
//! refusal (default deny). Some refusals hold whatever the rules say:
//! - `may_act` in the subject token must admit the actor (RFC 8693 §4.4);
//! - a token that carries `act` never becomes one without it (no laundering a
//!   delegated token into a clean one);
//! - the `act` chain never grows past the rule's depth limit;
//! - an actor token is believed only from the issuers the rule admits (its
//!   `actor.issuers`, else the subject token's own issuer);
//! - another subject is only ever impersonated by a proven actor;
//! - one of stsgate's own tokens is re-exchanged only by the party it was
//!   issued to (a workload of its audience, `workloads`), only under a rule
//!   that lists `self` in `match.issuers`, and only for its own subject; a
//!   rule with `match.presenter: audience` binds an IdP's token the same way.
//!
//! Decisions look only at top-level claims and the current actor; nested
//! `act` entries are carried along, never trusted (§4.1).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

pub(crate) mod cel;
pub use cel::RequestAttrs;
use cel::Vars;
pub(crate) use cel::actor_claims_key_bytes;

use crate::config::{CLIENT_ISSUER, DelegationShape, Outcome, Presenter, Rule, SELF_ISSUER, Workload};
use crate::glob::Glob;
pub use crate::trust::validator::SubId;
use crate::trust::validator::Validated;

/// The party that presents the subject token and wants to act.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub(crate) kind: ActorKind,
    /// SPIFFE ID for a peer; `sub` of an actor token.
    pub(crate) sub: String,
    /// Issuer of an actor token; none for a peer.
    pub(crate) iss: Option<String>,
    /// `client_id`/`azp` of an actor token.
    pub(crate) client_id: Option<String>,
    /// The validated actor token, for expressions that read its claims
    /// (`actor.claims`); none for a peer.
    pub(crate) token: Option<ActorToken>,
}

/// An actor token's validated claims. Two are equal when they are the same
/// validation: its values are already in `Actor`'s other fields.
#[derive(Debug, Clone)]
pub(crate) struct ActorToken(pub(crate) Arc<Validated>);

impl PartialEq for ActorToken {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for ActorToken {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ActorKind {
    /// The calling workload's mTLS identity, as Envoy reports it.
    Peer,
    /// A validated actor token.
    Token,
    /// An actor token whose `sub` is the mTLS peer's identity: both prove it.
    PeerAndToken,
}

impl Actor {
    /// The one actor of a request from its two possible sources: an actor
    /// token whose `sub` is the peer's identity is proven by both; a peer and
    /// a token naming different parties are refused.
    pub(crate) fn combine(peer: Option<Actor>, token: Option<Actor>) -> Result<Option<Actor>, Denied> {
        match (peer, token) {
            (Some(p), Some(t)) if p.sub != t.sub => Err(Denied::ActorConflict),
            (Some(_), Some(t)) => Ok(Some(Actor { kind: ActorKind::PeerAndToken, ..t })),
            (p, t) => Ok(t.or(p)),
        }
    }

    /// The issuer of the actor token, when an actor token proves this actor.
    pub(crate) fn token_issuer(&self) -> Option<&str> {
        match self.kind {
            ActorKind::Peer => None,
            ActorKind::Token | ActorKind::PeerAndToken => self.iss.as_deref(),
        }
    }

    /// Whether the mTLS peer identity proves this actor.
    pub(crate) fn peer_proven(&self) -> bool {
        matches!(self.kind, ActorKind::Peer | ActorKind::PeerAndToken)
    }

    /// RFC 9493 identifier of this actor: its token's `iss` + `sub`, else the
    /// peer's URI (a SPIFFE ID) or, for a peer identity that is no URI, opaque.
    fn sub_id(&self) -> SubId {
        match self.token_issuer() {
            Some(iss) => SubId::IssSub { iss: iss.to_owned(), sub: self.sub.clone() },
            None if is_uri(&self.sub) => SubId::Uri { uri: self.sub.clone() },
            None => SubId::Opaque { id: self.sub.clone() },
        }
    }

    /// The `act` object naming this actor (RFC 8693 §4.1).
    fn act_claim(&self) -> Map<String, Value> {
        let mut act = Map::new();
        act.insert("sub".into(), Value::String(self.sub.clone()));
        if let Some(iss) = &self.iss {
            act.insert("iss".into(), Value::String(iss.clone()));
        }
        act
    }
}

/// What the rules look at.
#[derive(Debug, Clone)]
pub struct RuleInput<'a> {
    pub subject: &'a Validated,
    pub actor: Option<&'a Actor>,
    /// The target audience of the new token.
    pub audience: &'a str,
    /// Scopes asked for (route, request); `None` = as many as allowed.
    pub requested_scopes: Option<&'a [String]>,
    /// A different subject the actor asks to impersonate.
    pub requested_subject: Option<&'a str>,
    /// The `workloads` table: which actors are the party a token was issued
    /// to (presenter binding).
    pub workloads: &'a [Workload],
}

/// Who asks besides the actor: the authenticated token endpoint client, and
/// whether the subject token is a JWT bearer assertion that client signed
/// with its own key (RFC 7523 §2.1; rules that list `client` in
/// `match.issuers`). The ext_authz Check has neither.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Requester<'a> {
    pub client: Option<&'a str>,
    /// The subject was asserted by `client` itself, not by a trusted issuer.
    pub client_asserted: bool,
    /// The HTTP request of a Check, for `match.condition` and
    /// `grant.computed_claims` (`request`); `None` at the token endpoint.
    pub request: Option<&'a RequestAttrs>,
}

/// A granted exchange: everything the minted token will say.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub(crate) rule: String,
    pub(crate) outcome: Outcome,
    pub(crate) sub: String,
    pub(crate) act: Option<Value>,
    pub(crate) act_as: Option<Value>,
    /// Sorted, de-duplicated; empty only when the rule allows it.
    pub(crate) scopes: Vec<String>,
    pub(crate) max_lifetime: Option<Duration>,
    /// RFC 9493 `sub_id` of the minted `sub`: the subject token's issuer and
    /// `sub` (also for an impersonated subject: the rule admitted it under
    /// that issuer), or the actor's for the `act_as` shape.
    pub(crate) sub_id: SubId,
    /// `client_id` of the minted token: the actor token's (its issuer is one
    /// the rule admitted), else the subject token's; `None` = the front
    /// door's default.
    pub(crate) client_id: Option<String>,
    /// Copied, added and audit claims.
    pub(crate) claims: Map<String, Value>,
    pub(crate) downstream: Vec<DownstreamGrant>,
    /// Set when the decision must be written to the audit log, which happens
    /// only once the token is minted (see `exchange::Engine::exchange`).
    pub(crate) audit: Option<String>,
}

/// An extra token for a downstream audience, into its own header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DownstreamGrant {
    pub(crate) audience: String,
    pub(crate) header: String,
    pub(crate) scopes: Vec<String>,
}

/// Why an exchange was refused. The text is safe to show the caller: it names
/// rules and conditions, never token contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no rule allows this exchange for audience {audience:?}")]
    NoRule { audience: String },
    #[error("rule {rule:?} grants none of the requested scopes")]
    NoScope { rule: String },
    #[error("no target audience for this request")]
    NoAudience,
    #[error("the subject token's may_act does not admit this actor")]
    MayAct,
    #[error("the subject token's {0} claim is malformed")]
    BadClaim(&'static str),
    #[error("rule {rule:?} would drop the act claim of a delegated token")]
    WouldDropAct { rule: String },
    #[error("delegation chain of {depth} exceeds rule {rule:?}'s limit of {max}")]
    ChainTooDeep { rule: String, depth: usize, max: usize },
    #[error("the actor identities disagree (peer certificate vs actor token)")]
    ActorConflict,
    #[error("impersonating another subject needs a rule that names this actor")]
    ImpersonationRefused,
    /// A rule would match but for its `match.clients`.
    #[error("{}", match .client { Some(c) => format!("client {c:?} may not make this exchange"), None => "this exchange needs an authenticated client".to_owned() })]
    ClientNotAllowed { client: Option<String> },
    /// The rule's `match.presenter: client_in_audience`: the authenticated
    /// client must be one of the subject token's `aud` values or its `azp`.
    #[error("{}", match .client { Some(c) => format!("client {:?} is not in the subject token's audience (aud or azp)", c.chars().take(128).collect::<String>()), None => "only a client in the subject token's audience may present it, and the request has no authenticated client".to_owned() })]
    ClientNotInAudience { client: Option<String> },
    /// The token may be presented only by a workload of its audience (one of
    /// stsgate's own tokens, or a rule's `match.presenter: audience`), and
    /// this actor is none of them, or there is no actor.
    #[error("{}", presenter_mismatch(.issued_to, .actor.as_deref()))]
    PresenterMismatch {
        /// The token's `aud` values (and `azp`, for an IdP's token).
        issued_to: Vec<String>,
        /// The actor refused; `None` when the request has none.
        actor: Option<String>,
    },
}

/// The description of `Denied::PresenterMismatch`. The names are verified
/// claims and the proven actor, quoted (escaped) and cut short.
fn presenter_mismatch(issued_to: &[String], actor: Option<&str>) -> String {
    const SHOWN: usize = 4;
    let short = |s: &str| format!("{:?}", s.chars().take(128).collect::<String>());
    let mut to: Vec<String> = issued_to.iter().take(SHOWN).map(|a| short(a)).collect();
    if issued_to.len() > SHOWN {
        to.push(format!("and {} more", issued_to.len() - SHOWN));
    }
    let of = if issued_to.len() > 1 { "any of them" } else { "it" };
    match (to.is_empty(), actor) {
        (true, _) => "the token names no audience, so no workload may present it".into(),
        (false, Some(actor)) => {
            format!("the token was issued to {}; actor {} is not a workload of {of}", to.join(", "), short(actor))
        }
        (false, None) => {
            format!(
                "the token was issued to {}; only a workload of {of} may present it, and the request has no actor",
                to.join(", ")
            )
        }
    }
}

impl Denied {
    /// A bounded label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Denied::NoRule { .. } => "no_rule",
            Denied::NoScope { .. } => "no_scope",
            Denied::NoAudience => "no_audience",
            Denied::MayAct => "may_act",
            Denied::BadClaim(_) => "bad_claim",
            Denied::WouldDropAct { .. } => "would_drop_act",
            Denied::ChainTooDeep { .. } => "chain_too_deep",
            Denied::ActorConflict => "actor_conflict",
            Denied::ImpersonationRefused => "impersonation_refused",
            Denied::PresenterMismatch { .. } => "presenter_mismatch",
            Denied::ClientNotAllowed { .. } => "client_not_allowed",
            Denied::ClientNotInAudience { .. } => "client_not_in_audience",
        }
    }
}

/// `evaluate_for` without a client (the ext_authz Check).
pub fn evaluate(rules: &[Rule], input: &RuleInput<'_>) -> Result<Decision, Denied> {
    evaluate_for(rules, input, None)
}

/// The decision for a request from `client` (an authenticated token endpoint
/// client, if any): the first rule that matches decides. When none does but
/// one would were it not for its `match.clients`, the client is refused by
/// name (access_denied), not the target.
pub fn evaluate_for(rules: &[Rule], input: &RuleInput<'_>, client: Option<&str>) -> Result<Decision, Denied> {
    evaluate_as(rules, input, Requester { client, ..Requester::default() })
}

/// `evaluate_for` for a request from `req`: its client and whether that
/// client asserted the subject itself.
pub fn evaluate_as(rules: &[Rule], input: &RuleInput<'_>, req: Requester<'_>) -> Result<Decision, Denied> {
    check_may_act(input)?;
    // Whatever the rules say: stsgate's own token only from its audience.
    if input.subject.is_own() {
        check_presenter(input)?;
    }
    let vars = Vars::new(input, req.client, req.request);
    let Some(rule) = rules.iter().find(|r| why_not_for(r, input, req, &vars).is_none()) else {
        if rules.iter().any(|r| but_for_clients(r, input, req.client_asserted, &vars)) {
            return Err(Denied::ClientNotAllowed { client: req.client.map(str::to_owned) });
        }
        return Err(if input.requested_subject.is_some_and(|s| s != input.subject.sub) {
            Denied::ImpersonationRefused
        } else {
            Denied::NoRule { audience: input.audience.to_owned() }
        });
    };
    decide(rule, input, req, &vars)
}

/// Whether `rule` lists clients and matches `input` once they are set aside.
fn but_for_clients(rule: &Rule, input: &RuleInput<'_>, client_asserted: bool, vars: &Vars<'_>) -> bool {
    !rule.when.clients.is_empty() && why_not_but_clients(rule, input, client_asserted, vars).is_none()
}

/// For each rule, in order, why it does not match (`None` = it matches). Used
/// for debug logs and `stsgate explain`.
#[cfg(test)]
pub(crate) fn verdicts(rules: &[Rule], input: &RuleInput<'_>) -> Vec<(String, Option<String>)> {
    verdicts_for(rules, input, None)
}

/// `verdicts` for a request from `client`.
#[cfg(test)]
pub(crate) fn verdicts_for(
    rules: &[Rule],
    input: &RuleInput<'_>,
    client: Option<&str>,
) -> Vec<(String, Option<String>)> {
    verdicts_as(rules, input, Requester { client, ..Requester::default() })
}

/// `verdicts` for a request from `req`.
pub(crate) fn verdicts_as(rules: &[Rule], input: &RuleInput<'_>, req: Requester<'_>) -> Vec<(String, Option<String>)> {
    let vars = Vars::new(input, req.client, req.request);
    rules.iter().map(|r| (r.name.clone(), why_not_for(r, input, req, &vars).map(|w| w.to_string()))).collect()
}

/// Each CEL expression of each rule with its value (or error) for this
/// request, in rule order: (rule, where, source, value). For `stsgate explain`.
pub(crate) fn expression_values(
    rules: &[Rule],
    input: &RuleInput<'_>,
    req: Requester<'_>,
) -> Vec<(String, String, String, String)> {
    let vars = Vars::new(input, req.client, req.request);
    let mut out = Vec::new();
    for r in rules {
        let exprs = r.when.condition.iter().map(|c| ("match.condition".to_owned(), c));
        let claims = r.grant.computed_claims.iter().map(|(k, c)| (format!("grant.computed_claims.{k}"), c));
        for (at, c) in exprs.chain(claims) {
            out.push((r.name.clone(), at, c.source().to_owned(), cel::show(&vars.eval(c))));
        }
    }
    out
}

/// Why a rule does not match, in words when they are wanted (`explain`,
/// the debug log): a decision that only needs to know does not format them.
#[derive(Debug)]
enum WhyNot<'a> {
    Said(&'static str),
    Client(&'a str),
    Audience(&'a str),
    SubjectClaim(&'a str),
    ActorIssuerNotListed(&'a str),
    ActorIssuerNotTheSubjects(&'a str),
    ActorNotListed(&'a str),
    ExchangeWithActor(&'a str),
    NoImpersonating(&'a str),
    ConditionFailed(String),
}

impl std::fmt::Display for WhyNot<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WhyNot::Said(s) => f.write_str(s),
            WhyNot::Client(c) => write!(f, "client {c:?} is not listed"),
            WhyNot::Audience(a) => write!(f, "audience {a:?} is not listed"),
            WhyNot::SubjectClaim(c) => write!(f, "subject claim {c:?} does not match"),
            WhyNot::ActorIssuerNotListed(i) => write!(f, "actor token issuer {i:?} is not in actor.issuers"),
            WhyNot::ActorIssuerNotTheSubjects(i) => {
                write!(f, "actor token issuer {i:?} is not the subject token's (and actor.issuers is empty)")
            }
            WhyNot::ActorNotListed(a) => write!(f, "actor {a:?} is not listed"),
            WhyNot::ExchangeWithActor(a) => write!(f, "an exchange involves no actor, but the request has actor {a:?}"),
            WhyNot::NoImpersonating(s) => write!(f, "rule does not allow impersonating {s:?}"),
            WhyNot::ConditionFailed(e) => write!(f, "match.condition failed: {e}"),
        }
    }
}

/// `why_not` for a request from `req`: `match.clients` first. Inlined into
/// the loop over the rules (a call per rule otherwise).
#[inline(always)]
fn why_not_for<'a>(
    rule: &'a Rule,
    input: &'a RuleInput<'_>,
    req: Requester<'a>,
    vars: &Vars<'_>,
) -> Option<WhyNot<'a>> {
    let listed = &rule.when.clients;
    if !listed.is_empty() {
        match req.client {
            None => return Some(WhyNot::Said("rule lists clients and the request has no authenticated client")),
            Some(c) if !listed.iter().any(|g| g.matches(c)) => return Some(WhyNot::Client(c)),
            Some(_) => {}
        }
    }
    why_not_but_clients(rule, input, req.client_asserted, vars)
}

/// The first condition of `rule` that a request without a client fails: a
/// rule that lists clients never matches. (The property tests use it.)
#[cfg(test)]
#[allow(dead_code)]
fn why_not(rule: &Rule, input: &RuleInput<'_>) -> Option<String> {
    let req = Requester::default();
    why_not_for(rule, input, req, &Vars::new(input, None, None)).map(|w| w.to_string())
}

/// A space-separated scope parameter (RFC 6749 §3.3), as the list of scopes
/// `RuleInput::requested_scopes` takes.
pub(crate) fn split_scopes(scope: &str) -> Vec<String> {
    let mut out = Vec::new();
    crate::trust::claims::push_scopes(scope, &mut out);
    out
}

/// The first condition of `rule` that `input` fails, in words, leaving
/// `match.clients` aside. `client_asserted`: the subject token is an
/// assertion the request's client signed itself.
fn why_not_but_clients<'a>(
    rule: &'a Rule,
    input: &'a RuleInput<'_>,
    client_asserted: bool,
    vars: &Vars<'_>,
) -> Option<WhyNot<'a>> {
    let m = &rule.when;
    let own = input.subject.is_own();
    if own && m.issuers.is_empty() {
        return Some(WhyNot::Said("stsgate's own tokens match only rules that list `self` in match.issuers"));
    }
    if client_asserted && !m.admits_client_assertions() {
        return Some(WhyNot::Said(
            "a subject asserted by the client matches only rules that list `client` in match.issuers",
        ));
    }
    // `self` names stsgate's own tokens, `client` the client's own
    // assertions; every other entry an IdP's exact `iss`.
    let listed = |i: &String| match i.as_str() {
        SELF_ISSUER => own,
        CLIENT_ISSUER => client_asserted,
        _ => !own && !client_asserted && i == &input.subject.issuer,
    };
    if !m.issuers.is_empty() && !m.issuers.iter().any(listed) {
        return Some(WhyNot::Said(if own { "`self` is not listed" } else { "subject token issuer is not listed" }));
    }
    if !m.audiences.is_empty() && !m.audiences.iter().any(|a| a.matches(input.audience)) {
        return Some(WhyNot::Audience(input.audience));
    }
    for (claim, patterns) in &m.subject {
        if !any_claim_value(input.subject, claim, |v| patterns.iter().any(|p| p.matches(v))) {
            return Some(WhyNot::SubjectClaim(claim));
        }
    }
    let outcome = rule.grant.outcome;
    if let Some(iss) = input.actor.and_then(Actor::token_issuer) {
        // A token's `sub` and `client_id` are names in its issuer's namespace.
        if !actor_issuer_admitted(rule, input.subject, iss) {
            return Some(if m.actor.as_ref().is_some_and(|a| !a.issuers.is_empty()) {
                WhyNot::ActorIssuerNotListed(iss)
            } else {
                WhyNot::ActorIssuerNotTheSubjects(iss)
            });
        }
    }
    match (&m.actor, input.actor) {
        (Some(am), None) if !am.none => return Some(WhyNot::Said("rule needs an actor and the request has none")),
        (Some(am), Some(actor)) => {
            let named = names(actor, &am.spiffe, &am.sub, &am.client_id);
            // `actor: {}` (or only `none: false`) admits any actor.
            if !named && (am.names_someone() || am.none) {
                return Some(WhyNot::ActorNotListed(&actor.sub));
            }
        }
        _ => {}
    }
    match (outcome, input.actor) {
        (Outcome::Exchange, Some(actor)) => {
            return Some(WhyNot::ExchangeWithActor(&actor.sub));
        }
        (Outcome::Delegation, None) => return Some(WhyNot::Said("delegation needs an actor and the request has none")),
        _ => {}
    }
    if let Some(wanted) = input.requested_subject.filter(|s| *s != input.subject.sub) {
        if outcome != Outcome::Impersonation {
            return Some(WhyNot::Said("rule does not impersonate other subjects"));
        }
        // An own token is re-issued for its own subject only: whom it was
        // minted for is all stsgate knows, not which subjects an IdP vouches for.
        if own {
            return Some(WhyNot::Said("stsgate's own tokens are never re-issued for another subject"));
        }
        // Whatever the rule says (`none: true` is refused by check-config):
        // nobody becomes another subject without a proven actor.
        if input.actor.is_none() {
            return Some(WhyNot::Said("impersonating another subject needs a proven actor and the request has none"));
        }
        if !rule.grant.impersonate_subjects.iter().any(|g| g.matches(wanted)) {
            return Some(WhyNot::NoImpersonating(wanted));
        }
    }
    // Last: the other conditions are cheaper, and an error here is never a match.
    if let Some(c) = &m.condition {
        match vars.condition(c) {
            Ok(true) => {}
            Ok(false) => return Some(WhyNot::Said("match.condition is false")),
            Err(e) => {
                tracing::debug!(rule = rule.name, error = e, "match.condition failed: no match");
                return Some(WhyNot::ConditionFailed(e));
            }
        }
    }
    None
}

/// Whether `actor` is named by these globs, as rules and workloads name
/// actors: an mTLS peer by its identity (`spiffe`), an actor token by its
/// `sub` or `client_id`, one proven both ways by either.
fn names(actor: &Actor, spiffe: &[Glob], sub: &[Glob], client_id: &[Glob]) -> bool {
    let by_peer = || spiffe.iter().any(|g| g.matches(&actor.sub));
    let by_token = || {
        sub.iter().any(|g| g.matches(&actor.sub))
            || actor.client_id.as_deref().is_some_and(|c| client_id.iter().any(|g| g.matches(c)))
    };
    match actor.kind {
        ActorKind::Peer => by_peer(),
        ActorKind::Token => by_token(),
        ActorKind::PeerAndToken => by_peer() || by_token(),
    }
}

/// Presenter binding: the token may be presented only by the party it was
/// issued to, a workload (`workloads`) of one of its `aud` values, or of its
/// `azp` (the client it was issued to; stsgate's own tokens have none).
fn check_presenter(input: &RuleInput<'_>) -> Result<(), Denied> {
    let claims = &input.subject.claims;
    let issued_to: Vec<&str> = claims.aud().chain(claims.azp.as_deref()).collect();
    let bound = |actor: &Actor| {
        input
            .workloads
            .iter()
            .filter(|w| issued_to.contains(&w.audience.as_str()))
            .any(|w| names(actor, &w.spiffe, &w.sub, &w.client_id))
    };
    match input.actor {
        Some(actor) if bound(actor) => Ok(()),
        actor => Err(Denied::PresenterMismatch {
            issued_to: issued_to.into_iter().map(str::to_owned).collect(),
            actor: actor.map(|a| a.sub.clone()),
        }),
    }
}

/// Keycloak's "the requester must be in the subject token's audience": the
/// authenticated client is one of its `aud` values or its `azp`.
fn check_client_in_audience(subject: &Validated, client: Option<&str>) -> Result<(), Denied> {
    let claims = &subject.claims;
    match client {
        Some(c) if claims.aud().any(|a| a == c) || claims.azp.as_deref() == Some(c) => Ok(()),
        client => Err(Denied::ClientNotInAudience { client: client.map(str::to_owned) }),
    }
}

/// Whether an actor token from `iss` may act under `rule`: the issuers its
/// `actor.issuers` lists, else only the subject token's own issuer.
fn actor_issuer_admitted(rule: &Rule, subject: &Validated, iss: &str) -> bool {
    match rule.when.actor.as_ref().filter(|a| !a.issuers.is_empty()) {
        Some(am) => am.issuers.iter().any(|i| i == iss),
        None => iss == subject.issuer,
    }
}

/// An absolute URI (`scheme:...`), such as a SPIFFE ID.
fn is_uri(s: &str) -> bool {
    s.split_once(':').is_some_and(|(scheme, rest)| {
        !rest.is_empty()
            && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme.chars().all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    })
}

/// RFC 8693 §4.4: when the subject token says who may act for it, the actor
/// must be that party: `sub` and `iss` together. Without `iss`, `sub` is a
/// name of the subject token's issuer, so it admits an actor token from that
/// issuer, or an mTLS peer whose identity is that SPIFFE ID (a SPIFFE ID
/// names its trust domain itself; any other peer name could be anyone's).
fn check_may_act(input: &RuleInput<'_>) -> Result<(), Denied> {
    let (Some(may_act), Some(actor)) = (&input.subject.claims.may_act, input.actor) else {
        return Ok(());
    };
    let obj = may_act.as_object().ok_or(Denied::BadClaim("may_act"))?;
    let sub = obj.get("sub").and_then(Value::as_str).ok_or(Denied::BadClaim("may_act"))?;
    if sub != actor.sub {
        return Err(Denied::MayAct);
    }
    match obj.get("iss") {
        None if actor.token_issuer() == Some(input.subject.issuer.as_str()) => Ok(()),
        None if actor.peer_proven() && sub.starts_with("spiffe://") => Ok(()),
        None => Err(Denied::MayAct),
        Some(Value::String(iss)) if actor.token_issuer() == Some(iss.as_str()) => Ok(()),
        Some(Value::String(_)) => Err(Denied::MayAct),
        Some(_) => Err(Denied::BadClaim("may_act")),
    }
}

/// Number of actors in an `act` chain; `Err` when it is not a chain of objects.
fn chain_depth(act: Option<&Value>) -> Result<usize, Denied> {
    let mut depth = 0;
    let mut cur = act;
    while let Some(v) = cur {
        let obj = v.as_object().ok_or(Denied::BadClaim("act"))?;
        if !obj.get("sub").is_some_and(Value::is_string) {
            return Err(Denied::BadClaim("act"));
        }
        depth += 1;
        cur = obj.get("act");
    }
    Ok(depth)
}

fn decide(rule: &Rule, input: &RuleInput<'_>, req: Requester<'_>, vars: &Vars<'_>) -> Result<Decision, Denied> {
    let g = &rule.grant;
    let subject = input.subject;
    let prior_act = subject.claims.act.as_ref();
    let prior_depth = chain_depth(prior_act)?;
    let too_deep = |depth: usize| Denied::ChainTooDeep { rule: rule.name.clone(), depth, max: g.max_chain_depth };
    // Defence in depth (`why_not` refuses these first): an actor token from
    // an issuer the rule does not admit contributes nothing, not even a client.
    if input.actor.and_then(Actor::token_issuer).is_some_and(|iss| !actor_issuer_admitted(rule, subject, iss)) {
        return Err(Denied::NoRule { audience: input.audience.to_owned() });
    }
    // Not a match condition: the rule decides, and refuses anyone else.
    // (`evaluate` binds stsgate's own tokens whatever the rule says.)
    if rule.when.presenter == Presenter::Audience || subject.is_own() {
        check_presenter(input)?;
    }
    if rule.when.presenter == Presenter::ClientInAudience {
        check_client_in_audience(input.subject, req.client)?;
    }
    // A token minted with `delegation_shape: act_as` names its subject in
    // `act_as`, which is never copied: re-issuing it would drop the chain.
    if subject.is_own() && subject.claims.has_other("act_as") {
        return Err(Denied::WouldDropAct { rule: rule.name.clone() });
    }

    let mut audit = None;
    // The subject's original issuer: an own token carries it along.
    let mut sub_id = subject.sub_id();
    let (sub, act, act_as) = match g.outcome {
        Outcome::Exchange => {
            // Same subject; a delegated token stays delegated (its chain is kept as is).
            if prior_depth > g.max_chain_depth {
                return Err(too_deep(prior_depth));
            }
            (subject.sub.clone(), prior_act.cloned(), None)
        }
        Outcome::Delegation => {
            let actor = input.actor.ok_or(Denied::NoRule { audience: input.audience.to_owned() })?;
            let depth = prior_depth + 1;
            if depth > g.max_chain_depth {
                return Err(too_deep(depth));
            }
            match g.delegation_shape {
                DelegationShape::Act => {
                    let mut act = actor.act_claim();
                    if let Some(prior) = prior_act {
                        act.insert("act".into(), prior.clone());
                    }
                    (subject.sub.clone(), Some(Value::Object(act)), None)
                }
                DelegationShape::ActAs => {
                    let mut act_as = Map::new();
                    act_as.insert("sub".into(), Value::String(subject.sub.clone()));
                    act_as.insert("iss".into(), Value::String(subject.issuer.clone()));
                    if let Some(prior) = prior_act {
                        act_as.insert("act".into(), prior.clone());
                    }
                    sub_id = actor.sub_id();
                    (actor.sub.clone(), None, Some(Value::Object(act_as)))
                }
            }
        }
        Outcome::Impersonation => {
            if prior_act.is_some() {
                return Err(Denied::WouldDropAct { rule: rule.name.clone() });
            }
            let sub = input.requested_subject.unwrap_or(&subject.sub).to_owned();
            if sub != subject.sub && (input.actor.is_none() || subject.is_own()) {
                return Err(Denied::ImpersonationRefused);
            }
            let actor_name = input.actor.map(|a| a.sub.as_str()).unwrap_or("(no actor)");
            let actor_iss = input.actor.and_then(|a| a.iss.as_deref()).unwrap_or("(none)");
            audit = Some(format!(
                "impersonation: actor {actor_name:?} (issuer {actor_iss:?}) acts as subject {sub:?} (token subject {:?}, issuer {:?}) towards {:?} by rule {:?}",
                subject.sub, subject.issuer, input.audience, rule.name
            ));
            // The rule lists which subjects may be impersonated under the
            // subject token's issuer (an own token keeps its own subject).
            if sub != subject.sub {
                sub_id = SubId::IssSub { iss: subject.issuer.clone(), sub: sub.clone() };
            }
            (sub, None, None)
        }
    };

    let scopes = narrow(input.requested_scopes, &subject.scopes, |s| g.scopes.iter().any(|p| p.matches(s)));
    if scopes.is_empty() && !g.allow_empty_scope {
        return Err(Denied::NoScope { rule: rule.name.clone() });
    }

    let mut claims = Map::new();
    // Copied claims describe the subject token's subject; a token minted for
    // another (impersonated) subject must not carry them (say, the operator's
    // groups or email in user-123's token).
    let other_subject = g.outcome == Outcome::Impersonation && sub != subject.sub;
    for name in g.copy_claims.iter().filter(|_| !other_subject) {
        if let Some(v) = claim_value(subject, name) {
            claims.insert(name.clone(), v);
        }
    }
    for (k, v) in &g.add_claims {
        claims.insert(k.clone(), v.clone());
    }
    // Like a copied claim, one that cannot be computed is left out; they
    // describe the token's subject, so not for an impersonated one either.
    for (k, expr) in g.computed_claims.iter().filter(|_| !other_subject) {
        match vars.claim(expr) {
            Ok(Some(v)) => {
                claims.insert(k.clone(), v);
            }
            Ok(None) => {}
            Err(e) => tracing::debug!(rule = rule.name, claim = k, error = e, "computed claim left out"),
        }
    }
    if let (Some(name), Outcome::Impersonation, Some(actor)) = (&g.audit_claim, g.outcome, input.actor) {
        claims.insert(name.clone(), Value::Object(actor.act_claim()));
    }

    // A downstream token with no scope left is only minted where the rule
    // allows scope-less tokens, like the main token.
    let downstream = g
        .downstream_tokens
        .iter()
        .map(|d| DownstreamGrant {
            audience: d.audience.clone(),
            header: d.header.clone(),
            scopes: if d.scopes.is_empty() {
                scopes.clone()
            } else {
                scopes.iter().filter(|s| d.scopes.iter().any(|p| p.matches(s))).cloned().collect()
            },
        })
        .filter(|d| !d.scopes.is_empty() || g.allow_empty_scope)
        .collect();

    // RFC 9068 client_id: the client that asked. The actor token's client
    // (from an issuer this rule admits, checked above), else the subject token's.
    let client_id = input.actor.and_then(|a| a.client_id.clone()).or_else(|| subject.client_id.clone());

    Ok(Decision {
        rule: rule.name.clone(),
        outcome: g.outcome,
        sub,
        act,
        act_as,
        scopes,
        max_lifetime: g.max_lifetime.map(|d| d.0),
        sub_id,
        client_id,
        claims,
        downstream,
        audit,
    })
}

/// requested ∩ held ∩ allowed, sorted and de-duplicated; `None` requested
/// = all held. Sorted as borrowed names, so that a duplicate is never copied.
fn narrow(requested: Option<&[String]>, held: &[String], allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out: Vec<&str> = match requested {
        Some(requested) => requested.iter().filter(|s| held.contains(s) && allowed(s)).map(String::as_str).collect(),
        None => held.iter().map(String::as_str).filter(|s| allowed(s)).collect(),
    };
    out.sort_unstable();
    out.dedup();
    out.into_iter().map(str::to_owned).collect()
}

/// A subject-token claim as JSON, for copying.
fn claim_value(v: &Validated, name: &str) -> Option<Value> {
    let c = &v.claims;
    match name {
        "azp" => c.azp.clone().map(Value::String),
        "scp" => c.scp.clone(),
        _ => c.other(name),
    }
}

/// Whether `pred` holds for a value of a subject-token claim, as text (each
/// element of an array).
fn any_claim_value(v: &Validated, name: &str, mut pred: impl FnMut(&str) -> bool) -> bool {
    let c = &v.claims;
    match name {
        "sub" => pred(&v.sub),
        "iss" => pred(&v.issuer),
        "aud" => c.aud().any(&mut pred),
        "scope" | "scp" => v.scopes.iter().any(|s| pred(s)),
        "client_id" => v.client_id.as_deref().is_some_and(pred),
        "azp" => c.azp.as_deref().is_some_and(pred),
        "jti" => c.jti.as_deref().is_some_and(pred),
        _ => c.any_other_scalar(name, pred),
    }
}

/// Problems `check-config` reports about rules that are valid one by one but
/// can never decide anything: rules shadowed by an earlier, wider rule.
pub(crate) fn lint(rules: &[Rule]) -> Vec<String> {
    let mut out = Vec::new();
    for (j, later) in rules.iter().enumerate() {
        if let Some((i, earlier)) = rules[..j].iter().enumerate().find(|(_, e)| covers(e, later)) {
            out.push(format!(
                "rules[{j}] {:?} can never match: rules[{i}] {:?} comes first and matches everything it would",
                later.name, earlier.name
            ));
        }
    }
    out
}

/// Whether every request `b` matches is also matched by `a` (conservative:
/// `false` when unsure).
fn covers(a: &Rule, b: &Rule) -> bool {
    let globs_cover = |a: &[Glob], b: &[Glob]| {
        a.is_empty()
            || (!b.is_empty()
                && b.iter().all(|pb| {
                    a.iter().any(|pa| pa.as_str() == pb.as_str() || (pb.is_literal() && pa.matches(pb.as_str())))
                }))
    };
    // No `issuers` means every trusted issuer, but never `self` or `client`.
    let lists_self = b.when.issuers.iter().any(|i| i == SELF_ISSUER || i == CLIENT_ISSUER);
    let issuers = (a.when.issuers.is_empty() && !lists_self)
        || (!b.when.issuers.is_empty() && b.when.issuers.iter().all(|i| a.when.issuers.contains(i)));
    let subject =
        a.when.subject.iter().all(|(claim, pa)| b.when.subject.get(claim).is_some_and(|pb| globs_cover(pa, pb)));
    // Actor presence is implied by the outcome; only compare like with like.
    // Actor-token issuers: empty means the subject's own; compare lists only.
    let actor_issuers = |m: &crate::config::RuleMatch| m.actor.as_ref().map(|x| x.issuers.clone()).unwrap_or_default();
    let (ai, bi) = (actor_issuers(&a.when), actor_issuers(&b.when));
    let actor_issuers = if ai.is_empty() { bi.is_empty() } else { !bi.is_empty() && bi.iter().all(|i| ai.contains(i)) };
    let actor = a.grant.outcome == b.grant.outcome
        && actor_issuers
        && match (&a.when.actor, &b.when.actor) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(x), Some(y)) => {
                (!y.none || x.none)
                    && globs_cover(&x.spiffe, &y.spiffe)
                    && globs_cover(&x.sub, &y.sub)
                    && globs_cover(&x.client_id, &y.client_id)
                    && x.names_someone() == y.names_someone()
            }
        };
    // Impersonating other subjects depends on the rule's list; stay conservative.
    let impersonation = b.grant.impersonate_subjects.is_empty();
    // No `clients` means any request; a list covers only a list it covers.
    let clients = globs_cover(&a.when.clients, &b.when.clients);
    // A condition may exclude anything: a conditional rule covers nothing.
    let unconditional = a.when.condition.is_none();
    issuers
        && globs_cover(&a.when.audiences, &b.when.audiences)
        && subject
        && actor
        && impersonation
        && clients
        && unconditional
}

#[cfg(test)]
mod properties;
#[cfg(test)]
mod tests;
