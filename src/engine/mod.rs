//! The one exchange decision both front doors (ext_authz Check, and the
//! RFC 8693 token endpoint) call: resolve the actor (`actor`), validate the
//! subject token, ask the rules, mint the new token (`mint`). Callers map
//! `ExchangeError` to their wire format through `api::refusal`.

use std::sync::Arc;

pub(crate) mod actor;
pub(crate) mod cache;
pub mod clients;
pub mod mint;

pub(crate) use self::mint::{ClaimsView, Exchanged, MintError, Minted};

use self::cache::Caches;
use self::mint::{MintRequest, PayloadPrefix};
use crate::clock::now_unix;
use crate::config::{Config, Outcome};
use crate::rules::{self, Actor, Denied, RuleInput};
use crate::signing::{KeyError, KeyRing};
use crate::trust::issuer::{FetchError, Issuers};
use crate::trust::own::OwnIssuer;
use crate::trust::validator::{TokenError, Validated, Validator};

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
    /// The authenticated token endpoint client, if any: a rule input
    /// (`match.clients`) and the minted token's `client_id`.
    pub client: Option<&'a str>,
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

/// Why no engine could be built from a configuration.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    SigningKeys(#[from] KeyError),
    #[error("clients: {0}")]
    Clients(String),
}

/// Everything an exchange needs, built once from the configuration.
pub struct Engine {
    pub cfg: Arc<Config>,
    pub issuers: Arc<Issuers>,
    pub keys: Arc<KeyRing>,
    /// The token endpoint's clients.
    pub clients: clients::Clients,
    validator: Validator,
    caches: Caches,
    prefixes: Vec<PayloadPrefix>,
    /// Positions of rules and trusted issuers (then stsgate's own issuer),
    /// which cache entries refer to.
    rule_index: std::collections::HashMap<String, u16>,
    issuer_index: std::collections::HashMap<String, u16>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("issuer", &self.cfg.issuer).finish_non_exhaustive()
    }
}

impl Engine {
    /// Builds the engine of a configuration: loads stsgate's signing keys
    /// (file reads: call it off the async workers when that matters) and
    /// sets up the trusted issuers, whose keys are not fetched here (see
    /// `fetch_issuer_keys` and `Issuers::spawn_refresh`).
    ///
    /// On a reload `running` is the engine in use: an ephemeral signing key
    /// both configurations declare keeps its key, and an issuer whose
    /// settings did not change starts with the keys the running one holds
    /// (see `Issuers::seed_unchanged`).
    pub fn load(cfg: Arc<Config>, http: reqwest::Client, running: Option<&Engine>) -> Result<Engine, LoadError> {
        let keys = KeyRing::load_keeping(&cfg.signing, running.map(|r| (&r.cfg.signing, &*r.keys)))?;
        let issuers = Issuers::new(&cfg, http);
        if let Some(running) = running {
            issuers.seed_unchanged(&running.issuers);
        }
        let clients = clients::Clients::load(&cfg.clients).map_err(LoadError::Clients)?;
        Ok(Engine::new(cfg, Arc::new(issuers), Arc::new(keys), clients))
    }

    fn new(cfg: Arc<Config>, issuers: Arc<Issuers>, keys: Arc<KeyRing>, clients: clients::Clients) -> Engine {
        // stsgate's own tokens are subject tokens only where a rule lists `self`.
        let own = cfg.rules.iter().any(|r| r.when.admits_own()).then(|| OwnIssuer::new(&cfg.issuer, &keys));
        let validator = Validator::new(issuers.clone(), cfg.tokens.max_token_bytes).with_own(own);
        let caches = Caches::new(&cfg.cache);
        let index = |names: Vec<&str>| names.into_iter().enumerate().map(|(i, n)| (n.to_owned(), i as u16)).collect();
        let rule_index = index(cfg.rules.iter().map(|r| r.name.as_str()).collect());
        let trusted = cfg.trusted_issuers.iter().map(|i| i.issuer.as_str());
        let issuer_index = index(trusted.chain([cfg.issuer.as_str()]).collect());
        let prefixes = PayloadPrefix::all(&cfg.issuer, cfg.trusted_issuers.iter().map(|i| i.issuer.as_str()));
        Engine { cfg, issuers, keys, clients, validator, caches, prefixes, rule_index, issuer_index }
    }

