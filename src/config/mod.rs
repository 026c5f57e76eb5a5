//! The YAML configuration: a typed serde model that refuses unknown keys, then
//! a `validate()` that reports every semantic problem at once, each with the key
//! path it concerns (so `stsgate check-config` can list them all in one run).

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::glob::Glob;

/// The `dev` subcommand's embedded configuration. `{http_addr}` is replaced by
/// the address the HTTP listener really bound, where the dev IdP is served.
pub const DEV_YAML: &str = include_str!("dev.yaml");

/// Algorithms stsgate accepts on subject tokens (asymmetric only, RFC 8725 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum VerifyAlg {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl VerifyAlg {
    pub const ALL: [VerifyAlg; 9] = [
        VerifyAlg::RS256,
        VerifyAlg::RS384,
        VerifyAlg::RS512,
        VerifyAlg::PS256,
        VerifyAlg::PS384,
        VerifyAlg::PS512,
        VerifyAlg::ES256,
        VerifyAlg::ES384,
        VerifyAlg::EdDSA,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            VerifyAlg::RS256 => "RS256",
            VerifyAlg::RS384 => "RS384",
            VerifyAlg::RS512 => "RS512",
            VerifyAlg::PS256 => "PS256",
            VerifyAlg::PS384 => "PS384",
            VerifyAlg::PS512 => "PS512",
            VerifyAlg::ES256 => "ES256",
            VerifyAlg::ES384 => "ES384",
            VerifyAlg::EdDSA => "EdDSA",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => VerifyAlg::RS256,
            "RS384" => VerifyAlg::RS384,
            "RS512" => VerifyAlg::RS512,
            "PS256" => VerifyAlg::PS256,
            "PS384" => VerifyAlg::PS384,
            "PS512" => VerifyAlg::PS512,
            "ES256" => VerifyAlg::ES256,
            "ES384" => VerifyAlg::ES384,
            "EdDSA" => VerifyAlg::EdDSA,
            _ => return None,
        })
    }
}

/// Algorithms stsgate signs its own tokens with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum SignAlg {
    #[default]
    ES256,
    RS256,
    EdDSA,
}

impl SignAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            SignAlg::ES256 => "ES256",
            SignAlg::RS256 => "RS256",
            SignAlg::EdDSA => "EdDSA",
        }
    }
}

/// A duration written the human way in YAML: `30s`, `5m`, `1h 30m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration like 30s or 5m: {e}")))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gRPC (ext_authz, health, reflection) and HTTP listeners bind.
    #[serde(default)]
    pub listen: Listen,
    /// stsgate's own issuer identifier: the `iss` of every token it mints and
    /// the base of its metadata documents.
    pub issuer: String,
    /// stsgate's signing keys; all are published in the JWKS, `active` signs.
    pub signing: Signing,
    /// Limits on minted and accepted tokens.
    #[serde(default)]
    pub tokens: Tokens,
    /// The identity providers whose tokens stsgate accepts as subject tokens.
    pub trusted_issuers: Vec<TrustedIssuer>,
    /// How the ext_authz Check maps a request to an exchange.
    #[serde(default)]
    pub ext_authz: ExtAuthz,
    /// The RFC 8693 token endpoint on the HTTP listener.
    #[serde(default)]
    pub token_endpoint: TokenEndpoint,
    /// Exchange rules, evaluated in order; no match means deny.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Caches of minted and validated tokens.
    #[serde(default)]
    pub cache: CacheConfig,
    /// An in-process development IdP (only for `stsgate dev` and tests).
    #[serde(default)]
    pub dev_idp: Option<DevIdp>,
}

/// The RFC 8693 token endpoint (`POST {path}` on the HTTP listener).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEndpoint {
    /// Serve it; when off the path answers 404 and metadata does not list it.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Path on the HTTP listener (also served under the issuer's path, like
    /// the JWKS).
    #[serde(default = "default_token_path")]
    pub path: String,
}

impl Default for TokenEndpoint {
    fn default() -> Self {
        TokenEndpoint { enabled: true, path: default_token_path() }
    }
}

fn default_token_path() -> String {
    "/token".into()
}

/// Paths the HTTP listener already serves; the token endpoint may not take one.
pub const RESERVED_HTTP_PATHS: &[&str] =
    &["/healthz", "/readyz", "/metrics", "/.well-known/jwks.json", "/.well-known/openid-configuration"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Reuse minted tokens for identical exchanges.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Memory bound of the minted-token cache, in bytes.
    #[serde(default = "default_cache_bytes")]
    pub max_bytes: u64,
    /// A minted token is handed out again until this percentage of its
    /// lifetime has passed, then re-minted (so callers never get one about to expire).
    #[serde(default = "default_reuse_percent")]
    pub reuse_percent: u8,
    /// How long a validated subject/actor token is remembered (never past its `exp`).
    #[serde(default = "default_validated_ttl")]
    pub validated_ttl: Dur,
    /// Memory bound of the validated-token cache, in bytes.
    #[serde(default = "default_validated_bytes")]
    pub validated_max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: default_cache_bytes(),
            reuse_percent: default_reuse_percent(),
            validated_ttl: default_validated_ttl(),
            validated_max_bytes: default_validated_bytes(),
        }
    }
}

fn default_cache_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_reuse_percent() -> u8 {
    50
}
fn default_validated_ttl() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_validated_bytes() -> u64 {
    16 * 1024 * 1024
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listen {
    #[serde(default = "default_grpc_addr")]
    pub grpc: SocketAddr,
    #[serde(default = "default_http_addr")]
    pub http: SocketAddr,
    /// How long in-flight requests may finish after SIGTERM/SIGINT.
    #[serde(default = "default_grace")]
    pub shutdown_grace: Dur,
    /// Most connections the gRPC listener holds at once; further ones are
    /// accepted and closed at once (each listener has its own cap, so a flood
    /// of one cannot take the file descriptors the other needs).
    #[serde(default = "default_grpc_max_connections")]
    pub grpc_max_connections: usize,
    /// Most connections the HTTP listener holds at once.
    #[serde(default = "default_http_max_connections")]
    pub http_max_connections: usize,
    /// A new connection must send the HTTP/2 preface (gRPC) or a complete
    /// first request head (HTTP) within this.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: Dur,
    /// HTTP listener, HTTP/1: a later request head must be complete this long
    /// after its first byte.
    #[serde(default = "default_header_read_timeout")]
    pub header_read_timeout: Dur,
    /// HTTP listener: a request must be answered (body read included) within this.
    #[serde(default = "default_request_timeout")]
    pub request_timeout: Dur,
    /// HTTP listener: a connection with no request in flight is closed after this.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout: Dur,
    /// Both listeners, HTTP/2: ping a connection that sent nothing for this long...
    #[serde(default = "default_keepalive_interval")]
    pub http2_keepalive_interval: Dur,
    /// ...and close it when the ping is not answered within this.
    #[serde(default = "default_keepalive_timeout")]
    pub http2_keepalive_timeout: Dur,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            grpc: default_grpc_addr(),
            http: default_http_addr(),
            shutdown_grace: default_grace(),
            grpc_max_connections: default_grpc_max_connections(),
            http_max_connections: default_http_max_connections(),
            handshake_timeout: default_handshake_timeout(),
            header_read_timeout: default_header_read_timeout(),
            request_timeout: default_request_timeout(),
            idle_timeout: default_idle_timeout(),
            http2_keepalive_interval: default_keepalive_interval(),
            http2_keepalive_timeout: default_keepalive_timeout(),
        }
    }
}

