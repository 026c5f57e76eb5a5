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
//! Both are bounded by memory: an entry weighs what its value says it holds
//! (`Weigh`: a minted entry its signed bytes, a validated one every claim it
//! keeps, see `Validated::weight`) plus the cache's own bookkeeping.
//! quick_cache keeps entries in a compact slab with a few dozen bytes of bookkeeping each (an
//! expiring moka entry costs several hundred), which is what lets 100k cached
//! exchanges fit in tens of MiB. quick_cache has no expiry of its own: expiry
//! is checked on read, and a sweeper task drops expired entries every
//! `SWEEP_EVERY` (or `validated_ttl`, if shorter), so that memory held for
//! tokens nobody presents any more is given back rather than kept until
//! evicted.

use std::sync::{Arc, Weak};
use std::time::Duration;

use quick_cache::Weighter;
use quick_cache::sync::Cache;

use super::Minted;
use crate::digest::KeyBuilder;
use crate::rules::Actor;
use crate::trust::validator::Validated;

/// A cached value that knows how many bytes it holds, for the caches'
/// memory bounds.
pub(crate) trait Weigh {
    fn weight(&self) -> usize;
}

impl Weigh for Validated {
    fn weight(&self) -> usize {
        Validated::weight(self)
    }
}

/// A cached value, the unix time until which it may be handed out, and the
/// issuers' key epoch it was decided in (see `Issuers::key_epoch`).
#[derive(Debug, Clone)]
pub(crate) struct Entry<T> {
    pub(crate) value: T,
    pub(crate) until: i64,
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

pub(crate) type Key = crate::digest::Digest;

/// Average entry weights, to size the caches' hash tables up front.
const MINTED_TYPICAL_BYTES: u64 = 600;
const VALIDATED_TYPICAL_BYTES: u64 = 2000;

/// quick_cache's bookkeeping per validated entry: the slab slot (key, `Entry`,
/// state, links), the hash table slot, and a share of the ghost slots it keeps
/// for recently evicted keys.
const VALIDATED_ENTRY_OVERHEAD: usize = 160;

/// A validated token that would weigh more than this share of the cache's
/// budget is not cached: one such token would evict dozens of ordinary ones.
const VALIDATED_MAX_SHARE: u64 = 64;

/// The longest time an expired entry is held before the sweeper drops it.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

type MintedCache = Cache<Key, Entry<Arc<Minted>>, ByWeight>;
type ValidatedCache = Cache<Key, Entry<Arc<Validated>>, ByWeight>;

pub struct Caches {
    minted: Option<Arc<MintedCache>>,
    validated: Option<Arc<ValidatedCache>>,
    validated_max_weight: u64,
    validated_ttl: i64,
    /// Percentage of a minted token's lifetime during which it is handed out
    /// again; after that it is re-minted.
    reuse_percent: i64,
}

impl Caches {
    /// Inside a Tokio runtime this also starts the sweeper, which ends once
    /// the caches are dropped (a reload replaces them).
    pub(crate) fn new(cfg: &crate::config::CacheConfig) -> Caches {
        fn build<T: Clone>(max_bytes: u64, typical: u64) -> Arc<Cache<Key, Entry<T>, ByWeight>> {
            // The tables grow as needed: only a modest start is reserved up front.
            Arc::new(Cache::with_weighter((max_bytes / typical).clamp(16, 1 << 16) as usize, max_bytes, ByWeight))
        }
        let caches = Caches {
            minted: (cfg.enabled && cfg.max_bytes > 0).then(|| build(cfg.max_bytes, MINTED_TYPICAL_BYTES)),
            validated: (cfg.enabled && cfg.validated_max_bytes > 0)
                .then(|| build(cfg.validated_max_bytes, VALIDATED_TYPICAL_BYTES)),
            validated_max_weight: cfg.validated_max_bytes / VALIDATED_MAX_SHARE,
            validated_ttl: cfg.validated_ttl.0.as_secs() as i64,
            reuse_percent: cfg.reuse_percent as i64,
        };
        let runtime = tokio::runtime::Handle::try_current().ok();
        if let Some(runtime) = runtime.filter(|_| caches.minted.is_some() || caches.validated.is_some()) {
            let every = cfg.validated_ttl.0.clamp(Duration::from_secs(1), SWEEP_EVERY);
            let minted = caches.minted.as_ref().map(Arc::downgrade);
            let validated = caches.validated.as_ref().map(Arc::downgrade);
            runtime.spawn(sweeper(minted, validated, every));
        }
        caches
    }

