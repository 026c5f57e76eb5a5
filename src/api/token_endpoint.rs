//! The RFC 8693 token endpoint: `POST {token_endpoint.path}` on the HTTP
//! listener, a form-encoded Token Exchange request answered with the same
//! engine as the ext_authz front door.
//!
//! There is no client authentication: the subject token (and the actor token,
//! when given) are the credentials, and the rules decide. The actor is only
//! ever the validated `actor_token`, never the HTTP peer, and nobody can ask
//! to impersonate another subject here.
//!
//! Choices where the RFCs leave room:
//! - exactly one target: `audience` and `resource` values together (identical
//!   values counted once) must name one audience; none falls back to
//!   `ext_authz.default_audience`;
//! - known parameters other than `audience`/`resource` may appear once
//!   (RFC 6749 §3.2); unknown ones are ignored, repeated or not; an empty
//!   value counts as omitted (RFC 6749 §3.1);
//! - without `scope` the token gets every scope the rule and the subject token
//!   allow (no `ext_authz.default_scope` here);
//! - `scope` is always in a successful answer when the token has scopes.

use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::{debug, warn};

use crate::engine::{Engine, ExchangeError, ExchangeRequest};
use crate::metrics::Metrics;
use crate::rules::Denied;
use crate::clock::now_unix;
use crate::trust::validator::TokenError;

pub const GRANT_TYPE_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";

/// Largest request body read.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Label of `stsgate_request_duration_seconds{api=...}`.
const API: &str = "token";

/// Token types accepted as `subject_token_type` / `actor_token_type`.
const ACCEPTED_INPUT_TYPES: [&str; 3] = [TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_JWT, TOKEN_TYPE_ID_TOKEN];

/// Parameters that may appear at most once.
const SINGLE: [&str; 7] =
    ["grant_type", "subject_token", "subject_token_type", "actor_token", "actor_token_type", "scope", "requested_token_type"];

/// An RFC 6749 §5.2 error answer.
#[derive(Debug)]
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
    /// Seconds, for 503.
    retry_after: Option<u32>,
}

impl OAuthError {
    fn new(status: StatusCode, code: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError { status, code, description: description.into(), retry_after: None }
    }

    fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_request", description)
    }

    fn unavailable(description: impl Into<String>) -> OAuthError {
        OAuthError { retry_after: Some(1), ..OAuthError::new(StatusCode::SERVICE_UNAVAILABLE, "temporarily_unavailable", description) }
    }

    fn into_response(self) -> Response {
        let body = json!({ "error": self.code, "error_description": self.description });
        let mut resp = json_response(self.status, &body);
        if let Some(secs) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
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
pub async fn handle(engine: &Engine, metrics: &Metrics, req: Request<Body>) -> Response {
    let started = Instant::now();
    let resp = match handle_inner(engine, metrics, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    };
    metrics.observe(API, started.elapsed());
    resp
}

async fn handle_inner(engine: &Engine, metrics: &Metrics, req: Request<Body>) -> Result<Response, OAuthError> {
    let bad = |label: &'static str, e: OAuthError| {
        metrics.bad_request(label);
        e
    };
    if req.method() != Method::POST {
        let mut resp = OAuthError::new(StatusCode::METHOD_NOT_ALLOWED, "invalid_request", "the token endpoint accepts POST only")
            .into_response();
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        metrics.bad_request("method");
        return Ok(resp);
    }
    if !is_form(req.headers().get(header::CONTENT_TYPE)) {
        return Err(bad(
            "content_type",
            OAuthError::invalid_request("the request must be application/x-www-form-urlencoded (RFC 6749 §4.1.3)"),
        ));
    }
    let too_large = || {
        OAuthError::new(StatusCode::PAYLOAD_TOO_LARGE, "invalid_request", format!("the request body exceeds {MAX_BODY_BYTES} bytes"))
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return Err(bad("body_too_large", too_large()));
    }
    let body = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES).await.map_err(|_| bad("body_too_large", too_large()))?;

    let params = Params::parse(&body).map_err(|e| bad("invalid_request", e))?;
    let form = Form::from_params(&params, engine).map_err(|(label, e)| bad(label, e))?;

    // The actor: the validated actor token only.
    let (actor, actor_exp) = match form.actor_token {
        None => (None, None),
        Some(token) => match engine.actor_from_token(token).await {
            Ok((actor, exp)) => (Some(actor), Some(exp)),
            Err(ExchangeError::ActorToken(e)) => return Err(token_refused(metrics, "actor token", e)),
            Err(other) => {
                metrics.unavailable("actor_token");
                warn!("actor token: {other}");
                return Err(OAuthError::unavailable("the actor token could not be checked"));
            }
        },
    };

    let request = ExchangeRequest {
        subject_token: form.subject_token,
        audience: form.audience,
        scopes: form.scope.map(|s| s.split_whitespace().map(str::to_owned).collect()),
        default_client_id: &engine.cfg.ext_authz.client_id,
        actor,
        requested_subject: None,
        actor_exp,
    };
    match engine.exchange(&request).await {
        Ok(done) => {
            metrics.allow();
            debug!(rule = done.rule(), outcome = done.outcome().as_str(), audience = form.audience, "token endpoint: exchanged");
            let mut body = json!({
                "access_token": done.token(),
                "issued_token_type": form.issued_token_type,
                "token_type": "Bearer",
                "expires_in": (done.exp() - now_unix()).max(1),
            });
            if let Some(scope) = done.view().and_then(|v| v.scope.map(|s| s.into_owned())).filter(|s| !s.is_empty()) {
                body["scope"] = json!(scope);
            }
            Ok(json_response(StatusCode::OK, &body))
        }
        Err(ExchangeError::Token(e)) => Err(token_refused(metrics, "subject token", e)),
        Err(ExchangeError::ActorToken(e)) => Err(token_refused(metrics, "actor token", e)),
        Err(ExchangeError::Denied(d)) => {
            metrics.deny(d.label());
            debug!(audience = form.audience, "token endpoint: exchange refused: {d}");
            Err(denied(&d))
        }
        Err(ExchangeError::Mint(e)) => {
            metrics.unavailable("mint_failed");
            warn!("minting failed: {e}");
            Err(OAuthError::unavailable("the token could not be issued"))
        }
    }
}

