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
///
/// Kept compact because it is what the minted-token cache holds: the raw JSON
/// claims and the raw signature (a third smaller than base64 text), the
/// header shared with the signing key, and names shared with the config. The
/// token text is assembled when it is handed out.
#[derive(Debug)]
pub struct Exchanged {
    header_b64: Arc<str>,
    /// Raw JSON claims followed by the raw signature, in one allocation.
    signed: Box<[u8]>,
    payload_len: u32,
    pub exp: i64,
    pub outcome: Outcome,
    pub rule: Arc<str>,
    pub subject_issuer: Arc<str>,
    /// Extra tokens for downstream audiences: (header, token).
    pub downstream: Box<[(Arc<str>, Box<str>)]>,
}

/// The claims front doors show in metadata and logs, read from the payload.
#[derive(Debug, serde::Deserialize)]
pub struct ClaimsView<'a> {
    #[serde(borrow)]
    pub sub: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub aud: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub scope: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    pub jti: std::borrow::Cow<'a, str>,
}

impl Exchanged {
    /// Appends the compact serialization of the token to `out`.
    pub fn write_token(&self, out: &mut String) {
        let (payload, sig) = self.signed.split_at(self.payload_len as usize);
        crate::mint::assemble(out, &self.header_b64, payload, sig);
    }

    fn payload(&self) -> &[u8] {
        &self.signed[..self.payload_len as usize]
    }

    pub fn token(&self) -> String {
        let mut s = String::new();
        self.write_token(&mut s);
        s
    }

    /// `sub`, `aud`, `scope` and `jti`; `None` only if the payload were not
    /// the JSON stsgate wrote itself.
    pub fn view(&self) -> Option<ClaimsView<'_>> {
        serde_json::from_slice(self.payload()).ok()
    }

    /// All claims, as JSON.
    pub fn claims_json(&self) -> serde_json::Value {
        serde_json::from_slice(self.payload()).unwrap_or_default()
    }

    /// Approximate heap bytes held, for the cache's memory bound.
    pub fn heap_bytes(&self) -> usize {
        let downstream: usize = self.downstream.iter().map(|(_, t)| t.len() + 48).sum();
        std::mem::size_of::<Self>() + 32 + self.signed.len() + downstream + 48
    }
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
    /// Rule and issuer names shared by every cache entry that mentions them.
    names: std::collections::HashMap<String, Arc<str>>,
}

impl Engine {
    pub fn new(cfg: Arc<Config>, issuers: Arc<Issuers>, keys: Arc<KeyRing>) -> Engine {
        let validator = Validator::new(issuers.clone(), cfg.tokens.max_token_bytes);
        let caches = Caches::new(&cfg.cache);
        let names = cfg
            .rules
            .iter()
            .map(|r| r.name.as_str())
            .chain(cfg.trusted_issuers.iter().map(|i| i.issuer.as_str()))
            .map(|n| (n.to_owned(), Arc::<str>::from(n)))
            .collect();
        Engine { cfg, issuers, keys, validator, caches, names }
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
            if req.actor_exp.is_none_or(|exp| hit.exp <= exp) {
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
        let mut claims = AccessClaims {
            iss: self.cfg.issuer.clone(),
            sub: decision.sub.clone(),
            aud: req.audience.to_owned(),
            exp,
            iat: now,
            jti: new_jti(),
            client_id,
            scope: (!decision.scopes.is_empty()).then(|| decision.scopes.join(" ")),
            act: decision.act.clone(),
            extra,
        };
        let signer = self.keys.active();
        let encode = |c: &AccessClaims| serde_json::to_vec(c).map_err(|e| MintError::Encode(e.to_string()));
        let mut signed = encode(&claims)?;
        let payload_len = u32::try_from(signed.len()).map_err(|_| MintError::Encode("claims too large".into()))?;
        let sig = signer.sign_payload(&signed)?;
        signed.extend_from_slice(&sig);
        let mut downstream = Vec::with_capacity(decision.downstream.len());
        for d in &decision.downstream {
            claims.aud = d.audience.clone();
            claims.jti = new_jti();
            claims.scope = (!d.scopes.is_empty()).then(|| d.scopes.join(" "));
            let p = encode(&claims)?;
            let s = signer.sign_payload(&p)?;
            let mut token = String::new();
            crate::mint::assemble(&mut token, signer.header_b64(), &p, &s);
            downstream.push((Arc::<str>::from(d.header.as_str()), token.into_boxed_str()));
        }
        Ok(Exchanged {
            header_b64: signer.header_b64().clone(),
            signed: signed.into_boxed_slice(),
            payload_len,
            exp,
            outcome: decision.outcome,
            rule: self.name(&decision.rule),
            subject_issuer: self.name(&subject.issuer),
            downstream: downstream.into_boxed_slice(),
        })
    }

    /// The shared copy of a rule or issuer name.
    fn name(&self, n: &str) -> Arc<str> {
        self.names.get(n).cloned().unwrap_or_else(|| Arc::from(n))
    }

    /// Remaining lifetime of a minted token, for `expires_in`.
    pub fn expires_in(exchanged: &Exchanged, now: i64) -> Duration {
        Duration::from_secs((exchanged.exp - now).max(0) as u64)
    }
}
