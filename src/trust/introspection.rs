//! RFC 7662 token introspection: how stsgate validates the opaque (reference)
//! tokens of an issuer that hands them out, and, where an issuer is
//! configured for it, re-checks that issuer's JWTs for revocation. This is
//! the phantom-token pattern: an opaque token outside, stsgate's signed JWT
//! inside.
//!
//! An active answer becomes the same `Validated` a JWT becomes, so rules,
//! minting and `act` handling do not know the difference. The IdP is asked
//! with stsgate's own client credentials (`client_secret_basic`,
//! `client_secret_post`, or `private_key_jwt` signed with one of stsgate's
//! keys); answers are size- and time-limited and parsed strictly.
//!
//! Cost and outages: answers are cached by a SHA-256 of the token (active
//! ones until the token's `exp` or `cache_for`, whichever first: that bound is
//! the revocation latency; inactive ones for `negative_cache_for`), callers
//! presenting the same token at once share one request, and at most
//! `max_concurrency` requests per issuer are in flight. An endpoint that
//! cannot answer is `Unavailable` (503, fail closed) while cached tokens keep
//! working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use quick_cache::Weighter;
use quick_cache::sync::Cache;
use serde_json::Value;
use tokio::sync::{OnceCell, Semaphore};

use crate::config::{Introspection, IntrospectionAuth, KeySource, TrustedIssuer, Userinfo};
use crate::digest::{Digest, KeyBuilder};
use crate::metrics::IntrospectionMetrics;
use crate::signing::{KeyRing, Signer};
use crate::trust::claims::{Claims, numeric_date, scopes_of};
use crate::trust::issuer::error_chain;
use crate::trust::validator::{TokenError, Validated};

/// RFC 7523 §2.2.
const JWT_BEARER_ASSERTION: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Lifetime of a `private_key_jwt` client assertion.
const ASSERTION_LIFETIME: i64 = 60;
/// Largest discovery document read to find the endpoint.
const MAX_DISCOVERY_BYTES: usize = 512 * 1024;
/// Cache bookkeeping per entry (slab slot, table slot, key), as for the
/// validated-token cache.
const ENTRY_OVERHEAD: usize = 160;
/// Weight of an inactive answer: the key and a small enum.
const NEGATIVE_WEIGHT: u64 = 200;

/// Why introspection did not produce a valid token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntrospectionError {
    /// `active` is `false`, missing or not `true`: revoked, expired, unknown.
    #[error("token is not active")]
    Inactive,
    /// The answer is for something other than an access token.
    #[error("token is not an access token")]
    NotAccessToken,
    /// The answer is active but does not fit (issuer, audience, time, claims).
    #[error(transparent)]
    Token(TokenError),
    /// No usable answer: not the token's fault (503). The text names the
    /// issuer and what failed, never the token or a secret.
    #[error("introspection at {issuer} failed: {reason}")]
    Unavailable { issuer: String, reason: String, label: &'static str },
}

impl IntrospectionError {
    /// A bounded label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            IntrospectionError::Inactive => "inactive",
            IntrospectionError::NotAccessToken => "not_access_token",
            IntrospectionError::Token(e) => e.label(),
            IntrospectionError::Unavailable { .. } => "introspection_unavailable",
        }
    }
}

/// Why an introspector could not be built.
#[derive(Debug, thiserror::Error)]
#[error("trusted issuer {issuer}: introspection: {reason}")]
pub struct SetupError {
    issuer: String,
    reason: String,
}

/// A secret that never shows in `Debug` output.
struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

enum Credentials {
    Basic {
        client_id: String,
        secret: Secret,
    },
    Post {
        client_id: String,
        secret: Secret,
    },
    PrivateKeyJwt {
        client_id: String,
        signer: Arc<Signer>,
    },
    /// Userinfo (OIDC Core §5.3): the token itself is the credential.
    Userinfo,
}

/// A cached answer and until when (unix seconds) it may be handed out.
#[derive(Clone)]
enum Answer {
    Active(Arc<Validated>),
    Inactive(IntrospectionError),
}

#[derive(Clone)]
struct Entry {
    answer: Answer,
    until: i64,
}

#[derive(Clone)]
struct ByWeight;

impl Weighter<Digest, Entry> for ByWeight {
    fn weight(&self, _key: &Digest, e: &Entry) -> u64 {
        match &e.answer {
            Answer::Active(v) => (v.weight() + ENTRY_OVERHEAD) as u64,
            Answer::Inactive(_) => NEGATIVE_WEIGHT,
        }
    }
}

