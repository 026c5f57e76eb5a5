//! The Envoy ext_authz v3 front door. `Check` never returns a gRPC error: every
//! answer, allow or deny, is a `CheckResponse`, so Envoy shows the caller our
//! status, headers and JSON body instead of its own generic 403. Anything we
//! cannot decide with certainty is a denial (fail closed).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use prost_types::{Struct, Value as PbValue, value::Kind};
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, Level, Span, debug};

use crate::api::callers::{self, ConnInfo};
use crate::api::refusal::{Class, Condition, Door, Refusal};
use crate::config::{ActorMode, ExtAuthz, Keys, MetadataField, RequestReads};
use crate::engine::audit::{Door as AuditDoor, Origin};
use crate::engine::{Engine, ExchangeRequest, Exchanged};
use crate::metrics::Metrics;
use crate::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction};
use crate::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    authorization_server::Authorization, check_response::HttpResponse,
};
use crate::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use crate::pb::google::rpc::Status as RpcStatus;
use crate::rules::{Actor, Denied, RequestAttrs, split_scopes};

/// google.rpc.Code values used in `CheckResponse.status`.
const RPC_OK: i32 = 0;
const RPC_INVALID_ARGUMENT: i32 = 3;
const RPC_PERMISSION_DENIED: i32 = 7;
const RPC_UNAVAILABLE: i32 = 14;
const RPC_UNAUTHENTICATED: i32 = 16;

/// Context extension keys set per route in Envoy's `check_settings`.
pub(crate) const CTX_AUDIENCE: &str = "audience";
pub(crate) const CTX_SCOPE: &str = "scope";
/// Which actor sources the route consults: none, peer, token or any.
pub(crate) const CTX_ACTOR: &str = "actor";

/// Longest requested subject accepted from the impersonation header.
pub(crate) const MAX_REQUESTED_SUBJECT: usize = 256;

pub struct AuthzService {
    /// The engine in use; a configuration reload swaps it whole.
    engine: Arc<ArcSwap<Engine>>,
    metrics: Arc<Metrics>,
}

impl AuthzService {
    /// A service that always answers with this one engine.
    pub fn new(engine: Arc<Engine>, metrics: Arc<Metrics>) -> AuthzService {
        AuthzService::live(Arc::new(ArcSwap::new(engine)), metrics)
    }

    /// A service that answers with whatever engine `engine` holds at the
    /// start of each Check.
    pub(crate) fn live(engine: Arc<ArcSwap<Engine>>, metrics: Arc<Metrics>) -> AuthzService {
        AuthzService { engine, metrics }
    }

