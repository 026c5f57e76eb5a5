//! The one exchange decision both front doors (ext_authz Check, and the
//! RFC 8693 token endpoint) call: validate the subject token, ask the rules,
//! mint the new token. Callers map `ExchangeError` to their wire format.

use std::sync::Arc;

pub mod cache;

use self::cache::Caches;
use crate::config::{Config, Outcome};
use crate::trust::issuer::Issuers;
use crate::signing::{AccessClaims, KeyRing, MintError, new_jti};
use crate::rules::{self, Actor, ActorKind, Denied, RuleInput};
use crate::clock::now_unix;
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
}

/// A minted token as the cache keeps it: compact and self-contained.
///
/// The claims are stored as raw JSON without the constant `iss` member (see
/// `IssPrefix`) and followed by the raw signature, in one allocation; rule,
/// issuer and key are indices into the engine's configuration. The token text
/// is assembled when it is handed out. With about 500 bytes per entry, 100k
/// cached exchanges fit in the memory budget.
#[derive(Debug, Clone)]
pub struct Minted {
    /// `{` + the claims after `iss`, then the signature.
    signed: Box<[u8]>,
    rest_len: u32,
    pub exp: i64,
    pub outcome: Outcome,
    rule: u16,
    issuer: u16,
    signer: u16,
    /// Extra tokens for downstream audiences.
    downstream: Option<Box<[DownstreamToken]>>,
}

/// (index of the rule's `downstream_tokens` entry, token).
type DownstreamToken = (u16, Box<str>);

impl Minted {
    /// Approximate bytes held, for the cache's memory bound.
    pub fn weight(&self) -> usize {
        let downstream: usize = self.downstream.iter().flat_map(|d| d.iter()).map(|(_, t)| t.len() + 32).sum();
        std::mem::size_of::<Self>() + 32 + self.signed.len() + downstream + 48
    }
}

/// A minted token together with the engine parts it refers to: what the
/// front doors read headers, metadata and logs from.
#[derive(Debug)]
pub struct Exchanged<'e> {
    engine: &'e Engine,
    /// Shared with the cache: a hit costs one reference count, not a copy.
    minted: Arc<Minted>,
    /// The audit record of an impersonation, complete with the minted `jti`:
    /// only a token that was actually minted is audited (never cached).
    audit: Option<Box<str>>,
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

impl<'e> Exchanged<'e> {
    /// Appends the compact serialization of the token to `out`.
    pub fn write_token(&self, out: &mut String) {
        let m = &self.minted;
        let (rest, sig) = m.signed.split_at(m.rest_len as usize);
        let header = self.engine.keys.signers()[m.signer as usize].header_b64();
        self.engine.iss_prefix.assemble(out, header, &rest[1..], sig);
    }

    pub fn token(&self) -> String {
        let mut s = String::new();
        self.write_token(&mut s);
        s
    }

    /// `sub`, `aud`, `scope` and `jti`; `None` only if the payload were not
    /// the JSON stsgate wrote itself.
    pub fn view(&self) -> Option<ClaimsView<'_>> {
        serde_json::from_slice(&self.minted.signed[..self.minted.rest_len as usize]).ok()
    }

    /// All claims, as JSON.
    pub fn claims_json(&self) -> serde_json::Value {
        let mut v: serde_json::Value =
            serde_json::from_slice(&self.minted.signed[..self.minted.rest_len as usize]).unwrap_or_default();
        if let Some(obj) = v.as_object_mut() {
            obj.insert("iss".into(), serde_json::Value::String(self.engine.cfg.issuer.clone()));
        }
        v
    }

    pub fn exp(&self) -> i64 {
        self.minted.exp
    }

    pub fn outcome(&self) -> Outcome {
        self.minted.outcome
    }

    /// The audit record `exchange` writes for this token (impersonation only).
    pub fn audit(&self) -> Option<&str> {
        self.audit.as_deref()
    }

    pub fn rule(&self) -> &'e str {
        &self.engine.cfg.rules[self.minted.rule as usize].name
    }

    pub fn subject_issuer(&self) -> &'e str {
        &self.engine.cfg.trusted_issuers[self.minted.issuer as usize].issuer
    }

    /// Extra tokens for downstream audiences: (request header, token).
    pub fn downstream(&self) -> impl Iterator<Item = (&'e str, &str)> + '_ {
        let tokens = &self.engine.cfg.rules[self.minted.rule as usize].grant.downstream_tokens;
        self.minted
            .downstream
            .iter()
            .flat_map(|d| d.iter())
            .map(move |(i, t)| (tokens[*i as usize].header.as_str(), &**t))
    }
}

