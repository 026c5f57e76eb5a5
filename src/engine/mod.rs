//! The one exchange decision both front doors (ext_authz Check, and the
//! RFC 8693 token endpoint) call: resolve the actor (`actor`), validate the
//! subject token, ask the rules, mint the new token (`mint`). Callers map
//! `ExchangeError` to their wire format through `api::refusal`.

use std::sync::Arc;

use tracing::field::Empty;
use tracing::{Instrument as _, Span, info_span};

pub(crate) mod actor;
pub mod audit;
pub(crate) mod cache;
pub mod client_certs;
pub mod clients;
pub mod mint;
pub mod replay;

pub(crate) use self::mint::{ClaimsView, Exchanged, MintError, Minted};

use self::cache::Caches;
use self::mint::{MintRequest, PayloadPrefix};
use crate::clock::now_unix;
use crate::config::{Config, Outcome};
use crate::metrics::IntrospectionMetrics;
use crate::rules::{self, Actor, Denied, RequestAttrs, RuleInput};
use crate::signing::{KeyError, KeyRing};
use crate::trust::introspection::{IntrospectionError, Introspectors, SetupError, looks_like_jwt};
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
    /// The front door and Check caller, for the audit events.
    pub origin: audit::Origin<'a>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("invalid subject token: {0}")]
    Token(#[from] TokenError),
    #[error("invalid actor token: {0}")]
    ActorToken(TokenError),
    /// The subject token was introspected (RFC 7662) and is not accepted, or
    /// could not be (`IntrospectionError::Unavailable`).
    #[error("invalid subject token: {0}")]
    Introspected(IntrospectionError),
    #[error("invalid actor token: {0}")]
    ActorIntrospected(IntrospectionError),
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
    /// The audit file cannot be opened (`audit.file`).
    #[error(transparent)]
    Audit(#[from] audit::StartError),
}

/// Why a subject or actor token is not accepted: by the JWT validator, or
/// by its issuer's introspection endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Invalid {
    Token(TokenError),
    Introspection(IntrospectionError),
}

impl Invalid {
    pub(crate) fn subject(self) -> ExchangeError {
        match self {
            Invalid::Token(e) => ExchangeError::Token(e),
            Invalid::Introspection(e) => ExchangeError::Introspected(e),
        }
    }

    pub(crate) fn actor(self) -> ExchangeError {
        match self {
            Invalid::Token(e) => ExchangeError::ActorToken(e),
            Invalid::Introspection(e) => ExchangeError::ActorIntrospected(e),
        }
    }
}

