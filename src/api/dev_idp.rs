//! The development identity provider of `stsgate dev`: an in-process OIDC-ish
//! issuer with a generated RS256 key, served over real HTTP (discovery, JWKS,
//! and a token endpoint that mints subject tokens on request) so that stsgate's
//! own fetch path is exercised exactly as with a real IdP. Never enable it in
//! production: anyone who can reach it can mint trusted subject tokens.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Form, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::clock::now_unix;
use crate::config::SignAlg;
use crate::engine::mint::{MintError, new_jti};
use crate::signing::{KeyError, Signer};

pub(crate) struct DevIdp {
    pub(crate) issuer: String,
    pub(crate) audience: String,
    signer: Signer,
}

impl DevIdp {
    pub(crate) fn new(issuer: String, audience: String) -> Result<DevIdp, KeyError> {
        // RS256, as most corporate IdPs sign.
        let signer = Signer::generate("dev-idp-rs256", SignAlg::RS256)?;
        Ok(DevIdp { issuer, audience, signer })
    }

    /// Mints a subject token the way an IdP would (typ `JWT`).
    pub(crate) fn mint(&self, req: &DevTokenRequest) -> Result<(String, u64), MintError> {
        let now = now_unix();
        let ttl = req.ttl.unwrap_or(3600).clamp(1, 24 * 3600);
        let mut claims = Map::new();
        claims.insert("iss".into(), json!(self.issuer));
        claims.insert("sub".into(), json!(req.sub));
        claims.insert("aud".into(), json!(req.aud.clone().unwrap_or_else(|| self.audience.clone())));
        claims.insert("iat".into(), json!(now));
        claims.insert("nbf".into(), json!(now));
        claims.insert("exp".into(), json!(now + ttl as i64));
        claims.insert("jti".into(), json!(new_jti()?));
        claims.insert("client_id".into(), json!(req.client_id.clone().unwrap_or_else(|| "dev-client".into())));
        if let Some(scope) = req.scope.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
            claims.insert("scope".into(), json!(scope));
        }
        Ok((self.signer.sign_typed("JWT", &claims)?, ttl))
    }

    pub(crate) fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks.json", get(jwks))
            .route("/token", post(token))
            .with_state(self)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DevTokenRequest {
    pub(crate) sub: String,
    #[serde(default)]
    pub(crate) scope: Option<String>,
    #[serde(default)]
    pub(crate) aud: Option<String>,
    /// Lifetime in seconds (default 3600).
    #[serde(default)]
    pub(crate) ttl: Option<u64>,
    #[serde(default)]
    pub(crate) client_id: Option<String>,
}

async fn discovery(State(idp): State<Arc<DevIdp>>) -> Json<Value> {
    Json(json!({
        "issuer": idp.issuer,
        "jwks_uri": format!("{}/jwks.json", idp.issuer),
        // Required by OIDC discovery; the dev IdP has no interactive login.
        "authorization_endpoint": format!("{}/authorize", idp.issuer),
        "token_endpoint": format!("{}/token", idp.issuer),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn jwks(State(idp): State<Arc<DevIdp>>) -> Json<Value> {
    Json(json!({ "keys": [idp.signer.public_jwk()] }))
}

async fn token(
    State(idp): State<Arc<DevIdp>>,
    form: Result<Form<DevTokenRequest>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(req)) = form else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_request", "error_description": "expected a form with sub and optional scope, aud, ttl, client_id"}))).into_response();
    };
    if req.sub.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "invalid_request", "error_description": "sub must not be empty"})),
        )
            .into_response();
    }
    match idp.mint(&req) {
        Ok((token, ttl)) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(json!({"access_token": token, "token_type": "Bearer", "expires_in": ttl})),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            Json(json!({"error": "server_error", "error_description": e.to_string()})),
        )
            .into_response(),
    }
}

/// Client side of `stsgate dev-token`: asks a running dev instance for a token.
pub(crate) async fn request_token(base: &str, req: &DevTokenRequest) -> anyhow::Result<String> {
    let mut form: Vec<(&str, String)> = vec![("sub", req.sub.clone())];
    if let Some(s) = &req.scope {
        form.push(("scope", s.clone()));
    }
    if let Some(a) = &req.aud {
        form.push(("aud", a.clone()));
    }
    if let Some(t) = req.ttl {
        form.push(("ttl", t.to_string()));
    }
    if let Some(c) = &req.client_id {
        form.push(("client_id", c.clone()));
    }
    let url = format!("{}/token", base.trim_end_matches('/'));
    let client = crate::trust::issuer::http_client()?;
    let resp = client
        .post(&url)
        .timeout(Duration::from_secs(5))
        .form(&form)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the dev IdP at {url} (is `stsgate dev` running?): {e}"))?;
    let status = resp.status();
    let body: Value =
        resp.json().await.map_err(|e| anyhow::anyhow!("{url} answered {status} with a non-JSON body: {e}"))?;
    if !status.is_success() {
        anyhow::bail!("{url} answered {status}: {body}");
    }
    body.get("access_token")
        .and_then(|t| t.as_str())
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{url} answered without access_token: {body}"))
}
