//! `signing`: stsgate's own keys.

use std::collections::HashSet;
use std::path::PathBuf;

use serde::Deserialize;

use super::checks::Issues;
use super::values::SignAlg;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signing {
    /// The `kid` of the key that signs; defaults to the first key.
    #[serde(default)]
    pub active: Option<String>,
    pub keys: Vec<SigningKey>,
}

impl Signing {
    /// `active`, or else the first key.
    pub(crate) fn active_kid(&self) -> &str {
        self.active.as_deref().unwrap_or_else(|| self.keys.first().map(|k| k.kid.as_str()).unwrap_or(""))
    }

    pub(super) fn check(&self, issues: &mut Issues) {
        if self.keys.is_empty() {
            issues.add("signing.keys", "at least one signing key is required");
        }
        let mut kids = HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            let at = format!("signing.keys[{i}]");
            if key.kid.trim().is_empty() {
                issues.add(format!("{at}.kid"), "must not be empty");
            } else if !kids.insert(key.kid.as_str()) {
                issues.add(format!("{at}.kid"), format!("duplicate kid {:?}", key.kid));
            }
            match (&key.file, key.ephemeral) {
                (None, false) => issues.add(at, "set `file` (a PEM private key) or `ephemeral: true`"),
                (Some(_), true) => issues.add(at, "`file` and `ephemeral: true` are mutually exclusive"),
                (Some(f), false) if !f.is_file() => {
                    issues.add(format!("{at}.file"), format!("{} does not exist or is not a file", f.display()))
                }
                _ => {}
            }
        }
        if let Some(active) = &self.active {
            if !self.keys.iter().any(|k| &k.kid == active) {
                issues.add("signing.active", format!("no key in signing.keys has kid {active:?}"));
            }
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningKey {
    pub kid: String,
    #[serde(default)]
    pub alg: SignAlg,
    /// PEM private key (PKCS#8; SEC1 for EC and PKCS#1 for RSA also accepted).
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// Generate a key in memory at start-up instead of reading a file. Tokens
    /// signed with it cannot be verified after a restart or by other replicas:
    /// for development only.
    #[serde(default)]
    pub ephemeral: bool,
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    fn signing_issues(signing: &str) -> Vec<String> {
        let base = MINIMAL.replace("signing:\n  keys:\n    - kid: k1\n      ephemeral: true\n", signing);
        let issues = Config::from_yaml_str(&base).unwrap().check().err().unwrap_or_default();
        issues.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn active_defaults_to_the_first_key() {
        let cfg = Config::from_yaml_validated(MINIMAL).unwrap();
        assert_eq!(cfg.active_kid(), "k1");
        let two = "signing:\n  keys: [{ kid: a, ephemeral: true }, { kid: b, alg: EdDSA, ephemeral: true }]\n";
        assert!(signing_issues(two).is_empty());
    }

    #[test]
    fn keys_are_checked_one_by_one() {
        let issues = signing_issues(
            "signing:\n  active: c\n  keys:\n    - { kid: a }\n    - { kid: a, ephemeral: true }\n    \
             - { kid: \" \", file: /nonexistent/key.pem }\n    - { kid: d, file: /x.pem, ephemeral: true }\n",
        );
        assert_eq!(
            issues,
            [
                "signing.keys[0]: set `file` (a PEM private key) or `ephemeral: true`",
                "signing.keys[1].kid: duplicate kid \"a\"",
                "signing.keys[2].kid: must not be empty",
                "signing.keys[2].file: /nonexistent/key.pem does not exist or is not a file",
                "signing.keys[3]: `file` and `ephemeral: true` are mutually exclusive",
                "signing.active: no key in signing.keys has kid \"c\"",
            ]
        );
        assert_eq!(signing_issues("signing:\n  keys: []\n"), ["signing.keys: at least one signing key is required"]);
    }
}
