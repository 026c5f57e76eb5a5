//! One notion of "ready" shared by gRPC health and `/readyz`: every trusted
//! issuer has loaded keys at least once, and shutdown has not begun.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::issuer::Issuers;

/// The gRPC service name whose health Envoy/Kubernetes probe besides "".
pub const AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";

pub struct Readiness {
    issuers: Arc<Issuers>,
    draining: AtomicBool,
    health: HealthReporter,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub ready: bool,
    pub draining: bool,
    /// Issuers whose keys have not loaded yet.
    pub issuers_without_keys: Vec<String>,
}

impl Readiness {
    pub fn new(issuers: Arc<Issuers>, health: HealthReporter) -> Arc<Readiness> {
        Arc::new(Readiness { issuers, draining: AtomicBool::new(false), health })
    }

    pub fn is_ready(&self) -> bool {
        !self.draining.load(Ordering::Relaxed) && self.issuers.all_loaded()
    }

    pub fn report(&self) -> Report {
        let mut missing: Vec<String> =
            self.issuers.all().filter(|i| !i.is_loaded()).map(|i| i.cfg.issuer.clone()).collect();
        missing.sort();
        Report { ready: self.is_ready(), draining: self.draining.load(Ordering::Relaxed), issuers_without_keys: missing }
    }

    /// Marks gRPC health NOT_SERVING, waits for every issuer's keys, then SERVING.
    pub async fn track(self: Arc<Self>) {
        self.set_grpc(ServingStatus::NotServing).await;
        self.issuers.wait_all_loaded().await;
        if !self.draining.load(Ordering::Relaxed) {
            self.set_grpc(ServingStatus::Serving).await;
            tracing::info!("all trusted issuers have keys: SERVING");
        }
    }

    /// Start of shutdown: probes fail so load balancers stop sending work.
    pub async fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.set_grpc(ServingStatus::NotServing).await;
    }

    async fn set_grpc(&self, status: ServingStatus) {
        self.health.set_service_status("", status).await;
        self.health.set_service_status(AUTHZ_SERVICE, status).await;
    }
}
