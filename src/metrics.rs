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
        TlsMetrics::register_for(reg, "grpc")
    }

    /// The metrics of one listener's TLS files (`grpc` or `http`).
    pub(crate) fn register_for(reg: &mut Registry, listener: &str) -> Arc<TlsMetrics> {
        let reloads = Family::<ReloadLabels, Counter>::default();
        reg.register(
            format!("stsgate_{listener}_tls_reloads"),
            format!(
                "Changed listen.{listener}_tls files by result (ok: served to new connections | error: the previous \
                 certificate stays in use)"
            ),
            reloads.clone(),
        );
        let not_after = Gauge::<f64, AtomicU64>::default();
        reg.register(
            format!("stsgate_{listener}_tls_certificate_expiry_timestamp_seconds"),
            format!("Unix time the {listener} listener's certificate expires (notAfter)"),
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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabels {
    /// A configured trusted issuer (a bounded set).
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IntrospectionLabels {
    issuer: String,
    /// calls: active | inactive | failed; failures: timeout | transport | status | too_large |
    /// bad_answer | busy | discovery
    result: &'static str,
}

type LatencyFamily = Family<IssuerLabels, Histogram, fn() -> Histogram>;

/// RFC 7662 introspection, per trusted issuer. The engine builds it once and
/// hands it to the engine of each reload, so the series live as long as the
/// process; the runtime registers it next to `Metrics`.
#[derive(Clone)]
pub struct IntrospectionMetrics {
    calls: Family<IntrospectionLabels, Counter>,
    failures: Family<IntrospectionLabels, Counter>,
    cache_hits: Family<IssuerLabels, Counter>,
    latency: LatencyFamily,
}

impl Default for IntrospectionMetrics {
    fn default() -> Self {
        fn buckets() -> Histogram {
            // 1ms .. ~16s: an IdP round trip, up to a stuck one.
            Histogram::new(exponential_buckets(0.001, 2.0, 15))
        }
        IntrospectionMetrics {
            calls: Family::default(),
            failures: Family::default(),
            cache_hits: Family::default(),
            latency: Family::new_with_constructor(buckets),
        }
    }
}

impl IntrospectionMetrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "stsgate_introspection_requests",
            "Introspection requests to an issuer, by result (active | inactive | failed)",
            self.calls.clone(),
        );
        reg.register(
            "stsgate_introspection_failures",
            "Introspection requests that got no usable answer (the token is refused with 503), by reason",
            self.failures.clone(),
        );
        reg.register(
            "stsgate_introspection_cache_hits",
            "Tokens answered from the introspection cache, by issuer",
            self.cache_hits.clone(),
        );
        reg.register(
            "stsgate_introspection_duration_seconds",
            "Time of one introspection request, by issuer",
            self.latency.clone(),
        );
    }

    pub(crate) fn answered(&self, issuer: &str, result: &'static str, took: Duration) {
        self.calls.get_or_create(&IntrospectionLabels { issuer: issuer.to_owned(), result }).inc();
        self.latency.get_or_create(&IssuerLabels { issuer: issuer.to_owned() }).observe(took.as_secs_f64());
    }

    pub(crate) fn failed(&self, issuer: &str, reason: &'static str) {
        self.calls.get_or_create(&IntrospectionLabels { issuer: issuer.to_owned(), result: "failed" }).inc();
        self.failures.get_or_create(&IntrospectionLabels { issuer: issuer.to_owned(), result: reason }).inc();
    }

    pub(crate) fn cache_hit(&self, issuer: &str) {
        self.cache_hits.get_or_create(&IssuerLabels { issuer: issuer.to_owned() }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplayStoreLabels {
    /// redis (the in-memory store does not fail)
    store: &'static str,
    /// timeout | connection | answer
    reason: &'static str,
}

/// Calls to the assertion replay store that got no answer (each refused an
/// assertion with 503). Built with the first engine and handed to the store
/// of each reload, so the series live as long as the process; the runtime
/// registers it next to `Metrics`.
#[derive(Clone, Debug, Default)]
pub struct ReplayStoreMetrics {
    errors: Family<ReplayStoreLabels, Counter>,
}

impl ReplayStoreMetrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "stsgate_replay_store_errors",
            "Assertion replay store calls without an answer, by store and reason (timeout | connection | \
             answer); each refused an assertion with 503",
            self.errors.clone(),
        );
    }

    pub(crate) fn error(&self, store: &'static str, reason: &'static str) {
        self.errors.get_or_create(&ReplayStoreLabels { store, reason }).inc();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuditLabels {
    /// minted | refused
    event: &'static str,
}

/// The audit event stream. Built with the first engine and handed to the
/// stream of each reload, so the series live as long as the process; the
/// runtime registers it next to `Metrics`.
#[derive(Clone, Debug)]
pub struct AuditMetrics {
    events: Family<AuditLabels, Counter>,
    /// The two series of `events`, looked up once: a Family look-up (lock,
    /// hash) per minted token was a tenth of the audit's cost (issue 17).
    minted: Counter,
    refused: Counter,
    dropped: Counter,
    write_errors: Counter,
}

impl Default for AuditMetrics {
    fn default() -> Self {
        let events = Family::<AuditLabels, Counter>::default();
        let minted = events.get_or_create(&AuditLabels { event: "minted" }).clone();
        let refused = events.get_or_create(&AuditLabels { event: "refused" }).clone();
        AuditMetrics { events, minted, refused, dropped: Counter::default(), write_errors: Counter::default() }
    }
}

impl AuditMetrics {
    pub fn register(&self, reg: &mut Registry) {
        reg.register(
            "stsgate_audit_events",
            "Audit events queued for writing, by event (minted | refused)",
            self.events.clone(),
        );
        reg.register(
            "stsgate_audit_events_dropped",
            "Sampled plain-exchange audit events dropped because the writer's queue was full",
            self.dropped.clone(),
        );
        reg.register(
            "stsgate_audit_write_errors",
            "Audit events that could not be written to a destination",
            self.write_errors.clone(),
        );
    }

    pub(crate) fn queued(&self, event: &'static str) {
        match event {
            "minted" => self.minted.inc(),
            "refused" => self.refused.inc(),
            other => self.events.get_or_create(&AuditLabels { event: other }).inc(),
        };
    }

    pub(crate) fn dropped(&self) {
        self.dropped.inc();
    }

    pub(crate) fn write_errors(&self, n: u64) {
        self.write_errors.inc_by(n);
    }
}

/// Renders the registry in the Prometheus text format.
pub(crate) fn render(reg: &Registry) -> String {
    let mut out = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, reg);
    out
}

/// One trusted issuer's key state, as read at scrape time.
#[derive(Debug, Clone)]
pub struct IssuerKeys {
    pub issuer: String,
    /// Usable keys now; `None` while its keys were never read.
    pub keys: Option<usize>,
    /// When its keys were last read (Unix seconds, 0: never).
    pub last_read: i64,
    /// Reads (refreshes) that failed since this issuer was configured.
    pub failed_reads: u64,
}

/// The per-issuer key series, read from the live engine at each scrape (the
/// issuers change with every reload, so they are not registered once):
/// `stsgate_issuer_keys`, `stsgate_issuer_keys_last_read_timestamp_seconds`,
/// `stsgate_issuer_key_read_failures_total`. The issuer label comes from the
/// configuration, never from a token.
pub struct IssuerKeysCollector(pub Box<dyn Fn() -> Vec<IssuerKeys> + Send + Sync>);

impl std::fmt::Debug for IssuerKeysCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IssuerKeysCollector")
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabel {
    issuer: String,
}

impl prometheus_client::collector::Collector for IssuerKeysCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::MetricType;
        use prometheus_client::metrics::gauge::ConstGauge;
        let rows = (self.0)();
        let mut gauge = |name: &str, help: &str, value: &dyn Fn(&IssuerKeys) -> i64| {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for row in &rows {
                let labels = IssuerLabel { issuer: row.issuer.clone() };
                ConstGauge::new(value(row)).encode(family.encode_family(&labels)?)?;
            }
            Ok::<(), std::fmt::Error>(())
        };
        gauge("stsgate_issuer_keys", "Usable signature keys of each trusted issuer now (-1: never read)", &|r| {
            r.keys.map_or(-1, |k| k as i64)
        })?;
        gauge(
            "stsgate_issuer_keys_last_read_timestamp_seconds",
            "When each trusted issuer's keys were last read successfully (0: never)",
            &|r| r.last_read,
        )?;
        let mut family = encoder.encode_descriptor(
            "stsgate_issuer_key_read_failures",
            "Failed reads of each trusted issuer's keys (discovery, JWKS fetch or file)",
            None,
            MetricType::Counter,
        )?;
        for row in &rows {
            let labels = IssuerLabel { issuer: row.issuer.clone() };
            prometheus_client::metrics::counter::ConstCounter::new(row.failed_reads)
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