impl Listen {
    /// The connection limits, as `(key, value)`: bound at start-up, so a
    /// reload may not change them.
    pub fn limit_settings(&self) -> [(&'static str, String); 8] {
        [
            ("listen.grpc_max_connections", self.grpc_max_connections.to_string()),
            ("listen.http_max_connections", self.http_max_connections.to_string()),
            ("listen.handshake_timeout", self.handshake_timeout.to_string()),
            ("listen.header_read_timeout", self.header_read_timeout.to_string()),
            ("listen.request_timeout", self.request_timeout.to_string()),
            ("listen.idle_timeout", self.idle_timeout.to_string()),
            ("listen.http2_keepalive_interval", self.http2_keepalive_interval.to_string()),
            ("listen.http2_keepalive_timeout", self.http2_keepalive_timeout.to_string()),
        ]
    }
}

fn default_grpc_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 9191))
}
fn default_http_addr() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_grace() -> Dur {
    Dur(Duration::from_secs(10))
}
// Envoys (one or two connections per worker) are the gRPC clients: room for a
// few thousand sidecars per replica. Both caps together stay far below the
// usual 65536 or more descriptors of a container; start-up lowers them to
// fit a smaller RLIMIT_NOFILE (see `listener::fit_to_fd_limit`).
fn default_grpc_max_connections() -> usize {
    4096
}
fn default_http_max_connections() -> usize {
    1024
}
fn default_handshake_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_header_read_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}
fn default_request_timeout() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_idle_timeout() -> Dur {
    Dur(Duration::from_secs(60))
}
fn default_keepalive_interval() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_keepalive_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signing {
    /// The `kid` of the key that signs; defaults to the first key.
    #[serde(default)]
    pub active: Option<String>,
    pub keys: Vec<SigningKey>,
}

impl Signing {
    /// `active`, or else the first key.
    pub fn active_kid(&self) -> &str {
        self.active.as_deref().unwrap_or_else(|| self.keys.first().map(|k| k.kid.as_str()).unwrap_or(""))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    pub kid: String,
    #[serde(default)]
    pub alg: SignAlg,
    /// PEM private key (PKCS#8; SEC1 for EC and PKCS#1 for RSA also accepted).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Generate a key in memory at start-up instead of reading a file. Tokens
    /// signed with it cannot be verified after a restart or by other replicas:
    /// for development only.
    #[serde(default)]
    pub ephemeral: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tokens {
    /// Lifetime of minted tokens unless a rule caps it lower; never past the
    /// subject token's own `exp`.
    #[serde(default = "default_lifetime")]
    pub lifetime: Dur,
    /// Subject or actor tokens longer than this are refused before parsing.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens { lifetime: default_lifetime(), max_token_bytes: default_max_token_bytes() }
    }
}

fn default_lifetime() -> Dur {
    Dur(Duration::from_secs(300))
}
fn default_max_token_bytes() -> usize {
    16 * 1024
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// The exact `iss` value of this IdP's tokens.
    pub issuer: String,
    /// Fetch `{issuer}/.well-known/openid-configuration` and use its `jwks_uri`.
    #[serde(default)]
    pub discovery: bool,
    /// Fetch the discovery document from this URL instead (its `issuer` must
    /// still equal `issuer`).
    #[serde(default)]
    pub discovery_url: Option<String>,
    /// Fetch keys from this JWKS URL directly.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Read keys from a local JWKS file (re-read on every refresh).
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Signature algorithms accepted from this issuer.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<VerifyAlg>,
    /// When non-empty, the subject token's `aud` must contain one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Require header `typ: at+jwt` (RFC 9068). Many IdPs still send `JWT`.
    #[serde(default)]
    pub require_at_jwt: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "default_leeway")]
    pub leeway: Dur,
    /// How often keys are re-fetched in the background.
    #[serde(default = "default_refresh")]
    pub refresh_interval: Dur,
    /// At most one re-fetch per this interval when a token names an unknown `kid`.
    #[serde(default = "default_kid_refetch")]
    pub unknown_kid_refetch_interval: Dur,
    /// Timeout of each discovery/JWKS HTTP request.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout: Dur,
}

fn default_algorithms() -> Vec<VerifyAlg> {
    vec![VerifyAlg::RS256]
}
fn default_leeway() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_refresh() -> Dur {
    Dur(Duration::from_secs(600))
}
fn default_kid_refetch() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_fetch_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}

/// Where an issuer's keys come from, resolved from the mutually exclusive keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Discovery(String),
    JwksUrl(String),
    JwksFile(PathBuf),
}

