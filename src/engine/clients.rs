//! The token endpoint's clients (`clients`), loaded with the engine: each
//! client's method and secret, read once from its source. A plain secret is
//! compared in constant time; an argon2id hash is verified on the blocking
//! pool (argon2 is slow by design), and a successful verification is
//! remembered for `VERIFIED_FOR` under a SHA-256 of (client_id, secret), so a
//! busy client does not pay argon2 per request. Secrets are never logged.
//!
//! A `private_key_jwt` client's keys come inline, from a file (read once), or
//! from its `jwks_url`: fetched when the engine loads (in the background: a
//! client whose keys cannot be fetched cannot authenticate, nothing else
//! fails), again every `JWKS_REFRESH`, and on an assertion whose `kid` is
//! unknown at most once per `JWKS_MISS_REFETCH`. A reload keeps the keys
//! already fetched for a client whose `jwks_url` did not change.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use argon2::password_hash::{PasswordHash, PasswordVerifier};
use quick_cache::sync::Cache;
use subtle::ConstantTimeEq;

use crate::config::{Client, ClientAuthMethod, Config, VerifyAlg};
use crate::digest::{Digest, KeyBuilder};
use crate::engine::client_certs::{CertMatcher, ClientCert};
use crate::engine::replay::ReplayStore;
use crate::trust::issuer::{FetchError, fetch_document};
use crate::trust::jwks::{KeySet, VerifyKey};

/// How long a successful argon2 verification is remembered.
pub(crate) const VERIFIED_FOR: Duration = Duration::from_secs(60);

/// How many successful verifications are remembered at most.
const VERIFIED_CAPACITY: usize = 4096;

/// A `jwks_url` is fetched again this often.
pub const JWKS_REFRESH: Duration = Duration::from_secs(300);
/// An assertion with an unknown `kid` fetches a client's `jwks_url` again at
/// most this often.
pub const JWKS_MISS_REFETCH: Duration = Duration::from_secs(30);
/// How long one `jwks_url` fetch may take.
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// A client's secret as loaded.
enum Secret {
    /// An argon2id PHC string.
    Hash(Arc<str>),
    /// A plain secret from a file or the environment.
    Plain(Vec<u8>),
}

struct Known {
    method: ClientAuthMethod,
    secret: Option<Secret>,
    /// `private_key_jwt`: the client's public keys.
    keys: Option<ClientKeys>,
}

/// A `private_key_jwt` client's public keys.
enum ClientKeys {
    /// Inline or from a file, read when the engine loads.
    Fixed(Arc<KeySet>),
    /// From `jwks_url`, kept fresh.
    Remote(Arc<RemoteKeys>),
}

impl ClientKeys {
    /// The keys held now (none while a `jwks_url` was never fetched).
    fn current(&self) -> Option<Arc<KeySet>> {
        match self {
            ClientKeys::Fixed(set) => Some(set.clone()),
            ClientKeys::Remote(remote) => remote.keys.load_full(),
        }
    }
}

/// The key in `keys` that verifies a JWS with this `kid` (without one, the
/// only key for `alg`) and `alg`.
fn key_in(keys: Option<&KeySet>, kid: Option<&str>, alg: VerifyAlg) -> Option<Arc<VerifyKey>> {
    let keys = keys?;
    match kid {
        Some(kid) => keys.get(kid),
        None => keys.only_key_for(alg),
    }
    .filter(|k| k.accepts(alg))
    .cloned()
}

/// A client's keys at its `jwks_url`.
struct RemoteKeys {
    client_id: String,
    url: String,
    http: reqwest::Client,
    keys: ArcSwapOption<KeySet>,
    /// When the last unknown-`kid` refetch started; the lock also makes
    /// concurrent misses wait for one fetch.
    miss: tokio::sync::Mutex<Option<Instant>>,
}

