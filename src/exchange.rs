//! The one exchange decision both front doors (ext_authz Check, and later the
//! RFC 8693 token endpoint) call: validate the subject token, ask the rules,
//! mint the new token. Callers map `ExchangeError` to their wire format.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{self, Caches};
use crate::config::{Config, Outcome};
use crate::issuer::Issuers;
use crate::mint::{AccessClaims, KeyRing, MintError, new_jti};
use crate::rules::{self, Actor, ActorKind, Denied, RuleInput};
use crate::validate::{TokenError, Validated, Validator, now_unix};

/// A request to exchange a subject token for a token for `audience`.
#[derive(Debug, Clone)]
pub struct ExchangeRequest<'a> {
    pub subject_token: &'a str,
    pub audience: &'a str,
    /// Requested scopes; `None` = everything the rule and subject allow.
    pub scopes: Option<Vec<String>>,
    /// `client_id` of the minted token when the subject token names none.
    pub default_client_id: &'a str,
    /// The party acting (peer identity or validated actor token), if any.
    pub actor: Option<Actor>,
    /// A different subject the actor asks to impersonate.
    pub requested_subject: Option<&'a str>,
    /// `exp` of the actor token, when the actor came from one: the new token
    /// does not outlive it.
    pub actor_exp: Option<i64>,
}

