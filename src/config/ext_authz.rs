//! `ext_authz`: how an Envoy Check maps to an exchange, and what goes back.

use serde::Deserialize;

use super::checks::{Issues, check_header_name};
use super::listen::Listen;
use crate::glob::Glob;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtAuthz {
    /// Request header that carries the subject token.
    pub subject_header: String,
    /// Scheme before the token in that header (`Bearer`); empty for a bare token.
    pub subject_scheme: String,
    /// Request header that receives the minted token upstream.
    pub output_header: String,
    /// Scheme written before the minted token; empty for a bare token.
    pub output_scheme: String,
    /// Remove the subject header upstream when it differs from `output_header`.
    pub remove_subject_header: bool,
    /// `realm` of the `WWW-Authenticate` challenge on 401.
    pub realm: String,
    /// `client_id` of tokens minted through ext_authz when the subject token
    /// names none (`client_id` or `azp`).
    pub client_id: String,
    /// Host/path → audience table, first match wins; used when the route sets
    /// no `audience` context extension (Istio cannot set them).
    pub routes: Vec<Route>,
    /// Audience when neither the route's context extensions nor `routes` give one.
    pub default_audience: Option<String>,
    /// Scope requested when neither the context extensions nor `routes` give one.
    pub default_scope: Option<String>,
    /// Where the actor comes from.
    pub actor: ActorSource,
    /// Request header naming a different subject to impersonate (only for
    /// rules with `impersonate_subjects`); empty disables it.
    pub requested_subject_header: String,
    /// Fields of Envoy dynamic metadata sent with an allowed request, for
    /// access logs and later filters: `sub`, `aud` and `actor` by default.
    /// Envoy pays for every field on every request (all 8 cost its worker
    /// ~15% of throughput), so list only what is read; `[]` sends none.
    /// Denials always carry `decision`, `reason` and, when known, `actor`.
    pub dynamic_metadata: Vec<MetadataField>,
    /// How the Check caller (an Envoy) is identified; `None` (unset) means
    /// `mtls` with `listen.grpc_tls`, else `none` (see `caller_identity()`).
    pub caller_identity: Option<CallerIdentity>,
    /// `xfcc` only: the TCP peers (stsgate's own sidecar) whose
    /// `x-forwarded-client-cert` is believed.
    pub xfcc_trusted_peers: Vec<PeerNet>,
    /// Who may call Check, first match wins; empty: every caller may, for
    /// any audience (development only).
    pub callers: Vec<CheckCaller>,
}

impl Default for ExtAuthz {
    fn default() -> Self {
        ExtAuthz {
            subject_header: "authorization".into(),
            subject_scheme: "Bearer".into(),
            output_header: "authorization".into(),
            output_scheme: "Bearer".into(),
            remove_subject_header: true,
            realm: "stsgate".into(),
            client_id: "stsgate-ext-authz".into(),
            routes: Vec::new(),
            default_audience: None,
            default_scope: None,
            actor: ActorSource::default(),
            requested_subject_header: String::new(),
            dynamic_metadata: vec![MetadataField::Sub, MetadataField::Aud, MetadataField::Actor],
            caller_identity: None,
            xfcc_trusted_peers: Vec::new(),
            callers: Vec::new(),
        }
    }
}

