//! The YAML configuration: a typed serde model that refuses unknown keys, then
//! a `check()` that reports every semantic problem at once, each with the key
//! path it concerns (so `stsgate check-config` can list them all in one run).
//!
//! One file per section, each with its types, their defaults (`Default`, which
//! serde uses for what the YAML leaves out) and the section's `check()`;
//! `Config::check` only composes them, passing each what it needs of the others.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

mod audit;
mod cache;
mod checks;
mod clients;
mod dev_idp;
mod ext_authz;
mod listen;
mod rules;
mod signing;
mod telemetry;
mod token_endpoint;
mod tokens;
mod trusted_issuers;
mod values;
mod workloads;

#[cfg(test)]
mod tests;

pub use audit::AuditConfig;
pub use cache::CacheConfig;
pub use clients::{Client, ClientAuthMethod, GrantType};
pub use dev_idp::DevIdp;
pub use ext_authz::{ActorMode, ActorSource, CallerIdentity, CheckCaller, ExtAuthz, MetadataField, PeerNet, Route};
pub use listen::{ClientCertPolicy, ClientCertSource, GrpcTls, HttpClientCert, HttpTls, Listen};
pub use rules::cel::{CelExpr, Compiled, Keys, RequestReads, VARIABLES};
pub use rules::cel_paths::CelPath;
pub use rules::{
    ActorMatch, CLIENT_ISSUER, DelegationShape, DownstreamToken, Grant, Outcome, Presenter, Rule, RuleMatch,
    SELF_ISSUER,
};
pub use signing::{Signing, SigningKey};
pub use telemetry::{OtlpProtocol, TelemetryConfig};
pub use token_endpoint::{RedisReplayStore, RedisUrl, ReplayStoreConfig, TokenEndpoint, check_redis_url, redact_url};
pub use tokens::Tokens;
pub use trusted_issuers::{Introspection, IntrospectionAuth, KeySource, TrustedIssuer, Userinfo};
pub use values::{Dur, SignAlg, VerifyAlg};
pub use workloads::Workload;

use checks::{Issues, check_url};

/// The `dev` subcommand's embedded configuration. `{http_addr}` is replaced by
/// the address the HTTP listener really bound, where the dev IdP is served.
pub const DEV_YAML: &str = include_str!("dev.yaml");

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
    /// Clients of the token endpoint and how each authenticates.
    #[serde(default)]
    pub clients: Vec<Client>,
    /// Exchange rules, evaluated in order; no match means deny.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Which actors are the party a token was issued to, by audience: who
    /// may re-exchange stsgate's own tokens (and IdP tokens under
    /// `match.presenter: audience`).
    #[serde(default)]
    pub workloads: Vec<Workload>,
    /// Caches of minted and validated tokens.
    #[serde(default)]
    pub cache: CacheConfig,
    /// The audit event stream: destinations and sampling.
    #[serde(default)]
    pub audit: AuditConfig,
    /// OpenTelemetry traces over OTLP (off unless `otlp_endpoint` is set).
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// An in-process development IdP (only for `stsgate dev` and tests).
    #[serde(default)]
    pub dev_idp: Option<DevIdp>,
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
    pub(crate) fn from_file(path: &Path) -> Result<Config, ConfigError> {
        Config::load_file(path).map(|(cfg, _)| cfg)
    }

    /// `from_file`, also returning the text that was read (whose hash a
    /// reload compares).
    pub(crate) fn load_file(path: &Path) -> Result<(Config, String), ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        let cfg = Config::from_file_text(&text, path)?;
        cfg.check().map_err(ConfigError::Invalid)?;
        Ok((cfg, text))
    }

    /// Parses the text of the file at `path`, with relative file paths made
    /// relative to its directory, without checking it (see `check`).
    pub(crate) fn from_file_text(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg = Config::from_yaml_str(text)?;
        cfg.resolve_paths(path.parent().unwrap_or(Path::new(".")));
        Ok(cfg)
    }

    /// Every local file the configuration reads: signing keys, JWKS files,
    /// client secrets, and the Redis URL and TLS files.
    pub(crate) fn files(&self) -> impl Iterator<Item = &Path> {
        let keys = self.signing.keys.iter().filter_map(|k| k.file.as_deref());
        keys.chain(self.trusted_issuers.iter().filter_map(|i| i.jwks_file.as_deref()))
            .chain(self.clients.iter().filter_map(|c| c.secret_file.as_deref()))
            .chain(self.clients.iter().filter_map(|c| c.jwks_file.as_deref()))
            .chain(self.token_endpoint.replay_store.redis.iter().flat_map(|r| {
                [&r.url_file, &r.ca_file, &r.client_cert_file, &r.client_key_file]
                    .into_iter()
                    .flatten()
                    .map(|p| p.as_path())
            }))
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
        cfg.check().map_err(ConfigError::Invalid)?;
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
        for c in &mut self.clients {
            if let Some(f) = c.secret_file.as_mut() {
                fix(f);
            }
            if let Some(f) = c.jwks_file.as_mut() {
                fix(f);
            }
        }
        if let Some(r) = self.token_endpoint.replay_store.redis.as_mut() {
            for f in
                [&mut r.url_file, &mut r.ca_file, &mut r.client_cert_file, &mut r.client_key_file].into_iter().flatten()
            {
                fix(f);
            }
        }
        if let Some(f) = self.audit.file.as_mut() {
            fix(f);
        }
        if let Some(f) = self.telemetry.ca_file.as_mut() {
            fix(f);
        }
        if let Some(tls) = self.listen.grpc_tls.as_mut() {
            for f in [&mut tls.cert, &mut tls.key, &mut tls.client_ca] {
                fix(f);
            }
        }
        if let Some(tls) = self.listen.http_tls.as_mut() {
            for f in [Some(&mut tls.cert), Some(&mut tls.key), tls.client_ca.as_mut()].into_iter().flatten() {
                fix(f);
            }
        }
    }

    /// The `kid` of the key that signs new tokens.
    pub fn active_kid(&self) -> &str {
        self.signing.active_kid()
    }

    /// Checks everything serde cannot: returns every problem found, each
    /// section's in turn, with the key path it concerns.
    pub(crate) fn check(&self) -> Result<(), Vec<ConfigIssue>> {
        let mut issues = Issues::default();
        if let Err(why) = check_url(&self.issuer) {
            issues.add("issuer", why);
        }
        self.listen.check(&mut issues);
        self.signing.check(&mut issues);
        self.tokens.check(&mut issues);
        self.cache.check(&mut issues);
        self.audit.check(&mut issues);
        self.telemetry.check(&mut issues);
        trusted_issuers::check(&self.trusted_issuers, &self.issuer, &mut issues);
        self.ext_authz.check(&mut issues);
        self.ext_authz.check_callers(&self.listen, &mut issues);
        workloads::check(&self.workloads, &mut issues);
        rules::check(self, &mut issues);
        if let Some(dev) = &self.dev_idp {
            dev.check(&mut issues);
        }
        self.token_endpoint.check(self.dev_idp.as_ref(), &mut issues);
        clients::check(&self.clients, &mut issues);
        self.listen.check_clients(&self.clients, &mut issues);
        issues.into_result()
    }
}
