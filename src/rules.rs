//! The exchange decision, kept pure (no I/O, no clock) so it can be tested as a
//! table. Rules are evaluated in order and the first rule whose `match` fits
//! decides; no match is a refusal (default deny).

use std::time::Duration;

use crate::config::Rule;

/// What the rules look at.
#[derive(Debug, Clone)]
pub struct RuleInput<'a> {
    /// `iss` of the validated subject token.
    pub issuer: &'a str,
    /// The target audience of the new token.
    pub audience: &'a str,
    /// Scopes asked for (route, request); `None` = as many as allowed.
    pub requested_scopes: Option<&'a [String]>,
    /// Scopes of the subject token: the new token never has more.
    pub subject_scopes: &'a [String],
}

/// A granted exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub rule: String,
    /// Sorted, de-duplicated; empty only when the rule allows it.
    pub scopes: Vec<String>,
    pub max_lifetime: Option<Duration>,
}

/// Why an exchange was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// No rule matches this issuer and audience.
    #[error("no rule allows exchanging a token of this issuer for audience {audience:?}")]
    NoRule { audience: String },
    /// A rule matched but the scope intersection is empty.
    #[error("rule {rule:?} grants none of the requested scopes")]
    NoScope { rule: String },
    /// No target audience could be determined for the request.
    #[error("no target audience for this request")]
    NoAudience,
}

impl Denied {
    /// RFC 6749/8693 error code for the token endpoint and the JSON body.
    pub fn oauth_code(&self) -> &'static str {
        match self {
            Denied::NoRule { .. } | Denied::NoAudience => "invalid_target",
            Denied::NoScope { .. } => "invalid_scope",
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Denied::NoRule { .. } => "no_rule",
            Denied::NoScope { .. } => "no_scope",
            Denied::NoAudience => "no_audience",
        }
    }
}

pub fn evaluate(rules: &[Rule], input: &RuleInput<'_>) -> Result<Decision, Denied> {
    let rule = rules
        .iter()
        .find(|r| matches(r, input))
        .ok_or_else(|| Denied::NoRule { audience: input.audience.to_owned() })?;
    let requested = input.requested_scopes.unwrap_or(input.subject_scopes);
    let mut scopes: Vec<String> = requested
        .iter()
        .filter(|s| input.subject_scopes.contains(s))
        .filter(|s| rule.grant.scopes.iter().any(|g| g.matches(s)))
        .cloned()
        .collect();
    scopes.sort();
    scopes.dedup();
    if scopes.is_empty() && !rule.grant.allow_empty_scope {
        return Err(Denied::NoScope { rule: rule.name.clone() });
    }
    Ok(Decision { rule: rule.name.clone(), scopes, max_lifetime: rule.grant.max_lifetime.map(|d| d.0) })
}

fn matches(rule: &Rule, input: &RuleInput<'_>) -> bool {
    let m = &rule.when;
    (m.issuers.is_empty() || m.issuers.iter().any(|i| i == input.issuer))
        && (m.audiences.is_empty() || m.audiences.iter().any(|a| a.matches(input.audience)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Dur, Grant, RuleMatch};
    use crate::glob::Glob;

    fn rule(name: &str, issuers: &[&str], audiences: &[&str], scopes: &[&str], allow_empty: bool) -> Rule {
        Rule {
            name: name.into(),
            when: RuleMatch {
                issuers: issuers.iter().map(|s| s.to_string()).collect(),
                audiences: audiences.iter().map(|s| Glob::new(*s)).collect(),
            },
            grant: Grant {
                scopes: scopes.iter().map(|s| Glob::new(*s)).collect(),
                allow_empty_scope: allow_empty,
                max_lifetime: Some(Dur(Duration::from_secs(60))),
            },
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn decision_table() {
        let rules = vec![
            rule("orders", &["https://idp"], &["orders"], &["orders.*"], false),
            rule("any-api", &[], &["api://*"], &["*"], true),
        ];
        let subject = strings(&["orders.read", "orders.write", "profile"]);
        struct Case {
            issuer: &'static str,
            audience: &'static str,
            requested: Option<Vec<String>>,
            want: Result<(&'static str, Vec<&'static str>), &'static str>,
        }
        let cases = [
            // all of the subject's scopes that the rule allows
            Case { issuer: "https://idp", audience: "orders", requested: None, want: Ok(("orders", vec!["orders.read", "orders.write"])) },
            // narrowed by the request
            Case { issuer: "https://idp", audience: "orders", requested: Some(strings(&["orders.read"])), want: Ok(("orders", vec!["orders.read"])) },
            // a requested scope the subject lacks is never granted
            Case { issuer: "https://idp", audience: "orders", requested: Some(strings(&["orders.admin"])), want: Err("no_scope") },
            // a scope the rule does not allow is dropped; nothing left = refusal
            Case { issuer: "https://idp", audience: "orders", requested: Some(strings(&["profile"])), want: Err("no_scope") },
            // issuer mismatch: first rule skipped, second does not match audience
            Case { issuer: "https://other", audience: "orders", requested: None, want: Err("no_rule") },
            // second rule: glob audience, any issuer, empty scope allowed
            Case { issuer: "https://other", audience: "api://billing", requested: Some(strings(&["nothing"])), want: Ok(("any-api", vec![])) },
            Case { issuer: "https://idp", audience: "api://billing", requested: None, want: Ok(("any-api", vec!["orders.read", "orders.write", "profile"])) },
            // default deny
            Case { issuer: "https://idp", audience: "payments", requested: None, want: Err("no_rule") },
        ];
        for (i, c) in cases.iter().enumerate() {
            let input = RuleInput {
                issuer: c.issuer,
                audience: c.audience,
                requested_scopes: c.requested.as_deref(),
                subject_scopes: &subject,
            };
            let got = evaluate(&rules, &input);
            match (&c.want, got) {
                (Ok((name, scopes)), Ok(d)) => {
                    assert_eq!(d.rule, *name, "case {i}");
                    assert_eq!(d.scopes, strings(scopes), "case {i}");
                    assert_eq!(d.max_lifetime, Some(Duration::from_secs(60)));
                }
                (Err(label), Err(d)) => assert_eq!(d.label(), *label, "case {i}: {d}"),
                (want, got) => panic!("case {i}: want {want:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn first_matching_rule_decides_even_if_a_later_one_is_wider() {
        let rules = vec![
            rule("narrow", &[], &["orders"], &["orders.read"], false),
            rule("wide", &[], &["*"], &["*"], false),
        ];
        let subject = strings(&["orders.read", "orders.write"]);
        let input = RuleInput { issuer: "i", audience: "orders", requested_scopes: None, subject_scopes: &subject };
        assert_eq!(evaluate(&rules, &input).unwrap().scopes, strings(&["orders.read"]));
    }

    #[test]
    fn no_rules_means_deny() {
        let input = RuleInput { issuer: "i", audience: "a", requested_scopes: None, subject_scopes: &[] };
        assert!(matches!(evaluate(&[], &input), Err(Denied::NoRule { .. })));
    }
}
