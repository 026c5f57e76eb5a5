//! Configuration hot reload. SIGHUP, a changed file (`serve --watch-config`)
//! or `Server::reload_from` builds a complete new `Engine` beside the running
//! one: read, parse and validate the file, load the signing keys, fetch every
//! trusted issuer's keys (bounded by a timeout). Only then is it swapped in,
//! with one atomic store; a Check in flight finishes on the engine it started
//! with. A reload that fails at any step changes nothing.
//!
//! The new engine starts with empty caches on purpose: cache keys do not
//! include the rules, so an entry decided under the old rules must not be
//! handed out under the new ones.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use aws_lc_rs::digest;
use tokio::sync::Mutex;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::{error, info};

use crate::api::readiness::Readiness;
use crate::backoff::Backoff;
use crate::config::{Config, ConfigError};
use crate::engine::{Engine, LoadError};
use crate::metrics::ReloadMetrics;
use crate::signing::KeyError;
use crate::trust::issuer::Issuer;

/// How long a reload waits for the keys of every trusted issuer. Twice the
/// default `fetch_timeout` (5s): a discovery document and then the JWKS, each
/// allowed its whole timeout, fit once; fast failures are retried within it.
/// Longer and an operator waits for an answer that will not come; shorter and
/// a slow IdP that serves fine at start-up would fail every reload.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Delays between attempts while an issuer's keys do not load in a reload.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// A watched file whose reload failed for a reason that may pass by itself
/// (an IdP that is down) is tried again at most this often.
const WATCH_RETRY: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// Unreadable file, bad YAML, or validation issues (each with its key path).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Keys that only a restart can change.
    #[error("{}", .0.join("; "))]
    RestartRequired(Vec<String>),
    #[error("cannot load the signing keys: {0}")]
    SigningKeys(#[from] KeyError),
    #[error("cannot load the clients' secrets: {0}")]
    ClientSecrets(String),
    #[error(
        "the keys of {} trusted issuer(s) did not load within {}: {}",
        .failures.len(),
        humantime::format_duration(*.timeout),
        .failures.join("; ")
    )]
    IssuerKeys { timeout: Duration, failures: Vec<String> },
    #[error("stsgate is shutting down")]
    ShuttingDown,
    #[error("the reload was interrupted: {0}")]
    Interrupted(String),
}

impl From<LoadError> for ReloadError {
    fn from(e: LoadError) -> ReloadError {
        match e {
            LoadError::SigningKeys(e) => ReloadError::SigningKeys(e),
            LoadError::Clients(e) => ReloadError::ClientSecrets(e),
            LoadError::Audit(e) => ReloadError::Config(ConfigError::Invalid(vec![crate::config::ConfigIssue {
                path: e.path.into(),
                message: e.message,
            }])),
        }
    }
}

impl ReloadError {
    /// Whether the same file may load later as it is (an IdP down now);
    /// everything else needs the file fixed.
    pub fn may_pass(&self) -> bool {
        matches!(self, ReloadError::IssuerKeys { .. })
    }
}

/// What a successful reload put in place.
#[derive(Debug, Clone)]
pub struct Reloaded {
    pub rules: usize,
    pub trusted_issuers: usize,
    pub signing_keys: usize,
    pub active_kid: String,
    /// The first 12 hex digits of the SHA-256 of the configuration file.
    pub config_hash: String,
}

/// How `stsgate serve` reloads.
#[derive(Debug, Clone)]
pub(crate) struct ReloadOptions {
    /// The file SIGHUP and the watcher reload from.
    pub(crate) path: PathBuf,
    /// Poll the file this often and reload when it changed.
    pub(crate) watch: Option<Duration>,
    /// How long a reload waits for the trusted issuers' keys.
    pub(crate) timeout: Duration,
    /// The text the running configuration was parsed from (else the file is
    /// read now), so a change made during start-up is not missed.
    pub(crate) loaded_text: Option<String>,
}

/// The engine in use and everything that must change with it.
pub(crate) struct Live {
    engine: Arc<ArcSwap<Engine>>,
    readiness: Arc<Readiness>,
    metrics: Arc<ReloadMetrics>,
    http: reqwest::Client,
    timeout: StdMutex<Duration>,
    /// Held for a whole reload, so reloads run one at a time.
    tasks: Mutex<Tasks>,
    closed: AtomicBool,
    /// What the last load or reload attempt read, so that the watcher reacts
    /// to changes only.
    seen: StdMutex<Option<Fingerprint>>,
}

