//! The token endpoint's clients (`clients`), loaded with the engine: each
//! client's method and secret, read once from its source. A plain secret is
//! compared in constant time; an argon2id hash is verified on the blocking
//! pool (argon2 is slow by design), and a successful verification is
//! remembered for `VERIFIED_FOR` under a SHA-256 of (client_id, secret), so a
//! busy client does not pay argon2 per request. Secrets are never logged.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordVerifier};
use quick_cache::sync::Cache;
use subtle::ConstantTimeEq;

use crate::config::{Client, ClientAuthMethod, VerifyAlg};
use crate::digest::{Digest, KeyBuilder};
use crate::trust::jwks::KeySet;

/// How long a successful argon2 verification is remembered.
pub(crate) const VERIFIED_FOR: Duration = Duration::from_secs(60);

/// How many successful verifications are remembered at most.
const VERIFIED_CAPACITY: usize = 4096;

/// Failed authentications a client may have per minute (a burst of this
/// many, then one more every 60/N seconds) before it is refused outright.
pub const FAILURES_PER_MINUTE: u32 = 10;

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
    keys: Option<KeySet>,
}

/// The longest an assertion may still be valid (its `exp` ahead of now).
pub const MAX_ASSERTION_LIFETIME: i64 = 300;

/// How many assertion `jti`s are remembered at most (each until its `exp`).
const REPLAY_CAPACITY: usize = 100_000;

/// Why a client is not authenticated: each is `invalid_client`.
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
    /// `private_key_jwt` assertions seen: (client_id, jti) → `exp`.
    seen: Cache<Digest, i64>,
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").field("count", &self.by_id.len()).finish_non_exhaustive()
    }
}

impl Clients {
    /// Reads every client's secret from its source (file reads).
    pub fn load(clients: &[Client]) -> Result<Clients, String> {
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
            let keys = match jwks {
                Some(bytes) => {
                    let set =
                        crate::trust::jwks::parse(&bytes).map_err(|e| format!("client {:?}: {e}", c.client_id))?;
                    if set.is_empty() {
                        return Err(format!("client {:?}: its JWKS has no usable key", c.client_id));
                    }
                    Some(set)
                }
                None => None,
            };
            by_id.insert(c.client_id.clone(), Known { method: c.auth, secret, keys });
        }
        let quota = governor::Quota::per_minute(std::num::NonZeroU32::new(FAILURES_PER_MINUTE).expect("non-zero"));
        let locked = Cache::new(by_id.len().max(1));
        Ok(Clients {
            by_id,
            verified: Cache::new(VERIFIED_CAPACITY),
            failures: governor::RateLimiter::keyed(quota),
            locked,
            seen: Cache::new(REPLAY_CAPACITY),
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
        let claims: serde_json::Value = serde_json::from_slice(&b64url(payload)?).ok()?;
        claims.get("iss")?.as_str().map(str::to_owned)
    }

    /// A `private_key_jwt` client assertion (RFC 7523 §2.2, §3): signed by a
    /// key of the client `iss` names, `iss` = `sub` = that client, `aud` one
    /// of `audiences`, `exp` in the future and at most
    /// `MAX_ASSERTION_LIFETIME` ahead, `nbf` (if any) not in the future, and
    /// a `jti` never seen before. Returns the client id.
    pub fn assertion(&self, assertion: &str, audiences: &[String], now: i64) -> Result<String, ClientAuthError> {
        use ClientAuthError::BadAssertion as Bad;
        let mut parts = assertion.split('.');
        let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
            return Err(Bad("not a compact JWS"));
        };
        let header: serde_json::Value =
            b64url(h).and_then(|b| serde_json::from_slice(&b).ok()).ok_or(Bad("unreadable header"))?;
        let claims: serde_json::Value =
            b64url(p).and_then(|b| serde_json::from_slice(&b).ok()).ok_or(Bad("unreadable claims"))?;
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
        let key = match header.get("kid").and_then(|k| k.as_str()) {
            Some(kid) => keys.get(kid),
            None => keys.only_key_for(alg),
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
        // Checked and recorded at once: of two concurrent uses, one passes.
        match self.seen.get_value_or_guard(&key, None) {
            quick_cache::sync::GuardResult::Guard(g) => {
                let _ = g.insert(exp);
            }
            quick_cache::sync::GuardResult::Value(seen_exp) if seen_exp > now => return Err(ClientAuthError::Replayed),
            _ => {
                // An expired entry not yet evicted: the jti may be used again.
                self.seen.insert(key, exp);
            }
        }
        Ok(iss.to_owned())
    }

    /// The `alg` values the configured clients' keys accept (metadata).
    pub fn assertion_algs(&self) -> Vec<&'static str> {
        let sets: Vec<&KeySet> = self.by_id.values().filter_map(|k| k.keys.as_ref()).collect();
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

fn b64url(s: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).ok()
}
