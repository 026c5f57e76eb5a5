//! `rules`: which exchanges are allowed, and what the minted token says.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde::Deserialize;

use super::Config;
use super::checks::{Issues, check_header_name};
use super::clients::{Client, ClientAuthMethod};
use super::ext_authz::ExtAuthz;
use super::values::Dur;
use crate::glob::Glob;

pub mod cel;
pub mod cel_paths;
pub mod cel_types;
use cel::CelExpr;

/// The `match.issuers` entry that names stsgate's own tokens (re-exchange
/// along a delegation chain). A rule without `issuers` never matches them.
pub const SELF_ISSUER: &str = "self";

/// The `match.issuers` entry that names JWT bearer assertions (RFC 7523
/// §2.1) signed by the authenticated client itself, with a key of its
/// `private_key_jwt` JWKS: the client asserts the subject. A rule without it
/// never matches them, and a rule with it must list the clients it trusts
/// that far (`match.clients`).
pub const CLIENT_ISSUER: &str = "client";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Shown in logs and refusals.
    pub name: String,
    #[serde(default, rename = "match")]
    pub when: RuleMatch,
    #[serde(default)]
    pub grant: Grant,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuleMatch {
    /// Trusted issuers (exact `iss`) this rule applies to; empty = any
    /// trusted issuer. `self` = stsgate's own tokens, which no rule without
    /// it matches; `client` = JWT bearer assertions the authenticated client
    /// signed itself, which no rule without it matches.
    pub issuers: Vec<String>,
    /// Target audiences (globs) this rule applies to; empty = any.
    pub audiences: Vec<Glob>,
    /// Subject-token claims that must match: claim name → patterns (one-of).
    /// A string claim matches when it fits a pattern; an array claim (e.g.
    /// `groups`) when any element does. Every listed claim must match.
    pub subject: BTreeMap<String, Vec<Glob>>,
    /// Who may act. Omitted = whatever the outcome implies (exchange: no
    /// actor; delegation: any actor; impersonation: any actor or none), an
    /// actor token always only from the subject token's issuer.
    pub actor: Option<ActorMatch>,
    /// Who may present the subject token. `audience`: only a workload
    /// (`workloads`) of one of its `aud` values or its `azp`;
    /// `client_in_audience`: only an authenticated token endpoint client
    /// that is one of its `aud` values or its `azp` (Keycloak's rule); anyone
    /// else is refused (not a match condition: the rule decides, and
    /// refuses). Own tokens are always bound to workloads.
    pub presenter: Presenter,
    /// Authenticated token endpoint clients (`client_id` globs) this rule
    /// applies to; empty = any request, with or without a client. A rule
    /// that lists clients never matches at the ext_authz Check, which has
    /// no client.
    pub clients: Vec<Glob>,
    /// A CEL expression that must be true (`rules::cel` lists its
    /// variables); false, or an evaluation error, is a non-match.
    pub condition: Option<CelExpr>,
}

impl RuleMatch {
    /// Whether the rule matches stsgate's own tokens (lists `self`).
    pub(crate) fn admits_own(&self) -> bool {
        self.issuers.iter().any(|i| i == SELF_ISSUER)
    }

    /// Whether the rule matches assertions signed by the client (lists `client`).
    pub(crate) fn admits_client_assertions(&self) -> bool {
        self.issuers.iter().any(|i| i == CLIENT_ISSUER)
    }
}

/// Presenter binding of a rule (`match.presenter`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Presenter {
    /// Whoever the other conditions admit.
    #[default]
    Any,
    /// Only a workload of the subject token's audience (`aud`, or `azp`).
    Audience,
    /// Only an authenticated token endpoint client named by the subject
    /// token's `aud` or `azp`.
    ClientInAudience,
}

/// Conditions on the actor; the listed kinds are alternatives (one-of).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorMatch {
    /// The calling workload's mTLS identity (SPIFFE ID globs).
    pub spiffe: Vec<Glob>,
    /// `sub` of a validated actor token (globs).
    pub sub: Vec<Glob>,
    /// `client_id` (or `azp`) of a validated actor token (globs).
    pub client_id: Vec<Glob>,
    /// Match requests that have no actor at all. Never on a rule that
    /// impersonates other subjects (`impersonate_subjects`).
    pub none: bool,
    /// Issuers (exact `iss`) an actor token may come from; empty = only the
    /// subject token's own issuer. A `sub` or `client_id` is a name in its
    /// issuer's namespace, so an actor token from any other issuer matches
    /// nothing, and never contributes its `iss` or `client_id`. Peers (mTLS)
    /// have no issuer and are matched by `spiffe` alone.
    pub issuers: Vec<String>,
}