impl TrustedIssuer {
    /// The key source; `validate()` guarantees exactly one is configured.
    pub fn key_source(&self) -> KeySource {
        if let Some(url) = &self.discovery_url {
            KeySource::Discovery(url.clone())
        } else if self.discovery {
            KeySource::Discovery(format!(
                "{}/.well-known/openid-configuration",
                self.issuer.trim_end_matches('/')
            ))
        } else if let Some(url) = &self.jwks_url {
            KeySource::JwksUrl(url.clone())
        } else if let Some(path) = &self.jwks_file {
            KeySource::JwksFile(path.clone())
        } else {
            unreachable!("validate() requires one key source per trusted issuer")
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtAuthz {
    /// Request header that carries the subject token.
    #[serde(default = "default_auth_header")]
    pub subject_header: String,
    /// Scheme before the token in that header (`Bearer`); empty for a bare token.
    #[serde(default = "default_scheme")]
    pub subject_scheme: String,
    /// Request header that receives the minted token upstream.
    #[serde(default = "default_auth_header")]
    pub output_header: String,
    /// Scheme written before the minted token; empty for a bare token.
    #[serde(default = "default_scheme")]
    pub output_scheme: String,
    /// Remove the subject header upstream when it differs from `output_header`.
    #[serde(default = "default_true")]
    pub remove_subject_header: bool,
    /// `realm` of the `WWW-Authenticate` challenge on 401.
    #[serde(default = "default_realm")]
    pub realm: String,
    /// `client_id` of tokens minted through ext_authz when the subject token
    /// names none (`client_id` or `azp`).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Host/path → audience table, first match wins; used when the route sets
    /// no `audience` context extension (Istio cannot set them).
    #[serde(default)]
    pub routes: Vec<Route>,
    /// Audience when neither the route's context extensions nor `routes` give one.
    #[serde(default)]
    pub default_audience: Option<String>,
    /// Scope requested when neither the context extensions nor `routes` give one.
    #[serde(default)]
    pub default_scope: Option<String>,
    /// Where the actor comes from.
    #[serde(default)]
    pub actor: ActorSource,
    /// Request header naming a different subject to impersonate (only for
    /// rules with `impersonate_subjects`); empty disables it.
    #[serde(default)]
    pub requested_subject_header: String,
    /// Fields of Envoy dynamic metadata sent with an allowed request, for
    /// access logs and later filters: `sub`, `aud` and `actor` by default.
    /// Envoy pays for every field on every request (all 8 cost its worker
    /// ~15% of throughput), so list only what is read; `[]` sends none.
    /// Denials always carry `decision`, `reason` and, when known, `actor`.
    #[serde(default = "default_metadata")]
    pub dynamic_metadata: Vec<MetadataField>,
}

/// A field of the dynamic metadata on allowed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetadataField {
    /// `exchange`, `delegation` or `impersonation`.
    Decision,
    /// The rule that decided.
    Rule,
    /// `sub` of the minted token.
    Sub,
    /// `aud` of the minted token.
    Aud,
    /// The actor (peer SPIFFE ID or actor token subject); absent without one.
    Actor,
    /// `scope` of the minted token.
    Scope,
    /// `jti` of the minted token, to find it in stsgate's logs.
    Jti,
    /// Issuer of the subject token.
    SubjectIssuer,
}

impl MetadataField {
    pub const ALL: [MetadataField; 8] = [
        MetadataField::Decision,
        MetadataField::Rule,
        MetadataField::Sub,
        MetadataField::Aud,
        MetadataField::Actor,
        MetadataField::Scope,
        MetadataField::Jti,
        MetadataField::SubjectIssuer,
    ];

    /// The key in the metadata struct.
    pub fn key(self) -> &'static str {
        match self {
            MetadataField::Decision => "decision",
            MetadataField::Rule => "rule",
            MetadataField::Sub => "sub",
            MetadataField::Aud => "aud",
            MetadataField::Actor => "actor",
            MetadataField::Scope => "scope",
            MetadataField::Jti => "jti",
            MetadataField::SubjectIssuer => "subject_issuer",
        }
    }
}

/// Which actor sources a request consults: `none`, `peer`, `token` or `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActorMode {
    None,
    Peer,
    Token,
    #[default]
    Any,
}

impl ActorMode {
    pub fn parse(s: &str) -> Option<ActorMode> {
        Some(match s {
            "none" => ActorMode::None,
            "peer" => ActorMode::Peer,
            "token" => ActorMode::Token,
            "any" => ActorMode::Any,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorSource {
    /// Default for routes that do not say (context extension `actor` or a
    /// `routes` entry's `actor`).
    #[serde(default)]
    pub mode: ActorMode,
    /// Use the mTLS peer identity Envoy reports (`source.principal`).
    #[serde(default = "default_true")]
    pub peer: bool,
    /// Request header carrying an actor token (validated like subject tokens
    /// against the trusted issuers); empty disables actor tokens.
    #[serde(default)]
    pub token_header: String,
    /// Scheme before the actor token in that header; empty for a bare token.
    #[serde(default)]
    pub token_scheme: String,
}

impl Default for ActorSource {
    fn default() -> Self {
        ActorSource { mode: ActorMode::Any, peer: true, token_header: String::new(), token_scheme: String::new() }
    }
}

impl Default for ExtAuthz {
    fn default() -> Self {
        ExtAuthz {
            subject_header: default_auth_header(),
            subject_scheme: default_scheme(),
            output_header: default_auth_header(),
            output_scheme: default_scheme(),
            remove_subject_header: true,
            realm: default_realm(),
            client_id: default_client_id(),
            routes: Vec::new(),
            default_audience: None,
            default_scope: None,
            actor: ActorSource::default(),
            requested_subject_header: String::new(),
            dynamic_metadata: default_metadata(),
        }
    }
}

fn default_metadata() -> Vec<MetadataField> {
    vec![MetadataField::Sub, MetadataField::Aud, MetadataField::Actor]
}

fn default_auth_header() -> String {
    "authorization".into()
}
fn default_scheme() -> String {
    "Bearer".into()
}
fn default_true() -> bool {
    true
}
fn default_realm() -> String {
    "stsgate".into()
}
fn default_client_id() -> String {
    "stsgate-ext-authz".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Host (`:authority` without port) to match: exact, or `*.example.com`.
    /// Omitted matches every host.
    #[serde(default)]
    pub host: Option<Glob>,
    /// Path prefix to match (query string ignored).
    #[serde(default = "default_path_prefix")]
    pub path_prefix: String,
    pub audience: String,
    #[serde(default)]
    pub scope: Option<String>,
    /// Actor sources for this route (overrides `ext_authz.actor.mode`).
    #[serde(default)]
    pub actor: Option<ActorMode>,
}

fn default_path_prefix() -> String {
    "/".into()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown in logs and refusals.
    pub name: String,
    #[serde(default, rename = "match")]
    pub when: RuleMatch,
    #[serde(default)]
    pub grant: Grant,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// Trusted issuers (exact `iss`) this rule applies to; empty = any.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Target audiences (globs) this rule applies to; empty = any.
    #[serde(default)]
    pub audiences: Vec<Glob>,
    /// Subject-token claims that must match: claim name → patterns (one-of).
    /// A string claim matches when it fits a pattern; an array claim (e.g.
    /// `groups`) when any element does. Every listed claim must match.
    #[serde(default)]
    pub subject: std::collections::BTreeMap<String, Vec<Glob>>,
    /// Who may act. Omitted = whatever the outcome implies (exchange: no
    /// actor; delegation: any actor; impersonation: any actor or none), an
    /// actor token always only from the subject token's issuer.
    #[serde(default)]
    pub actor: Option<ActorMatch>,
}

/// Conditions on the actor; the listed kinds are alternatives (one-of).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorMatch {
    /// The calling workload's mTLS identity (SPIFFE ID globs).
    #[serde(default)]
    pub spiffe: Vec<Glob>,
    /// `sub` of a validated actor token (globs).
    #[serde(default)]
    pub sub: Vec<Glob>,
    /// `client_id` (or `azp`) of a validated actor token (globs).
    #[serde(default)]
    pub client_id: Vec<Glob>,
    /// Match requests that have no actor at all. Never on a rule that
    /// impersonates other subjects (`impersonate_subjects`).
    #[serde(default)]
    pub none: bool,
    /// Issuers (exact `iss`) an actor token may come from; empty = only the
    /// subject token's own issuer. A `sub` or `client_id` is a name in its
    /// issuer's namespace, so an actor token from any other issuer matches
    /// nothing, and never contributes its `iss` or `client_id`. Peers (mTLS)
    /// have no issuer and are matched by `spiffe` alone.
    #[serde(default)]
    pub issuers: Vec<String>,
}

impl ActorMatch {
    pub fn names_someone(&self) -> bool {
        !(self.spiffe.is_empty() && self.sub.is_empty() && self.client_id.is_empty())
    }
}

/// What a matching rule does with the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Same subject, re-issued for the audience; no actor involved.
    #[default]
    Exchange,
    /// Same subject; `act` names the actor (RFC 8693 §4.1).
    Delegation,
    /// The actor acts as the subject and nothing in the token shows it.
    Impersonation,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Exchange => "exchange",
            Outcome::Delegation => "delegation",
            Outcome::Impersonation => "impersonation",
        }
    }
}

