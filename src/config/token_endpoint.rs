//! `token_endpoint`: the RFC 8693 token endpoint on the HTTP listener.

use serde::Deserialize;

use super::checks::Issues;
use super::dev_idp::DevIdp;

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
}

impl Default for TokenEndpoint {
    fn default() -> Self {
        TokenEndpoint { enabled: true, path: "/token".into(), allow_unauthenticated: None }
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

    /// The endpoint's path, which may not take one the HTTP listener already
    /// serves, the dev IdP's included.
    pub(super) fn check(&self, dev_idp: Option<&DevIdp>, issues: &mut Issues) {
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
}