impl ActorMatch {
    pub(crate) fn names_someone(&self) -> bool {
        !(self.spiffe.is_empty() && self.sub.is_empty() && self.client_id.is_empty())
    }
}

/// What a matching rule does with the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Same subject, re-issued for the audience; no actor involved.
    #[default]
    Exchange,
    /// Same subject; `act` names the actor (RFC 8693 §4.1).
    Delegation,
    /// The actor acts as the subject and nothing in the token shows it.
    Impersonation,
}

impl Outcome {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Exchange => "exchange",
            Outcome::Delegation => "delegation",
            Outcome::Impersonation => "impersonation",
        }
    }
}

/// How delegation is written into the minted token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DelegationShape {
    /// `sub` = subject, `act` = actor (nested with prior actors).
    #[default]
    Act,
    /// `sub` = actor, `act_as` = subject (for receivers built that way).
    ActAs,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Grant {
    /// exchange, delegation or impersonation.
    pub outcome: Outcome,
    /// Scopes (globs) this rule may grant; the result is requested ∩ subject
    /// token's ∩ these.
    pub scopes: Vec<Glob>,
    /// Mint a token with no scope when the intersection is empty, instead of
    /// refusing.
    pub allow_empty_scope: bool,
    /// Upper bound on the minted token's lifetime (also capped by `tokens.lifetime`).
    pub max_lifetime: Option<Dur>,
    /// Claims copied from the subject token when present.
    pub copy_claims: Vec<String>,
    /// Static claims added to the minted token.
    pub add_claims: serde_json::Map<String, serde_json::Value>,
    /// Longest `act` chain the minted token may carry (delegation depth).
    pub max_chain_depth: usize,
    /// `act` (RFC 8693) or `act_as`.
    pub delegation_shape: DelegationShape,
    /// Impersonation only: subjects (globs) the actor may become through the
    /// requested-subject header; empty = only the token's own subject.
    pub impersonate_subjects: Vec<Glob>,
    /// Impersonation only: name of an audit claim naming the real actor.
    pub audit_claim: Option<String>,
    /// Extra, narrower tokens for the upstream's own downstream calls.
    pub downstream_tokens: Vec<DownstreamToken>,
    /// Claims computed by CEL expressions (same variables as
    /// `match.condition`); a claim whose expression fails or is null is left out.
    pub computed_claims: BTreeMap<String, CelExpr>,
}

impl Default for Grant {
    fn default() -> Self {
        Grant {
            outcome: Outcome::default(),
            scopes: Vec::new(),
            allow_empty_scope: false,
            max_lifetime: None,
            copy_claims: Vec::new(),
            add_claims: serde_json::Map::new(),
            max_chain_depth: 3,
            delegation_shape: DelegationShape::default(),
            impersonate_subjects: Vec::new(),
            audit_claim: None,
            downstream_tokens: Vec::new(),
            computed_claims: BTreeMap::new(),
        }
    }
}

/// An additional token minted for a named downstream audience and put into
/// its own request header (the "embedded token" pattern).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownstreamToken {
    pub audience: String,
    /// Request header that carries it (bare token, no scheme).
    pub header: String,
    /// Scopes (globs) kept from the main token's granted scopes.
    #[serde(default)]
    pub scopes: Vec<Glob>,
}

/// Claims stsgate sets itself, or that would contradict what it sets; rules
/// may not copy or add them (nor any rule's `audit_claim`). RFC 9068 §2.2 core
/// claims, `scp` and `azp` (a second scope or client beside the narrowed
/// `scope` and the real `client_id`), RFC 8693 `act`/`may_act`, RFC 7800 `cnf`,
/// RFC 9493 `sub_id`, `typ`, and stsgate's `act_as`. `auth_time`, `acr`, `amr`,
/// `groups`, `roles` and `entitlements` describe the subject and may be copied.
#[rustfmt::skip]
const RESERVED_CLAIMS: &[&str] = &[
    "iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "scope", "scp", "azp", "act", "act_as", "may_act",
    "cnf", "sub_id", "typ",
];