    /// The whole decision for one CheckRequest, made in process: no
    /// connection, so no Check caller is identified (see `api::callers`).
    pub fn decide(&self, req: CheckRequest) -> impl Future<Output = CheckResponse> + Send + '_ {
        static NO_METADATA: LazyLock<MetadataMap> = LazyLock::new(MetadataMap::new);
        self.decide_from(None, &NO_METADATA, req)
    }

    /// The whole decision for one CheckRequest that came on `conn` with
    /// these gRPC `metadata`. Not an `async fn`, nor is `decide`: each of
    /// those would keep the 1 KB request twice in its future (argument and
    /// local), and a future is moved by value (issue 17); this block keeps
    /// it once, and the layers below borrow it.
    #[allow(clippy::manual_async_fn)]
    fn decide_from<'a>(
        &'a self,
        conn: Option<&'a ConnInfo>,
        metadata: &'a MetadataMap,
        req: CheckRequest,
    ) -> impl Future<Output = CheckResponse> + Send + 'a {
        async move {
            let started = Instant::now();
            let span = tracing::info_span!(
                target: crate::trace::TARGET, "check", otel.kind = "server", decision = tracing::field::Empty,
                error = tracing::field::Empty,
            );
            if !span.is_disabled() {
                continue_trace(&span, metadata, &req);
            }
            let resp = self.decide_inner(conn, metadata, &req, &span).instrument(span.clone()).await;
            self.metrics.observe("ext_authz", started.elapsed());
            resp
        }
    }

    async fn decide_inner(
        &self,
        conn: Option<&ConnInfo>,
        metadata: &MetadataMap,
        req: &CheckRequest,
        span: &Span,
    ) -> CheckResponse {
        static NO_ATTRIBUTES: LazyLock<AttributeContext> = LazyLock::new(AttributeContext::default);
        // One lock-free load per Check: the whole request is decided by the
        // engine it started with, even if a reload swaps another in meanwhile.
        let current = self.engine.load();
        let engine: &Engine = &current;
        let attrs = req.attributes.as_ref().unwrap_or(&NO_ATTRIBUTES);
        // Boxed: the exchange's future (validation, introspection, the
        // actor) is ~2.5 KB, and the Check's own future, kept small, is
        // moved by value on its way to the executor.
        match Box::pin(self.exchange(engine, conn, metadata, attrs)).await {
            Ok(resp) => {
                if !span.is_disabled() {
                    span.record("decision", "allow");
                }
                resp
            }
            Err(refusal) => {
                if !span.is_disabled() {
                    span.record("decision", "deny").record("error", refusal.label);
                }
                refusal.record(&self.metrics, Door::Check);
                refusal.audit(&engine.audit, Door::Check);
                refused(&engine.cfg.ext_authz, &refusal)
            }
        }
    }

    async fn exchange(
        &self,
        engine: &Engine,
        conn: Option<&ConnInfo>,
        metadata: &MetadataMap,
        attrs: &AttributeContext,
    ) -> Result<CheckResponse, Refusal> {
        let ea = &engine.cfg.ext_authz;
        // Who asks, before anything it says is read.
        let caller = callers::admit(ea, engine.cfg.listen.grpc_tls.is_some(), conn, metadata)
            .map_err(|refused| Refusal::caller(&refused))?;
        let http = attrs.request.as_ref().and_then(|r| r.http.as_ref());
        let token = extract_token(http, ea).map_err(NoToken::refusal)?;
        let route = match target(attrs, ea) {
            Ok(Some(route)) => route,
            Ok(None) => return Err(Refusal::denied(&Denied::NoAudience).seen(caller.identity(), None, None)),
            // A typo in Envoy's route config must not quietly drop the actor
            // (and turn a refused delegation into an exchange).
            Err(bad) => return Err(bad.refusal().seen(caller.identity(), None, None)),
        };
        caller.may_ask_for(&route.audience).map_err(|refused| Refusal::caller(&refused))?;
        let scopes = route.scope.as_deref().map(split_scopes);

        // The actor: the mTLS peer (as a caller that is believed reports
        // it) and/or a validated actor token, never a plain header a caller
        // could write.
        let (peer, actor_token) = actor_sources(attrs, http, ea, route.actor, caller.believes_source_principal())?;
        let actor = engine.resolve_actor(peer, actor_token.as_deref()).await.map_err(|e| {
            Refusal::from_exchange(&e, Door::Check).seen(caller.identity(), None, Some(&route.audience))
        })?;
        let requested_subject =
            requested_subject(http, ea).map_err(|why| Refusal::bad_request("bad_requested_subject", why))?;

        let request = ExchangeRequest {
            subject_token: &token,
            audience: &route.audience,
            scopes,
            default_client_id: &ea.client_id,
            actor: actor.actor,
            requested_subject: requested_subject.as_deref(),
            actor_exp: actor.exp,
            client: None,
            origin: Origin { door: Some(AuditDoor::ExtAuthz), caller: caller.identity() },
        };
        // Built only when a rule's CEL expression reads it (`request.*`).
        let cel_request = engine
            .reads_request()
            .then(|| cel_request(attrs, http, caller.believes_source_principal(), engine.request_reads()));
        match engine.exchange_on(&request, cel_request.as_ref()).await {
            Ok(done) => {
                self.metrics.allow();
                debug!(rule = done.rule(), outcome = done.outcome().as_str(), caller = caller.identity(), "exchanged");
                Ok(ok_response(engine, http, &done, request.actor.as_ref()))
            }
            Err(e) => Err(Refusal::from_decision(&e, Door::Check).by(request.actor.as_ref())),
        }
    }
}

