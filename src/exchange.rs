//! The one exchange decision both front doors (ext_authz Check, and later the
//! RFC 8693 token endpoint) call: validate the subject token, ask the rules,
//! mint the new token. Callers map `ExchangeError` to their wire format.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Map;

use crate::config::Config;
use crate::issuer::Issuers;
use crate::mint::{AccessClaims, KeyRing, MintError, new_jti};
use crate::rules::{self, Denied, RuleInput};
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
}

/// A minted token and what decided it (for headers, metadata and logs).
#[derive(Debug, Clone)]
pub struct Exchanged {
    pub token: String,
    pub claims: AccessClaims,
    pub subject_issuer: String,
    pub rule: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("invalid subject token: {0}")]
    Token(#[from] TokenError),
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
}

impl Engine {
    pub fn new(cfg: Arc<Config>, issuers: Arc<Issuers>, keys: Arc<KeyRing>) -> Engine {
        let validator = Validator::new(issuers.clone(), cfg.tokens.max_token_bytes);
        Engine { cfg, issuers, keys, validator }
    }

    pub fn validator(&self) -> &Validator {
        &self.validator
    }

    pub async fn exchange(&self, req: &ExchangeRequest<'_>) -> Result<Exchanged, ExchangeError> {
        let subject = self.validator.validate(req.subject_token).await?;
        self.exchange_validated(&subject, req, now_unix())
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
        let decision = rules::evaluate(
            &self.cfg.rules,
            &RuleInput {
                issuer: &subject.issuer,
                audience: req.audience,
                requested_scopes: req.scopes.as_deref(),
                subject_scopes: &subject.scopes,
            },
        )?;

        // Lifetime: the configured default, capped by the rule, and never past
        // the subject token's own expiry.
        let mut lifetime = self.cfg.tokens.lifetime.0;
        if let Some(max) = decision.max_lifetime {
            lifetime = lifetime.min(max);
        }
        let exp = (now + lifetime.as_secs() as i64).min(subject.exp);
        if exp - now < 1 {
            // Still inside the leeway, but there is nothing left to hand on.
            return Err(TokenError::Expired.into());
        }

        let claims = AccessClaims {
            iss: self.cfg.issuer.clone(),
            sub: subject.sub.clone(),
            aud: req.audience.to_owned(),
            exp,
            iat: now,
            nbf: now,
            jti: new_jti(),
            client_id: subject.client_id.clone().unwrap_or_else(|| req.default_client_id.to_owned()),
            scope: (!decision.scopes.is_empty()).then(|| decision.scopes.join(" ")),
            act: None,
            extra: Map::new(),
        };
        let token = self.keys.active().sign_access_token(&claims)?;
        Ok(Exchanged { token, claims, subject_issuer: subject.issuer.clone(), rule: decision.rule })
    }

    /// Remaining lifetime of a minted token, for `expires_in`.
    pub fn expires_in(exchanged: &Exchanged, now: i64) -> Duration {
        Duration::from_secs((exchanged.claims.exp - now).max(0) as u64)
    }
}
