//! `clients`: who may call the token endpoint, and how each proves it
//! (RFC 6749 §2.3). Secrets are stored as an argon2id PHC string
//! (`secret_hash`), or read as a plain secret from a file (`secret_file`) or
//! an environment variable (`secret_env`) when the engine is built; they are
//! never logged.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::checks::Issues;

/// How a client authenticates at the token endpoint (RFC 8414 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuthMethod {
    /// `Authorization: Basic` (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` form parameters (RFC 6749 §2.3.1).
    ClientSecretPost,
    /// A JWT signed with one of the client's keys (RFC 7523 §2.2).
    PrivateKeyJwt,
    /// A public client: `client_id` only, no secret.
    None,
    /// `client_id` and a client certificate (RFC 8705 §2.1, PKI): verified
    /// against a CA by the HTTP listener or a trusted proxy, its subject or a
    /// SAN the configured one.
    TlsClientAuth,
}

impl ClientAuthMethod {
    /// The name in metadata and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
            ClientAuthMethod::None => "none",
            ClientAuthMethod::TlsClientAuth => "tls_client_auth",
        }
    }

    fn uses_secret(self) -> bool {
        matches!(self, ClientAuthMethod::ClientSecretBasic | ClientAuthMethod::ClientSecretPost)
    }
}

/// One client of the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Client {
    pub client_id: String,
    /// The one method this client authenticates with.
    pub auth: ClientAuthMethod,
    /// The secret as an argon2id PHC string (`$argon2id$v=19$...`).
    #[serde(default)]
    pub secret_hash: Option<String>,
    /// A file holding the plain secret (trailing newline ignored).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// An environment variable holding the plain secret.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// `private_key_jwt`: the client's public keys, a JWKS document inline...
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// ... or in a file ...
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// ... or at a URL (https, or http to a loopback address), fetched when
    /// the engine loads, then every `engine::clients::JWKS_REFRESH` and on an
    /// unknown `kid` (at most once per `engine::clients::JWKS_MISS_REFETCH`).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// `tls_client_auth` (RFC 8705 §2.1.2): the certificate's subject DN
    /// (RFC 4514 string)...
    #[serde(default)]
    pub tls_client_auth_subject_dn: Option<String>,
    /// ... or a URI SAN it holds (a SPIFFE ID) ...
    #[serde(default)]
    pub tls_client_auth_san_uri: Option<String>,
    /// ... or a DNS SAN it holds.
    #[serde(default)]
    pub tls_client_auth_san_dns: Option<String>,
    /// The grants this client may use (RFC 7591 `grant_types`); omitted or
    /// empty = every grant the token endpoint serves. Another grant is
    /// `unauthorized_client` (RFC 6749 §5.2).
    #[serde(default)]
    pub grant_types: Vec<GrantType>,
}

/// A grant of the token endpoint, as `clients[].grant_types` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantType {
    /// RFC 8693 token exchange.
    TokenExchange,
    /// RFC 7523 §2.1 JWT bearer assertion.
    JwtBearer,
}

impl Client {
    /// Whether this client may use `grant`.
    pub fn may_use(&self, grant: GrantType) -> bool {
        self.grant_types.is_empty() || self.grant_types.contains(&grant)
    }

    /// How many secret sources are set.
    fn secret_sources(&self) -> usize {
        [self.secret_hash.is_some(), self.secret_file.is_some(), self.secret_env.is_some()]
            .into_iter()
            .filter(|s| *s)
            .count()
    }
}