impl RemoteKeys {
    /// Fetches the JWKS and swaps it in; on failure the keys held stay.
    async fn refresh(&self) -> Result<usize, FetchError> {
        let body = fetch_document(&self.http, &self.url, JWKS_FETCH_TIMEOUT).await?;
        let set =
            crate::trust::jwks::parse(&body).map_err(|err| FetchError::Jwks { source_name: self.url.clone(), err })?;
        let count = set.len();
        if count == 0 {
            tracing::warn!(client = %self.client_id, url = %self.url, "the client's JWKS has no usable key: it cannot authenticate");
        }
        self.keys.store(Some(Arc::new(set)));
        Ok(count)
    }

    /// The key for `kid`, fetching the JWKS again when the `kid` is unknown
    /// (or nothing was fetched yet) and the last such fetch is
    /// `JWKS_MISS_REFETCH` ago.
    async fn key_for(&self, kid: Option<&str>, alg: VerifyAlg) -> Option<Arc<VerifyKey>> {
        if let Some(key) = key_in(self.keys.load().as_deref(), kid, alg) {
            return Some(key);
        }
        if kid.is_none() && self.keys.load().is_some() {
            return None;
        }
        let mut last = self.miss.lock().await;
        if let Some(key) = key_in(self.keys.load().as_deref(), kid, alg) {
            return Some(key);
        }
        if last.is_some_and(|at| at.elapsed() < JWKS_MISS_REFETCH) {
            return None;
        }
        *last = Some(Instant::now());
        tracing::info!(client = %self.client_id, "unknown kid in a client assertion: fetching the client's JWKS again");
        if let Err(e) = self.refresh().await {
            tracing::warn!(client = %self.client_id, "cannot fetch the client's JWKS: {e}");
        }
        key_in(self.keys.load().as_deref(), kid, alg)
    }

    /// Fetches now (unless seeded), then every `JWKS_REFRESH`, until the
    /// engine holding these keys is gone.
    async fn refresh_loop(keys: std::sync::Weak<RemoteKeys>, seeded: bool) {
        if seeded {
            tokio::time::sleep(JWKS_REFRESH).await;
        }
        loop {
            let Some(remote) = keys.upgrade() else { return };
            match remote.refresh().await {
                Ok(_) => {}
                Err(e) if remote.keys.load().is_some() => {
                    tracing::warn!(client = %remote.client_id, "client JWKS refresh failed, keeping its keys: {e}")
                }
                Err(e) => tracing::warn!(
                    client = %remote.client_id,
                    "cannot fetch the client's JWKS: it cannot authenticate until it can be fetched: {e}"
                ),
            }
            drop(remote);
            tokio::time::sleep(JWKS_REFRESH).await;
        }
    }
}

/// The longest an assertion may still be valid (its `exp` ahead of now).
pub const MAX_ASSERTION_LIFETIME: i64 = 300;

/// Why a client is not authenticated: each is `invalid_client`, but for
/// `ReplayStoreDown` (503: whether the assertion was used before is unknown).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientAuthError {
    #[error("unknown client")]
    Unknown,
    #[error("the client does not authenticate with this method")]
    WrongMethod,
    #[error("wrong client secret")]
    BadSecret,
    #[error("bad client assertion: {0}")]
    BadAssertion(&'static str),
    #[error("client assertion replayed (its jti was seen before)")]
    Replayed,
    #[error("the assertion replay store cannot be reached")]
    ReplayStoreDown,
    #[error("no usable client certificate: {0}")]
    NoCertificate(&'static str),
    #[error("the client certificate does not name the client")]
    CertificateMismatch,
}

impl ClientAuthError {
    /// `stsgate_client_auth_failures_total{reason}` and decision labels.
    pub fn label(self) -> &'static str {
        match self {
            ClientAuthError::Unknown => "unknown_client",
            ClientAuthError::WrongMethod => "client_method",
            ClientAuthError::BadSecret => "bad_client_secret",
            ClientAuthError::BadAssertion(_) => "bad_client_assertion",
            ClientAuthError::Replayed => "replayed_client_assertion",
            ClientAuthError::ReplayStoreDown => "replay_store_unavailable",
            ClientAuthError::NoCertificate(_) => "no_client_certificate",
            ClientAuthError::CertificateMismatch => "client_certificate_mismatch",
        }
    }
}