    /// Drops every entry that can no longer be handed out at `now`; returns
    /// how many.
    #[cfg(test)]
    pub(crate) fn sweep(&self, now: i64) -> usize {
        let (m, v) = (self.minted.as_deref(), self.validated.as_deref());
        sweep(m, now) + sweep(v, now)
    }

    pub(crate) fn minted_enabled(&self) -> bool {
        self.minted.is_some()
    }

    pub(crate) fn validated_enabled(&self) -> bool {
        self.validated.is_some()
    }

    pub(crate) fn get_minted(&self, key: &Key, now: i64, epoch: u32) -> Option<Arc<Minted>> {
        let entry = self.minted.as_ref()?.get(key)?;
        (now < entry.until && entry.epoch == epoch).then_some(entry.value)
    }

    /// `epoch` is the key epoch read before the subject token was validated.
    /// Never reused past `cap` either: an introspected subject token is
    /// believed only until its introspection answer expires, and a cached
    /// exchange must not outlive that (it is the revocation latency).
    pub(crate) fn put_minted_until(&self, key: Key, value: Arc<Minted>, now: i64, epoch: u32, cap: Option<i64>) {
        let Some(cache) = &self.minted else { return };
        let until = now + (value.exp - now) * self.reuse_percent / 100;
        let until = cap.map_or(until, |cap| until.min(cap));
        if until <= now {
            return;
        }
        let weight = weigh(&*value, 0).min(u32::MAX as u64) as u32;
        cache.insert(key, Entry { value, until, weight, epoch });
    }

    pub(crate) fn get_validated(&self, key: &Key, now: i64, epoch: u32) -> Option<Arc<Validated>> {
        let entry = self.validated.as_ref()?.get(key)?;
        (now < entry.until && entry.epoch == epoch).then_some(entry.value)
    }

    /// Keeps a validated token until the TTL or its own `exp`, whichever
    /// first; not at all if it would take more than a 64th of the budget.
    pub(crate) fn put_validated(&self, key: Key, value: Arc<Validated>, now: i64, epoch: u32) {
        let Some(cache) = &self.validated else { return };
        let until = (now + self.validated_ttl).min(value.exp);
        if until <= now {
            return;
        }
        let weight = weigh(&*value, VALIDATED_ENTRY_OVERHEAD);
        if weight > self.validated_max_weight {
            return;
        }
        cache.insert(key, Entry { value, until, weight: weight as u32, epoch });
    }

    /// Entries in the minted cache.
    pub fn minted_len(&self) -> u64 {
        self.minted.as_ref().map_or(0, |c| c.len() as u64)
    }

    /// Entries in the validated cache.
    #[cfg(test)]
    pub(crate) fn validated_len(&self) -> u64 {
        self.validated.as_ref().map_or(0, |c| c.len() as u64)
    }

    /// Total weight of the validated cache's entries, in bytes.
    #[cfg(test)]
    pub(crate) fn validated_weight(&self) -> u64 {
        self.validated.as_ref().map_or(0, |c| c.weight())
    }
}

/// An entry's weight: what its value holds plus the cache's bookkeeping.
fn weigh(value: &impl Weigh, overhead: usize) -> u64 {
    value.weight().saturating_add(overhead) as u64
}

fn sweep<T: Clone>(cache: Option<&Cache<Key, Entry<T>, ByWeight>>, now: i64) -> usize {
    let Some(cache) = cache else { return 0 };
    let before = cache.len();
    cache.retain(|_, e| now < e.until);
    before.saturating_sub(cache.len())
}

/// Sweeps both caches every `every` for as long as either still exists.
async fn sweeper(minted: Option<Weak<MintedCache>>, validated: Option<Weak<ValidatedCache>>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let (m, v) = (minted.as_ref().and_then(Weak::upgrade), validated.as_ref().and_then(Weak::upgrade));
        if m.is_none() && v.is_none() {
            return;
        }
        let now = crate::clock::now_unix();
        let dropped = sweep(m.as_deref(), now) + sweep(v.as_deref(), now);
        if dropped > 0 {
            tracing::debug!(dropped, "dropped expired cache entries");
        }
    }
}

/// The key of a validated-token entry.
pub(crate) fn token_key(token: &str) -> Key {
    KeyBuilder::new(b"stsgate/validated/v1").field(token.as_bytes()).finish()
}

