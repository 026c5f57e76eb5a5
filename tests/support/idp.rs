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
    /// Serves as `Up`, but only after this delay (an overloaded IdP).
    Slow(Duration),
    /// Serves discovery, and answers the JWKS request with 200 and bytes
    /// that are not JSON (a proxy's error page, cut short).
    Garbage,
    /// Serves discovery, and a JWKS of several MiB: the published keys
    /// buried in junk entries.
    HugeJwks,
}

/// The size `Mode::HugeJwks` pads the JWKS to.
pub const HUGE_JWKS_BYTES: usize = 4 * 1024 * 1024;

/// The body `Mode::Garbage` answers with: half an HTML error page.
const GARBAGE: &[u8] = b"<html><head><title>502 Bad Gateway</title></head><body>\x00\xff{\"keys\": [";

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

/// The answer the mode gives instead of the document (the JWKS when
/// `jwks`), if any; after `Mode::Slow`'s delay.
async fn faulty(s: &IdpState, jwks: bool) -> Option<Response> {
    match s.mode() {
        Mode::Up | Mode::HugeJwks => None,
        Mode::Garbage if !jwks => None,
        Mode::Slow(delay) => {
            tokio::time::sleep(delay).await;
            None
        }
        Mode::Garbage => Some(
            (StatusCode::OK, [(header::CONNECTION, "close"), (header::CONTENT_TYPE, "application/json")], GARBAGE)
                .into_response(),
        ),
        Mode::Unavailable | Mode::Refuse => {
            Some(idp_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "down"})))
        }
    }
}

async fn idp_discovery(State(s): State<Arc<IdpState>>) -> Response {
    s.discovery_fetches.fetch_add(1, Ordering::SeqCst);
    if let Some(fault) = faulty(&s, false).await {
        return fault;
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
    // The keys are read before the mode: a test that takes the IdP down and
    // then rotates its key never has the new key served by a fetch that
    // passed the mode check just before.
    let keys = s.published.lock().unwrap().clone();
    if let Some(fault) = faulty(&s, true).await {
        return fault;
    }
    let mut junk = s.junk.lock().unwrap().clone();
    if s.mode() == Mode::HugeJwks {
        // Entries of ~1 KiB that no verifier can use, until the document is huge.
        let filler = "A".repeat(1000);
        junk.extend((0..HUGE_JWKS_BYTES / 1024).map(|i| json!({"kty": "oct", "kid": format!("pad-{i}"), "k": filler})));
    }
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

// --- RFC 7662 introspection (tests/introspection.rs) ------------------------
//
// A separate server, so that the introspection endpoint can be down, slow or
// lying while discovery and the JWKS of the IdP keep serving.

/// How the mock introspection endpoint behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IntrospectionMode {
    /// Answers what it was told for each token (`{"active":false}` otherwise).
    Up,
    /// 503 to every request.
    Down,
    /// As `Up`, after this delay.
    Slow(Duration),
    /// 200 with a body that is not JSON.
    Garbage,
    /// 200 with a JSON body of several MiB.
    Huge,
    /// `active: true` for any token, claiming to be `alice` of this issuer.
    Lie,
}

/// One request the endpoint received: its Authorization header and form
/// fields (the token included, as the IdP sees it).
#[derive(Debug, Clone)]
pub struct IntrospectionCall {
    pub authorization: Option<String>,
    pub form: std::collections::HashMap<String, String>,
}

struct IntrospectionState {
    issuer: String,
    mode: Mutex<IntrospectionMode>,
    answers: Mutex<std::collections::HashMap<String, Value>>,
    /// Userinfo answers by bearer token; others get 401.
    userinfo: Mutex<std::collections::HashMap<String, Value>>,
    calls: Mutex<Vec<IntrospectionCall>>,
    /// `(client_id, secret)`: requests without them (Basic or form) get 401.
    require_secret: Mutex<Option<(String, String)>>,
}

/// An RFC 7662 endpoint at `{url}` for tokens of `issuer`, controllable at
/// runtime; it counts and records every request.
pub struct MockIntrospection {
    pub url: String,
    state: Arc<IntrospectionState>,
    task: JoinHandle<()>,
}

impl Drop for MockIntrospection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn introspect_handler(
    State(s): State<Arc<IntrospectionState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let form: std::collections::HashMap<String, String> = form_urlencoded::parse(&body).into_owned().collect();
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    s.calls.lock().unwrap().push(IntrospectionCall { authorization: authorization.clone(), form: form.clone() });
    let mode = *s.mode.lock().unwrap();
    match mode {
        IntrospectionMode::Down => return idp_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "down"})),
        IntrospectionMode::Slow(delay) => tokio::time::sleep(delay).await,
        IntrospectionMode::Garbage => {
            return (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], GARBAGE).into_response();
        }
        IntrospectionMode::Huge => {
            let pad = "x".repeat(4 * 1024 * 1024);
            return idp_response(StatusCode::OK, json!({"active": true, "pad": pad}));
        }
        IntrospectionMode::Up | IntrospectionMode::Lie => {}
    }
    if let Some((id, secret)) = s.require_secret.lock().unwrap().clone() {
        use base64::Engine as _;
        let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}")));
        let by_basic = authorization.as_deref() == Some(basic.as_str());
        let by_form = form.get("client_id") == Some(&id) && form.get("client_secret") == Some(&secret);
        if !(by_basic || by_form) {
            return idp_response(StatusCode::UNAUTHORIZED, json!({"error": "invalid_client"}));
        }
    }
    let token = form.get("token").cloned().unwrap_or_default();
    let answer = if mode == IntrospectionMode::Lie {
        json!({"active": true, "iss": s.issuer, "sub": "alice", "aud": "stsgate", "exp": now() + 600})
    } else {
        s.answers.lock().unwrap().get(&token).cloned().unwrap_or_else(|| json!({"active": false}))
    };
    idp_response(StatusCode::OK, answer)
}