/// The configured clients, ready to authenticate.
pub struct Clients {
    by_id: HashMap<String, Known>,
    verified: Cache<Digest, Instant>,
    /// Failed authentications per configured client (GCRA, governor).
    failures: governor::DefaultKeyedRateLimiter<String>,
    /// Clients over their failure rate, until when.
    locked: Cache<String, Instant>,
    /// `private_key_jwt` assertions used, kept across reloads.
    replay: Arc<ReplayStore>,
    /// `tls_client_auth`: what each such client's certificate must name.
    certs: HashMap<String, CertMatcher>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").field("count", &self.by_id.len()).finish_non_exhaustive()
    }
}

impl Clients {
    /// Reads every client's secret and JWKS file (file reads) and starts
    /// fetching each `jwks_url` in the background (when a runtime runs).
    /// Used assertions are recorded in `replay`. On a reload (`running`), a
    /// client whose `jwks_url` did not change starts with the keys fetched.
    pub fn load(
        cfg: &Config,
        replay: Arc<ReplayStore>,
        http: &reqwest::Client,
        running: Option<&Clients>,
    ) -> Result<Clients, String> {
        let clients = cfg.clients.as_slice();
        let mut by_id = HashMap::new();
        for c in clients {
            let secret = if let Some(phc) = &c.secret_hash {
                Some(Secret::Hash(phc.as_str().into()))
            } else if let Some(path) = &c.secret_file {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    format!("client {:?}: cannot read secret_file {}: {e}", c.client_id, path.display())
                })?;
                Some(Secret::Plain(text.trim_end_matches(['\r', '\n']).as_bytes().to_vec()))
            } else if let Some(name) = &c.secret_env {
                let value = std::env::var(name)
                    .map_err(|_| format!("client {:?}: environment variable {name} is not set", c.client_id))?;
                Some(Secret::Plain(value.into_bytes()))
            } else {
                None
            };
            if matches!(&secret, Some(Secret::Plain(s)) if s.is_empty()) {
                return Err(format!("client {:?}: the secret is empty", c.client_id));
            }
            let jwks =
                match (&c.jwks, &c.jwks_file) {
                    (Some(doc), _) => Some(serde_json::to_vec(doc).unwrap_or_default()),
                    (None, Some(path)) => Some(std::fs::read(path).map_err(|e| {
                        format!("client {:?}: cannot read jwks_file {}: {e}", c.client_id, path.display())
                    })?),
                    (None, None) => None,
                };
            let keys = match (jwks, &c.jwks_url) {
                (Some(bytes), _) => {
                    let set =
                        crate::trust::jwks::parse(&bytes).map_err(|e| format!("client {:?}: {e}", c.client_id))?;
                    if set.is_empty() {
                        return Err(format!("client {:?}: its JWKS has no usable key", c.client_id));
                    }
                    Some(ClientKeys::Fixed(Arc::new(set)))
                }
                (None, Some(url)) => Some(ClientKeys::Remote(remote_keys(c, url, http, running))),
                (None, None) => None,
            };
            by_id.insert(c.client_id.clone(), Known { method: c.auth, secret, keys });
        }
        // `check()` keeps it within 1..=10000; 1 should it ever be 0.
        let per_minute = std::num::NonZeroU32::new(cfg.token_endpoint.client_failures_per_minute);
        let quota = governor::Quota::per_minute(per_minute.unwrap_or(std::num::NonZeroU32::MIN));
        let locked = Cache::new(by_id.len().max(1));
        Ok(Clients {
            by_id,
            verified: Cache::new(VERIFIED_CAPACITY),
            failures: governor::RateLimiter::keyed(quota),
            locked,
            replay,
            certs: cert_matchers(clients)?,
        })
    }

    /// How long `client_id` is still refused outright, if it is.
    pub fn locked(&self, client_id: &str) -> Option<Duration> {
        let until = self.locked.get(client_id)?;
        until.checked_duration_since(Instant::now()).filter(|d| !d.is_zero())
    }

    /// Counts a failed authentication of a configured client; returns how
    /// long it is locked out when this one exceeded its rate. Unknown client
    /// ids are not counted (their number is unbounded, and they never pass).
    pub fn failed(&self, client_id: &str) -> Option<Duration> {
        use governor::clock::{Clock, DefaultClock};
        if !self.by_id.contains_key(client_id) {
            return None;
        }
        let not_until = self.failures.check_key(&client_id.to_owned()).err()?;
        let wait = not_until.wait_time_from(DefaultClock::default().now()).max(Duration::from_secs(1));
        self.locked.insert(client_id.to_owned(), Instant::now() + wait);
        Some(wait)
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The client an assertion claims to be from (its `iss`), unverified:
    /// which client's failures to count.
    pub fn assertion_issuer(assertion: &str) -> Option<String> {
        let payload = assertion.split('.').nth(1)?;
        let claims: serde_json::Value = bounded_json(&b64url(payload)?)?;
        claims.get("iss")?.as_str().map(str::to_owned)
    }

    /// A `private_key_jwt` client assertion (RFC 7523 §2.2, §3): signed by a
    /// key of the client `iss` names, `iss` = `sub` = that client, `aud` one
    /// of `audiences`, `exp` in the future and at most
    /// `MAX_ASSERTION_LIFETIME` ahead, `nbf` (if any) not in the future, and
    /// a `jti` never seen before. Returns the client id.
    pub async fn assertion(&self, assertion: &str, audiences: &[String], now: i64) -> Result<String, ClientAuthError> {
        use ClientAuthError::BadAssertion as Bad;
        let mut parts = assertion.split('.');
        let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(Bad("not a compact JWS"));
        };
        let header: serde_json::Value =
            b64url(h).and_then(|b| bounded_json(&b)).ok_or(Bad("unreadable or oversized header"))?;
        let claims: serde_json::Value =
            b64url(p).and_then(|b| bounded_json(&b)).ok_or(Bad("unreadable or oversized claims"))?;
        let signature = b64url(sig).ok_or(Bad("unreadable signature"))?;
        let iss = claims.get("iss").and_then(|v| v.as_str()).ok_or(Bad("no iss"))?;
        let known = self.by_id.get(iss).ok_or(ClientAuthError::Unknown)?;
        if known.method != ClientAuthMethod::PrivateKeyJwt {
            return Err(ClientAuthError::WrongMethod);
        }
        let keys = known.keys.as_ref().ok_or(ClientAuthError::WrongMethod)?;
        if header.get("crit").is_some() {
            return Err(Bad("crit header"));
        }
        let alg = header.get("alg").and_then(|a| a.as_str()).and_then(VerifyAlg::from_name).ok_or(Bad("algorithm"))?;
        let kid = header.get("kid").and_then(|k| k.as_str());
        let key = match keys {
            ClientKeys::Fixed(set) => key_in(Some(set), kid, alg),
            ClientKeys::Remote(remote) => remote.key_for(kid, alg).await,
        }
        .ok_or(Bad("no key of the client fits"))?;
        let signed = &assertion[..h.len() + 1 + p.len()];
        if !key.accepts(alg) || !key.verify(alg, signed.as_bytes(), &signature) {
            return Err(Bad("signature"));
        }
        if claims.get("sub").and_then(|v| v.as_str()) != Some(iss) {
            return Err(Bad("sub is not the client"));
        }
        let aud_ok = match claims.get("aud") {
            Some(serde_json::Value::String(a)) => audiences.contains(a),
            Some(serde_json::Value::Array(list)) => {
                list.iter().any(|a| a.as_str().is_some_and(|a| audiences.iter().any(|x| x == a)))
            }
            _ => false,
        };
        if !aud_ok {
            return Err(Bad("aud is not stsgate"));
        }
        let exp = claims.get("exp").and_then(|v| v.as_i64()).ok_or(Bad("no exp"))?;
        if exp <= now {
            return Err(Bad("expired"));
        }
        if exp > now + MAX_ASSERTION_LIFETIME {
            return Err(Bad("exp too far ahead"));
        }
        if claims.get("nbf").and_then(|v| v.as_i64()).is_some_and(|nbf| nbf > now) {
            return Err(Bad("not yet valid"));
        }
        let jti = claims.get("jti").and_then(|v| v.as_str()).filter(|j| !j.is_empty()).ok_or(Bad("no jti"))?;
        let key = KeyBuilder::new(b"stsgate client assertion").fields(&[iss.as_bytes(), jti.as_bytes()]).finish();
        match self.replay.first_use(key, exp, now).await {
            Ok(true) => {}
            Ok(false) => return Err(ClientAuthError::Replayed),
            Err(e) => {
                tracing::warn!("client assertion of {iss:?} refused: {e}");
                return Err(ClientAuthError::ReplayStoreDown);
            }
        }
        Ok(iss.to_owned())
    }

    /// The `alg` values the configured clients' keys accept (metadata).
    pub fn assertion_algs(&self) -> Vec<&'static str> {
        let sets: Vec<Arc<KeySet>> = self.by_id.values().filter_map(|k| k.keys.as_ref()?.current()).collect();
        VerifyAlg::ALL.into_iter().filter(|a| sets.iter().any(|s| s.accepts_any(*a))).map(VerifyAlg::as_str).collect()
    }

    /// A public client presenting its `client_id` only.
    pub fn public(&self, client_id: &str) -> Result<(), ClientAuthError> {
        let known = self.by_id.get(client_id).ok_or(ClientAuthError::Unknown)?;
        if known.method != ClientAuthMethod::None {
            return Err(ClientAuthError::WrongMethod);
        }
        Ok(())
    }

    /// A client presenting its secret with `method`.
    pub async fn secret(&self, client_id: &str, method: ClientAuthMethod, secret: &str) -> Result<(), ClientAuthError> {
        let known = self.by_id.get(client_id).ok_or(ClientAuthError::Unknown)?;
        if known.method != method {
            return Err(ClientAuthError::WrongMethod);
        }
        match known.secret.as_ref().ok_or(ClientAuthError::WrongMethod)? {
            Secret::Plain(expected) => {
                if bool::from(expected.as_slice().ct_eq(secret.as_bytes())) {
                    Ok(())
                } else {
                    Err(ClientAuthError::BadSecret)
                }
            }
            Secret::Hash(phc) => {
                let key = KeyBuilder::new(b"stsgate client secret")
                    .fields(&[client_id.as_bytes(), secret.as_bytes()])
                    .finish();
                if self.verified.get(&key).is_some_and(|at| at.elapsed() < VERIFIED_FOR) {
                    return Ok(());
                }
                let phc = phc.clone();
                let secret = secret.as_bytes().to_vec();
                let ok = tokio::task::spawn_blocking(move || {
                    PasswordHash::new(&phc)
                        .is_ok_and(|h| argon2::Argon2::default().verify_password(&secret, &h).is_ok())
                })
                .await
                .unwrap_or(false);
                if !ok {
                    return Err(ClientAuthError::BadSecret);
                }
                self.verified.insert(key, Instant::now());
                Ok(())
            }
        }
    }
}