/// How delegation is written into the minted token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DelegationShape {
    /// `sub` = subject, `act` = actor (nested with prior actors).
    #[default]
    Act,
    /// `sub` = actor, `act_as` = subject (for receivers built that way).
    ActAs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// exchange, delegation or impersonation.
    #[serde(default)]
    pub outcome: Outcome,
    /// Scopes (globs) this rule may grant; the result is requested ∩ subject
    /// token's ∩ these.
    #[serde(default)]
    pub scopes: Vec<Glob>,
    /// Mint a token with no scope when the intersection is empty, instead of
    /// refusing.
    #[serde(default)]
    pub allow_empty_scope: bool,
    /// Upper bound on the minted token's lifetime (also capped by `tokens.lifetime`).
    #[serde(default)]
    pub max_lifetime: Option<Dur>,
    /// Claims copied from the subject token when present.
    #[serde(default)]
    pub copy_claims: Vec<String>,
    /// Static claims added to the minted token.
    #[serde(default)]
    pub add_claims: serde_json::Map<String, serde_json::Value>,
    /// Longest `act` chain the minted token may carry (delegation depth).
    #[serde(default = "default_chain_depth")]
    pub max_chain_depth: usize,
    /// `act` (RFC 8693) or `act_as`.
    #[serde(default)]
    pub delegation_shape: DelegationShape,
    /// Impersonation only: subjects (globs) the actor may become through the
    /// requested-subject header; empty = only the token's own subject.
    #[serde(default)]
    pub impersonate_subjects: Vec<Glob>,
    /// Impersonation only: name of an audit claim naming the real actor.
    #[serde(default)]
    pub audit_claim: Option<String>,
    /// Extra, narrower tokens for the upstream's own downstream calls.
    #[serde(default)]
    pub downstream_tokens: Vec<DownstreamToken>,
}

fn default_chain_depth() -> usize {
    3
}

impl Default for Grant {
    fn default() -> Self {
        Grant {
            outcome: Outcome::default(),
            scopes: Vec::new(),
            allow_empty_scope: false,
            max_lifetime: None,
            copy_claims: Vec::new(),
            add_claims: serde_json::Map::new(),
            max_chain_depth: default_chain_depth(),
            delegation_shape: DelegationShape::default(),
            impersonate_subjects: Vec::new(),
            audit_claim: None,
            downstream_tokens: Vec::new(),
        }
    }
}

/// An additional token minted for a named downstream audience and put into
/// its own request header (the "embedded token" pattern).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamToken {
    pub audience: String,
    /// Request header that carries it (bare token, no scheme).
    pub header: String,
    /// Scopes (globs) kept from the main token's granted scopes.
    #[serde(default)]
    pub scopes: Vec<Glob>,
}

/// Claims stsgate sets itself, or that would contradict what it sets; rules
/// may not copy or add them (nor any rule's `audit_claim`). RFC 9068 §2.2 core
/// claims, `scp` and `azp` (a second scope or client beside the narrowed
/// `scope` and the real `client_id`), RFC 8693 `act`/`may_act`, RFC 7800 `cnf`,
/// RFC 9493 `sub_id`, `typ`, and stsgate's `act_as`. `auth_time`, `acr`, `amr`,
/// `groups`, `roles` and `entitlements` describe the subject and may be copied.
pub const RESERVED_CLAIMS: &[&str] = &[
    "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope", "scp", "azp", "act", "act_as", "may_act",
    "cnf", "sub_id", "typ",
];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIdp {
    /// Path prefix on the HTTP listener where the dev IdP is served.
    #[serde(default = "default_dev_path")]
    pub path: String,
    /// Default `aud` of the subject tokens it mints.
    #[serde(default = "default_dev_aud")]
    pub audience: String,
}

fn default_dev_path() -> String {
    "/dev-idp".into()
}
fn default_dev_aud() -> String {
    "stsgate-dev".into()
}

/// One problem found in a configuration, located by its key path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}", fmt_parse(.path, .location, .message))]
    Parse { path: String, location: Option<(usize, usize)>, message: String },
    #[error("{} problem(s) in the configuration:\n{}", .0.len(), .0.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<ConfigIssue>),
}

