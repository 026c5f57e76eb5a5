//! Start-up and shutdown: load everything that can fail (config, keys) before
//! serving, bind both listeners, run gRPC and HTTP until a shutdown signal, then
//! drain with a grace period. SIGHUP reloads the configuration (see `reload`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::api::dev_idp::DevIdp;
use crate::api::ext_authz::AuthzService;
use crate::api::readiness::Readiness;
use crate::api::router::{AppState, router};
use crate::config::{CallerIdentity, Config, Listen};
use crate::engine::Engine;
use crate::metrics::{ConnectionMetrics, Metrics, ReloadMetrics, TlsMetrics};
use crate::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use crate::runtime::listener::{Acceptor, GrpcIncoming, Kind, Limits};
use crate::runtime::reload::{Live, ReloadError, ReloadOptions, Reloaded};
use crate::runtime::tls::ServerTls;
use crate::trust::issuer::http_client;

/// How long, at most, the listeners keep answering after a shutdown signal
/// while health already says NOT_SERVING (see `Server::shutdown_after`).
const DRAIN_NOTICE: Duration = Duration::from_secs(1);

/// The encoded descriptor set of stsgate's protos, for server reflection.
pub(crate) const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stsgate_descriptor.bin"));

/// Both listeners, bound before anything else so that port 0 works in tests
/// and the dev IdP can learn its own address.
pub struct Listeners {
    pub(crate) grpc: TcpListener,
    pub(crate) http: TcpListener,
}

impl Listeners {
    pub(crate) async fn bind(listen: &Listen) -> anyhow::Result<Listeners> {
        Listeners::bind_addrs(listen.grpc, listen.http).await
    }

    pub async fn bind_addrs(grpc: SocketAddr, http: SocketAddr) -> anyhow::Result<Listeners> {
        let grpc = TcpListener::bind(grpc).await.with_context(|| format!("cannot listen for gRPC on {grpc}"))?;
        let http = TcpListener::bind(http).await.with_context(|| format!("cannot listen for HTTP on {http}"))?;
        Ok(Listeners { grpc, http })
    }
}

/// A running stsgate.
pub struct Server {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub readiness: Arc<Readiness>,
    live: Arc<Live>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    /// The config file watcher, if any.
    background: Vec<JoinHandle<()>>,
    /// The file SIGHUP reloads; none for `stsgate dev`.
    config_path: Option<PathBuf>,
    /// Registered at start, so a SIGHUP that comes early is queued rather
    /// than ending the process (its default action).
    #[cfg(unix)]
    hangup: Option<tokio::signal::unix::Signal>,
}