type Flight = Arc<OnceCell<Result<Entry, IntrospectionError>>>;

/// One issuer's introspection client, cache and limits.
pub struct Introspector {
    issuer: String,
    cfg: Introspection,
    discovery_url: Option<String>,
    /// The endpoint, configured or discovered once.
    endpoint: OnceCell<String>,
    credentials: Credentials,
    audiences: Vec<String>,
    leeway: i64,
    http: reqwest::Client,
    cache: Cache<Digest, Entry, ByWeight>,
    inflight: Mutex<HashMap<Digest, Flight>>,
    permits: Semaphore,
    metrics: IntrospectionMetrics,
}

impl std::fmt::Debug for Introspector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Introspector").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl Introspector {
    /// Builds the introspector of a trusted issuer with an `introspection`
    /// block: reads the client secret (file or environment) or picks the
    /// signing key now, so that a missing secret fails the load, not a request.
    pub fn new(
        trusted: &TrustedIssuer,
        cfg: &Introspection,
        keys: &KeyRing,
        http: reqwest::Client,
        metrics: IntrospectionMetrics,
    ) -> Result<Introspector, SetupError> {
        let fail = |reason: String| SetupError { issuer: trusted.issuer.clone(), reason };
        let client_id = cfg.client_id.clone();
        let credentials =
            match cfg.auth {
                IntrospectionAuth::ClientSecretBasic | IntrospectionAuth::ClientSecretPost => {
                    let secret = read_secret(cfg).map_err(fail)?;
                    if cfg.auth == IntrospectionAuth::ClientSecretBasic {
                        Credentials::Basic { client_id, secret }
                    } else {
                        Credentials::Post { client_id, secret }
                    }
                }
                IntrospectionAuth::PrivateKeyJwt => {
                    let signer =
                        match &cfg.signing_kid {
                            None => keys.active().clone(),
                            Some(kid) => keys.signers().iter().find(|s| s.kid == *kid).cloned().ok_or_else(|| {
                                fail(format!("signing_kid {kid:?} is not one of stsgate's signing keys"))
                            })?,
                        };
                    Credentials::PrivateKeyJwt { client_id, signer }
                }
            };
        Ok(Introspector::with_credentials(trusted, cfg.clone(), credentials, http, metrics))
    }

    /// Builds the userinfo validator of a trusted issuer with a `userinfo` block.
    pub fn userinfo(
        trusted: &TrustedIssuer,
        cfg: &Userinfo,
        http: reqwest::Client,
        metrics: IntrospectionMetrics,
    ) -> Introspector {
        Introspector::with_credentials(trusted, cfg.as_introspection(), Credentials::Userinfo, http, metrics)
    }

    fn with_credentials(
        trusted: &TrustedIssuer,
        cfg: Introspection,
        credentials: Credentials,
        http: reqwest::Client,
        metrics: IntrospectionMetrics,
    ) -> Introspector {
        let endpoint = OnceCell::new_with(cfg.endpoint.clone());
        let discovery_url = match trusted.key_source() {
            KeySource::Discovery(url) => Some(url),
            _ => None,
        };
        let capacity = (cfg.cache_max_bytes / 2000).clamp(16, 1 << 16) as usize;
        Introspector {
            issuer: trusted.issuer.clone(),
            discovery_url,
            endpoint,
            credentials,
            audiences: trusted.audiences.clone(),
            leeway: trusted.leeway.0.as_secs() as i64,
            http,
            cache: Cache::with_weighter(capacity, cfg.cache_max_bytes, ByWeight),
            inflight: Mutex::new(HashMap::new()),
            permits: Semaphore::new(cfg.max_concurrency),
            metrics,
            cfg,
        }
    }

    fn is_userinfo(&self) -> bool {
        matches!(self.credentials, Credentials::Userinfo)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Whether this issuer's JWTs are introspected too.
    pub fn for_jwts(&self) -> bool {
        self.cfg.for_jwts
    }

    /// The configuration it was built from: an unchanged one is kept across
    /// a reload, with its cache.
    pub(crate) fn same_setup(&self, trusted: &TrustedIssuer) -> bool {
        let cfg = match self.is_userinfo() {
            true => trusted.userinfo.as_ref().map(Userinfo::as_introspection),
            false => trusted.introspection.clone(),
        };
        trusted.issuer == self.issuer
            && cfg.as_ref() == Some(&self.cfg)
            && trusted.audiences == self.audiences
            && trusted.leeway.0.as_secs() as i64 == self.leeway
    }

    /// The token's answer: from the cache, from a request another caller
    /// already has in flight for the same token, or from a new request.
    /// Returns the validated token and until when (unix seconds) the answer
    /// may be relied on, which bounds any cache built on top of it.
    pub async fn introspect(&self, token: &str, now: i64) -> Result<(Arc<Validated>, i64), IntrospectionError> {
        let key =
            KeyBuilder::new(b"stsgate/introspected/v1").field(self.issuer.as_bytes()).field(token.as_bytes()).finish();
        if let Some(hit) = self.cached(&key, now) {
            self.metrics.cache_hit(&self.issuer);
            return hit;
        }
        let flight = {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            inflight.entry(key).or_default().clone()
        };
        // The first caller runs the request; the others wait for its answer.
        // If the first one gives up (its request was cancelled), a waiter runs it.
        let result = flight.get_or_init(|| self.ask(token, key, now)).await.clone();
        {
            let mut inflight = self.inflight.lock().unwrap_or_else(|e| e.into_inner());
            if inflight.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flight)) {
                inflight.remove(&key);
            }
        }
        let entry = result?;
        match entry.answer {
            Answer::Active(v) => Ok((v, entry.until)),
            Answer::Inactive(e) => Err(e),
        }
    }

    fn cached(&self, key: &Digest, now: i64) -> Option<Result<(Arc<Validated>, i64), IntrospectionError>> {
        let entry = self.cache.get(key)?;
        if now >= entry.until {
            self.cache.remove(key);
            return None;
        }
        Some(match entry.answer {
            Answer::Active(v) => {
                // Cached until the token's `exp`, yet checked again: the clock moved.
                if now > v.exp.saturating_add(self.leeway) {
                    return Some(Err(IntrospectionError::Token(TokenError::Expired)));
                }
                Ok((v, entry.until))
            }
            Answer::Inactive(e) => Err(e),
        })
    }

    /// One introspection request, within the issuer's concurrency limit and
    /// the timeout; the answer is cached unless there was none.
    /// `now` is when the caller asked: the answer counts from then (the
    /// stricter end of the round trip).
    async fn ask(&self, token: &str, key: Digest, now: i64) -> Result<Entry, IntrospectionError> {
        let started = Instant::now();
        let timeout = self.cfg.timeout.0;
        let result = match tokio::time::timeout(timeout, self.limited(token)).await {
            Ok(r) => r,
            Err(_) => Err(self.unavailable("timeout", format!("no answer within {}", crate::config::Dur(timeout)))),
        };
        let entry = match result {
            Err(e @ IntrospectionError::Unavailable { .. }) => {
                if let IntrospectionError::Unavailable { label, reason, .. } = &e {
                    tracing::warn!(issuer = %self.issuer, reason = %reason, "introspection failed");
                    self.metrics.failed(&self.issuer, label);
                }
                return Err(e);
            }
            // The userinfo endpoint refused the token.
            Err(e) => {
                self.metrics.answered(&self.issuer, "inactive", started.elapsed());
                Entry { answer: Answer::Inactive(e), until: now + self.cfg.negative_cache_for.0.as_secs() as i64 }
            }
            Ok(body) => {
                let answer = match self.interpret(&body, now) {
                    Ok(v) => Answer::Active(Arc::new(v)),
                    Err(e @ IntrospectionError::Unavailable { .. }) => {
                        tracing::warn!(issuer = %self.issuer, "introspection answer refused: {e}");
                        self.metrics.failed(&self.issuer, "bad_answer");
                        return Err(e);
                    }
                    Err(e) => Answer::Inactive(e),
                };
                let result = if matches!(answer, Answer::Active(_)) { "active" } else { "inactive" };
                self.metrics.answered(&self.issuer, result, started.elapsed());
                let until = match &answer {
                    Answer::Active(v) => (now + self.cfg.cache_for.0.as_secs() as i64).min(v.exp),
                    Answer::Inactive(_) => now + self.cfg.negative_cache_for.0.as_secs() as i64,
                };
                Entry { answer, until }
            }
        };
        if entry.until > now {
            self.cache.insert(key, entry.clone());
        }
        Ok(entry)
    }

    /// The request, once a permit is free.
    async fn limited(&self, token: &str) -> Result<Vec<u8>, IntrospectionError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| self.unavailable("busy", "the concurrency limiter is closed".into()))?;
        let endpoint = self.endpoint().await?;
        match self.is_userinfo() {
            true => self.get_userinfo(&endpoint, token).await,
            false => self.post(&endpoint, token).await,
        }
    }

    async fn endpoint(&self) -> Result<String, IntrospectionError> {
        self.endpoint.get_or_try_init(|| self.discover()).await.cloned()
    }

    /// The discovery document's `introspection_endpoint` (RFC 8414 §2), from
    /// a document that names this issuer.
    async fn discover(&self) -> Result<String, IntrospectionError> {
        let url = self
            .discovery_url
            .as_deref()
            .ok_or_else(|| self.unavailable("discovery", "no endpoint configured and no discovery".into()))?;
        let fail = |why: String| self.unavailable("discovery", format!("discovery at {url}: {why}"));
        let resp = self.http.get(url).send().await.map_err(|e| fail(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(fail(format!("HTTP {}", resp.status().as_u16())));
        }
        let body = read_limited(resp, MAX_DISCOVERY_BYTES).await.map_err(fail)?;
        #[derive(serde::Deserialize)]
        struct Meta {
            issuer: String,
            introspection_endpoint: Option<String>,
            userinfo_endpoint: Option<String>,
        }
        let meta: Meta = serde_json::from_slice(&body).map_err(|e| fail(format!("not provider metadata: {e}")))?;
        if meta.issuer != self.issuer {
            return Err(fail("names another issuer".into()));
        }
        let (endpoint, name) = match self.is_userinfo() {
            true => (meta.userinfo_endpoint, "userinfo_endpoint"),
            false => (meta.introspection_endpoint, "introspection_endpoint"),
        };
        let endpoint = endpoint.ok_or_else(|| fail(format!("has no {name}")))?;
        Introspection::endpoint_ok(&endpoint).map_err(fail)?;
        Ok(endpoint)
    }

    async fn post(&self, endpoint: &str, token: &str) -> Result<Vec<u8>, IntrospectionError> {
        let mut form: Vec<(&str, String)> =
            vec![("token", token.to_owned()), ("token_type_hint", "access_token".to_owned())];
        let mut req = self.http.post(endpoint).header(reqwest::header::ACCEPT, "application/json");
        match &self.credentials {
            Credentials::Basic { client_id, secret } => {
                // RFC 6749 §2.3.1: each part form-urlencoded before base64.
                let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                let raw = format!("{}:{}", enc(client_id), enc(&secret.0));
                req = req.header(reqwest::header::AUTHORIZATION, format!("Basic {}", STANDARD.encode(raw)));
            }
            Credentials::Post { client_id, secret } => {
                form.push(("client_id", client_id.clone()));
                form.push(("client_secret", secret.0.clone()));
            }
            // Asked with `get_userinfo`; nothing to add to a form.
            Credentials::Userinfo => {}
            Credentials::PrivateKeyJwt { client_id, signer } => {
                let assertion = self.assertion(client_id, signer, endpoint)?;
                form.push(("client_id", client_id.clone()));
                form.push(("client_assertion_type", JWT_BEARER_ASSERTION.to_owned()));
                form.push(("client_assertion", assertion));
            }
        }
        // reqwest's errors carry the URL and the cause, never the body (the token).
        let resp = req.form(&form).send().await.map_err(|e| self.unavailable("transport", error_chain(&e)))?;
        let status = resp.status();
        if !status.is_success() {
            let why = match status.as_u16() {
                401 | 403 => format!("HTTP {}: the IdP refused stsgate's client credentials", status.as_u16()),
                code => format!("HTTP {code}"),
            };
            return Err(self.unavailable("status", why));
        }
        read_limited(resp, self.cfg.max_response_bytes).await.map_err(|why| self.unavailable("too_large", why))
    }

    /// The userinfo answer for the token (OIDC Core §5.3.1): 401 or 403 says
    /// the token is not (or no longer) valid.
    async fn get_userinfo(&self, endpoint: &str, token: &str) -> Result<Vec<u8>, IntrospectionError> {
        let resp = self
            .http
            .get(endpoint)
            .bearer_auth(token)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| self.unavailable("transport", error_chain(&e)))?;
        match resp.status().as_u16() {
            200 => {}
            401 | 403 => return Err(IntrospectionError::Inactive),
            code => return Err(self.unavailable("status", format!("HTTP {code}"))),
        }
        read_limited(resp, self.cfg.max_response_bytes).await.map_err(|why| self.unavailable("too_large", why))
    }

    /// An RFC 7523 client assertion for the endpoint, signed with stsgate's key.
    fn assertion(&self, client_id: &str, signer: &Signer, endpoint: &str) -> Result<String, IntrospectionError> {
        let now = crate::clock::now_unix();
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| self.unavailable("transport", "no randomness".into()))?;
        let claims = serde_json::json!({
            "iss": client_id,
            "sub": client_id,
            "aud": endpoint,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME,
            "jti": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(jti),
        });
        signer.sign_typed("JWT", &claims).map_err(|e| self.unavailable("transport", format!("cannot sign: {e}")))
    }

    /// An answer, read strictly (RFC 7662 §2.2). The IdP's own mistakes (not
    /// JSON, a member twice, a claim of the wrong type) are `Unavailable`;
    /// what the answer says about the token is its verdict.
    fn interpret(&self, body: &[u8], now: i64) -> Result<Validated, IntrospectionError> {
        let bad = |why: &str| self.unavailable("bad_answer", format!("the answer {why}"));
        let text = std::str::from_utf8(body).map_err(|e| bad(&format!("is not UTF-8: {e}")))?;
        let mut claims = Claims::from_json(text).map_err(|e| bad(&format!("is not a JSON object: {e}")))?;
        if self.is_userinfo() {
            return self.userinfo_claims(claims, now);
        }
        // Introspection members, not token claims: kept out of `other`.
        let active = claims.remove_other("active");
        let token_type = claims.remove_other("token_type");
        let token_use = claims.remove_other("token_use");
        if active != Some(Value::Bool(true)) {
            return Err(IntrospectionError::Inactive);
        }
        if let Some(t) = token_type {
            let t = t.as_str().ok_or_else(|| bad("has a token_type that is not a string"))?.to_ascii_lowercase();
            // `bearer` per RFC 6749 §7.1; the RFC 8693 name. A DPoP-bound token
            // would need its proof, which stsgate does not see.
            if !matches!(t.as_str(), "bearer" | "access_token" | "urn:ietf:params:oauth:token-type:access_token") {
                return Err(IntrospectionError::NotAccessToken);
            }
        }
        if token_use.is_some_and(|u| u.as_str() != Some("access_token")) {
            return Err(IntrospectionError::NotAccessToken);
        }
        let token = |e| IntrospectionError::Token(e);
        match &claims.iss {
            Some(iss) if *iss != self.issuer => return Err(token(TokenError::UntrustedIssuer)),
            Some(_) => {}
            // The endpoint is this issuer's: an answer without `iss` is about its token.
            None => claims.iss = Some(self.issuer.clone()),
        }
        // stsgate bounds what it mints by the subject's `exp`: an answer without one is refused.
        let exp = numeric_date(&claims.exp).ok_or(token(TokenError::Claim("exp")))?;
        if now > exp.saturating_add(self.leeway) {
            return Err(token(TokenError::Expired));
        }
        if claims.nbf.is_some() {
            let nbf = numeric_date(&claims.nbf).ok_or(token(TokenError::Claim("nbf")))?;
            if nbf > now.saturating_add(self.leeway) {
                return Err(token(TokenError::NotYetValid));
            }
        }
        if claims.iat.is_some() {
            let iat = numeric_date(&claims.iat).ok_or(token(TokenError::Claim("iat")))?;
            if iat > now.saturating_add(self.leeway) {
                return Err(token(TokenError::IssuedInFuture));
            }
        }
        if !self.audiences.is_empty() && !claims.aud().any(|a| self.audiences.iter().any(|x| x == a)) {
            return Err(token(TokenError::Audience));
        }
        let sub = claims.sub.clone().filter(|s| !s.is_empty()).ok_or(token(TokenError::Claim("sub")))?;
        let scopes = scopes_of(&claims).map_err(|c| token(TokenError::Claim(c)))?;
        let client_id = claims.client_id.clone().or_else(|| claims.azp.clone());
        Ok(Validated { issuer: self.issuer.clone(), sub, exp, scopes, client_id, claims, own_sub_id: None })
    }

    /// A userinfo answer (OIDC Core §5.3.2): `sub` is required; it has no
    /// `exp`, so the token counts as valid for `cache_for` from now.
    fn userinfo_claims(&self, mut claims: Claims, now: i64) -> Result<Validated, IntrospectionError> {
        let token = |e| IntrospectionError::Token(e);
        match &claims.iss {
            Some(iss) if *iss != self.issuer => return Err(token(TokenError::UntrustedIssuer)),
            Some(_) => {}
            None => claims.iss = Some(self.issuer.clone()),
        }
        let sub = claims.sub.clone().filter(|s| !s.is_empty()).ok_or(token(TokenError::Claim("sub")))?;
        let scopes = scopes_of(&claims).map_err(|c| token(TokenError::Claim(c)))?;
        let client_id = claims.client_id.clone().or_else(|| claims.azp.clone());
        let exp = now + (self.cfg.cache_for.0.as_secs() as i64).max(1);
        Ok(Validated { issuer: self.issuer.clone(), sub, exp, scopes, client_id, claims, own_sub_id: None })
    }

    fn unavailable(&self, label: &'static str, reason: String) -> IntrospectionError {
        IntrospectionError::Unavailable { issuer: self.issuer.clone(), reason, label }
    }
}