/// Everything an exchange needs, built once from the configuration.
pub struct Engine {
    pub cfg: Arc<Config>,
    pub issuers: Arc<Issuers>,
    pub keys: Arc<KeyRing>,
    /// The token endpoint's clients.
    pub clients: clients::Clients,
    /// Assertions used (client assertions, JWT bearer grants), kept across
    /// reloads.
    pub replay: Arc<replay::ReplayStore>,
    /// RFC 7662 introspection per issuer that has it, and which one takes
    /// opaque tokens.
    introspectors: Introspectors,
    /// Kept across reloads, like `replay`: the series outlive an engine.
    pub introspection_metrics: IntrospectionMetrics,
    /// The audit event stream, kept across reloads while `audit:` is unchanged.
    pub audit: Arc<audit::Audit>,
    validator: Validator,
    caches: Caches,
    prefixes: Vec<PayloadPrefix>,
    /// Positions of rules and trusted issuers (then stsgate's own issuer),
    /// which cache entries refer to. foldhash, not SipHash: both are built
    /// from the configuration and only looked up per request (with a rule
    /// name and an issuer that passed validation), so no request can flood
    /// them with colliding keys; SipHash cost two hashes per cold exchange.
    rule_index: foldhash::HashMap<String, u16>,
    issuer_index: foldhash::HashMap<String, u16>,
    /// Every request attribute any rule's CEL expression can read: part of
    /// the minted-token cache key on the Check path (`exchange_on`).
    request_reads: crate::config::RequestReads,
    /// Every actor-token claim any rule's CEL expression can read
    /// (`actor.claims.*`): part of the minted-token cache key too.
    actor_claim_reads: crate::config::Keys,
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
        let issuers = Issuers::new(&cfg, http.clone());
        if let Some(running) = running {
            issuers.seed_unchanged(&running.issuers);
        }
        // A reload must not forget which assertions were used: the running
        // store is kept unless its settings changed.
        let replay = replay::ReplayStore::for_config(&cfg.token_endpoint.replay_store, running.map(|r| &r.replay))
            .map_err(LoadError::Clients)?;
        let clients = clients::Clients::load(&cfg, replay.clone(), &http, running.map(|r| &r.clients))
            .map_err(LoadError::Clients)?;
        let introspection_metrics = running.map(|r| r.introspection_metrics.clone()).unwrap_or_default();
        let introspectors = Introspectors::load(
            &cfg.trusted_issuers,
            &keys,
            &http,
            &introspection_metrics,
            running.map(|r| &r.introspectors),
        )
        // Like a token endpoint client's, a missing secret of stsgate's own
        // as a client of an IdP: the reload's `ClientSecrets`.
        .map_err(|e: SetupError| LoadError::Clients(e.to_string()))?;
        let audit = audit::Audit::for_config(&cfg.audit, running.map(|r| &r.audit))?;
        let mut engine = Engine::new(cfg, Arc::new(issuers), Arc::new(keys), clients, replay, audit);
        engine.introspectors = introspectors;
        engine.introspection_metrics = introspection_metrics;
        Ok(engine)
    }

    fn new(
        cfg: Arc<Config>,
        issuers: Arc<Issuers>,
        keys: Arc<KeyRing>,
        clients: clients::Clients,
        replay: Arc<replay::ReplayStore>,
        audit: Arc<audit::Audit>,
    ) -> Engine {
        // stsgate's own tokens are subject tokens only where a rule lists `self`.
        let own = cfg.rules.iter().any(|r| r.when.admits_own()).then(|| OwnIssuer::new(&cfg.issuer, &keys));
        let validator = Validator::new(issuers.clone(), cfg.tokens.max_token_bytes).with_own(own);
        let caches = Caches::new(&cfg.cache);
        let index = |names: Vec<&str>| names.into_iter().enumerate().map(|(i, n)| (n.to_owned(), i as u16)).collect();
        let rule_index = index(cfg.rules.iter().map(|r| r.name.as_str()).collect());
        let trusted = cfg.trusted_issuers.iter().map(|i| i.issuer.as_str());
        let issuer_index = index(trusted.chain([cfg.issuer.as_str()]).collect());
        let prefixes = PayloadPrefix::all(&cfg.issuer, cfg.trusted_issuers.iter().map(|i| i.issuer.as_str()));
        let (introspectors, introspection_metrics) = Default::default();
        let mut request_reads = crate::config::RequestReads::default();
        let mut actor_claim_reads = crate::config::Keys::None;
        for r in &cfg.rules {
            for e in r.when.condition.iter().chain(r.grant.computed_claims.values()) {
                request_reads.union(&e.reads());
                actor_claim_reads.union(e.actor_claims());
            }
        }
        Engine {
            cfg,
            issuers,
            keys,
            clients,
            replay,
            introspectors,
            introspection_metrics,
            audit,
            validator,
            caches,
            prefixes,
            rule_index,
            issuer_index,
            request_reads,
            actor_claim_reads,
        }
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
        self.exchange_on(req, None).await
    }

    /// Whether any rule's CEL expression reads the request (`request.*`):
    /// the Check path builds `RequestAttrs` only then.
    pub(crate) fn reads_request(&self) -> bool {
        !self.request_reads.is_empty()
    }

    /// The request attributes the rules' CEL expressions can read.
    pub(crate) fn request_reads(&self) -> &crate::config::RequestReads {
        &self.request_reads
    }

    /// The actor-token claims the rules' CEL expressions can read.
    pub(crate) fn actor_claim_reads(&self) -> &crate::config::Keys {
        &self.actor_claim_reads
    }

    /// What the rules' CEL expressions read beyond the cache key's other
    /// fields, for the minted-token cache key: the request's attributes they
    /// can read and the actor token's claims. `None` when they read neither.
    fn cel_key_bytes(&self, request: Option<&RequestAttrs>, actor: Option<&Actor>) -> Option<Vec<u8>> {
        let request = request.filter(|_| self.reads_request()).map(|r| r.key_bytes(&self.request_reads));
        if matches!(self.actor_claim_reads, crate::config::Keys::None) {
            return request;
        }
        let mut out = Vec::new();
        match request {
            Some(r) => {
                out.extend_from_slice(&(r.len() as u64).to_le_bytes());
                out.extend_from_slice(&r);
            }
            None => out.extend_from_slice(&u64::MAX.to_le_bytes()),
        }
        let token = actor.and_then(|a| a.token.as_ref()).map(|t| &*t.0);
        rules::actor_claims_key_bytes(token, &self.actor_claim_reads, &mut out);
        Some(out)
    }

    /// `exchange` of a Check about `request`: the rules' expressions see it,
    /// and the attributes they can read are part of the cache key.
    pub(crate) async fn exchange_on(
        &self,
        req: &ExchangeRequest<'_>,
        request: Option<&RequestAttrs>,
    ) -> Result<Exchanged<'_>, ExchangeError> {
        let span = info_span!(target: TRACE, "exchange", cache.hit = Empty);
        self.exchange_in(req, request, &span).instrument(span.clone()).await
    }

    /// `exchange`, inside its span.
    async fn exchange_in(
        &self,
        req: &ExchangeRequest<'_>,
        request: Option<&RequestAttrs>,
        span: &Span,
    ) -> Result<Exchanged<'_>, ExchangeError> {
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
                // Two requests that differ in an attribute some expression
                // reads never share an answer (whichever rule decides).
                self.cel_key_bytes(request, req.actor.as_ref()).as_deref(),
            )
        });
        if let Some(hit) = key.as_ref().and_then(|k| self.caches.get_minted(k, now, epoch)) {
            // The entry never outlives the actor token it was decided with.
            if req.actor_exp.is_none_or(|exp| hit.exp <= exp) {
                if !span.is_disabled() {
                    span.record("cache.hit", true);
                }
                return Ok(Exchanged::cached(self, hit));
            }
        }
        if key.is_some() && !span.is_disabled() {
            span.record("cache.hit", false);
        }
        let (subject, believed_until) =
            self.validate_until(req.subject_token, now, epoch).await.map_err(Invalid::subject)?;
        let done = self
            .decide_and_mint(&subject, req, request, now, false)
            .inspect_err(|e| self.audit_refused(&subject, req, e))?;
        // The audit event is written only now, for a token that was minted.
        self.audit_minted(&subject, req, &done);
        // Impersonation is audited on every request, so it is never answered from cache.
        if let Some(key) = key.filter(|_| done.outcome() != Outcome::Impersonation) {
            self.caches.put_minted_until(key, done.minted().clone(), now, epoch, believed_until);
        }
        Ok(done)
    }

    /// Validates a subject token as an exchange would, JWT or opaque
    /// (`stsgate explain`).
    /// The error is the token's own (no "invalid subject token" prefix).
    pub(crate) async fn validate_subject(&self, token: &str) -> Result<Arc<Validated>, String> {
        match self.validate_until(token, now_unix(), self.issuers.key_epoch()).await {
            Ok((v, _)) => Ok(v),
            Err(Invalid::Token(e)) => Err(e.to_string()),
            Err(Invalid::Introspection(e)) => Err(e.to_string()),
        }
    }

    /// Validates a subject or actor token, JWT or opaque; also says until
    /// when an introspected token's answer may be relied on (`None` for a
    /// token the JWT validator alone accepted).
    /// The token goes to introspection when it is not JWT-shaped and an
    /// issuer takes opaque tokens (without one it stays the validator's
    /// "malformed"), or when it is a JWT of an issuer with `for_jwts`.
    pub(crate) async fn validate_until(
        &self,
        token: &str,
        now: i64,
        epoch: u32,
    ) -> Result<(Arc<Validated>, Option<i64>), Invalid> {
        if let Some(intro) = self.introspectors.opaque().filter(|_| !looks_like_jwt(token)) {
            check_opaque(token, self.cfg.tokens.max_token_bytes).map_err(Invalid::Token)?;
            let (v, until) =
                intro.introspect(token, now).instrument(introspect_span()).await.map_err(Invalid::Introspection)?;
            return Ok((v, Some(until)));
        }
        let v = self.validate(token, now, epoch).await.map_err(Invalid::Token)?;
        if let Some(intro) = self.introspectors.for_jwts_of(&v.issuer).filter(|_| !v.is_own()) {
            // The signature and claims were checked; the IdP says whether it still stands.
            let (_, until) =
                intro.introspect(token, now).instrument(introspect_span()).await.map_err(Invalid::Introspection)?;
            return Ok((v, Some(until)));
        }
        Ok((v, None))
    }

    /// Validates a JWT, remembering the result briefly. `epoch` is the
    /// issuers' key epoch read before any key was looked up.
    pub(crate) async fn validate(&self, token: &str, now: i64, epoch: u32) -> Result<Arc<Validated>, TokenError> {
        let span = info_span!(target: TRACE, "validate", cache.hit = Empty, issuer = Empty, error = Empty);
        let validated = self.validate_in(token, now, epoch, &span).instrument(span.clone()).await;
        if !span.is_disabled() {
            // The issuer of a token that validated only: otherwise it is whatever the token claims.
            match &validated {
                Ok(v) => span.record("issuer", v.issuer.as_str()),
                Err(e) => span.record("error", e.label()),
            };
        }
        validated
    }

    /// `validate`, inside its span.
    async fn validate_in(&self, token: &str, now: i64, epoch: u32, span: &Span) -> Result<Arc<Validated>, TokenError> {
        if !self.caches.validated_enabled() {
            return Ok(Arc::new(self.validator.validate_at(token, now).await?));
        }
        let key = cache::token_key(token);
        let hit = self.caches.get_validated(&key, now, epoch);
        if !span.is_disabled() {
            span.record("cache.hit", hit.is_some());
        }
        if let Some(hit) = hit {
            return Ok(hit);
        }
        let v = Arc::new(self.validator.validate_at(token, now).await?);
        self.caches.put_validated(key, v.clone(), now, epoch);
        Ok(v)
    }

    /// The introspectors (RFC 7662) of this configuration.
    pub fn introspectors(&self) -> &Introspectors {
        &self.introspectors
    }

    /// The exchange of a JWT bearer assertion (RFC 7523 §2.1) that the
    /// request's client signed with its own key and the token endpoint
    /// verified: the rules see a subject asserted by `req.client` (rules
    /// listing `client` in `match.issuers`). Never cached: an assertion is
    /// accepted once. Audited like `exchange`.
    pub(crate) fn exchange_client_asserted(
        &self,
        subject: &Validated,
        req: &ExchangeRequest<'_>,
    ) -> Result<Exchanged<'_>, ExchangeError> {
        // The same span as `exchange`'s, so that a trace of either grant reads alike.
        let span = info_span!(target: TRACE, "exchange", cache.hit = false);
        let _entered = span.enter();
        let done = self
            .decide_and_mint(subject, req, None, now_unix(), true)
            .inspect_err(|e| self.audit_refused(subject, req, e))?;
        self.audit_minted(subject, req, &done);
        Ok(done)
    }

    fn audit_minted(&self, subject: &Validated, req: &ExchangeRequest<'_>, done: &Exchanged<'_>) {
        if let Some(line) = done.audit() {
            tracing::debug!(rule = done.rule(), "{line}");
        }
        self.audit.minted(subject, req, done);
    }

    /// A refusal by the rules is an audit event; a token that ran out is not.
    fn audit_refused(&self, subject: &Validated, req: &ExchangeRequest<'_>, e: &ExchangeError) {
        if let ExchangeError::Denied(denied) = e {
            self.audit.refused_by_rules(subject, req, denied);
        }
    }

    /// The decision and minting for an already validated subject token:
    /// rules, then lifetime, then `mint`. It writes no audit record
    /// (`exchange` does, `stsgate explain` does not): the result carries it.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn exchange_validated(
        &self,
        subject: &Validated,
        req: &ExchangeRequest<'_>,
        now: i64,
    ) -> Result<Exchanged<'_>, ExchangeError> {
        self.decide_and_mint(subject, req, None, now, false)
    }

    /// `exchange_validated` of a Check about `request` (`stsgate explain`).
    pub(crate) fn exchange_validated_on(
        &self,
        subject: &Validated,
        req: &ExchangeRequest<'_>,
        request: Option<&RequestAttrs>,
        now: i64,
    ) -> Result<Exchanged<'_>, ExchangeError> {
        self.decide_and_mint(subject, req, request, now, false)
    }

    /// `exchange_validated`; `client_asserted`: the subject token is an
    /// assertion `req.client` signed itself.
    fn decide_and_mint(
        &self,
        subject: &Validated,
        req: &ExchangeRequest<'_>,
        request: Option<&RequestAttrs>,
        now: i64,
        client_asserted: bool,
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
        let requester = rules::Requester { client: req.client, client_asserted, request };
        let span =
            info_span!(target: TRACE, "rules", audience = req.audience, rule = Empty, outcome = Empty, error = Empty);
        let evaluated = span.in_scope(|| rules::evaluate_as(&self.cfg.rules, &input, requester));
        if !span.is_disabled() {
            match &evaluated {
                Ok(d) => span.record("rule", d.rule.as_str()).record("outcome", d.outcome.as_str()),
                Err(denied) => span.record("error", denied.label()),
            };
        }
        let mut decision = match evaluated {
            Ok(d) => d,
            Err(denied) => {
                if tracing::enabled!(tracing::Level::DEBUG) {
                    for (rule, why) in rules::verdicts_as(&self.cfg.rules, &input, requester) {
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
        Ok(info_span!(target: TRACE, "mint").in_scope(|| self.mint(decision, &mint))?)
    }
}

/// The target of the exported spans (`crate::trace`).
const TRACE: &str = crate::trace::TARGET;

fn introspect_span() -> Span {
    info_span!(target: TRACE, "introspect")
}

#[cfg(test)]
mod audit_tests;

/// An opaque token as RFC 6750 §2.1 allows it (`b64token`), within the size
/// limit: anything else is not sent to an IdP.
fn check_opaque(token: &str, max_bytes: usize) -> Result<(), TokenError> {
    if token.len() > max_bytes {
        return Err(TokenError::TooLarge(max_bytes));
    }
    let body = token.trim_end_matches('=');
    let b64token = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
    if body.is_empty() || !body.bytes().all(b64token) {
        return Err(TokenError::Malformed("not a JWT, nor an opaque token of RFC 6750 token characters"));
    }
    Ok(())
}
