//! Shared integration-test harness: a controllable mock OIDC identity provider
//! on a real HTTP port, a builder that starts the real stsgate server on
//! ephemeral ports, and helpers to build `CheckRequest`s and verify minted
//! tokens independently of stsgate's own code.
//!
//! Each test binary uses only part of this module.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair,
};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tonic::transport::Channel;

use stsgate::config::Config;
use stsgate::pb::envoy::config::core::v3::HeaderValueOption;
use stsgate::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Request as AttrRequest};
use stsgate::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use stsgate::pb::envoy::service::auth::v3::check_response::HttpResponse;
use stsgate::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse};
use stsgate::runtime::reload::{ReloadError, Reloaded};
use stsgate::runtime::server::{Listeners, Server};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// stsgate's own issuer in every harness configuration.
pub const STS_ISSUER: &str = "https://sts.test";
/// The kid of stsgate's (ephemeral, ES256) signing key in the harness.
pub const STS_KID: &str = "sts-es256";
/// google.rpc.Code values.
pub const RPC_OK: i32 = 0;
pub const RPC_PERMISSION_DENIED: i32 = 7;
pub const RPC_UNAVAILABLE: i32 = 14;
pub const RPC_UNAUTHENTICATED: i32 = 16;

/// How long any "eventually" condition may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
}

/// Logs to the test output when RUST_LOG is set (e.g. `RUST_LOG=stsgate=debug`).
pub fn init_logging() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
    stsgate::install_crypto_provider();
}

/// Polls `cond` every 10 ms until it holds or `WAIT` passes.
pub async fn eventually<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    loop {
        if cond().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out after {WAIT:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------------------
// JOSE helpers (independent of stsgate)
// ---------------------------------------------------------------------------

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64json(v: &Value) -> String {
    b64(v.to_string().as_bytes())
}

/// `base64url(header).base64url(claims).signature` signed with `key`/`alg`,
/// whatever the header claims the algorithm is.
pub fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let signing_input = format!("{}.{}", b64json(header), b64json(claims));
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), key, alg).expect("signing failed");
    format!("{signing_input}.{sig}")
}

/// An unsigned token: `alg: none` and an empty signature.
pub fn forge_none(claims: &Value) -> String {
    format!("{}.{}.", b64json(&json!({"alg": "none", "typ": "JWT"})), b64json(claims))
}

/// An HS256 token whose HMAC secret is `secret` (the alg-confusion attack
/// uses the issuer's public key as the secret).
pub fn forge_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": "HS256", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    sign_raw(&header, claims, &EncodingKey::from_secret(secret), Algorithm::HS256)
}

/// Decodes the (unverified) header and payload of a compact JWT.
pub fn peek(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut decode = |what: &str| -> Value {
        let part = parts.next().unwrap_or_else(|| panic!("token has no {what}: {token}"));
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
    };
    let h = decode("header");
    let p = decode("payload");
    (h, p)
}

/// Minimal DER reader: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, hdr) = if input[1] < 0x80 {
        (input[1] as usize, 2)
    } else {
        let n = (input[1] & 0x7f) as usize;
        let len = input[2..2 + n].iter().fold(0usize, |l, b| (l << 8) | *b as usize);
        (len, 2 + n)
    };
    (tag, &input[hdr..hdr + len], &input[hdr + len..])
}

/// jsonwebtoken's aws-lc backend wants PKCS#1 `RSAPrivateKey` DER: the OCTET
/// STRING inside PKCS#8 `PrivateKeyInfo { version, algorithm, privateKey }`.
fn pkcs1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    let (tag, seq, _) = der_tlv(pkcs8);
    assert_eq!(tag, 0x30, "PKCS#8 SEQUENCE");
    let (tag, _version, rest) = der_tlv(seq);
    assert_eq!(tag, 0x02, "PKCS#8 version");
    let (tag, _alg, rest) = der_tlv(rest);
    assert_eq!(tag, 0x30, "PKCS#8 algorithm");
    let (tag, key, _) = der_tlv(rest);
    assert_eq!(tag, 0x04, "PKCS#8 privateKey");
    key.to_vec()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// A private key of the mock IdP, generated at test time.