/// The secret from the file (one trailing newline dropped) or the variable.
fn read_secret(cfg: &Introspection) -> Result<Secret, String> {
    let secret = match (&cfg.client_secret_file, &cfg.client_secret_env) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read client_secret_file {}: {e}", path.display()))?;
            text.strip_suffix('\n').map(|s| s.strip_suffix('\r').unwrap_or(s)).unwrap_or(&text).to_owned()
        }
        (None, Some(var)) => {
            std::env::var(var).map_err(|_| format!("environment variable {var} (client_secret_env) is not set"))?
        }
        (None, None) => return Err("no client secret configured".into()),
    };
    if secret.is_empty() {
        return Err("the client secret is empty".into());
    }
    Ok(Secret(secret))
}

async fn read_limited(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, String> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Err(format!("the answer is larger than {max} bytes"));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > max {
            return Err(format!("the answer is larger than {max} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Whether a token is a JWS compact serialization's shape (three
/// dot-separated parts), which goes to the JWT validator; anything else is
/// opaque. Decided on shape alone: an opaque token never reaches a JWT
/// parser, and a JWT is never sent to an IdP it does not name.
pub(crate) fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() >= 2
}

/// The introspectors of a configuration, and which one takes opaque tokens.
#[derive(Debug, Default)]
pub struct Introspectors {
    by_issuer: HashMap<String, Arc<Introspector>>,
    opaque: Option<Arc<Introspector>>,
}

impl Introspectors {
    /// One introspector per issuer with an `introspection` block; one that
    /// `running` already has with the same settings is kept (with its cache).
    pub fn load(
        issuers: &[TrustedIssuer],
        keys: &KeyRing,
        http: &reqwest::Client,
        metrics: &IntrospectionMetrics,
        running: Option<&Introspectors>,
    ) -> Result<Introspectors, SetupError> {
        let mut out = Introspectors::default();
        for trusted in issuers {
            if let Some(u) = &trusted.userinfo {
                let kept = running.and_then(|r| r.by_issuer.get(&trusted.issuer)).filter(|i| i.same_setup(trusted));
                let intro = match kept {
                    Some(i) => i.clone(),
                    None => Arc::new(Introspector::userinfo(trusted, u, http.clone(), metrics.clone())),
                };
                if trusted.opaque_tokens {
                    out.opaque = Some(intro.clone());
                }
                out.by_issuer.insert(trusted.issuer.clone(), intro);
                continue;
            }
            let Some(cfg) = &trusted.introspection else { continue };
            let kept = running.and_then(|r| r.by_issuer.get(&trusted.issuer)).filter(|i| i.same_setup(trusted));
            // A kept private_key_jwt introspector signs with the old key ring's
            // key: rebuild those, their cache is cheap to lose.
            let kept = kept.filter(|i| !matches!(i.credentials, Credentials::PrivateKeyJwt { .. }));
            let intro = match kept {
                Some(i) => i.clone(),
                None => Arc::new(Introspector::new(trusted, cfg, keys, http.clone(), metrics.clone())?),
            };
            if trusted.opaque_tokens {
                out.opaque = Some(intro.clone());
            }
            out.by_issuer.insert(trusted.issuer.clone(), intro);
        }
        Ok(out)
    }

    /// The issuer that takes opaque tokens, if one does.
    pub fn opaque(&self) -> Option<&Arc<Introspector>> {
        self.opaque.as_ref()
    }

    /// The introspector of `issuer`, if its JWTs are introspected too.
    pub fn for_jwts_of(&self, issuer: &str) -> Option<&Arc<Introspector>> {
        self.by_issuer.get(issuer).filter(|i| i.for_jwts())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::SignAlg;
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn introspector(extra: &str) -> Introspector {
        crate::install_crypto_provider();
        // A file per process: tests run in parallel.
        let secret = std::env::temp_dir().join(format!("stsgate-introspection-secret-{}", std::process::id()));
        std::fs::write(&secret, "s3cret\n").unwrap();
        let yaml = format!(
            "issuer: https://sts.test\nsigning:\n  keys: [{{ kid: a, ephemeral: true }}]\n\
             trusted_issuers:\n  - issuer: https://idp.test\n    jwks_url: https://idp.test/jwks\n    \
             audiences: [stsgate]\n    introspection:\n      endpoint: https://idp.test/introspect\n      \
             client_id: sts\n      client_secret_file: {}\n{extra}",
            secret.display()
        );
        let cfg = Config::from_yaml_str(&yaml).unwrap();
        let t = &cfg.trusted_issuers[0];
        let signer = Arc::new(Signer::generate("a", SignAlg::ES256).unwrap());
        let ring = KeyRing::from_signers(vec![signer], "a").unwrap();
        let http = crate::trust::issuer::http_client().unwrap();
        Introspector::new(t, t.introspection.as_ref().unwrap(), &ring, http, IntrospectionMetrics::default()).unwrap()
    }

    fn answer(v: Value) -> Result<Validated, IntrospectionError> {
        introspector("").interpret(v.to_string().as_bytes(), NOW)
    }

    fn active() -> Value {
        json!({"active": true, "iss": "https://idp.test", "sub": "alice", "aud": "stsgate", "exp": NOW + 600,
               "scope": "orders.read orders.write", "client_id": "web", "token_type": "Bearer", "groups": ["g"]})
    }

    fn with(k: &str, v: Value) -> Value {
        let mut a = active();
        a[k] = v;
        a
    }

    #[test]
    fn an_active_answer_is_a_validated_token() {
        let v = answer(active()).unwrap();
        assert_eq!((v.issuer.as_str(), v.sub.as_str(), v.exp), ("https://idp.test", "alice", NOW + 600));
        assert_eq!(v.scopes, ["orders.read", "orders.write"]);
        assert_eq!(v.client_id.as_deref(), Some("web"));
        assert_eq!(v.claims.other("groups"), Some(json!(["g"])));
        assert!(!v.claims.has_other("active") && !v.claims.has_other("token_type"));
        assert!(!v.is_own());
        // No `iss`: the endpoint's issuer.
        let mut a = active();
        a.as_object_mut().unwrap().remove("iss");
        assert_eq!(answer(a).unwrap().claims.iss.as_deref(), Some("https://idp.test"));
    }

    #[test]
    fn answers_that_do_not_fit_are_refused() {
        let inactive = IntrospectionError::Inactive;
        assert_eq!(answer(json!({"active": false})).unwrap_err(), inactive);
        assert_eq!(answer(with("active", json!(false))).unwrap_err(), inactive);
        assert_eq!(answer(with("active", json!("true"))).unwrap_err(), inactive);
        let mut missing = active();
        missing.as_object_mut().unwrap().remove("active");
        assert_eq!(answer(missing).unwrap_err(), inactive);
        let tok = IntrospectionError::Token;
        assert_eq!(answer(with("iss", json!("https://evil.test"))).unwrap_err(), tok(TokenError::UntrustedIssuer));
        assert_eq!(answer(with("aud", json!("other"))).unwrap_err(), tok(TokenError::Audience));
        assert_eq!(answer(with("exp", json!(NOW - 31))).unwrap_err(), tok(TokenError::Expired));
        assert!(answer(with("exp", json!(NOW - 29))).is_ok(), "inside the leeway");
        assert_eq!(answer(with("nbf", json!(NOW + 60))).unwrap_err(), tok(TokenError::NotYetValid));
        assert_eq!(answer(with("sub", json!(""))).unwrap_err(), tok(TokenError::Claim("sub")));
        let mut no_exp = active();
        no_exp.as_object_mut().unwrap().remove("exp");
        assert_eq!(answer(no_exp).unwrap_err(), tok(TokenError::Claim("exp")));
        for t in ["refresh_token", "DPoP", "N_A", "urn:ietf:params:oauth:token-type:refresh_token"] {
            assert_eq!(answer(with("token_type", json!(t))).unwrap_err(), IntrospectionError::NotAccessToken, "{t}");
        }
        for t in ["bearer", "access_token", "urn:ietf:params:oauth:token-type:access_token"] {
            assert!(answer(with("token_type", json!(t))).is_ok(), "{t}");
        }
        assert_eq!(answer(with("token_use", json!("refresh_token"))).unwrap_err(), IntrospectionError::NotAccessToken);
    }

    #[test]
    fn malformed_answers_are_the_idps_fault() {
        let i = introspector("");
        for body in [
            &b"<html>502</html>"[..],
            b"[]",
            br#"{"active":true,"active":true}"#,
            br#"{"active":true,"sub":"a","sub":"b"}"#,
            br#"{"active":true,"exp":"soon"}"#,
            br#"{"active":true,"token_type":5}"#,
        ] {
            let e = i.interpret(body, NOW).unwrap_err();
            let unavailable = matches!(e, IntrospectionError::Unavailable { .. });
            assert!(unavailable, "{}: {e:?}", String::from_utf8_lossy(body));
            assert_eq!(e.label(), "introspection_unavailable");
        }
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let i = introspector("");
        let Credentials::Basic { secret, .. } = &i.credentials else { panic!("basic is the default") };
        assert_eq!(secret.0, "s3cret");
        assert!(!format!("{secret:?} {i:?}").contains("s3cret"));
    }

    #[test]
    fn shape_decides_jwt_or_opaque() {
        assert!(looks_like_jwt("a.b.c"));
        assert!(looks_like_jwt("a.b."));
        assert!(!looks_like_jwt("2YotnFZFEjr1zCsicMWpAA"));
        assert!(!looks_like_jwt("a.b"));
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_unavailable_and_counted_per_issuer() {
        // A port nothing listens on: bound, then closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut i = introspector("");
        i.endpoint = OnceCell::new_with(Some(format!("http://127.0.0.1:{port}/introspect")));
        let mut reg = prometheus_client::registry::Registry::default();
        i.metrics.register(&mut reg);
        let e = i.introspect("opaque-token", crate::clock::now_unix()).await.unwrap_err();
        let IntrospectionError::Unavailable { label, reason, .. } = &e else { panic!("{e:?}") };
        assert_eq!(*label, "transport");
        assert!(!reason.contains("opaque-token") && !reason.contains("s3cret"), "{reason}");
        // Failures are not cached: asked again, failed again.
        let _ = i.introspect("opaque-token", crate::clock::now_unix()).await.unwrap_err();
        let text = crate::metrics::render(&reg);
        let series = r#"stsgate_introspection_failures_total{issuer="https://idp.test",result="transport"} 2"#;
        assert!(text.contains(series), "{text}");
        assert!(text.contains(r#"stsgate_introspection_requests_total{issuer="https://idp.test",result="failed"} 2"#));
    }

    /// An IdP on loopback whose discovery names `endpoint(issuer)` as its
    /// introspection endpoint, which answers every token active.
    async fn discovering_idp(endpoint: fn(&str) -> String) -> Introspector {
        use axum::routing::{get, post};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let iss = format!("http://{}", listener.local_addr().unwrap());
        let meta = json!({"issuer": iss, "introspection_endpoint": endpoint(&iss)}).to_string();
        let answer = json!({"active": true, "iss": iss, "sub": "alice", "aud": "stsgate", "exp": NOW + 600});
        let app = axum::Router::new()
            .route("/.well-known/openid-configuration", get(move || async move { meta }))
            .route("/introspect", post(move || async move { answer.to_string() }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let secret = std::env::temp_dir().join(format!("stsgate-introspection-d-{}", std::process::id()));
        std::fs::write(&secret, "s").unwrap();
        let yaml = format!(
            "issuer: https://sts.test\nsigning:\n  keys: [{{ kid: a, ephemeral: true }}]\n\
             trusted_issuers:\n  - issuer: {iss}\n    discovery: true\n    introspection:\n      \
             client_id: sts\n      client_secret_file: {}\nrules: [{{ name: all, grant: {{ scopes: [\"*\"] }} }}]\n",
            secret.display()
        );
        let cfg = Config::from_yaml_validated(&yaml).unwrap();
        let t = &cfg.trusted_issuers[0];
        let ring = KeyRing::from_signers(vec![Arc::new(Signer::generate("a", SignAlg::ES256).unwrap())], "a").unwrap();
        let http = crate::trust::issuer::http_client().unwrap();
        Introspector::new(t, t.introspection.as_ref().unwrap(), &ring, http, IntrospectionMetrics::default()).unwrap()
    }

    #[tokio::test]
    async fn the_endpoint_comes_from_discovery() {
        let i = discovering_idp(|iss| format!("{iss}/introspect")).await;
        let (v, until) = i.introspect("opaque", NOW).await.unwrap();
        assert_eq!((v.sub.as_str(), until), ("alice", NOW + 60));
        // A discovered endpoint must be https too (plain http only on loopback).
        let i = discovering_idp(|_| "http://idp.example.com/introspect".into()).await;
        let e = i.introspect("opaque", NOW).await.unwrap_err();
        assert!(matches!(&e, IntrospectionError::Unavailable { label: "discovery", .. }), "{e:?}");
        assert!(e.to_string().contains("must use https"), "{e}");
    }
}