/// The actor sources the route consults, as the request carries them: the
/// mTLS peer identity Envoy reports (when the Check caller is `believed`
/// about it), and the token in the actor-token header.
fn actor_sources<'a>(
    attrs: &'a AttributeContext,
    http: Option<&'a AttributeContext_HttpRequest>,
    ea: &ExtAuthz,
    route_mode: Option<ActorMode>,
    believed: bool,
) -> Result<(Option<&'a str>, Option<Cow<'a, str>>), Refusal> {
    let mode = route_mode.unwrap_or(ea.actor.mode);
    let use_peer = believed && ea.actor.peer && matches!(mode, ActorMode::Peer | ActorMode::Any);
    let use_token = !ea.actor.token_header.is_empty() && matches!(mode, ActorMode::Token | ActorMode::Any);
    let peer =
        use_peer.then(|| attrs.source.as_ref().map(|s| s.principal.as_str()).unwrap_or("")).filter(|p| !p.is_empty());
    let token = match use_token.then(|| http.and_then(|h| header(h, &ea.actor.token_header))).flatten() {
        None => None,
        Some(raw) => Some(token_in_header(raw, &ea.actor.token_scheme).map_err(|_| {
            Refusal::bad_request("bad_actor_token_header", "the actor token header does not hold one token")
        })?),
    };
    Ok((peer, token))
}

/// The value of the impersonation header, if configured and present.
fn requested_subject(
    http: Option<&AttributeContext_HttpRequest>,
    ea: &ExtAuthz,
) -> Result<Option<String>, &'static str> {
    if ea.requested_subject_header.is_empty() {
        return Ok(None);
    }
    let Some(raw) = http.and_then(|h| header(h, &ea.requested_subject_header)) else {
        return Ok(None);
    };
    let value = raw.trim();
    if !is_one_subject(value) {
        return Err("the requested subject header must hold one subject identifier");
    }
    Ok(Some(value.to_owned()))
}

/// The request as the rules' CEL expressions see it (`request`): header
/// names lower-cased, and the source principal only from a caller believed
/// about it (as for the actor). Only what `reads` names is copied: the
/// expressions can read nothing else, and the cache key holds only that.
pub(crate) fn cel_request(
    attrs: &AttributeContext,
    http: Option<&AttributeContext_HttpRequest>,
    believed: bool,
    reads: &RequestReads,
) -> RequestAttrs {
    let mut r = RequestAttrs::default();
    let copy = |on: bool, v: &String| if on { v.clone() } else { String::new() };
    if let Some(h) = http {
        r.method = copy(reads.method, &h.method);
        r.host = copy(reads.host, &h.host);
        r.path = copy(reads.path, &h.path);
        r.query = copy(reads.query, &h.query);
        match &reads.headers {
            Keys::None => {}
            Keys::Some(names) => {
                for name in names {
                    if let Some(v) = header_any_case(h, name) {
                        r.headers.insert(name.clone(), v.into_owned());
                    }
                }
            }
            Keys::All => {
                for (k, v) in &h.headers {
                    r.headers.insert(k.to_ascii_lowercase(), v.clone());
                }
                for k in h.header_map.iter().flat_map(|m| &m.headers).map(|h| h.key.to_ascii_lowercase()) {
                    if let Some(v) = header(h, &k) {
                        r.headers.entry(k).or_insert_with(|| v.into_owned());
                    }
                }
            }
        }
    }
    r.context = match &reads.context {
        Keys::None => Default::default(),
        Keys::Some(names) => {
            names.iter().filter_map(|k| attrs.context_extensions.get(k).map(|v| (k.clone(), v.clone()))).collect()
        }
        Keys::All => attrs.context_extensions.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    if believed && reads.source_principal {
        r.source_principal = attrs.source.as_ref().map(|s| s.principal.clone()).unwrap_or_default();
    }
    if reads.destination_principal {
        r.destination_principal = attrs.destination.as_ref().map(|d| d.principal.clone()).unwrap_or_default();
    }
    r
}

/// A header by its lower-case name, whatever case the caller sent it in.
fn header_any_case<'a>(http: &'a AttributeContext_HttpRequest, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    header(http, name).or_else(|| {
        let (_, v) = http.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))?;
        Some(std::borrow::Cow::Borrowed(v.as_str()))
    })
}