pub struct IdpKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public JWK, as the IdP publishes it.
    pub jwk: Value,
    /// The public key as PEM (SubjectPublicKeyInfo), e.g. for alg confusion.
    pub public_pem: String,
}

impl std::fmt::Debug for IdpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdpKey({}, {:?})", self.kid, self.alg)
    }
}

impl IdpKey {
    /// Generates a key with aws-lc-rs, exports it as PKCS#8 and loads it into
    /// jsonwebtoken; the public JWK is built from the key's public half.
    pub fn generate(kind: KeyKind, kid: &str) -> Arc<IdpKey> {
        let pem_of = |der: &[u8]| pem::encode(&pem::Pem::new("PUBLIC KEY", der.to_vec()));
        let (alg, encoding, jwk, public_pem) = match kind {
            KeyKind::Rsa => {
                let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa keygen");
                let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&kp).expect("pkcs8");
                let encoding = EncodingKey::from_rsa_der(&pkcs1_from_pkcs8(pkcs8.as_ref()));
                let public = kp.public_key();
                let jwk = json!({"kty": "RSA", "use": "sig", "alg": "RS256",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero())});
                let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(public).expect("spki");
                (Algorithm::RS256, encoding, jwk, pem_of(spki.as_ref()))
            }
            KeyKind::P256 | KeyKind::P384 => {
                let (signing, alg, crv, n) = if kind == KeyKind::P256 {
                    (&ECDSA_P256_SHA256_FIXED_SIGNING, Algorithm::ES256, "P-256", 32)
                } else {
                    (&ECDSA_P384_SHA384_FIXED_SIGNING, Algorithm::ES384, "P-384", 48)
                };
                let kp = EcdsaKeyPair::generate(signing).expect("ec keygen");
                let pkcs8 = kp.to_pkcs8v1().expect("pkcs8");
                let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
                let point = kp.public_key().as_ref();
                let alg_name = if alg == Algorithm::ES256 { "ES256" } else { "ES384" };
                let jwk = json!({"kty": "EC", "crv": crv, "use": "sig", "alg": alg_name,
                    "x": b64(&point[1..1 + n]), "y": b64(&point[1 + n..1 + 2 * n])});
                let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(kp.public_key()).expect("spki");
                (alg, encoding, jwk, pem_of(spki.as_ref()))
            }
            KeyKind::Ed25519 => {
                let kp = Ed25519KeyPair::generate().expect("ed25519 keygen");
                let pkcs8 = kp.to_pkcs8v1().expect("pkcs8");
                let encoding = EncodingKey::from_ed_der(pkcs8.as_ref());
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
                    "x": b64(kp.public_key().as_ref())});
                let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(kp.public_key()).expect("spki");
                (Algorithm::EdDSA, encoding, jwk, pem_of(spki.as_ref()))
            }
        };
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        Arc::new(IdpKey { kid: kid.to_owned(), alg, encoding, jwk, public_pem })
    }

    pub fn alg_name(&self) -> &'static str {
        match self.alg {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The header an IdP would send: `{"alg", "typ": "JWT", "kid"}`.
    pub fn header(&self) -> Value {
        json!({"alg": self.alg_name(), "typ": "JWT", "kid": self.kid})
    }

    /// Signs `claims` under `header` with this key (the header is not checked).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        sign_raw(header, claims, &self.encoding, self.alg)
    }

    pub fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

/// A JWKS document of public keys plus any extra raw entries.
pub fn jwks_doc(keys: &[Arc<IdpKey>], extra: &[Value]) -> Value {
    let mut all: Vec<Value> = extra.to_vec();
    all.extend(keys.iter().map(|k| k.jwk.clone()));
    json!({ "keys": all })
}

