//! The mock OIDC identity provider: discovery and JWKS over real HTTP on
//! 127.0.0.1:0, with keys, availability and honesty controlled at runtime.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::jose::{IdpKey, KeyKind, jwks_doc};
use super::process::now;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Serves discovery and JWKS.
    Up,
    /// Answers every request with 503.
    Unavailable,
    /// Accepts and immediately drops every connection.
    Refuse,
}

struct IdpState {
    issuer: String,
    mode: Mutex<Mode>,
    /// Published signing keys, in JWKS order.
    published: Mutex<Vec<Arc<IdpKey>>>,
    /// Every key ever generated, published or not.
    all: Mutex<Vec<Arc<IdpKey>>>,
    /// The key `token()` signs with.
    default_kid: Mutex<String>,
    junk: Mutex<Vec<Value>>,
    lie_issuer: Mutex<Option<String>>,
    jwks_fetches: AtomicUsize,
    discovery_fetches: AtomicUsize,
    dropped_connections: AtomicUsize,
}

impl IdpState {
    fn mode(&self) -> Mode {
        *self.mode.lock().unwrap()
    }
}

/// A real OIDC-ish IdP on 127.0.0.1:0, controllable at runtime.
pub struct MockIdp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, the `iss` of its tokens.
    pub issuer: String,
    state: Arc<IdpState>,
    task: JoinHandle<()>,
}

impl Drop for MockIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Drops connections while the IdP is in `Mode::Refuse`.
struct GatedListener {
    inner: TcpListener,
    state: Arc<IdpState>,
}

impl axum::serve::Listener for GatedListener {
    type Io = TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (TcpStream, SocketAddr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    if self.state.mode() == Mode::Refuse {
                        self.state.dropped_connections.fetch_add(1, Ordering::SeqCst);
                        drop(stream);
                        continue;
                    }
                    return (stream, addr);
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

fn idp_response(status: StatusCode, body: Value) -> Response {
    // `connection: close` keeps reqwest from pooling, so `Mode::Refuse` applies
    // to the very next request.
    (status, [(header::CONNECTION, "close"), (header::CONTENT_TYPE, "application/json")], body.to_string())
        .into_response()
}

async fn idp_discovery(State(s): State<Arc<IdpState>>) -> Response {
    s.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if s.mode() != Mode::Up {
        return idp_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "down"}));
    }
    let issuer = s.lie_issuer.lock().unwrap().clone().unwrap_or_else(|| s.issuer.clone());
    idp_response(
        StatusCode::OK,
        json!({
            "issuer": issuer,
            "jwks_uri": format!("{}/jwks.json", s.issuer),
            "authorization_endpoint": format!("{}/authorize", s.issuer),
            "token_endpoint": format!("{}/token", s.issuer),
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256", "ES256", "ES384", "EdDSA"],
        }),
    )
}

async fn idp_jwks(State(s): State<Arc<IdpState>>) -> Response {
    s.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    if s.mode() != Mode::Up {
        return idp_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "down"}));
    }
    let keys = s.published.lock().unwrap().clone();
    let junk = s.junk.lock().unwrap().clone();
    idp_response(StatusCode::OK, jwks_doc(&keys, &junk))
}

impl MockIdp {
    /// Starts an IdP with one published RS256 key `rsa-1`, serving.
    pub async fn start() -> MockIdp {
        MockIdp::start_in(Mode::Up).await
    }

    pub async fn start_in(mode: Mode) -> MockIdp {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock IdP");
        let addr = listener.local_addr().unwrap();
        let issuer = format!("http://{addr}");
        let first = IdpKey::generate(KeyKind::Rsa, "rsa-1");
        let state = Arc::new(IdpState {
            issuer: issuer.clone(),
            mode: Mutex::new(mode),
            published: Mutex::new(vec![first.clone()]),
            all: Mutex::new(vec![first]),
            default_kid: Mutex::new("rsa-1".into()),
            junk: Mutex::new(Vec::new()),
            lie_issuer: Mutex::new(None),
            jwks_fetches: AtomicUsize::new(0),
            discovery_fetches: AtomicUsize::new(0),
            dropped_connections: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(idp_discovery))
            .route("/jwks.json", get(idp_jwks))
            .with_state(state.clone());
        let gated = GatedListener { inner: listener, state: state.clone() };
        let task = tokio::spawn(async move {
            let _ = axum::serve(gated, app).await;
        });
        MockIdp { addr, issuer, state, task }
    }

    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/jwks.json", self.issuer)
    }

