//! The real stsgate server in process on ephemeral ports: the configuration
//! YAML a test asks for, a gRPC channel and an HTTP client to it, and
//! independent verification of what it mints.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tonic::transport::Channel;

use stsgate::config::Config;
use stsgate::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use stsgate::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use stsgate::runtime::reload::{ReloadError, Reloaded};
use stsgate::runtime::server::{Listeners, Server};

use super::check::check_request;
use super::idp::MockIdp;
use super::process::{TempDir, WAIT, eventually, init_logging};
use super::{STS_ISSUER, STS_KID};

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
        let h = Harness { server: Some(server), grpc_addr, http_addr, channel, http, yaml };
        if self.wait_ready {
            // gRPC health turns SERVING in a task of its own, just after readiness.
            let serving = Some(tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
            eventually("gRPC health SERVING", || async { h.health("").await == serving }).await;
        }
        h
    }
}

/// A real stsgate serving `yaml` on `listeners`, once ready (its issuers'
/// keys loaded).
pub async fn start_server(yaml: &str, listeners: Listeners) -> Server {
    let cfg = Config::from_yaml_validated(yaml).unwrap_or_else(|e| panic!("invalid test config: {e}\n---\n{yaml}"));
    let server = Server::start(cfg, listeners).await.expect("start stsgate");
    let readiness = server.readiness.clone();
    eventually("stsgate ready (issuer keys loaded)", || {
        let r = readiness.clone();
        async move { r.is_ready() }
    })
    .await;
    server
}

/// Both listeners on free loopback ports.
pub async fn loopback_listeners() -> Listeners {
    Listeners::bind_addrs("127.0.0.1:0".parse().unwrap(), "127.0.0.1:0".parse().unwrap()).await.expect("bind listeners")
}

pub struct Harness {
    pub server: Option<Server>,
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub channel: Channel,
    pub http: reqwest::Client,
    pub yaml: String,
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