/// The constant start of every payload: `{"iss":"<issuer>",` padded with JSON
/// whitespace to a multiple of three bytes, so that its base64 is a constant
/// that can be concatenated with the base64 of the rest. Cache entries then
/// store only the rest, and a hit encodes fewer bytes.
#[derive(Debug)]
struct IssPrefix {
    /// What serde_json writes: `{"iss":"…",`.
    written: Vec<u8>,
    /// The same, padded with spaces.
    padded: Vec<u8>,
    padded_b64: String,
}

impl IssPrefix {
    fn new(issuer: &str) -> IssPrefix {
        use base64::Engine as _;
        let mut written = b"{\"iss\":".to_vec();
        written.extend_from_slice(serde_json::to_string(issuer).unwrap_or_default().as_bytes());
        written.push(b',');
        let mut padded = written.clone();
        while padded.len() % 3 != 0 {
            padded.push(b' ');
        }
        let padded_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&padded);
        IssPrefix { written, padded, padded_b64 }
    }

    /// `header.b64(prefix + rest).b64(sig)`.
    fn assemble(&self, out: &mut String, header_b64: &str, rest: &[u8], sig: &[u8]) {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        out.reserve(header_b64.len() + self.padded_b64.len() + 2 + (rest.len() + sig.len()) * 4 / 3 + 4);
        out.push_str(header_b64);
        out.push('.');
        out.push_str(&self.padded_b64);
        b64.encode_string(rest, out);
        out.push('.');
        b64.encode_string(sig, out);
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
    iss_prefix: IssPrefix,
    /// Positions of rules and trusted issuers, which cache entries refer to.
    rule_index: std::collections::HashMap<String, u16>,
    issuer_index: std::collections::HashMap<String, u16>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("issuer", &self.cfg.issuer).finish_non_exhaustive()
    }
}