/// Entries real IdPs publish beside their signing keys, none usable by stsgate.
pub fn junk_jwks_entries() -> Vec<Value> {
    let enc = IdpKey::generate(KeyKind::P256, "enc-1");
    let mut enc_jwk = enc.jwk.clone();
    enc_jwk["use"] = json!("enc");
    enc_jwk.as_object_mut().unwrap().remove("alg");
    let mismatched = IdpKey::generate(KeyKind::P256, "mismatch-1");
    let mut mismatched_jwk = mismatched.jwk.clone();
    mismatched_jwk["alg"] = json!("RS256");
    vec![
        json!({"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}),
        enc_jwk,
        mismatched_jwk,
        json!({"kty": "EC", "crv": "secp256k1", "kid": "k1-curve", "x": "AA", "y": "AA"}),
        json!({"kty": "RSA", "kid": "broken-rsa", "n": "!!!", "e": "AQAB"}),
        json!({"kty": "weird", "kid": "weird-1"}),
        json!("not even an object"),
    ]
}

// ---------------------------------------------------------------------------
// Mock IdP
// ---------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------
// Temporary directory
// ---------------------------------------------------------------------------

pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::env::temp_dir().join(format!(
            "stsgate-{label}-{}-{nanos}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        // Write-then-rename so a concurrent reader never sees half a file.
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, contents).expect("write temp file");
        std::fs::rename(&tmp, &p).expect("rename temp file");
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Kills (and reaps) a spawned process (the real `stsgate` binary) when dropped.
pub struct ChildGuard(pub std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port that was free a moment ago, for a spawned binary's listeners.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------
// stsgate harness
// ---------------------------------------------------------------------------

fn indent(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.trim_matches('\n')
        .lines()
        .map(|l| if l.trim().is_empty() { String::new() } else { format!("{pad}{l}") })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Default rules: `orders` (scopes `orders.*`, at most 2 minutes) and any
/// `api://*` audience (any scope, the default 5 minute lifetime).
pub const DEFAULT_RULES: &str = r#"
- name: orders
  match:
    audiences: [orders]
  grant:
    scopes: ["orders.*"]
    max_lifetime: 2m
- name: apis
  match:
    audiences: ["api://*"]
  grant:
    scopes: ["*"]
"#;

/// Builds the YAML configuration and starts stsgate.
pub struct HarnessBuilder {
    idp_issuer: Option<String>,
    issuer_options: Vec<String>,
    trusted_issuers: Option<String>,
    tokens: String,
    ext_authz: String,
    rules: String,
    edits: Vec<Box<dyn FnOnce(String) -> String + Send>>,
    wait_ready: bool,
    all_metadata: bool,
}

impl HarnessBuilder {
    /// Adds a key to the mock IdP's trusted-issuer entry, e.g.
    /// `"unknown_kid_refetch_interval: 1s"` or `"audiences: [stsgate]"`.
    pub fn issuer_option(mut self, line: &str) -> Self {
        self.issuer_options.push(line.to_owned());
        self
    }

    /// Replaces the whole `trusted_issuers` list (YAML sequence, unindented).
    pub fn trusted_issuers(mut self, yaml: &str) -> Self {
        self.trusted_issuers = Some(yaml.to_owned());
        self
    }

    /// The `tokens` mapping (unindented).
    pub fn tokens(mut self, yaml: &str) -> Self {
        self.tokens = yaml.to_owned();
        self
    }

    /// Leave `ext_authz.dynamic_metadata` at stsgate's default instead of all fields.
    pub fn default_metadata(mut self) -> Self {
        self.all_metadata = false;
        self
    }

    /// The `ext_authz` mapping (unindented).
    pub fn ext_authz(mut self, yaml: &str) -> Self {
        self.ext_authz = yaml.to_owned();
        self
    }

    /// The `rules` sequence (unindented).
    pub fn rules(mut self, yaml: &str) -> Self {
        self.rules = yaml.to_owned();
        self
    }

    /// Any other change to the final YAML text.
    pub fn edit(mut self, f: impl FnOnce(String) -> String + Send + 'static) -> Self {
        self.edits.push(Box::new(f));
        self
    }

    /// Do not wait for every issuer's keys before returning.
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    pub fn yaml(&mut self) -> String {
        let trusted = match &self.trusted_issuers {
            Some(t) => t.clone(),
            None => {
                let iss = self.idp_issuer.as_deref().expect("a mock IdP or trusted_issuers()");
                let mut s = format!("- issuer: {iss}\n  discovery: true\n  algorithms: [RS256]\n");
                for line in &self.issuer_options {
                    s.push_str(&format!("  {line}\n"));
                }
                s
            }
        };
        // Tests read every metadata field unless they configure their own
        // list or ask for the default.
        let mut ext_authz = self.ext_authz.trim().to_owned();
        if self.all_metadata && !ext_authz.contains("dynamic_metadata") {
            ext_authz.push_str("\ndynamic_metadata: [decision, rule, sub, aud, actor, scope, jti, subject_issuer]");
        }
        let ext_authz_block = format!("\n{}", indent(ext_authz.trim_start(), 2));
        let mut yaml = format!(
            "issuer: {STS_ISSUER}\n\
             signing:\n  keys:\n    - kid: {STS_KID}\n      alg: ES256\n      ephemeral: true\n\
             tokens:\n{}\n\
             trusted_issuers:\n{}\n\
             ext_authz:{}\n\
             rules:\n{}\n",
            indent(&self.tokens, 2),
            indent(&trusted, 2),
            ext_authz_block,
            indent(&self.rules, 2),
        );
        for edit in self.edits.drain(..) {
            yaml = edit(yaml);
        }
        yaml
    }

    pub async fn start(mut self) -> Harness {
        init_logging();
        let yaml = self.yaml();
        let cfg =
            Config::from_yaml_validated(&yaml).unwrap_or_else(|e| panic!("invalid test config: {e}\n---\n{yaml}"));
        let listeners = Listeners::bind_addrs("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind listeners");
        let server = Server::start(cfg, listeners).await.expect("start stsgate");
        let (grpc_addr, http_addr) = (server.grpc_addr, server.http_addr);
        if self.wait_ready {
            let readiness = server.readiness.clone();
            eventually("stsgate ready (issuer keys loaded)", || {
                let r = readiness.clone();
                async move { r.is_ready() }
            })
            .await;
        }
        let channel = Channel::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect()
            .await
            .expect("connect to stsgate gRPC");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        Harness { server: Some(server), grpc_addr, http_addr, channel, http, yaml }
    }
}

pub struct Harness {
    pub server: Option<Server>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub channel: Channel,
    pub http: reqwest::Client,
    pub yaml: String,
}

/// One `CheckRequest` for `host` + `path` with these headers and context extensions.
pub fn check_request(headers: &[(&str, &str)], ctx: &[(&str, &str)], host: &str, path: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            context_extensions: ctx.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    id: "test-request".into(),
                    method: "GET".into(),
                    headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                    host: host.into(),
                    path: path.into(),
                    scheme: "https".into(),
                    protocol: "HTTP/1.1".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

impl Harness {
    /// A builder whose trusted issuer is `idp` (discovery, RS256).
    pub fn builder(idp: &MockIdp) -> HarnessBuilder {
        HarnessBuilder { idp_issuer: Some(idp.issuer.clone()), ..Harness::bare() }
    }

    /// A builder with no mock IdP: set `trusted_issuers()`.
    pub fn bare() -> HarnessBuilder {
        HarnessBuilder {
            idp_issuer: None,
            issuer_options: Vec::new(),
            trusted_issuers: None,
            tokens: "lifetime: 5m".into(),
            ext_authz: String::new(),
            rules: DEFAULT_RULES.into(),
            edits: Vec::new(),
            wait_ready: true,
            all_metadata: true,
        }
    }

    /// The default harness against `idp`.
    pub async fn start(idp: &MockIdp) -> Harness {
        Harness::builder(idp).start().await
    }

    pub fn authz(&self) -> AuthorizationClient<Channel> {
        AuthorizationClient::new(self.channel.clone())
    }

    pub async fn check_request(&self, req: CheckRequest) -> CheckResponse {
        self.authz().check(req).await.expect("Check must answer with a CheckResponse, not a gRPC error").into_inner()
    }

    pub async fn check(&self, headers: &[(&str, &str)], ctx: &[(&str, &str)], host: &str, path: &str) -> CheckResponse {
        self.check_request(check_request(headers, ctx, host, path)).await
    }

    /// `authorization: Bearer <token>` to `api.test/` with these context extensions.
    pub async fn check_token(&self, token: &str, ctx: &[(&str, &str)]) -> CheckResponse {
        let value = format!("Bearer {token}");
        self.check(&[("authorization", &value)], ctx, "api.test", "/").await
    }

    /// `check_token` for `audience`.
    pub async fn check_for(&self, token: &str, audience: &str) -> CheckResponse {
        self.check_token(token, &[("audience", audience)]).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http.get(self.url(path)).send().await.unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let resp = self.get(path).await;
        assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
        resp.json().await.expect("JSON body")
    }

    /// gRPC health of `service` ("" = the whole server); `None` when unknown.
    pub async fn health(&self, service: &str) -> Option<i32> {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let mut client = HealthClient::new(self.channel.clone());
        match client.check(HealthCheckRequest { service: service.into() }).await {
            Ok(resp) => Some(resp.into_inner().status),
            Err(status) if status.code() == tonic::Code::NotFound => None,
            Err(status) => panic!("health check of {service:?} failed: {status}"),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.server.as_ref().unwrap().readiness.is_ready()
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().expect("stsgate is running")
    }

    /// Writes `yaml` to a fresh file and reloads stsgate from it.
    pub async fn reload_yaml(&self, yaml: &str) -> Result<Reloaded, ReloadError> {
        let dir = TempDir::new("reload");
        let path = dir.write("config.yaml", yaml);
        self.server().reload_from(&path).await
    }

    /// One series of `/metrics` (see `metric_value`).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> Option<f64> {
        let text = self.get("/metrics").await.text().await.expect("metrics text");
        metric_value(&text, name, labels)
    }

    /// Verifies a token minted by stsgate against its *published* JWKS with
    /// jsonwebtoken: signature, `iss`, `aud`, `exp`. Returns header and claims.
    pub async fn verify_minted(&self, token: &str, audience: &str) -> (jsonwebtoken::Header, Value) {
        verify_with_jwks(&self.http, &self.url("/.well-known/jwks.json"), STS_ISSUER, token, audience).await
    }

    pub async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            tokio::time::timeout(WAIT, server.shutdown()).await.expect("shutdown within the grace period");
        }
    }
}

/// Fetches `jwks_url` and verifies `token` with the key its header names.
pub async fn verify_with_jwks(
    http: &reqwest::Client,
    jwks_url: &str,
    issuer: &str,
    token: &str,
    audience: &str,
) -> (jsonwebtoken::Header, Value) {
    let jwks: jsonwebtoken::jwk::JwkSet =
        http.get(jwks_url).send().await.expect("GET jwks").json().await.expect("JWKS JSON");
    let header = jsonwebtoken::decode_header(token).expect("minted token header");
    let kid = header.kid.clone().expect("minted token has a kid");
    let jwk = jwks.find(&kid).unwrap_or_else(|| panic!("kid {kid} is not in the published JWKS"));
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).expect("published JWK is usable");
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(token, &key, &validation)
        .expect("minted token verifies against the published JWKS");
    (data.header, data.claims)
}

/// The value of the series `name` (exactly, before its labels) carrying all
/// of `labels` in Prometheus/OpenMetrics text.
pub fn metric_value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['{', ' '])))
        .filter(|l| labels.iter().all(|lab| l.contains(lab)))
        .find_map(|l| l.rsplit(' ').next()?.parse().ok())
}