/// Whether a requested subject (the ext_authz header, the token endpoint's
/// `requested_subject`) names one subject: not empty, at most
/// `MAX_REQUESTED_SUBJECT` bytes, no comma, no control character.
pub(crate) fn is_one_subject(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_REQUESTED_SUBJECT
        && !value.contains(',')
        && !value.chars().any(char::is_control)
}

/// The Check's span continues the trace of Envoy's own ext_authz call when
/// Envoy traces (gRPC metadata), else that of the request it authorizes.
fn continue_trace(span: &Span, metadata: &MetadataMap, req: &CheckRequest) {
    use crate::trace::{TRACEPARENT, TRACESTATE};
    let grpc = |name| metadata.get(name).and_then(|v| v.to_str().ok());
    if crate::trace::continue_trace(span, grpc(TRACEPARENT), grpc(TRACESTATE)) {
        return;
    }
    if let Some(http) = req.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref()) {
        let (parent, state) = (header(http, TRACEPARENT), header(http, TRACESTATE));
        crate::trace::continue_trace(span, parent.as_deref(), state.as_deref());
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(&self, request: Request<CheckRequest>) -> Result<Response<CheckResponse>, Status> {
        // The listener's `ConnInfo` of this request's connection.
        let (metadata, extensions, req) = request.into_parts();
        Ok(Response::new(self.decide_from(extensions.get::<ConnInfo>(), &metadata, req).await))
    }
}

/// Why no subject token could be taken from the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NoToken {
    Missing,
    WrongScheme,
    Several,
    Empty,
}

impl NoToken {
    fn label(self) -> &'static str {
        match self {
            NoToken::Missing => "missing_token",
            NoToken::WrongScheme => "wrong_scheme",
            NoToken::Several => "several_tokens",
            NoToken::Empty => "empty_token",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            NoToken::Missing => "the request carries no bearer token",
            NoToken::WrongScheme => "the credential is not a Bearer token",
            NoToken::Several => "the request carries more than one credential",
            NoToken::Empty => "the bearer token is empty",
        }
    }

    /// With no credentials at all, the challenge has no error code (RFC 6750 §3).
    fn refusal(self) -> Refusal {
        let condition = if self == NoToken::Missing { Condition::NoCredential } else { Condition::Malformed };
        Refusal::new(Class::Unauthenticated, condition, self.label(), self.describe())
            .logged(Level::DEBUG, format!("no usable subject token: {}", self.describe()))
    }
}

fn header<'a>(http: &'a AttributeContext_HttpRequest, name: &str) -> Option<std::borrow::Cow<'a, str>> {
    if let Some(v) = http.headers.get(name) {
        return Some(std::borrow::Cow::Borrowed(v.as_str()));
    }
    // With `encode_raw_headers`, Envoy sends a list with raw bytes instead.
    let map = http.header_map.as_ref()?;
    let values: Vec<String> =
        map.headers
            .iter()
            .filter(|h| h.key.eq_ignore_ascii_case(name))
            .map(|h| {
                if h.raw_value.is_empty() {
                    h.value.clone()
                } else {
                    String::from_utf8_lossy(&h.raw_value).into_owned()
                }
            })
            .collect();
    if values.is_empty() { None } else { Some(std::borrow::Cow::Owned(values.join(","))) }
}

use crate::pb::envoy::service::auth::v3::attribute_context::HttpRequest as AttributeContext_HttpRequest;

/// Takes the subject token from the configured header and scheme (borrowed
/// from the request when Envoy sent the usual header map).
fn extract_token<'a>(http: Option<&'a AttributeContext_HttpRequest>, ea: &ExtAuthz) -> Result<Cow<'a, str>, NoToken> {
    let raw = http.and_then(|h| header(h, &ea.subject_header)).ok_or(NoToken::Missing)?;
    token_in_header(raw, &ea.subject_scheme)
}