/// A `jwks_url` client's keys: those the running engine fetched when the
/// URL did not change, and a background task keeping them fresh.
fn remote_keys(c: &Client, url: &str, http: &reqwest::Client, running: Option<&Clients>) -> Arc<RemoteKeys> {
    let previous = running.and_then(|r| match r.by_id.get(&c.client_id)?.keys.as_ref()? {
        ClientKeys::Remote(old) if old.url == url => old.keys.load_full(),
        _ => None,
    });
    let seeded = previous.is_some();
    let remote = Arc::new(RemoteKeys {
        client_id: c.client_id.clone(),
        url: url.to_owned(),
        http: http.clone(),
        keys: ArcSwapOption::new(previous),
        miss: tokio::sync::Mutex::new(None),
    });
    // Engine::load runs on the runtime or on its blocking pool; without a
    // runtime (no server) the keys are fetched on the first assertion.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(RemoteKeys::refresh_loop(Arc::downgrade(&remote), seeded));
    }
    remote
}

/// The certificate matcher of every `tls_client_auth` client.
fn cert_matchers(clients: &[Client]) -> Result<HashMap<String, CertMatcher>, String> {
    let mut out = HashMap::new();
    for c in clients.iter().filter(|c| c.auth == ClientAuthMethod::TlsClientAuth) {
        let matcher = CertMatcher::of(c)?.ok_or_else(|| format!("client {:?}: no tls_client_auth_*", c.client_id))?;
        out.insert(c.client_id.clone(), matcher);
    }
    Ok(out)
}

