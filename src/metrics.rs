//! Prometheus metrics, as typed families registered once into a registry that
//! is passed in (no globals). Label values come from bounded enums/labels,
//! never from token contents.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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
    /// ext_authz | token
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClientAuthLabels {
    /// unknown_client | client_method | bad_client_secret | bad_client_credentials | client_required | client_rate_limited
    reason: &'static str,
}

pub struct Metrics {
    decisions: Family<DecisionLabels, Counter>,
    client_auth_failures: Family<ClientAuthLabels, Counter>,
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
        let client_auth_failures = Family::<ClientAuthLabels, Counter>::default();
        reg.register(
            "stsgate_client_auth_failures",
            "Failed client authentications at the token endpoint, by reason",
            client_auth_failures.clone(),
        );
        let allowed = decisions.get_or_create(&DecisionLabels { outcome: "ok", reason: "exchanged" }).clone();
        let ext_authz_duration = duration.get_or_create(&FrontDoor { api: "ext_authz" }).clone();
        Arc::new(Metrics { decisions, client_auth_failures, duration, allowed, ext_authz_duration })
    }

    pub(crate) fn allow(&self) {
        self.allowed.inc();
    }

    pub(crate) fn unauthenticated(&self, reason: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { outcome: "unauthenticated", reason }).inc();
    }

    pub(crate) fn client_auth_failure(&self, reason: &'static str) {
        self.client_auth_failures.get_or_create(&ClientAuthLabels { reason }).inc();
    }

    pub(crate) fn bad_request(&self, reason: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { outcome: "bad_request", reason }).inc();
    }

    pub(crate) fn deny(&self, reason: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { outcome: "denied", reason }).inc();
    }

    pub(crate) fn unavailable(&self, reason: &'static str) {
        self.decisions.get_or_create(&DecisionLabels { outcome: "unavailable", reason }).inc();
    }

    pub(crate) fn observe(&self, api: &'static str, took: Duration) {
        match api {
            "ext_authz" => self.ext_authz_duration.observe(took.as_secs_f64()),
            _ => self.duration.get_or_create(&FrontDoor { api }).observe(took.as_secs_f64()),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    /// ok | error
    result: &'static str,
}

/// Configuration reloads, for alerting on one that failed (the previous
/// configuration then stays in effect, which is easy to miss).
pub(crate) struct ReloadMetrics {
    ok: Counter,
    error: Counter,
    last_success: Gauge<f64, AtomicU64>,
    last_successful: Gauge,
}

impl ReloadMetrics {
    /// Registers the series; the configuration loaded at start counts as the
    /// last success.
    pub(crate) fn register(reg: &mut Registry) -> Arc<ReloadMetrics> {
        let reloads = Family::<ReloadLabels, Counter>::default();
        reg.register("stsgate_config_reloads", "Configuration reloads by result (ok | error)", reloads.clone());
        let last_success = Gauge::<f64, AtomicU64>::default();
        reg.register(
            "stsgate_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load (start-up or reload)",
            last_success.clone(),
        );
        let last_successful = Gauge::default();
        reg.register(
            "stsgate_config_last_reload_successful",
            "1 if the last configuration reload succeeded (or none was tried), 0 if it failed",
            last_successful.clone(),
        );
        // Both series exist from the start, so `increase()` sees the first error.
        let ok = reloads.get_or_create(&ReloadLabels { result: "ok" }).clone();
        let error = reloads.get_or_create(&ReloadLabels { result: "error" }).clone();
        let m = ReloadMetrics { ok, error, last_success, last_successful };
        m.mark_success();
        Arc::new(m)
    }

    pub(crate) fn succeeded(&self) {
        self.ok.inc();
        self.mark_success();
    }

    pub(crate) fn failed(&self) {
        self.error.inc();
        self.last_successful.set(0);
    }

    fn mark_success(&self) {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        self.last_success.set(now.as_secs_f64());
        self.last_successful.set(1);
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabels {
    /// grpc | http (`listener::Kind`)
    listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConnectionLabels {
    /// grpc | http (`listener::Kind`)
    listener: &'static str,
    /// `listener::Refused` or `listener::Closed`
    reason: &'static str,
}

/// Connections on both listeners, and what their limits did to them.
pub(crate) struct ConnectionMetrics {
    open: Family<ListenerLabels, Gauge>,
    refused: Family<ConnectionLabels, Counter>,
    closed: Family<ConnectionLabels, Counter>,
}

impl ConnectionMetrics {
    pub(crate) fn register(reg: &mut Registry) -> Arc<ConnectionMetrics> {
        let open = Family::<ListenerLabels, Gauge>::default();
        reg.register("stsgate_connections_open", "Connections open now, by listener", open.clone());
        let refused = Family::<ConnectionLabels, Counter>::default();
        reg.register(
            "stsgate_connections_refused",
            "Connections closed as soon as accepted (limit: the listener's max_connections), accept errors \
             (accept_error: e.g. out of file descriptors), and failed TLS handshakes (tls_handshake: no or an \
             untrusted client certificate), by listener",
            refused.clone(),
        );
        let closed = Family::<ConnectionLabels, Counter>::default();
        reg.register(
            "stsgate_connections_closed",
            "Connections stsgate closed by a timeout (handshake_timeout, header_timeout, idle_timeout, \
             keepalive_timeout), and HTTP requests answered 408 by request_timeout, by listener",
            closed.clone(),
        );
        // Both series exist from the start, so `increase()` sees the first refusal.
        for listener in ["grpc", "http"] {
            let _ = open.get_or_create(&ListenerLabels { listener });
            let _ = refused.get_or_create(&ConnectionLabels { listener, reason: "limit" });
        }
        Arc::new(ConnectionMetrics { open, refused, closed })
    }

    pub(crate) fn opened(&self, listener: &'static str) {
        self.open.get_or_create(&ListenerLabels { listener }).inc();
    }

    pub(crate) fn gone(&self, listener: &'static str) {
        self.open.get_or_create(&ListenerLabels { listener }).dec();
    }

    pub(crate) fn refused(&self, listener: &'static str, reason: &'static str) {
        self.refused.get_or_create(&ConnectionLabels { listener, reason }).inc();
    }

    pub(crate) fn closed(&self, listener: &'static str, reason: &'static str) {
        self.closed.get_or_create(&ConnectionLabels { listener, reason }).inc();
    }
}

/// The gRPC listener's TLS files (`listen.grpc_tls`), re-read when they change.
pub(crate) struct TlsMetrics {
    ok: Counter,
    error: Counter,
    not_after: Gauge<f64, AtomicU64>,
}

impl TlsMetrics {
    pub(crate) fn register(reg: &mut Registry) -> Arc<TlsMetrics> {
        let reloads = Family::<ReloadLabels, Counter>::default();
        reg.register(
            "stsgate_grpc_tls_reloads",
            "Changed listen.grpc_tls files by result (ok: served to new connections | error: the previous \
             certificate stays in use)",
            reloads.clone(),
        );
        let not_after = Gauge::<f64, AtomicU64>::default();
        reg.register(
            "stsgate_grpc_tls_certificate_expiry_timestamp_seconds",
            "Unix time the gRPC listener's certificate expires (notAfter)",
            not_after.clone(),
        );
        let ok = reloads.get_or_create(&ReloadLabels { result: "ok" }).clone();
        let error = reloads.get_or_create(&ReloadLabels { result: "error" }).clone();
        Arc::new(TlsMetrics { ok, error, not_after })
    }

    pub(crate) fn reloaded(&self, ok: bool) {
        let result = if ok { &self.ok } else { &self.error };
        result.inc();
    }

    /// The certificate now served expires at `not_after` (0: unknown).
    pub(crate) fn serving(&self, not_after: Option<SystemTime>) {
        let at = not_after.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0.0, |d| d.as_secs_f64());
        self.not_after.set(at);
    }
}

/// Renders the registry in the Prometheus text format.
pub(crate) fn render(reg: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, reg);
    out
}