/// `token_in` of a header value, borrowed when the value is.
fn token_in_header<'a>(raw: Cow<'a, str>, scheme: &str) -> Result<Cow<'a, str>, NoToken> {
    match raw {
        Cow::Borrowed(raw) => token_in(raw, scheme).map(Cow::Borrowed),
        Cow::Owned(raw) => token_in(&raw, scheme).map(|t| Cow::Owned(t.to_owned())),
    }
}

/// The one token after `scheme` (case-insensitive; an empty scheme means a
/// bare token), for the subject and the actor token headers alike.
fn token_in<'a>(raw: &'a str, scheme: &str) -> Result<&'a str, NoToken> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Err(NoToken::Missing);
    }
    let token = if scheme.is_empty() {
        raw
    } else {
        let (given, rest) = raw.split_once(' ').ok_or(if raw.eq_ignore_ascii_case(scheme) {
            NoToken::Empty
        } else {
            NoToken::WrongScheme
        })?;
        // RFC 7235 §2.1: the scheme is case-insensitive.
        if !given.eq_ignore_ascii_case(scheme) {
            return Err(NoToken::WrongScheme);
        }
        rest.trim()
    };
    if token.is_empty() {
        return Err(NoToken::Empty);
    }
    // Envoy joins repeated headers with ','; a comma or blank inside means
    // several credentials. One SIMD search for the three (three `contains`
    // cost ~3,000 instructions on a 700-byte token, a scalar pass ~900;
    // issue 17). Other stray bytes are left to the validator.
    if memchr::memchr3(b',', b' ', b'\t', token.as_bytes()).is_some() {
        return Err(NoToken::Several);
    }
    Ok(token)
}

/// What the route asks for: audience, scope and actor sources.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RouteTarget {
    audience: String,
    scope: Option<String>,
    actor: Option<ActorMode>,
}

/// A route's `actor` context extension that is not a known mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the route's actor context extension {0:?} is not one of none, peer, token, any")]
struct UnknownActorMode(String);

impl UnknownActorMode {
    fn refusal(&self) -> Refusal {
        let why = self.to_string();
        Refusal::new(Class::Forbidden, Condition::Denied, "unknown_actor_mode", why.clone())
            .logged(Level::WARN, format!("route refused: {why}"))
    }
}

/// The target audience and requested scope: the route's context extensions,
/// else the host/path table, else the configured default.
fn target(attrs: &AttributeContext, ea: &ExtAuthz) -> Result<Option<RouteTarget>, UnknownActorMode> {
    let ctx: &HashMap<String, String> = &attrs.context_extensions;
    // One pass over the route's few extensions (Envoy's configuration, not
    // the client's) instead of three SipHashed lookups (issue 17).
    let (mut audience, mut scope, mut actor) = (None, None, None);
    for (name, value) in ctx {
        match name.as_str() {
            CTX_AUDIENCE => audience = Some(value),
            CTX_SCOPE => scope = Some(value),
            CTX_ACTOR => actor = Some(value),
            _ => {}
        }
    }
    let scope_ctx = scope.filter(|s| !s.trim().is_empty()).cloned();
    // An unknown actor mode is refused, never read as some other mode.
    let actor_ctx = match actor {
        None => None,
        Some(m) => Some(ActorMode::parse(m).ok_or_else(|| UnknownActorMode(m.chars().take(32).collect()))?),
    };
    if let Some(aud) = audience.filter(|a| !a.is_empty()) {
        return Ok(Some(RouteTarget {
            audience: aud.clone(),
            scope: scope_ctx.or_else(|| ea.default_scope.clone()),
            actor: actor_ctx,
        }));
    }
    let http = attrs.request.as_ref().and_then(|r| r.http.as_ref());
    if let Some(http) = http {
        let host = strip_port(&http.host).to_ascii_lowercase();
        let path = http.path.split(['?', '#']).next().unwrap_or("");
        if let Some(route) = ea
            .routes
            .iter()
            .find(|r| r.host.as_ref().is_none_or(|h| h.matches(&host)) && path.starts_with(&r.path_prefix))
        {
            return Ok(Some(RouteTarget {
                audience: route.audience.clone(),
                scope: scope_ctx.or_else(|| route.scope.clone()).or_else(|| ea.default_scope.clone()),
                actor: actor_ctx.or(route.actor),
            }));
        }
    }
    Ok(ea.default_audience.clone().map(|audience| RouteTarget {
        audience,
        scope: scope_ctx.or_else(|| ea.default_scope.clone()),
        actor: actor_ctx,
    }))
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map(|(h, _)| &host[..h.len() + 1]).unwrap_or(host);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn header_option(key: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_owned(), value, raw_value: Vec::new() }),
        // Overwrite, so the new token replaces the original and is never duplicated.
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn string_value(s: impl Into<String>) -> PbValue {
    PbValue { kind: Some(Kind::StringValue(s.into())) }
}

