//! The rule engine through the ext_authz Check front door: a real stsgate on
//! ephemeral ports, a real (mock) IdP, a tonic client. Every allowed case
//! verifies the minted token against stsgate's *published* JWKS before looking
//! at its claims; every refusal is checked down to the gRPC code, the HTTP
//! status, the JSON `error` and the rule/condition named in the description.
//!
//! Each test is a table: one configuration (rules, `ext_authz`, which IdPs are
//! trusted) and the cases run against it, each a request (subject token,
//! actor token, context extensions, headers, peer) and its expected outcome
//! (minted, with claim and metadata checks; or refused, with error, reason and
//! what the description says). `run` reports every failing case by name.

mod support;

use std::sync::Arc;

use serde_json::{Value, json};
use stsgate::pb::envoy::service::auth::v3::CheckResponse;
use stsgate::pb::envoy::service::auth::v3::attribute_context::Peer;
use support::*;

const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";
const ORDERS_SA: &str = "spiffe://cluster.local/ns/shop/sa/orders";
const OTHER_SA: &str = "spiffe://cluster.local/ns/shop/sa/other";
const ADMIN_SA: &str = "spiffe://cluster.local/ns/shop/sa/admin";
const GATEWAY_SA: &str = "spiffe://cluster.local/ns/edge/sa/gateway";

// ---------------------------------------------------------------------------
// The table: scenarios, cases, tokens, expectations
// ---------------------------------------------------------------------------

/// Which mock IdPs a scenario starts: `{idp}` is always trusted; `{other}`
/// (when started) is trusted or a stranger stsgate does not know.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Idps {
    One,
    TwoTrusted,
    SecondUntrusted,
}

/// One of the scenario's IdPs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Who {
    Idp,
    Other,
}
use Who::{Idp, Other};

/// One configuration and the requests made against it. `rules`, claims,
/// metadata and expected claim values may name `{idp}` and `{other}`, the
/// issuers of the scenario's IdPs.
struct Scenario {
    idps: Idps,
    /// Extra lines of `{idp}`'s trusted-issuer entry (with `Idps::One`).
    issuer_options: &'static [&'static str],
    ext_authz: &'static str,
    rules: String,
    cases: Vec<Case>,
}

impl Scenario {
    fn new(rules: impl Into<String>) -> Scenario {
        Scenario { idps: Idps::One, issuer_options: &[], ext_authz: "", rules: rules.into(), cases: Vec::new() }
    }

    fn idps(mut self, idps: Idps) -> Self {
        self.idps = idps;
        self
    }

    fn issuer_options(mut self, lines: &'static [&'static str]) -> Self {
        self.issuer_options = lines;
        self
    }

    fn ext_authz(mut self, yaml: &'static str) -> Self {
        self.ext_authz = yaml;
        self
    }

    fn cases(mut self, cases: impl IntoIterator<Item = Case>) -> Self {
        self.cases.extend(cases);
        self
    }
}

/// A JWT a case sends, built at run time from the scenario's IdPs: `claims`
/// of `from` for `sub` and `scope`, with `extra` members merged in and times
/// moved, signed by `signer`'s key (or not at all).
#[derive(Clone)]
struct Tok {
    from: Who,
    signer: Option<Who>,
    unsigned: bool,
    sub: &'static str,
    scope: &'static str,
    extra: Value,
    /// (claim, seconds from now) for `iat`, `nbf`, `exp`.
    times: Vec<(&'static str, i64)>,
}

/// A token of `{idp}` for `sub` with `scope`, valid for 10 minutes.
fn tok(sub: &'static str, scope: &'static str) -> Tok {
    Tok { from: Idp, signer: None, unsigned: false, sub, scope, extra: json!({}), times: Vec::new() }
}

impl Tok {
    /// Issued (and signed) by `who`.
    fn by(mut self, who: Who) -> Self {
        self.from = who;
        self
    }

    /// Claims of one IdP, signed with another's key.
    fn signed_by(mut self, who: Who) -> Self {
        self.signer = Some(who);
        self
    }

    /// `alg: none`, no signature.
    fn unsigned(mut self) -> Self {
        self.unsigned = true;
        self
    }

    /// Extra claims (merged over the defaults).
    fn with(mut self, extra: Value) -> Self {
        for (k, v) in extra.as_object().expect("extra claims are an object") {
            self.extra[k] = v.clone();
        }
        self
    }

    /// `claim` (`iat`, `nbf` or `exp`) at now + `secs`.
    fn at(mut self, claim: &'static str, secs: i64) -> Self {
        self.times.push((claim, secs));
        self
    }
}

struct Case {
    name: String,
    subject: Tok,
    audience: &'static str,
    ctx: Vec<(&'static str, &'static str)>,
    /// Sent as `x-actor-token` (see `ACTOR_TOKENS`).
    actor: Option<Tok>,
    headers: Vec<(&'static str, String)>,
    peer: Option<Peer>,
    expect: Expect,
}

/// A request with `subject` as the bearer token and `audience` as the route's
/// context extension; refused with `no_rule` until told otherwise.
fn case(name: impl Into<String>, subject: &Tok, audience: &'static str) -> Case {
    Case {
        name: name.into(),
        subject: subject.clone(),
        audience,
        ctx: Vec::new(),
        actor: None,
        headers: Vec::new(),
        peer: None,
        expect: Expect::Refused(refusal(Status::Forbidden { error: "invalid_target", reason: "no_rule" })),
    }
}

impl Case {
    /// Another context extension of the route (`scope`, `actor`).
    fn ctx(mut self, key: &'static str, value: &'static str) -> Self {
        self.ctx.push((key, value));
        self
    }

    fn actor(mut self, token: &Tok) -> Self {
        self.actor = Some(token.clone());
        self
    }

