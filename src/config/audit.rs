//! `audit`: where the audit events go (see `engine::audit`), and how many
//! plain exchanges are kept. There is no switch that turns the stream off:
//! delegation, impersonation and policy refusals are always written.

use std::path::PathBuf;

use serde::Deserialize;

use super::checks::Issues;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// One event a line on standard output (the logs go to standard error).
    /// Default: on, unless `file` is set.
    pub stdout: Option<bool>,
    /// Append the events to this file; reopened on SIGHUP and when it was
    /// moved away (log rotation). Relative to the configuration file.
    pub file: Option<PathBuf>,
    /// The fraction of plain exchanges (`decision: exchange`) written, 0.0 to
    /// 1.0; every other event is always written.
    pub sample_exchanges: f64,
    /// Events waiting for the writer. When full, a plain exchange's event is
    /// dropped (and counted); any other waits for room.
    pub queue: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { stdout: None, file: None, sample_exchanges: 1.0, queue: 4096 }
    }
}

impl AuditConfig {
    /// Whether events go to standard output.
    pub fn stdout(&self) -> bool {
        self.stdout.unwrap_or(self.file.is_none())
    }

    pub(super) fn check(&self, issues: &mut Issues) {
        if !(0.0..=1.0).contains(&self.sample_exchanges) {
            issues.add("audit.sample_exchanges", "must be between 0.0 and 1.0");
        }
        if !(16..=1_000_000).contains(&self.queue) {
            issues.add("audit.queue", "must be between 16 and 1000000");
        }
        if self.file.as_ref().is_some_and(|f| f.as_os_str().is_empty()) {
            issues.add("audit.file", "must not be empty");
        }
        if !self.stdout() && self.file.is_none() {
            issues.add(
                "audit.stdout",
                "the audit stream cannot be turned off (impersonation, delegation and refusals are always \
                 written): set audit.file, or leave stdout on",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::{MINIMAL, issues_in};

    fn issues(audit: &str) -> Vec<String> {
        issues_in(&format!("audit: {audit}\n{MINIMAL}"))
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let spelled = "audit:\n  sample_exchanges: 1.0\n  queue: 4096\n";
        let cfg = Config::from_yaml_str(&format!("{spelled}{MINIMAL}")).unwrap();
        assert_eq!(cfg.audit, AuditConfig::default());
        assert_eq!(Config::from_yaml_str(MINIMAL).unwrap().audit, AuditConfig::default());
        // Audit is on by default, on stdout; a file alone replaces stdout.
        assert!(cfg.audit.stdout());
        let file = AuditConfig { file: Some("a.jsonl".into()), ..AuditConfig::default() };
        assert!(!file.stdout());
        assert!(AuditConfig { stdout: Some(true), ..file }.stdout());
    }

    #[test]
    fn bad_values_are_named_by_key_path() {
        assert_eq!(issues("{ sample_exchanges: 1.5 }"), ["audit.sample_exchanges: must be between 0.0 and 1.0"]);
        assert_eq!(issues("{ sample_exchanges: -0.1 }"), ["audit.sample_exchanges: must be between 0.0 and 1.0"]);
        assert_eq!(issues("{ sample_exchanges: .nan }"), ["audit.sample_exchanges: must be between 0.0 and 1.0"]);
        assert_eq!(issues("{ queue: 0 }"), ["audit.queue: must be between 16 and 1000000"]);
        assert_eq!(issues("{ file: '' }"), ["audit.file: must not be empty"]);
        let off = issues("{ stdout: false }");
        assert_eq!(off.len(), 1, "{off:?}");
        assert!(off[0].starts_with("audit.stdout: the audit stream cannot be turned off"), "{off:?}");
        assert!(issues("{ stdout: false, file: a.jsonl, sample_exchanges: 0 }").is_empty());
        // There is no switch for it.
        let err = Config::from_yaml_str(&format!("audit: {{ enabled: false }}\n{MINIMAL}")).unwrap_err().to_string();
        assert!(err.contains("`audit.enabled`") && err.contains("unknown field `enabled`"), "{err}");
    }
}