/// A refused rule decision: invalid_target / invalid_scope are the client's
/// request (400), anything else is a policy refusal (403 access_denied).
fn denied(d: &Denied) -> OAuthError {
    let code = d.oauth_code();
    let status = if code == "access_denied" { StatusCode::FORBIDDEN } else { StatusCode::BAD_REQUEST };
    OAuthError::new(status, code, d.to_string())
}

/// A subject or actor token that did not validate: 400 invalid_grant, or 503
/// when the issuer's keys are not available.
fn token_refused(metrics: &Metrics, which: &str, e: TokenError) -> OAuthError {
    if e.is_unavailable() {
        metrics.unavailable(e.label());
        warn!("cannot validate {which}: {e}");
        return OAuthError::unavailable(format!("the {which} issuer's keys are not available; try again"));
    }
    metrics.unauthenticated(e.label());
    debug!("token endpoint: {which} refused: {e}");
    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_grant", format!("{which}: {e}"))
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
    fn parse(body: &[u8]) -> Result<Params, OAuthError> {
        let pairs: Vec<(String, String)> =
            form_urlencoded::parse(body).filter(|(_, v)| !v.is_empty()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        for name in SINGLE {
            if pairs.iter().filter(|(k, _)| k == name).count() > 1 {
                return Err(OAuthError::invalid_request(format!("parameter {name} is given more than once")));
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

/// A checked Token Exchange request.
#[derive(Debug)]
struct Form<'a> {
    subject_token: &'a str,
    actor_token: Option<&'a str>,
    audience: &'a str,
    scope: Option<&'a str>,
    issued_token_type: &'static str,
}

type FormError = (&'static str, OAuthError);

impl<'a> Form<'a> {
    fn from_params(p: &'a Params, engine: &'a Engine) -> Result<Form<'a>, FormError> {
        let invalid = |label: &'static str, why: String| (label, OAuthError::invalid_request(why));
        match p.one("grant_type") {
            None => return Err(invalid("missing_parameter", "grant_type is required".into())),
            Some(GRANT_TYPE_TOKEN_EXCHANGE) => {}
            Some(other) => {
                return Err((
                    "unsupported_grant_type",
                    OAuthError::new(
                        StatusCode::BAD_REQUEST,
                        "unsupported_grant_type",
                        format!("grant_type {other:?} is not supported; use {GRANT_TYPE_TOKEN_EXCHANGE}"),
                    ),
                ));
            }
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
            (Some(_), None) => return Err(invalid("missing_parameter", "actor_token_type is required with actor_token".into())),
            (None, Some(_)) => return Err(invalid("missing_parameter", "actor_token_type is given without actor_token".into())),
        };

        let issued_token_type = match p.one("requested_token_type") {
            None | Some(TOKEN_TYPE_ACCESS_TOKEN) => TOKEN_TYPE_ACCESS_TOKEN,
            Some(TOKEN_TYPE_JWT) => TOKEN_TYPE_JWT,
            Some(other) => {
                return Err(invalid(
                    "token_type",
                    format!("requested_token_type {other:?} cannot be issued; use {TOKEN_TYPE_ACCESS_TOKEN} or {TOKEN_TYPE_JWT}"),
                ));
            }
        };

        let mut targets: Vec<&str> = p.all("audience").chain(p.all("resource")).collect();
        targets.sort_unstable();
        targets.dedup();
        let audience = match targets.as_slice() {
            [one] => *one,
            [] => match engine.cfg.ext_authz.default_audience.as_deref() {
                Some(default) => default,
                None => {
                    return Err((
                        "no_audience",
                        OAuthError::new(StatusCode::BAD_REQUEST, "invalid_target", "the request names no audience or resource"),
                    ));
                }
            },
            _ => {
                return Err((
                    "several_targets",
                    OAuthError::new(StatusCode::BAD_REQUEST, "invalid_target", "one audience or resource per request"),
                ));
            }
        };

        Ok(Form { subject_token, actor_token, audience, scope: p.one("scope"), issued_token_type })
    }
}

fn check_input_type(param: &str, value: &str) -> Result<(), String> {
    if ACCEPTED_INPUT_TYPES.contains(&value) {
        Ok(())
    } else {
        Err(format!("{param} {value:?} is not accepted; use {}", ACCEPTED_INPUT_TYPES.join(", ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(e.code, "invalid_request");
        assert!(e.description.contains("scope"), "{}", e.description);
        let p = Params::parse(b"scope=&scope=a+b&x=1&x=2&audience=o&audience=p").unwrap();
        assert_eq!(p.one("scope"), Some("a b"));
        assert_eq!(p.all("audience").collect::<Vec<_>>(), ["o", "p"]);
    }
}