impl ExtAuthz {
    pub(super) fn check(&self, issues: &mut Issues) {
        for (key, name) in [("subject_header", &self.subject_header), ("output_header", &self.output_header)] {
            if let Err(why) = check_header_name(name) {
                issues.add(format!("ext_authz.{key}"), why);
            }
        }
        for (key, scheme) in [("subject_scheme", &self.subject_scheme), ("output_scheme", &self.output_scheme)] {
            if scheme.chars().any(|c| c.is_whitespace() || c.is_control()) {
                issues.add(format!("ext_authz.{key}"), "must be a single word such as Bearer, or empty");
            }
        }
        for (key, name) in [
            ("actor.token_header", &self.actor.token_header),
            ("requested_subject_header", &self.requested_subject_header),
        ] {
            if !name.is_empty() {
                if let Err(why) = check_header_name(name) {
                    issues.add(format!("ext_authz.{key}"), why);
                } else if self.is_token_header(name) {
                    issues.add(format!("ext_authz.{key}"), "must differ from subject_header and output_header");
                }
            }
        }
        match self.actor.mode {
            ActorMode::Peer if !self.actor.peer => issues.add("ext_authz.actor.mode", "mode peer needs `peer: true`"),
            ActorMode::Token if self.actor.token_header.is_empty() => {
                issues.add("ext_authz.actor.mode", "mode token needs a `token_header`")
            }
            _ => {}
        }
        for (i, field) in self.dynamic_metadata.iter().enumerate() {
            if self.dynamic_metadata[..i].contains(field) {
                issues.add(format!("ext_authz.dynamic_metadata[{i}]"), format!("`{}` is listed twice", field.key()));
            }
        }
        if self.realm.contains('"') || self.realm.contains('\\') {
            issues.add("ext_authz.realm", "must not contain quotes or backslashes");
        }
        for (i, route) in self.routes.iter().enumerate() {
            route.check(&format!("ext_authz.routes[{i}]"), issues);
        }
    }

    /// Whether `name` is the subject or the output header, which other
    /// headers stsgate reads or writes must not be.
    pub(super) fn is_token_header(&self, name: &str) -> bool {
        name == self.subject_header || name == self.output_header
    }

    /// How Check callers are identified: as configured, else `mtls` when the
    /// gRPC listener has TLS (`tls`), else `none`.
    pub(crate) fn caller_identity(&self, tls: bool) -> CallerIdentity {
        self.caller_identity.unwrap_or(if tls { CallerIdentity::Mtls } else { CallerIdentity::None })
    }

    /// The Check caller settings against `listen` (whether the gRPC listener
    /// has TLS): modes that contradict each other are refused.
    pub(super) fn check_callers(&self, listen: &Listen, issues: &mut Issues) {
        let tls = listen.grpc_tls.is_some();
        let mode = self.caller_identity(tls);
        match mode {
            CallerIdentity::Mtls if !tls => issues.add(
                "ext_authz.caller_identity",
                "mtls needs listen.grpc_tls: the caller's identity is its client certificate",
            ),
            CallerIdentity::Xfcc if tls => issues.add(
                "ext_authz.caller_identity",
                "xfcc takes the caller from stsgate's own sidecar, which connects in plaintext; with \
                 listen.grpc_tls the caller's client certificate names it (mtls): choose one",
            ),
            CallerIdentity::Xfcc if self.xfcc_trusted_peers.is_empty() => issues.add(
                "ext_authz.xfcc_trusted_peers",
                "caller_identity xfcc needs the addresses of stsgate's own sidecar (e.g. 127.0.0.6/32 under Istio)",
            ),
            _ => {}
        }
        if mode != CallerIdentity::Xfcc && !self.xfcc_trusted_peers.is_empty() {
            issues.add("ext_authz.xfcc_trusted_peers", "is only used with caller_identity: xfcc");
        }
        if mode == CallerIdentity::None && !self.callers.is_empty() {
            issues.add(
                "ext_authz.callers",
                "needs authenticated callers (caller_identity mtls or xfcc): with none, no caller has an identity",
            );
        }
        for (i, caller) in self.callers.iter().enumerate() {
            if caller.audiences.is_empty() {
                issues.add(
                    format!("ext_authz.callers[{i}].audiences"),
                    "must name at least one audience (\"*\" for any)",
                );
            }
        }
    }
}

/// How the Check caller is identified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallerIdentity {
    /// Not at all: whoever reaches the gRPC listener is believed (development).
    None,
    /// The URI SAN of the client certificate on the gRPC listener (`listen.grpc_tls`).
    Mtls,
    /// The `URI` of the `x-forwarded-client-cert` stsgate's own sidecar
    /// sets, from a peer in `xfcc_trusted_peers` only.
    Xfcc,
}