/// The `clients` list: unique ids, exactly one secret source for the secret
/// methods and none for public clients, and a PHC string that parses as
/// argon2id.
pub(super) fn check(clients: &[Client], issues: &mut Issues) {
    let mut seen = HashSet::new();
    for (i, c) in clients.iter().enumerate() {
        let at = format!("clients[{i}]");
        if c.client_id.trim().is_empty() || c.client_id.contains(':') || c.client_id.chars().any(char::is_control) {
            issues.add(format!("{at}.client_id"), "must not be empty or hold a colon or control character");
        } else if !seen.insert(c.client_id.as_str()) {
            issues.add(format!("{at}.client_id"), format!("client {:?} is listed twice", c.client_id));
        }
        if c.auth.uses_secret() {
            if c.secret_sources() != 1 {
                issues.add(
                    at.clone(),
                    format!("{} needs exactly one of `secret_hash`, `secret_file`, `secret_env`", c.auth.as_str()),
                );
            }
        } else if c.secret_sources() != 0 {
            issues.add(at.clone(), format!("a {} client has no secret", c.auth.as_str()));
        }
        let jwks_sources = [c.jwks.is_some(), c.jwks_file.is_some(), c.jwks_url.is_some()];
        let jwks_sources = jwks_sources.iter().filter(|s| **s).count();
        if c.auth == ClientAuthMethod::PrivateKeyJwt {
            if jwks_sources != 1 {
                issues.add(at.clone(), "private_key_jwt needs exactly one of `jwks`, `jwks_file`, `jwks_url`");
            }
        } else if jwks_sources != 0 {
            issues.add(at.clone(), format!("{} does not use `jwks`/`jwks_file`/`jwks_url`", c.auth.as_str()));
        }
        if let Some(Err(why)) = c.jwks_url.as_deref().map(check_jwks_url) {
            issues.add(format!("{at}.jwks_url"), why);
        }
        if c.jwks.as_ref().is_some_and(|j| !j.get("keys").is_some_and(serde_json::Value::is_array)) {
            issues.add(format!("{at}.jwks"), "must be a JWKS document: { keys: [...] }");
        }
        check_tls_client_auth(c, &at, issues);
        if let Some(phc) = &c.secret_hash {
            if let Err(why) = check_phc(phc) {
                issues.add(format!("{at}.secret_hash"), why);
            }
        }
        if c.secret_env.as_deref().is_some_and(|v| v.is_empty()) {
            issues.add(format!("{at}.secret_env"), "must name an environment variable");
        }
    }
}

/// A client's JWKS URL: https, or plain http only to a loopback address
/// (the client's keys decide who it is: no one on the path may swap them).
fn check_jwks_url(url: &str) -> Result<(), String> {
    super::checks::check_url(url)?;
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if parsed.scheme() != "https" && !loopback {
        return Err(format!("{url:?} must use https (plain http only to a loopback address)"));
    }
    Ok(())
}

/// RFC 8705 §2.1.2: a `tls_client_auth` client names exactly one of the
/// subject DN, a URI SAN or a DNS SAN; other clients name none.
fn check_tls_client_auth(c: &Client, at: &str, issues: &mut Issues) {
    let matchers = [
        ("tls_client_auth_subject_dn", &c.tls_client_auth_subject_dn),
        ("tls_client_auth_san_uri", &c.tls_client_auth_san_uri),
        ("tls_client_auth_san_dns", &c.tls_client_auth_san_dns),
    ];
    let set = matchers.iter().filter(|(_, v)| v.is_some()).count();
    if c.auth != ClientAuthMethod::TlsClientAuth {
        if set != 0 {
            issues.add(at.to_owned(), format!("{} does not use `tls_client_auth_*`", c.auth.as_str()));
        }
        return;
    }
    if set != 1 {
        issues.add(
            at.to_owned(),
            "tls_client_auth needs exactly one of `tls_client_auth_subject_dn`, `tls_client_auth_san_uri`, \
             `tls_client_auth_san_dns`",
        );
    }
    for (key, value) in matchers {
        let Some(value) = value else { continue };
        let why = if value.trim().is_empty() || value.chars().any(char::is_control) {
            Some("must not be empty or hold control characters".to_owned())
        } else if key == "tls_client_auth_subject_dn" {
            value.parse::<x509_cert::name::Name>().err().map(|e| {
                format!("is not an RFC 4514 distinguished name such as CN=web,O=Example (no blanks after commas): {e}")
            })
        } else if key == "tls_client_auth_san_uri" && !value.contains(':') {
            Some("must be an absolute URI such as spiffe://example.org/ns/shop/sa/web".to_owned())
        } else if key == "tls_client_auth_san_dns" && value.contains(|ch: char| ch.is_whitespace() || ch == '/') {
            Some("must be a DNS name".to_owned())
        } else {
            None
        };
        if let Some(why) = why {
            issues.add(format!("{at}.{key}"), why);
        }
    }
}

