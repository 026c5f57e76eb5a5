//! Prometheus metrics, as typed families registered once into a registry that
//! is passed in (no globals). Label values come from bounded enums/labels,
//! never from token contents.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DecisionLabels {
    /// ok | unauthenticated | bad_request | denied | unavailable
    outcome: &'static str,
    /// A bounded reason label (`TokenError::label`, `Denied::label`).
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FrontDoor {
    /// ext_authz | token_endpoint
    api: &'static str,
}

pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    duration: Family<FrontDoor, Histogram>,
    // Handles of the per-request series, resolved once: the label lookup
    // (hash + read lock) stays off the hot path.
    allowed: Counter,
    ext_authz_duration: Histogram,
}

impl Metrics {
    pub fn register(reg: &mut Registry) -> Arc<Metrics> {
        let decisions = Family::<DecisionLabels, Counter>::default();
        reg.register("stsgate_decisions", "Exchange decisions by outcome and reason", decisions.clone());
        let duration = Family::<FrontDoor, Histogram>::new_with_constructor(|| {
            // 25µs .. ~0.8s: a cache hit is tens of µs, a JWKS re-fetch hundreds of ms.
            Histogram::new(exponential_buckets(0.000_025, 2.0, 16))
        });
        reg.register("stsgate_request_duration_seconds", "Time to answer an exchange", duration.clone());
        let allowed = decisions.get_or_create(&DecisionLabels { outcome: "ok", reason: "exchanged" }).clone();
        let ext_authz_duration = duration.get_or_create(&FrontDoor { api: "ext_authz" }).clone();
        Arc::new(Metrics { decisions, duration, allowed, ext_authz_duration })
    }

    pub fn allow(&self) {
        self.allowed.inc();
    }

    pub fn unauthenticated(&self, reason: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { outcome: "unauthenticated", reason }).inc();
    }

    pub fn bad_request(&self, reason: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { outcome: "bad_request", reason }).inc();
    }

    pub fn deny(&self, reason: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { outcome: "denied", reason }).inc();
    }

    pub fn unavailable(&self, reason: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { outcome: "unavailable", reason }).inc();
    }

    pub fn observe(&self, api: &'static str, took: Duration) {
        match api {
            "ext_authz" => self.ext_authz_duration.observe(took.as_secs_f64()),
            _ => self.duration.get_or_create(&FrontDoor { api }).observe(took.as_secs_f64()),
        }
    }
}

/// Renders the registry in the Prometheus text format.
pub fn render(reg: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, reg);
    out
}
