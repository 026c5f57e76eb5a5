//! `tokens`: limits on minted and accepted tokens.

use std::time::Duration;

use serde::Deserialize;

use super::checks::Issues;
use super::values::Dur;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tokens {
    /// Lifetime of minted tokens unless a rule caps it lower; never past the
    /// subject token's own `exp`.
    pub lifetime: Dur,
    /// Subject or actor tokens longer than this are refused before parsing.
    pub max_token_bytes: usize,
}

impl Default for Tokens {
    fn default() -> Self {
        Tokens { lifetime: Dur::secs(300), max_token_bytes: 16 * 1024 }
    }
}

impl Tokens {
    pub(super) fn check(&self, issues: &mut Issues) {
        if self.lifetime.0 < Duration::from_secs(1) {
            issues.add("tokens.lifetime", "must be at least 1s");
        }
        if self.lifetime.0 > Duration::from_secs(24 * 3600) {
            issues.add("tokens.lifetime", "must be at most 24h: minted tokens are meant to be short-lived");
        }
        if self.max_token_bytes < 256 || self.max_token_bytes > 1024 * 1024 {
            issues.add("tokens.max_token_bytes", "must be between 256 and 1048576");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    #[test]
    fn defaults_are_the_documented_ones() {
        let cfg =
            Config::from_yaml_str(&format!("tokens: {{ lifetime: 5m, max_token_bytes: 16384 }}\n{MINIMAL}")).unwrap();
        assert_eq!(cfg.tokens, Tokens::default());
        assert_eq!(Config::from_yaml_str(MINIMAL).unwrap().tokens, Tokens::default());
    }

    #[test]
    fn limits_are_checked() {
        for (tokens, path) in [
            ("{ lifetime: 0s }", "tokens.lifetime"),
            ("{ lifetime: 25h }", "tokens.lifetime"),
            ("{ max_token_bytes: 255 }", "tokens.max_token_bytes"),
            ("{ max_token_bytes: 1048577 }", "tokens.max_token_bytes"),
        ] {
            let issues = Config::from_yaml_str(&format!("tokens: {tokens}\n{MINIMAL}")).unwrap().check().unwrap_err();
            assert_eq!(issues.len(), 1, "{tokens}: {issues:?}");
            assert_eq!(issues[0].path, path, "{tokens}");
        }
        Config::from_yaml_validated(&format!("tokens: {{ lifetime: 24h, max_token_bytes: 256 }}\n{MINIMAL}")).unwrap();
    }
}
