//! The token endpoint: `POST {token_endpoint.path}` on the HTTP listener, a
//! form-encoded RFC 8693 Token Exchange or RFC 7523 §2.1 JWT bearer grant
//! (`api::jwt_bearer`) answered with the same engine as the ext_authz front
//! door.
//!
//! The client authenticates first (`api::client_auth`); the authenticated
//! client is a rule input (`match.clients`, `match.presenter:
//! client_in_audience`) and the minted token's `client_id`. The actor is only
//! ever the validated `actor_token`, never the HTTP peer. `requested_subject`
//! asks to impersonate another subject exactly as the ext_authz
//! requested-subject header does: only an impersonation rule that names the
//! proven actor and lists the subject grants it (audited by the engine), and
//! anything else is refused, never ignored.
//!
//! Choices where the RFCs leave room:
//! - exactly one target: `audience` and `resource` values together (identical
//!   values counted once) must name one audience; none falls back to
//!   `ext_authz.default_audience`;
//! - known parameters other than `audience`/`resource` may appear once
//!   (RFC 6749 §3.2); unknown ones are ignored, repeated or not; an empty
//!   value counts as omitted (RFC 6749 §3.1); a known parameter that would
//!   change the request's meaning in a way stsgate does not serve is refused
//!   (`requested_subject` or an actor with the JWT bearer grant, `assertion`
//!   with a token exchange, `authorization_details`);
//! - an invalid or unacceptable subject or actor token is `invalid_request`
//!   (RFC 8693 §2.2.2), an invalid assertion `invalid_grant` (RFC 7523 §3.1);
//! - without `scope` the token gets every scope the rule and the subject token
//!   allow (no `ext_authz.default_scope` here);
//! - `scope` is always in a successful answer when the token has scopes;
//! - no refresh token is ever issued: stsgate keeps no sessions.

use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::{Instrument as _, debug};

use crate::api::client_auth::{Presented, authenticate, tried_basic};
use crate::api::ext_authz::{MAX_REQUESTED_SUBJECT, is_one_subject};
use crate::api::jwt_bearer::{self, Asserted, GRANT_TYPE_JWT_BEARER};
use crate::api::refusal::{Class, Condition, Door, Refusal};
use crate::clock::now_unix;
use crate::config::GrantType;
use crate::engine::audit::{Door as AuditDoor, Origin};
use crate::engine::{Engine, ExchangeError, ExchangeRequest};
use crate::metrics::Metrics;
use crate::rules::split_scopes;

pub(crate) const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub(crate) const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub(crate) const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub(crate) const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Largest request body read.
pub(crate) const MAX_BODY_BYTES: usize = 64 * 1024;

/// Label of `stsgate_request_duration_seconds{api=...}`.
const API: &str = "token";

/// Token types accepted as `subject_token_type` / `actor_token_type`.
const ACCEPTED_INPUT_TYPES: [&str; 3] = [TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN];

/// RFC 8693 parameters that would change a JWT bearer grant's meaning: refused there.
const EXCHANGE_ONLY: [&str; 6] = [
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "requested_token_type",
    "requested_subject",
];

/// Parameters of other specifications that would narrow or change what is
/// asked for, which stsgate does not serve: refused rather than ignored.
const REFUSED: [&str; 1] = [
    // RFC 9396: ignoring it would mint a token broader than asked for.
    "authorization_details",
];

/// Parameters that may appear at most once.
const SINGLE: [&str; 13] = [
    "grant_type",
    "subject_token",
    "subject_token_type",
    "actor_token",
    "actor_token_type",
    "scope",
    "requested_token_type",
    "requested_subject",
    "client_id",
    "client_secret",
    "client_assertion",
    "client_assertion_type",
    "assertion",
];