/// OIDC userinfo (GET with the bearer token), counted with the introspection calls.
async fn userinfo_handler(State(s): State<Arc<IntrospectionState>>, headers: axum::http::HeaderMap) -> Response {
    let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
    s.calls.lock().unwrap().push(IntrospectionCall { authorization: authorization.clone(), form: Default::default() });
    let mode = *s.mode.lock().unwrap();
    match mode {
        IntrospectionMode::Down => return idp_response(StatusCode::SERVICE_UNAVAILABLE, json!({"error": "down"})),
        IntrospectionMode::Slow(delay) => tokio::time::sleep(delay).await,
        _ => {}
    }
    let token = authorization.as_deref().and_then(|a| a.strip_prefix("Bearer ")).unwrap_or_default();
    let answer = s.userinfo.lock().unwrap().get(token).cloned();
    match answer {
        Some(claims) => idp_response(StatusCode::OK, claims),
        None => idp_response(StatusCode::UNAUTHORIZED, json!({"error": "invalid_token"})),
    }
}

impl MockIntrospection {
    /// The userinfo endpoint of the same server.
    pub fn userinfo_url(&self) -> String {
        self.url.replace("/introspect", "/userinfo")
    }

    /// The userinfo endpoint accepts `token` and answers `claims`.
    pub fn userinfo(&self, token: &str, claims: Value) {
        self.state.userinfo.lock().unwrap().insert(token.to_owned(), claims);
    }

    /// The userinfo endpoint no longer accepts `token` (401).
    pub fn userinfo_revoke(&self, token: &str) {
        self.state.userinfo.lock().unwrap().remove(token);
    }

    pub async fn start(issuer: &str) -> MockIntrospection {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind mock introspection");
        let url = format!("http://{}/introspect", listener.local_addr().unwrap());
        let state = Arc::new(IntrospectionState {
            issuer: issuer.to_owned(),
            mode: Mutex::new(IntrospectionMode::Up),
            answers: Mutex::new(Default::default()),
            userinfo: Mutex::new(Default::default()),
            calls: Mutex::new(Vec::new()),
            require_secret: Mutex::new(None),
        });
        let app = Router::new()
            .route("/introspect", axum::routing::post(introspect_handler))
            .route("/userinfo", get(userinfo_handler))
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockIntrospection { url, state, task }
    }

    /// Answers `answer` (the whole JSON object) for `token` from now on.
    pub fn answer(&self, token: &str, answer: Value) {
        self.state.answers.lock().unwrap().insert(token.to_owned(), answer);
    }

    /// An active answer for `token`: `sub`, `scope`, audience `stsgate`,
    /// valid for 10 minutes.
    pub fn activate(&self, token: &str, sub: &str, scope: &str) -> Value {
        let answer = json!({
            "active": true, "iss": self.state.issuer, "sub": sub, "scope": scope, "aud": "stsgate",
            "client_id": "web-app", "token_type": "Bearer", "iat": now(), "exp": now() + 600,
        });
        self.answer(token, answer.clone());
        answer
    }

    /// The token is revoked: `{"active": false}` from now on.
    pub fn revoke(&self, token: &str) {
        self.answer(token, json!({"active": false}));
    }

    pub fn set_mode(&self, mode: IntrospectionMode) {
        *self.state.mode.lock().unwrap() = mode;
    }

    /// Requires these client credentials (Basic or form); 401 otherwise.
    pub fn require_secret(&self, client_id: &str, secret: &str) {
        *self.state.require_secret.lock().unwrap() = Some((client_id.to_owned(), secret.to_owned()));
    }

    pub fn calls(&self) -> Vec<IntrospectionCall> {
        self.state.calls.lock().unwrap().clone()
    }

    pub fn call_count(&self) -> usize {
        self.state.calls.lock().unwrap().len()
    }
}