/// Background work that belongs to one engine.
struct Tasks {
    refresh: Vec<JoinHandle<()>>,
    track: Option<JoinHandle<()>>,
}

impl Live {
    /// Takes over the engine in `engine` and starts its key refresh and
    /// readiness tracking.
    pub(crate) fn start(
        engine: Arc<ArcSwap<Engine>>,
        readiness: Arc<Readiness>,
        metrics: Arc<ReloadMetrics>,
        http: reqwest::Client,
    ) -> Arc<Live> {
        let refresh = engine.load().issuers.spawn_refresh();
        let track = Some(tokio::spawn(readiness.clone().track()));
        Arc::new(Live {
            engine,
            readiness,
            metrics,
            http,
            timeout: StdMutex::new(DEFAULT_TIMEOUT),
            tasks: Mutex::new(Tasks { refresh, track }),
            closed: AtomicBool::new(false),
            seen: StdMutex::new(None),
        })
    }

    /// The engine in use now.
    pub(crate) fn engine(&self) -> Arc<Engine> {
        self.engine.load_full()
    }

    pub(crate) fn timeout(&self) -> Duration {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_timeout(&self, timeout: Duration) {
        *self.timeout.lock().unwrap_or_else(|e| e.into_inner()) = timeout;
    }

    /// Records what the running configuration was read from, for the watcher.
    pub(crate) async fn loaded_from(&self, path: &Path, text: Option<String>) -> String {
        let path = path.to_owned();
        let (fp, hash) = tokio::task::spawn_blocking(move || {
            let text = match text {
                Some(t) => Ok(t),
                None => std::fs::read_to_string(&path),
            };
            let hash = text.as_ref().map(|t| short_hash(t.as_bytes())).unwrap_or_default();
            (fingerprint(&path, &text), hash)
        })
        .await
        .unwrap_or((Fingerprint([0; 32]), String::new()));
        self.set_seen(fp);
        hash
    }

    /// Reloads the configuration from `path`: all of it, or nothing. Logs
    /// the outcome and counts it in the metrics.
    pub(crate) async fn reload_from(&self, path: &Path) -> Result<Reloaded, ReloadError> {
        // SIGHUP also means "the audit file was rotated", whatever the reload does.
        self.engine().audit.reopen();
        let started = std::time::Instant::now();
        let result = self.reload(path).await;
        let took_ms = started.elapsed().as_millis() as u64;
        match &result {
            Ok(r) => {
                self.metrics.succeeded();
                info!(
                    config = %path.display(),
                    hash = %r.config_hash,
                    rules = r.rules,
                    trusted_issuers = r.trusted_issuers,
                    signing_keys = r.signing_keys,
                    active_kid = %r.active_kid,
                    took_ms,
                    "configuration reloaded"
                );
            }
            Err(ReloadError::ShuttingDown) => {}
            Err(e) => {
                self.metrics.failed();
                error!(
                    config = %path.display(),
                    took_ms,
                    "configuration reload failed, the previous configuration stays in effect: {e}"
                );
            }
        }
        result
    }

    async fn reload(&self, path: &Path) -> Result<Reloaded, ReloadError> {
        let mut tasks = self.tasks.lock().await;
        if self.closed.load(Ordering::Acquire) {
            return Err(ReloadError::ShuttingDown);
        }
        let current = self.engine.load_full();
        let (file, http) = (path.to_owned(), self.http.clone());
        // Files and key parsing block: off the async workers.
        let (seen, prepared) = tokio::task::spawn_blocking(move || prepare(&file, &current, http))
            .await
            .map_err(|e| ReloadError::Interrupted(e.to_string()))?;
        self.set_seen(seen);
        let Prepared { engine, hash } = prepared?;

        load_issuer_keys(&engine, self.timeout()).await?;
        let engine = Arc::new(engine);
        if self.closed.load(Ordering::Acquire) {
            return Err(ReloadError::ShuttingDown);
        }

        // From here on nothing awaits, so a reload that is cancelled (a
        // shutdown aborts it) has either changed nothing or everything.
        self.engine.store(engine.clone());
        for old in std::mem::replace(&mut tasks.refresh, engine.issuers.spawn_refresh()) {
            old.abort();
        }
        if let Some(old) = tasks.track.replace(tokio::spawn(self.readiness.clone().track())) {
            old.abort();
        }
        Ok(Reloaded {
            rules: engine.cfg.rules.len(),
            trusted_issuers: engine.cfg.trusted_issuers.len(),
            signing_keys: engine.keys.signers().len(),
            active_kid: engine.keys.active().kid.clone(),
            config_hash: hash,
        })
    }

    /// Polls `path` every `every` and reloads when what a reload would read
    /// changed: the file's bytes and those of the key and JWKS files it names.
    /// Content, not mtime: a Kubernetes ConfigMap or Secret update swaps a
    /// symlink to files with new content.
    pub(crate) async fn watch(self: Arc<Self>, path: PathBuf, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticker.tick().await;
        let mut retry_at: Option<Instant> = None;
        loop {
            ticker.tick().await;
            let file = path.clone();
            let Ok(now) =
                tokio::task::spawn_blocking(move || fingerprint(&file, &std::fs::read_to_string(&file))).await
            else {
                continue;
            };
            let changed = *self.seen.lock().unwrap_or_else(|e| e.into_inner()) != Some(now);
            if !changed && retry_at.is_none_or(|at| Instant::now() < at) {
                continue;
            }
            let why = if changed { "configuration changed" } else { "retrying a failed reload" };
            info!(config = %path.display(), "{why}: reloading");
            retry_at = match self.reload_from(&path).await {
                Err(e) if e.may_pass() => Some(Instant::now() + WATCH_RETRY.max(every)),
                _ => None,
            };
        }
    }

    /// No reload applies after this (start of shutdown).
    pub(crate) fn begin_close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Stops the engine's background work (end of shutdown).
    pub(crate) async fn close(&self) {
        self.begin_close();
        let mut guard = self.tasks.lock().await;
        let tasks: &mut Tasks = &mut guard;
        for task in tasks.refresh.drain(..).chain(tasks.track.take()) {
            task.abort();
        }
        // The audit events of the last requests are written before the process exits.
        let audit = self.engine().audit.clone();
        let _ = tokio::task::spawn_blocking(move || audit.flush(Duration::from_secs(2))).await;
    }

    fn set_seen(&self, fp: Fingerprint) {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(fp);
    }
}

/// A new engine, ready but for the keys of the issuers it could not seed
/// from the running one.
struct Prepared {
    engine: Engine,
    hash: String,
}

/// Reads, parses and validates the file, refuses restart-only changes and
/// builds the new engine beside the running one (`Engine::load`: signing
/// keys, issuers seeded). Also returns the fingerprint of what was read,
/// whatever the outcome.
fn prepare(path: &Path, current: &Engine, http: reqwest::Client) -> (Fingerprint, Result<Prepared, ReloadError>) {
    let text = std::fs::read_to_string(path);
    let seen = fingerprint(path, &text);
    let prepared = (|| -> Result<Prepared, ReloadError> {
        let text = text.map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let cfg = Config::from_file_text(&text, path)?;
        cfg.check().map_err(ConfigError::Invalid)?;
        let restart = restart_required(&current.cfg, &cfg);
        if !restart.is_empty() {
            return Err(ReloadError::RestartRequired(restart));
        }
        let engine = Engine::load(Arc::new(cfg), http, Some(current))?;
        Ok(Prepared { engine, hash: short_hash(text.as_bytes()) })
    })();
    (seen, prepared)
}

/// Settings bound at start-up: the listeners, the dev IdP's routes, and
/// the trace exporter.
fn restart_required(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (key, was, now) in
        [("listen.grpc", old.listen.grpc, new.listen.grpc), ("listen.http", old.listen.http, new.listen.http)]
    {
        if was != now {
            out.push(format!("{key} changed ({was} -> {now}): restart stsgate to move listeners"));
        }
    }
    for ((key, was), (_, now)) in old.listen.limit_settings().into_iter().zip(new.listen.limit_settings()) {
        if was != now {
            out.push(format!("{key} changed ({was} -> {now}): restart stsgate to apply connection limits"));
        }
    }
    if old.listen.grpc_tls != new.listen.grpc_tls {
        out.push(
            "listen.grpc_tls changed: restart stsgate to change the gRPC listener's TLS settings (new content \
             of the files it names is picked up without one)"
                .into(),
        );
    }
    if old.listen.http_tls != new.listen.http_tls {
        out.push(
            "listen.http_tls changed: restart stsgate to change the HTTP listener's TLS settings (new content \
             of the files it names is picked up without one)"
                .into(),
        );
    }
    let dev = |c: &Config| c.dev_idp.as_ref().map(|d| (d.path.clone(), d.audience.clone()));
    if dev(old) != dev(new) {
        out.push("dev_idp changed: restart stsgate to add, remove or change the development IdP".into());
    }
    // The tracing layer and its exporter are installed before the first
    // configuration is read (main.rs); a reload would silently keep the old.
    if old.telemetry != new.telemetry {
        out.push("telemetry changed: restart stsgate to change where and how traces are exported".into());
    }
    out
}

/// Gives every issuer the new engine could not seed from the running one
/// (see `Engine::load`) its keys: fetched, in parallel, until `timeout`.
async fn load_issuer_keys(engine: &Engine, timeout: Duration) -> Result<(), ReloadError> {
    let deadline = Instant::now() + timeout;
    // Dropping the set (a cancelled reload) aborts the fetches.
    let mut fetches = JoinSet::new();
    for (i, trusted) in engine.cfg.trusted_issuers.iter().enumerate() {
        let Some(issuer) = engine.issuers.get(&trusted.issuer).filter(|i| !i.is_loaded()).cloned() else {
            continue;
        };
        fetches.spawn(async move { (i, first_load(issuer, deadline).await) });
    }
    let cfg = &engine.cfg;
    let mut failures = Vec::new();
    while let Some(done) = fetches.join_next().await {
        match done {
            Ok((_, Ok(()))) => {}
            Ok((i, Err(why))) => {
                failures.push((i, format!("trusted_issuers[{i}] ({}): {why}", cfg.trusted_issuers[i].issuer)))
            }
            Err(e) => failures.push((usize::MAX, format!("a key fetch ended abnormally: {e}"))),
        }
    }
    if failures.is_empty() {
        return Ok(());
    }
    failures.sort();
    Err(ReloadError::IssuerKeys { timeout, failures: failures.into_iter().map(|(_, f)| f).collect() })
}

/// Tries to load an issuer's keys until the deadline; the last error otherwise.
async fn first_load(issuer: Arc<Issuer>, deadline: Instant) -> Result<(), String> {
    let mut retry = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut last: Option<String> = None;
    loop {
        match tokio::time::timeout_at(deadline, issuer.refresh()).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = Some(e.to_string()),
            Err(_) => {
                let earlier = last.map(|l| format!(" (before that: {l})")).unwrap_or_default();
                return Err(format!("no answer before the reload timeout{earlier}"));
            }
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break;
        }
        tokio::time::sleep(retry.next_delay().min(remaining)).await;
        if Instant::now() >= deadline {
            break;
        }
    }
    Err(last.unwrap_or_else(|| "no answer before the reload timeout".into()))
}

