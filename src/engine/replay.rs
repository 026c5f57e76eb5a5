//! One-time use of assertions (RFC 7523 §3 item 7): a `private_key_jwt`
//! client assertion, or a JWT bearer grant, is accepted once per `jti`. The
//! key is a digest of (who signed it, `jti`) and it is remembered until the
//! assertion's `exp`, after which the assertion is refused anyway.
//!
//! Two stores (`token_endpoint.replay_store`): this process's memory (one
//! instance), or Redis shared by every replica, where `SET key 1 NX EX ttl`
//! records and checks at once, so of two replicas seeing the same `jti` one
//! wins. Every Redis call has a deadline; a store that cannot answer makes
//! the caller fail closed (503), never accept a possible replay. The Redis
//! connection is made on first use and remade after Redis comes back
//! (redis' `ConnectionManager`); an unreachable Redis does not make the
//! instance unready: only assertions depend on it, not the Check path.
//!
//! The store outlives a reload (`ReplayStore::for_config` hands the running
//! one on when its settings did not change): a reload must not forget which
//! assertions were used. Switching stores starts the new one empty.

use std::sync::Arc;
use std::time::Duration;

use quick_cache::sync::{Cache, GuardResult};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use crate::ca_bundle;
use crate::config::{RedisReplayStore, ReplayStoreConfig, check_redis_url, redact_url};
use crate::digest::Digest;
use crate::metrics::ReplayStoreMetrics;

/// How many assertion `jti`s one instance remembers (each until its `exp`).
/// Assertions live at most `clients::MAX_ASSERTION_LIFETIME`, so this holds
/// a steady 300+ new assertions per second before one could be evicted early.
pub const IN_MEMORY_CAPACITY: usize = 100_000;

/// Redis keeps a `jti` this much longer than the assertion's remaining life
/// as this replica sees it: replicas whose clocks differ by up to a minute
/// still refuse the replay. (A relative TTL, not `EXAT`: Redis's own clock
/// does not matter.)
const CLOCK_MARGIN_SECS: i64 = 60;

/// Why the store could not say whether an assertion was used before.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the assertion replay store cannot be reached: {0}")]
pub struct ReplayUnavailable(pub String);

/// Where used assertions are recorded.
pub struct ReplayStore {
    backend: Backend,
    metrics: ReplayStoreMetrics,
}

enum Backend {
    Memory(Cache<Digest, i64>),
    Redis(Box<RedisBackend>),
}

struct RedisBackend {
    settings: RedisReplayStore,
    /// The URL as read from its source (it may hold a password): compared
    /// on reload, never shown.
    url: String,
    /// The URL without its password, for errors and logs.
    shown: String,
    /// The TLS files' contents as read: compared on reload, so that renewed
    /// certificates are taken up by a reload even under the same paths.
    tls: TlsFiles,
    client: redis::Client,
    /// Made on first use (it needs the runtime), then reconnecting by itself.
    conn: OnceCell<ConnectionManager>,
}

/// `ca_file`, `client_cert_file` and `client_key_file` as read (PEM).
#[derive(Default, PartialEq, Eq)]
struct TlsFiles {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads the files `settings` names for `url`; errors name the key and
    /// the path, never the contents.
    fn read(settings: &RedisReplayStore, url: &str) -> Result<TlsFiles, String> {
        let at = "token_endpoint.replay_store.redis";
        settings.check_tls_files(url).map_err(|why| format!("{at}: {why}"))?;
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("{at}.{key}: cannot read {}: {e}", path.display()))
        };
        let ca = settings
            .ca_file
            .as_deref()
            .map(ca_bundle::read)
            .transpose()
            .map_err(|why| format!("{at}.ca_file: {why}"))?;
        let client = match (&settings.client_cert_file, &settings.client_key_file) {
            (Some(cert), Some(key)) => Some((read("client_cert_file", cert)?, read("client_key_file", key)?)),
            (None, None) => None,
            _ => return Err(format!("{at}: `client_cert_file` and `client_key_file` go together")),
        };
        Ok(TlsFiles { ca, client })
    }

    /// The client of `url` with these files (none: the public roots, no
    /// client certificate).
    fn client(&self, url: &str) -> redis::RedisResult<redis::Client> {
        if *self == TlsFiles::default() {
            return redis::Client::open(url);
        }
        let certificates = redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig { client_cert: cert.clone(), client_key: key.clone() }),
            root_cert: self.ca.clone(),
        };
        redis::Client::build_with_tls(url, certificates)
    }
}

impl std::fmt::Debug for ReplayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("ReplayStore");
        d.field("kind", &self.kind());
        if let Backend::Redis(r) = &self.backend {
            d.field("url", &r.shown);
        }
        d.finish_non_exhaustive()
    }
}