/// What a rule is checked against beyond itself.
struct Context<'a> {
    /// The `iss` of every trusted issuer.
    trusted: HashSet<&'a str>,
    /// stsgate's own `issuer`, which rules name as `self`.
    own_issuer: &'a str,
    /// Whether a `workloads` table says who may present which token.
    has_workloads: bool,
    /// Every rule's `audit_claim`: it names the real actor, so no rule may copy or add it.
    audit_claims: HashSet<&'a str>,
    ext_authz: &'a ExtAuthz,
    /// The token endpoint's clients (`match.issuers: [client]`, `client_in_audience`).
    clients: &'a [Client],
    /// Whether the token endpoint is served (its `requested_subject`).
    token_endpoint: bool,
}

/// The `rules` list, given what else in `cfg` they depend on: the trusted
/// issuers its rules name, stsgate's own issuer (`self`), the workloads
/// presenter binding reads, the ext_authz headers its grants must not reuse,
/// the token endpoint and its clients.
pub(super) fn check(cfg: &Config, issues: &mut Issues) {
    let rules = &cfg.rules;
    let ctx = Context {
        trusted: cfg.trusted_issuers.iter().map(|i| i.issuer.as_str()).collect(),
        own_issuer: &cfg.issuer,
        has_workloads: !cfg.workloads.is_empty(),
        audit_claims: rules.iter().filter_map(|r| r.grant.audit_claim.as_deref()).collect(),
        ext_authz: &cfg.ext_authz,
        clients: &cfg.clients,
        token_endpoint: cfg.token_endpoint.enabled,
    };
    let mut names = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("rules[{i}]");
        if rule.name.trim().is_empty() {
            issues.add(format!("{at}.name"), "must not be empty");
        } else if !names.insert(rule.name.as_str()) {
            issues.add(format!("{at}.name"), format!("duplicate rule name {:?}", rule.name));
        }
        rule.check(&at, &ctx, issues);
    }
    if rules.is_empty() {
        issues.add("rules", "no rules: every exchange would be refused (default deny)");
    }
}