/// An argon2id PHC string (never echoed: it is a secret's hash).
fn check_phc(phc: &str) -> Result<(), String> {
    let parsed = argon2::password_hash::PasswordHash::new(phc).map_err(|e| format!("is not a PHC string ({e})"))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(format!("uses {}; use argon2id", parsed.algorithm));
    }
    if parsed.hash.is_none() || parsed.salt.is_none() {
        return Err("has no salt or hash".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    const PHC: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$1nEzoCk0F1bUc7gOX0dKLMRS+m+rZwFlgtNvgUGugAg";

    fn issues(extra: &str) -> Vec<String> {
        crate::config::tests::issues_in(&format!("{MINIMAL}{extra}"))
    }

    #[test]
    fn clients_are_checked_with_key_paths() {
        let ok = format!(
            "clients:\n  - {{ client_id: a, auth: client_secret_basic, secret_hash: \"{PHC}\" }}\n  \
             - {{ client_id: b, auth: client_secret_post, secret_env: B_SECRET }}\n  - {{ client_id: c, auth: none }}\n"
        );
        assert!(issues(&ok).is_empty(), "{:?}", issues(&ok));
        let bad = "clients:\n  - { client_id: a, auth: client_secret_basic }\n  \
                   - { client_id: a, auth: none, secret_env: X }\n  \
                   - { client_id: c, auth: client_secret_post, secret_env: X, secret_file: /x }\n  \
                   - { client_id: d, auth: client_secret_basic, secret_hash: \"$pbkdf2-sha256$i=1000$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\" }\n  \
                   - { client_id: e, auth: client_secret_basic, secret_hash: plain }\n  \
                   - { client_id: \"\", auth: none }\n  \
                   - { client_id: f, auth: private_key_jwt }\n  \
                   - { client_id: g, auth: none, jwks: { nokeys: 1 } }\n";
        let got = issues(bad);
        assert_eq!(
            got[..4],
            [
                "clients[0]: client_secret_basic needs exactly one of `secret_hash`, `secret_file`, `secret_env`",
                "clients[1].client_id: client \"a\" is listed twice",
                "clients[1]: a none client has no secret",
                "clients[2]: client_secret_post needs exactly one of `secret_hash`, `secret_file`, `secret_env`",
            ],
            "{got:?}"
        );
        assert_eq!(got[4], "clients[3].secret_hash: uses pbkdf2-sha256; use argon2id", "{got:?}");
        assert!(got[5].starts_with("clients[4].secret_hash: is not a PHC string"), "{got:?}");
        assert_eq!(got[6], "clients[5].client_id: must not be empty or hold a colon or control character");
        assert_eq!(got[7], "clients[6]: private_key_jwt needs exactly one of `jwks`, `jwks_file`, `jwks_url`");
        assert_eq!(got[8], "clients[7]: none does not use `jwks`/`jwks_file`/`jwks_url`");
        assert_eq!(got[9], "clients[7].jwks: must be a JWKS document: { keys: [...] }");
        assert_eq!(got.len(), 10, "{got:?}");
        let err =
            Config::from_yaml_str(&format!("{MINIMAL}clients:\n  - {{ client_id: a, auth: client_secret_jwt }}\n"))
                .unwrap_err()
                .to_string();
        assert!(err.contains("clients[0].auth"), "{err}");
    }

    #[test]
    fn a_jwks_url_is_https_or_loopback() {
        let client =
            |url: &str| format!("clients:\n  - {{ client_id: j, auth: private_key_jwt, jwks_url: \"{url}\" }}\n");
        for ok in ["https://keys.example/jwks", "http://127.0.0.1:8080/jwks", "http://[::1]/j", "http://localhost/j"] {
            assert_eq!(issues(&client(ok)), Vec::<String>::new(), "{ok}");
        }
        for bad in ["http://keys.example/jwks", "http://10.0.0.1/jwks", "ftp://127.0.0.1/j", "https://k.example/j?x=1"]
        {
            let got = issues(&client(bad));
            assert_eq!(got.len(), 1, "{bad}: {got:?}");
            assert!(got[0].starts_with("clients[0].jwks_url: "), "{got:?}");
        }
        let two =
            "clients:\n  - { client_id: j, auth: private_key_jwt, jwks_url: \"https://k.example/j\", jwks_file: /x }\n";
        assert_eq!(issues(two), ["clients[0]: private_key_jwt needs exactly one of `jwks`, `jwks_file`, `jwks_url`"]);
    }

    #[test]
    fn unauthenticated_requests_default_to_allowed_only_without_clients() {
        let cfg = Config::from_yaml_validated(MINIMAL).unwrap();
        assert!(cfg.token_endpoint.allows_unauthenticated(&cfg.clients));
        let with = format!("{MINIMAL}clients:\n  - {{ client_id: c, auth: none }}\n");
        let cfg = Config::from_yaml_validated(&with).unwrap();
        assert!(!cfg.token_endpoint.allows_unauthenticated(&cfg.clients));
        let cfg =
            Config::from_yaml_validated(&format!("{with}token_endpoint: {{ allow_unauthenticated: true }}\n")).unwrap();
        assert!(cfg.token_endpoint.allows_unauthenticated(&cfg.clients));
    }
}