impl ReplayStore {
    /// The store of a single instance.
    pub fn in_memory(capacity: usize) -> ReplayStore {
        ReplayStore { backend: Backend::Memory(Cache::new(capacity)), metrics: ReplayStoreMetrics::default() }
    }

    /// The store `cfg` asks for. On a reload (`running`), the running store
    /// when it is what `cfg` asks for (the in-memory one, or Redis with the
    /// same settings and URL), else a new one; its metrics go on counting in
    /// the same series. Reads `url_file` / `url_env`; errors name the key
    /// path and never hold the password.
    pub fn for_config(cfg: &ReplayStoreConfig, running: Option<&Arc<ReplayStore>>) -> Result<Arc<ReplayStore>, String> {
        let metrics = running.map(|r| r.metrics.clone()).unwrap_or_default();
        let Some(settings) = &cfg.redis else {
            if let Some(running) = running.filter(|r| matches!(r.backend, Backend::Memory(_))) {
                return Ok(running.clone());
            }
            return Ok(Arc::new(ReplayStore { backend: Backend::Memory(Cache::new(IN_MEMORY_CAPACITY)), metrics }));
        };
        let url = redis_url(settings)?;
        let tls = TlsFiles::read(settings, &url)?;
        if let Some(running) = running {
            if let Backend::Redis(r) = &running.backend {
                if r.settings == *settings && r.url == url && r.tls == tls {
                    return Ok(running.clone());
                }
            }
        }
        let shown = redact_url(&url);
        let client = tls
            .client(&url)
            .map_err(|e| format!("token_endpoint.replay_store.redis: {shown}: {}", scrub(&e.to_string(), &url)))?;
        tracing::info!(url = %shown, key_prefix = %settings.key_prefix, "assertion replay store: Redis");
        let backend = RedisBackend { settings: settings.clone(), url, shown, tls, client, conn: OnceCell::new() };
        Ok(Arc::new(ReplayStore { backend: Backend::Redis(Box::new(backend)), metrics }))
    }

    /// `memory` or `redis`.
    pub fn kind(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    /// The store's error counters (the runtime registers them).
    pub fn metrics(&self) -> &ReplayStoreMetrics {
        &self.metrics
    }

    /// Records `key` as used until `exp` (Unix seconds). `Ok(true)` the first
    /// time, `Ok(false)` for a replay; `Err` when the store cannot tell (the
    /// caller refuses the assertion).
    pub async fn first_use(&self, key: Digest, exp: i64, now: i64) -> Result<bool, ReplayUnavailable> {
        match &self.backend {
            Backend::Memory(memory) => Ok(memory_first_use(memory, key, exp, now)),
            Backend::Redis(redis) => redis.first_use(key, exp, now, &self.metrics).await,
        }
    }
}

fn memory_first_use(memory: &Cache<Digest, i64>, key: Digest, exp: i64, now: i64) -> bool {
    // Checked and recorded at once: of two concurrent uses, one passes.
    match memory.get_value_or_guard(&key, None) {
        GuardResult::Guard(g) => {
            let _ = g.insert(exp);
            true
        }
        GuardResult::Value(seen_exp) if seen_exp > now => false,
        _ => {
            // An expired entry not yet evicted: the jti may be used again.
            memory.insert(key, exp);
            true
        }
    }
}

impl RedisBackend {
    async fn first_use(
        &self,
        key: Digest,
        exp: i64,
        now: i64,
        metrics: &ReplayStoreMetrics,
    ) -> Result<bool, ReplayUnavailable> {
        let timeout = self.settings.timeout.0;
        let name = format!("{}{}", self.settings.key_prefix, hex(&key));
        let ttl = (exp - now).max(1) + CLOCK_MARGIN_SECS;
        let mut set = redis::cmd("SET");
        set.arg(&name).arg(1).arg("NX").arg("EX").arg(ttl);
        let call = async {
            let mut conn = self.connection(timeout).await?.clone();
            // "OK" when this call set it, nil when the key existed.
            set.query_async::<Option<String>>(&mut conn).await
        };
        let (reason, why) = match tokio::time::timeout(timeout, call).await {
            Ok(Ok(answer)) => return Ok(answer.is_some()),
            Ok(Err(e)) => {
                let reason = if e.is_timeout() {
                    "timeout"
                } else if e.is_io_error() || e.is_connection_refusal() || e.is_connection_dropped() {
                    "connection"
                } else {
                    "answer"
                };
                (reason, scrub(&e.to_string(), &self.url))
            }
            Err(_) => ("timeout", format!("no answer within {}", humantime::format_duration(timeout))),
        };
        metrics.error("redis", reason);
        Err(ReplayUnavailable(format!("Redis at {}: {why}", self.shown)))
    }