impl Clients {
    /// Whether `client_id` is a `tls_client_auth` client.
    pub fn uses_certificate(&self, client_id: &str) -> bool {
        self.certs.contains_key(client_id)
    }

    /// RFC 8705 §2.1: a `tls_client_auth` client presenting `client_id` and
    /// the certificate its connection (or a trusted proxy) carried.
    pub fn certificate(&self, client_id: &str, cert: Result<&ClientCert, &'static str>) -> Result<(), ClientAuthError> {
        let known = self.by_id.get(client_id).ok_or(ClientAuthError::Unknown)?;
        let matcher = self.certs.get(client_id).filter(|_| known.method == ClientAuthMethod::TlsClientAuth);
        let matcher = matcher.ok_or(ClientAuthError::WrongMethod)?;
        let cert = cert.map_err(ClientAuthError::NoCertificate)?;
        if matcher.matches(cert) { Ok(()) } else { Err(ClientAuthError::CertificateMismatch) }
    }
}

/// JSON within the bounds of a token's claims (`json_shape`): an assertion
/// is parsed before its signature is checked, so its cost must be bounded.
fn bounded_json(bytes: &[u8]) -> Option<serde_json::Value> {
    crate::trust::validator::json_shape::check(bytes).ok()?;
    serde_json::from_slice(bytes).ok()
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()
}

