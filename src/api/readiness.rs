//! One notion of "ready" shared by gRPC health and `/readyz`: every trusted
//! issuer of the engine in use has loaded keys at least once, and shutdown
//! has not begun. A configuration reload swaps the engine, and readiness
//! follows it. An issuer whose JWKS was read but holds no usable key counts
//! as loaded: the IdP answered, and its tokens get a 401, not a 503.
//!
//! `/readyz` answers anyone, so its body carries counts only: issuer URLs
//! would show internal topology. The names go to the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use serde::Serialize;
use tokio::sync::Mutex;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::engine::Engine;

/// The gRPC service name whose health Envoy/Kubernetes probe besides "".
pub const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

pub struct Readiness {
    engine: Arc<ArcSwap<Engine>>,
    draining: AtomicBool,
    health: HealthReporter,
    /// What gRPC health says now; held while deciding a change, so that
    /// `track` cannot turn SERVING again after `drain` (checks and sets are
    /// not atomic otherwise).
    serving: Mutex<bool>,
    /// The issuers without keys last logged by `report`, so that a probe
    /// every few seconds logs only changes.
    logged_missing: std::sync::Mutex<Vec<String>>,
}

#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) ready: bool,
    pub(crate) draining: bool,
    /// How many trusted issuers have not loaded keys yet (not which).
    pub(crate) issuers_not_loaded: usize,
}

impl Readiness {
    /// gRPC health must already say NOT_SERVING (the server sets it before
    /// its listener answers).
    pub(crate) fn new(engine: Arc<ArcSwap<Engine>>, health: HealthReporter) -> Arc<Readiness> {
        Arc::new(Readiness {
            engine,
            draining: AtomicBool::new(false),
            health,
            serving: Mutex::new(false),
            logged_missing: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.engine.load().issuers.all_loaded()
    }

    pub(crate) fn report(&self) -> Report {
        let engine = self.engine.load();
        let mut missing: Vec<String> =
            engine.issuers.all().filter(|i| !i.is_loaded()).map(|i| i.cfg.issuer.clone()).collect();
        missing.sort();
        let mut logged = self.logged_missing.lock().unwrap_or_else(|e| e.into_inner());
        if *logged != missing {
            if !missing.is_empty() {
                tracing::warn!(issuers = ?missing, "not ready: trusted issuers whose keys have not loaded");
            }
            *logged = missing.clone();
        }
        drop(logged);
        let draining = self.draining.load(Ordering::Relaxed);
        Report { ready: !draining && missing.is_empty(), draining, issuers_not_loaded: missing.len() }
    }

    /// Waits for every issuer of the current engine to have keys, then turns
    /// gRPC health SERVING. A reload starts a new `track` for the new engine
    /// (whose keys are loaded already) and aborts the old one.
    pub(crate) async fn track(self: Arc<Self>) {
        let issuers = self.engine.load().issuers.clone();
        issuers.wait_all_loaded().await;
        let mut serving = self.serving.lock().await;
        if !*serving && !self.draining.load(Ordering::Relaxed) {
            self.set_grpc(ServingStatus::Serving).await;
            *serving = true;
            tracing::info!("all trusted issuers have keys: SERVING");
        }
    }

    /// Start of shutdown: probes fail so load balancers stop sending work.
    pub(crate) async fn drain(&self) {
        let mut serving = self.serving.lock().await;
        self.draining.store(true, Ordering::Relaxed);
        self.set_grpc(ServingStatus::NotServing).await;
        *serving = false;
    }

    async fn set_grpc(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
        self.health.set_service_status(AUTHZ_SERVICE, status).await;
    }
}