    /// `x-requested-subject` (see `ACTOR_TOKENS`).
    fn requesting_subject(self, sub: &'static str) -> Self {
        self.header("x-requested-subject", sub)
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    fn headers(mut self, headers: &[(&'static str, String)]) -> Self {
        self.headers.extend_from_slice(headers);
        self
    }

    /// Envoy's `source.principal` (an mTLS peer).
    fn peer(self, principal: &str) -> Self {
        self.source(Peer { principal: principal.to_owned(), ..Default::default() })
    }

    fn source(mut self, peer: Peer) -> Self {
        self.peer = Some(peer);
        self
    }

    fn allows(mut self, minted: Minted) -> Self {
        self.expect = Expect::Minted(minted);
        self
    }

    /// 403 with this `error`, metadata `reason`, and every needle in the description.
    fn forbids(mut self, error: &'static str, reason: &'static str, needles: &[&str]) -> Self {
        self.expect = Expect::Refused(refusal(Status::Forbidden { error, reason }).needles(needles));
        self
    }

    fn refuses(mut self, refusal: Refusal) -> Self {
        self.expect = Expect::Refused(refusal);
        self
    }
}

enum Expect {
    Minted(Minted),
    Refused(Refusal),
}

/// What a minted token (after verification against the published JWKS for
/// the case's audience) and the allowed response must show.
#[derive(Default)]
struct Minted {
    /// JSON pointer into the claims -> value.
    claims: Vec<(&'static str, Value)>,
    absent: Vec<&'static str>,
    scopes: Option<Vec<&'static str>>,
    /// `exp - iat` at most this many seconds (and positive).
    max_lifetime: Option<i64>,
    metadata: Vec<(&'static str, &'static str)>,
    no_metadata: Vec<&'static str>,
    removes: Vec<&'static str>,
    keeps: Vec<&'static str>,
    downstream: Vec<DownstreamExpectation>,
}

/// (header, audience, claims): another token minted beside the main one.
type DownstreamExpectation = (&'static str, &'static str, Vec<(&'static str, Value)>);

fn minted() -> Minted {
    Minted::default()
}

impl Minted {
    fn claim(mut self, pointer: &'static str, want: impl Into<Value>) -> Self {
        self.claims.push((pointer, want.into()));
        self
    }

    fn sub(self, sub: &'static str) -> Self {
        self.claim("/sub", sub)
    }

    fn act(self, act: Value) -> Self {
        self.claim("/act", act)
    }

    /// Claims the token must not carry.
    fn absent(mut self, claims: &[&'static str]) -> Self {
        self.absent.extend_from_slice(claims);
        self
    }

    fn scopes(mut self, scopes: &[&'static str]) -> Self {
        self.scopes = Some(scopes.to_vec());
        self
    }

    fn lifetime_at_most(mut self, secs: i64) -> Self {
        self.max_lifetime = Some(secs);
        self
    }

    fn md(mut self, key: &'static str, value: &'static str) -> Self {
        self.metadata.push((key, value));
        self
    }

    fn rule(self, rule: &'static str) -> Self {
        self.md("rule", rule)
    }

    fn decision(self, decision: &'static str) -> Self {
        self.md("decision", decision)
    }

    /// The `actor` metadata; `no_actor` for none.
    fn actor(self, actor: &'static str) -> Self {
        self.md("actor", actor)
    }

    fn no_actor(mut self) -> Self {
        self.no_metadata.push("actor");
        self
    }

    /// A request header Envoy is told to remove.
    fn removes(mut self, header: &'static str) -> Self {
        self.removes.push(header);
        self
    }

    /// A request header Envoy is not told to remove.
    fn keeps(mut self, header: &'static str) -> Self {
        self.keeps.push(header);
        self
    }

    fn downstream(mut self, header: &'static str, audience: &'static str, claims: Vec<(&'static str, Value)>) -> Self {
        self.downstream.push((header, audience, claims));
        self
    }
}

enum Status {
    /// 403 PERMISSION_DENIED, `error`, metadata `reason`, no challenge.
    Forbidden { error: &'static str, reason: &'static str },
    /// 401 UNAUTHENTICATED `invalid_token` with a Bearer challenge.
    InvalidToken,
    /// 400 INVALID_ARGUMENT.
    BadRequest { error: &'static str },
}

struct Refusal {
    status: Status,
    needles: Vec<String>,
    /// What the description must not contain.
    lacks: Vec<&'static str>,
    /// The whole description.
    exact: Option<&'static str>,
}

fn refusal(status: Status) -> Refusal {
    Refusal { status, needles: Vec::new(), lacks: Vec::new(), exact: None }
}

/// A 401 `invalid_token` whose description contains every needle.
fn invalid_token(needles: &[&str]) -> Refusal {
    refusal(Status::InvalidToken).needles(needles)
}

impl Refusal {
    fn needles(mut self, needles: &[&str]) -> Self {
        self.needles.extend(needles.iter().map(|n| n.to_string()));
        self
    }

    fn lacks(mut self, text: &'static str) -> Self {
        self.lacks.push(text);
        self
    }

    fn exactly(mut self, description: &'static str) -> Self {
        self.exact = Some(description);
        self
    }
}

// ---------------------------------------------------------------------------
// Running a table
// ---------------------------------------------------------------------------

struct Env {
    h: Harness,
    idp: MockIdp,
    other: Option<MockIdp>,
}

/// Starts the scenario's IdPs and stsgate, runs every case (each in its own
/// task, so that one failing case does not hide the others) and fails with
/// the names of the cases that failed.
async fn run(scenario: Scenario) {
    let idp = MockIdp::start().await;
    let other = if scenario.idps == Idps::One { None } else { Some(MockIdp::start().await) };
    let rules = fill(&scenario.rules, &idp, other.as_ref());
    let mut builder = match (scenario.idps, &other) {
        (Idps::TwoTrusted, Some(other)) => Harness::bare().trusted_issuers(&trust(&[&idp.issuer, &other.issuer])),
        _ => Harness::builder(&idp),
    };
    for line in scenario.issuer_options {
        builder = builder.issuer_option(line);
    }
    let h = builder.ext_authz(scenario.ext_authz).rules(&rules).start().await;
    let env = Arc::new(Env { h, idp, other });

    let total = scenario.cases.len();
    let mut failed = Vec::new();
    for case in scenario.cases {
        let name = case.name.clone();
        let env = env.clone();
        if let Err(e) = tokio::spawn(async move { env.run_case(case).await }).await {
            let why = match e.try_into_panic() {
                Ok(p) => p
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            failed.push(format!("- {name}: {why}"));
        }
    }
    let env = Arc::into_inner(env).expect("every case is done");
    env.h.shutdown().await;
    assert!(failed.is_empty(), "{} of {total} cases failed:\n{}", failed.len(), failed.join("\n"));
}

/// `text` with `{idp}` and `{other}` replaced by those IdPs' issuers.
fn fill(text: &str, idp: &MockIdp, other: Option<&MockIdp>) -> String {
    let text = text.replace("{idp}", &idp.issuer);
    match other {
        Some(o) => text.replace("{other}", &o.issuer),
        None => text,
    }
}

/// `trusted_issuers` entries (discovery, RS256) for these issuers.
fn trust(issuers: &[&String]) -> String {
    issuers.iter().map(|i| format!("- issuer: {i}\n  discovery: true\n  algorithms: [RS256]\n")).collect()
}

impl Env {
    fn mock(&self, who: Who) -> &MockIdp {
        match who {
            Idp => &self.idp,
            Other => self.other.as_ref().expect("a scenario with a second IdP"),
        }
    }

    fn subst(&self, text: &str) -> String {
        fill(text, &self.idp, self.other.as_ref())
    }

    /// `value` with `{idp}` and `{other}` replaced in every string.
    fn subst_value(&self, value: &Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.subst(s)),
            Value::Array(a) => Value::Array(a.iter().map(|v| self.subst_value(v)).collect()),
            Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), self.subst_value(v))).collect()),
            other => other.clone(),
        }
    }

    fn token(&self, t: &Tok) -> String {
        let mut claims = self.mock(t.from).claims(t.sub, t.scope);
        for (k, v) in t.extra.as_object().unwrap() {
            claims[k] = self.subst_value(v);
        }
        for (claim, secs) in &t.times {
            claims[*claim] = json!(now() + secs);
        }
        if t.unsigned { forge_none(&claims) } else { self.mock(t.signer.unwrap_or(t.from)).token(&claims) }
    }

    async fn run_case(&self, case: Case) {
        let mut req = request_to("api.test", "/")
            .bearer(&self.token(&case.subject))
            .context("audience", case.audience)
            .contexts(case.ctx.iter().copied());
        if let Some(actor) = &case.actor {
            req = req.header("x-actor-token", self.token(actor));
        }
        req = req.headers(case.headers);
        if let Some(peer) = case.peer {
            req = req.source(peer);
        }
        let resp = self.h.check_request(req.build()).await;
        match case.expect {
            Expect::Minted(want) => self.check_minted(&resp, case.audience, want).await,
            Expect::Refused(want) => check_refused(&resp, want),
        }
    }

    async fn check_minted(&self, resp: &CheckResponse, audience: &str, want: Minted) {
        let (ok, c) = verified_mint(&self.h, resp, audience).await;
        for (pointer, value) in &want.claims {
            assert_eq!(c.pointer(pointer), Some(&self.subst_value(value)), "claim {pointer} in {c}");
        }
        for claim in &want.absent {
            assert!(c.get(claim).is_none(), "{claim} must not be in {c}");
        }
        if let Some(scopes_wanted) = &want.scopes {
            assert_eq!(scopes(&c), *scopes_wanted, "{c}");
        }
        if let Some(max) = want.max_lifetime {
            let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
            assert!(exp - iat <= max && exp > iat, "lifetime at most {max}s: {}", exp - iat);
        }
        for (key, value) in &want.metadata {
            assert_eq!(md(&ok, key), self.subst(value), "metadata {key}");
        }
        for key in &want.no_metadata {
            assert_eq!(ok.metadata.get(*key), None, "no metadata {key}");
        }
        for header in &want.removes {
            assert!(ok.headers_to_remove.iter().any(|h| h == header), "{header} removed: {:?}", ok.headers_to_remove);
        }
        for header in &want.keeps {
            assert!(!ok.headers_to_remove.iter().any(|h| h == header), "{header} kept: {:?}", ok.headers_to_remove);
        }
        for (header, audience, claims) in &want.downstream {
            let (_, d) = self.h.verify_minted(&ok.header_value(header), audience).await;
            for (pointer, value) in claims {
                assert_eq!(d.pointer(pointer), Some(&self.subst_value(value)), "claim {pointer} of {header} in {d}");
            }
        }
    }
}

#[track_caller]
fn check_refused(resp: &CheckResponse, want: Refusal) {
    let d = match want.status {
        Status::Forbidden { error, reason } => assert_forbidden(resp, error, reason, &[]),
        Status::InvalidToken => assert_invalid_token(resp, ""),
        Status::BadRequest { error } => {
            let d = denial(resp);
            assert_eq!((d.rpc_code, d.http_status), (RPC_INVALID_ARGUMENT, 400), "{d:#?}");
            assert_eq!(d.error(), error, "{d:#?}");
            d
        }
    };
    for needle in &want.needles {
        assert!(d.description().contains(needle.as_str()), "description {:?} lacks {needle:?}", d.description());
    }
    for text in &want.lacks {
        assert!(!d.description().contains(text), "description {:?} contains {text:?}", d.description());
    }
    if let Some(exact) = want.exact {
        assert_eq!(d.description(), exact);
    }
}

// ---------------------------------------------------------------------------
// Assertion helpers
// ---------------------------------------------------------------------------

fn scopes(claims: &Value) -> Vec<String> {
    let mut v: Vec<String> = claims["scope"].as_str().unwrap_or("").split_whitespace().map(str::to_owned).collect();
    v.sort();
    v
}

fn md<'a>(ok: &'a Allowed, key: &str) -> &'a str {
    ok.metadata.get(key).map(String::as_str).unwrap_or_else(|| panic!("no metadata {key:?} in {:?}", ok.metadata))
}

/// The allowed response's minted token, verified against the published JWKS
/// for `audience`; returns the `Allowed` view and the verified claims.
async fn verified_mint(h: &Harness, resp: &CheckResponse, audience: &str) -> (Allowed, Value) {
    let ok = allowed(resp);
    let (header, claims) = h.verify_minted(&ok.bearer(), audience).await;
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    assert_eq!(header.kid.as_deref(), Some(STS_KID));
    assert_eq!(claims["iss"], STS_ISSUER);
    assert_eq!(claims["aud"], audience);
    (ok, claims)
}

/// Whether `token` verifies against the published JWKS for `audience` (no panic).
async fn verifies_for(h: &Harness, token: &str, audience: &str) -> bool {
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(h.get_json("/.well-known/jwks.json").await).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwks.find(header.kid.as_deref().unwrap()).unwrap()).unwrap();
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.set_issuer(&[STS_ISSUER]);
    validation.set_audience(&[audience]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).is_ok()
}

/// A 403 refusal: PERMISSION_DENIED, JSON `error`, the description containing
/// every `needle`, and the metrics/metadata `reason`.
#[track_caller]
fn assert_forbidden(resp: &CheckResponse, error: &str, reason: &str, needles: &[&str]) -> Denial {
    let d = denial(resp);
    assert_eq!(d.rpc_code, RPC_PERMISSION_DENIED, "{d:#?}");
    assert_eq!(d.http_status, 403, "{d:#?}");
    assert_eq!(d.error(), error, "{d:#?}");
    for needle in needles {
        assert!(d.description().contains(needle), "description {:?} lacks {needle:?}", d.description());
    }
    assert!(d.www_authenticate().is_none(), "a 403 carries no challenge: {d:#?}");
    assert_eq!(d.headers.get("content-type").map(String::as_str), Some("application/json"));
    assert_eq!(d.metadata.get("decision").map(String::as_str), Some("denied"));
    assert_eq!(d.metadata.get("reason").map(String::as_str), Some(reason), "{d:#?}");
    d
}

const ACTOR_TOKENS: &str = "actor: { token_header: x-actor-token }\nrequested_subject_header: x-requested-subject\n";

// ---------------------------------------------------------------------------
// Delegation
// ---------------------------------------------------------------------------

const WEB_DELEGATES: &str = r#"
- name: web-delegates-to-orders
  match:
    audiences: [orders]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/sa/web"] }
  grant: { outcome: delegation, scopes: ["orders.*"], max_lifetime: 2m, max_chain_depth: 2 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_with_a_peer_names_the_spiffe_id_in_act() {
    let alice = tok("alice", "orders.read profile");
    run(Scenario::new(WEB_DELEGATES).cases([
        // Exactly {"sub": <SPIFFE ID>}: a peer has no issuer.
        case("the peer web delegates", &alice, "orders").peer(WEB).allows(
            minted()
                .sub("alice")
                .act(json!({"sub": WEB}))
                .absent(&["act_as"])
                .scopes(&["orders.read"])
                .actor(WEB)
                .decision("delegation")
                .rule("web-delegates-to-orders")
                .md("sub", "alice"),
        ),
        // Another workload, or none at all: the rule does not match (default deny).
        case("another workload", &alice, "orders").peer(OTHER_SA).forbids("invalid_target", "no_rule", &["\"orders\""]),
        case("no peer", &alice, "orders").forbids("invalid_target", "no_rule", &["\"orders\""]),
        // The route can switch the peer off: then there is no actor to delegate to.
        case("the route switches the peer off", &alice, "orders").ctx("actor", "none").peer(WEB).forbids(
            "invalid_target",
            "no_rule",
            &["\"orders\""],
        ),
    ]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nested_chain_wraps_the_prior_act_and_is_capped_by_max_chain_depth() {
    // One prior actor (carried with whatever members it had): nested, untouched.
    let prior = json!({"sub": WEB, "iss": "https://mesh.example"});
    let once = tok("alice", "payments.write").with(json!({"act": prior}));
    // Two prior actors + this one = 3 > 2.
    let deep = tok("alice", "payments.write").with(json!({"act": {"sub": WEB, "act": {"sub": GATEWAY_SA}}}));
    let malformed = tok("alice", "payments.write").with(json!({"act": {"act": {"sub": WEB}}}));
    run(Scenario::new(
        r#"
- name: orders-delegates-to-payments
  match:
    audiences: [payments]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/sa/orders"] }
  grant: { outcome: delegation, scopes: ["payments.*"], max_chain_depth: 2 }
"#,
    )
    .cases([
        case("one prior actor is nested", &once, "payments").peer(ORDERS_SA).allows(
            minted()
                .sub("alice")
                .act(json!({"sub": ORDERS_SA, "act": prior}))
                .claim("/act/act", prior.clone())
                // The current actor, not a nested one.
                .actor(ORDERS_SA)
                .decision("delegation"),
        ),
        // Refused, naming the rule and the limit.
        case("a chain too deep", &deep, "payments").peer(ORDERS_SA).forbids(
            "access_denied",
            "chain_too_deep",
            &["delegation chain of 3", "\"orders-delegates-to-payments\"", "limit of 2"],
        ),
        // A malformed chain is refused, never trusted or silently dropped.
        case("a malformed chain", &malformed, "payments").peer(ORDERS_SA).forbids(
            "access_denied",
            "bad_claim",
            &["act claim is malformed"],
        ),
    ]))
    .await;
}

// ---------------------------------------------------------------------------
// Exchange
// ---------------------------------------------------------------------------

const PLAIN_ORDERS: &str = r#"
- name: plain-orders
  match: { audiences: [orders] }
  grant: { scopes: ["orders.*"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exchange_has_no_act_and_does_not_match_a_request_with_a_peer() {
    let alice = tok("alice", "orders.read");
    run(Scenario::new(PLAIN_ORDERS).cases([
        case("no peer: an exchange", &alice, "orders")
            .allows(minted().sub("alice").absent(&["act", "act_as"]).decision("exchange").no_actor()),
        // An mTLS peer makes it a request with an actor: an exchange rule does not fit.
        case("a peer is an actor", &alice, "orders").peer(WEB).forbids(
            "invalid_target",
            "no_rule",
            &["no rule allows", "\"orders\""],
        ),
        // The route decides explicitly that the peer is not an actor: it matches again.
        case("the route says the peer is no actor", &alice, "orders")
            .ctx("actor", "none")
            .peer(WEB)
            .allows(minted().absent(&["act"]).decision("exchange").no_actor()),
    ]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delegation_or_exchange_is_chosen_by_the_presence_of_a_peer() {
    let rules = format!(
        "{WEB_DELEGATES}- name: plain-orders\n  match: {{ audiences: [orders] }}\n  grant: {{ scopes: [\"orders.read\"] }}\n"
    );
    let alice = tok("alice", "orders.read orders.write");
    run(Scenario::new(rules).cases([
        case("with a peer: delegation", &alice, "orders").peer(WEB).allows(
            minted()
                .rule("web-delegates-to-orders")
                .decision("delegation")
                .act(json!({"sub": WEB}))
                .scopes(&["orders.read", "orders.write"]),
        ),
        case("without: exchange", &alice, "orders")
            .allows(minted().rule("plain-orders").decision("exchange").absent(&["act"]).scopes(&["orders.read"])),
    ]))
    .await;
}

// ---------------------------------------------------------------------------
// Impersonation
// ---------------------------------------------------------------------------

const SUPPORT_IMPERSONATES: &str = r#"
- name: support-impersonates-customers
  match:
    audiences: [orders]
    subject: { groups: [sre] }
    actor: { sub: [ops-console] }
  grant:
    outcome: impersonation
    scopes: ["orders.read"]
    impersonate_subjects: ["user-*"]
    audit_claim: impersonated_by
    max_lifetime: 1m
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_impersonates_a_customer_only_where_a_rule_allows_it() {
    let operator = tok("operator", "orders.read orders.write").with(json!({"groups": ["sre"]}));
    let console = tok("ops-console", "");
    let refused = ["impersonating another subject"];
    run(Scenario::new(SUPPORT_IMPERSONATES).ext_authz(ACTOR_TOKENS).cases([
        case("the console impersonates user-123", &operator, "orders")
            .actor(&console)
            .requesting_subject("user-123")
            .allows(
                minted()
                    .sub("user-123")
                    // Impersonation carries no act.
                    .absent(&["act", "act_as"])
                    // The audit claim names the real actor (with its issuer: it is a token actor).
                    .claim("/impersonated_by", json!({"sub": "ops-console", "iss": "{idp}"}))
                    .scopes(&["orders.read"])
                    .lifetime_at_most(60)
                    .decision("impersonation")
                    .md("sub", "user-123")
                    .actor("ops-console")
                    .rule("support-impersonates-customers")
                    // The consumed actor token and impersonation header never reach the upstream.
                    .removes("x-actor-token")
                    .removes("x-requested-subject")
                    // The output header is authorization.
                    .keeps("authorization"),
            ),
        case("a subject outside impersonate_subjects", &operator, "orders")
            .actor(&console)
            .requesting_subject("admin-1")
            .forbids("access_denied", "impersonation_refused", &["impersonating another subject", "names this actor"]),
        case("an actor the rule does not name", &operator, "orders")
            .actor(&tok("intruder-console", ""))
            .requesting_subject("user-123")
            .forbids("access_denied", "impersonation_refused", &refused),
        case("no actor at all", &operator, "orders").requesting_subject("user-123").forbids(
            "access_denied",
            "impersonation_refused",
            &refused,
        ),
        // The operator's own token must be in group sre.
        case("the operator is not in sre", &tok("dev-1", "orders.read").with(json!({"groups": ["dev"]})), "orders")
            .actor(&console)
            .requesting_subject("user-123")
            .forbids("access_denied", "impersonation_refused", &refused),
        // An mTLS peer is not the named actor either, even with the right SPIFFE-ish name.
        case("a peer named like the actor", &operator, "orders")
            .requesting_subject("user-123")
            .peer("ops-console")
            .forbids("access_denied", "impersonation_refused", &refused),
        // An unreadable impersonation header is a 400, not a guess.
        case("an unreadable requested subject", &operator, "orders")
            .actor(&console)
            .requesting_subject("user-1,user-2")
            .refuses(refusal(Status::BadRequest { error: "invalid_request" }).needles(&["requested subject"])),
    ]))
    .await;
}

// ---------------------------------------------------------------------------
// may_act, laundering, act_as
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn may_act_in_the_subject_token_must_name_the_actor() {
    let alice = tok("alice", "orders.read").with(json!({"may_act": {"sub": WEB}}));
    // may_act with an iss a peer cannot have.
    let alice_iss = tok("alice", "orders.read").with(json!({"may_act": {"sub": WEB, "iss": "{idp}"}}));
    run(Scenario::new(
        r#"
- name: shop-delegates
  match:
    audiences: [orders]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/sa/web", "spiffe://cluster.local/ns/shop/sa/other"] }
  grant: { outcome: delegation, scopes: ["orders.*"] }
"#,
    )
    .cases([
        // The rule allows `other`, but the subject token only admits `web`.
        case("the rule admits other, may_act does not", &alice, "orders").peer(OTHER_SA).forbids(
            "access_denied",
            "may_act",
            &["may_act does not admit this actor"],
        ),
        // may_act is not carried into the minted token.
        case("may_act names web", &alice, "orders")
            .peer(WEB)
            .allows(minted().act(json!({"sub": WEB})).absent(&["may_act"])),
        case("may_act with an iss", &alice_iss, "orders").peer(WEB).forbids("access_denied", "may_act", &["may_act"]),
    ]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delegated_token_is_never_laundered_into_a_clean_one() {
    let prior = json!({"sub": WEB, "act": {"sub": GATEWAY_SA}});
    let delegated = tok("alice", "orders.read").with(json!({"act": prior}));
    run(Scenario::new(
        r#"
- name: launder
  match: { audiences: [orders] }
  grant: { outcome: impersonation, scopes: ["orders.*"] }
- name: keep
  match: { audiences: ["api://*"] }
  grant: { scopes: ["*"] }
"#,
    )
    .cases([
        case("impersonation of a delegated token", &delegated, "orders").forbids(
            "access_denied",
            "would_drop_act",
            &["\"launder\"", "would drop the act claim"],
        ),
        // A clean token goes through the same impersonation rule (so it is the act that refuses).
        case("impersonation of a clean token", &tok("alice", "orders.read"), "orders")
            .allows(minted().absent(&["act"]).decision("impersonation")),
        // An exchange keeps the chain exactly as it was.
        case("an exchange keeps the chain", &delegated, "api://x")
            .allows(minted().sub("alice").act(prior.clone()).decision("exchange")),
    ]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn act_as_shape_puts_the_actor_in_sub_and_the_subject_in_act_as() {
    run(Scenario::new(
        r#"
- name: web-acts-as-user
  match:
    audiences: [legacy]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/*"] }
  grant: { outcome: delegation, delegation_shape: act_as, scopes: ["legacy.*"] }
"#,
    )
    .cases([case("act_as", &tok("alice", "legacy.read"), "legacy").peer(WEB).allows(
        minted()
            .sub(WEB)
            .claim("/act_as/sub", "alice")
            .claim("/act_as/iss", "{idp}")
            .absent(&["act"])
            .decision("delegation")
            .actor(WEB),
    )]))
    .await;
}

// ---------------------------------------------------------------------------
// Matching: subject claims, audiences, issuers, order, default deny
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subject_claims_audience_globs_and_issuer_lists_select_a_rule() {
    let staff = |sub: &'static str, groups: Value| tok(sub, "orders.read").with(json!({"groups": groups}));
    let mut cases = Vec::new();
    // groups is one-of (any element), sub is a glob, audience is a glob.
    let matching = [("emp-7", json!(["customers", "sre"])), ("emp-8", json!(["staff"])), ("emp-9", json!("staff"))];
    for (sub, groups) in matching {
        cases.push(
            case(format!("{sub} in {groups}"), &staff(sub, groups), "api://orders/v1")
                .allows(minted().sub(sub).rule("staff-to-order-apis")),
        );
    }
    // Wrong group, wrong sub, no groups at all, audience outside the glob.
    for (sub, groups, aud) in [
        ("emp-7", json!(["customers"]), "api://orders/v1"),
        ("cust-1", json!(["staff"]), "api://orders/v1"),
        ("emp-7", json!([]), "api://orders/v1"),
        ("emp-7", json!(["staff"]), "api://billing/v1"),
        ("emp-7", json!(["staff"]), "api://orders"),
    ] {
        let name = format!("{sub} in {groups} for {aud}");
        cases.push(case(name, &staff(sub, groups), aud).forbids("invalid_target", "no_rule", &[&format!("{aud:?}")]));
    }
    // Issuer list: the partner IdP's token, not ours, even for the same claims.
    cases.push(
        case("the partner's token", &tok("alice", "reports.read").by(Other), "reports")
            .allows(minted().md("subject_issuer", "{other}").scopes(&["reports.read"])),
    );
    cases.push(case("our token", &tok("alice", "reports.read"), "reports").forbids(
        "invalid_target",
        "no_rule",
        &["\"reports\""],
    ));
    run(Scenario::new(
        r#"
- name: staff-to-order-apis
  match:
    audiences: ["api://orders/*"]
    subject: { groups: [staff, sre], sub: ["emp-*"] }
  grant: { scopes: ["*"] }
- name: partner-reports
  match:
    issuers: ["{other}"]
    audiences: [reports]
  grant: { scopes: ["reports.*"] }
"#,
    )
    .idps(Idps::TwoTrusted)
    .cases(cases))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_matching_rule_decides_and_no_match_is_default_deny() {
    let vip = tok("alice", "orders.read orders.write billing.read billing.write").with(json!({"tier": "vip"}));
    let plain = tok("bob", "orders.read orders.write billing.read").with(json!({"tier": "basic"}));
    run(Scenario::new(
        r#"
- name: vip-orders
  match: { audiences: [orders], subject: { tier: [vip] } }
  grant: { scopes: ["orders.*"], add_claims: { lane: fast } }
- name: orders
  match: { audiences: [orders] }
  grant: { scopes: ["orders.read"], add_claims: { lane: normal } }
- name: billing-wide
  match: { audiences: [billing] }
  grant: { scopes: ["billing.read"], add_claims: { lane: wide } }
- name: billing-vip
  match: { audiences: [billing], subject: { tier: [vip] } }
  grant: { scopes: ["billing.*"], add_claims: { lane: fast } }
"#,
    )
    .cases([
        case("vip orders", &vip, "orders")
            .allows(minted().rule("vip-orders").claim("/lane", "fast").scopes(&["orders.read", "orders.write"])),
        case("plain orders", &plain, "orders")
            .allows(minted().rule("orders").claim("/lane", "normal").scopes(&["orders.read"])),
        // The earlier, wider rule wins even where a later one is more specific.
        case("vip billing", &vip, "billing")
            .allows(minted().rule("billing-wide").claim("/lane", "wide").scopes(&["billing.read"])),
        // No rule for the audience: default deny, naming the audience; descriptions
        // never echo token contents.
        case("no rule for payments", &vip, "payments").refuses(
            refusal(Status::Forbidden { error: "invalid_target", reason: "no_rule" })
                .needles(&["no rule allows this exchange", "\"payments\""])
                .lacks("alice"),
        ),
    ]))
    .await;
}

// ---------------------------------------------------------------------------
// Scopes, lifetime, claims, downstream tokens
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_is_requested_and_subject_and_rule_intersection_and_lifetime_is_capped() {
    let alice = tok("alice", "orders.read orders.admin profile email");
    let mut cases = vec![
        // requested {orders.read, orders.write, orders.admin, email}
        //   ∩ subject {orders.read, orders.admin, profile, email}
        //   ∩ rule {orders.read, orders.write, profile} = {orders.read}
        case("requested ∩ subject ∩ rule", &alice, "orders")
            .ctx("scope", "orders.read orders.write orders.admin email")
            .allows(minted().scopes(&["orders.read"]).md("scope", "orders.read").lifetime_at_most(60)),
        // Nothing requested: subject ∩ rule.
        case("subject ∩ rule", &alice, "orders").allows(minted().scopes(&["orders.read", "profile"])),
    ];
    // Empty intersection: invalid_scope naming the rule.
    for requested in ["orders.write", "orders.admin", "email", "nothing.at.all"] {
        cases.push(case(format!("requested {requested}"), &alice, "orders").ctx("scope", requested).forbids(
            "invalid_scope",
            "no_scope",
            &["\"narrow-orders\"", "grants none of the requested scopes"],
        ));
    }
    // Tokens live 5 minutes (the harness's `tokens: {lifetime: 5m}`); the rule caps them at 60 s.
    run(Scenario::new(
        r#"
- name: narrow-orders
  match: { audiences: [orders] }
  grant: { scopes: [orders.read, orders.write, profile], max_lifetime: 60s }
"#,
    )
    .cases(cases))
    .await;
}

/// One exchange, two minted tokens: checked against each other, so not a table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_and_added_claims_and_downstream_tokens() {
    let idp = MockIdp::start().await;
    let h = Harness::builder(&idp)
        .rules(
            r#"
- name: checkout
  match: { audiences: [orders] }
  grant:
    scopes: ["orders.*", "payments.*"]
    copy_claims: [email, groups, not_in_token]
    add_claims: { tenant: acme, plan: { level: 2 } }
    downstream_tokens:
      - { audience: payments, header: x-payments-token, scopes: ["payments.read"] }
"#,
        )
        .start()
        .await;
    let mut subject = idp.claims("alice", "orders.read payments.read payments.write");
    subject["email"] = json!("alice@example.com");
    subject["groups"] = json!(["customers", "beta"]);
    subject["secret"] = json!("do-not-copy");
    let resp = h.check_for(&idp.token(&subject), "orders").await;
    let (ok, c) = verified_mint(&h, &resp, "orders").await;
    assert_eq!(c["email"], "alice@example.com");
    assert_eq!(c["groups"], json!(["customers", "beta"]));
    assert_eq!(c["tenant"], "acme");
    assert_eq!(c["plan"], json!({"level": 2}));
    assert!(c.get("not_in_token").is_none() && c.get("secret").is_none(), "{c}");
    assert_eq!(scopes(&c), ["orders.read", "payments.read", "payments.write"]);

    // The downstream token: its own header (bare), its own audience, narrower scope.
    let mutation = ok.header("x-payments-token");
    let down = mutation.header.as_ref().unwrap().value.clone();
    assert!(!down.starts_with("Bearer "), "downstream headers carry the bare token");
    let (_, d) = h.verify_minted(&down, "payments").await;
    assert_eq!(d["iss"], STS_ISSUER);
    assert_eq!(d["sub"], "alice");
    assert_eq!(d["aud"], "payments");
    assert_eq!(scopes(&d), ["payments.read"]);
    assert_ne!(d["jti"], c["jti"], "each token has its own jti");
    assert!(d["exp"].as_i64().unwrap() <= c["exp"].as_i64().unwrap());
    // Each token is only for its own audience.
    assert!(!verifies_for(&h, &down, "orders").await, "the downstream token is not for orders");
    assert!(!verifies_for(&h, &ok.bearer(), "payments").await, "the main token is not for payments");
    assert!(!ok.headers_to_remove.contains(&"x-payments-token".to_owned()));
    h.shutdown().await;
}

// ---------------------------------------------------------------------------
// Actor tokens, spoofing, conflicts
// ---------------------------------------------------------------------------

const ANY_ACTOR_DELEGATES: &str = r#"
- name: delegate-orders
  match: { audiences: [orders] }
  grant: { outcome: delegation, scopes: ["orders.*"] }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_token_from_an_untrusted_issuer_is_401() {
    let alice = tok("alice", "orders.read");
    let svc_a = tok("svc-a", "");
    run(Scenario::new(ANY_ACTOR_DELEGATES)
        // `{other}` is a stranger: not in trusted_issuers.
        .idps(Idps::SecondUntrusted)
        .ext_authz(ACTOR_TOKENS)
        .cases([
            // The stranger's own token: an issuer stsgate does not trust.
            case("the stranger's token", &alice, "orders")
                .actor(&svc_a.clone().by(Other))
                .refuses(invalid_token(&["actor token:", "issuer is not trusted"])),
            // The stranger's key claiming the trusted issuer: the signature does not verify.
            case("the stranger's key, our issuer", &alice, "orders")
                .actor(&svc_a.clone().signed_by(Other))
                .refuses(invalid_token(&["actor token:", "signature"])),
            // Unsigned, and expired, actor tokens.
            case("an unsigned actor token", &alice, "orders")
                .actor(&svc_a.clone().unsigned())
                .refuses(invalid_token(&["actor token:"])),
            case("an expired actor token", &alice, "orders")
                .actor(&svc_a.clone().at("exp", -3600))
                .refuses(invalid_token(&["actor token:"])),
            // The same actor from the trusted IdP is accepted: act names sub and iss.
            case("the trusted IdP's actor", &alice, "orders")
                .actor(&svc_a)
                .allows(minted().act(json!({"sub": "svc-a", "iss": "{idp}"})).actor("svc-a")),
        ]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actor_identity_claimed_by_plain_headers_is_ignored() {
    let xfcc = format!("By=spiffe://cluster.local/ns/shop/sa/orders;Hash=abc123;Subject=\"\";URI={ADMIN_SA}");
    let act_json = json!({"sub": ADMIN_SA}).to_string();
    let spoof: Vec<(&str, String)> = vec![
        ("x-forwarded-client-cert", xfcc),
        ("x-spiffe-id", ADMIN_SA.into()),
        ("x-envoy-peer-principal", ADMIN_SA.into()),
        ("x-actor", ADMIN_SA.into()),
        ("act", act_json.clone()),
        ("x-act", act_json),
    ];
    let alice = tok("alice", "orders.read profile");
    // A delegated subject token plus a header claiming another act: the token's
    // own chain is carried unchanged, and the header counts for nothing.
    let prior = json!({"sub": WEB});
    let delegated = tok("alice", "orders.read profile").with(json!({"act": prior}));
    let forbidden = ["\"orders\""];
    run(Scenario::new(
        r#"
- name: admin-delegates
  match:
    audiences: [orders]
    actor: { spiffe: ["spiffe://cluster.local/ns/shop/sa/admin"] }
  grant: { outcome: delegation, scopes: ["orders.*"] }
- name: plain-apis
  match: { audiences: ["api://*"] }
  grant: { scopes: ["*"] }
"#,
    )
    .cases([
        // No source.principal: the delegation rule for admin has no actor to match.
        case("headers naming admin, no peer", &alice, "orders").headers(&spoof).forbids(
            "invalid_target",
            "no_rule",
            &forbidden,
        ),
        // Peer fields other than the principal are not an identity either.
        case("peer service and labels naming admin", &alice, "orders")
            .headers(&spoof)
            .source(Peer {
                service: ADMIN_SA.into(),
                labels: [("spiffe".to_owned(), ADMIN_SA.to_owned())].into_iter().collect(),
                ..Default::default()
            })
            .forbids("invalid_target", "no_rule", &forbidden),
        // An exchange with the same headers: no actor, no act.
        case("an exchange with the headers", &alice, "api://x")
            .headers(&spoof)
            .allows(minted().absent(&["act"]).no_actor().decision("exchange")),
        case("a delegated token, exchanged", &delegated, "api://x").headers(&spoof).allows(minted().act(prior.clone())),
        case("a delegated token, no peer", &delegated, "orders").headers(&spoof).forbids(
            "invalid_target",
            "no_rule",
            &forbidden,
        ),
        // The real peer still works, and the headers change nothing about it.
        case("a delegated token, the real peer", &delegated, "orders")
            .headers(&spoof)
            .peer(ADMIN_SA)
            .allows(minted().act(json!({"sub": ADMIN_SA, "act": prior})).actor(ADMIN_SA)),
    ]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_and_actor_token_must_name_the_same_party() {
    let alice = tok("alice", "orders.read");
    let orders_token = tok(ORDERS_SA, "");
    run(Scenario::new(ANY_ACTOR_DELEGATES).ext_authz(ACTOR_TOKENS).cases([
        case("token orders, peer web", &alice, "orders").actor(&orders_token).peer(WEB).forbids(
            "access_denied",
            "actor_conflict",
            &["actor identities disagree"],
        ),
        // The token actor, with its issuer.
        case("token web, peer web", &alice, "orders")
            .actor(&tok(WEB, ""))
            .peer(WEB)
            .allows(minted().sub("alice").act(json!({"sub": WEB, "iss": "{idp}"})).actor(WEB).removes("x-actor-token")),
        // A route that consults only the peer ignores the actor token (no conflict, no iss).
        case("a peer-only route", &alice, "orders")
            .ctx("actor", "peer")
            .actor(&orders_token)
            .peer(WEB)
            .allows(minted().act(json!({"sub": WEB}))),
    ]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonated_subject_does_not_inherit_the_operators_copied_claims() {
    let operator = tok("operator", "orders.read").with(json!({"groups": ["sre"], "email": "operator@corp.example"}));
    let console = tok("ops-console", "");
    run(Scenario::new(
        r#"
- name: support-impersonates-customers
  match:
    subject: { groups: [sre] }
    actor: { sub: [ops-console] }
  grant:
    outcome: impersonation
    scopes: ["orders.read"]
    impersonate_subjects: ["user-*"]
    copy_claims: [email, groups]
    add_claims: { via: support }
"#,
    )
    .ext_authz(ACTOR_TOKENS)
    .cases([
        // As user-123: the operator's email and groups describe the operator, not
        // user-123, and must not be minted into user-123's token; static claims
        // are still added.
        case("as user-123", &operator, "orders")
            .actor(&console)
            .requesting_subject("user-123")
            .allows(minted().sub("user-123").absent(&["groups", "email"]).claim("/via", "support")),
        // Without another subject the token is about the operator: claims are copied.
        case("as the operator", &operator, "orders")
            .actor(&console)
            .allows(minted().sub("operator").claim("/groups", json!(["sre"])).claim("/email", "operator@corp.example")),
    ]))
    .await;
}

// ---------------------------------------------------------------------------
// Two IdPs: actor tokens are believed only from the issuers a rule admits,
// and minted tokens say whose subject they carry (security review, issue #9)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_token_from_another_idp_cannot_impersonate_or_satisfy_may_act() {
    let operator = tok("operator", "orders.read").with(json!({"groups": ["sre"]}));
    let console = |from: Who| {
        let client_id = if from == Idp { "console@{idp}" } else { "console@{other}" };
        tok("support-console", "").by(from).with(json!({"client_id": client_id}))
    };
    let alice = tok("alice", "payments.read").with(json!({"may_act": {"sub": "svc-pay"}}));
    let pay = |from: Who| {
        let client_id = if from == Idp { "pay@{idp}" } else { "pay@{other}" };
        tok("svc-pay", "").by(from).with(json!({"client_id": client_id}))
    };
    let bob = tok("bob", "orders.read").by(Other).with(json!({"client_id": "bob-app"}));
    run(Scenario::new(
        r#"
- name: support-impersonates-customers
  match:
    issuers: ["{idp}"]
    audiences: [orders]
    actor: { sub: [support-console] }
  grant:
    outcome: impersonation
    scopes: ["orders.read"]
    impersonate_subjects: ["user-*"]
    audit_claim: impersonated_by
- name: payments-delegates
  match:
    audiences: [payments]
    actor: { issuers: ["{idp}", "{other}"] }
  grant: { outcome: delegation, scopes: ["payments.*"] }
"#,
    )
    .idps(Idps::TwoTrusted)
    .ext_authz(ACTOR_TOKENS)
    .cases([
        // The other IdP's support-console is not ours: no impersonation.
        case("the other IdP's console", &operator, "orders")
            .actor(&console(Other))
            .requesting_subject("user-123")
            .forbids("access_denied", "impersonation_refused", &["impersonating another subject"]),
        // Ours is: the audit claim and sub_id name the issuers, client_id is the console's.
        case("our console", &operator, "orders").actor(&console(Idp)).requesting_subject("user-123").allows(
            minted()
                .sub("user-123")
                .claim("/impersonated_by", json!({"sub": "support-console", "iss": "{idp}"}))
                .claim("/sub_id", json!({"format": "iss_sub", "iss": "{idp}", "sub": "user-123"}))
                .claim("/client_id", "console@{idp}")
                .decision("impersonation"),
        ),
        // may_act without iss names a party of the subject token's own IdP, even
        // where the rule admits actor tokens from both.
        case("may_act, the other IdP's svc-pay", &alice, "payments").actor(&pay(Other)).forbids(
            "access_denied",
            "may_act",
            &["may_act does not admit this actor"],
        ),
        case("may_act, our svc-pay", &alice, "payments")
            .actor(&pay(Idp))
            .allows(minted().act(json!({"sub": "svc-pay", "iss": "{idp}"})).claim("/client_id", "pay@{idp}")),
        // An actor token from an issuer the rule does not admit contributes
        // nothing: not its iss, not its client_id; the request is refused.
        case("the other IdP's bob with our console", &bob, "orders").actor(&console(Idp)).forbids(
            "invalid_target",
            "no_rule",
            &["\"orders\""],
        ),
    ]))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_sub_from_two_idps_is_told_apart_by_sub_id() {
    let cases = [(Idp, "{idp}"), (Other, "{other}")].map(|(from, iss)| {
        let want = json!({"format": "iss_sub", "iss": iss, "sub": "admin"});
        case(format!("admin of {from:?}"), &tok("admin", "orders.read payments.read").by(from), "orders").allows(
            minted()
                .sub("admin")
                .claim("/sub_id", want.clone())
                // stsgate's own downstream tokens say it too.
                .downstream("x-payments-token", "payments", vec![("/sub_id", want)]),
        )
    });
    run(Scenario::new(
        r#"
- name: any-idp
  match: { audiences: [orders] }
  grant:
    scopes: ["orders.*", "payments.*"]
    downstream_tokens:
      - { audience: payments, header: x-payments-token, scopes: ["payments.*"] }
"#,
    )
    .idps(Idps::TwoTrusted)
    .cases(cases))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actor_token_expiring_inside_the_leeway_is_named_and_nothing_is_minted() {
    let operator = tok("operator", "orders.read").with(json!({"groups": ["sre"]}));
    // Expired 10 seconds ago: valid inside the leeway, but nothing left to hand on.
    let console = tok("ops-console", "").at("exp", -10).at("iat", -100).at("nbf", -100);
    run(Scenario::new(SUPPORT_IMPERSONATES).issuer_options(&["leeway: 60s"]).ext_authz(ACTOR_TOKENS).cases([case(
        "expired 10 s ago",
        &operator,
        "orders",
    )
    .actor(&console)
    .requesting_subject("user-123")
    .refuses(invalid_token(&["actor token: token has expired"]).exactly("actor token: token has expired"))]))
    .await;
}
