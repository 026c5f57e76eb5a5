//! `trusted_issuers`: the identity providers whose tokens stsgate accepts.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::checks::{Issues, check_url};
use super::values::{Dur, VerifyAlg};

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
    #[serde(default = "rs256_only")]
    pub algorithms: Vec<VerifyAlg>,
    /// When non-empty, the subject token's `aud` must contain one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Require header `typ: at+jwt` (RFC 9068). Many IdPs still send `JWT`.
    #[serde(default)]
    pub require_at_jwt: bool,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    #[serde(default = "secs::<30>")]
    pub leeway: Dur,
    /// How often keys are re-fetched in the background.
    #[serde(default = "secs::<600>")]
    pub refresh_interval: Dur,
    /// At most one re-fetch per this interval when a token names an unknown `kid`.
    #[serde(default = "secs::<30>")]
    pub unknown_kid_refetch_interval: Dur,
    /// Timeout of each discovery/JWKS HTTP request.
    #[serde(default = "secs::<5>")]
    pub fetch_timeout: Dur,
}

// `issuer` is required, so the struct cannot take `#[serde(default)]` as a
// whole; serde needs a function for each default that is not the type's own.
fn rs256_only() -> Vec<VerifyAlg> {
    vec![VerifyAlg::RS256]
}
fn secs<const N: u64>() -> Dur {
    Dur::secs(N)
}

/// Where an issuer's keys come from, resolved from the mutually exclusive keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    Discovery(String),
    JwksUrl(String),
    JwksFile(PathBuf),
}

