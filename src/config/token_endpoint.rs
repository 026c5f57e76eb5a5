//! `token_endpoint`: the RFC 8693 token endpoint on the HTTP listener, where
//! its clients' used assertions are recorded (`replay_store`), and how many
//! failed authentications a client may have per minute.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::checks::Issues;
use super::dev_idp::DevIdp;
use super::values::Dur;

/// The RFC 8693 token endpoint (`POST {path}` on the HTTP listener).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TokenEndpoint {
    /// Serve it; when off the path answers 404 and metadata does not list it.
    pub enabled: bool,
    /// Path on the HTTP listener (also served under the issuer's path, like
    /// the JWKS).
    pub path: String,
    /// Accept requests without client authentication. Unset: only when no
    /// `clients` are configured (the quick start and `stsgate dev`).
    pub allow_unauthenticated: Option<bool>,
    /// Where used assertions (`jti`s) are recorded: this process's memory
    /// by default, Redis when replicas must share them.
    pub replay_store: ReplayStoreConfig,
    /// Failed authentications a configured client may have per minute (a
    /// burst of this many, then one every 60/N seconds) before it is refused
    /// outright with 429.
    pub client_failures_per_minute: u32,
}

impl Default for TokenEndpoint {
    fn default() -> Self {
        TokenEndpoint {
            enabled: true,
            path: "/token".into(),
            allow_unauthenticated: None,
            replay_store: ReplayStoreConfig::default(),
            client_failures_per_minute: 10,
        }
    }
}

/// `token_endpoint.replay_store`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayStoreConfig {
    /// Shared by every replica; absent: in this process's memory.
    pub redis: Option<RedisReplayStore>,
}

/// `token_endpoint.replay_store.redis`: one Redis server (or a proxy in
/// front of a highly available one) every replica reaches.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisReplayStore {
    /// `redis://[user:password@]host[:port][/db]` inline...
    #[serde(default)]
    pub url: Option<RedisUrl>,
    /// ... or in a file (a mounted Secret; trailing newline ignored) ...
    #[serde(default)]
    pub url_file: Option<PathBuf>,
    /// ... or in an environment variable.
    #[serde(default)]
    pub url_env: Option<String>,
    /// Put before the hex digest of (client, `jti`) to make the key.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// The longest one call may take (connecting included); longer and the
    /// assertion is refused with 503.
    #[serde(default = "default_redis_timeout")]
    pub timeout: Dur,
    /// For a `rediss://` URL: the CA certificates (PEM) that sign the
    /// server's certificate, trusted instead of the public roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// For a `rediss://` URL to a server that asks for a client certificate
    /// (`tls-auth-clients`): the certificate chain (PEM) ...
    #[serde(default)]
    pub client_cert_file: Option<PathBuf>,
    /// ... and its private key (PEM).
    #[serde(default)]
    pub client_key_file: Option<PathBuf>,
}

fn default_key_prefix() -> String {
    "stsgate:jti:".into()
}

fn default_redis_timeout() -> Dur {
    Dur(Duration::from_millis(500))
}

/// A Redis URL, which may hold a password: `Debug` shows it redacted.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct RedisUrl(pub String);

impl std::fmt::Debug for RedisUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// `url` without its password (for errors and logs).
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() {
                let _ = parsed.set_password(Some("REDACTED"));
            }
            parsed.to_string()
        }
        // Unparseable text may still hold a password: show none of it.
        Err(_) => "(a URL that does not parse)".into(),
    }
}

