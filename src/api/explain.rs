//! `stsgate explain`: a dry run of one exchange against a configuration. It
//! fetches the trusted issuers' keys once, validates the tokens exactly as the
//! server would, prints every rule's verdict and the claims of the token that
//! would be minted.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::config::Config;
use crate::engine::{Engine, ExchangeError, ExchangeRequest};
use crate::trust::issuer::{Issuers, http_client};
use crate::signing::KeyRing;
use crate::rules::{self, Actor, ActorKind, RuleInput};
use crate::clock::now_unix;

/// What to explain.
#[derive(Debug, Clone, Default)]
pub struct Question {
    pub subject_token: String,
    pub actor_token: Option<String>,
    /// A peer identity (SPIFFE ID), as Envoy would report it.
    pub peer: Option<String>,
    pub audience: String,
    pub scope: Option<String>,
    pub requested_subject: Option<String>,
}

/// The answer as JSON (printed by the CLI), and whether the exchange is allowed.
pub async fn explain(cfg: Config, q: &Question) -> anyhow::Result<(Value, bool)> {
    crate::install_crypto_provider();
    let cfg = Arc::new(cfg);
    let keys = Arc::new(KeyRing::load(&cfg.signing)?);
    let issuers = Arc::new(Issuers::new(&cfg, http_client()?));
    let mut fetch_errors = Vec::new();
    for issuer in issuers.all() {
        if let Err(e) = issuer.refresh().await {
            fetch_errors.push(json!({"issuer": issuer.cfg.issuer, "error": e.to_string()}));
        }
    }
    let engine = Engine::new(cfg.clone(), issuers, keys);

    let refuse = |stage: &str, why: String| {
        (json!({"allowed": false, "stage": stage, "reason": why, "key_fetch_errors": fetch_errors}), false)
    };
    let subject = match engine.validator().validate(&q.subject_token).await {
        Ok(s) => s,
        Err(e) => return Ok(refuse("subject_token", e.to_string())),
    };
    let mut actor_exp = None;
    let token_actor = match &q.actor_token {
        Some(t) => match engine.actor_from_token(t).await {
            Ok((a, exp)) => {
                actor_exp = Some(exp);
                Some(a)
            }
            Err(e) => return Ok(refuse("actor_token", e.to_string())),
        },
        None => None,
    };
    let peer = q.peer.clone().map(|p| Actor { kind: ActorKind::Peer, sub: p, iss: None, client_id: None });
    let actor = match Actor::combine(peer, token_actor) {
        Ok(actor) => actor,
        Err(denied) => return Ok(refuse("actor", denied.to_string())),
    };
    let scopes: Option<Vec<String>> = q.scope.as_ref().map(|s| s.split_whitespace().map(str::to_owned).collect());
    let input = RuleInput {
        subject: &subject,
        actor: actor.as_ref(),
        audience: &q.audience,
        requested_scopes: scopes.as_deref(),
        requested_subject: q.requested_subject.as_deref(),
    };
    let trace: Vec<Value> = rules::explain(&cfg.rules, &input)
        .into_iter()
        .map(|(rule, why)| json!({"rule": rule, "matches": why.is_none(), "why_not": why}))
        .collect();
    let actor_json = actor.as_ref().map(|a| json!({"kind": format!("{:?}", a.kind).to_lowercase(), "sub": a.sub, "iss": a.iss}));
    let req = ExchangeRequest {
        subject_token: &q.subject_token,
        audience: &q.audience,
        scopes,
        default_client_id: &cfg.ext_authz.client_id,
        actor,
        requested_subject: q.requested_subject.as_deref(),
        actor_exp,
    };
    let base = json!({
        "subject": {"iss": subject.issuer, "sub": subject.sub, "scopes": subject.scopes, "act": subject.claims.act, "may_act": subject.claims.may_act},
        "actor": actor_json,
        "audience": q.audience,
        "rules": trace,
    });
    Ok(match engine.exchange_validated(&subject, &req, now_unix()) {
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
