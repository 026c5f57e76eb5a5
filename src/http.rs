//! The HTTP listener: stsgate's public JWKS, its OAuth/OIDC metadata, health
//! and readiness probes, Prometheus metrics, and (in `dev`) the development IdP.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use crate::dev_idp::DevIdp;
use crate::exchange::Engine;
use crate::readiness::Readiness;

#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub readiness: Arc<Readiness>,
    pub registry: Arc<Registry>,
}

pub fn router(state: AppState, dev_idp: Option<(String, Arc<DevIdp>)>) -> Router {
    let mut app = Router::new()
        .route("/.well-known/jwks.json", get(jwks))
        .route("/.well-known/oauth-authorization-server", get(metadata))
        .route("/.well-known/openid-configuration", get(metadata))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics));
    // When the issuer has a path (https://host/sts), also serve the documents
    // where clients derive them from it: {issuer}/.well-known/...
    let issuer_path = issuer_path(&state.engine.cfg.issuer);
    if !issuer_path.is_empty() {
        app = app
            .route(&format!("{issuer_path}/.well-known/jwks.json"), get(jwks))
            .route(&format!("{issuer_path}/.well-known/openid-configuration"), get(metadata))
            .route(&format!("/.well-known/oauth-authorization-server{issuer_path}"), get(metadata));
    }
    let mut app = app.with_state(state);
    if let Some((path, idp)) = dev_idp {
        app = app.nest(&path, idp.router());
    }
    app
}

fn issuer_path(issuer: &str) -> String {
    reqwest::Url::parse(issuer).map(|u| u.path().trim_end_matches('/').to_owned()).unwrap_or_default()
}

async fn jwks(State(s): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/jwk-set+json"), (header::CACHE_CONTROL, "public, max-age=300")],
        s.engine.keys.jwks_json().to_owned(),
    )
        .into_response()
}

async fn metadata(State(s): State<AppState>) -> Json<Value> {
    let issuer = s.engine.cfg.issuer.trim_end_matches('/');
    let algs: Vec<&str> = {
        let mut v: Vec<&str> = s.engine.keys.signers().iter().map(|k| k.alg.as_str()).collect();
        v.sort();
        v.dedup();
        v
    };
    // RFC 8414 metadata. stsgate issues access tokens only (no ID tokens, no
    // interactive flows), so the OIDC-only fields describe that honestly.
    Json(json!({
        "issuer": s.engine.cfg.issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "grant_types_supported": [],
        "response_types_supported": [],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": algs,
        "token_signing_alg_values_supported": algs,
    }))
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