fn fmt_parse(path: &str, location: &Option<(usize, usize)>, message: &str) -> String {
    let at = match location {
        Some((line, col)) => format!(" (line {line}, column {col})"),
        None => String::new(),
    };
    if path.is_empty() || path == "." {
        format!("invalid configuration{at}: {message}")
    } else {
        format!("invalid configuration at `{path}`{at}: {message}")
    }
}

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::load_file(path).map(|(cfg, _)| cfg)
    }

    /// `from_file`, also returning the text that was read (whose hash a
    /// reload compares).
    pub fn load_file(path: &Path) -> Result<(Config, String), ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let cfg = Config::from_file_text(&text, path)?;
        cfg.validate().map_err(ConfigError::Invalid)?;
        Ok((cfg, text))
    }

    /// Parses the text of the file at `path`, with relative file paths made
    /// relative to its directory, without validating (see `validate`).
    pub fn from_file_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg = Config::from_yaml_str(text)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Every local file the configuration reads: signing keys and JWKS files.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        let keys = self.signing.keys.iter().filter_map(|k| k.file.as_deref());
        keys.chain(self.trusted_issuers.iter().filter_map(|i| i.jwks_file.as_deref()))
    }

    /// Parses YAML only (no semantic validation, no file access).
    pub fn from_yaml_str(text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let location = inner.location().map(|l| (l.line(), l.column()));
            // serde_yaml_ng appends "at line X column Y" itself; keep the message short.
            let mut message = inner.to_string();
            if let Some(idx) = message.find(" at line ") {
                message.truncate(idx);
            }
            ConfigError::Parse { path, location, message }
        })
    }

    /// Parses and validates YAML text (relative key paths stay relative to cwd).
    pub fn from_yaml_validated(text: &str) -> Result<Config, ConfigError> {
        let cfg = Config::from_yaml_str(text)?;
        cfg.validate().map_err(ConfigError::Invalid)?;
        Ok(cfg)
    }

    /// Makes relative file paths relative to the config file's directory.
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for key in &mut self.signing.keys {
            if let Some(f) = key.file.as_mut() {
                fix(f);
            }
        }
        for iss in &mut self.trusted_issuers {
            if let Some(f) = iss.jwks_file.as_mut() {
                fix(f);
            }
        }
    }

    /// The `kid` of the key that signs new tokens.
    pub fn active_kid(&self) -> &str {
        self.signing.active_kid()
    }

    /// Checks everything serde cannot: returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Vec::new();
        let mut bad = |path: String, message: String| issues.push(ConfigIssue { path, message });

        if let Err(why) = check_url(&self.issuer) {
            bad("issuer".into(), why);
        }

        // --- listeners ---
        let l = &self.listen;
        let caps = [("grpc_max_connections", l.grpc_max_connections), ("http_max_connections", l.http_max_connections)];
        for (key, max) in caps {
            if !(1..=1_000_000).contains(&max) {
                bad(format!("listen.{key}"), "must be between 1 and 1000000".into());
            }
        }
        let secs = Duration::from_secs;
        for (key, d, max) in [
            ("handshake_timeout", l.handshake_timeout, secs(300)),
            ("header_read_timeout", l.header_read_timeout, secs(300)),
            ("request_timeout", l.request_timeout, secs(600)),
            ("idle_timeout", l.idle_timeout, secs(3600)),
            ("http2_keepalive_interval", l.http2_keepalive_interval, secs(3600)),
            ("http2_keepalive_timeout", l.http2_keepalive_timeout, secs(300)),
        ] {
            if d.0 < secs(1) || d.0 > max {
                bad(format!("listen.{key}"), format!("must be between 1s and {}", Dur(max)));
            }
        }

        // --- signing keys ---
        if self.signing.keys.is_empty() {
            bad("signing.keys".into(), "at least one signing key is required".into());
        }
        let mut kids = std::collections::HashSet::new();
        for (i, key) in self.signing.keys.iter().enumerate() {
            let at = format!("signing.keys[{i}]");
            if key.kid.trim().is_empty() {
                bad(format!("{at}.kid"), "must not be empty".into());
            } else if !kids.insert(key.kid.as_str()) {
                bad(format!("{at}.kid"), format!("duplicate kid {:?}", key.kid));
            }
            match (&key.file, key.ephemeral) {
                (None, false) => bad(at, "set `file` (a PEM private key) or `ephemeral: true`".into()),
                (Some(_), true) => bad(at, "`file` and `ephemeral: true` are mutually exclusive".into()),
                (Some(f), false) if !f.is_file() => {
                    bad(format!("{at}.file"), format!("{} does not exist or is not a file", f.display()))
                }
                _ => {}
            }
        }
        if let Some(active) = &self.signing.active {
            if !self.signing.keys.iter().any(|k| &k.kid == active) {
                bad("signing.active".into(), format!("no key in signing.keys has kid {active:?}"));
            }
        }

        // --- token limits ---
        if self.tokens.lifetime.0 < Duration::from_secs(1) {
            bad("tokens.lifetime".into(), "must be at least 1s".into());
        }
        if self.tokens.lifetime.0 > Duration::from_secs(24 * 3600) {
            bad("tokens.lifetime".into(), "must be at most 24h: minted tokens are meant to be short-lived".into());
        }
        if self.tokens.max_token_bytes < 256 || self.tokens.max_token_bytes > 1024 * 1024 {
            bad("tokens.max_token_bytes".into(), "must be between 256 and 1048576".into());
        }

        if !(1..=95).contains(&self.cache.reuse_percent) {
            bad("cache.reuse_percent".into(), "must be between 1 and 95".into());
        }
        if self.cache.validated_ttl.0 > Duration::from_secs(300) {
            bad("cache.validated_ttl".into(), "must be at most 5m".into());
        }

        // --- trusted issuers ---
        if self.trusted_issuers.is_empty() {
            bad("trusted_issuers".into(), "at least one trusted issuer is required".into());
        }
        let mut seen = std::collections::HashSet::new();
        for (i, iss) in self.trusted_issuers.iter().enumerate() {
            let at = format!("trusted_issuers[{i}]");
            if iss.issuer.is_empty() {
                bad(format!("{at}.issuer"), "must not be empty".into());
            } else if !seen.insert(iss.issuer.as_str()) {
                bad(format!("{at}.issuer"), format!("issuer {:?} is listed twice", iss.issuer));
            }
            if iss.issuer == self.issuer {
                bad(
                    format!("{at}.issuer"),
                    "stsgate's own issuer cannot be a trusted subject-token issuer (tokens it minted must not be re-exchanged as if from an IdP)".into(),
                );
            }
            let sources = [iss.discovery || iss.discovery_url.is_some(), iss.jwks_url.is_some(), iss.jwks_file.is_some()];
            match sources.iter().filter(|s| **s).count() {
                0 => bad(at.clone(), "set one key source: `discovery: true`, `discovery_url`, `jwks_url` or `jwks_file`".into()),
                1 => {}
                _ => bad(at.clone(), "set only one key source of `discovery`/`discovery_url`, `jwks_url`, `jwks_file`".into()),
            }
            if iss.discovery {
                if let Err(why) = check_url(&iss.issuer) {
                    bad(format!("{at}.issuer"), format!("discovery needs an http(s) issuer URL: {why}"));
                }
            }
            for (key, url) in [("discovery_url", &iss.discovery_url), ("jwks_url", &iss.jwks_url)] {
                if let Some(url) = url {
                    if let Err(why) = check_url(url) {
                        bad(format!("{at}.{key}"), why);
                    }
                }
            }
            if let Some(f) = &iss.jwks_file {
                if !f.is_file() {
                    bad(format!("{at}.jwks_file"), format!("{} does not exist or is not a file", f.display()));
                }
            }
            if iss.algorithms.is_empty() {
                bad(format!("{at}.algorithms"), "at least one algorithm is required".into());
            }
            if iss.leeway.0 > Duration::from_secs(300) {
                bad(format!("{at}.leeway"), "must be at most 5m".into());
            }
            // At most a day: a key the IdP withdraws stays trusted until the next refresh.
            if iss.refresh_interval.0 < Duration::from_secs(10) || iss.refresh_interval.0 > Duration::from_secs(86400) {
                bad(format!("{at}.refresh_interval"), "must be between 10s and 24h".into());
            }
            // Below 1s, tokens with made-up kids would make stsgate hammer the IdP.
            if iss.unknown_kid_refetch_interval.0 < Duration::from_secs(1) {
                bad(format!("{at}.unknown_kid_refetch_interval"), "must be at least 1s".into());
            }
            if iss.fetch_timeout.0 < Duration::from_millis(100) || iss.fetch_timeout.0 > Duration::from_secs(60) {
                bad(format!("{at}.fetch_timeout"), "must be between 100ms and 60s".into());
            }
        }

        // --- ext_authz mapping ---
        let ea = &self.ext_authz;
        for (key, name) in [("subject_header", &ea.subject_header), ("output_header", &ea.output_header)] {
            if let Err(why) = check_header_name(name) {
                bad(format!("ext_authz.{key}"), why);
            }
        }
        for (key, scheme) in [("subject_scheme", &ea.subject_scheme), ("output_scheme", &ea.output_scheme)] {
            if scheme.chars().any(|c| c.is_whitespace() || c.is_control()) {
                bad(format!("ext_authz.{key}"), "must be a single word such as Bearer, or empty".into());
            }
        }
        for (key, name) in
            [("actor.token_header", &ea.actor.token_header), ("requested_subject_header", &ea.requested_subject_header)]
        {
            if !name.is_empty() {
                if let Err(why) = check_header_name(name) {
                    bad(format!("ext_authz.{key}"), why);
                } else if name == &ea.subject_header || name == &ea.output_header {
                    bad(format!("ext_authz.{key}"), "must differ from subject_header and output_header".into());
                }
            }
        }
        match ea.actor.mode {
            ActorMode::Peer if !ea.actor.peer => {
                bad("ext_authz.actor.mode".into(), "mode peer needs `peer: true`".into());
            }
            ActorMode::Token if ea.actor.token_header.is_empty() => {
                bad("ext_authz.actor.mode".into(), "mode token needs a `token_header`".into());
            }
            _ => {}
        }
        for (i, field) in ea.dynamic_metadata.iter().enumerate() {
            if ea.dynamic_metadata[..i].contains(field) {
                bad(format!("ext_authz.dynamic_metadata[{i}]"), format!("`{}` is listed twice", field.key()));
            }
        }
        if ea.realm.contains('"') || ea.realm.contains('\\') {
            bad("ext_authz.realm".into(), "must not contain quotes or backslashes".into());
        }
        for (i, route) in ea.routes.iter().enumerate() {
            if route.audience.is_empty() {
                bad(format!("ext_authz.routes[{i}].audience"), "must not be empty".into());
            }
            if !route.path_prefix.starts_with('/') {
                bad(format!("ext_authz.routes[{i}].path_prefix"), "must start with /".into());
            }
        }

        // --- rules ---
        let trusted: std::collections::HashSet<&str> =
            self.trusted_issuers.iter().map(|i| i.issuer.as_str()).collect();
        let mut names = std::collections::HashSet::new();
        // A rule's audit claim names the real actor: no rule may copy or add it.
        let audit_claims: std::collections::HashSet<&str> =
            self.rules.iter().filter_map(|r| r.grant.audit_claim.as_deref()).collect();
        for (i, rule) in self.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            if rule.name.trim().is_empty() {
                bad(format!("{at}.name"), "must not be empty".into());
            } else if !names.insert(rule.name.as_str()) {
                bad(format!("{at}.name"), format!("duplicate rule name {:?}", rule.name));
            }
            for (j, iss) in rule.when.issuers.iter().enumerate() {
                if !trusted.contains(iss.as_str()) {
                    bad(
                        format!("{at}.match.issuers[{j}]"),
                        format!("{iss:?} is not one of trusted_issuers, so this rule can never match it"),
                    );
                }
            }
            if rule.grant.scopes.is_empty() && !rule.grant.allow_empty_scope {
                bad(
                    format!("{at}.grant"),
                    "grants no scopes and does not set allow_empty_scope, so it can only refuse".into(),
                );
            }
            if let Some(max) = rule.grant.max_lifetime {
                if max.0 < Duration::from_secs(1) {
                    bad(format!("{at}.grant.max_lifetime"), "must be at least 1s".into());
                }
            }
            let g = &rule.grant;
            let names_actor = rule.when.actor.as_ref().is_some_and(|a| a.names_someone());
            let only_none = rule.when.actor.as_ref().is_some_and(|a| a.none && !a.names_someone());
            let actor_issuers = rule.when.actor.as_ref().map(|a| a.issuers.as_slice()).unwrap_or_default();
            for (j, iss) in actor_issuers.iter().enumerate() {
                if !trusted.contains(iss.as_str()) {
                    bad(
                        format!("{at}.match.actor.issuers[{j}]"),
                        format!("{iss:?} is not one of trusted_issuers, so no actor token can come from it"),
                    );
                }
            }
            if g.outcome == Outcome::Exchange && !actor_issuers.is_empty() {
                bad(format!("{at}.match.actor.issuers"), "an exchange involves no actor".into());
            }
            match g.outcome {
                Outcome::Exchange if names_actor => bad(
                    format!("{at}.match.actor"),
                    "an exchange involves no actor; use outcome delegation or impersonation to name one".into(),
                ),
                Outcome::Delegation if only_none => bad(
                    format!("{at}.match.actor"),
                    "delegation needs an actor, so `none: true` alone can never match".into(),
                ),
                _ => {}
            }
            if !g.impersonate_subjects.is_empty() {
                if g.outcome != Outcome::Impersonation {
                    bad(format!("{at}.grant.impersonate_subjects"), "only allowed with outcome impersonation".into());
                } else if !names_actor {
                    bad(
                        format!("{at}.match.actor"),
                        "impersonating other subjects requires naming the actor (spiffe, sub or client_id)".into(),
                    );
                }
                if rule.when.actor.as_ref().is_some_and(|a| a.none) {
                    bad(
                        format!("{at}.match.actor.none"),
                        "impersonating other subjects needs a proven actor; `none: true` would let a request with no actor become them".into(),
                    );
                }
                if self.ext_authz.requested_subject_header.is_empty() {
                    bad(
                        format!("{at}.grant.impersonate_subjects"),
                        "ext_authz.requested_subject_header is not set, so no request can name another subject".into(),
                    );
                }
            }
            if let Some(claim) = &g.audit_claim {
                if g.outcome != Outcome::Impersonation {
                    bad(format!("{at}.grant.audit_claim"), "only allowed with outcome impersonation".into());
                }
                if RESERVED_CLAIMS.contains(&claim.as_str()) || claim.is_empty() {
                    bad(format!("{at}.grant.audit_claim"), format!("{claim:?} is a claim stsgate sets itself"));
                }
            }
            let reserved = |claim: &str| RESERVED_CLAIMS.contains(&claim) || audit_claims.contains(claim);
            for (j, claim) in g.copy_claims.iter().enumerate() {
                if reserved(claim) {
                    bad(format!("{at}.grant.copy_claims[{j}]"), format!("{claim:?} is a claim stsgate sets itself"));
                }
            }
            for claim in g.add_claims.keys() {
                if reserved(claim) {
                    bad(format!("{at}.grant.add_claims.{claim}"), format!("{claim:?} is a claim stsgate sets itself"));
                }
            }
            if g.max_chain_depth == 0 && g.outcome == Outcome::Delegation {
                bad(format!("{at}.grant.max_chain_depth"), "delegation needs a depth of at least 1".into());
            }
            if g.max_chain_depth > 25 {
                bad(format!("{at}.grant.max_chain_depth"), "must be at most 25".into());
            }
            for (j, d) in g.downstream_tokens.iter().enumerate() {
                if d.audience.is_empty() {
                    bad(format!("{at}.grant.downstream_tokens[{j}].audience"), "must not be empty".into());
                }
                if let Err(why) = check_header_name(&d.header) {
                    bad(format!("{at}.grant.downstream_tokens[{j}].header"), why);
                } else if d.header == self.ext_authz.output_header || d.header == self.ext_authz.subject_header {
                    bad(
                        format!("{at}.grant.downstream_tokens[{j}].header"),
                        "must differ from ext_authz.output_header and subject_header".into(),
                    );
                }
            }
        }
        if self.rules.is_empty() {
            bad("rules".into(), "no rules: every exchange would be refused (default deny)".into());
        }

        if let Some(dev) = &self.dev_idp {
            if !dev.path.starts_with('/') || dev.path.len() < 2 || dev.path.ends_with('/') {
                bad("dev_idp.path".into(), "must look like /dev-idp".into());
            }
        }

        let te = &self.token_endpoint;
        if !te.path.starts_with('/') || te.path.len() < 2 {
            bad("token_endpoint.path".into(), "must start with / and name a path, such as /token".into());
        } else if te.path.ends_with('/') || te.path.contains(['?', '#', ' ']) {
            bad("token_endpoint.path".into(), "must be a plain path without a trailing /, query or blanks".into());
        } else if RESERVED_HTTP_PATHS.contains(&te.path.as_str())
            || te.path.starts_with("/.well-known/oauth-authorization-server")
        {
            bad("token_endpoint.path".into(), format!("{} is already served by stsgate's HTTP listener", te.path));
        } else if let Some(dev) = self.dev_idp.as_ref().filter(|d| te.path == d.path || te.path.starts_with(&format!("{}/", d.path))) {
            bad("token_endpoint.path".into(), format!("collides with dev_idp.path {}", dev.path));
        }

        if issues.is_empty() { Ok(()) } else { Err(issues) }
    }
}

