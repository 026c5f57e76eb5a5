//! Trusted identity providers: where their keys come from (OIDC discovery, a
//! JWKS URL or a local file), the current key set, the background refresh, and
//! the rate-limited re-fetch when a token names a `kid` we have not seen (the
//! rotation case that Istio, Envoy and OPA users keep tripping over).
//!
//! Keys live behind an `ArcSwap`, so the hot path reads them without a lock;
//! only a `kid` miss takes the per-issuer refetch mutex.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use tokio::sync::{Mutex, watch};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::config::{Config, KeySource, TrustedIssuer, VerifyAlg};
use crate::trust::jwks::{self, KeySet, VerifyKey};

/// Largest discovery or JWKS document accepted from an IdP.
const MAX_DOCUMENT_BYTES: usize = 512 * 1024;
/// Retry delay bounds while an issuer's keys have never loaded.
const FIRST_LOAD_RETRY_MIN: Duration = Duration::from_millis(250);
const FIRST_LOAD_RETRY_MAX: Duration = Duration::from_secs(15);
/// After a failed refresh of already loaded keys, retry this soon (keys stay in use).
const FAILED_REFRESH_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url} failed: {reason}")]
    Http { url: String, reason: String },
    #[error("GET {url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is larger than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("cannot read {path}: {reason}")]
    File { path: String, reason: String },
    #[error("discovery document at {url} is not valid OIDC provider metadata: {reason}")]
    BadDiscovery { url: String, reason: String },
    #[error("discovery document at {url} names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch { url: String, found: String, expected: String },
    #[error("JWKS from {source_name}: {err}")]
    Jwks { source_name: String, err: jwks::JwksError },
}

impl FetchError {
    /// What went wrong, from a bounded set (span attributes).
    fn label(&self) -> &'static str {
        match self {
            FetchError::Http { .. } => "http",
            FetchError::Status { .. } => "status",
            FetchError::TooLarge { .. } => "too_large",
            FetchError::File { .. } => "file",
            FetchError::BadDiscovery { .. } => "bad_discovery",
            FetchError::IssuerMismatch { .. } => "issuer_mismatch",
            FetchError::Jwks { .. } => "jwks",
        }
    }
}

