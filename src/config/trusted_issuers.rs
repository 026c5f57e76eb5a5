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
    /// Tokens that are not JWTs (opaque reference tokens) are this issuer's:
    /// at most one issuer says so, and it needs `introspection`. Which IdP an
    /// opaque token belongs to is never guessed by asking each of them.
    #[serde(default)]
    pub opaque_tokens: bool,
    /// Validate this issuer's tokens by RFC 7662 introspection.
    #[serde(default)]
    pub introspection: Option<Introspection>,
    /// Validate this issuer's opaque tokens at its OIDC userinfo endpoint
    /// (Keycloak's fallback, for IdPs without JWTs or introspection).
    #[serde(default)]
    pub userinfo: Option<Userinfo>,
}

/// A token is valid if the issuer's userinfo endpoint accepts it as a bearer
/// token; `sub` and claims come from the answer.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Userinfo {
    /// Default: the discovery document's `userinfo_endpoint`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// An accepted token is believed for this long, and the token minted
    /// from it lives no longer (a userinfo answer has no `exp`).
    #[serde(default = "secs::<60>")]
    pub cache_for: Dur,
    #[serde(default = "secs::<5>")]
    pub negative_cache_for: Dur,
    #[serde(default = "secs::<2>")]
    pub timeout: Dur,
    #[serde(default = "max_concurrency")]
    pub max_concurrency: usize,
    #[serde(default = "max_response_bytes")]
    pub max_response_bytes: usize,
    #[serde(default = "cache_max_bytes")]
    pub cache_max_bytes: u64,
}

impl Userinfo {
    /// The same limits as an introspection block, which the client shares.
    pub(crate) fn as_introspection(&self) -> Introspection {
        Introspection {
            endpoint: self.endpoint.clone(),
            client_id: String::new(),
            auth: IntrospectionAuth::default(),
            client_secret_file: None,
            client_secret_env: None,
            signing_kid: None,
            for_jwts: false,
            cache_for: self.cache_for,
            negative_cache_for: self.negative_cache_for,
            timeout: self.timeout,
            max_concurrency: self.max_concurrency,
            max_response_bytes: self.max_response_bytes,
            cache_max_bytes: self.cache_max_bytes,
        }
    }
}

/// How stsgate asks an issuer's RFC 7662 introspection endpoint about a token.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Introspection {
    /// The endpoint; default: the `introspection_endpoint` of the issuer's
    /// discovery document (`discovery: true` or `discovery_url`).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// stsgate's client identifier at the IdP.
    pub client_id: String,
    /// How stsgate authenticates to the endpoint.
    #[serde(default)]
    pub auth: IntrospectionAuth,
    /// The client secret, read from this file (trailing newline dropped).
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// The client secret, read from this environment variable.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// `private_key_jwt`: the kid of stsgate's own signing key that signs the
    /// client assertion (default: the active key).
    #[serde(default)]
    pub signing_kid: Option<String>,
    /// Also introspect this issuer's JWTs after their signature checks (for
    /// deployments that must see revocations).
    #[serde(default)]
    pub for_jwts: bool,
    /// An active answer is reused for at most this long (never past the
    /// token's `exp`): the revocation latency.
    #[serde(default = "secs::<60>")]
    pub cache_for: Dur,
    /// An inactive answer is reused for this long.
    #[serde(default = "secs::<5>")]
    pub negative_cache_for: Dur,
    /// Timeout of each introspection request; past it the request is refused
    /// with 503 (fail closed).
    #[serde(default = "secs::<2>")]
    pub timeout: Dur,
    /// At most this many introspection requests to this issuer at once.
    #[serde(default = "max_concurrency")]
    pub max_concurrency: usize,
    /// Largest introspection answer read.
    #[serde(default = "max_response_bytes")]
    pub max_response_bytes: usize,
    /// Memory bound of the cache of answers, in bytes.
    #[serde(default = "cache_max_bytes")]
    pub cache_max_bytes: u64,
}

/// RFC 7591 names of the client authentication methods stsgate can use.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IntrospectionAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
    /// RFC 7523 client assertion signed with one of stsgate's signing keys
    /// (the IdP reads them from stsgate's published JWKS).
    PrivateKeyJwt,
}

fn max_concurrency() -> usize {
    32
}
fn max_response_bytes() -> usize {
    64 * 1024
}
fn cache_max_bytes() -> u64 {
    16 * 1024 * 1024
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
        if let Some(i) = &self.introspection {
            i.check(&format!("{at}.introspection"), self, issues);
        }
        if let Some(u) = &self.userinfo {
            let at = format!("{at}.userinfo");
            if self.introspection.is_some() {
                issues.add(&at, "choose one of `introspection` and `userinfo`");
            }
            if !self.opaque_tokens {
                issues.add(&at, "userinfo validates opaque tokens only: set `opaque_tokens: true`");
            }
            // A userinfo answer names no audience: the check could never pass.
            if !self.audiences.is_empty() {
                issues.add(&at, "cannot check `audiences` (a userinfo answer has no `aud`): remove one of them");
            }
            u.as_introspection().check_limits(&at, self, issues);
        }
        if self.opaque_tokens && self.introspection.is_none() && self.userinfo.is_none() {
            issues.add(
                format!("{at}.opaque_tokens"),
                "opaque tokens are validated by introspection or userinfo: add an `introspection` or `userinfo` block",
            );
        }
    }
}