impl Rule {
    fn check(&self, at: &str, ctx: &Context<'_>, issues: &mut Issues) {
        let g = &self.grant;
        for (j, iss) in self.when.issuers.iter().enumerate() {
            let at = format!("{at}.match.issuers[{j}]");
            if iss == CLIENT_ISSUER {
                // A client that signs assertions vouches for any subject it
                // names: only clients listed by name, with keys to sign.
                let signers = ctx.clients.iter().filter(|c| c.auth == ClientAuthMethod::PrivateKeyJwt);
                let listed = signers.filter(|c| self.when.clients.iter().any(|g| g.matches(&c.client_id))).count();
                if g.outcome == Outcome::Delegation {
                    issues.add(
                        at.clone(),
                        "a JWT bearer grant has no actor, so a delegation rule never matches a client's assertion",
                    );
                }
                if self.when.clients.is_empty() {
                    issues.add(
                        at,
                        "`client` accepts subjects asserted by a client itself: list the clients trusted to do so \
                         in match.clients",
                    );
                } else if listed == 0 {
                    issues.add(
                        at,
                        "`client` accepts assertions signed with a private_key_jwt client's keys, and match.clients \
                         names no such client",
                    );
                }
            } else if iss == SELF_ISSUER {
                if !ctx.has_workloads {
                    issues.add(
                        at,
                        "`self` accepts stsgate's own tokens, which only a workload of their audience may present: \
                         add a `workloads` table naming them",
                    );
                }
            } else if iss == ctx.own_issuer {
                issues.add(at, format!("{iss:?} is stsgate's own issuer: write `self` to accept stsgate's own tokens"));
            } else if !ctx.trusted.contains(iss.as_str()) {
                issues.add(at, format!("{iss:?} is not one of trusted_issuers, so this rule can never match it"));
            }
        }
        if self.when.presenter == Presenter::ClientInAudience && ctx.clients.is_empty() {
            issues.add(
                format!("{at}.match.presenter"),
                "`client_in_audience` admits only an authenticated client named by the token's aud or azp: \
                 add a `clients` section",
            );
        }
        if self.when.presenter == Presenter::Audience && !ctx.has_workloads {
            issues.add(
                format!("{at}.match.presenter"),
                "`audience` admits only a workload of the token's audience: add a `workloads` table naming them",
            );
        }
        // A bound token needs an actor to present it, and an exchange has none.
        if g.outcome == Outcome::Exchange {
            if self.when.admits_own() {
                issues.add(
                    format!("{at}.grant.outcome"),
                    "an exchange involves no actor, but stsgate's own tokens are re-exchanged only by a workload of \
                     their audience: use outcome delegation (IdP tokens in a rule of their own)",
                );
            } else if self.when.presenter == Presenter::Audience {
                issues.add(
                    format!("{at}.match.presenter"),
                    "an exchange involves no actor, so no workload can present the token: use outcome delegation",
                );
            }
        }
        if g.scopes.is_empty() && !g.allow_empty_scope {
            issues.add(
                format!("{at}.grant"),
                "grants no scopes and does not set allow_empty_scope, so it can only refuse",
            );
        }
        if let Some(max) = g.max_lifetime {
            if max.0 < Duration::from_secs(1) {
                issues.add(format!("{at}.grant.max_lifetime"), "must be at least 1s");
            }
        }
        let actor = self.when.actor.as_ref();
        let names_actor = actor.is_some_and(|a| a.names_someone());
        let only_none = actor.is_some_and(|a| a.none && !a.names_someone());
        let actor_issuers = actor.map(|a| a.issuers.as_slice()).unwrap_or_default();
        for (j, iss) in actor_issuers.iter().enumerate() {
            if !ctx.trusted.contains(iss.as_str()) {
                issues.add(
                    format!("{at}.match.actor.issuers[{j}]"),
                    format!("{iss:?} is not one of trusted_issuers, so no actor token can come from it"),
                );
            }
        }
        if g.outcome == Outcome::Exchange && !actor_issuers.is_empty() {
            issues.add(format!("{at}.match.actor.issuers"), "an exchange involves no actor");
        }
        match g.outcome {
            Outcome::Exchange if names_actor => issues.add(
                format!("{at}.match.actor"),
                "an exchange involves no actor; use outcome delegation or impersonation to name one",
            ),
            Outcome::Delegation if only_none => issues
                .add(format!("{at}.match.actor"), "delegation needs an actor, so `none: true` alone can never match"),
            _ => {}
        }
        if !g.impersonate_subjects.is_empty() {
            if g.outcome != Outcome::Impersonation {
                issues.add(format!("{at}.grant.impersonate_subjects"), "only allowed with outcome impersonation");
            } else if !names_actor {
                issues.add(
                    format!("{at}.match.actor"),
                    "impersonating other subjects requires naming the actor (spiffe, sub or client_id)",
                );
            }
            if actor.is_some_and(|a| a.none) {
                issues.add(
                    format!("{at}.match.actor.none"),
                    "impersonating other subjects needs a proven actor; `none: true` would let a request with no actor become them",
                );
            }
            // The token endpoint's `requested_subject` names one as well.
            if ctx.ext_authz.requested_subject_header.is_empty() && !ctx.token_endpoint {
                issues.add(
                    format!("{at}.grant.impersonate_subjects"),
                    "ext_authz.requested_subject_header is not set and the token endpoint is disabled, so no \
                     request can name another subject",
                );
            }
        }
        if let Some(claim) = &g.audit_claim {
            if g.outcome != Outcome::Impersonation {
                issues.add(format!("{at}.grant.audit_claim"), "only allowed with outcome impersonation");
            }
            if RESERVED_CLAIMS.contains(&claim.as_str()) || claim.is_empty() {
                issues.add(format!("{at}.grant.audit_claim"), format!("{claim:?} is a claim stsgate sets itself"));
            }
        }
        let reserved = |claim: &str| RESERVED_CLAIMS.contains(&claim) || ctx.audit_claims.contains(claim);
        for (j, claim) in g.copy_claims.iter().enumerate() {
            if reserved(claim) {
                issues.add(format!("{at}.grant.copy_claims[{j}]"), format!("{claim:?} is a claim stsgate sets itself"));
            }
        }
        for claim in g.add_claims.keys() {
            if reserved(claim) {
                issues
                    .add(format!("{at}.grant.add_claims.{claim}"), format!("{claim:?} is a claim stsgate sets itself"));
            }
        }
        if let Some(c) = &self.when.condition {
            let at = format!("{at}.match.condition");
            if let Some(why) = c.error() {
                issues.add(at, why);
            } else if let Some(what) = c.surely_not_bool() {
                issues.add(at, format!("must be true or false, and this expression is {what}"));
            }
        }
        for (claim, expr) in &g.computed_claims {
            let at = format!("{at}.grant.computed_claims.{claim}");
            if reserved(claim) || claim.is_empty() {
                issues.add(at, format!("{claim:?} is a claim stsgate sets itself"));
            } else if let Some(why) = expr.error() {
                issues.add(at, why);
            } else if let Some(what) = expr.surely_not_json() {
                issues.add(at, format!("must be a JSON value, and this expression is {what}"));
            }
        }
        if g.max_chain_depth == 0 && g.outcome == Outcome::Delegation {
            issues.add(format!("{at}.grant.max_chain_depth"), "delegation needs a depth of at least 1");
        }
        if g.max_chain_depth > 25 {
            issues.add(format!("{at}.grant.max_chain_depth"), "must be at most 25");
        }
        for (j, d) in g.downstream_tokens.iter().enumerate() {
            d.check(&format!("{at}.grant.downstream_tokens[{j}]"), ctx.ext_authz, issues);
        }
    }
}

