//! `stsgate explain`: a dry run of one exchange against a configuration. It
//! fetches the trusted issuers' keys once, validates the tokens exactly as the
//! server would, prints every rule's verdict and the claims of the token that
//! would be minted.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::clock::now_unix;
use crate::config::{Config, Keys};
use crate::engine::{Engine, ExchangeError, ExchangeRequest};
use crate::rules::{self, RequestAttrs, Requester, RuleInput, split_scopes};
use crate::trust::issuer::http_client;

/// What to explain.
#[derive(Debug, Clone, Default)]
pub(crate) struct Question {
    pub(crate) subject_token: String,
    pub(crate) actor_token: Option<String>,
    /// A peer identity (SPIFFE ID), as Envoy would report it.
    pub(crate) peer: Option<String>,
    pub(crate) audience: String,
    pub(crate) scope: Option<String>,
    pub(crate) requested_subject: Option<String>,
    /// The Check's HTTP request, as the rules' CEL expressions see it
    /// (`--method`, `--path`, `--header`, ...); attributes not given are empty.
    pub(crate) request: RequestAttrs,
}

/// The answer as JSON (printed by the CLI), and whether the exchange is allowed.
pub(crate) async fn explain(cfg: Config, q: &Question) -> anyhow::Result<(Value, bool)> {
    crate::install_crypto_provider();
    // A dry run writes no audit event: the audit file is not even opened.
    let cfg = Config { audit: Default::default(), ..cfg };
    let engine = Engine::load(Arc::new(cfg), http_client()?, None)?;
    let failed = engine.fetch_issuer_keys().await;
    let fetch_errors: Vec<Value> =
        failed.iter().map(|(issuer, e)| json!({"issuer": issuer, "error": e.to_string()})).collect();
    let cfg = &engine.cfg;

    let refuse = |stage: &str, why: String| {
        (json!({"allowed": false, "stage": stage, "reason": why, "key_fetch_errors": fetch_errors}), false)
    };
    // JWT or opaque (introspected), as an exchange would.
    let subject = match engine.validate_subject(&q.subject_token).await {
        Ok(s) => s,
        Err(why) => return Ok(refuse("subject_token", why)),
    };
    let (actor, actor_exp) = match engine.resolve_actor(q.peer.as_deref(), q.actor_token.as_deref()).await {
        Ok(resolved) => (resolved.actor, resolved.exp),
        Err(ExchangeError::Denied(denied)) => return Ok(refuse("actor", denied.to_string())),
        Err(e) => return Ok(refuse("actor_token", e.to_string())),
    };
    let scopes = q.scope.as_deref().map(split_scopes);
    let input = RuleInput {
        subject: &subject,
        actor: actor.as_ref(),
        audience: &q.audience,
        requested_scopes: scopes.as_deref(),
        requested_subject: q.requested_subject.as_deref(),
        workloads: &cfg.workloads,
    };
    let requester = Requester { request: Some(&q.request), ..Requester::default() };
    let trace: Vec<Value> = rules::verdicts_as(&cfg.rules, &input, requester)
        .into_iter()
        .map(|(rule, why)| json!({"rule": rule, "matches": why.is_none(), "why_not": why}))
        .collect();
    let expressions: Vec<Value> = rules::expression_values(&cfg.rules, &input, requester)
        .into_iter()
        .map(|(rule, at, source, value)| json!({"rule": rule, "at": at, "expression": source, "value": value}))
        .collect();
    // Which request attributes and actor-token claims the minted-token cache
    // key holds besides token, actor, audience and scopes.
    let mut reads: Vec<String> =
        Some(engine.request_reads().to_string()).filter(|r| !r.is_empty()).into_iter().collect();
    match engine.actor_claim_reads() {
        Keys::None => {}
        Keys::All => reads.push("actor.claims".into()),
        Keys::Some(names) => reads.extend(names.iter().map(|n| format!("actor.claims[{n:?}]"))),
    }
    let cache = if reads.is_empty() {
        "no expression reads the request or the actor token's claims: answers are cached by token, actor, audience and scopes".to_owned()
    } else {
        format!("answers are cached per value of {} (read by the rules' expressions)", reads.join(", "))
    };
    let actor_json =
        actor.as_ref().map(|a| json!({"kind": format!("{:?}", a.kind).to_lowercase(), "sub": a.sub, "iss": a.iss}));
    let req = ExchangeRequest {
        subject_token: &q.subject_token,
        audience: &q.audience,
        scopes,
        default_client_id: &cfg.ext_authz.client_id,
        actor,
        requested_subject: q.requested_subject.as_deref(),
        actor_exp,
        client: None,
        origin: Default::default(),
    };
    let base = json!({
        "subject": {"iss": subject.issuer, "sub": subject.sub, "scopes": subject.scopes, "act": subject.claims.act, "may_act": subject.claims.may_act},
        "actor": actor_json,
        "audience": q.audience,
        "rules": trace,
        "expressions": expressions,
        "cache": cache,
    });
    Ok(match engine.exchange_validated_on(&subject, &req, Some(&q.request), now_unix()) {
        Ok(done) => {
            let mut out = base;
            out["allowed"] = json!(true);
            out["outcome"] = json!(done.outcome().as_str());
            out["rule"] = json!(done.rule());
            out["claims"] = done.claims_json();
            out["downstream_headers"] = json!(done.downstream().map(|(h, _)| h).collect::<Vec<&str>>());
            // What the server would write to the audit log (a dry run writes nothing).
            out["audit"] = json!(done.audit());
            (out, true)
        }
        Err(e) => {
            let mut out = base;
            out["allowed"] = json!(false);
            out["reason"] = json!(match &e {
                ExchangeError::Denied(d) => d.to_string(),
                other => other.to_string(),
            });
            (out, false)
        }
    })
}