impl Engine {
    pub fn new(cfg: Arc<Config>, issuers: Arc<Issuers>, keys: Arc<KeyRing>) -> Engine {
        let validator = Validator::new(issuers.clone(), cfg.tokens.max_token_bytes);
        let caches = Caches::new(&cfg.cache);
        let index = |names: Vec<&str>| names.into_iter().enumerate().map(|(i, n)| (n.to_owned(), i as u16)).collect();
        let rule_index = index(cfg.rules.iter().map(|r| r.name.as_str()).collect());
        let issuer_index = index(cfg.trusted_issuers.iter().map(|i| i.issuer.as_str()).collect());
        let iss_prefix = IssPrefix::new(&cfg.issuer);
        Engine { cfg, issuers, keys, validator, caches, iss_prefix, rule_index, issuer_index }
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
            )
        });
        if let Some(hit) = key.as_ref().and_then(|k| self.caches.get_minted(k, now, epoch)) {
            // The entry never outlives the actor token it was decided with.
            if req.actor_exp.is_none_or(|exp| hit.exp <= exp) {
                return Ok(Exchanged { engine: self, minted: hit, audit: None });
            }
        }
        let subject = self.validate(req.subject_token, now, epoch).await?;
        let done = self.exchange_validated(&subject, req, now)?;
        // The one place the audit record is written: after the token was minted.
        if let Some(audit) = done.audit() {
            tracing::info!(target: "stsgate::audit", rule = done.rule(), "{audit}");
        }
        // Impersonation is audited on every request, so it is never answered from cache.
        if let Some(key) = key.filter(|_| done.minted.outcome != Outcome::Impersonation) {
            self.caches.put_minted(key, done.minted.clone(), now, epoch);
        }
        Ok(done)
    }

    /// Validates a token, remembering the result briefly. `epoch` is the
    /// issuers' key epoch read before any key was looked up.
    pub async fn validate(&self, token: &str, now: i64, epoch: u32) -> Result<Arc<Validated>, TokenError> {
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

    /// Validates an actor token like a subject token and names its actor;
    /// also returns the token's `exp`.
    pub async fn actor_from_token(&self, token: &str) -> Result<(Actor, i64), ExchangeError> {
        let v = self.validate(token, now_unix(), self.issuers.key_epoch()).await.map_err(ExchangeError::ActorToken)?;
        let actor = Actor { kind: ActorKind::Token, sub: v.sub.clone(), iss: Some(v.issuer.clone()), client_id: v.client_id.clone() };
        Ok((actor, v.exp))
    }

    /// The decision and minting for an already validated subject token. It
    /// writes no audit record (`exchange` does, `stsgate explain` does not):
    /// the result carries it.
    pub fn exchange_validated(
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

        // RFC 9068 client_id: the client that asked, as the rules chose it (an
        // actor token's from an admitted issuer, else the subject token's),
        // else the front door's default.
        let client_id = decision.client_id.clone().unwrap_or_else(|| req.default_client_id.to_owned());
        let mut extra = decision.claims.clone();
        if let Some(act_as) = &decision.act_as {
            extra.insert("act_as".into(), act_as.clone());
        }
        let mut claims = AccessClaims {
            iss: self.cfg.issuer.clone(),
            sub: decision.sub.clone(),
            sub_id: decision.sub_id.clone(),
            aud: req.audience.to_owned(),
            exp,
            iat: now,
            jti: new_jti()?,
            client_id,
            scope: (!decision.scopes.is_empty()).then(|| decision.scopes.join(" ")),
            act: decision.act.clone(),
            extra,
        };
        let signer_index = self.keys.active_index();
        let signer = &self.keys.signers()[signer_index];
        let sign = |c: &AccessClaims| -> Result<(Vec<u8>, usize), MintError> {
            // serde_json writes `iss` first, exactly as the prefix expects.
            let json = serde_json::to_vec(c).map_err(|e| MintError::Encode(e.to_string()))?;
            let rest = json.strip_prefix(self.iss_prefix.written.as_slice()).ok_or(MintError::Encode("unexpected claims layout".into()))?;
            let mut payload = Vec::with_capacity(self.iss_prefix.padded.len() + rest.len());
            payload.extend_from_slice(&self.iss_prefix.padded);
            payload.extend_from_slice(rest);
            let sig = signer.sign_payload(&payload)?;
            let mut signed = Vec::with_capacity(1 + rest.len() + sig.len());
            signed.push(b'{');
            signed.extend_from_slice(rest);
            let rest_len = signed.len();
            signed.extend_from_slice(&sig);
            Ok((signed, rest_len))
        };
        let (signed, rest_len) = sign(&claims)?;
        let audit = decision.audit.as_ref().map(|a| format!("{a}; minted jti {:?}", claims.jti).into_boxed_str());
        let rule = *self.rule_index.get(&decision.rule).ok_or(MintError::Encode("unknown rule".into()))?;
        let mut downstream = Vec::with_capacity(decision.downstream.len());
        if !decision.downstream.is_empty() {
            let entries = &self.cfg.rules[rule as usize].grant.downstream_tokens;
            for d in &decision.downstream {
                claims.aud = d.audience.clone();
                claims.jti = new_jti()?;
                claims.scope = (!d.scopes.is_empty()).then(|| d.scopes.join(" "));
                let (s, n) = sign(&claims)?;
                let mut token = String::new();
                self.iss_prefix.assemble(&mut token, signer.header_b64(), &s[1..n], &s[n..]);
                let i = entries.iter().position(|e| e.header == d.header).unwrap_or(0) as u16;
                downstream.push((i, token.into_boxed_str()));
            }
        }
        let minted = Minted {
            signed: signed.into_boxed_slice(),
            rest_len: rest_len as u32,
            exp,
            outcome: decision.outcome,
            rule,
            issuer: self.issuer_index.get(&subject.issuer).copied().unwrap_or(0),
            signer: signer_index as u16,
            downstream: (!downstream.is_empty()).then(|| downstream.into_boxed_slice()),
        };
        Ok(Exchanged { engine: self, minted: Arc::new(minted), audit })
    }
}

#[cfg(test)]
mod audit_tests;
