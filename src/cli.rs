//! The command line: `serve`, `dev`, `check-config`, `dev-token`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::api::dev_idp::{DevTokenRequest, request_token};
use crate::config::{CallerIdentity, Config, ConfigError, KeySource};
use crate::runtime::reload::ReloadOptions;
use crate::runtime::server::{Listeners, Server, dev_config};

/// Exit status for a configuration the user must fix (sysexits EX_USAGE).
pub(crate) const EX_CONFIG: u8 = 64;

#[derive(Debug, Parser)]
#[command(
    name = "stsgate",
    version,
    about = "OAuth 2.0 Token Exchange (RFC 8693) for Envoy ext_authz and service meshes"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "STSGATE_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run with a configuration file (production). SIGHUP reloads it.
    Serve {
        /// The YAML configuration.
        #[arg(long, short, env = "STSGATE_CONFIG")]
        config: PathBuf,
        /// Also reload when the file's content (or that of a key or JWKS file it names) changes,
        /// checked this often, e.g. 10s: how a Kubernetes ConfigMap update is picked up. Off by default.
        #[arg(long, value_name = "INTERVAL", value_parser = parse_at_least_100ms)]
        watch_config: Option<Duration>,
        /// How long a reload may wait for the keys of every trusted issuer before it gives up
        /// (and changes nothing).
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_at_least_100ms)]
        reload_timeout: Duration,
    },
    /// Run the embedded development set-up: a built-in IdP, ephemeral keys, allow-all rules.
    Dev {
        /// gRPC listen address (ext_authz, health, reflection).
        #[arg(long, default_value = "127.0.0.1:9191")]
        grpc: SocketAddr,
        /// HTTP listen address (JWKS, metadata, probes, metrics, dev IdP).
        #[arg(long, default_value = "127.0.0.1:8080")]
        http: SocketAddr,
        /// Print the embedded configuration and exit.
        #[arg(long)]
        print_config: bool,
    },
    /// Validate a configuration file and explain every problem found.
    CheckConfig {
        /// The YAML configuration.
        file: PathBuf,
    },
    /// Dry-run one exchange: validate the tokens, show each rule's verdict and the claims that would be minted.
    Explain {
        /// The YAML configuration.
        #[arg(long, short)]
        config: PathBuf,
        /// The subject token (a JWT).
        #[arg(long)]
        subject_token: String,
        /// An actor token (a JWT), validated like the subject token.
        #[arg(long)]
        actor_token: Option<String>,
        /// The caller's mTLS identity, e.g. spiffe://cluster.local/ns/shop/sa/web.
        #[arg(long)]
        peer: Option<String>,
        /// The target audience.
        #[arg(long)]
        audience: String,
        /// Requested scopes, space-separated.
        #[arg(long)]
        scope: Option<String>,
        /// A different subject to impersonate.
        #[arg(long)]
        requested_subject: Option<String>,
        #[command(flatten)]
        request: ExplainRequest,
    },
    /// Decode a token (header, claims, times, the act chain as a tree); with --config, say which
    /// trusted issuer it claims and whether it is valid now. Exit 0 when it is (or, without
    /// --config, when it decodes), 2 when it is not, 1 when it cannot be decoded.
    Inspect {
        /// The token, or - to read it from standard input (keeps it out of shell history).
        token: String,
        /// A configuration to check the token against (fetches its issuer's keys once).
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print a subject token minted by a running `stsgate dev` instance's IdP.
    DevToken {
        /// The token's subject.
        #[arg(long)]
        sub: String,
        /// Space-separated scopes, e.g. "orders.read orders.write".
        #[arg(long)]
        scope: Option<String>,
        /// The token's audience (default: what the dev config trusts).
        #[arg(long)]
        aud: Option<String>,
        /// Lifetime, e.g. 10m or 1h.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
        /// The token's client_id.
        #[arg(long)]
        client_id: Option<String>,
        /// Base URL of the dev IdP.
        #[arg(long, default_value = "http://127.0.0.1:8080/dev-idp", env = "STSGATE_DEV_IDP")]
        idp: String,
    },
}

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { config, watch_config, reload_timeout } => {
            let (cfg, text) = match Config::load_file(&config) {
                Ok(loaded) => loaded,
                Err(e) => return config_failure(&e),
            };
            let reload =
                ReloadOptions { path: config, watch: watch_config, timeout: reload_timeout, loaded_text: Some(text) };
            serve(cfg, None, Some(reload)).await
        }
        Command::Dev { grpc, http, print_config } => {
            if print_config {
                print!("{}", crate::config::DEV_YAML);
                return ExitCode::SUCCESS;
            }
            let listeners = match Listeners::bind_addrs(grpc, http).await {
                Ok(l) => l,
                Err(e) => return failure(&e),
            };
            let http_addr = listeners.http.local_addr().unwrap_or(http);
            let grpc_addr = listeners.grpc.local_addr().unwrap_or(grpc);
            match dev_config(http_addr, grpc_addr) {
                Ok(cfg) => serve(cfg, Some(listeners), None).await,
                Err(e) => failure(&e),
            }
        }
        Command::CheckConfig { file } => check_config(&file),
        Command::Explain { config, subject_token, actor_token, peer, audience, scope, requested_subject, request } => {
            let cfg = match Config::from_file(&config) {
                Ok(cfg) => cfg,
                Err(e) => return config_failure(&e),
            };
            let request = match request.attrs() {
                Ok(r) => r,
                Err(e) => return failure(&e),
            };
            let q = crate::api::explain::Question {
                subject_token,
                actor_token,
                peer,
                audience,
                scope,
                requested_subject,
                request,
            };
            match crate::api::explain::explain(cfg, &q).await {
                Ok((answer, allowed)) => {
                    println!("{}", serde_json::to_string_pretty(&answer).unwrap_or_default());
                    if allowed { ExitCode::SUCCESS } else { ExitCode::from(2) }
                }
                Err(e) => failure(&e),
            }
        }
        Command::Inspect { token, config, json } => inspect(token, config, json).await,
        Command::DevToken { sub, scope, aud, ttl, client_id, idp } => {
            let req = DevTokenRequest { sub, scope, aud, ttl: Some(ttl.as_secs().max(1)), client_id };
            match request_token(&idp, &req).await {
                Ok(token) => {
                    println!("{token}");
                    ExitCode::SUCCESS
                }
                Err(e) => failure(&e),
            }
        }
    }
}