/// A minted token and what decided it (for headers, metadata and logs).
#[derive(Debug, Clone)]
pub struct Exchanged {
    pub token: String,
    pub claims: AccessClaims,
    pub subject_issuer: String,
    pub rule: String,
    pub outcome: crate::config::Outcome,
    /// Extra tokens for downstream audiences: (header, token).
    pub downstream: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("invalid subject token: {0}")]
    Token(#[from] TokenError),
    #[error("invalid actor token: {0}")]
    ActorToken(TokenError),
    #[error("exchange refused: {0}")]
    Denied(#[from] Denied),
    #[error("could not mint the token: {0}")]
    Mint(#[from] MintError),
}

/// Everything an exchange needs, built once from the configuration.
pub struct Engine {
    pub cfg: Arc<Config>,
    pub issuers: Arc<Issuers>,
    pub keys: Arc<KeyRing>,
    validator: Validator,
    caches: Caches,
}

impl Engine {
    pub fn new(cfg: Arc<Config>, issuers: Arc<Issuers>, keys: Arc<KeyRing>) -> Engine {
        let validator = Validator::new(issuers.clone(), cfg.tokens.max_token_bytes);
        let caches = Caches::new(&cfg.cache);
        Engine { cfg, issuers, keys, validator, caches }
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// The whole exchange, answered from the minted-token cache when the same
    /// request was decided recently.
    pub async fn exchange(&self, req: &ExchangeRequest<'_>) -> Result<Arc<Exchanged>, ExchangeError> {
        let now = now_unix();
        let key = cache::exchange_key(
            req.subject_token,
            req.actor.as_ref(),
            req.audience,
            req.scopes.as_deref(),
            req.requested_subject,
            req.default_client_id,
        );
        if let Some(hit) = self.caches.get_minted(&key, now) {
            // The entry never outlives the actor token it was decided with.
            if req.actor_exp.is_none_or(|exp| hit.claims.exp <= exp) {
                return Ok(hit);
            }
        }
        let subject = self.validate(req.subject_token, now).await?;
        let done = Arc::new(self.exchange_validated(&subject, req, now)?);
        // Impersonation is audited on every request, so it is never answered from cache.
        if done.outcome != Outcome::Impersonation {
            self.caches.put_minted(key, done.clone(), now);
        }
        Ok(done)
    }

    /// Validates a token, remembering the result briefly.
    pub async fn validate(&self, token: &str, now: i64) -> Result<Arc<Validated>, TokenError> {
        let key = cache::token_key(token);
        if let Some(hit) = self.caches.get_validated(&key, now) {
            return Ok(hit);
        }
        let v = Arc::new(self.validator.validate_at(token, now).await?);
        self.caches.put_validated(key, v.clone(), now);
        Ok(v)
    }

    /// Validates an actor token like a subject token and names its actor;
    /// also returns the token's `exp`.
    pub async fn actor_from_token(&self, token: &str) -> Result<(Actor, i64), ExchangeError> {
        let v = self.validate(token, now_unix()).await.map_err(ExchangeError::ActorToken)?;
        let actor = Actor { kind: ActorKind::Token, sub: v.sub.clone(), iss: Some(v.issuer.clone()), client_id: v.client_id.clone() };
        Ok((actor, v.exp))
    }

    /// The decision and minting for an already validated subject token.
    pub fn exchange_validated(
        &self,
        subject: &Validated,
        req: &ExchangeRequest<'_>,
        now: i64,
    ) -> Result<Exchanged, ExchangeError> {
        if req.audience.is_empty() {
            return Err(Denied::NoAudience.into());
        }
        let input = RuleInput {
            subject,
            actor: req.actor.as_ref(),
            audience: req.audience,
            requested_scopes: req.scopes.as_deref(),
            requested_subject: req.requested_subject,
        };
        let decision = match rules::evaluate(&self.cfg.rules, &input) {
            Ok(d) => d,
            Err(denied) => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    for (rule, why) in rules::explain(&self.cfg.rules, &input) {
                        tracing::debug!(rule, why = why.as_deref().unwrap_or("matches"), "rule trace");
                    }
                }
                return Err(denied.into());
            }
        };
        if let Some(audit) = &decision.audit {
            tracing::info!(target: "stsgate::audit", rule = %decision.rule, "{audit}");
        }

        // Lifetime: the configured default, capped by the rule, and never past
        // the subject token's own expiry.
        let mut lifetime = self.cfg.tokens.lifetime.0;
        if let Some(max) = decision.max_lifetime {
            lifetime = lifetime.min(max);
        }
        let mut exp = (now + lifetime.as_secs() as i64).min(subject.exp);
        if let Some(actor_exp) = req.actor_exp {
            exp = exp.min(actor_exp);
        }
        if exp - now < 1 {
            // Still inside the leeway, but there is nothing left to hand on.
            return Err(TokenError::Expired.into());
        }

        // RFC 9068 client_id: the client that asked. A token actor's client,
        // else the subject token's client, else the front door's default.
        let client_id = req
            .actor
            .as_ref()
            .and_then(|a| a.client_id.clone())
            .or_else(|| subject.client_id.clone())
            .unwrap_or_else(|| req.default_client_id.to_owned());
        let mut extra = decision.claims.clone();
        if let Some(act_as) = &decision.act_as {
            extra.insert("act_as".into(), act_as.clone());
        }
        let claims = AccessClaims {
            iss: self.cfg.issuer.clone(),
            sub: decision.sub.clone(),
            aud: req.audience.to_owned(),
            exp,
            iat: now,
            nbf: now,
            jti: new_jti(),
            client_id,
            scope: (!decision.scopes.is_empty()).then(|| decision.scopes.join(" ")),
            act: decision.act.clone(),
            extra,
        };
        let signer = self.keys.active();
        let token = signer.sign_access_token(&claims)?;
        let mut downstream = Vec::with_capacity(decision.downstream.len());
        for d in &decision.downstream {
            let mut c = claims.clone();
            c.aud = d.audience.clone();
            c.jti = new_jti();
            c.scope = (!d.scopes.is_empty()).then(|| d.scopes.join(" "));
            downstream.push((d.header.clone(), signer.sign_access_token(&c)?));
        }
        Ok(Exchanged {
            token,
            claims,
            subject_issuer: subject.issuer.clone(),
            rule: decision.rule,
            outcome: decision.outcome,
            downstream,
        })
    }

    /// Remaining lifetime of a minted token, for `expires_in`.
    pub fn expires_in(exchanged: &Exchanged, now: i64) -> Duration {
        Duration::from_secs((exchanged.claims.exp - now).max(0) as u64)
    }
}