fn metadata(fields: impl IntoIterator<Item = (&'static str, String)>) -> Struct {
    Struct { fields: fields.into_iter().map(|(k, v)| (k.to_owned(), string_value(v))).collect() }
}

fn ok_response(
    engine: &Engine,
    http: Option<&AttributeContext_HttpRequest>,
    done: &Exchanged<'_>,
    actor: Option<&Actor>,
) -> CheckResponse {
    let ea = &engine.cfg.ext_authz;
    let mut value = String::with_capacity(ea.output_scheme.len() + 1 + 700);
    if !ea.output_scheme.is_empty() {
        value.push_str(&ea.output_scheme);
        value.push(' ');
    }
    done.write_token(&mut value);
    let mut headers = Vec::with_capacity(1);
    headers.push(header_option(&ea.output_header, value));
    headers.extend(done.downstream().map(|(name, token)| header_option(name, token.to_owned())));
    // Credentials stsgate consumed are not forwarded upstream. Only headers
    // the request carries are named: Envoy scans its header map per name.
    let present = |name: &str| http.is_some_and(|h| header(h, name).is_some());
    let mut headers_to_remove = Vec::new();
    if ea.remove_subject_header && ea.subject_header != ea.output_header && present(&ea.subject_header) {
        headers_to_remove.push(ea.subject_header.clone());
    }
    for extra in [&ea.actor.token_header, &ea.requested_subject_header] {
        if !extra.is_empty() && present(extra) {
            headers_to_remove.push(extra.clone());
        }
    }
    // A downstream-token header is stsgate's to write: when this answer sets
    // none there (another rule, no scope left), a caller's own value must not
    // reach the upstream as if stsgate had minted it.
    let downstream = engine.cfg.rules.iter().flat_map(|r| r.grant.downstream_tokens.iter().map(|d| &d.header));
    for name in downstream {
        let set = headers.iter().any(|h| h.header.as_ref().is_some_and(|h| &h.key == name));
        if !set && present(name) && !headers_to_remove.contains(name) {
            headers_to_remove.push(name.clone());
        }
    }
    CheckResponse {
        status: Some(RpcStatus { code: RPC_OK, message: String::new(), details: Vec::new() }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove,
            ..Default::default()
        })),
        dynamic_metadata: ok_metadata(&ea.dynamic_metadata, done, actor),
    }
}