async fn inspect(token: String, config: Option<PathBuf>, json: bool) -> ExitCode {
    use crate::api::inspect;
    let token = if token == "-" {
        let mut text = String::new();
        if let Err(e) = std::io::Read::read_to_string(&mut std::io::stdin(), &mut text) {
            eprintln!("stsgate: cannot read the token from standard input: {e}");
            return ExitCode::FAILURE;
        }
        text
    } else {
        token
    };
    let cfg = match config.map(|c| Config::from_file(&c)).transpose() {
        Ok(cfg) => cfg,
        Err(e) => return config_failure(&e),
    };
    let issuers: Vec<String> = cfg.iter().flat_map(|c| c.trusted_issuers.iter().map(|t| t.issuer.clone())).collect();
    match inspect::inspect(&token, cfg).await {
        Ok(found) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&inspect::to_json(&found, &issuers)).unwrap_or_default());
            } else {
                print!("{}", inspect::to_text(&found, &issuers, crate::clock::now_unix()));
            }
            if matches!(found.verified, Some(Err(_))) { ExitCode::from(2) } else { ExitCode::SUCCESS }
        }
        Err(why) => {
            eprintln!("stsgate: {why}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(cfg: Config, listeners: Option<Listeners>, reload: Option<ReloadOptions>) -> ExitCode {
    let listeners = match listeners {
        Some(l) => l,
        None => match Listeners::bind(&cfg.listen).await {
            Ok(l) => l,
            Err(e) => return failure(&e),
        },
    };
    match Server::start(cfg, listeners).await {
        Ok(mut server) => {
            if let Some(reload) = reload {
                server.enable_reload(reload).await;
            }
            server.run_until_signal().await;
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("stsgate: {e:#}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

/// `--watch-config` and `--reload-timeout`: a shorter poll would only burn
/// CPU, a shorter timeout would fail every reload.
fn parse_at_least_100ms(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| format!("{s:?} is not a duration like 10s: {e}"))?;
    if d < Duration::from_millis(100) {
        return Err("must be at least 100ms".into());
    }
    Ok(d)
}

fn check_config(file: &std::path::Path) -> ExitCode {
    let cfg = match Config::from_file(file) {
        Ok(cfg) => cfg,
        Err(e) => return config_failure(&e),
    };
    // Load what can be loaded offline, exactly as `serve` would.
    let mut problems = Vec::new();
    if let Err(e) = crate::signing::KeyRing::load(&cfg.signing) {
        problems.push(format!("signing: {e}"));
    }
    if let Some(tls) = &cfg.listen.grpc_tls {
        if let Err(e) = crate::runtime::tls::check_files(tls) {
            problems.push(e.to_string());
        }
    }
    if let Some(tls) = &cfg.listen.http_tls {
        if let Err(e) = crate::runtime::tls::check_http_files(tls) {
            problems.push(e.to_string());
        }
    }
    if let Some(redis) = &cfg.token_endpoint.replay_store.redis {
        if let Err(e) = crate::engine::replay::check_redis_source(redis) {
            problems.push(e);
        }
    }
    // The OTLP collector's CA, which `serve` reads before anything else.
    if let Some(Err(e)) = cfg.telemetry.ca_file.as_deref().map(crate::ca_bundle::read) {
        problems.push(format!("telemetry.ca_file: {e}"));
    }
    // The clients' secret and JWKS files (a `jwks_url` is not fetched here).
    match crate::trust::issuer::http_client() {
        Ok(http) => {
            let replay = std::sync::Arc::new(crate::engine::replay::ReplayStore::in_memory(16));
            if let Err(e) = crate::engine::clients::Clients::load(&cfg, replay, &http, None) {
                problems.push(e);
            }
        }
        Err(e) => problems.push(format!("cannot build an HTTP client: {e}")),
    }
    for (i, iss) in cfg.trusted_issuers.iter().enumerate() {
        if let KeySource::JwksFile(path) = iss.key_source() {
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| crate::trust::jwks::parse(&b).map_err(|e| e.to_string()))
            {
                // Served, it would refuse every token of the issuer: a mistake in a file we can see.
                Ok(set) if set.is_empty() => problems.push(format!(
                    "trusted_issuers[{i}].jwks_file: {}: no usable signature keys ({})",
                    path.display(),
                    set.skipped.join("; ")
                )),
                Ok(set) => {
                    for why in &set.skipped {
                        println!("note: trusted_issuers[{i}].jwks_file: {why}");
                    }
                }
                Err(e) => problems.push(format!("trusted_issuers[{i}].jwks_file: {}: {e}", path.display())),
            }
        }
    }
    if !problems.is_empty() {
        eprintln!("{}: {} problem(s):", file.display(), problems.len());
        for p in &problems {
            eprintln!("  - {p}");
        }
        return ExitCode::from(EX_CONFIG);
    }
    for warning in warnings(&cfg).into_iter().chain(crate::rules::lint(&cfg.rules)) {
        println!("warning: {warning}");
    }
    println!(
        "{}: ok ({} trusted issuer(s), {} rule(s), {} signing key(s), active kid {:?})",
        file.display(),
        cfg.trusted_issuers.len(),
        cfg.rules.len(),
        cfg.signing.keys.len(),
        cfg.active_kid()
    );
    ExitCode::SUCCESS
}

/// Things that are valid but probably not what production wants.
fn warnings(cfg: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, k) in cfg.signing.keys.iter().enumerate() {
        if k.ephemeral {
            out.push(format!(
                "signing.keys[{i}] is ephemeral: tokens cannot be verified after a restart or across replicas"
            ));
        }
    }
    if !cfg.clients.is_empty() && cfg.token_endpoint.allow_unauthenticated == Some(true) {
        out.push(
            "token_endpoint.allow_unauthenticated is true with clients configured: requests without client \
             authentication are still served"
                .into(),
        );
    }
    if cfg.dev_idp.is_some() {
        out.push("dev_idp is enabled: anyone reaching the HTTP listener can mint trusted subject tokens".into());
    }
    match cfg.ext_authz.caller_identity(cfg.listen.grpc_tls.is_some()) {
        CallerIdentity::None => out.push(
            "Check callers are not authenticated (no listen.grpc_tls, ext_authz.caller_identity none): anyone who \
             can reach listen.grpc may ask for any audience and is believed about source.principal"
                .into(),
        ),
        _ if cfg.ext_authz.callers.is_empty() => out.push(
            "ext_authz.callers is empty: every authenticated Check caller may ask for any audience and is believed \
             about source.principal"
                .into(),
        ),
        _ => {}
    }
    if cfg.trusted_issuers.len() > 1 {
        for (i, rule) in cfg.rules.iter().enumerate().filter(|(_, r)| r.when.issuers.is_empty()) {
            out.push(format!(
                "rules[{i}] {:?} has no match.issuers, so it applies to the subjects of all {} trusted issuers: the same sub from two IdPs is told apart only by the minted sub_id",
                rule.name,
                cfg.trusted_issuers.len()
            ));
        }
    }
    for (i, iss) in cfg.trusted_issuers.iter().enumerate() {
        if iss.audiences.is_empty() {
            out.push(format!(
                "trusted_issuers[{i}] ({}) has no `audiences`: its tokens meant for any relying party, ID tokens included, can be exchanged",
                iss.issuer
            ));
        }
        let url = match iss.key_source() {
            KeySource::Discovery(u) | KeySource::JwksUrl(u) => u,
            KeySource::JwksFile(_) => continue,
        };
        if url.starts_with("http://") {
            out.push(format!("trusted_issuers[{i}] fetches keys over plain http ({url})"));
        }
    }
    out
}

fn config_failure(e: &ConfigError) -> ExitCode {
    eprintln!("stsgate: {e}");
    ExitCode::from(EX_CONFIG)
}

fn failure(e: &anyhow::Error) -> ExitCode {
    eprintln!("stsgate: {e:#}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unauthenticated_requests_beside_clients_are_a_warning() {
        let base = "issuer: https://sts.test\nsigning:\n  keys: [{ kid: a, ephemeral: true }]\n\
                    trusted_issuers:\n  - { issuer: https://a.test, jwks_url: https://a.test/jwks }\n\
                    rules:\n  - { name: r, grant: { scopes: [x] } }\n";
        let about = |extra: &str| -> usize {
            let cfg = Config::from_yaml_validated(&format!("{base}{extra}")).unwrap();
            warnings(&cfg).iter().filter(|w| w.contains("allow_unauthenticated")).count()
        };
        let client = "clients:\n  - { client_id: c, auth: none }\n";
        assert_eq!(about(client), 0);
        assert_eq!(about("token_endpoint: { allow_unauthenticated: true }\n"), 0);
        assert_eq!(about(&format!("{client}token_endpoint: {{ allow_unauthenticated: true }}\n")), 1);
    }

    #[test]
    fn a_rule_without_issuers_over_several_idps_is_a_warning() {
        let yaml = |issuers: &str| {
            format!(
                "issuer: https://sts.test\nsigning:\n  keys: [{{ kid: a, ephemeral: true }}]\n\
                 trusted_issuers:\n{issuers}\
                 rules:\n  - {{ name: any-idp, grant: {{ scopes: [x] }} }}\n  - {{ name: pinned, match: {{ issuers: [https://a.test] }}, grant: {{ scopes: [x] }} }}\n"
            )
        };
        let a = "  - { issuer: https://a.test, jwks_url: https://a.test/jwks, audiences: [sts] }\n";
        let b = "  - { issuer: https://b.test, jwks_url: https://b.test/jwks, audiences: [sts] }\n";
        let about_issuers = |cfg: &Config| -> Vec<String> {
            warnings(cfg).into_iter().filter(|w| w.contains("match.issuers")).collect()
        };
        let two = Config::from_yaml_validated(&yaml(&format!("{a}{b}"))).unwrap();
        let got = about_issuers(&two);
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].starts_with("rules[0] \"any-idp\"") && got[0].contains("all 2 trusted issuers"), "{got:?}");
        let one = Config::from_yaml_validated(&yaml(a)).unwrap();
        assert!(about_issuers(&one).is_empty());
    }
}

