//! Caches on the hot path. A mesh presents the same token to the same
//! destination over and over; re-verifying and re-signing each time would make
//! stsgate cost several times what Envoy's own JWT check costs.
//!
//! - `minted`: the answer of a whole exchange, keyed by a hash of everything
//!   that decided it (the exact subject token bytes, the actor, the audience,
//!   the requested scopes and subject). The configuration, and so the rule set,
//!   is fixed for the life of the cache. An entry is reused until a refresh
//!   margin before the minted token's `exp`, which is never past the subject
//!   token's `exp`, so a hit never needs the subject's signature checked again.
//! - `validated`: a validated token for a short while, so that a burst of
//!   distinct audiences (or actor tokens) for one token verifies it once.
//!
//! Both are bounded by memory (entry sizes are weighed) and expire per entry.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lc_rs::digest;
use moka::Expiry;
use moka::sync::Cache;

use crate::exchange::Exchanged;
use crate::rules::Actor;
use crate::validate::{Validated, now_unix};

/// A cached value and the unix time until which it may be handed out.
#[derive(Debug)]
pub struct Entry<T> {
    pub value: Arc<T>,
    pub until: i64,
    weight: u32,
}

struct UntilExpiry;

impl<K, T> Expiry<K, Arc<Entry<T>>> for UntilExpiry {
    fn expire_after_create(&self, _key: &K, value: &Arc<Entry<T>>, _created_at: Instant) -> Option<Duration> {
        Some(Duration::from_secs((value.until - now_unix()).max(0) as u64))
    }
}

pub type Key = [u8; 32];

pub struct Caches {
    minted: Option<Cache<Key, Arc<Entry<Exchanged>>>>,
    validated: Option<Cache<Key, Arc<Entry<Validated>>>>,
    validated_ttl: i64,
    /// Fraction (percent) of a minted token's lifetime after which it is
    /// re-minted rather than handed out again.
    refresh_after_percent: i64,
}

impl Caches {
    pub fn new(cfg: &crate::config::CacheConfig) -> Caches {
        fn build<T: Send + Sync + 'static>(max_bytes: u64) -> Cache<Key, Arc<Entry<T>>> {
            Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_k: &Key, v: &Arc<Entry<T>>| v.weight)
                .expire_after(UntilExpiry)
                .build()
        }
        Caches {
            minted: (cfg.enabled && cfg.max_bytes > 0).then(|| build(cfg.max_bytes)),
            validated: (cfg.enabled && cfg.validated_max_bytes > 0).then(|| build(cfg.validated_max_bytes)),
            validated_ttl: cfg.validated_ttl.0.as_secs() as i64,
            refresh_after_percent: cfg.reuse_percent as i64,
        }
    }

    pub fn get_minted(&self, key: &Key, now: i64) -> Option<Arc<Exchanged>> {
        let entry = self.minted.as_ref()?.get(key)?;
        (now < entry.until).then(|| entry.value.clone())
    }

    pub fn put_minted(&self, key: Key, value: Arc<Exchanged>, now: i64) {
        let Some(cache) = &self.minted else { return };
        let lifetime = value.claims.exp - now;
        let until = now + lifetime * self.refresh_after_percent / 100;
        if until <= now {
            return;
        }
        let weight = exchanged_weight(&value);
        cache.insert(key, Arc::new(Entry { value, until, weight }));
    }

    pub fn get_validated(&self, key: &Key, now: i64) -> Option<Arc<Validated>> {
        let entry = self.validated.as_ref()?.get(key)?;
        (now < entry.until).then(|| entry.value.clone())
    }

    /// Keeps a validated token until the TTL or its own `exp`, whichever first.
    pub fn put_validated(&self, key: Key, value: Arc<Validated>, now: i64) {
        let Some(cache) = &self.validated else { return };
        let until = (now + self.validated_ttl).min(value.exp);
        if until <= now {
            return;
        }
        let weight = 256 + value.sub.len() as u32 + value.issuer.len() as u32 + 64 * value.claims.other.len() as u32;
        cache.insert(key, Arc::new(Entry { value, until, weight }));
    }

    /// Entries in the minted cache (after pending maintenance).
    pub fn minted_len(&self) -> u64 {
        self.minted.as_ref().map(|c| {
            c.run_pending_tasks();
            c.entry_count()
        }).unwrap_or(0)
    }
}