impl CallerIdentity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            CallerIdentity::None => "none",
            CallerIdentity::Mtls => "mtls",
            CallerIdentity::Xfcc => "xfcc",
        }
    }
}

/// Shared with `listen.http_client_cert` (values.rs: no circle between sections).
pub use super::values::PeerNet;

/// `ext_authz.callers[]`: one Check caller and what it may ask for.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckCaller {
    /// The caller's identity (its certificate's URI SAN, or the XFCC `URI`).
    pub identity: Glob,
    /// The audiences it may ask tokens for.
    pub audiences: Vec<Glob>,
    /// Whether the `source.principal` it reports is the actor (it is the
    /// Envoy that terminated the downstream's mTLS); otherwise ignored.
    #[serde(default = "yes")]
    pub source_principal: bool,
}

fn yes() -> bool {
    true
}

/// A field of the dynamic metadata on allowed requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetadataField {
    /// `exchange`, `delegation` or `impersonation`.
    Decision,
    /// The rule that decided.
    Rule,
    /// `sub` of the minted token.
    Sub,
    /// `aud` of the minted token.
    Aud,
    /// The actor (peer SPIFFE ID or actor token subject); absent without one.
    Actor,
    /// `scope` of the minted token.
    Scope,
    /// `jti` of the minted token, to find it in stsgate's logs.
    Jti,
    /// Issuer of the subject token.
    SubjectIssuer,
}

impl MetadataField {
    /// The key in the metadata struct.
    pub(crate) fn key(self) -> &'static str {
        match self {
            MetadataField::Decision => "decision",
            MetadataField::Rule => "rule",
            MetadataField::Sub => "sub",
            MetadataField::Aud => "aud",
            MetadataField::Actor => "actor",
            MetadataField::Scope => "scope",
            MetadataField::Jti => "jti",
            MetadataField::SubjectIssuer => "subject_issuer",
        }
    }
}

/// Which actor sources a request consults: `none`, `peer`, `token` or `any`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActorMode {
    None,
    Peer,
    Token,
    #[default]
    Any,
}