/// A `redis://` or `rediss://` (TLS) URL stsgate can connect to; the
/// message never holds the password. A fragment (redis' `#insecure`, which
/// would skip the server's certificate) is refused like any other.
pub fn check_redis_url(url: &str) -> Result<(), String> {
    let shown = redact_url(url);
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{shown} is not a URL: {e}"))?;
    match parsed.scheme() {
        "redis" | "rediss" => {}
        other => return Err(format!("{shown} has scheme {other:?}; use redis:// or rediss:// (TLS)")),
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{shown} has no host"));
    }
    let db = parsed.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(format!("{shown}: the path must be a database number such as /0"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(format!("{shown} must not carry a query or fragment"));
    }
    Ok(())
}

impl RedisReplayStore {
    /// Whether any of `ca_file`, `client_cert_file`, `client_key_file` is set.
    pub fn has_tls_files(&self) -> bool {
        self.ca_file.is_some() || self.client_cert_file.is_some() || self.client_key_file.is_some()
    }

    /// The TLS files need a `rediss://` URL: over `redis://` they would be
    /// ignored, and the connection sent in the clear.
    pub fn check_tls_files(&self, url: &str) -> Result<(), String> {
        let tls = reqwest::Url::parse(url).is_ok_and(|u| u.scheme() == "rediss");
        if self.has_tls_files() && !tls {
            return Err(format!(
                "`ca_file`, `client_cert_file` and `client_key_file` are for TLS, but the URL {} is not rediss://",
                redact_url(url)
            ));
        }
        Ok(())
    }

    fn check(&self, issues: &mut Issues) {
        let at = "token_endpoint.replay_store.redis";
        let sources = [self.url.is_some(), self.url_file.is_some(), self.url_env.is_some()];
        if sources.iter().filter(|s| **s).count() != 1 {
            issues.add(at, "needs exactly one of `url`, `url_file`, `url_env`");
        }
        if let Some(Err(why)) = self.url.as_ref().map(|u| check_redis_url(&u.0)) {
            issues.add(format!("{at}.url"), why);
        }
        if self.client_cert_file.is_some() != self.client_key_file.is_some() {
            issues.add(at, "`client_cert_file` and `client_key_file` go together");
        }
        if let Some(Err(why)) = self.url.as_ref().map(|u| self.check_tls_files(&u.0)) {
            issues.add(at, why);
        }
        if self.url_env.as_deref().is_some_and(str::is_empty) {
            issues.add(format!("{at}.url_env"), "must name an environment variable");
        }
        let prefix = &self.key_prefix;
        if prefix.is_empty() || prefix.len() > 64 || prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
            issues.add(format!("{at}.key_prefix"), "must be 1 to 64 characters without blanks or control characters");
        }
        if self.timeout.0 < Duration::from_millis(10) || self.timeout.0 > Duration::from_secs(10) {
            issues.add(format!("{at}.timeout"), "must be between 10ms and 10s");
        }
    }
}

/// Paths the HTTP listener already serves; the token endpoint may not take one.
const RESERVED_HTTP_PATHS: &[&str] =
    &["/healthz", "/readyz", "/metrics", "/.well-known/jwks.json", "/.well-known/openid-configuration"];

impl TokenEndpoint {
    /// Whether a request without client authentication is served: as
    /// configured, else only when no client is configured.
    pub fn allows_unauthenticated(&self, clients: &[super::Client]) -> bool {
        self.allow_unauthenticated.unwrap_or(clients.is_empty())
    }

    /// The endpoint's path, the replay store and the failure rate.
    pub(super) fn check(&self, dev_idp: Option<&DevIdp>, issues: &mut Issues) {
        self.check_path(dev_idp, issues);
        if let Some(redis) = &self.replay_store.redis {
            redis.check(issues);
        }
        if !(1..=10_000).contains(&self.client_failures_per_minute) {
            issues.add("token_endpoint.client_failures_per_minute", "must be between 1 and 10000");
        }
    }