/// A refusal as an RFC 6749 §5.2 error answer; the status follows the code.
fn refused(r: &Refusal, tried_basic: bool) -> Response {
    let code = r.condition.code(Door::Token).unwrap_or("invalid_request");
    let status = match r.condition {
        Condition::Method => StatusCode::METHOD_NOT_ALLOWED,
        Condition::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Condition::Denied => StatusCode::FORBIDDEN,
        Condition::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Condition::Client => StatusCode::UNAUTHORIZED,
        Condition::ClientRateLimited => StatusCode::TOO_MANY_REQUESTS,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut resp = json_response(status, &json!({ "error": code, "error_description": r.description }));
    match r.condition {
        Condition::Method | Condition::TooLarge => {
            if r.condition == Condition::Method {
                resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
            }
            // The body was not read: the connection cannot carry another
            // request, and a client must not pool it as if it could.
            resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Condition::Unavailable => {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(1));
        }
        Condition::ClientRateLimited => {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(r.retry_after.unwrap_or(1)));
        }
        // RFC 6749 §5.2: a client that tried the Authorization header is
        // challenged with the scheme it used.
        Condition::Client if tried_basic => {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"stsgate\""));
        }
        _ => {}
    }
    resp
}

/// JSON with the RFC 6749 §5.1 cache headers (on errors too: they can echo token details).
fn json_response(status: StatusCode, body: &serde_json::Value) -> Response {
    let mut resp = (status, body.to_string()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    resp
}

/// Answers one request to the token endpoint.
pub(crate) async fn handle(engine: &Engine, metrics: &Metrics, req: Request<Body>) -> Response {
    let started = Instant::now();
    let tried_basic = tried_basic(req.headers().get(header::AUTHORIZATION));
    let span = tracing::info_span!(
        target: crate::trace::TARGET, "token", otel.kind = "server", decision = tracing::field::Empty,
        error = tracing::field::Empty,
    );
    if !span.is_disabled() {
        let w3c = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
        crate::trace::continue_trace(&span, w3c(crate::trace::TRACEPARENT), w3c(crate::trace::TRACESTATE));
    }
    let resp = match handle_inner(engine, req).instrument(span.clone()).await {
        Ok(resp) => {
            if !span.is_disabled() {
                span.record("decision", "allow");
            }
            metrics.allow();
            resp
        }
        Err(refusal) => {
            if !span.is_disabled() {
                span.record("decision", "deny").record("error", refusal.label);
            }
            refusal.record(metrics, Door::Token);
            refusal.audit(&engine.audit, Door::Token);
            refused(&refusal, tried_basic)
        }
    };
    metrics.observe(API, started.elapsed());
    resp
}

async fn handle_inner(engine: &Engine, req: Request<Body>) -> Result<Response, Refusal> {
    if req.method() != Method::POST {
        let why = "the token endpoint accepts POST only";
        return Err(Refusal::new(Class::InvalidRequest, Condition::Method, "method", why));
    }
    let form = is_form(req.headers().get(header::CONTENT_TYPE));
    let authorization = req.headers().get(header::AUTHORIZATION).cloned();
    // RFC 8705: the connection's (or a trusted proxy's) client certificate.
    let client_cert = crate::api::client_auth::client_cert(engine, req.extensions().get(), req.headers());
    let too_large = || {
        let why = format!("the request body exceeds {MAX_BODY_BYTES} bytes");
        Refusal::new(Class::InvalidRequest, Condition::TooLarge, "body_too_large", why)
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(too_large());
    }
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await.map_err(|_| too_large())?;
    // Checked once the body is read, so that the connection stays usable.
    if !form {
        return Err(Refusal::bad_request(
            "content_type",
            "the request must be application/x-www-form-urlencoded (RFC 6749 §4.1.3)",
        ));
    }

    let params = Params::parse(&body)?;
    // The client first: an unauthenticated caller learns nothing of the request.
    let presented = Presented {
        authorization: authorization.as_ref(),
        client_id: params.one("client_id"),
        client_secret: params.one("client_secret"),
        client_assertion: params.one("client_assertion"),
        client_assertion_type: params.one("client_assertion_type"),
        client_cert,
    };
    let client = authenticate(engine, &presented)
        .instrument(tracing::info_span!(target: crate::trace::TARGET, "client_auth"))
        .await?;
    let form = Form::from_params(&params, engine)?;
    // RFC 6749 §5.2: a client may be limited to some grants (`grant_types`).
    if let Some(id) = client.as_deref() {
        let (grant, name) = match form.grant {
            GrantKind::TokenExchange => (GrantType::TokenExchange, GRANT_TYPE_TOKEN_EXCHANGE),
            GrantKind::JwtBearer => (GrantType::JwtBearer, GRANT_TYPE_JWT_BEARER),
        };
        if engine.cfg.clients.iter().any(|c| c.client_id == id && !c.may_use(grant)) {
            return Err(Refusal::unauthorized_client(id, name).seen(None, Some(id), Some(form.audience)));
        }
    }
    if form.grant == GrantKind::JwtBearer {
        return jwt_bearer_grant(engine, &form, client.as_deref()).await;
    }

    // The actor: the validated actor token only.
    let refuse = |e: ExchangeError| Refusal::from_exchange(&e, Door::Token);
    let seen = |r: Refusal| r.seen(None, client.as_deref(), Some(form.audience));
    let actor = engine.resolve_actor(None, form.actor_token).await.map_err(|e| seen(refuse(e)))?;

    let request = ExchangeRequest {
        subject_token: form.subject_token,
        audience: form.audience,
        scopes: form.scope.map(split_scopes),
        default_client_id: &engine.cfg.ext_authz.client_id,
        actor: actor.actor,
        requested_subject: form.requested_subject,
        actor_exp: actor.exp,
        client: client.as_deref(),
        origin: Origin { door: Some(AuditDoor::Token), caller: None },
    };
    let done = engine
        .exchange(&request)
        .await
        .map_err(|e| Refusal::from_decision(&e, Door::Token).by(request.actor.as_ref()))?;
    debug!(
        client = client.as_deref(),
        rule = done.rule(),
        outcome = done.outcome().as_str(),
        audience = form.audience,
        "token endpoint: exchanged"
    );
    Ok(issued(&done, Some(form.issued_token_type)))
}

/// RFC 7523 §2.1: the assertion checked (`api::jwt_bearer`), then the
/// exchange of a subject token without an actor. Refusals of the assertion
/// itself are `invalid_grant`.
async fn jwt_bearer_grant(engine: &Engine, form: &Form<'_>, client: Option<&str>) -> Result<Response, Refusal> {
    let asserted = jwt_bearer::check(engine, form.subject_token, client, now_unix()).await?;
    let request = ExchangeRequest {
        subject_token: form.subject_token,
        audience: form.audience,
        scopes: form.scope.map(split_scopes),
        default_client_id: &engine.cfg.ext_authz.client_id,
        actor: None,
        requested_subject: None,
        actor_exp: None,
        client,
        origin: Origin { door: Some(AuditDoor::Token), caller: None },
    };
    let done = match &asserted {
        Asserted::Issuer => engine.exchange(&request).await,
        Asserted::Client(subject) => engine.exchange_client_asserted(subject, &request),
    }
    .map_err(|e| match e {
        ExchangeError::Token(t) => jwt_bearer::bad_assertion(&t),
        e => Refusal::from_decision(&e, Door::Token),
    })?;
    debug!(
        client,
        rule = done.rule(),
        outcome = done.outcome().as_str(),
        audience = form.audience,
        by_client = matches!(asserted, Asserted::Client(_)),
        "token endpoint: JWT bearer grant"
    );
    Ok(issued(&done, None))
}

/// The RFC 6749 §5.1 answer (with RFC 8693's `issued_token_type` for a token exchange).
fn issued(done: &crate::engine::Exchanged<'_>, issued_token_type: Option<&str>) -> Response {
    let mut body = json!({
        "access_token": done.token(),
        "token_type": "Bearer",
        "expires_in": (done.exp() - now_unix()).max(1),
    });
    if let Some(kind) = issued_token_type {
        body["issued_token_type"] = json!(kind);
    }
    if let Some(scope) = done.view().and_then(|v| v.scope.map(|s| s.into_owned())).filter(|s| !s.is_empty()) {
        body["scope"] = json!(scope);
    }
    json_response(StatusCode::OK, &body)
}

fn is_form(content_type: Option<&HeaderValue>) -> bool {
    content_type
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"))
}

/// The decoded form, in order, without empty values (RFC 6749 §3.1: a
/// parameter without a value is as if omitted).
#[derive(Debug)]
struct Params(Vec<(String, String)>);

impl Params {
    fn parse(body: &[u8]) -> Result<Params, Refusal> {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(body)
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        for name in SINGLE {
            if pairs.iter().filter(|(k, _)| k == name).count() > 1 {
                let why = format!("parameter {name} is given more than once");
                return Err(Refusal::bad_request("invalid_request", why));
            }
        }
        Ok(Params(pairs))
    }

    fn one(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The grants the endpoint serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GrantKind {
    /// RFC 8693.
    TokenExchange,
    /// RFC 7523 §2.1.
    JwtBearer,
}

/// A checked Token Exchange or JWT bearer request.
#[derive(Debug)]
struct Form<'a> {
    grant: GrantKind,
    /// The subject token, or the JWT bearer grant's `assertion`.
    subject_token: &'a str,
    actor_token: Option<&'a str>,
    audience: &'a str,
    scope: Option<&'a str>,
    /// Whom the (proven) actor asks to become; the rules decide.
    requested_subject: Option<&'a str>,
    issued_token_type: &'static str,
}

impl<'a> Form<'a> {
    fn from_params(p: &'a Params, engine: &'a Engine) -> Result<Form<'a>, Refusal> {
        let invalid = |label: &'static str, why: String| Refusal::bad_request(label, why);
        let grant = match p.one("grant_type") {
            None => {
                return Err(invalid("missing_parameter", "grant_type is required".into()));
            }
            Some(GRANT_TYPE_TOKEN_EXCHANGE) => GrantKind::TokenExchange,
            Some(GRANT_TYPE_JWT_BEARER) => GrantKind::JwtBearer,
            Some(other) => {
                let other = shown(other);
                let why = format!(
                    "grant_type {other} is not supported; use {GRANT_TYPE_TOKEN_EXCHANGE} or {GRANT_TYPE_JWT_BEARER} \
                     (no refresh tokens are issued)"
                );
                let grant = Condition::UnsupportedGrant;
                return Err(Refusal::new(Class::InvalidRequest, grant, "unsupported_grant_type", why));
            }
        };
        if let Some(name) = REFUSED.iter().find(|n| p.one(n).is_some()) {
            return Err(invalid("unsupported_parameter", format!("parameter {name} is not supported")));
        }
        if grant == GrantKind::JwtBearer {
            if let Some(name) = EXCHANGE_ONLY.iter().find(|n| p.one(n).is_some()) {
                let why = format!("{name} is not a parameter of the JWT bearer grant (RFC 7523)");
                return Err(invalid("parameter_not_allowed", why));
            }
            let assertion =
                p.one("assertion").ok_or_else(|| invalid("missing_parameter", "assertion is required".into()))?;
            let audience = Self::audience(p, engine)?;
            return Ok(Form {
                grant,
                subject_token: assertion,
                actor_token: None,
                audience,
                scope: p.one("scope"),
                requested_subject: None,
                issued_token_type: TOKEN_TYPE_ACCESS_TOKEN,
            });
        }
        if p.one("assertion").is_some() {
            let why = "assertion is a parameter of the JWT bearer grant; a token exchange takes subject_token";
            return Err(invalid("parameter_not_allowed", why.into()));
        }
        let subject_token =
            p.one("subject_token").ok_or_else(|| invalid("missing_parameter", "subject_token is required".into()))?;
        let subject_type = p
            .one("subject_token_type")
            .ok_or_else(|| invalid("missing_parameter", "subject_token_type is required".into()))?;
        check_input_type("subject_token_type", subject_type).map_err(|why| invalid("token_type", why))?;

        let actor_token = match (p.one("actor_token"), p.one("actor_token_type")) {
            (None, None) => None,
            (Some(token), Some(kind)) => {
                check_input_type("actor_token_type", kind).map_err(|why| invalid("token_type", why))?;
                Some(token)
            }
            (Some(_), None) => {
                return Err(invalid("missing_parameter", "actor_token_type is required with actor_token".into()));
            }
            (None, Some(_)) => {
                return Err(invalid("missing_parameter", "actor_token_type is given without actor_token".into()));
            }
        };

        let issued_token_type = match p.one("requested_token_type") {
            None | Some(TOKEN_TYPE_ACCESS_TOKEN) => TOKEN_TYPE_ACCESS_TOKEN,
            Some(TOKEN_TYPE_JWT) => TOKEN_TYPE_JWT,
            Some(other) => {
                return Err(invalid(
                    "token_type",
                    format!(
                        "requested_token_type {} cannot be issued; use {TOKEN_TYPE_ACCESS_TOKEN} or {TOKEN_TYPE_JWT}",
                        shown(other)
                    ),
                ));
            }
        };

        let audience = Self::audience(p, engine)?;

        // Checked like the ext_authz requested-subject header.
        let requested_subject = p.one("requested_subject");
        if requested_subject.is_some_and(|s| !is_one_subject(s)) {
            let why = format!(
                "requested_subject must hold one subject identifier (at most {MAX_REQUESTED_SUBJECT} bytes, no comma or control character)"
            );
            return Err(invalid("bad_requested_subject", why));
        }

        Ok(Form {
            grant,
            subject_token,
            actor_token,
            audience,
            scope: p.one("scope"),
            requested_subject,
            issued_token_type,
        })
    }

    /// The one target: `audience` and `resource` values together, identical
    /// values counted once; none falls back to `ext_authz.default_audience`.
    fn audience(p: &'a Params, engine: &'a Engine) -> Result<&'a str, Refusal> {
        let mut targets: Vec<&str> = p.all("audience").chain(p.all("resource")).collect();
        targets.sort_unstable();
        targets.dedup();
        let bad_target = |label, why| Refusal::new(Class::InvalidRequest, Condition::Target, label, why);
        match targets.as_slice() {
            [one] => Ok(*one),
            [] => engine
                .cfg
                .ext_authz
                .default_audience
                .as_deref()
                .ok_or_else(|| bad_target("no_audience", "the request names no audience or resource")),
            _ => Err(bad_target("several_targets", "one audience or resource per request")),
        }
    }
}