/// `stsgate explain`'s HTTP request, as a Check would carry it, for the
/// rules' CEL expressions (`request`).
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct ExplainRequest {
    /// The request's HTTP method, e.g. GET.
    #[arg(long, default_value = "")]
    method: String,
    /// The request's path, e.g. /tenants/acme/orders.
    #[arg(long, default_value = "")]
    path: String,
    /// The request's host (authority).
    #[arg(long, default_value = "")]
    host: String,
    /// The request's query string, without `?`.
    #[arg(long, default_value = "")]
    query: String,
    /// A request header, `name: value` (repeatable; names are lower-cased).
    #[arg(long = "header", value_name = "NAME: VALUE")]
    headers: Vec<String>,
    /// A context extension of the route, `key=value` (repeatable).
    #[arg(long = "context", value_name = "KEY=VALUE")]
    context: Vec<String>,
}

impl ExplainRequest {
    fn attrs(self) -> anyhow::Result<crate::rules::RequestAttrs> {
        let mut r = crate::rules::RequestAttrs {
            method: self.method,
            path: self.path,
            host: self.host,
            query: self.query,
            ..Default::default()
        };
        for h in &self.headers {
            let Some((name, value)) = h.split_once(':').filter(|(n, _)| !n.trim().is_empty()) else {
                anyhow::bail!("--header {h:?}: expected `name: value`");
            };
            r.headers.insert(name.trim().to_ascii_lowercase(), value.trim().to_owned());
        }
        for c in &self.context {
            let Some((k, v)) = c.split_once('=') else { anyhow::bail!("--context {c:?}: expected `key=value`") };
            r.context.insert(k.to_owned(), v.to_owned());
        }
        Ok(r)
    }
}