impl ActorMode {
    pub(crate) fn parse(s: &str) -> Option<ActorMode> {
        Some(match s {
            "none" => ActorMode::None,
            "peer" => ActorMode::Peer,
            "token" => ActorMode::Token,
            "any" => ActorMode::Any,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorSource {
    /// Default for routes that do not say (context extension `actor` or a
    /// `routes` entry's `actor`).
    pub mode: ActorMode,
    /// Use the mTLS peer identity Envoy reports (`source.principal`).
    pub peer: bool,
    /// Request header carrying an actor token (validated like subject tokens
    /// against the trusted issuers); empty disables actor tokens.
    pub token_header: String,
    /// Scheme before the actor token in that header; empty for a bare token.
    pub token_scheme: String,
}

impl Default for ActorSource {
    fn default() -> Self {
        ActorSource { mode: ActorMode::Any, peer: true, token_header: String::new(), token_scheme: String::new() }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Host (`:authority` without port) to match: exact, or `*.example.com`.
    /// Omitted matches every host.
    #[serde(default)]
    pub host: Option<Glob>,
    /// Path prefix to match (query string ignored).
    #[serde(default = "every_path")]
    pub path_prefix: String,
    pub audience: String,
    #[serde(default)]
    pub scope: Option<String>,
    /// Actor sources for this route (overrides `ext_authz.actor.mode`).
    #[serde(default)]
    pub actor: Option<ActorMode>,
}

// `audience` is required, so the struct cannot take `#[serde(default)]` as a
// whole; serde needs a function for a default that is not the type's own.
fn every_path() -> String {
    "/".into()
}

impl Route {
    fn check(&self, at: &str, issues: &mut Issues) {
        if self.audience.is_empty() {
            issues.add(format!("{at}.audience"), "must not be empty");
        }
        if !self.path_prefix.starts_with('/') {
            issues.add(format!("{at}.path_prefix"), "must start with /");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::config::Config;
    use crate::config::tests::MINIMAL;

    fn ext_authz_issues(ext_authz: &str) -> Vec<String> {
        let text = format!("ext_authz:\n{ext_authz}{MINIMAL}");
        let issues = Config::from_yaml_str(&text).unwrap().check().err().unwrap_or_default();
        issues.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        // The values of the README's configuration reference, spelled out.
        let spelled = "ext_authz:\n  subject_header: authorization\n  subject_scheme: Bearer\n  \
                       output_header: authorization\n  output_scheme: Bearer\n  remove_subject_header: true\n  \
                       realm: stsgate\n  client_id: stsgate-ext-authz\n  default_audience: null\n  \
                       default_scope: null\n  routes: []\n  actor:\n    mode: any\n    peer: true\n    \
                       token_header: \"\"\n    token_scheme: \"\"\n  requested_subject_header: \"\"\n  \
                       dynamic_metadata: [sub, aud, actor]\n  caller_identity: null\n  xfcc_trusted_peers: []\n  \
                       callers: []\n";
        let cfg = Config::from_yaml_str(&format!("{spelled}{MINIMAL}")).unwrap();
        assert_eq!(cfg.ext_authz, ExtAuthz::default());
        let cfg = Config::from_yaml_str(&format!("ext_authz: {{ actor: {{}} }}\n{MINIMAL}")).unwrap();
        assert_eq!(cfg.ext_authz, ExtAuthz::default());

        let cfg = Config::from_yaml_str(&format!("ext_authz: {{ routes: [{{ audience: a }}] }}\n{MINIMAL}")).unwrap();
        let route = &cfg.ext_authz.routes[0];
        assert_eq!(
            (route.host.as_ref(), route.path_prefix.as_str(), route.scope.as_ref(), route.actor),
            (None, "/", None, None)
        );
    }

    #[test]
    fn headers_schemes_and_routes_are_checked() {
        let issues = ext_authz_issues(
            "  subject_header: \":authority\"\n  output_header: X-Token\n  output_scheme: \"Bearer token\"\n  \
             actor: { mode: token }\n  realm: 'a\"b'\n  \
             dynamic_metadata: [sub, sub]\n  routes: [{ audience: \"\", path_prefix: api }]\n",
        );
        assert_eq!(
            issues,
            [
                "ext_authz.subject_header: \":authority\" is a pseudo-header or Host, which Envoy will not let ext_authz change",
                "ext_authz.output_header: \"X-Token\" must be lower-case (Envoy lower-cases header names)",
                "ext_authz.output_scheme: must be a single word such as Bearer, or empty",
                "ext_authz.actor.mode: mode token needs a `token_header`",
                "ext_authz.dynamic_metadata[1]: `sub` is listed twice",
                "ext_authz.realm: must not contain quotes or backslashes",
                "ext_authz.routes[0].audience: must not be empty",
                "ext_authz.routes[0].path_prefix: must start with /",
            ]
        );
        assert_eq!(
            ext_authz_issues("  actor: { peer: false, mode: peer, token_header: authorization }\n"),
            [
                "ext_authz.actor.token_header: must differ from subject_header and output_header",
                "ext_authz.actor.mode: mode peer needs `peer: true`",
            ]
        );
    }

    /// The issues of a configuration with this `listen` and `ext_authz` text.
    fn caller_issues(listen: &str, ext_authz: &str) -> Vec<String> {
        let text = format!("listen:\n{listen}ext_authz:\n{ext_authz}{MINIMAL}");
        let issues = Config::from_yaml_str(&text).unwrap().check().err().unwrap_or_default();
        issues.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn check_callers_need_a_consistent_identity_mode() {
        let tls = "  grpc_tls: { cert: /tls/tls.crt, key: /tls/tls.key, client_ca: /tls/ca.crt }\n";
        let web = "  callers: [{ identity: \"spiffe://cluster.local/ns/shop/sa/web\", audiences: [orders] }]\n";
        // The default follows the listener: mtls with TLS, none without.
        let cfg = Config::from_yaml_validated(&format!("listen:\n{tls}ext_authz:\n{web}{MINIMAL}")).unwrap();
        assert_eq!(cfg.ext_authz.caller_identity(true), CallerIdentity::Mtls);
        let caller = &cfg.ext_authz.callers[0];
        assert_eq!(
            (caller.identity.as_str(), caller.source_principal),
            ("spiffe://cluster.local/ns/shop/sa/web", true)
        );
        assert_eq!(ExtAuthz::default().caller_identity(false), CallerIdentity::None);
        let xfcc = "  caller_identity: xfcc\n  xfcc_trusted_peers: [127.0.0.6/32, \"::1\"]\n";
        assert_eq!(caller_issues("  {}\n", &format!("{xfcc}{web}")), Vec::<String>::new());

        for (listen, ext_authz, want) in [
            ("  {}\n", "  caller_identity: mtls\n".to_owned(), "ext_authz.caller_identity: mtls needs listen.grpc_tls"),
            (
                "  {}\n",
                "  caller_identity: xfcc\n".to_owned(),
                "ext_authz.xfcc_trusted_peers: caller_identity xfcc needs",
            ),
            (tls, xfcc.to_owned(), "ext_authz.caller_identity: xfcc takes the caller from stsgate's own sidecar"),
            ("  {}\n", web.to_owned(), "ext_authz.callers: needs authenticated callers"),
            (tls, format!("  caller_identity: none\n{web}"), "ext_authz.callers: needs authenticated callers"),
            (tls, "  xfcc_trusted_peers: [127.0.0.6]\n".to_owned(), "ext_authz.xfcc_trusted_peers: is only used with"),
            (
                tls,
                "  callers: [{ identity: \"*\", audiences: [] }]\n".to_owned(),
                "ext_authz.callers[0].audiences: must name",
            ),
        ] {
            let issues = caller_issues(listen, &ext_authz);
            assert_eq!(issues.len(), 1, "{ext_authz}: {issues:?}");
            assert!(issues[0].starts_with(want), "{ext_authz}: {issues:?}");
        }
        // Bad ranges and patterns are parse errors that name the key.
        for (ext_authz, path) in [
            ("  xfcc_trusted_peers: [127.0.0.6/33]\n", "ext_authz.xfcc_trusted_peers[0]"),
            ("  xfcc_trusted_peers: [sidecar]\n", "ext_authz.xfcc_trusted_peers[0]"),
            ("  callers: [{ identity: \"\", audiences: [a] }]\n", "ext_authz.callers[0].identity"),
            ("  callers: [{ identity: a, audiences: [\"\"] }]\n", "ext_authz.callers[0].audiences[0]"),
            ("  callers: [{ identity: a }]\n", "ext_authz.callers[0]"),
            ("  callers: [{ identity: a, audiences: [b], source_principals: true }]\n", "ext_authz.callers[0]"),
            ("  caller_identity: spiffe\n", "ext_authz.caller_identity"),
        ] {
            let err = Config::from_yaml_str(&format!("ext_authz:\n{ext_authz}{MINIMAL}")).unwrap_err();
            assert!(err.to_string().contains(&format!("`{path}")), "{ext_authz}: {err}");
        }
    }

    #[test]
    fn trusted_peers_match_addresses_and_ranges() {
        let net = |s: &str| s.parse::<PeerNet>().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(net("127.0.0.6/32").contains(ip("127.0.0.6")));
        assert!(!net("127.0.0.6/32").contains(ip("127.0.0.1")));
        assert!(net("127.0.0.6").contains(ip("::ffff:127.0.0.6")), "IPv4-mapped IPv6 is the IPv4 address");
        assert!(net("10.0.0.0/8").contains(ip("10.1.2.3")));
        assert!(net("::1").contains(ip("::1")));
        assert!(!net("::1").contains(ip("127.0.0.1")));
        assert!("127.0.0.1/40".parse::<PeerNet>().is_err());
    }
}