fn check_input_type(param: &str, value: &str) -> Result<(), String> {
    if ACCEPTED_INPUT_TYPES.contains(&value) {
        Ok(())
    } else {
        Err(format!("{param} {} is not accepted; use {}", shown(value), ACCEPTED_INPUT_TYPES.join(", ")))
    }
}

/// A parameter value named in an error description: quoted when it looks
/// like the short identifier expected there (a URN or a name), otherwise only
/// its length, so that a token pasted into the wrong parameter is never
/// echoed (error bodies end up in client logs).
fn shown(value: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '/');
    if value.len() <= 80 && value.chars().all(plain) && value.matches('.').count() < 2 {
        format!("{value:?}")
    } else {
        format!("(a value of {} bytes)", value.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_named_in_errors_are_never_tokens() {
        assert_eq!(shown("urn:ietf:params:oauth:grant-type:password"), "\"urn:ietf:params:oauth:grant-type:password\"");
        assert_eq!(shown("refresh_token"), "\"refresh_token\"");
        assert_eq!(shown("eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"), "(a value of 41 bytes)");
        assert_eq!(shown("a b\"c"), "(a value of 5 bytes)");
        assert_eq!(shown(&"x".repeat(81)), "(a value of 81 bytes)");
    }

    #[test]
    fn content_type_is_the_form_media_type() {
        let ok = HeaderValue::from_static("Application/X-WWW-Form-Urlencoded; charset=UTF-8");
        assert!(is_form(Some(&ok)));
        assert!(!is_form(Some(&HeaderValue::from_static("application/json"))));
        assert!(!is_form(None));
    }

    #[test]
    fn repeated_single_parameters_are_refused_and_empty_values_omitted() {
        let e = Params::parse(b"scope=a&scope=b").unwrap_err();
        assert_eq!(e.condition.code(Door::Token), Some("invalid_request"));
        assert!(e.description.contains("scope"), "{}", e.description);
        let p = Params::parse(b"scope=&scope=a+b&x=1&x=2&audience=o&audience=p").unwrap();
        assert_eq!(p.one("scope"), Some("a b"));
        assert_eq!(p.all("audience").collect::<Vec<_>>(), ["o", "p"]);
    }
}