    /// Fetches, once, the keys of every trusted issuer that has none yet;
    /// returns the ones that failed, in configuration order.
    pub async fn fetch_issuer_keys(&self) -> Vec<(&str, FetchError)> {
        let mut failed = Vec::new();
        for trusted in &self.cfg.trusted_issuers {
            let Some(issuer) = self.issuers.get(&trusted.issuer).filter(|i| !i.is_loaded()) else {
                continue;
            };
            if let Err(e) = issuer.refresh().await {
                failed.push((trusted.issuer.as_str(), e));
            }
        }
        failed
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub fn caches(&self) -> &Caches {
        &self.caches
    }

    /// The whole exchange, answered from the minted-token cache when the same
    /// request was decided recently.
    pub async fn exchange(&self, req: &ExchangeRequest<'_>) -> Result<Exchanged<'_>, ExchangeError> {
        let now = now_unix();
        let epoch = self.issuers.key_epoch();
        // No hashing at all when the cache is off.
        let key = self.caches.minted_enabled().then(|| {
            cache::exchange_key(
                req.subject_token,
                req.actor.as_ref(),
                req.audience,
                req.scopes.as_deref(),
                req.requested_subject,
                req.default_client_id,
                req.client,
            )
        });
        if let Some(hit) = key.as_ref().and_then(|k| self.caches.get_minted(k, now, epoch)) {
            // The entry never outlives the actor token it was decided with.
            if req.actor_exp.is_none_or(|exp| hit.exp <= exp) {
                return Ok(Exchanged::cached(self, hit));
            }
        }
        let subject = self.validate(req.subject_token, now, epoch).await?;
        let done = self.exchange_validated(&subject, req, now)?;
        // The one place the audit record is written: after the token was minted.
        if let Some(audit) = done.audit() {
            tracing::info!(target: "stsgate::audit", rule = done.rule(), "{audit}");
        }
        // Impersonation is audited on every request, so it is never answered from cache.
        if let Some(key) = key.filter(|_| done.outcome() != Outcome::Impersonation) {
            self.caches.put_minted(key, done.minted().clone(), now, epoch);
        }
        Ok(done)
    }

    /// Validates a token, remembering the result briefly. `epoch` is the
    /// issuers' key epoch read before any key was looked up.
    pub(crate) async fn validate(&self, token: &str, now: i64, epoch: u32) -> Result<Arc<Validated>, TokenError> {
        if !self.caches.validated_enabled() {
            return Ok(Arc::new(self.validator.validate_at(token, now).await?));
        }
        let key = cache::token_key(token);
        if let Some(hit) = self.caches.get_validated(&key, now, epoch) {
            return Ok(hit);
        }
        let v = Arc::new(self.validator.validate_at(token, now).await?);
        self.caches.put_validated(key, v.clone(), now, epoch);
        Ok(v)
    }

    /// The decision and minting for an already validated subject token:
    /// rules, then lifetime, then `mint`. It writes no audit record
    /// (`exchange` does, `stsgate explain` does not): the result carries it.
    pub(crate) fn exchange_validated(
        &self,
        subject: &Validated,
        req: &ExchangeRequest<'_>,
        now: i64,
    ) -> Result<Exchanged<'_>, ExchangeError> {
        if req.audience.is_empty() {
            return Err(Denied::NoAudience.into());
        }
        let input = RuleInput {
            subject,
            actor: req.actor.as_ref(),
            audience: req.audience,
            requested_scopes: req.scopes.as_deref(),
            requested_subject: req.requested_subject,
            workloads: &self.cfg.workloads,
        };
        let mut decision = match rules::evaluate_for(&self.cfg.rules, &input, req.client) {
            Ok(d) => d,
            Err(denied) => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    for (rule, why) in rules::verdicts_for(&self.cfg.rules, &input, req.client) {
                        tracing::debug!(rule, why = why.as_deref().unwrap_or("matches"), "rule trace");
                    }
                }
                return Err(denied.into());
            }
        };

        // The authenticated client is the party the token is issued to.
        if let Some(client) = req.client {
            decision.client_id = Some(client.to_owned());
        }

        // Lifetime: the configured default, capped by the rule, and never past
        // the subject token's own expiry.
        let mut lifetime = self.cfg.tokens.lifetime.0;
        if let Some(max) = decision.max_lifetime {
            lifetime = lifetime.min(max);
        }
        let subject_exp = (now + lifetime.as_secs() as i64).min(subject.exp);
        if subject_exp - now < 1 {
            // Still inside the leeway, but there is nothing left to hand on.
            return Err(TokenError::Expired.into());
        }
        let exp = req.actor_exp.map_or(subject_exp, |actor_exp| subject_exp.min(actor_exp));
        if exp - now < 1 {
            // The actor token ran out (inside its leeway): name it, not the subject token.
            return Err(ExchangeError::ActorToken(TokenError::Expired));
        }

        let mint = MintRequest {
            subject_issuer: &subject.issuer,
            audience: req.audience,
            default_client_id: req.default_client_id,
            exp,
            now,
        };
        Ok(self.mint(&decision, &mint)?)
    }
}

#[cfg(test)]
mod audit_tests;