/// Approximate heap bytes of a cached exchange, for the memory bound.
fn exchanged_weight(e: &Exchanged) -> u32 {
    let c = &e.claims;
    let strings = e.token.len()
        + c.iss.len()
        + c.sub.len()
        + c.aud.len()
        + c.jti.len()
        + c.client_id.len()
        + c.scope.as_ref().map_or(0, String::len)
        + e.subject_issuer.len()
        + e.rule.len()
        + e.downstream.iter().map(|(h, t)| h.len() + t.len()).sum::<usize>();
    let json = c.act.as_ref().map_or(0, |a| a.to_string().len()) + c.extra.len() * 64;
    // Struct, Arc and map overhead.
    (strings + json + 400).min(u32::MAX as usize) as u32
}

/// Builds cache keys from length-prefixed fields, so no two different
/// field lists can produce the same byte stream.
pub struct KeyBuilder(digest::Context);

impl KeyBuilder {
    pub fn new(domain: &[u8]) -> KeyBuilder {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(domain);
        KeyBuilder(ctx)
    }

    pub fn field(mut self, bytes: &[u8]) -> KeyBuilder {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub fn opt(self, bytes: Option<&[u8]>) -> KeyBuilder {
        match bytes {
            None => self.field(b"\x00none"),
            Some(b) => self.field(b"\x01").field(b),
        }
    }

    pub fn finish(self) -> Key {
        let d = self.0.finish();
        let mut key = [0u8; 32];
        key.copy_from_slice(d.as_ref());
        key
    }
}

/// The key of a validated-token entry.
pub fn token_key(token: &str) -> Key {
    KeyBuilder::new(b"stsgate/validated/v1").field(token.as_bytes()).finish()
}

/// The key of a minted-token entry: everything that decided the result.
pub fn exchange_key(
    subject_token: &str,
    actor: Option<&Actor>,
    audience: &str,
    scopes: Option<&[String]>,
    requested_subject: Option<&str>,
    default_client_id: &str,
) -> Key {
    let mut b = KeyBuilder::new(b"stsgate/minted/v1").field(subject_token.as_bytes());
    b = match actor {
        None => b.field(b"no-actor"),
        Some(a) => b
            .field(match a.kind {
                crate::rules::ActorKind::Peer => b"peer",
                crate::rules::ActorKind::Token => b"token",
                crate::rules::ActorKind::PeerAndToken => b"peer+token",
            })
            .field(a.sub.as_bytes())
            .opt(a.iss.as_deref().map(str::as_bytes))
            .opt(a.client_id.as_deref().map(str::as_bytes)),
    };
    b = b.field(audience.as_bytes());
    b = match scopes {
        None => b.field(b"\x00all"),
        Some(s) => {
            let mut b = b.field(&(s.len() as u64).to_le_bytes());
            for scope in s {
                b = b.field(scope.as_bytes());
            }
            b
        }
    };
    b.opt(requested_subject.map(str::as_bytes)).field(default_client_id.as_bytes()).finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::ActorKind;

    #[test]
    fn keys_separate_every_deciding_field() {
        let peer = Actor { kind: ActorKind::Peer, sub: "spiffe://a".into(), iss: None, client_id: None };
        let token = Actor { kind: ActorKind::Token, sub: "spiffe://a".into(), iss: None, client_id: None };
        let scopes = vec!["a".to_string(), "b".to_string()];
        let joined = vec!["a b".to_string()];
        let base = exchange_key("t", None, "aud", None, None, "c");
        let variants = [
            exchange_key("t2", None, "aud", None, None, "c"),
            exchange_key("t", Some(&peer), "aud", None, None, "c"),
            exchange_key("t", Some(&token), "aud", None, None, "c"),
            exchange_key("t", None, "aud2", None, None, "c"),
            exchange_key("t", None, "aud", Some(&scopes), None, "c"),
            exchange_key("t", None, "aud", Some(&joined), None, "c"),
            exchange_key("t", None, "aud", Some(&[]), None, "c"),
            exchange_key("t", None, "aud", None, Some("bob"), "c"),
            exchange_key("t", None, "aud", None, None, "c2"),
        ];
        let mut all = vec![base];
        for v in variants {
            assert!(!all.contains(&v), "collision");
            all.push(v);
        }
        assert_eq!(base, exchange_key("t", None, "aud", None, None, "c"), "deterministic");
        // Field boundaries matter: ("ab","c") differs from ("a","bc").
        assert_ne!(exchange_key("ab", None, "c", None, None, ""), exchange_key("a", None, "bc", None, None, ""));
    }
}
