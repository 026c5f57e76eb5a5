//! `workloads`: which actors are the party a token was issued to, by the
//! token's audience (presenter binding). One of stsgate's own tokens is
//! re-exchanged only by a workload of its `aud`; a rule with
//! `match.presenter: audience` binds an IdP's token to a workload of its
//! `aud` or `azp` the same way.

use std::collections::HashSet;

use serde::Deserialize;

use super::checks::Issues;
use crate::glob::Glob;

/// One audience and the actors that are it. The matchers are alternatives
/// (one-of), read as a rule's `match.actor` reads them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// A token audience (exact), as stsgate mints it for this workload.
    pub audience: String,
    /// The workload's mTLS identities (SPIFFE ID globs), matched against a
    /// peer actor (Envoy's `source.principal`).
    #[serde(default)]
    pub spiffe: Vec<Glob>,
    /// `sub` of the workload's actor tokens (globs).
    #[serde(default)]
    pub sub: Vec<Glob>,
    /// `client_id` (or `azp`) of the workload's actor tokens (globs).
    #[serde(default)]
    pub client_id: Vec<Glob>,
}

/// The `workloads` list: each audience once, each entry naming someone.
pub(super) fn check(workloads: &[Workload], issues: &mut Issues) {
    let mut seen = HashSet::new();
    for (i, w) in workloads.iter().enumerate() {
        let at = format!("workloads[{i}]");
        if w.audience.trim().is_empty() {
            issues.add(format!("{at}.audience"), "must not be empty");
        } else if !seen.insert(w.audience.as_str()) {
            issues.add(
                format!("{at}.audience"),
                format!("audience {:?} is listed twice; put all of its identities in one entry", w.audience),
            );
        }
        if w.spiffe.is_empty() && w.sub.is_empty() && w.client_id.is_empty() {
            issues.add(at, "names no actor: set at least one of `spiffe`, `sub`, `client_id`");
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    fn issues(workloads: &str) -> Vec<String> {
        crate::config::tests::issues_in(&format!("{MINIMAL}workloads:\n{workloads}"))
    }

    #[test]
    fn audiences_are_unique_and_every_entry_names_someone() {
        let ok = "  - { audience: web, spiffe: [\"spiffe://cluster.local/ns/shop/sa/web\"] }\n  \
                  - { audience: orders, sub: [orders-svc], client_id: [orders] }\n";
        assert!(issues(ok).is_empty(), "{:?}", issues(ok));
        let bad = "  - { audience: web, spiffe: [a] }\n  - { audience: web, sub: [b] }\n  - { audience: \" \", client_id: [c] }\n  \
                   - { audience: orders }\n  - { audience: pay, spiffe: [] }\n";
        assert_eq!(
            issues(bad),
            [
                "workloads[1].audience: audience \"web\" is listed twice; put all of its identities in one entry",
                "workloads[2].audience: must not be empty",
                "workloads[3]: names no actor: set at least one of `spiffe`, `sub`, `client_id`",
                "workloads[4]: names no actor: set at least one of `spiffe`, `sub`, `client_id`",
            ]
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let text = format!("{MINIMAL}workloads:\n  - {{ audience: web, spife: [x] }}\n");
        let err = Config::from_yaml_str(&text).unwrap_err().to_string();
        assert!(err.contains("workloads[0]") && err.contains("spife"), "{err}");
    }
}