    /// The connection manager, made on first use. It connects lazily and
    /// reconnects in the background after a failure; each connection attempt
    /// and each answer is bounded by `timeout`.
    async fn connection(&self, timeout: Duration) -> redis::RedisResult<&ConnectionManager> {
        self.conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    // Failing fast is the point: the caller answers 503 and
                    // the next call tries again.
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1));
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
    }
}

/// Reads the Redis URL from its source and checks it, as a start would,
/// without connecting (`stsgate check-config`); errors name the key path and
/// never hold the password.
pub fn check_redis_source(settings: &RedisReplayStore) -> Result<(), String> {
    let url = redis_url(settings)?;
    TlsFiles::read(settings, &url)?.client(&url).map(|_| ()).map_err(|e| {
        format!("token_endpoint.replay_store.redis: {}: {}", redact_url(&url), scrub(&e.to_string(), &url))
    })
}

/// The Redis URL from its source; errors name the key path.
fn redis_url(settings: &RedisReplayStore) -> Result<String, String> {
    let at = "token_endpoint.replay_store.redis";
    let (key, url) = if let Some(url) = &settings.url {
        ("url", url.0.clone())
    } else if let Some(path) = &settings.url_file {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("{at}.url_file: cannot read {}: {e}", path.display()))?;
        ("url_file", text.trim_end_matches(['\r', '\n']).to_owned())
    } else if let Some(name) = &settings.url_env {
        let value = std::env::var(name).map_err(|_| format!("{at}.url_env: environment variable {name} is not set"))?;
        ("url_env", value)
    } else {
        return Err(format!("{at}: needs exactly one of `url`, `url_file`, `url_env`"));
    };
    check_redis_url(&url).map_err(|why| format!("{at}.{key}: {why}"))?;
    Ok(url)
}