/// The configured metadata fields of an allowed request; none at all (not an
/// empty struct) when none are configured.
fn ok_metadata(fields: &[MetadataField], done: &Exchanged<'_>, actor: Option<&Actor>) -> Option<Struct> {
    if fields.is_empty() {
        return None;
    }
    let needs_claims = fields
        .iter()
        .any(|f| matches!(f, MetadataField::Sub | MetadataField::Aud | MetadataField::Scope | MetadataField::Jti));
    let claims = if needs_claims { done.view() } else { None };
    let claim = |pick: fn(&crate::engine::ClaimsView<'_>) -> String| claims.as_ref().map(pick).unwrap_or_default();
    let fields = fields.iter().filter_map(|f| {
        let value = match f {
            MetadataField::Decision => done.outcome().as_str().to_owned(),
            MetadataField::Rule => done.rule().to_owned(),
            // Absent rather than empty, so access logs show Envoy's `-`.
            MetadataField::Actor => actor?.sub.clone(),
            MetadataField::SubjectIssuer => done.subject_issuer().to_owned(),
            MetadataField::Sub => claim(|c| c.sub.clone().into_owned()),
            MetadataField::Aud => claim(|c| c.aud.clone().into_owned()),
            MetadataField::Jti => claim(|c| c.jti.clone().into_owned()),
            MetadataField::Scope => claim(|c| c.scope.clone().unwrap_or_default().into_owned()),
        };
        Some((f.key().to_owned(), string_value(value)))
    });
    Some(Struct { fields: fields.collect() })
}

fn json_body(error: &str, description: &str) -> String {
    serde_json::json!({ "error": error, "error_description": description }).to_string()
}

/// A refusal as the Check answers it: 401 with a challenge, 400, 403 or 503.
fn refused(ea: &ExtAuthz, r: &Refusal) -> CheckResponse {
    let code = r.condition.code(Door::Check);
    match r.class {
        Class::Unauthenticated => unauthenticated(ea, code, &r.description),
        Class::InvalidRequest => bad_request(ea, &r.description),
        Class::Forbidden => forbidden(code.unwrap_or("access_denied"), r),
        Class::Unavailable | Class::Internal => unavailable(&r.description),
    }
}

fn denied(
    rpc_code: i32,
    http: StatusCode,
    reason: &str,
    mut headers: Vec<HeaderValueOption>,
    body: String,
    label: &str,
) -> CheckResponse {
    headers.push(header_option("content-type", "application/json".into()));
    headers.push(header_option("cache-control", "no-store".into()));
    CheckResponse {
        status: Some(RpcStatus { code: rpc_code, message: reason.to_owned(), details: Vec::new() }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http as i32 }),
            headers,
            body,
        })),
        dynamic_metadata: Some(metadata([("decision", "denied".to_owned()), ("reason", label.to_owned())])),
    }
}

/// 401 with an RFC 6750 §3 challenge.
fn unauthenticated(ea: &ExtAuthz, error: Option<&str>, description: &str) -> CheckResponse {
    let mut challenge = format!("Bearer realm=\"{}\"", ea.realm);
    if let Some(error) = error {
        // Descriptions are our own fixed texts; strip quotes anyway so the header stays well-formed.
        let desc: String = description.chars().filter(|c| *c != '"' && *c != '\\' && !c.is_control()).collect();
        challenge.push_str(&format!(", error=\"{error}\", error_description=\"{desc}\""));
    }
    let body = json_body(error.unwrap_or("unauthorized"), description);
    denied(
        RPC_UNAUTHENTICATED,
        StatusCode::Unauthorized,
        description,
        vec![header_option("www-authenticate", challenge)],
        body,
        error.unwrap_or("missing_token"),
    )
}

/// 400 for a request stsgate cannot read (RFC 6750 invalid_request).
fn bad_request(ea: &ExtAuthz, description: &str) -> CheckResponse {
    let challenge =
        format!("Bearer realm=\"{}\", error=\"invalid_request\", error_description=\"{description}\"", ea.realm);
    denied(
        RPC_INVALID_ARGUMENT,
        StatusCode::BadRequest,
        description,
        vec![header_option("www-authenticate", challenge)],
        json_body("invalid_request", description),
        "invalid_request",
    )
}

/// 403; the metadata names the refusal's reason and, when known, the actor
/// refused (access logs should show who was refused, not only why).
fn forbidden(code: &str, r: &Refusal) -> CheckResponse {
    let text = &r.description;
    let mut resp =
        denied(RPC_PERMISSION_DENIED, StatusCode::Forbidden, text, Vec::new(), json_body(code, text), r.label);
    if let (Some(md), Some(actor)) = (resp.dynamic_metadata.as_mut(), &r.actor) {
        md.fields.insert("actor".into(), string_value(actor.clone()));
    }
    resp
}

