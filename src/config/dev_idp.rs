//! `dev_idp`: the in-process development IdP (only for `stsgate dev` and tests).

use serde::Deserialize;

use super::checks::Issues;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DevIdp {
    /// Path prefix on the HTTP listener where the dev IdP is served.
    pub path: String,
    /// Default `aud` of the subject tokens it mints.
    pub audience: String,
}

impl Default for DevIdp {
    fn default() -> Self {
        DevIdp { path: "/dev-idp".into(), audience: "stsgate-dev".into() }
    }
}

impl DevIdp {
    pub(super) fn check(&self, issues: &mut Issues) {
        if !self.path.starts_with('/') || self.path.len() < 2 || self.path.ends_with('/') {
            issues.add("dev_idp.path", "must look like /dev-idp");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    #[test]
    fn defaults_and_path() {
        let cfg = Config::from_yaml_validated(&format!("dev_idp: {{}}\n{MINIMAL}")).unwrap();
        assert_eq!(cfg.dev_idp, Some(DevIdp { path: "/dev-idp".into(), audience: "stsgate-dev".into() }));
        assert_eq!(cfg.dev_idp, Some(DevIdp::default()));
        assert_eq!(Config::from_yaml_validated(MINIMAL).unwrap().dev_idp, None);
        for bad in ["dev-idp", "/", "/dev-idp/"] {
            let text = format!("dev_idp: {{ path: \"{bad}\" }}\n{MINIMAL}");
            let issues = Config::from_yaml_str(&text).unwrap().check().unwrap_err();
            assert_eq!(issues.len(), 1, "{bad}: {issues:?}");
            assert_eq!(issues[0].path, "dev_idp.path", "{bad}");
        }
    }
}