impl DownstreamToken {
    fn check(&self, at: &str, ext_authz: &ExtAuthz, issues: &mut Issues) {
        if self.audience.is_empty() {
            issues.add(format!("{at}.audience"), "must not be empty");
        }
        if let Err(why) = check_header_name(&self.header) {
            issues.add(format!("{at}.header"), why);
        } else if ext_authz.is_token_header(&self.header) {
            issues.add(format!("{at}.header"), "must differ from ext_authz.output_header and subject_header");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::MINIMAL;
    use crate::config::{Config, ConfigIssue};

    /// Validation issues of MINIMAL with `rules` (a YAML sequence) instead of its rule.
    fn rule_issues(rules: &str) -> Vec<ConfigIssue> {
        let base = MINIMAL.split("rules:").next().unwrap();
        let text = format!("{base}ext_authz: {{ requested_subject_header: x-requested-subject }}\nrules:\n{rules}");
        Config::from_yaml_str(&text).unwrap().check().err().unwrap_or_default()
    }

    #[test]
    fn grant_defaults() {
        let cfg = Config::from_yaml_str(MINIMAL).unwrap();
        let g = &cfg.rules[0].grant;
        assert_eq!((g.outcome, g.max_chain_depth, g.delegation_shape), (Outcome::Exchange, 3, DelegationShape::Act));
        assert!(!g.allow_empty_scope && g.max_lifetime.is_none() && g.audit_claim.is_none());
        assert!(g.copy_claims.is_empty() && g.add_claims.is_empty() && g.impersonate_subjects.is_empty());
        assert!(g.downstream_tokens.is_empty());
        let spelled = rule_issues(
            "  - name: all\n    match: { issuers: [], audiences: [], subject: {} }\n    grant:\n      outcome: exchange\n      \
             scopes: [\"*\"]\n      allow_empty_scope: false\n      max_chain_depth: 3\n      delegation_shape: act\n",
        );
        assert!(spelled.is_empty(), "{spelled:?}");
    }

    #[test]
    fn every_rule_is_checked() {
        let issues = rule_issues(
            "  - name: r\n    match: { issuers: [https://other.example.com] }\n  - name: r\n    grant: { scopes: [x], max_lifetime: 0s, max_chain_depth: 26 }\n  \
             - name: \" \"\n    grant:\n      outcome: delegation\n      scopes: [x]\n      max_chain_depth: 0\n      \
             downstream_tokens: [{ audience: \"\", header: authorization }, { audience: b, header: X-B }]\n",
        );
        let found: Vec<String> = issues.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "rules[0].match.issuers[0]: \"https://other.example.com\" is not one of trusted_issuers, so this rule can never match it",
                "rules[0].grant: grants no scopes and does not set allow_empty_scope, so it can only refuse",
                "rules[1].name: duplicate rule name \"r\"",
                "rules[1].grant.max_lifetime: must be at least 1s",
                "rules[1].grant.max_chain_depth: must be at most 25",
                "rules[2].name: must not be empty",
                "rules[2].grant.max_chain_depth: delegation needs a depth of at least 1",
                "rules[2].grant.downstream_tokens[0].audience: must not be empty",
                "rules[2].grant.downstream_tokens[0].header: must differ from ext_authz.output_header and subject_header",
                "rules[2].grant.downstream_tokens[1].header: \"X-B\" must be lower-case (Envoy lower-cases header names)",
            ]
        );
        assert_eq!(
            rule_issues("  []\n").iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["rules: no rules: every exchange would be refused (default deny)"]
        );
    }