impl Server {
    /// Loads keys, starts issuer refresh, and serves on the given listeners.
    pub async fn start(cfg: Config, listeners: Listeners) -> anyhow::Result<Server> {
        crate::install_crypto_provider();
        let cfg = Arc::new(cfg);
        let grpc_addr = listeners.grpc.local_addr()?;
        let http_addr = listeners.http.local_addr()?;

        let http = http_client().context("cannot build the HTTP client")?;
        // The engine in use; a reload replaces it whole, and every front door
        // loads it per request.
        let engine = Engine::load(cfg.clone(), http.clone(), None).context("cannot load signing keys")?;
        let engine = Arc::new(ArcSwap::from_pointee(engine));

        let dev_idp = match &cfg.dev_idp {
            Some(dev) => {
                let issuer = format!("http://{http_addr}{}", dev.path);
                warn!(%issuer, "development IdP enabled: anyone reaching this listener can mint trusted subject tokens");
                Some((dev.path.clone(), Arc::new(DevIdp::new(issuer, dev.audience.clone())?)))
            }
            None => None,
        };

        // No prefix: `with_prefix("")` would name every metric `_stsgate_...`.
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        let reload_metrics = ReloadMetrics::register(&mut registry);
        let conn_metrics = ConnectionMetrics::register(&mut registry);
        // The replay store hands its counters on to the store of each reload.
        engine.load().replay.metrics().register(&mut registry);
        // Likewise the introspection counters (kept across reloads).
        engine.load().introspection_metrics.register(&mut registry);
        engine.load().audit.metrics().register(&mut registry);
        let live_engine = engine.clone();
        registry.register_collector(Box::new(crate::metrics::IssuerKeysCollector(Box::new(move || {
            live_engine.load().issuers.key_states()
        }))));
        let (grpc_limits, http_limits) = connection_limits(&cfg.listen);
        let caps = (grpc_limits.max_connections, http_limits.max_connections);
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        // tonic-health starts "" as SERVING; nothing is ready before the issuer
        // keys load, so say so before the gRPC listener answers its first probe.
        for service in ["", crate::api::readiness::AUTHZ_SERVICE] {
            health_reporter.set_service_status(service, tonic_health::ServingStatus::NotServing).await;
        }
        let readiness = Readiness::new(engine.clone(), health_reporter);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut background = Vec::new();

        // mTLS on the gRPC listener; its files are watched for new content.
        let grpc_tls = match &cfg.listen.grpc_tls {
            Some(files) => {
                let tls_metrics = TlsMetrics::register(&mut registry);
                let (tls, seen) = ServerTls::load(files, &tls_metrics)?;
                background.push(tokio::spawn(tls.clone().watch(files.clone(), seen, tls_metrics)));
                Some(tls)
            }
            None => None,
        };
        warn_about_callers(&cfg, grpc_addr);

        // --- gRPC: ext_authz, health, reflection ---
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        // grpcurl 1.8 speaks only the v1alpha reflection protocol.
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let authz = AuthorizationServer::new(AuthzService::live(engine.clone(), metrics.clone()));
        let grpc_incoming = GrpcIncoming::new(
            Acceptor::new(listeners.grpc, Kind::Grpc, grpc_limits.max_connections, conn_metrics.clone()),
            grpc_limits.handshake_timeout,
            grpc_tls.clone(),
        );
        let grpc = tonic::transport::Server::builder()
            // Envoy multiplexes every Check over one HTTP/2 connection and resets
            // the pending ones when its downstreams go away; h2's default limit
            // (20) would then drop the whole connection and fail unrelated
            // requests closed. This bounds how many reset streams wait in the
            // accept queue at once, not how many a connection may reset over
            // time: a rapid-reset flood (CVE-2023-44487) that outruns the
            // accept loop by 1024 streams gets GOAWAY(ENHANCE_YOUR_CALM), and
            // one it does not outrun costs a Check that is dropped unread.
            .http2_max_pending_accept_reset_streams(Some(1024))
            // tonic turns h2's limit on resets the server is made to send off
            // ("MadeYouReset", CVE-2025-8671); put h2's default back.
            .http2_max_local_error_reset_streams(Some(crate::runtime::listener::MAX_LOCAL_ERROR_RESETS))
            // tonic leaves it unlimited; hyper's own default is 200.
            .max_concurrent_streams(Some(1024))
            // Finds Envoys that went away without a FIN; an idle, pooled
            // connection that answers pings stays open.
            .http2_keepalive_interval(Some(grpc_limits.keepalive_interval))
            .http2_keepalive_timeout(Some(grpc_limits.keepalive_timeout))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(authz)
            .serve_with_incoming_shutdown(grpc_incoming, wait_for(shutdown_rx.clone()));
        tasks.push(tokio::spawn(
            async move {
                if let Err(e) = grpc.await {
                    warn!("gRPC server ended with an error: {e}");
                }
            }
            .instrument(info_span!("grpc", addr = %grpc_addr)),
        ));

        // --- HTTP ---
        // TLS on the HTTP listener (listen.http_tls); its files are watched like grpc_tls's.
        let http_tls = match &cfg.listen.http_tls {
            Some(files) => {
                let tls_metrics = TlsMetrics::register_for(&mut registry, "http");
                let (tls, seen) = ServerTls::load(files, &tls_metrics)?;
                background.push(tokio::spawn(tls.clone().watch(files.clone(), seen, tls_metrics)));
                Some(tls)
            }
            None => None,
        };
        let state =
            AppState { engine: engine.clone(), readiness: readiness.clone(), registry: Arc::new(registry), metrics };
        let app = router(state, dev_idp);
        let http_acceptor =
            Acceptor::new(listeners.http, Kind::Http, http_limits.max_connections, conn_metrics.clone());
        tasks.push(tokio::spawn(
            crate::runtime::listener::serve_http(
                http_acceptor,
                http_limits,
                app,
                conn_metrics,
                shutdown_rx.clone(),
                http_tls,
            )
            .instrument(info_span!("http", addr = %http_addr)),
        ));

        // --- keys, readiness, reload ---
        let live = Live::start(engine, readiness.clone(), reload_metrics, http);
        #[cfg(unix)]
        let hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!("cannot listen for SIGHUP, reload on signal is off: {e}");
                None
            }
        };

        info!(
            grpc = %grpc_addr,
            http = %http_addr,
            issuers = cfg.trusted_issuers.len(),
            rules = cfg.rules.len(),
            grpc_max_connections = caps.0,
            http_max_connections = caps.1,
            grpc_tls = grpc_tls.is_some(),
            caller_identity = cfg.ext_authz.caller_identity(grpc_tls.is_some()).as_str(),
            "stsgate started"
        );
        Ok(Server {
            grpc_addr,
            http_addr,
            readiness,
            live,
            shutdown,
            tasks,
            background,
            config_path: None,
            #[cfg(unix)]
            hangup,
        })
    }

    /// The engine in use now (a reload replaces it).
    pub fn engine(&self) -> Arc<Engine> {
        self.live.engine()
    }

    /// Reloads the configuration from `path`: a complete new engine, or no
    /// change at all. Logged and counted in the metrics either way.
    pub async fn reload_from(&self, path: &Path) -> Result<Reloaded, ReloadError> {
        self.live.reload_from(path).await
    }

    /// How long a reload waits for every trusted issuer's keys.
    pub fn set_reload_timeout(&self, timeout: Duration) {
        self.live.set_timeout(timeout);
    }

    /// Reload from `opts.path` on SIGHUP and, with `opts.watch`, when the
    /// file changes.
    pub(crate) async fn enable_reload(&mut self, opts: ReloadOptions) {
        self.live.set_timeout(opts.timeout);
        let hash = self.live.loaded_from(&opts.path, opts.loaded_text).await;
        let watch = opts.watch.map(|every| humantime::format_duration(every).to_string());
        let watch = watch.as_deref().unwrap_or("off");
        info!(config = %opts.path.display(), hash = %hash, watch, "configuration reload on SIGHUP enabled");
        if let Some(every) = opts.watch {
            self.background.push(tokio::spawn(self.live.clone().watch(opts.path.clone(), every)));
        }
        self.config_path = Some(opts.path);
    }

    /// Stops accepting work and waits (up to the grace period) for in-flight
    /// requests, at once: for embedding and tests, where nobody probes health.
    pub async fn shutdown(self) {
        self.shutdown_after(Duration::ZERO).await
    }

    /// Turns health NOT_SERVING, keeps both listeners answering for `notice`
    /// (at most half the grace period), then stops accepting work and waits
    /// for in-flight requests; all of it within `listen.shutdown_grace`.
    async fn shutdown_after(self, notice: Duration) {
        // No reload starts or applies from here on.
        for task in &self.background {
            task.abort();
        }
        self.live.begin_close();
        self.readiness.drain().await;
        // Read now: a reload may have changed it.
        let grace = self.live.engine().cfg.listen.shutdown_grace.0;
        // Envoy's health checks and Kubernetes' probes must *see* NOT_SERVING
        // (and take this replica out) while it still answers: closing the
        // listener in the same instant turns every probe and every Check
        // already on its way into a connection error instead.
        let notice = notice.min(grace / 2);
        if !notice.is_zero() {
            info!(notice = ?notice, "NOT_SERVING: still answering while load balancers notice");
            tokio::time::sleep(notice).await;
        }
        let _ = self.shutdown.send(true);
        let all = futures_join(self.tasks);
        if tokio::time::timeout(grace - notice, all).await.is_err() {
            warn!(grace = ?grace, "in-flight requests did not finish within the grace period");
        }
        self.live.close().await;
        info!("stsgate stopped");
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully; SIGHUP
    /// reloads the configuration meanwhile.
    pub(crate) async fn run_until_signal(mut self) {
        let signal = self.serve_until_shutdown_signal().await;
        info!(signal, "shutting down");
        self.shutdown_after(DRAIN_NOTICE).await;
    }

    /// Resolves with the name of the first shutdown signal received; each
    /// SIGHUP before it starts a reload (they queue: one runs at a time).
    async fn serve_until_shutdown_signal(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                (Ok(int), Ok(term)) => (int, term),
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                    return "SIGINT";
                }
            };
            let mut reloads: Vec<JoinHandle<()>> = Vec::new();
            let signal = loop {
                tokio::select! {
                    _ = int.recv() => break "SIGINT",
                    _ = term.recv() => break "SIGTERM",
                    Some(()) = next_hangup(self.hangup.as_mut()) => {
                        reloads.retain(|r| !r.is_finished());
                        match &self.config_path {
                            Some(path) => {
                                info!(config = %path.display(), "SIGHUP: reloading the configuration");
                                let (live, path) = (self.live.clone(), path.clone());
                                // Spawned: a slow reload must not delay a SIGTERM.
                                reloads.push(tokio::spawn(async move {
                                    let _ = live.reload_from(&path).await;
                                }));
                            }
                            None => warn!("SIGHUP ignored: there is no configuration file to reload"),
                        }
                    }
                }
            };
            // A reload cut short changes nothing.
            for reload in reloads {
                reload.abort();
            }
            signal
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(unix)]
async fn next_hangup(signal: Option<&mut tokio::signal::unix::Signal>) -> Option<()> {
    match signal {
        Some(s) => s.recv().await,
        None => std::future::pending().await,
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// Both listeners' limits, the connection caps lowered (with a warning) when
/// together they would not fit the process's file-descriptor limit.
fn connection_limits(listen: &Listen) -> (Limits, Limits) {
    let (mut grpc, mut http) = (Limits::new(listen, Kind::Grpc), Limits::new(listen, Kind::Http));
    if let Some(nofile) = crate::runtime::listener::open_files_limit() {
        if let Some((g, h)) =
            crate::runtime::listener::fit_to_fd_limit(grpc.max_connections, http.max_connections, nofile)
        {
            warn!(
                nofile,
                grpc_max_connections = g,
                http_max_connections = h,
                "listen.grpc_max_connections ({}) + listen.http_max_connections ({}) do not fit the file-descriptor \
                 limit (ulimit -n) with {} to spare: lowered; raise the limit or lower them",
                grpc.max_connections,
                http.max_connections,
                crate::runtime::listener::FD_RESERVE,
            );
            (grpc.max_connections, http.max_connections) = (g, h);
        }
    }
    (grpc, http)
}

/// Says once, at start-up, how far Check callers are believed when that is
/// further than production wants.
fn warn_about_callers(cfg: &Config, grpc_addr: SocketAddr) {
    let ea = &cfg.ext_authz;
    match ea.caller_identity(cfg.listen.grpc_tls.is_some()) {
        CallerIdentity::None => warn!(
            "Check callers are not authenticated: anyone who can reach {grpc_addr} is believed about \
             source.principal (set listen.grpc_tls, or ext_authz.caller_identity: xfcc, and ext_authz.callers)"
        ),
        mode if ea.callers.is_empty() => {
            let who = if mode == CallerIdentity::Mtls {
                "every client with a certificate from listen.grpc_tls.client_ca"
            } else {
                "every caller the sidecar in ext_authz.xfcc_trusted_peers vouches for"
            };
            warn!(
                "ext_authz.callers is empty: {who} may ask for tokens for any audience and is believed about source.principal"
            )
        }
        _ => {}
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// The `dev` configuration bound to the real HTTP address.
pub(crate) fn dev_config(http_addr: SocketAddr, grpc_addr: SocketAddr) -> anyhow::Result<Config> {
    let text = crate::config::DEV_YAML.replace("{http_addr}", &http_addr.to_string());
    let mut cfg = Config::from_yaml_validated(&text)?;
    cfg.listen.grpc = grpc_addr;
    cfg.listen.http = http_addr;
    Ok(cfg)
}
