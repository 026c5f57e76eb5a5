//! The set-up the criterion bench (`benches/exchange.rs`) and the profiling
//! harness (`examples/profile_cold.rs`) share, so that their figures are of
//! the same exchange: an IdP with an RS256 key in a `jwks_file`, ten rules
//! (the tenth matches) plus a second-hop rule, an ephemeral ES256 signing key,
//! and the Check Envoy sends for a wrk request.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::CheckRequestBuilder;
use crate::clock::now_unix;
use crate::config::{Config, SignAlg};
use crate::engine::mint::new_jti;
use crate::pb::envoy::service::auth::v3::CheckRequest;
use crate::signing::Signer;

pub const IDP: &str = "https://idp.bench.example/realms/corp";
/// The audience every benchmarked Check asks for.
pub const AUDIENCE: &str = "bench-api";

/// Ten rules; the first nine miss for different reasons (audience, issuer,
/// subject claims), the tenth matches `bench-*`; the eleventh re-exchanges
/// stsgate's own tokens (`check_cached_second_hop`).
pub const RULES: &str = r#"
rules:
  - { name: r1-orders,   match: { audiences: [orders] },                      grant: { scopes: ["orders.*"] } }
  - { name: r2-billing,  match: { audiences: ["billing", "api://billing/*"] }, grant: { scopes: ["billing.*"] } }
  - { name: r3-partners, match: { audiences: ["bench-*"], subject: { email: ["*@partner.example"] } }, grant: { scopes: ["*"] } }
  - { name: r4-admins,   match: { audiences: ["bench-*"], subject: { groups: [admins, sre] } }, grant: { scopes: ["*"] } }
  - { name: r5-payments, match: { audiences: [payments] },                    grant: { scopes: ["payments.*"] } }
  - { name: r6-client,   match: { audiences: ["bench-*"], subject: { client_id: [batch-*] } }, grant: { scopes: ["*"] } }
  - { name: r7-search,   match: { audiences: ["search", "search-*"] },        grant: { scopes: ["search.*"] } }
  - { name: r8-users,    match: { audiences: ["bench-*"], subject: { sub: [svc-*] } }, grant: { scopes: ["*"] } }
  - { name: r9-inventory, match: { audiences: ["inventory"] },                grant: { scopes: ["inventory.*"] } }
  - name: r10-bench
    match: { issuers: ["https://idp.bench.example/realms/corp"], audiences: ["bench-*"], subject: { groups: [customers] } }
    grant: { scopes: ["orders.*", profile, email], max_lifetime: 5m }
  - name: r11-second-hop
    match: { issuers: [self], audiences: ["bench-*"] }
    grant: { outcome: delegation, scopes: ["orders.*", profile, email], max_lifetime: 5m }
workloads:
  - { audience: bench-web, spiffe: ["spiffe://cluster.local/ns/bench/sa/web"] }
"#;

/// The IdP's key and its JWKS file in a directory of its own (removed when
/// dropped), and a subject token it signed.
pub struct Idp {
    dir: PathBuf,
    pub jwks: PathBuf,
    pub token: String,
}

impl Idp {
    /// `name` tells the directories of concurrent runs apart.
    pub fn new(name: &str) -> Idp {
        let dir = std::env::temp_dir().join(format!("stsgate-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let key = Signer::generate("bench-idp-1", SignAlg::RS256).expect("IdP key");
        let jwks = dir.join("idp-jwks.json");
        std::fs::write(&jwks, json!({ "keys": [key.public_jwk()] }).to_string()).expect("write JWKS");
        let token = subject_token(&key);
        Idp { dir, jwks, token }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A user's access token as a Keycloak-like IdP issues it.
fn subject_token(idp: &Signer) -> String {
    let now = now_unix();
    let claims = json!({
        "iss": IDP,
        "sub": "user-000001",
        "aud": ["mesh-gateway", "account"],
        "exp": now + 6 * 3600,
        "iat": now,
        "nbf": now,
        "jti": new_jti().expect("rng"),
        "scope": "openid profile email orders.read orders.write",
        "client_id": "web-frontend",
        "groups": ["customers", "staff"],
        "email": "user-000001@bench.example",
    });
    idp.sign_typed("JWT", &claims).expect("sign subject token")
}

/// The configuration with `rules` (YAML from `rules:` on) and `cache` (the
/// `cache` mapping). Audit events are written, their cost is part of an
/// exchange, but to /dev/null: stdout is the harness's, and a file would
/// grow by gigabytes.
pub fn config(jwks: &Path, cache: &str, rules: &str) -> Config {
    let yaml = format!(
        "issuer: https://sts.bench.example\nsigning:\n  keys: [{{ kid: bench-es256, alg: ES256, ephemeral: true }}]\n\
         tokens: {{ lifetime: 5m }}\ntrusted_issuers:\n  - issuer: {IDP}\n    jwks_file: {}\n    algorithms: [RS256]\n    \
         audiences: [mesh-gateway]\next_authz:\n  actor: {{ mode: none }}\ncache: {cache}\naudit: {{ file: /dev/null }}\n{rules}",
        jwks.display()
    );
    Config::from_yaml_validated(&yaml).expect("bench config")
}

/// What Envoy sends for `GET http://bench.example/` from wrk (the headers wrk
/// and Envoy add included).
pub fn check_request(token: &str) -> CheckRequest {
    CheckRequestBuilder::new()
        .host("bench.example")
        .pseudo_headers()
        .header("user-agent", "wrk")
        .header("x-request-id", "00000000-0000-4000-8000-000000000000")
        .bearer(token)
        .context("audience", AUDIENCE)
        .build()
}