    pub fn set_mode(&self, mode: Mode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    pub fn down(&self) {
        self.set_mode(Mode::Unavailable);
    }

    pub fn refuse(&self) {
        self.set_mode(Mode::Refuse);
    }

    pub fn up(&self) {
        self.set_mode(Mode::Up);
    }

    /// Makes the discovery document name another issuer (or the truth again).
    pub fn lie_about_issuer(&self, issuer: Option<&str>) {
        *self.state.lie_issuer.lock().unwrap() = issuer.map(str::to_owned);
    }

    /// Publishes unusable entries beside the signing keys.
    pub fn set_junk(&self, entries: Vec<Value>) {
        *self.state.junk.lock().unwrap() = entries;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    pub fn discovery_fetches(&self) -> usize {
        self.state.discovery_fetches.load(Ordering::SeqCst)
    }

    /// Connections accepted and dropped while in `Mode::Refuse`.
    pub fn dropped_connections(&self) -> usize {
        self.state.dropped_connections.load(Ordering::SeqCst)
    }

    /// Generates a key; published in the JWKS only when `publish`.
    pub fn new_key(&self, kind: KeyKind, kid: &str, publish: bool) -> Arc<IdpKey> {
        let key = IdpKey::generate(kind, kid);
        self.state.all.lock().unwrap().push(key.clone());
        if publish {
            self.publish(&key);
        }
        key
    }

    pub fn publish(&self, key: &Arc<IdpKey>) {
        let mut published = self.state.published.lock().unwrap();
        if !published.iter().any(|k| k.kid == key.kid) {
            published.push(key.clone());
        }
    }

    pub fn unpublish(&self, kid: &str) {
        self.state.published.lock().unwrap().retain(|k| k.kid != kid);
    }

    /// Key rotation: a new RSA key is published and becomes the signing key.
    pub fn rotate(&self, new_kid: &str) -> Arc<IdpKey> {
        let key = self.new_key(KeyKind::Rsa, new_kid, true);
        *self.state.default_kid.lock().unwrap() = new_kid.to_owned();
        key
    }

    pub fn key_by_kid(&self, kid: &str) -> Option<Arc<IdpKey>> {
        self.state.all.lock().unwrap().iter().find(|k| k.kid == kid).cloned()
    }

    /// The key `token()` signs with.
    pub fn key(&self) -> Arc<IdpKey> {
        let kid = self.state.default_kid.lock().unwrap().clone();
        self.key_by_kid(&kid).expect("default key exists")
    }

    /// Typical subject-token claims: valid for 10 minutes, audience `stsgate`.
    pub fn claims(&self, sub: &str, scope: &str) -> Value {
        let now = now();
        json!({
            "iss": self.issuer,
            "sub": sub,
            "aud": "stsgate",
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": format!("jti-{sub}-{now}"),
            "scope": scope,
        })
    }

    /// `claims` signed by the current default key with an IdP-style header.
    pub fn token(&self, claims: &Value) -> String {
        self.key().token(claims)
    }

    /// Signs with the key named by the header's `kid` (else the default key),
    /// leaving the header exactly as given.
    pub fn token_with_header(&self, header: &Value, claims: &Value) -> String {
        let key = header
            .get("kid")
            .and_then(|k| k.as_str())
            .and_then(|kid| self.key_by_kid(kid))
            .unwrap_or_else(|| self.key());
        key.sign(header, claims)
    }
}