impl TrustedIssuer {
    /// The key source; `check()` guarantees exactly one is configured.
    pub(crate) fn key_source(&self) -> KeySource {
        if let Some(url) = &self.discovery_url {
            KeySource::Discovery(url.clone())
        } else if self.discovery {
            KeySource::Discovery(format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/')))
        } else if let Some(url) = &self.jwks_url {
            KeySource::JwksUrl(url.clone())
        } else if let Some(path) = &self.jwks_file {
            KeySource::JwksFile(path.clone())
        } else {
            unreachable!("check() requires one key source per trusted issuer")
        }
    }

    /// The issuer at key path `at`; `own_issuer` is stsgate's, which it may not trust.
    fn check(&self, at: &str, own_issuer: &str, issues: &mut Issues) {
        if self.issuer == own_issuer {
            issues.add(
                format!("{at}.issuer"),
                "is stsgate's own issuer, which is not an IdP: to re-exchange the tokens stsgate minted, list `self` in a rule's match.issuers (with a `workloads` table) instead",
            );
        }
        let sources =
            [self.discovery || self.discovery_url.is_some(), self.jwks_url.is_some(), self.jwks_file.is_some()];
        match sources.iter().filter(|s| **s).count() {
            0 => issues.add(at, "set one key source: `discovery: true`, `discovery_url`, `jwks_url` or `jwks_file`"),
            1 => {}
            _ => issues.add(at, "set only one key source of `discovery`/`discovery_url`, `jwks_url`, `jwks_file`"),
        }
        if self.discovery {
            if let Err(why) = check_url(&self.issuer) {
                issues.add(format!("{at}.issuer"), format!("discovery needs an http(s) issuer URL: {why}"));
            }
        }
        for (key, url) in [("discovery_url", &self.discovery_url), ("jwks_url", &self.jwks_url)] {
            if let Some(url) = url {
                if let Err(why) = check_url(url) {
                    issues.add(format!("{at}.{key}"), why);
                }
            }
        }
        if let Some(f) = &self.jwks_file {
            if !f.is_file() {
                issues.add(format!("{at}.jwks_file"), format!("{} does not exist or is not a file", f.display()));
            }
        }
        if self.algorithms.is_empty() {
            issues.add(format!("{at}.algorithms"), "at least one algorithm is required");
        }
        if self.leeway.0 > Duration::from_secs(300) {
            issues.add(format!("{at}.leeway"), "must be at most 5m");
        }
        // At most a day: a key the IdP withdraws stays trusted until the next refresh.
        if self.refresh_interval.0 < Duration::from_secs(10) || self.refresh_interval.0 > Duration::from_secs(86400) {
            issues.add(format!("{at}.refresh_interval"), "must be between 10s and 24h");
        }
        // Below 1s, tokens with made-up kids would make stsgate hammer the IdP.
        if self.unknown_kid_refetch_interval.0 < Duration::from_secs(1) {
            issues.add(format!("{at}.unknown_kid_refetch_interval"), "must be at least 1s");
        }
        if self.fetch_timeout.0 < Duration::from_millis(100) || self.fetch_timeout.0 > Duration::from_secs(60) {
            issues.add(format!("{at}.fetch_timeout"), "must be between 100ms and 60s");
        }
    }
}

/// The `trusted_issuers` list: at least one, each once, none of them stsgate itself.
pub(super) fn check(trusted: &[TrustedIssuer], own_issuer: &str, issues: &mut Issues) {
    if trusted.is_empty() {
        issues.add("trusted_issuers", "at least one trusted issuer is required");
    }
    let mut seen = HashSet::new();
    for (i, iss) in trusted.iter().enumerate() {
        let at = format!("trusted_issuers[{i}]");
        if iss.issuer.is_empty() {
            issues.add(format!("{at}.issuer"), "must not be empty");
        } else if !seen.insert(iss.issuer.as_str()) {
            issues.add(format!("{at}.issuer"), format!("issuer {:?} is listed twice", iss.issuer));
        }
        iss.check(&at, own_issuer, issues);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    /// MINIMAL's trusted issuer with `line` added.
    fn with(line: &str) -> Result<Config, Vec<crate::config::ConfigIssue>> {
        let text = MINIMAL.replace(
            "    jwks_url: https://idp.example.com/jwks",
            &format!("    jwks_url: https://idp.example.com/jwks\n    {line}"),
        );
        let cfg = Config::from_yaml_str(&text).unwrap();
        cfg.check().map(|()| cfg)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let cfg = Config::from_yaml_validated(MINIMAL).unwrap();
        let spelled = with(
            "algorithms: [RS256]\n    audiences: []\n    require_at_jwt: false\n    leeway: 30s\n    \
             refresh_interval: 10m\n    unknown_kid_refetch_interval: 30s\n    fetch_timeout: 5s",
        )
        .unwrap();
        assert_eq!(cfg.trusted_issuers, spelled.trusted_issuers);
        assert_eq!(cfg.trusted_issuers[0].algorithms, vec![VerifyAlg::RS256]);
        assert_eq!(cfg.trusted_issuers[0].leeway, Dur::secs(30));
    }

    #[test]
    fn bad_algorithm_and_duration_are_explained() {
        let text = MINIMAL.replace(
            "    jwks_url: https://idp.example.com/jwks",
            "    jwks_url: https://idp.example.com/jwks\n    algorithms: [HS256]",
        );
        let err = Config::from_yaml_str(&text).unwrap_err().to_string();
        assert!(err.contains("trusted_issuers[0].algorithms[0]") && err.contains("HS256"), "{err}");

        let text = MINIMAL.replace(
            "    jwks_url: https://idp.example.com/jwks",
            "    jwks_url: https://idp.example.com/jwks\n    leeway: soon",
        );
        let err = Config::from_yaml_str(&text).unwrap_err().to_string();
        assert!(err.contains("trusted_issuers[0].leeway") && err.contains("not a duration"), "{err}");
    }

    #[test]
    fn key_refresh_intervals_are_bounded() {
        for ok in
            ["unknown_kid_refetch_interval: 1s", "refresh_interval: 10s", "refresh_interval: 24h", "fetch_timeout: 60s"]
        {
            assert!(with(ok).is_ok(), "{ok}");
        }
        for (line, path) in [
            ("unknown_kid_refetch_interval: 0s", "trusted_issuers[0].unknown_kid_refetch_interval"),
            ("unknown_kid_refetch_interval: 999ms", "trusted_issuers[0].unknown_kid_refetch_interval"),
            ("refresh_interval: 9s", "trusted_issuers[0].refresh_interval"),
            ("refresh_interval: 25h", "trusted_issuers[0].refresh_interval"),
            ("fetch_timeout: 10ms", "trusted_issuers[0].fetch_timeout"),
            ("fetch_timeout: 2m", "trusted_issuers[0].fetch_timeout"),
            ("leeway: 6m", "trusted_issuers[0].leeway"),
            ("algorithms: []", "trusted_issuers[0].algorithms"),
        ] {
            let issues = with(line).unwrap_err();
            assert_eq!(issues.len(), 1, "{line}: {issues:?}");
            assert_eq!(issues[0].path, path, "{line}");
        }
    }

    #[test]
    fn own_issuer_cannot_be_trusted() {
        let text = MINIMAL.replace("  - issuer: https://idp.example.com", "  - issuer: https://sts.example.com");
        let issues = Config::from_yaml_str(&text).unwrap().check().unwrap_err();
        assert!(
            issues.iter().any(|i| i.path == "trusted_issuers[0].issuer"
                && i.message.contains("own issuer")
                && i.message.contains("`self`")),
            "{issues:?}"
        );
    }

    #[test]
    fn key_source_is_resolved() {
        let cfg = with("discovery_url: https://idp.example.com/meta").unwrap_err();
        assert_eq!(cfg[0].path, "trusted_issuers[0]", "two sources: {cfg:?}");
        let text = MINIMAL.replace("    jwks_url: https://idp.example.com/jwks", "    discovery: true");
        let cfg = Config::from_yaml_validated(&text).unwrap();
        assert_eq!(
            cfg.trusted_issuers[0].key_source(),
            KeySource::Discovery("https://idp.example.com/.well-known/openid-configuration".into())
        );
    }
}