fn unavailable(description: &str) -> CheckResponse {
    denied(
        RPC_UNAVAILABLE,
        StatusCode::ServiceUnavailable,
        description,
        vec![header_option("retry-after", "1".into())],
        json_body("temporarily_unavailable", description),
        "unavailable",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;
    use crate::glob::Glob;
    use crate::pb::envoy::service::auth::v3::attribute_context::Request as AttrRequest;

    fn http_with(headers: &[(&str, &str)]) -> AttributeContext_HttpRequest {
        AttributeContext_HttpRequest {
            headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn token_extraction_handles_hostile_headers() {
        let ea = ExtAuthz::default();
        let get = |v: &str| extract_token(Some(&http_with(&[("authorization", v)])), &ea).map(|t| t.into_owned());
        assert_eq!(get("Bearer abc.def.ghi"), Ok("abc.def.ghi".into()));
        assert_eq!(get("bearer   abc.def.ghi  "), Ok("abc.def.ghi".into()));
        assert_eq!(get("Basic dXNlcjpwYXNz"), Err(NoToken::WrongScheme));
        assert_eq!(get("Bearer a.b.c,Bearer d.e.f"), Err(NoToken::Several));
        assert_eq!(get("Bearer a.b.c d.e.f"), Err(NoToken::Several));
        assert_eq!(get("Bearer"), Err(NoToken::Empty));
        assert_eq!(get("   "), Err(NoToken::Missing));
        assert_eq!(extract_token(Some(&http_with(&[])), &ea).unwrap_err(), NoToken::Missing);
        assert_eq!(extract_token(None, &ea).unwrap_err(), NoToken::Missing);
    }

    #[test]
    fn raw_header_map_is_read_when_headers_are_empty() {
        use crate::pb::envoy::config::core::v3::HeaderMap;
        let ea = ExtAuthz::default();
        let http = AttributeContext_HttpRequest {
            header_map: Some(HeaderMap {
                headers: vec![HeaderValue {
                    key: "authorization".into(),
                    value: String::new(),
                    raw_value: b"Bearer x.y.z".to_vec(),
                }],
            }),
            ..Default::default()
        };
        assert_eq!(extract_token(Some(&http), &ea).unwrap(), "x.y.z");
    }

    #[test]
    fn target_prefers_context_then_routes_then_default() {
        let mut ea = ExtAuthz {
            routes: vec![Route {
                host: Some(Glob::new("*.shop.example")),
                path_prefix: "/orders".into(),
                audience: "orders".into(),
                scope: Some("orders.read".into()),
                actor: Some(ActorMode::Peer),
            }],
            ..ExtAuthz::default()
        };
        ea.default_audience = Some("fallback".into());
        let attrs = |ctx: &[(&str, &str)], host: &str, path: &str| AttributeContext {
            context_extensions: ctx.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            request: Some(AttrRequest {
                http: Some(AttributeContext_HttpRequest { host: host.into(), path: path.into(), ..Default::default() }),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            target(&attrs(&[("audience", "billing"), ("scope", "b.read")], "x", "/"), &ea),
            Ok(Some(RouteTarget { audience: "billing".into(), scope: Some("b.read".into()), actor: None }))
        );
        let orders = Ok(Some(RouteTarget {
            audience: "orders".into(),
            scope: Some("orders.read".into()),
            actor: Some(ActorMode::Peer),
        }));
        assert_eq!(target(&attrs(&[], "api.shop.example:8443", "/orders/1?x=1"), &ea), orders);
        assert_eq!(target(&attrs(&[], "API.SHOP.EXAMPLE", "/orders"), &ea), orders);
        assert_eq!(
            target(&attrs(&[], "api.shop.example", "/other"), &ea),
            Ok(Some(RouteTarget { audience: "fallback".into(), scope: None, actor: None }))
        );
        // Typos of a mode are refused, never read as `none` (which would drop the peer).
        for typo in ["bogus", "Peer", "mtls", ""] {
            assert_eq!(
                target(&attrs(&[("actor", typo)], "api.shop.example", "/orders"), &ea),
                Err(UnknownActorMode(typo.into()))
            );
        }
        ea.default_audience = None;
        assert_eq!(target(&attrs(&[], "api.shop.example", "/other"), &ea), Ok(None));
    }

    #[test]
    fn ports_are_stripped_from_hosts() {
        assert_eq!(strip_port("a.example:8080"), "a.example");
        assert_eq!(strip_port("a.example"), "a.example");
        assert_eq!(strip_port("[::1]:8080"), "[::1]");
    }
}