/// The key of a minted-token entry: everything that decided the result,
/// including `request`, the Check's attributes that the rules' CEL
/// expressions can read (`RequestAttrs::key_bytes`).
/// Presenter binding (`workloads`) reads only what is here too: the subject
/// token's `aud`/`azp` (in its bytes) and the actor; the workloads table, like
/// the rules, is fixed for the life of the cache (a reload builds new caches).
// One argument per deciding field, each hashed in this fixed order.
#[allow(clippy::too_many_arguments)]
pub(crate) fn exchange_key(
    subject_token: &str,
    actor: Option<&Actor>,
    audience: &str,
    scopes: Option<&[String]>,
    requested_subject: Option<&str>,
    default_client_id: &str,
    client: Option<&str>,
    request: Option<&[u8]>,
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
    b.opt(requested_subject.map(str::as_bytes))
        .field(default_client_id.as_bytes())
        .opt(client.map(str::as_bytes))
        .opt(request)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::ActorKind;

    #[test]
    fn keys_separate_every_deciding_field() {
        let peer = Actor { kind: ActorKind::Peer, sub: "spiffe://a".into(), iss: None, client_id: None, token: None };
        let token = Actor { kind: ActorKind::Token, sub: "spiffe://a".into(), iss: None, client_id: None, token: None };
        let scopes = vec!["a".to_string(), "b".to_string()];
        let joined = vec!["a b".to_string()];
        let base = exchange_key("t", None, "aud", None, None, "c", None, None);
        let variants = [
            exchange_key("t2", None, "aud", None, None, "c", None, None),
            exchange_key("t", Some(&peer), "aud", None, None, "c", None, None),
            exchange_key("t", Some(&token), "aud", None, None, "c", None, None),
            exchange_key("t", None, "aud2", None, None, "c", None, None),
            exchange_key("t", None, "aud", Some(&scopes), None, "c", None, None),
            exchange_key("t", None, "aud", Some(&joined), None, "c", None, None),
            exchange_key("t", None, "aud", Some(&[]), None, "c", None, None),
            exchange_key("t", None, "aud", None, Some("bob"), "c", None, None),
            exchange_key("t", None, "aud", None, None, "c2", None, None),
            exchange_key("t", None, "aud", None, None, "c", Some("client"), None),
            exchange_key("t", None, "aud", None, None, "c", None, Some(b"")),
            exchange_key("t", None, "aud", None, None, "c", None, Some(b"GET")),
        ];
        let mut all = vec![base];
        for v in variants {
            assert!(!all.contains(&v), "collision");
            all.push(v);
        }
        assert_eq!(base, exchange_key("t", None, "aud", None, None, "c", None, None), "deterministic");
        // Field boundaries matter: ("ab","c") differs from ("a","bc").
        assert_ne!(
            exchange_key("ab", None, "c", None, None, "", None, None),
            exchange_key("a", None, "bc", None, None, "", None, None)
        );
    }

    fn cache_config(validated_max_bytes: u64, ttl_secs: u64) -> crate::config::CacheConfig {
        crate::config::CacheConfig {
            validated_max_bytes,
            validated_ttl: crate::config::Dur(Duration::from_secs(ttl_secs)),
            ..Default::default()
        }
    }

    fn validated(claims: serde_json::Value) -> Validated {
        let claims = crate::trust::claims::Claims::from_json(&claims.to_string()).unwrap();
        Validated {
            issuer: claims.iss.clone().unwrap_or_default(),
            sub: claims.sub.clone().unwrap_or_default(),
            exp: 2_000_000_000,
            scopes: vec!["a".into(), "b".into()],
            client_id: claims.client_id.clone(),
            claims,
            own_sub_id: None,
        }
    }

    fn claims(sub: &str, extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({"iss": "https://idp.test", "sub": sub, "aud": "stsgate", "exp": 2_000_000_000});
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    }

    #[test]
    fn validated_weight_counts_every_claim_it_holds() {
        let base = validated(claims("alice", serde_json::json!({}))).weight();
        assert!(base >= std::mem::size_of::<Validated>(), "{base}");
        let big = "x".repeat(10_000);
        // Whichever claim holds the bytes, they are weighed, nested or not.
        for extra in [
            serde_json::json!({"pad": big}),
            serde_json::json!({"aud": ["stsgate", big]}),
            serde_json::json!({"act": {"sub": big}}),
            serde_json::json!({"may_act": {"sub": "x", "nested": [[big]]}}),
            serde_json::json!({"scope": big}),
            serde_json::json!({"scp": [big]}),
            serde_json::json!({"jti": big}),
            serde_json::json!({"client_id": big}),
            serde_json::json!({"azp": big}),
        ] {
            let w = validated(claims("alice", extra.clone())).weight();
            assert!(w >= base + 10_000, "{extra:.40}: {w} vs {base}");
        }
        let w = validated(claims(&big, serde_json::json!({}))).weight();
        assert!(w >= std::mem::size_of::<Validated>() + 2 * 10_000, "sub is held twice: {w}");
        // Claims stsgate has no field for are held as their JSON text, which
        // is weighed whole (the text of the claims it reads too).
        let members: serde_json::Map<String, serde_json::Value> =
            (0..1000).map(|i| (format!("c{i}"), serde_json::json!({"k": 0}))).collect();
        let many = serde_json::json!({"many": members});
        let w = validated(claims("alice", many.clone())).weight();
        assert!(w >= base + many.to_string().len(), "{w}");
    }

    #[test]
    fn validated_cache_holds_no_more_than_its_budget() {
        const BUDGET: u64 = 512 * 1024;
        let caches = Caches::new(&cache_config(BUDGET, 300));
        let pad = "p".repeat(6_000);
        let mut held_by_entries = 0usize;
        for i in 0..2_000 {
            let v = Arc::new(validated(claims(&format!("user-{i}"), serde_json::json!({"pad": pad}))));
            held_by_entries = v.weight();
            caches.put_validated(token_key(&format!("token-{i}")), v, 1_000, 0);
        }
        let len = caches.validated_len();
        assert!(len > 0);
        // What the entries really hold (each about the same), not just what they were said to weigh.
        let held = len * held_by_entries as u64;
        assert!(held <= BUDGET, "{len} entries of {held_by_entries} bytes = {held} > {BUDGET}");
        assert!(caches.validated_weight() <= BUDGET);
        assert!(held >= BUDGET / 2, "the budget is used, not wasted: {held}");

        // Small entries, many more than the tables were sized for: the
        // bookkeeping weighed per entry covers what quick_cache really uses.
        let small = Caches::new(&cache_config(BUDGET, 300));
        for i in 0..5_000 {
            let v = Arc::new(validated(claims(&format!("u{i}"), serde_json::json!({}))));
            small.put_validated(token_key(&format!("t{i}")), v, 1_000, 0);
        }
        let cache = small.validated.as_ref().unwrap();
        assert!(cache.len() > (BUDGET / VALIDATED_TYPICAL_BYTES) as usize, "{}", cache.len());
        let bookkeeping = cache.memory_used().total();
        assert!(bookkeeping <= cache.len() * VALIDATED_ENTRY_OVERHEAD, "{bookkeeping} for {} entries", cache.len());

        // A token heavier than a 64th of the budget is not cached at all.
        let huge = Arc::new(validated(claims("bob", serde_json::json!({"pad": "h".repeat(BUDGET as usize / 64)}))));
        caches.put_validated(token_key("huge"), huge, 1_000, 0);
        assert!(caches.get_validated(&token_key("huge"), 1_000, 0).is_none());
    }

    #[test]
    fn expired_entries_are_dropped_not_only_ignored() {
        let caches = Caches::new(&cache_config(1 << 20, 30));
        let now = 1_000;
        for i in 0..10 {
            let v = Arc::new(validated(claims(&format!("user-{i}"), serde_json::json!({}))));
            caches.put_validated(token_key(&format!("token-{i}")), v, now + i, 0);
        }
        assert_eq!(caches.validated_len(), 10);
        assert_eq!(caches.sweep(now + 29), 0, "nothing has expired yet");
        // Entries put at now..now+9 expire at now+30..now+39.
        assert_eq!(caches.sweep(now + 35), 6);
        assert_eq!(caches.validated_len(), 4);
        assert!(caches.validated_weight() > 0);
        assert_eq!(caches.sweep(now + 39), 4);
        assert_eq!((caches.validated_len(), caches.validated_weight()), (0, 0));
    }

    #[tokio::test]
    async fn the_sweeper_drops_expired_entries_without_traffic() {
        let caches = Caches::new(&cache_config(1 << 20, 1));
        // Put a while ago: already past the 1s TTL.
        let then = crate::clock::now_unix() - 10;
        let v = Arc::new(validated(claims("alice", serde_json::json!({}))));
        caches.put_validated(token_key("t"), v, then, 0);
        assert_eq!(caches.validated_len(), 1);
        // No reads, no writes: only the sweeper (every second here) can drop it.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while caches.validated_len() > 0 {
            assert!(std::time::Instant::now() < deadline, "the expired entry was never dropped");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