// JWT bearer grant (RFC 7523 §2.1): assertions a client signs itself with a
// key of its `private_key_jwt` JWKS (rules listing `client` in match.issuers).
impl Clients {
    /// The key of `client_id`'s JWKS that verifies a JWS with this `kid`
    /// (without one, the client's only key for `alg`) and `alg`; `None` when
    /// the client is unknown, has no keys, or none fits.
    pub(crate) fn signing_key_of(
        &self,
        client_id: &str,
        kid: Option<&str>,
        alg: VerifyAlg,
    ) -> Option<Arc<crate::trust::jwks::VerifyKey>> {
        let keys = self.by_id.get(client_id)?.keys.as_ref()?.current();
        key_in(keys.as_deref(), kid, alg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;

    #[test]
    fn an_assertion_of_tiny_values_is_refused_before_its_signature_is_checked() {
        let enc = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let header = enc(r#"{"alg":"ES256"}"#);
        let flood = enc(&format!(r#"{{"iss":"c","pad":[{}0]}}"#, "0,".repeat(24_000)));
        let plain = enc(r#"{"iss":"c","pad":[0,0]}"#);
        assert_eq!(Clients::assertion_issuer(&format!("{header}.{plain}.sig")).as_deref(), Some("c"));
        assert_eq!(Clients::assertion_issuer(&format!("{header}.{flood}.sig")), None);
        assert!(bounded_json(br#"{"a":[0,0]}"#).is_some());
        assert!(bounded_json(format!("[{}0]", "[".repeat(40) + &"]".repeat(40) + ",").as_bytes()).is_none());
    }
}