/// SHA-256 over the configuration text (or why it could not be read) and
/// the contents of every file it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Fingerprint([u8; 32]);

fn fingerprint(path: &Path, text: &std::io::Result<String>) -> Fingerprint {
    let mut ctx = digest::Context::new(&digest::SHA256);
    let mut part = |bytes: &[u8]| {
        ctx.update(&(bytes.len() as u64).to_le_bytes());
        ctx.update(bytes);
    };
    match text {
        Ok(text) => {
            part(text.as_bytes());
            if let Ok(cfg) = Config::from_file_text(text, path) {
                for file in cfg.files() {
                    part(file.as_os_str().as_encoded_bytes());
                    match std::fs::read(file) {
                        Ok(bytes) => part(&bytes),
                        Err(e) => part(format!("unreadable: {:?}", e.kind()).as_bytes()),
                    }
                }
            }
        }
        Err(e) => part(format!("unreadable: {:?}", e.kind()).as_bytes()),
    }
    let mut out = [0; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Fingerprint(out)
}

/// The first 12 hex digits of the SHA-256 of `bytes`: enough to tell
/// configurations apart in logs, and `sha256sum` shows the same.
pub fn short_hash(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes).as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(extra: &str) -> Config {
        let yaml = format!(
            "issuer: https://sts.test\nsigning:\n  keys: [{{ kid: a, ephemeral: true }}]\n\
             trusted_issuers:\n  - {{ issuer: https://idp.test, jwks_url: https://idp.test/jwks }}\n\
             rules: [{{ name: all, grant: {{ scopes: [\"*\"] }} }}]\n{extra}"
        );
        Config::from_yaml_validated(&yaml).unwrap()
    }

    #[test]
    fn listeners_dev_idp_and_telemetry_need_a_restart() {
        assert!(restart_required(&cfg(""), &cfg("cache: { enabled: false }\ntokens: { lifetime: 1m }\n")).is_empty());
        assert!(restart_required(&cfg(""), &cfg("listen: { shutdown_grace: 1s }\n")).is_empty());
        let moved = restart_required(&cfg(""), &cfg("listen: { grpc: 0.0.0.0:9192, http: 127.0.0.1:8080 }\n"));
        assert_eq!(moved.len(), 2, "{moved:?}");
        assert_eq!(moved[0], "listen.grpc changed (0.0.0.0:9191 -> 0.0.0.0:9192): restart stsgate to move listeners");
        assert!(moved[1].starts_with("listen.http changed (0.0.0.0:8080 -> 127.0.0.1:8080)"), "{moved:?}");
        let tls = |interval: &str| {
            cfg(&format!(
                "listen: {{ grpc_tls: {{ cert: /c, key: /k, client_ca: /ca, reload_interval: {interval} }} }}\n"
            ))
        };
        assert!(restart_required(&tls("30s"), &tls("30s")).is_empty());
        for (old, new) in [(cfg(""), tls("30s")), (tls("30s"), cfg("")), (tls("30s"), tls("1m"))] {
            let changed = restart_required(&old, &new);
            assert_eq!(changed.len(), 1, "{changed:?}");
            assert!(changed[0].starts_with("listen.grpc_tls changed: restart stsgate"), "{changed:?}");
        }
        let http_tls = cfg("listen: { http_tls: { cert: /c, key: /k, client_auth: optional } }\n");
        let changed = restart_required(&cfg(""), &http_tls);
        assert!(
            changed.len() == 1 && changed[0].starts_with("listen.http_tls changed: restart stsgate"),
            "{changed:?}"
        );
        // Where client certificates come from is read per request: a reload applies it.
        let xfcc = cfg("listen: { http_client_cert: { source: xfcc, xfcc_trusted_peers: [127.0.0.6] } }\n");
        assert!(restart_required(&cfg(""), &xfcc).is_empty());
        let limits = restart_required(&cfg(""), &cfg("listen: { idle_timeout: 5m, http_max_connections: 10 }\n"));
        assert_eq!(
            limits,
            [
                "listen.http_max_connections changed (1024 -> 10): restart stsgate to apply connection limits",
                "listen.idle_timeout changed (1m -> 5m): restart stsgate to apply connection limits",
            ]
        );
        let dev = restart_required(&cfg(""), &cfg("dev_idp: {}\n"));
        assert_eq!(dev.len(), 1);
        assert!(dev[0].starts_with("dev_idp changed"), "{dev:?}");
        let traced = |ratio: &str| {
            cfg(&format!("telemetry: {{ otlp_endpoint: \"http://127.0.0.1:4317\", sample_ratio: {ratio} }}\n"))
        };
        assert!(restart_required(&traced("0.5"), &traced("0.5")).is_empty());
        for (old, new) in [(cfg(""), traced("0.5")), (traced("0.5"), traced("0.1")), (traced("0.5"), cfg(""))] {
            assert_eq!(
                restart_required(&old, &new),
                ["telemetry changed: restart stsgate to change where and how traces are exported"]
            );
        }
    }

    #[test]
    fn short_hash_is_the_start_of_sha256() {
        // sha256("") = e3b0c44298fc1c149afbf4c8996fb924...
        assert_eq!(short_hash(b""), "e3b0c44298fc");
    }

    #[test]
    fn fingerprint_follows_content_and_named_files() {
        let dir = std::env::temp_dir().join(format!("stsgate-reload-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let jwks = dir.join("jwks.json");
        std::fs::write(&jwks, "{\"keys\":[]}").unwrap();
        let path = dir.join("config.yaml");
        let text = "issuer: https://sts.test\nsigning:\n  keys: [{ kid: a, ephemeral: true }]\n\
                    trusted_issuers:\n  - { issuer: https://idp.test, jwks_file: jwks.json }\n"
            .to_owned();
        let a = fingerprint(&path, &Ok(text.clone()));
        assert_eq!(a, fingerprint(&path, &Ok(text.clone())));
        assert_ne!(a, fingerprint(&path, &Ok(format!("{text}rules: []\n"))));
        // A file the config names changes the fingerprint too (relative to the config's directory).
        std::fs::write(&jwks, "{\"keys\":[{}]}").unwrap();
        let b = fingerprint(&path, &Ok(text.clone()));
        assert_ne!(a, b);
        std::fs::remove_file(&jwks).unwrap();
        assert_ne!(b, fingerprint(&path, &Ok(text)));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
