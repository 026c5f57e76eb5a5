//! `cache`: the caches of minted and validated tokens.

use std::time::Duration;

use serde::Deserialize;

use super::checks::Issues;
use super::values::Dur;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// Reuse minted tokens for identical exchanges.
    pub enabled: bool,
    /// Memory bound of the minted-token cache, in bytes.
    pub max_bytes: u64,
    /// A minted token is handed out again until this percentage of its
    /// lifetime has passed, then re-minted (so callers never get one about to expire).
    pub reuse_percent: u8,
    /// How long a validated subject/actor token is remembered (never past its `exp`).
    pub validated_ttl: Dur,
    /// Memory bound of the validated-token cache, in bytes.
    pub validated_max_bytes: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            reuse_percent: 50,
            validated_ttl: Dur::secs(30),
            validated_max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl CacheConfig {
    pub(super) fn check(&self, issues: &mut Issues) {
        if !(1..=95).contains(&self.reuse_percent) {
            issues.add("cache.reuse_percent", "must be between 1 and 95");
        }
        if self.validated_ttl.0 > Duration::from_secs(300) {
            issues.add("cache.validated_ttl", "must be at most 5m");
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
        // The values of the README's configuration reference, spelled out.
        let spelled = "cache:\n  enabled: true\n  max_bytes: 67108864\n  reuse_percent: 50\n  validated_ttl: 30s\n  \
                       validated_max_bytes: 16777216\n";
        let cfg = Config::from_yaml_str(&format!("{spelled}{MINIMAL}")).unwrap();
        assert_eq!(cfg.cache, CacheConfig::default());
        assert_eq!(Config::from_yaml_str(&format!("cache: {{}}\n{MINIMAL}")).unwrap().cache, CacheConfig::default());
    }

    #[test]
    fn limits_are_checked() {
        for (cache, path) in [
            ("{ reuse_percent: 0 }", "cache.reuse_percent"),
            ("{ reuse_percent: 96 }", "cache.reuse_percent"),
            ("{ validated_ttl: 301s }", "cache.validated_ttl"),
        ] {
            let issues = Config::from_yaml_str(&format!("cache: {cache}\n{MINIMAL}")).unwrap().check().unwrap_err();
            assert_eq!(issues.len(), 1, "{cache}: {issues:?}");
            assert_eq!(issues[0].path, path, "{cache}");
        }
    }
}
