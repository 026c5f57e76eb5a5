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
//!   When an issuer withdraws a key, every entry decided before is ignored.
//! - `validated`: a validated token for a short while, so that a burst of
//!   distinct audiences (or actor tokens) for one token verifies it once.
//!
//! Both are bounded by memory (entry sizes are weighed). quick_cache keeps
//! entries in a compact slab with a few dozen bytes of bookkeeping each (an
//! expiring moka entry costs several hundred), which is what lets 100k cached
//! exchanges fit in tens of MiB; expiry is checked on read, and stale entries
//! are the first evicted under pressure.

use std::sync::Arc;

use aws_lc_rs::digest;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::exchange::Minted;
use crate::rules::Actor;
use crate::validate::Validated;

/// A cached value, the unix time until which it may be handed out, and the
/// issuers' key epoch it was decided in (see `Issuers::key_epoch`).
#[derive(Debug, Clone)]
pub struct Entry<T> {
    pub value: T,
    pub until: i64,
    weight: u32,
    epoch: u32,
}

#[derive(Clone)]
struct ByWeight;

impl<T> Weighter<Key, Entry<T>> for ByWeight {
    fn weight(&self, _key: &Key, val: &Entry<T>) -> u64 {
        val.weight as u64
    }
}

pub type Key = [u8; 32];

/// Average entry weights, to size the caches' hash tables up front.
const MINTED_TYPICAL_BYTES: u64 = 600;
const VALIDATED_TYPICAL_BYTES: u64 = 1200;

pub struct Caches {
    minted: Option<Cache<Key, Entry<Arc<Minted>>, ByWeight>>,
    validated: Option<Cache<Key, Entry<Arc<Validated>>, ByWeight>>,
    validated_ttl: i64,
    /// Percentage of a minted token's lifetime during which it is handed out
    /// again; after that it is re-minted.
    reuse_percent: i64,
}

impl Caches {
    pub fn new(cfg: &crate::config::CacheConfig) -> Caches {
        fn build<T: Clone>(max_bytes: u64, typical: u64) -> Cache<Key, Entry<T>, ByWeight> {
            // The tables grow as needed: only a modest start is reserved up front.
            Cache::with_weighter((max_bytes / typical).clamp(16, 1 << 16) as usize, max_bytes, ByWeight)
        }
        Caches {
            minted: (cfg.enabled && cfg.max_bytes > 0).then(|| build(cfg.max_bytes, MINTED_TYPICAL_BYTES)),
            validated: (cfg.enabled && cfg.validated_max_bytes > 0)
                .then(|| build(cfg.validated_max_bytes, VALIDATED_TYPICAL_BYTES)),
            validated_ttl: cfg.validated_ttl.0.as_secs() as i64,
            reuse_percent: cfg.reuse_percent as i64,
        }
    }

    pub fn minted_enabled(&self) -> bool {
        self.minted.is_some()
    }

    pub fn validated_enabled(&self) -> bool {
        self.validated.is_some()
    }

    pub fn get_minted(&self, key: &Key, now: i64, epoch: u32) -> Option<Arc<Minted>> {
        let entry = self.minted.as_ref()?.get(key)?;
        (now < entry.until && entry.epoch == epoch).then_some(entry.value)
    }

    /// `epoch` is the key epoch read before the subject token was validated.
    pub fn put_minted(&self, key: Key, value: Arc<Minted>, now: i64, epoch: u32) {
        let Some(cache) = &self.minted else { return };
        let until = now + (value.exp - now) * self.reuse_percent / 100;
        if until <= now {
            return;
        }
        let weight = value.weight().min(u32::MAX as usize) as u32;
        cache.insert(key, Entry { value, until, weight, epoch });
    }

    pub fn get_validated(&self, key: &Key, now: i64, epoch: u32) -> Option<Arc<Validated>> {
        let entry = self.validated.as_ref()?.get(key)?;
        (now < entry.until && entry.epoch == epoch).then_some(entry.value)
    }

    /// Keeps a validated token until the TTL or its own `exp`, whichever first.
    pub fn put_validated(&self, key: Key, value: Arc<Validated>, now: i64, epoch: u32) {
        let Some(cache) = &self.validated else { return };
        let until = (now + self.validated_ttl).min(value.exp);
        if until <= now {
            return;
        }
        let weight = 256 + value.sub.len() as u32 + value.issuer.len() as u32 + 64 * value.claims.other.len() as u32;
        cache.insert(key, Entry { value, until, weight, epoch });
    }

    /// Entries in the minted cache.
    pub fn minted_len(&self) -> u64 {
        self.minted.as_ref().map_or(0, |c| c.len() as u64)
    }
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

    pub fn fields(self, parts: &[&[u8]]) -> KeyBuilder {
        parts.iter().fold(self, |b, p| b.field(p))
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