/// `text` with the URL's password, should it appear, replaced.
fn scrub(text: &str, url: &str) -> String {
    match reqwest::Url::parse(url).ok().and_then(|u| u.password().map(str::to_owned)) {
        Some(password) if !password.is_empty() => text.replace(&password, "REDACTED"),
        _ => text.to_owned(),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use crate::config::RedisUrl;
    use crate::digest::KeyBuilder;

    fn key(jti: &str) -> Digest {
        KeyBuilder::new(b"test").fields(&[b"client", jti.as_bytes()]).finish()
    }

    #[tokio::test]
    async fn a_jti_is_used_once_until_its_exp() {
        let store = ReplayStore::in_memory(16);
        assert_eq!(store.first_use(key("a"), 200, 100).await, Ok(true));
        assert_eq!(store.first_use(key("a"), 200, 150).await, Ok(false));
        assert_eq!(store.first_use(key("b"), 200, 150).await, Ok(true));
        // Past its exp the assertion itself is refused; the key may be reused.
        assert_eq!(store.first_use(key("a"), 400, 201).await, Ok(true));
        assert_eq!(store.first_use(key("a"), 400, 202).await, Ok(false));
    }

    fn redis(url: &str, prefix: &str) -> ReplayStoreConfig {
        ReplayStoreConfig {
            redis: Some(RedisReplayStore {
                url: Some(RedisUrl(url.into())),
                url_file: None,
                url_env: None,
                key_prefix: prefix.into(),
                timeout: Dur(Duration::from_millis(100)),
                ca_file: None,
                client_cert_file: None,
                client_key_file: None,
            }),
        }
    }

    #[test]
    fn a_reload_keeps_the_store_whose_settings_did_not_change() {
        let memory = ReplayStore::for_config(&ReplayStoreConfig::default(), None).unwrap();
        assert_eq!(memory.kind(), "memory");
        let again = ReplayStore::for_config(&ReplayStoreConfig::default(), Some(&memory)).unwrap();
        assert!(Arc::ptr_eq(&memory, &again), "the in-memory store and what it holds are kept");

        // Nothing connects here: the connection is made on first use.
        let a = ReplayStore::for_config(&redis("redis://:pw@127.0.0.1:1/0", "p:"), Some(&memory)).unwrap();
        assert_eq!(a.kind(), "redis");
        let same = ReplayStore::for_config(&redis("redis://:pw@127.0.0.1:1/0", "p:"), Some(&a)).unwrap();
        assert!(Arc::ptr_eq(&a, &same));
        for changed in [redis("redis://:other@127.0.0.1:1/0", "p:"), redis("redis://:pw@127.0.0.1:1/0", "q:")] {
            let b = ReplayStore::for_config(&changed, Some(&a)).unwrap();
            assert!(!Arc::ptr_eq(&a, &b));
        }
        let back = ReplayStore::for_config(&ReplayStoreConfig::default(), Some(&a)).unwrap();
        assert_eq!(back.kind(), "memory");
        assert!(!format!("{a:?}").contains("pw"), "{a:?}");
    }

    /// A CA certificate, PEM (rcgen).
    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
    }

    /// `rediss://`: the TLS files are read at load; a reload with the same
    /// settings but renewed files makes a new client (the store in Redis is
    /// the same, nothing is forgotten); files that cannot serve are refused
    /// at load with their key path.
    #[test]
    fn tls_files_are_read_at_load_and_compared_on_reload() {
        let dir = std::env::temp_dir().join(format!("stsgate-replay-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, ca_pem("first CA")).unwrap();
        let mut cfg = redis("rediss://:pw@127.0.0.1:1/0", "p:");
        cfg.redis.as_mut().unwrap().ca_file = Some(ca.clone());
        let a = ReplayStore::for_config(&cfg, None).unwrap();
        let same = ReplayStore::for_config(&cfg, Some(&a)).unwrap();
        assert!(Arc::ptr_eq(&a, &same), "same settings, same files");
        std::fs::write(&ca, ca_pem("renewed CA")).unwrap();
        let renewed = ReplayStore::for_config(&cfg, Some(&a)).unwrap();
        assert!(!Arc::ptr_eq(&a, &renewed), "renewed files make a new client");

        let at = "token_endpoint.replay_store.redis";
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = ReplayStore::for_config(&cfg, None).unwrap_err();
        assert_eq!(err, format!("{at}.ca_file: {} holds no PEM certificate", ca.display()));
        std::fs::remove_file(&ca).unwrap();
        let err = ReplayStore::for_config(&cfg, None).unwrap_err();
        assert!(err.starts_with(&format!("{at}.ca_file: cannot read {}: ", ca.display())), "{err}");

        // A client certificate whose key does not parse.
        std::fs::write(&ca, ca_pem("CA")).unwrap();
        let settings = cfg.redis.as_mut().unwrap();
        settings.client_cert_file = Some(ca.clone());
        settings.client_key_file = Some(ca.clone());
        let err = ReplayStore::for_config(&cfg, None).unwrap_err();
        assert!(err.starts_with(&format!("{at}: rediss://:REDACTED@127.0.0.1:1/0: ")), "{err}");
        assert!(err.contains("key"), "{err}");

        // The TLS files with a URL that turns out not to be rediss://.
        let mut plain = redis("redis://:hunter2@127.0.0.1:1/0", "p:");
        plain.redis.as_mut().unwrap().ca_file = Some(ca.clone());
        let err = ReplayStore::for_config(&plain, None).unwrap_err();
        assert!(err.contains("are for TLS, but the URL redis://:REDACTED@127.0.0.1:1/0 is not rediss://"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn url_sources_fail_with_key_paths_and_without_the_password() {
        let mut cfg = redis("redis://:hunter2@h/0", "p:");
        let settings = cfg.redis.as_mut().unwrap();
        settings.url = None;
        settings.url_env = Some("STSGATE_TEST_REDIS_URL_UNSET".into());
        let err = ReplayStore::for_config(&cfg, None).unwrap_err();
        assert_eq!(
            err,
            "token_endpoint.replay_store.redis.url_env: environment variable STSGATE_TEST_REDIS_URL_UNSET is not set"
        );
        let dir = std::env::temp_dir().join(format!("stsgate-replay-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("url");
        std::fs::write(&file, "valkey://:hunter2@h/0\n").unwrap();
        let settings = cfg.redis.as_mut().unwrap();
        settings.url_env = None;
        settings.url_file = Some(file.clone());
        let err = ReplayStore::for_config(&cfg, None).unwrap_err();
        assert!(err.starts_with("token_endpoint.replay_store.redis.url_file: valkey://:REDACTED@h/0"), "{err}");
        std::fs::write(&file, "redis://:hunter2@h/0\n").unwrap();
        assert_eq!(ReplayStore::for_config(&cfg, None).unwrap().kind(), "redis");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_closed_within_its_timeout() {
        // A port nothing listens on: refused at once, or within the timeout.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let store =
            ReplayStore::for_config(&redis(&format!("redis://:hunter2@127.0.0.1:{port}/0"), "p:"), None).unwrap();
        let started = std::time::Instant::now();
        let err = store.first_use(key("a"), 200, 100).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(err.0.contains("127.0.0.1") && !err.0.contains("hunter2"), "{err}");
    }

    #[test]
    fn keys_are_the_prefix_and_the_hex_digest() {
        assert_eq!(hex(&[0x00, 0xab, 0x10]), "00ab10");
        assert_eq!(scrub("auth hunter2 failed", "redis://:hunter2@h"), "auth REDACTED failed");
        assert_eq!(scrub("no password", "redis://h"), "no password");
    }
}