/// Why no key could be found for a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyLookupError {
    /// Keys have never been loaded for this issuer: a server-side problem.
    #[error("keys of issuer {0:?} are not available yet")]
    NotLoaded(String),
    /// The `kid` is unknown and the IdP could not be asked again just now.
    #[error("keys of issuer {issuer:?} could not be re-fetched: {reason}")]
    Unreachable { issuer: String, reason: String },
    /// The `kid` is unknown even after re-fetching (or re-fetching is throttled).
    /// (The kid itself is not repeated: it is caller-controlled text.)
    #[error("no key of the issuer matches the token's kid for algorithm {alg}")]
    UnknownKid { alg: &'static str },
    /// No `kid` and not exactly one key that fits the algorithm.
    #[error("token has no kid and the issuer has no single {0} key")]
    AmbiguousKey(&'static str),
}

/// One trusted issuer and its live key set.
pub struct Issuer {
    pub(crate) cfg: TrustedIssuer,
    keys: ArcSwapOption<KeySet>,
    /// When the last `kid`-miss re-fetch started; the mutex also coalesces
    /// concurrent misses into one fetch.
    miss_refetch: Mutex<Option<Instant>>,
    http: reqwest::Client,
    loaded_tx: watch::Sender<bool>,
    /// Shared by all issuers; see `Issuers::key_epoch`.
    key_epoch: Arc<AtomicU32>,
    /// The issuer a reload seeded this one from, until this one's refresh
    /// task starts and takes over what it holds then (see `seed_from`).
    seeded_from: std::sync::Mutex<Option<Arc<Issuer>>>,
    /// When the keys were last read (Unix seconds, 0: never), and how many
    /// reads failed: what the metrics and the "keys stale" alert watch.
    last_read: AtomicI64,
    failed_reads: AtomicU64,
    /// Whether the latest read failed: an unknown kid is then "cannot tell
    /// now" (503), not "no such key" (401).
    last_read_failed: std::sync::atomic::AtomicBool,
}

impl Issuer {
    fn new(cfg: TrustedIssuer, http: reqwest::Client, key_epoch: Arc<AtomicU32>) -> Issuer {
        Issuer {
            cfg,
            keys: ArcSwapOption::empty(),
            miss_refetch: Mutex::new(None),
            http,
            loaded_tx: watch::channel(false).0,
            key_epoch,
            seeded_from: std::sync::Mutex::new(None),
            last_read: AtomicI64::new(0),
            failed_reads: AtomicU64::new(0),
            last_read_failed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Whether the issuer's JWKS has been read at least once. A JWKS with no
    /// usable key counts: the IdP answered, and its tokens are refused (401).
    pub(crate) fn is_loaded(&self) -> bool {
        self.keys.load().is_some()
    }

    /// Usable keys now (`None`: never read), when they were last read (Unix
    /// seconds, 0: never) and how many reads failed.
    pub(crate) fn key_state(&self) -> (Option<usize>, i64, u64) {
        let keys = self.keys.load().as_ref().map(|k| k.len());
        (keys, self.last_read.load(Ordering::Relaxed), self.failed_reads.load(Ordering::Relaxed))
    }

    /// Starts with the keys another (older) issuer object holds now, as a
    /// configuration reload does for an issuer whose settings did not change.
    /// A withdrawal the older one sees before this one's refresh task starts
    /// is taken over then, so a reload never brings a withdrawn key back.
    pub(crate) fn seed_from(&self, older: &Arc<Issuer>) -> bool {
        let Some(keys) = older.keys.load_full() else { return false };
        self.keys.store(Some(keys));
        self.last_read.store(older.last_read.load(Ordering::Relaxed), Ordering::Relaxed);
        // A reload does not buy an extra unknown-kid re-fetch.
        if let (Ok(mut mine), Ok(theirs)) = (self.miss_refetch.try_lock(), older.miss_refetch.try_lock()) {
            *mine = *theirs;
        }
        *self.seeded_from.lock().unwrap_or_else(|e| e.into_inner()) = Some(older.clone());
        self.loaded_tx.send_replace(true);
        true
    }

    /// Takes over the keys the issuer this one was seeded from holds now.
    fn catch_up_with_seed(&self) {
        let Some(older) = self.seeded_from.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        if let Some(set) = older.keys.load_full() {
            self.install(set);
        }
        self.last_read.fetch_max(older.last_read.load(Ordering::Relaxed), Ordering::Relaxed);
    }

    /// Fetches the key set again and swaps it in; on failure (transport, not a
    /// JWKS) the old keys stay. A JWKS without usable keys is swapped in too.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        // A child of the request that asked for the keys (unknown kid), or a
        // trace of its own for the background refresh.
        let span = tracing::info_span!(
            target: crate::trace::TARGET, "jwks.fetch", issuer = %self.cfg.issuer, keys = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let fetched = tracing::Instrument::instrument(self.fetch(), span.clone()).await;
        match &fetched {
            Ok(set) => span.record("keys", set.len()),
            Err(e) => span.record("error", e.label()),
        };
        let set = fetched.inspect_err(|_| {
            self.failed_reads.fetch_add(1, Ordering::Relaxed);
            self.last_read_failed.store(true, Ordering::Relaxed);
        })?;
        self.last_read.store(crate::clock::now_unix(), Ordering::Relaxed);
        self.last_read_failed.store(false, Ordering::Relaxed);
        let count = set.len();
        for why in &set.skipped {
            debug!(issuer = %self.cfg.issuer, "skipped JWKS entry: {why}");
        }
        self.install(Arc::new(set));
        self.loaded_tx.send_replace(true);
        Ok(count)
    }

    /// Swaps in a key set, and moves the key epoch on when it withdraws a key.
    fn install(&self, set: Arc<KeySet>) {
        let (count, skipped) = (set.len(), set.skipped.len());
        let old = self.keys.swap(Some(set.clone()));
        if let Some(old) = &old {
            if Arc::ptr_eq(old, &set) || !set.withdraws_any_of(old) {
                return;
            }
            // A withdrawn key may be a compromised one: nothing it
            // verified is answered from cache any more.
            self.key_epoch.fetch_add(1, Ordering::AcqRel);
            warn!(issuer = %self.cfg.issuer, keys = count, "the issuer withdrew a key; cached exchanges are dropped");
        }
        match (old.is_none(), count) {
            (_, 0) => warn!(
                issuer = %self.cfg.issuer,
                skipped,
                "the issuer's JWKS has no usable signature key: all its tokens are refused until it publishes one"
            ),
            (true, _) => info!(issuer = %self.cfg.issuer, keys = count, "issuer keys loaded"),
            (false, _) => {}
        }
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let (source_name, body) = match self.cfg.key_source() {
            KeySource::JwksFile(path) => {
                let body = tokio::fs::read(&path)
                    .await
                    .map_err(|e| FetchError::File { path: path.display().to_string(), reason: e.to_string() })?;
                (path.display().to_string(), body)
            }
            KeySource::JwksUrl(url) => {
                let body = self.get(&url).await?;
                (url, body)
            }
            KeySource::Discovery(url) => {
                let jwks_uri = self.discover(&url).await?;
                let body = self.get(&jwks_uri).await?;
                (jwks_uri, body)
            }
        };
        jwks::parse(&body).map_err(|err| FetchError::Jwks { source_name, err })
    }

    /// Reads the OIDC discovery document and returns its `jwks_uri`, refusing a
    /// document that names another issuer (OpenID Connect Discovery §4.3).
    async fn discover(&self, url: &str) -> Result<String, FetchError> {
        let body = self.get(url).await?;
        let meta: openidconnect::core::CoreProviderMetadata = serde_json::from_slice(&body)
            .map_err(|e| FetchError::BadDiscovery { url: url.to_owned(), reason: e.to_string() })?;
        let found = meta.issuer().as_str();
        if found != self.cfg.issuer {
            return Err(FetchError::IssuerMismatch {
                url: url.to_owned(),
                found: found.to_owned(),
                expected: self.cfg.issuer.clone(),
            });
        }
        Ok(meta.jwks_uri().url().to_string())
    }

    async fn get(&self, url: &str) -> Result<Vec<u8>, FetchError> {
        fetch_document(&self.http, url, self.cfg.fetch_timeout.0).await
    }

    /// The key that must verify a token with this `kid` and `alg`. An unknown
    /// `kid` triggers at most one re-fetch per `unknown_kid_refetch_interval`.
    pub(crate) async fn key_for(&self, kid: Option<&str>, alg: VerifyAlg) -> Result<Arc<VerifyKey>, KeyLookupError> {
        if let Some(found) = self.lookup(kid, alg)? {
            return Ok(found);
        }
        let Some(kid) = kid else {
            return Err(KeyLookupError::AmbiguousKey(alg.as_str()));
        };
        let mut last = self.miss_refetch.lock().await;
        // Another task may have re-fetched while we waited for the lock.
        if let Some(found) = self.lookup(Some(kid), alg)? {
            return Ok(found);
        }
        let unknown = || KeyLookupError::UnknownKid { alg: alg.as_str() };
        if last.is_some_and(|at| at.elapsed() < self.cfg.unknown_kid_refetch_interval.0) {
            // While the IdP cannot be read, a kid it may have just rotated to
            // is unknown to us, not to it: retry later rather than "invalid".
            if self.last_read_failed.load(Ordering::Relaxed) {
                let reason = "the last read of its keys failed; retrying".to_owned();
                return Err(KeyLookupError::Unreachable { issuer: self.cfg.issuer.clone(), reason });
            }
            return Err(unknown());
        }
        *last = Some(Instant::now());
        // `?` escapes the caller-chosen kid; it is also cut short.
        info!(issuer = %self.cfg.issuer, kid = ?kid.chars().take(64).collect::<String>(), "unknown kid: re-fetching keys");
        if let Err(e) = self.refresh().await {
            warn!(issuer = %self.cfg.issuer, "re-fetch after unknown kid failed: {e}");
            return Err(KeyLookupError::Unreachable { issuer: self.cfg.issuer.clone(), reason: e.to_string() });
        }
        self.lookup(Some(kid), alg)?.ok_or_else(unknown)
    }

    fn lookup(&self, kid: Option<&str>, alg: VerifyAlg) -> Result<Option<Arc<VerifyKey>>, KeyLookupError> {
        let guard = self.keys.load();
        let Some(set) = guard.as_ref() else {
            return Err(KeyLookupError::NotLoaded(self.cfg.issuer.clone()));
        };
        Ok(match kid {
            Some(kid) => set.get(kid).filter(|k| k.accepts(alg)).cloned(),
            None => set.only_key_for(alg).cloned(),
        })
    }

    /// Keeps keys fresh until the process ends: fast retries until the first
    /// load, then every `refresh_interval`, keeping old keys when a refresh fails.
    async fn refresh_loop(self: Arc<Self>) {
        self.catch_up_with_seed();
        // Keys a reload has just loaded need no second fetch right away, but
        // only until their age reaches refresh_interval: frequent reloads
        // must not postpone the refresh (and the withdrawal of a key) forever.
        if self.is_loaded() {
            let age = crate::clock::now_unix().saturating_sub(self.last_read.load(Ordering::Relaxed)).max(0);
            let wait = self.cfg.refresh_interval.0.saturating_sub(Duration::from_secs(age as u64));
            tokio::time::sleep(wait).await;
        }
        let mut retry = Backoff::new(FIRST_LOAD_RETRY_MIN, FIRST_LOAD_RETRY_MAX);
        loop {
            let wait = match self.refresh().await {
                Ok(_) => {
                    retry.reset();
                    self.cfg.refresh_interval.0
                }
                Err(e) if self.is_loaded() => {
                    warn!(issuer = %self.cfg.issuer, "key refresh failed, keeping previous keys: {e}");
                    FAILED_REFRESH_RETRY.min(self.cfg.refresh_interval.0)
                }
                Err(e) => {
                    let wait = retry.next_delay();
                    warn!(issuer = %self.cfg.issuer, retry_in = ?wait, "cannot load keys: {e}");
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Every trusted issuer, by exact `iss`.
pub struct Issuers {
    /// foldhash, not SipHash: the keys are the configured issuers; a token's
    /// `iss` only looks up, and lookups cannot degrade a map whose keys an
    /// attacker does not choose.
    by_iss: foldhash::HashMap<String, Arc<Issuer>>,
    key_epoch: Arc<AtomicU32>,
}

impl Issuers {
    pub fn new(cfg: &Config, http: reqwest::Client) -> Issuers {
        let key_epoch = Arc::new(AtomicU32::new(0));
        let by_iss = cfg
            .trusted_issuers
            .iter()
            .map(|t| (t.issuer.clone(), Arc::new(Issuer::new(t.clone(), http.clone(), key_epoch.clone()))))
            .collect();
        Issuers { by_iss, key_epoch }
    }

    /// Starts every issuer whose settings did not change and whose keys come
    /// over the network with the keys `running` holds for it (see
    /// `Issuer::seed_from`), as a configuration reload does: an IdP that is
    /// down must not block an unrelated rule change, and its background
    /// refresh goes on as before. A `jwks_file` is read again (it may have
    /// changed), as is an issuer that has no keys yet.
    pub(crate) fn seed_unchanged(&self, running: &Issuers) {
        for (iss, issuer) in &self.by_iss {
            let unchanged = running.get(iss).filter(|old| old.cfg == issuer.cfg && issuer.cfg.jwks_file.is_none());
            if let Some(old) = unchanged {
                issuer.seed_from(old);
            }
        }
    }

    /// Changes whenever an issuer withdraws a key. Cache entries remember the
    /// epoch they were decided in and are not used in a later one.
    pub(crate) fn key_epoch(&self) -> u32 {
        self.key_epoch.load(Ordering::Acquire)
    }

    pub fn get(&self, iss: &str) -> Option<&Arc<Issuer>> {
        self.by_iss.get(iss)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Issuer>> {
        self.by_iss.values()
    }

    /// Each issuer's key state, for the metrics.
    pub(crate) fn key_states(&self) -> Vec<crate::metrics::IssuerKeys> {
        self.all()
            .map(|i| {
                let (keys, last_read, failed_reads) = i.key_state();
                crate::metrics::IssuerKeys { issuer: i.cfg.issuer.clone(), keys, last_read, failed_reads }
            })
            .collect()
    }

    pub(crate) fn all_loaded(&self) -> bool {
        self.by_iss.values().all(|i| i.is_loaded())
    }

    /// Starts one refresh task per issuer; they end with the runtime, or
    /// when a reload replaces these issuers and aborts them.
    pub(crate) fn spawn_refresh(&self) -> Vec<tokio::task::JoinHandle<()>> {
        self.by_iss
            .values()
            .map(|issuer| {
                let issuer = issuer.clone();
                let span = tracing::info_span!("issuer_refresh", issuer = %issuer.cfg.issuer);
                tokio::spawn(tracing::Instrument::instrument(issuer.refresh_loop(), span))
            })
            .collect()
    }

    /// Resolves once every issuer has loaded keys at least once.
    pub(crate) async fn wait_all_loaded(&self) {
        for issuer in self.by_iss.values() {
            let mut rx = issuer.loaded_tx.subscribe();
            // The sender lives in `issuer`, so this cannot fail while we hold it.
            let _ = rx.wait_for(|loaded| *loaded).await;
        }
    }
}

/// GETs a JSON document (discovery, a JWKS) of at most `MAX_DOCUMENT_BYTES`
/// within `timeout`: the trusted issuers' keys and the token endpoint
/// clients' `jwks_url` (`engine::clients`).
pub(crate) async fn fetch_document(
    http: &reqwest::Client,
    url: &str,
    timeout: Duration,
) -> Result<Vec<u8>, FetchError> {
    let http_err = |e: reqwest::Error| FetchError::Http { url: url.to_owned(), reason: error_chain(&e) };
    let mut resp =
        http.get(url).timeout(timeout).header("accept", "application/json").send().await.map_err(http_err)?;
    if !resp.status().is_success() {
        return Err(FetchError::Status { url: url.to_owned(), status: resp.status().as_u16() });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(http_err)? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(FetchError::TooLarge { url: url.to_owned() });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The HTTP client used for every IdP fetch.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    crate::install_crypto_provider();
    reqwest::Client::builder()
        .user_agent(concat!("stsgate/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(5))
        // A redirect to another host would let a discovery document point us at
        // keys outside the issuer's control; refuse redirects altogether.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// An error and its sources on one line (reqwest hides the cause in them).
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SignAlg;
    use crate::signing::Signer;

    /// An issuer reading `file`, with its own key epoch.
    fn file_issuer(file: &std::path::Path) -> Arc<Issuer> {
        let yaml = format!(
            "issuer: https://sts.test\nsigning:\n  keys: [{{ kid: a, ephemeral: true }}]\n\
             trusted_issuers:\n  - {{ issuer: https://idp.test, jwks_file: {:?}, algorithms: [ES256] }}\n",
            file.display().to_string()
        );
        let cfg = Config::from_yaml_str(&yaml).unwrap();
        Issuers::new(&cfg, http_client().unwrap()).get("https://idp.test").unwrap().clone()
    }

    struct Jwks(std::path::PathBuf);

    impl Jwks {
        fn new(label: &str) -> Jwks {
            let dir = std::env::temp_dir().join(format!("stsgate-issuer-unit-{label}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            Jwks(dir.join("jwks.json"))
        }
        fn write(&self, body: &str) {
            std::fs::write(&self.0, body).unwrap();
        }
        fn keys(&self, keys: &[&serde_json::Value]) {
            self.write(&serde_json::json!({ "keys": keys }).to_string());
        }
    }

    impl Drop for Jwks {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
        }
    }

    fn epoch(issuer: &Issuer) -> u32 {
        issuer.key_epoch.load(Ordering::Acquire)
    }

    fn has_key(issuer: &Issuer, kid: &str) -> bool {
        issuer.lookup(Some(kid), VerifyAlg::ES256).unwrap().is_some()
    }

    #[tokio::test]
    async fn a_jwks_without_usable_keys_withdraws_them_and_a_broken_one_does_not() {
        let file = Jwks::new("withdraw");
        let a = Signer::generate("a", SignAlg::ES256).unwrap().public_jwk();
        file.keys(&[&a]);
        let issuer = file_issuer(&file.0);
        assert_eq!(issuer.refresh().await.unwrap(), 1);
        assert!(has_key(&issuer, "a"));

        // Not a JWKS (a truncated write, an error page): the keys stay.
        for broken in ["", "<html>", r#"{"keys":"#, r#"{"error":"down"}"#] {
            file.write(broken);
            assert!(issuer.refresh().await.is_err(), "{broken:?}");
            assert!(has_key(&issuer, "a"), "{broken:?}");
        }
        assert_eq!(epoch(&issuer), 0);

        // A JWKS whose keys are all unusable, then an empty one: an answer.
        for withdrawn in [r#"{"keys":[{"kty":"oct","kid":"a","k":"c2VjcmV0"}]}"#, r#"{"keys":[]}"#] {
            file.keys(&[&a]);
            issuer.refresh().await.unwrap();
            let before = epoch(&issuer);
            file.write(withdrawn);
            assert_eq!(issuer.refresh().await.unwrap(), 0, "{withdrawn}");
            assert!(!has_key(&issuer, "a"), "{withdrawn}");
            assert!(issuer.is_loaded(), "the IdP answered: loaded, without keys");
            assert_eq!(epoch(&issuer), before + 1, "cached answers are dropped: {withdrawn}");
            let err = issuer.key_for(Some("a"), VerifyAlg::ES256).await.unwrap_err();
            assert!(matches!(err, KeyLookupError::UnknownKid { .. }), "a 401, not a 503: {err:?}");
        }
        // Empty again: nothing more to withdraw.
        issuer.refresh().await.unwrap();
        assert_eq!(epoch(&issuer), 2);
    }

    #[tokio::test]
    async fn a_first_load_without_usable_keys_counts_as_loaded() {
        let file = Jwks::new("first-empty");
        file.write(r#"{"keys":[]}"#);
        let issuer = file_issuer(&file.0);
        assert_eq!(issuer.refresh().await.unwrap(), 0);
        assert!(issuer.is_loaded());
        let err = issuer.key_for(None, VerifyAlg::ES256).await.unwrap_err();
        assert!(matches!(err, KeyLookupError::AmbiguousKey(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_reload_never_brings_back_a_withdrawn_key() {
        let file = Jwks::new("reseed");
        let a = Signer::generate("a", SignAlg::ES256).unwrap().public_jwk();
        file.keys(&[&a]);
        let older = file_issuer(&file.0);
        older.refresh().await.unwrap();

        // Seeded before the withdrawal, which the older issuer sees while
        // the reload is still under way: taken over when the newer one starts.
        let newer = file_issuer(&file.0);
        assert!(newer.seed_from(&older));
        assert!(has_key(&newer, "a"));
        file.write(r#"{"keys":[]}"#);
        older.refresh().await.unwrap();
        newer.catch_up_with_seed();
        assert!(!has_key(&newer, "a"));
        assert_eq!(epoch(&newer), 1, "whatever the newer issuer cached with the key is dropped");
        assert!(newer.seeded_from.lock().unwrap().is_none(), "the older issuer is released");

        // Seeded after the withdrawal: the current, empty set.
        let latest = file_issuer(&file.0);
        assert!(latest.seed_from(&older));
        assert!(latest.is_loaded() && !has_key(&latest, "a"));
        latest.catch_up_with_seed();
        assert_eq!(epoch(&latest), 0, "nothing changed since seeding");
    }
}