impl Introspection {
    fn check(&self, at: &str, issuer: &TrustedIssuer, issues: &mut Issues) {
        self.check_limits(at, issuer, issues);
        if self.client_id.is_empty() {
            issues.add(format!("{at}.client_id"), "must not be empty");
        }
        let secrets = [self.client_secret_file.is_some(), self.client_secret_env.is_some()];
        let secrets = secrets.iter().filter(|s| **s).count();
        match self.auth {
            IntrospectionAuth::ClientSecretBasic | IntrospectionAuth::ClientSecretPost if secrets != 1 => issues.add(
                at,
                "client_secret_basic and client_secret_post need exactly one of `client_secret_file`, `client_secret_env`",
            ),
            IntrospectionAuth::PrivateKeyJwt if secrets != 0 => {
                issues.add(at, "private_key_jwt signs with stsgate's own key: remove the client secret")
            }
            _ => {}
        }
        if self.signing_kid.is_some() && self.auth != IntrospectionAuth::PrivateKeyJwt {
            issues.add(format!("{at}.signing_kid"), "is only used by `auth: private_key_jwt`");
        }
        if let Some(f) = &self.client_secret_file {
            if !f.is_file() {
                issues.add(
                    format!("{at}.client_secret_file"),
                    format!("{} does not exist or is not a file", f.display()),
                );
            }
        }
        if self.client_secret_env.as_deref().is_some_and(str::is_empty) {
            issues.add(format!("{at}.client_secret_env"), "must name an environment variable");
        }
    }

    /// What introspection and userinfo share: where the endpoint is, and the limits.
    fn check_limits(&self, at: &str, issuer: &TrustedIssuer, issues: &mut Issues) {
        match &self.endpoint {
            Some(url) => {
                if let Err(why) = check_endpoint(url) {
                    issues.add(format!("{at}.endpoint"), why);
                }
            }
            None if !(issuer.discovery || issuer.discovery_url.is_some()) => {
                issues.add(format!("{at}.endpoint"), "is required unless the issuer uses discovery")
            }
            None => {}
        }
        // The bound is the revocation latency: a day would make revocation moot.
        if self.cache_for.0 > Duration::from_secs(3600) {
            issues.add(format!("{at}.cache_for"), "must be at most 1h (it is how late a revocation is noticed)");
        }
        if self.negative_cache_for.0 > Duration::from_secs(60) {
            issues.add(format!("{at}.negative_cache_for"), "must be at most 1m");
        }
        if self.timeout.0 < Duration::from_millis(50) || self.timeout.0 > Duration::from_secs(30) {
            issues.add(format!("{at}.timeout"), "must be between 50ms and 30s");
        }
        if !(1..=1024).contains(&self.max_concurrency) {
            issues.add(format!("{at}.max_concurrency"), "must be between 1 and 1024");
        }
        if !(1024..=1024 * 1024).contains(&self.max_response_bytes) {
            issues.add(format!("{at}.max_response_bytes"), "must be between 1024 and 1048576");
        }
    }
}

impl Introspection {
    /// An introspection endpoint: https, or http only to this machine (the
    /// request carries stsgate's client secret and the token). Also applied
    /// to a discovered endpoint.
    pub(crate) fn endpoint_ok(url: &str) -> Result<(), String> {
        check_endpoint(url)
    }
}

