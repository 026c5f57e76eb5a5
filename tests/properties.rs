//! Property tests through a real stsgate (issue #13, part 2): arbitrary
//! CheckRequest fields (headers, context extensions, peer) and arbitrary token
//! endpoint bodies always get an answer, never a gRPC error or a 500, and never
//! an OK or a token without a valid subject token.
//!
//! These go through a server, so CI runs 48 cases each (`PROPTEST_CASES`
//! overrides it); the pure properties are in `src/rules/properties.rs`.

mod support;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use stsgate::testkit::CheckRequestBuilder;
use support::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(48)
}

fn runner() -> TestRunner {
    TestRunner::new(Config { cases: cases(), failure_persistence: None, ..Config::default() })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// One header or context value: often the valid token (whole, cut short,
/// with a flipped character), sometimes anything.
#[derive(Debug, Clone)]
enum Piece {
    Valid,
    ValidCut(usize),
    ValidFlipped(usize),
    Text(String),
}

fn piece() -> impl Strategy<Value = Piece> {
    prop_oneof![
        2 => Just(Piece::Valid),
        1 => any::<usize>().prop_map(Piece::ValidCut),
        1 => any::<usize>().prop_map(Piece::ValidFlipped),
        3 => prop_oneof![".{0,40}", "[ -~]{0,200}", "(Bearer |bearer |Basic |)[A-Za-z0-9_.=-]{0,120}"].prop_map(Piece::Text),
    ]
}

impl Piece {
    /// The text, and whether it is the valid token unchanged.
    fn render(&self, valid: &str) -> (String, bool) {
        match self {
            Piece::Valid => (valid.to_owned(), true),
            Piece::ValidCut(n) => {
                let n = n % valid.len();
                (valid[..n].to_owned(), false)
            }
            Piece::ValidFlipped(n) => {
                let mut b = valid.as_bytes().to_vec();
                let i = n % b.len();
                b[i] = if b[i] == b'A' { b'B' } else { b'A' };
                let changed = b != valid.as_bytes();
                (String::from_utf8(b).unwrap(), !changed)
            }
            Piece::Text(t) => (t.clone(), false),
        }
    }
}

const HEADER_NAMES: &[&str] = &[
    "authorization",
    "x-actor-token",
    "x-requested-subject",
    "x-forwarded-client-cert",
    "x-sts-token",
    "cookie",
    "x-junk",
];
const CONTEXT_KEYS: &[&str] = &["audience", "scope", "actor", "requested_subject", "junk"];

#[derive(Debug, Clone)]
struct Check {
    headers: Vec<(String, bool, Piece)>,
    contexts: Vec<(String, Piece)>,
    peer: Option<String>,
    /// Start from an allowed request (valid token, audience `api://x`).
    base: bool,
}

fn check() -> impl Strategy<Value = Check> {
    (
        proptest::collection::vec(
            (proptest::sample::select(HEADER_NAMES).prop_map(str::to_owned), any::<bool>(), piece()),
            0..4,
        ),
        proptest::collection::vec(
            (prop_oneof![proptest::sample::select(CONTEXT_KEYS).prop_map(str::to_owned), "[a-z_]{0,10}"], piece()),
            0..4,
        ),
        proptest::option::of(prop_oneof![Just("spiffe://cluster.local/ns/shop/sa/web".to_owned()), ".{0,30}"]),
        any::<bool>(),
    )
        .prop_map(|(headers, contexts, peer, base)| Check { headers, contexts, peer, base })
}

/// A mock IdP, stsgate with the default harness, and a valid subject token.
async fn started() -> (MockIdp, Harness, String) {
    let idp = MockIdp::start().await;
    let h = Harness::start(&idp).await;
    let token = idp.token(&idp.claims("alice", "orders.read profile"));
    (idp, h, token)
}

/// Any CheckRequest is answered with a CheckResponse (`check_request` panics
/// on a gRPC error); OK only when the request carried the valid token, whole.
#[test]
fn check_requests_always_get_a_check_response() {
    let rt = runtime();
    let (idp, h, token) = rt.block_on(started());
    runner()
        .run(&check(), |c| {
            let mut req = request_to("api.test", "/").id("prop");
            let mut carries_valid = false;
            if c.base {
                // A request that would be allowed, before the generated fields.
                req = req.bearer(&token).context("audience", "api://x");
                carries_valid = true;
            }
            for (name, bearer, p) in &c.headers {
                let (value, valid) = p.render(&token);
                let value = if *bearer && name == "authorization" { format!("Bearer {value}") } else { value };
                // A later value for the same header replaces the earlier one.
                if name == "authorization" {
                    carries_valid = valid && *bearer;
                }
                req = req.header(name.clone(), value);
            }
            for (key, p) in &c.contexts {
                req = req.context(key.clone(), p.render(&token).0);
            }
            if let Some(peer) = &c.peer {
                req = req.peer(peer.clone());
            }
            let resp = rt.block_on(h.check_request(CheckRequestBuilder::build(req)));
            let code = rpc_code(&resp);
            if code == RPC_OK {
                prop_assert!(carries_valid, "OK without the valid token: {:?}", c);
            } else {
                prop_assert!(
                    [RPC_INVALID_ARGUMENT, RPC_PERMISSION_DENIED, RPC_UNAVAILABLE, RPC_UNAUTHENTICATED].contains(&code),
                    "code {}",
                    code
                );
                let d = denial(&resp);
                prop_assert!([400, 401, 403, 503].contains(&d.http_status), "status {}", d.http_status);
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(h.shutdown());
    drop(idp);
}

const GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const AT: &str = "urn:ietf:params:oauth:token-type:access_token";

/// A form body: real parameter names and values mixed with arbitrary bytes,
/// broken percent-escapes, repeated parameters.
fn form_body() -> impl Strategy<Value = Vec<(String, Piece)>> {
    let name = prop_oneof![
        proptest::sample::select(
            &[
                "grant_type",
                "subject_token",
                "subject_token_type",
                "audience",
                "resource",
                "scope",
                "actor_token",
                "actor_token_type",
                "requested_token_type",
                "requested_subject",
                "client_id",
                "client_secret"
            ][..]
        )
        .prop_map(str::to_owned),
        ".{0,12}",
    ];
    let value = prop_oneof![
        3 => piece(),
        1 => proptest::sample::select(&[GRANT, AT, "orders", "api://x", "orders.read", "%zz", "%", "+", "&&", "=="][..])
            .prop_map(|s| Piece::Text(s.to_owned())),
    ];
    proptest::collection::vec((name, value), 0..8)
}

/// The token endpoint answers any body with a status below 500 (or 503), and
/// hands out a token only for a form that carried the valid subject token.
#[test]
fn token_endpoint_answers_any_form() {
    let rt = runtime();
    let (idp, h, token) = rt.block_on(started());
    let content_type = proptest::sample::select(
        &[
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=utf-8",
            "application/json",
            "text/plain",
            "",
        ][..],
    );
    let strategy =
        (form_body(), content_type, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64), any::<bool>());
    runner()
        .run(&strategy, |(generated, ct, raw, junk, base)| {
            let mut body = Vec::new();
            let mut carries_valid = false;
            // Half the forms start as a valid exchange, then get the generated pairs.
            let mut pairs: Vec<(String, Piece)> = Vec::new();
            if base {
                for (k, v) in [("grant_type", GRANT), ("subject_token_type", AT), ("audience", "api://x")] {
                    pairs.push((k.to_owned(), Piece::Text(v.to_owned())));
                }
                pairs.push(("subject_token".to_owned(), Piece::Valid));
            }
            pairs.extend(generated);
            for (i, (k, p)) in pairs.iter().enumerate() {
                let (v, valid) = p.render(&token);
                carries_valid |= valid && k == "subject_token";
                if i > 0 {
                    body.push(b'&');
                }
                if raw {
                    body.extend_from_slice(format!("{k}={v}").as_bytes());
                } else {
                    body.extend_from_slice(
                        form_urlencoded::Serializer::new(String::new()).append_pair(k, &v).finish().as_bytes(),
                    );
                }
            }
            if raw {
                body.extend_from_slice(&junk);
            }
            let resp = rt.block_on(async {
                let mut req = h.http.post(h.url("/token")).body(body.clone());
                if !ct.is_empty() {
                    req = req.header("content-type", ct);
                }
                req.send().await
            });
            let resp = resp.map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
            let status = resp.status().as_u16();
            let text = rt.block_on(resp.text()).unwrap_or_default();
            prop_assert!(
                status < 500 || status == 503,
                "status {} for {:?}: {}",
                status,
                String::from_utf8_lossy(&body),
                text
            );
            let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
            let has_token = json.as_ref().is_some_and(|j| j.get("access_token").is_some());
            if status == 200 {
                prop_assert!(carries_valid, "a token for a form without the valid subject token: {:?}", pairs);
                prop_assert!(has_token, "{}", text);
            } else {
                prop_assert!(!has_token, "{}", text);
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(h.shutdown());
    drop(idp);
}

const LIFETIME_RULES: &str = r#"
- name: capped
  match: { audiences: [orders] }
  grant: { scopes: ["*"], max_lifetime: 2m }
- name: uncapped
  match: { audiences: ["api://*"] }
  grant: { scopes: ["*"] }
- name: delegate
  match: { audiences: [deleg] }
  grant: { outcome: delegation, scopes: ["*"], max_lifetime: 10m }
"#;

/// A minted token never outlives the subject token, the actor token, the
/// rule's `max_lifetime` or `tokens.lifetime` (5m here), whatever their `exp`.
#[test]
fn minted_tokens_never_outlive_their_bounds() {
    let rt = runtime();
    let (idp, h) = rt.block_on(async {
        let idp = MockIdp::start().await;
        let h = Harness::builder(&idp)
            .rules(LIFETIME_RULES)
            .ext_authz("actor: { mode: any, token_header: x-actor-token }")
            .start()
            .await;
        (idp, h)
    });
    let strategy = (
        proptest::sample::select(&[("orders", Some(120)), ("api://x", None), ("deleg", Some(600))][..]),
        1i64..3600,
        1i64..3600,
    );
    runner()
        .run(&strategy, |((audience, cap), subject_ttl, actor_ttl)| {
            let mut subject = idp.claims("alice", "orders.read");
            let subject_exp = subject["iat"].as_i64().unwrap() + subject_ttl;
            subject["exp"] = serde_json::json!(subject_exp);
            let mut actor = idp.claims("svc", "");
            let actor_exp = actor["iat"].as_i64().unwrap() + actor_ttl;
            actor["exp"] = serde_json::json!(actor_exp);
            let bearer = format!("Bearer {}", idp.token(&subject));
            let actor_token = idp.token(&actor);
            let mut headers = vec![("authorization", bearer.as_str())];
            if audience == "deleg" {
                headers.push(("x-actor-token", actor_token.as_str()));
            }
            let resp = rt.block_on(h.check(&headers, &[("audience", audience)], "a.test", "/"));
            prop_assert_eq!(rpc_code(&resp), RPC_OK, "{:?}", resp);
            let (_, c) = rt.block_on(h.verify_minted(&allowed(&resp).bearer(), audience));
            let (iat, exp) = (c["iat"].as_i64().unwrap(), c["exp"].as_i64().unwrap());
            prop_assert!(exp <= subject_exp, "outlives the subject token: {} > {}", exp, subject_exp);
            if audience == "deleg" {
                prop_assert!(exp <= actor_exp, "outlives the actor token: {} > {}", exp, actor_exp);
            }
            if let Some(cap) = cap {
                prop_assert!(exp - iat <= cap, "outlives the rule cap: {} > {}", exp - iat, cap);
            }
            prop_assert!(exp - iat <= 300, "outlives tokens.lifetime: {}", exp - iat);
            Ok(())
        })
        .unwrap();
    rt.block_on(h.shutdown());
    drop(idp);
}