// ---------------------------------------------------------------------------
// Reading CheckResponses
// ---------------------------------------------------------------------------

pub fn rpc_code(resp: &CheckResponse) -> i32 {
    resp.status.as_ref().map(|s| s.code).expect("CheckResponse has a status")
}

/// String fields of the response's dynamic metadata.
pub fn metadata(resp: &CheckResponse) -> HashMap<String, String> {
    use prost_types::value::Kind;
    resp.dynamic_metadata
        .as_ref()
        .map(|s| {
            s.fields
                .iter()
                .filter_map(|(k, v)| match &v.kind {
                    Some(Kind::StringValue(s)) => Some((k.clone(), s.clone())),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// What an allowed response asks Envoy to do.
#[derive(Debug)]
pub struct Allowed {
    pub headers: Vec<HeaderValueOption>,
    pub headers_to_remove: Vec<String>,
    pub metadata: HashMap<String, String>,
}

impl Allowed {
    /// The value of the one header mutation named `name`.
    pub fn header(&self, name: &str) -> &HeaderValueOption {
        let found: Vec<_> = self.headers.iter().filter(|h| h.header.as_ref().is_some_and(|h| h.key == name)).collect();
        assert_eq!(found.len(), 1, "exactly one {name} mutation in {:?}", self.headers);
        found[0]
    }

    pub fn header_value(&self, name: &str) -> String {
        self.header(name).header.as_ref().unwrap().value.clone()
    }

    /// The minted token from `authorization: Bearer <token>`.
    pub fn bearer(&self) -> String {
        let v = self.header_value("authorization");
        v.strip_prefix("Bearer ").unwrap_or_else(|| panic!("not a Bearer value: {v}")).to_owned()
    }
}

#[track_caller]
pub fn allowed(resp: &CheckResponse) -> Allowed {
    match (&resp.status, &resp.http_response) {
        (Some(s), Some(HttpResponse::OkResponse(ok))) if s.code == RPC_OK => Allowed {
            headers: ok.headers.clone(),
            headers_to_remove: ok.headers_to_remove.clone(),
            metadata: metadata(resp),
        },
        _ => panic!("expected an OK CheckResponse, got {resp:#?}"),
    }
}

/// What a denied response sends back to the caller.
#[derive(Debug)]
pub struct Denial {
    pub rpc_code: i32,
    pub http_status: i32,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub metadata: HashMap<String, String>,
}

impl Denial {
    pub fn error(&self) -> &str {
        self.body["error"].as_str().expect("body.error")
    }

    pub fn description(&self) -> &str {
        self.body["error_description"].as_str().expect("body.error_description")
    }

    pub fn www_authenticate(&self) -> Option<&str> {
        self.headers.get("www-authenticate").map(String::as_str)
    }
}

#[track_caller]
pub fn denial(resp: &CheckResponse) -> Denial {
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else {
        panic!("expected a denied CheckResponse, got {resp:#?}");
    };
    let rpc_code = rpc_code(resp);
    assert_ne!(rpc_code, RPC_OK, "a denial must not carry status OK: {resp:#?}");
    let headers: HashMap<String, String> =
        d.headers.iter().filter_map(|h| h.header.as_ref()).map(|h| (h.key.clone(), h.value.clone())).collect();
    let body: Value =
        serde_json::from_str(&d.body).unwrap_or_else(|e| panic!("denied body is not JSON ({e}): {}", d.body));
    Denial {
        rpc_code,
        http_status: d.status.as_ref().map(|s| s.code).unwrap_or(0),
        headers,
        body,
        metadata: metadata(resp),
    }
}

/// A 401 `invalid_token` denial whose description contains `needle`.
#[track_caller]
pub fn assert_invalid_token(resp: &CheckResponse, needle: &str) -> Denial {
    let d = denial(resp);
    assert_eq!(d.rpc_code, RPC_UNAUTHENTICATED, "{d:#?}");
    assert_eq!(d.http_status, 401, "{d:#?}");
    assert_eq!(d.error(), "invalid_token", "{d:#?}");
    assert!(d.description().contains(needle), "description {:?} lacks {needle:?}", d.description());
    let challenge = d.www_authenticate().expect("401 carries WWW-Authenticate");
    assert!(challenge.starts_with("Bearer realm=\"stsgate\""), "{challenge}");
    assert!(challenge.contains("error=\"invalid_token\""), "{challenge}");
    assert_eq!(d.headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_eq!(d.headers.get("cache-control").map(String::as_str), Some("no-store"));
    assert_eq!(d.metadata.get("decision").map(String::as_str), Some("denied"));
    d
}