fn check_endpoint(url: &str) -> Result<(), String> {
    check_url(url)?;
    let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
    let host = parsed.host_str().unwrap_or_default();
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if parsed.scheme() == "http" && !loopback {
        return Err(format!("{url:?} must use https (http only for a loopback address)"));
    }
    Ok(())
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
    // One issuer, or none, owns opaque tokens: an opaque token carries no `iss`.
    let opaque: Vec<usize> = trusted.iter().enumerate().filter(|(_, t)| t.opaque_tokens).map(|(i, _)| i).collect();
    if let [_, rest @ ..] = opaque.as_slice() {
        for i in rest {
            issues.add(
                format!("trusted_issuers[{i}].opaque_tokens"),
                format!("only one issuer may take opaque tokens; trusted_issuers[{}] already does", opaque[0]),
            );
        }
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

    /// MINIMAL's issuer with an introspection block of `lines` (indented 6).
    fn introspecting(top: &str, lines: &str) -> Result<Config, Vec<crate::config::ConfigIssue>> {
        let block: String = lines.lines().map(|l| format!("      {l}\n")).collect();
        with(&format!("{top}introspection:\n{block}"))
    }

    #[test]
    fn introspection_is_checked_with_key_paths() {
        let ok = introspecting(
            "opaque_tokens: true\n    ",
            "endpoint: https://idp.example.com/introspect\nclient_id: sts\nclient_secret_env: SECRET",
        )
        .unwrap();
        let i = ok.trusted_issuers[0].introspection.as_ref().unwrap();
        assert_eq!((i.auth, i.cache_for, i.for_jwts), (IntrospectionAuth::ClientSecretBasic, Dur::secs(60), false));
        // Loopback may be plain http; nothing else.
        for endpoint in ["http://127.0.0.1:9/i", "http://localhost/i", "http://[::1]:9/i"] {
            let lines = format!("endpoint: {endpoint}\nclient_id: sts\nclient_secret_env: S");
            assert!(introspecting("", &lines).is_ok(), "{endpoint}");
        }
        let at = "trusted_issuers[0].introspection";
        for (lines, path) in [
            ("endpoint: http://idp.example.com/i\nclient_id: sts\nclient_secret_env: S", format!("{at}.endpoint")),
            ("endpoint: https://idp.example.com/i?x=1\nclient_id: sts\nclient_secret_env: S", format!("{at}.endpoint")),
            // jwks_url, no discovery: nowhere to find the endpoint.
            ("client_id: sts\nclient_secret_env: S", format!("{at}.endpoint")),
            ("endpoint: https://i.example/i\nclient_id: sts", at.to_owned()),
            (
                "endpoint: https://i.example/i\nclient_id: sts\nclient_secret_env: S\nclient_secret_file: Cargo.toml",
                at.to_owned(),
            ),
            (
                "endpoint: https://i.example/i\nclient_id: sts\nauth: private_key_jwt\nclient_secret_env: S",
                at.to_owned(),
            ),
            (
                "endpoint: https://i.example/i\nclient_id: sts\nclient_secret_env: S\nsigning_kid: k1",
                format!("{at}.signing_kid"),
            ),
            ("endpoint: https://i.example/i\nclient_id: ''\nclient_secret_env: S", format!("{at}.client_id")),
            (
                "endpoint: https://i.example/i\nclient_id: s\nclient_secret_file: /nonexistent/secret",
                format!("{at}.client_secret_file"),
            ),
            (
                "endpoint: https://i.example/i\nclient_id: s\nclient_secret_env: S\ncache_for: 2h",
                format!("{at}.cache_for"),
            ),
            (
                "endpoint: https://i.example/i\nclient_id: s\nclient_secret_env: S\ntimeout: 1ms",
                format!("{at}.timeout"),
            ),
            (
                "endpoint: https://i.example/i\nclient_id: s\nclient_secret_env: S\nmax_concurrency: 0",
                format!("{at}.max_concurrency"),
            ),
        ] {
            let issues = introspecting("", lines).unwrap_err();
            assert_eq!(issues.len(), 1, "{lines}: {issues:?}");
            assert_eq!(issues[0].path, path, "{lines}");
        }
        let issues = with("opaque_tokens: true").unwrap_err();
        assert_eq!(issues[0].path, "trusted_issuers[0].opaque_tokens");
        assert!(issues[0].message.contains("introspection"), "{issues:?}");
    }

    #[test]
    fn only_one_issuer_takes_opaque_tokens() {
        let entry = |n: u8| {
            format!(
                "  - issuer: https://idp{n}.example.com\n    discovery: true\n    opaque_tokens: true\n    \
                 introspection: {{ client_id: sts, client_secret_env: S }}\n"
            )
        };
        let text = MINIMAL.replace(
            "  - issuer: https://idp.example.com\n    jwks_url: https://idp.example.com/jwks\n",
            &format!("{}{}", entry(1), entry(2)),
        );
        let issues = Config::from_yaml_str(&text).unwrap().check().unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].path, "trusted_issuers[1].opaque_tokens");
        assert!(issues[0].message.contains("trusted_issuers[0]"), "{issues:?}");
    }

    #[test]
    fn userinfo_is_an_explicit_choice_for_opaque_tokens() {
        let ok =
            with("opaque_tokens: true\n    userinfo: { endpoint: https://idp.example.com/userinfo, cache_for: 30s }");
        assert_eq!(ok.unwrap().trusted_issuers[0].userinfo.as_ref().unwrap().cache_for, Dur::secs(30));
        let at = "trusted_issuers[0].userinfo";
        for (lines, path) in [
            ("userinfo: { endpoint: https://idp.example.com/u }", at),
            ("opaque_tokens: true\n    audiences: [x]\n    userinfo: { endpoint: https://idp.example.com/u }", at),
            ("opaque_tokens: true\n    userinfo: {}", "trusted_issuers[0].userinfo.endpoint"),
            (
                "opaque_tokens: true\n    userinfo: { endpoint: http://idp.example.com/u }",
                "trusted_issuers[0].userinfo.endpoint",
            ),
        ] {
            let issues = with(lines).unwrap_err();
            assert_eq!(issues.len(), 1, "{lines}: {issues:?}");
            assert_eq!(issues[0].path, path, "{lines}");
        }
        let both = "opaque_tokens: true\n    userinfo: { endpoint: https://i.example/u }\n    \
                    introspection: { endpoint: https://i.example/i, client_id: s, client_secret_env: S }";
        let issues = with(both).unwrap_err();
        assert!(issues.iter().any(|i| i.path == at && i.message.contains("one of")), "{issues:?}");
    }
}
