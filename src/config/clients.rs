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
}

impl ClientAuthMethod {
    /// The name in metadata and configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            ClientAuthMethod::ClientSecretBasic => "client_secret_basic",
            ClientAuthMethod::ClientSecretPost => "client_secret_post",
            ClientAuthMethod::PrivateKeyJwt => "private_key_jwt",
            ClientAuthMethod::None => "none",
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
    /// ... or in a file.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
}

impl Client {
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
        let jwks_sources = usize::from(c.jwks.is_some()) + usize::from(c.jwks_file.is_some());
        if c.auth == ClientAuthMethod::PrivateKeyJwt {
            if jwks_sources != 1 {
                issues.add(at.clone(), "private_key_jwt needs exactly one of `jwks`, `jwks_file`");
            }
        } else if jwks_sources != 0 {
            issues.add(at.clone(), format!("{} does not use `jwks`/`jwks_file`", c.auth.as_str()));
        }
        if c.jwks.as_ref().is_some_and(|j| !j.get("keys").is_some_and(serde_json::Value::is_array)) {
            issues.add(format!("{at}.jwks"), "must be a JWKS document: { keys: [...] }");
        }
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
        let text = format!("{MINIMAL}{extra}");
        Config::from_yaml_str(&text)
            .unwrap()
            .check()
            .err()
            .unwrap_or_default()
            .iter()
            .map(ToString::to_string)
            .collect()
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
        assert_eq!(got[7], "clients[6]: private_key_jwt needs exactly one of `jwks`, `jwks_file`");
        assert_eq!(got[8], "clients[7]: none does not use `jwks`/`jwks_file`");
        assert_eq!(got[9], "clients[7].jwks: must be a JWKS document: { keys: [...] }");
        assert_eq!(got.len(), 10, "{got:?}");
        let err = Config::from_yaml_str(&format!("{MINIMAL}clients:\n  - {{ client_id: a, auth: tls_client_auth }}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("clients[0].auth"), "{err}");
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
