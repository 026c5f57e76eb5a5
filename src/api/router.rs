//! The HTTP listener: stsgate's public JWKS, its OAuth/OIDC metadata, health
//! and readiness probes, Prometheus metrics, the RFC 8693 token endpoint
//! (`token_endpoint.rs`), and (in `dev`) the development IdP.

use std::sync::Arc;

use arc_swap::ArcSwap;
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::api::dev_idp::DevIdp;
use crate::api::readiness::Readiness;
use crate::config::ClientAuthMethod;
use crate::engine::Engine;
use crate::metrics::Metrics;

#[derive(Clone)]
pub(crate) struct AppState {
    /// The engine in use: a reload's keys and issuer show at once.
    pub(crate) engine: Arc<ArcSwap<Engine>>,
    pub(crate) readiness: Arc<Readiness>,
    pub(crate) registry: Arc<Registry>,
    /// Decision counters and durations, shared with the ext_authz front door.
    pub(crate) metrics: Arc<Metrics>,
}

pub(crate) fn router(state: AppState, dev_idp: Option<(String, Arc<DevIdp>)>) -> Router {
    let mut app = Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/openid-configuration", get(metadata))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        // The issuer (and so its path) and the token endpoint can change on
        // reload: the documents under it and the token endpoint are matched
        // per request rather than routed at start.
        .fallback(issuer_documents)
        .with_state(state);
    if let Some((path, idp)) = dev_idp {
        app = app.nest(&path, idp.router());
    }
    app
}

fn issuer_path(issuer: &str) -> String {
    reqwest::Url::parse(issuer).map(|u| u.path().trim_end_matches('/').to_owned()).unwrap_or_default()
}

/// When the issuer has a path (https://host/sts), the documents also live
/// where clients derive them from it: `{path}/.well-known/jwks.json`,
/// `{path}/.well-known/openid-configuration` and (RFC 8414 §3)
/// `/.well-known/oauth-authorization-server{path}`. The token endpoint is
/// served at its configured path, and also under the issuer's path (where
/// the metadata's `token_endpoint` points).
async fn issuer_documents(State(s): State<AppState>, req: Request) -> Response {
    let engine = s.engine.load_full();
    let issuer_path = issuer_path(&engine.cfg.issuer);
    let method = req.method().clone();
    let path = req.uri().path();
    let te = &engine.cfg.token_endpoint;
    if te.enabled && (path == te.path || path.strip_prefix(issuer_path.as_str()) == Some(te.path.as_str())) {
        return crate::api::token_endpoint::handle(&engine, &s.metrics, req).await;
    }
    let doc = match path.strip_prefix(issuer_path.as_str()) {
        _ if issuer_path.is_empty() => None,
        Some("/.well-known/jwks.json") => Some(Doc::Jwks),
        Some("/.well-known/openid-configuration") => Some(Doc::Metadata),
        _ if path.strip_prefix("/.well-known/oauth-authorization-server") == Some(issuer_path.as_str()) => {
            Some(Doc::Metadata)
        }
        _ => None,
    };
    match doc {
        None => StatusCode::NOT_FOUND.into_response(),
        Some(_) if method != Method::GET && method != Method::HEAD => StatusCode::METHOD_NOT_ALLOWED.into_response(),
        Some(Doc::Jwks) => jwks(State(s)).await,
        Some(Doc::Metadata) => metadata(State(s)).await.into_response(),
    }
}

enum Doc {
    Jwks,
    Metadata,
}

async fn jwks(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json"), (header::CACHE_CONTROL, "public, max-age=300")],
        s.engine.load().keys.jwks_json().to_owned(),
    )
        .into_response()
}

async fn metadata(State(s): State<AppState>) -> Json<Value> {
    let engine = s.engine.load();
    let issuer = engine.cfg.issuer.trim_end_matches('/');
    let algs: Vec<&str> = {
        let mut v: Vec<&str> = engine.keys.signers().iter().map(|k| k.alg.as_str()).collect();
        v.sort();
        v.dedup();
        v
    };
    // RFC 8414 metadata. stsgate issues access tokens only (no ID tokens, no
    // interactive flows), so the OIDC-only fields describe that honestly.
    let mut doc = json!({
        "issuer": engine.cfg.issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "grant_types_supported": [],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "token_signing_alg_values_supported": algs,
    });
    let te = &engine.cfg.token_endpoint;
    if te.enabled {
        // Built like jwks_uri: the issuer URL plus the path.
        doc["token_endpoint"] = json!(format!("{issuer}{}", te.path));
        // No refresh_token: stsgate keeps no sessions.
        doc["grant_types_supported"] = json!([
            crate::api::token_endpoint::GRANT_TYPE_TOKEN_EXCHANGE,
            crate::api::jwt_bearer::GRANT_TYPE_JWT_BEARER
        ]);
        // Exactly the configured client methods, plus `none` when requests
        // without client authentication are served.
        let cfg = &engine.cfg;
        let methods: Vec<&str> = [
            ClientAuthMethod::ClientSecretBasic,
            ClientAuthMethod::ClientSecretPost,
            ClientAuthMethod::PrivateKeyJwt,
            ClientAuthMethod::TlsClientAuth,
            ClientAuthMethod::None,
        ]
        .into_iter()
        .filter(|m| {
            cfg.clients.iter().any(|c| c.auth == *m)
                || (*m == ClientAuthMethod::None && te.allows_unauthenticated(&cfg.clients))
        })
        .map(ClientAuthMethod::as_str)
        .collect();
        if methods.contains(&ClientAuthMethod::PrivateKeyJwt.as_str()) {
            doc["token_endpoint_auth_signing_alg_values_supported"] = json!(engine.clients.assertion_algs());
        }
        doc["token_endpoint_auth_methods_supported"] = json!(methods);
        if methods.contains(&ClientAuthMethod::TlsClientAuth.as_str()) {
            // RFC 8705 §3.4: stsgate does not bind the tokens it mints to the certificate.
            doc["tls_client_certificate_bound_access_tokens"] = json!(false);
        }
    }
    Json(doc)
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): State<AppState>) -> Response {
    let report = s.readiness.report();
    let status = if report.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, Json(report)).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        crate::metrics::render(&s.registry),
    )
        .into_response()
}