fn check_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" | "http" => {}
        other => return Err(format!("{url:?} has scheme {other:?}; use https (or http for local testing)")),
    }
    if parsed.host_str().is_none() {
        return Err(format!("{url:?} has no host"));
    }
    if parsed.fragment().is_some() || parsed.query().is_some() {
        return Err(format!("{url:?} must not carry a query or fragment"));
    }
    Ok(())
}

fn check_header_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.starts_with(':') || name.eq_ignore_ascii_case("host") {
        return Err(format!("{name:?} is a pseudo-header or Host, which Envoy will not let ext_authz change"));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)) {
        return Err(format!("{name:?} is not a valid HTTP header name"));
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("{name:?} must be lower-case (Envoy lower-cases header names)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
issuer: https://sts.example.com
signing:
  keys:
    - kid: k1
      ephemeral: true
trusted_issuers:
  - issuer: https://idp.example.com
    jwks_url: https://idp.example.com/jwks
rules:
  - name: all
    grant: { scopes: ["*"] }
"#;

    #[test]
    fn minimal_config_is_valid_with_defaults() {
        let cfg = Config::from_yaml_validated(MINIMAL).unwrap();
        assert_eq!(cfg.listen.grpc.port(), 9191);
        assert_eq!(cfg.listen.http.port(), 8080);
        assert_eq!(cfg.ext_authz.subject_header, "authorization");
        assert_eq!(cfg.trusted_issuers[0].algorithms, vec![VerifyAlg::RS256]);
        assert_eq!(cfg.active_kid(), "k1");
        assert_eq!(cfg.tokens.lifetime.0, Duration::from_secs(300));
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let text = MINIMAL.replace("    jwks_url:", "    jwks_ulr:");
        let err = Config::from_yaml_str(&text).unwrap_err().to_string();
        assert!(err.contains("trusted_issuers[0]"), "{err}");
        assert!(err.contains("jwks_ulr"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn bad_algorithm_and_duration_are_explained() {
        let text = MINIMAL.replace("    jwks_url: https://idp.example.com/jwks", "    jwks_url: https://idp.example.com/jwks\n    algorithms: [HS256]");
        let err = Config::from_yaml_str(&text).unwrap_err().to_string();
        assert!(err.contains("trusted_issuers[0].algorithms[0]") && err.contains("HS256"), "{err}");

        let text = MINIMAL.replace("    jwks_url: https://idp.example.com/jwks", "    jwks_url: https://idp.example.com/jwks\n    leeway: soon");
        let err = Config::from_yaml_str(&text).unwrap_err().to_string();
        assert!(err.contains("trusted_issuers[0].leeway") && err.contains("not a duration"), "{err}");
    }

    #[test]
    fn validate_reports_every_problem() {
        let text = r#"
issuer: not a url
signing:
  active: nope
  keys:
    - kid: k1
    - kid: k1
      ephemeral: true
trusted_issuers:
  - issuer: https://idp.example.com
  - issuer: https://idp.example.com
    jwks_url: ftp://x
    jwks_file: /nonexistent/jwks.json
ext_authz:
  output_header: "X-Token"
rules:
  - name: r
    match: { issuers: [https://other.example.com] }
"#;
        let cfg = Config::from_yaml_str(text).unwrap();
        let issues = cfg.validate().unwrap_err();
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        for expected in [
            "issuer",
            "signing.keys[0]",
            "signing.keys[1].kid",
            "signing.active",
            "trusted_issuers[0]",
            "trusted_issuers[1].issuer",
            "trusted_issuers[1]",
            "trusted_issuers[1].jwks_url",
            "trusted_issuers[1].jwks_file",
            "ext_authz.output_header",
            "rules[0].match.issuers[0]",
            "rules[0].grant",
        ] {
            assert!(paths.contains(&expected), "missing {expected} in {issues:#?}");
        }
    }

    #[test]
    fn token_endpoint_path_is_checked() {
        let base = "issuer: https://sts.test\nsigning:\n  keys: [{ kid: a, ephemeral: true }]\n\
                    trusted_issuers:\n  - { issuer: https://idp.test, jwks_url: https://idp.test/jwks }\n\
                    rules:\n  - { name: r, match: {}, grant: { scopes: [x] } }\n";
        let cfg = Config::from_yaml_validated(base).unwrap();
        assert!(cfg.token_endpoint.enabled);
        assert_eq!(cfg.token_endpoint.path, "/token");
        for bad in ["token", "/metrics", "/.well-known/jwks.json", "/", "/token/"] {
            let text = format!("{base}token_endpoint: {{ path: \"{bad}\" }}\n");
            let issues = Config::from_yaml_str(&text).unwrap().validate().unwrap_err();
            assert_eq!(issues.len(), 1, "{bad}: {issues:?}");
            assert_eq!(issues[0].path, "token_endpoint.path", "{bad}");
        }
        let text = format!("{base}token_endpoint: {{ enabled: false, pth: /x }}\n");
        assert!(Config::from_yaml_str(&text).unwrap_err().to_string().contains("token_endpoint"));
    }

    #[test]
    fn key_refresh_intervals_are_bounded() {
        let with = |line: &str| {
            let text = MINIMAL.replace(
                "    jwks_url: https://idp.example.com/jwks",
                &format!("    jwks_url: https://idp.example.com/jwks\n    {line}"),
            );
            Config::from_yaml_str(&text).unwrap().validate()
        };
        for ok in ["unknown_kid_refetch_interval: 1s", "refresh_interval: 10s", "refresh_interval: 24h", "fetch_timeout: 60s"] {
            assert!(with(ok).is_ok(), "{ok}");
        }
        for (line, path) in [
            ("unknown_kid_refetch_interval: 0s", "trusted_issuers[0].unknown_kid_refetch_interval"),
            ("unknown_kid_refetch_interval: 999ms", "trusted_issuers[0].unknown_kid_refetch_interval"),
            ("refresh_interval: 9s", "trusted_issuers[0].refresh_interval"),
            ("refresh_interval: 25h", "trusted_issuers[0].refresh_interval"),
            ("fetch_timeout: 10ms", "trusted_issuers[0].fetch_timeout"),
            ("fetch_timeout: 2m", "trusted_issuers[0].fetch_timeout"),
        ] {
            let issues = with(line).unwrap_err();
            assert_eq!(issues.len(), 1, "{line}: {issues:?}");
            assert_eq!(issues[0].path, path, "{line}");
        }
    }

    #[test]
    fn listener_limits_have_defaults_and_are_checked() {
        let cfg = Config::from_yaml_validated(MINIMAL).unwrap();
        assert_eq!(cfg.listen.grpc_max_connections, 4096);
        assert_eq!(cfg.listen.http_max_connections, 1024);
        assert_eq!(cfg.listen.handshake_timeout.0, Duration::from_secs(10));
        assert_eq!(cfg.listen.header_read_timeout.0, Duration::from_secs(10));
        assert_eq!(cfg.listen.request_timeout.0, Duration::from_secs(30));
        assert_eq!(cfg.listen.idle_timeout.0, Duration::from_secs(60));
        assert_eq!(cfg.listen.http2_keepalive_interval.0, Duration::from_secs(30));
        assert_eq!(cfg.listen.http2_keepalive_timeout.0, Duration::from_secs(10));

        let ok = "listen:\n  grpc_max_connections: 2\n  http_max_connections: 1000000\n  idle_timeout: 1h\n";
        Config::from_yaml_validated(&format!("{ok}{MINIMAL}")).unwrap();

        for (line, path) in [
            ("grpc_max_connections: 0", "listen.grpc_max_connections"),
            ("http_max_connections: 1000001", "listen.http_max_connections"),
            ("handshake_timeout: 500ms", "listen.handshake_timeout"),
            ("header_read_timeout: 6m", "listen.header_read_timeout"),
            ("request_timeout: 11m", "listen.request_timeout"),
            ("idle_timeout: 2h", "listen.idle_timeout"),
            ("http2_keepalive_interval: 0s", "listen.http2_keepalive_interval"),
            ("http2_keepalive_timeout: 10m", "listen.http2_keepalive_timeout"),
        ] {
            let text = format!("listen:\n  {line}\n{MINIMAL}");
            let issues = Config::from_yaml_str(&text).unwrap().validate().unwrap_err();
            assert_eq!(issues.len(), 1, "{line}: {issues:?}");
            assert_eq!(issues[0].path, path, "{line}");
            assert!(issues[0].message.starts_with("must be between"), "{line}: {}", issues[0].message);
        }
        // A negative count or a word is a parse error that names the key.
        let err = Config::from_yaml_str(&format!("listen:\n  http_max_connections: -1\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("listen.http_max_connections"), "{err}");
        let err = Config::from_yaml_str(&format!("listen:\n  idle_timeout: forever\n{MINIMAL}")).unwrap_err();
        assert!(err.to_string().contains("listen.idle_timeout"), "{err}");
    }

    #[test]
    fn own_issuer_cannot_be_trusted() {
        let text = MINIMAL.replace("  - issuer: https://idp.example.com", "  - issuer: https://sts.example.com");
        let issues = Config::from_yaml_str(&text).unwrap().validate().unwrap_err();
        assert!(issues.iter().any(|i| i.message.contains("own issuer")), "{issues:?}");
    }

    /// Validation issues of MINIMAL with `rules` (a YAML sequence) instead of its rule.
    fn rule_issues(rules: &str) -> Vec<ConfigIssue> {
        let base = MINIMAL.split("rules:").next().unwrap();
        let text = format!("{base}ext_authz: {{ requested_subject_header: x-requested-subject }}\nrules:\n{rules}");
        Config::from_yaml_str(&text).unwrap().validate().err().unwrap_or_default()
    }

    #[test]
    fn reserved_claims_cannot_be_copied_or_added() {
        let issues = rule_issues(
            r#"
  - name: copies
    grant:
      scopes: ["*"]
      copy_claims: [scp, azp, sub_id, typ, cnf, impersonated_by, auth_time, acr, amr, groups, roles, entitlements]
      add_claims: { azp: web, scp: [admin], sub_id: x, typ: y, impersonated_by: z, acr: "1" }
  - name: audited
    grant: { outcome: impersonation, scopes: ["*"], audit_claim: impersonated_by }
"#,
        );
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        for (j, claim) in ["scp", "azp", "sub_id", "typ", "cnf", "impersonated_by"].iter().enumerate() {
            assert!(paths.contains(&format!("rules[0].grant.copy_claims[{j}]").as_str()), "{claim}: {issues:#?}");
        }
        for claim in ["azp", "scp", "sub_id", "typ", "impersonated_by"] {
            assert!(paths.contains(&format!("rules[0].grant.add_claims.{claim}").as_str()), "{claim}: {issues:#?}");
        }
        // Claims about the subject's authentication and entitlements stay copyable.
        assert_eq!(paths.len(), 11, "only the reserved claims are refused: {issues:#?}");
        assert!(issues.iter().all(|i| i.message.contains("stsgate sets itself")), "{issues:#?}");
    }

    #[test]
    fn none_is_refused_on_rules_that_impersonate_other_subjects() {
        let rule = |actor: &str, subjects: &str| {
            format!(
                "  - name: support\n    match: {{ actor: {actor} }}\n    grant: {{ outcome: impersonation, scopes: [\"*\"], impersonate_subjects: {subjects} }}\n"
            )
        };
        let issues = rule_issues(&rule("{ sub: [support-console], none: true }", "[\"user-*\"]"));
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["rules[0].match.actor.none"], "{issues:#?}");
        assert!(issues[0].message.contains("proven actor"), "{issues:#?}");
        // Without `none`, or without other subjects to become, the rule is valid.
        assert!(rule_issues(&rule("{ sub: [support-console] }", "[\"user-*\"]")).is_empty());
        assert!(rule_issues(&rule("{ sub: [support-console], none: true }", "[]")).is_empty());
    }

    #[test]
    fn actor_issuers_must_be_trusted_and_need_an_actor() {
        let issues = rule_issues(
            "  - name: d\n    match: { actor: { issuers: [https://idp.example.com, https://ci.example.com] } }\n    grant: { outcome: delegation, scopes: [\"*\"] }\n  - name: e\n    match: { actor: { issuers: [https://idp.example.com] } }\n    grant: { scopes: [\"*\"] }\n",
        );
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["rules[0].match.actor.issuers[1]", "rules[1].match.actor.issuers"], "{issues:#?}");
    }

    #[test]
    fn embedded_dev_config_is_valid() {
        let text = DEV_YAML.replace("{http_addr}", "127.0.0.1:8080");
        Config::from_yaml_validated(&text).unwrap();
    }
}
