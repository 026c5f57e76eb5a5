//! Start-up and shutdown: load everything that can fail (config, keys) before
//! serving, bind both listeners, run gRPC and HTTP until a shutdown signal, then
//! drain with a grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{Instrument, info, info_span, warn};

use crate::config::{Config, Listen};
use crate::dev_idp::DevIdp;
use crate::exchange::Engine;
use crate::ext_authz::AuthzService;
use crate::http::{AppState, router};
use crate::issuer::{Issuers, http_client};
use crate::metrics::Metrics;
use crate::mint::KeyRing;
use crate::pb::envoy::service::auth::v3::authorization_server::AuthorizationServer;
use crate::readiness::Readiness;

/// The encoded descriptor set of stsgate's protos, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/stsgate_descriptor.bin"));

/// Both listeners, bound before anything else so that port 0 works in tests
/// and the dev IdP can learn its own address.
pub struct Listeners {
    pub grpc: TcpListener,
    pub http: TcpListener,
}

impl Listeners {
    pub async fn bind(listen: &Listen) -> anyhow::Result<Listeners> {
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
    pub engine: Arc<Engine>,
    pub readiness: Arc<Readiness>,
    shutdown: watch::Sender<bool>,
    grace: Duration,
    tasks: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
}

impl Server {
    /// Loads keys, starts issuer refresh, and serves on the given listeners.
    pub async fn start(cfg: Config, listeners: Listeners) -> anyhow::Result<Server> {
        crate::install_crypto_provider();
        let cfg = Arc::new(cfg);
        let grpc_addr = listeners.grpc.local_addr()?;
        let http_addr = listeners.http.local_addr()?;

        let keys = Arc::new(KeyRing::load(&cfg.signing).context("cannot load signing keys")?);
        let issuers = Arc::new(Issuers::new(&cfg, http_client().context("cannot build the HTTP client")?));
        let engine = Arc::new(Engine::new(cfg.clone(), issuers.clone(), keys));

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
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        // tonic-health starts "" as SERVING; nothing is ready before the issuer
        // keys load, so say so before the gRPC listener answers its first probe.
        for service in ["", crate::readiness::AUTHZ_SERVICE] {
            health_reporter.set_service_status(service, tonic_health::ServingStatus::NotServing).await;
        }
        let readiness = Readiness::new(issuers.clone(), health_reporter);

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = Vec::new();

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
        let authz = AuthorizationServer::new(AuthzService::new(engine.clone(), metrics));
        let grpc = tonic::transport::Server::builder()
            // Envoy multiplexes every Check over one HTTP/2 connection and resets
            // the pending ones when its downstreams go away; h2's default limit
            // (20) would then drop the whole connection and fail unrelated
            // requests closed.
            .http2_max_pending_accept_reset_streams(Some(1024))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(authz)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listeners.grpc).with_nodelay(Some(true)),
                wait_for(shutdown_rx.clone()),
            );
        tasks.push(tokio::spawn(
            async move {
                if let Err(e) = grpc.await {
                    warn!("gRPC server ended with an error: {e}");
                }
            }
            .instrument(info_span!("grpc", addr = %grpc_addr)),
        ));

        // --- HTTP ---
        let state = AppState { engine: engine.clone(), readiness: readiness.clone(), registry: Arc::new(registry) };
        let app = router(state, dev_idp);
        let http_rx = shutdown_rx.clone();
        tasks.push(tokio::spawn(
            async move {
                if let Err(e) = axum::serve(listeners.http, app).with_graceful_shutdown(wait_for(http_rx)).await {
                    warn!("HTTP server ended with an error: {e}");
                }
            }
            .instrument(info_span!("http", addr = %http_addr)),
        ));

        // --- keys and readiness ---
        let mut background = issuers.spawn_refresh();
        background.push(tokio::spawn(readiness.clone().track()));

        info!(grpc = %grpc_addr, http = %http_addr, issuers = cfg.trusted_issuers.len(), rules = cfg.rules.len(), "stsgate started");
        Ok(Server {
            grpc_addr,
            http_addr,
            engine,
            readiness,
            shutdown,
            grace: cfg.listen.shutdown_grace.0,
            tasks,
            background,
        })
    }

    /// Stops accepting work and waits (up to the grace period) for in-flight requests.
    pub async fn shutdown(self) {
        self.readiness.drain().await;
        let _ = self.shutdown.send(true);
        let all = futures_join(self.tasks);
        if tokio::time::timeout(self.grace, all).await.is_err() {
            warn!(grace = ?self.grace, "in-flight requests did not finish within the grace period");
        }
        for task in self.background {
            task.abort();
        }
        info!("stsgate stopped");
    }

    /// Serves until SIGINT or SIGTERM, then shuts down gracefully.
    pub async fn run_until_signal(self) {
        let signal = shutdown_signal().await;
        info!(signal, "shutting down");
        self.shutdown().await;
    }
}

async fn futures_join(tasks: Vec<JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

async fn wait_for(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

/// Resolves with the name of the first shutdown signal received.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "SIGINT"
    }
}

/// The `dev` configuration bound to the real HTTP address.
pub fn dev_config(http_addr: SocketAddr, grpc_addr: SocketAddr) -> anyhow::Result<Config> {
    let text = crate::config::DEV_YAML.replace("{http_addr}", &http_addr.to_string());
    let mut cfg = Config::from_yaml_validated(&text)?;
    cfg.listen.grpc = grpc_addr;
    cfg.listen.http = http_addr;
    Ok(cfg)
}