    #[test]
    fn actors_fit_the_outcome() {
        let issues = rule_issues(
            "  - name: e\n    match: { actor: { sub: [x] } }\n    grant: { scopes: [x] }\n  \
             - name: d\n    match: { actor: { none: true } }\n    grant: { outcome: delegation, scopes: [x] }\n  \
             - name: i\n    grant: { outcome: impersonation, scopes: [x], impersonate_subjects: [\"*\"] }\n  \
             - name: x\n    grant: { outcome: delegation, scopes: [x], impersonate_subjects: [\"*\"], audit_claim: by }\n",
        );
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "rules[0].match.actor",
                "rules[1].match.actor",
                "rules[2].match.actor",
                "rules[3].grant.impersonate_subjects",
                "rules[3].grant.audit_claim",
            ],
            "{issues:#?}"
        );
        // Without ext_authz.requested_subject_header, only the token endpoint's
        // requested_subject can name another subject; without it neither can.
        let text = MINIMAL.replace(
            "    grant: { scopes: [\"*\"] }",
            "    match: { actor: { sub: [x] } }\n    grant: { outcome: impersonation, scopes: [\"*\"], impersonate_subjects: [\"*\"] }",
        );
        let ok = Config::from_yaml_str(&text).unwrap().check();
        assert!(ok.is_ok(), "{ok:?}");
        let text = format!("{text}token_endpoint: {{ enabled: false }}\n");
        let issues = Config::from_yaml_str(&text).unwrap().check().unwrap_err();
        assert_eq!(issues.len(), 1, "{issues:#?}");
        assert_eq!(issues[0].path, "rules[0].grant.impersonate_subjects");
        assert!(issues[0].message.contains("requested_subject_header"), "{issues:#?}");
    }

    #[test]
    fn reserved_claims_cannot_be_copied_or_added() {
        let issues = rule_issues(
            r#"
  - name: copies
    grant:
      scopes: ["*"]
      copy_claims: [scp, azp, sub_id, typ, cnf, impersonated_by, auth_time, acr, amr, groups, roles, entitlements]
      add_claims: { azp: web, scp: [admin], sub_id: x, typ: y, impersonated_by: z, acr: "1" }
  - name: audited
    grant: { outcome: impersonation, scopes: ["*"], audit_claim: impersonated_by }
"#,
        );
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        for (j, claim) in ["scp", "azp", "sub_id", "typ", "cnf", "impersonated_by"].iter().enumerate() {
            assert!(paths.contains(&format!("rules[0].grant.copy_claims[{j}]").as_str()), "{claim}: {issues:#?}");
        }
        for claim in ["azp", "scp", "sub_id", "typ", "impersonated_by"] {
            assert!(paths.contains(&format!("rules[0].grant.add_claims.{claim}").as_str()), "{claim}: {issues:#?}");
        }
        // Claims about the subject's authentication and entitlements stay copyable.
        assert_eq!(paths.len(), 11, "only the reserved claims are refused: {issues:#?}");
        assert!(issues.iter().all(|i| i.message.contains("stsgate sets itself")), "{issues:#?}");
        // An audit claim may not be one stsgate sets either.
        let issues = rule_issues("  - name: a\n    grant: { outcome: impersonation, scopes: [x], audit_claim: sub }\n");
        assert_eq!(issues.iter().map(|i| i.path.as_str()).collect::<Vec<_>>(), ["rules[0].grant.audit_claim"]);
    }

    #[test]
    fn none_is_refused_on_rules_that_impersonate_other_subjects() {
        let rule = |actor: &str, subjects: &str| {
            format!(
                "  - name: support\n    match: {{ actor: {actor} }}\n    grant: {{ outcome: impersonation, scopes: [\"*\"], impersonate_subjects: {subjects} }}\n"
            )
        };
        let issues = rule_issues(&rule("{ sub: [support-console], none: true }", "[\"user-*\"]"));
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["rules[0].match.actor.none"], "{issues:#?}");
        assert!(issues[0].message.contains("proven actor"), "{issues:#?}");
        // Without `none`, or without other subjects to become, the rule is valid.
        assert!(rule_issues(&rule("{ sub: [support-console] }", "[\"user-*\"]")).is_empty());
        assert!(rule_issues(&rule("{ sub: [support-console], none: true }", "[]")).is_empty());
    }

    #[test]
    fn self_and_presenter_need_workloads_and_an_actor() {
        const WORKLOADS: &str =
            "workloads:\n  - { audience: web, spiffe: [\"spiffe://cluster.local/ns/shop/sa/web\"] }\n";
        let rules = "  - name: re-exchange\n    match: { issuers: [self, https://idp.example.com] }\n    grant: { outcome: delegation, scopes: [\"*\"] }\n  \
                     - name: bound\n    match: { presenter: audience }\n    grant: { outcome: delegation, scopes: [\"*\"] }\n";
        assert!(
            rule_issues(&format!("{rules}{WORKLOADS}")).is_empty(),
            "{:?}",
            rule_issues(&format!("{rules}{WORKLOADS}"))
        );
        let paths = |issues: Vec<ConfigIssue>| issues.into_iter().map(|i| i.path).collect::<Vec<_>>();
        // Without a workloads table, no actor could ever present such a token.
        let issues = rule_issues(rules);
        assert_eq!(paths(issues.clone()), ["rules[0].match.issuers[0]", "rules[1].match.presenter"]);
        assert!(issues.iter().all(|i| i.message.contains("`workloads`")), "{issues:#?}");
        // An exchange has no actor to present the token.
        let issues = rule_issues(&format!(
            "  - name: e\n    match: {{ issuers: [self] }}\n    grant: {{ scopes: [\"*\"] }}\n  \
             - name: p\n    match: {{ presenter: audience }}\n    grant: {{ scopes: [\"*\"] }}\n{WORKLOADS}"
        ));
        assert_eq!(paths(issues.clone()), ["rules[0].grant.outcome", "rules[1].match.presenter"], "{issues:#?}");
        assert!(issues[0].message.contains("use outcome delegation"), "{issues:#?}");
        // stsgate's own issuer URL is spelled `self`.
        let issues = rule_issues(&format!(
            "  - name: url\n    match: {{ issuers: [https://sts.example.com] }}\n    grant: {{ outcome: delegation, scopes: [x] }}\n{WORKLOADS}"
        ));
        assert_eq!(paths(issues.clone()), ["rules[0].match.issuers[0]"]);
        assert!(issues[0].message.contains("write `self`"), "{issues:#?}");
        // An unknown presenter mode is a parse error naming the key.
        let text = MINIMAL.replace(
            "    grant: { scopes: [\"*\"] }",
            "    match: { presenter: anyone }\n    grant: { scopes: [\"*\"] }",
        );
        let err = Config::from_yaml_str(&text).unwrap_err().to_string();
        assert!(err.contains("rules[0].match.presenter") && err.contains("anyone"), "{err}");
    }

    #[test]
    fn client_issuer_and_client_in_audience_need_clients() {
        let clients = "clients:\n  - { client_id: signer, auth: private_key_jwt, jwks: { keys: [] } }\n  \
                       - { client_id: app, auth: none }\n";
        let rules = "  - name: a\n    match: { issuers: [client] }\n    grant: { scopes: [x] }\n  \
                     - name: b\n    match: { issuers: [client], clients: [app] }\n    grant: { scopes: [x] }\n  \
                     - name: c\n    match: { issuers: [client], clients: [\"sign*\"] }\n    grant: { scopes: [x] }\n  \
                     - name: d\n    match: { presenter: client_in_audience }\n    grant: { scopes: [x] }\n  \
                     - name: e\n    match: { issuers: [client], clients: [signer] }\n    grant: { outcome: delegation, scopes: [x] }\n";
        let issues = rule_issues(&format!("{rules}{clients}"));
        let found: Vec<(&str, &str)> = issues.iter().map(|i| (i.path.as_str(), i.message.as_str())).collect();
        assert_eq!(found.len(), 3, "{issues:#?}");
        assert_eq!(found[0].0, "rules[0].match.issuers[0]");
        assert!(found[0].1.contains("in match.clients"), "{issues:#?}");
        assert_eq!(found[1].0, "rules[1].match.issuers[0]");
        assert!(found[1].1.contains("names no such client"), "{issues:#?}");
        assert_eq!(
            found[2],
            (
                "rules[4].match.issuers[0]",
                "a JWT bearer grant has no actor, so a delegation rule never matches a client's assertion"
            )
        );
        // Without any client, `client_in_audience` can never admit anyone.
        let issues =
            rule_issues("  - name: d\n    match: { presenter: client_in_audience }\n    grant: { scopes: [x] }\n");
        assert_eq!(issues.iter().map(|i| i.path.as_str()).collect::<Vec<_>>(), ["rules[0].match.presenter"]);
        assert!(issues[0].message.contains("`clients` section"), "{issues:#?}");
    }

    #[test]
    fn cel_expressions_are_checked_at_load_with_key_paths() {
        let rule = |name: &str, cond: &str| {
            format!(
                "  - name: {name}\n    match: {{ condition: {} }}\n    grant: {{ scopes: [x] }}\n",
                serde_json::json!(cond)
            )
        };
        let long = format!("subject.a == '{}'", "x".repeat(cel::MAX_EXPRESSION_BYTES));
        let rules = [
            rule("ok", "request.method == 'GET' && subject.tenant == request.context.tenant"),
            rule("syntax", "subject.tenant == "),
            rule("unknown", "user.tenant == 'a'"),
            rule("arith", "subject.level + 1"),
            rule("string", "'yes'"),
            rule("large", &long),
            rule("field", "request.verb == 'GET'"),
            rule("upper", "request.headers['X-Tenant'] == 'a'"),
            rule("function", "subject.email.lowercase() == 'a'"),
            rule("rebind", "subject.groups.exists(subject, subject == 'a')"),
            rule("deep", &format!("{}true{}", "(".repeat(40), ")".repeat(40))),
            rule("types", "request.method + 1 == 2"),
        ]
        .concat();
        let issues = rule_issues(&format!(
            "{rules}  - name: claims\n    grant:\n      scopes: [x]\n      computed_claims:\n        \
             tenant: \"subject.email.split('@')[1]\"\n        sub: \"subject.email\"\n        \
             client_id: \"'x'\"\n        bad: \"subject.(\"\n        raw: \"b'x'\"\n        \
             keys: \"{{1: 'a'}}\"\n        ok: \"{{'a': subject.b}}\"\n"
        ));
        let found: Vec<(&str, &str)> = issues.iter().map(|i| (i.path.as_str(), i.message.as_str())).collect();
        let want: &[(&str, &str)] = &[
            ("rules[1].match.condition", "syntax error"),
            ("rules[2].match.condition", "unknown variable \"user\""),
            ("rules[3].match.condition", "must be true or false, and this expression is the result of arithmetic"),
            ("rules[4].match.condition", "must be true or false, and this expression is a string"),
            ("rules[5].match.condition", "more than the 4096 allowed"),
            ("rules[6].match.condition", "request has no field \"verb\""),
            ("rules[7].match.condition", "header names are lower-case"),
            ("rules[8].match.condition", "unknown function \"lowercase\""),
            ("rules[9].match.condition", "may not be rebound"),
            ("rules[10].match.condition", "nest deeper than 12"),
            ("rules[11].match.condition", "`+` cannot apply to a string and an integer"),
            ("rules[12].grant.computed_claims.bad", "syntax error"),
            ("rules[12].grant.computed_claims.client_id", "is a claim stsgate sets itself"),
            ("rules[12].grant.computed_claims.keys", "must be a JSON value, and this expression is a map with keys"),
            ("rules[12].grant.computed_claims.raw", "must be a JSON value, and this expression is bytes"),
            ("rules[12].grant.computed_claims.sub", "is a claim stsgate sets itself"),
        ];
        assert_eq!(found.len(), want.len(), "{found:#?}");
        for ((path, msg), (wp, wm)) in found.iter().zip(want) {
            assert_eq!(path, wp, "{found:#?}");
            assert!(msg.contains(wm), "{path}: {msg:?} lacks {wm:?}");
        }
    }

    #[test]
    fn actor_issuers_must_be_trusted_and_need_an_actor() {
        let issues = rule_issues(
            "  - name: d\n    match: { actor: { issuers: [https://idp.example.com, https://ci.example.com] } }\n    grant: { outcome: delegation, scopes: [\"*\"] }\n  - name: e\n    match: { actor: { issuers: [https://idp.example.com] } }\n    grant: { scopes: [\"*\"] }\n",
        );
        let paths: Vec<&str> = issues.iter().map(|i| i.path.as_str()).collect();
        assert_eq!(paths, ["rules[0].match.actor.issuers[1]", "rules[1].match.actor.issuers"], "{issues:#?}");
    }
}