    /// The endpoint's path, which may not take one the HTTP listener already
    /// serves, the dev IdP's included.
    fn check_path(&self, dev_idp: Option<&DevIdp>, issues: &mut Issues) {
        let path = self.path.as_str();
        let message = if !path.starts_with('/') || path.len() < 2 {
            "must start with / and name a path, such as /token".to_owned()
        } else if path.ends_with('/') || path.contains(['?', '#', ' ']) {
            "must be a plain path without a trailing /, query or blanks".to_owned()
        } else if RESERVED_HTTP_PATHS.contains(&path) || path.starts_with("/.well-known/oauth-authorization-server") {
            format!("{path} is already served by stsgate's HTTP listener")
        } else if let Some(dev) = dev_idp.filter(|d| path == d.path || path.starts_with(&format!("{}/", d.path))) {
            format!("collides with dev_idp.path {}", dev.path)
        } else {
            return;
        };
        issues.add("token_endpoint.path", message);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const BASE: &str = "issuer: https://sts.test\nsigning:\n  keys: [{ kid: a, ephemeral: true }]\n\
                        trusted_issuers:\n  - { issuer: https://idp.test, jwks_url: https://idp.test/jwks }\n\
                        rules:\n  - { name: r, match: {}, grant: { scopes: [x] } }\n";

    #[test]
    fn defaults_are_the_documented_ones() {
        let cfg = Config::from_yaml_validated(BASE).unwrap();
        assert!(cfg.token_endpoint.enabled);
        assert_eq!(cfg.token_endpoint.path, "/token");
        assert_eq!(cfg.token_endpoint, TokenEndpoint::default());
        let spelled = Config::from_yaml_str(&format!("{BASE}token_endpoint: {{ enabled: true, path: /token }}\n"));
        assert_eq!(spelled.unwrap().token_endpoint, TokenEndpoint::default());
    }

    #[test]
    fn path_is_checked() {
        for bad in
            ["token", "/metrics", "/.well-known/jwks.json", "/", "/token/", "/.well-known/oauth-authorization-server/x"]
        {
            let text = format!("{BASE}token_endpoint: {{ path: \"{bad}\" }}\n");
            let issues = Config::from_yaml_str(&text).unwrap().check().unwrap_err();
            assert_eq!(issues.len(), 1, "{bad}: {issues:?}");
            assert_eq!(issues[0].path, "token_endpoint.path", "{bad}");
        }
        let text = format!("{BASE}dev_idp: {{ path: /idp }}\ntoken_endpoint: {{ path: /idp/token }}\n");
        let issues = Config::from_yaml_str(&text).unwrap().check().unwrap_err();
        assert_eq!(issues[0].to_string(), "token_endpoint.path: collides with dev_idp.path /idp");
        let text = format!("{BASE}token_endpoint: {{ enabled: false, pth: /x }}\n");
        assert!(Config::from_yaml_str(&text).unwrap_err().to_string().contains("token_endpoint"));
    }

    fn issues(token_endpoint: &str) -> Vec<String> {
        crate::config::tests::issues_in(&format!("{BASE}token_endpoint: {token_endpoint}\n"))
    }

    #[test]
    fn replay_store_and_failure_rate_are_checked_with_key_paths() {
        let cfg = Config::from_yaml_validated(BASE).unwrap();
        assert_eq!(cfg.token_endpoint.replay_store.redis, None, "in memory by default");
        assert_eq!(cfg.token_endpoint.client_failures_per_minute, 10);
        for ok in [
            "{ replay_store: { redis: { url: \"redis://:pw@redis.internal:6379/2\" } } }",
            "{ replay_store: { redis: { url_env: REDIS_URL, key_prefix: \"a:\", timeout: 2s } } }",
            "{ replay_store: { redis: { url_file: /run/secrets/redis-url } }, client_failures_per_minute: 1 }",
            "{ replay_store: { redis: { url: \"rediss://:pw@redis.internal:6380/0\" } } }",
            "{ replay_store: { redis: { url: \"rediss://h\", ca_file: /ca.pem, client_cert_file: /c.pem, client_key_file: /k.pem } } }",
            // The URL from a file or the environment is checked when it is read.
            "{ replay_store: { redis: { url_env: R, ca_file: /ca.pem } } }",
        ] {
            assert_eq!(issues(ok), Vec::<String>::new(), "{ok}");
        }
        let redis = Config::from_yaml_str(&format!(
            "{BASE}token_endpoint: {{ replay_store: {{ redis: {{ url_env: R }} }} }}\n"
        ))
        .unwrap()
        .token_endpoint
        .replay_store
        .redis
        .unwrap();
        assert_eq!((redis.key_prefix.as_str(), redis.timeout.0), ("stsgate:jti:", Duration::from_millis(500)));

        let at = "token_endpoint.replay_store.redis";
        for (bad, expected) in [
            ("{ replay_store: { redis: {} } }", format!("{at}: needs exactly one of `url`, `url_file`, `url_env`")),
            (
                "{ replay_store: { redis: { url: \"redis://h\", url_env: R } } }",
                format!("{at}: needs exactly one of `url`, `url_file`, `url_env`"),
            ),
            (
                "{ replay_store: { redis: { url: \"http://:hunter2@h\" } } }",
                format!("{at}.url: http://:REDACTED@h/ has scheme \"http\"; use redis:// or rediss:// (TLS)"),
            ),
            (
                "{ replay_store: { redis: { url: \"rediss://:hunter2@h/0#insecure\" } } }",
                format!("{at}.url: rediss://:REDACTED@h/0#insecure must not carry a query or fragment"),
            ),
            (
                "{ replay_store: { redis: { url: \"redis://:hunter2@h\", ca_file: /ca.pem } } }",
                format!(
                    "{at}: `ca_file`, `client_cert_file` and `client_key_file` are for TLS, but the URL \
                     redis://:REDACTED@h is not rediss://"
                ),
            ),
            (
                "{ replay_store: { redis: { url: \"rediss://h\", client_cert_file: /c.pem } } }",
                format!("{at}: `client_cert_file` and `client_key_file` go together"),
            ),
            (
                "{ replay_store: { redis: { url: \"redis://:hunter2@h/x\" } } }",
                format!("{at}.url: redis://:REDACTED@h/x: the path must be a database number such as /0"),
            ),
            (
                "{ replay_store: { redis: { url: \"hunter2\" } } }",
                format!("{at}.url: (a URL that does not parse) is not a URL: relative URL without a base"),
            ),
            (
                "{ replay_store: { redis: { url_env: R, key_prefix: \"a b\" } } }",
                format!("{at}.key_prefix: must be 1 to 64 characters without blanks or control characters"),
            ),
            (
                "{ replay_store: { redis: { url_env: R, timeout: 0s } } }",
                format!("{at}.timeout: must be between 10ms and 10s"),
            ),
            (
                "{ replay_store: { redis: { url_env: \"\" } } }",
                format!("{at}.url_env: must name an environment variable"),
            ),
            (
                "{ client_failures_per_minute: 0 }",
                "token_endpoint.client_failures_per_minute: must be between 1 and 10000".into(),
            ),
        ] {
            let got = issues(bad);
            assert_eq!(got, vec![expected], "{bad}");
            assert!(!got.concat().contains("hunter2"), "the password is shown: {got:?}");
        }
        let err = Config::from_yaml_str(&format!("{BASE}token_endpoint: {{ replay_store: {{ memcached: {{}} }} }}\n"));
        assert!(err.unwrap_err().to_string().contains("token_endpoint.replay_store"));
        // Debug (any log of the configuration) redacts the password too.
        let cfg = Config::from_yaml_str(&format!(
            "{BASE}token_endpoint: {{ replay_store: {{ redis: {{ url: \"redis://u:hunter2@h:1/0\" }} }} }}\n"
        ))
        .unwrap();
        let shown = format!("{:?}", cfg.token_endpoint);
        assert!(shown.contains("redis://u:REDACTED@h:1/0") && !shown.contains("hunter2"), "{shown}");
    }
}
