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

// ---------------------------------------------------------------------------
// Discovery documents and JWKS from an IdP that answers anything
// ---------------------------------------------------------------------------

/// What the fake IdP answers at its discovery and JWKS paths.
#[derive(Default)]
struct Served {
    discovery: Vec<u8>,
    jwks: Vec<u8>,
}

/// A bare HTTP server answering 200 with whatever `served` holds.
async fn serve_anything(served: std::sync::Arc<std::sync::Mutex<Served>>) -> String {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (d, j) = (served.clone(), served);
    let app = axum::Router::new()
        .route("/.well-known/openid-configuration", get(move || async move { d.lock().unwrap().discovery.clone() }))
        .route("/jwks.json", get(move || async move { j.lock().unwrap().jwks.clone() }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

/// A discovery document: valid (naming the right issuer and our JWKS),
/// naming another issuer, with fields of the wrong type or missing, any
/// JSON, or any bytes.
fn discovery_doc(base: String) -> impl Strategy<Value = (Vec<u8>, bool)> {
    let valid = move |issuer: String, jwks_uri: String| {
        serde_json::json!({
            "issuer": issuer,
            "jwks_uri": jwks_uri,
            "authorization_endpoint": "https://idp.test/authorize",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        })
    };
    let (b1, b2) = (base.clone(), base.clone());
    prop_oneof![
        3 => Just(()).prop_map(move |_| (valid(b1.clone(), format!("{b1}/jwks.json")).to_string().into_bytes(), true)),
        1 => (".{0,30}", any::<bool>()).prop_map(move |(other, uri)| {
            let issuer = if uri { format!("{b2}/") } else { other };
            (valid(issuer, format!("{b2}/jwks.json")).to_string().into_bytes(), false)
        }),
        1 => (json_value(), proptest::sample::select(&["issuer", "jwks_uri"][..]))
            .prop_map(move |(v, field)| {
                let mut doc = valid(base.clone(), format!("{base}/jwks.json"));
                doc[field] = v;
                (doc.to_string().into_bytes(), false)
            }),
        1 => json_value().prop_map(|v| (v.to_string().into_bytes(), false)),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| (b, false)),
    ]
}

/// Any JSON value a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,20}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JWKS: the IdP's key (maybe among junk), without it, any JSON, any bytes.
fn jwks_doc_bytes(key_jwk: serde_json::Value) -> impl Strategy<Value = (Vec<u8>, bool)> {
    let (k1, k2) = (key_jwk.clone(), key_jwk);
    prop_oneof![
        3 => Just(()).prop_map(move |_| (serde_json::json!({ "keys": [k1.clone()] }).to_string().into_bytes(), true)),
        1 => proptest::collection::vec(json_value(), 0..4).prop_map(move |mut junk| {
            junk.push(k2.clone());
            (serde_json::json!({ "keys": junk }).to_string().into_bytes(), true)
        }),
        1 => proptest::collection::vec(json_value(), 0..4)
            .prop_map(|junk| (serde_json::json!({ "keys": junk }).to_string().into_bytes(), false)),
        1 => json_value().prop_map(|v| (v.to_string().into_bytes(), false)),
        1 => proptest::collection::vec(any::<u8>(), 0..300).prop_map(|b| (b, false)),
    ]
}

/// Whatever an IdP answers at its discovery and JWKS URLs, a refresh returns
/// (never panics), and the IdP's tokens validate exactly when both documents
/// were good and the JWKS held the key: a bad discovery document or one that
/// names another issuer never installs keys.
#[test]
fn discovery_and_jwks_documents_never_panic_and_install_keys_only_when_valid() {
    use std::sync::{Arc, Mutex};
    use stsgate::trust::issuer::{Issuers, http_client};
    use stsgate::trust::validator::Validator;

    let rt = runtime();
    init_logging();
    let served = Arc::new(Mutex::new(Served::default()));
    let base = rt.block_on(serve_anything(served.clone()));
    let key = IdpKey::generate(KeyKind::P256, "k1");
    let yaml = format!(
        "issuer: https://sts.test\nsigning:\n  keys: [{{ kid: a, alg: ES256, ephemeral: true }}]\n\
         trusted_issuers:\n  - {{ issuer: \"{base}\", discovery: true, algorithms: [ES256] }}\n\
         rules:\n  - {{ name: r, grant: {{ scopes: [\"*\"] }} }}\n"
    );
    let cfg = stsgate::config::Config::from_yaml_validated(&yaml).expect("config");
    let now = now();
    let token = key.token(&serde_json::json!({ "iss": base, "sub": "alice", "exp": now + 600, "iat": now }));
    let strategy = (discovery_doc(base.clone()), jwks_doc_bytes(key.jwk.clone()));
    runner()
        .run(&strategy, |((discovery, good_discovery), (jwks, has_key))| {
            {
                let mut s = served.lock().unwrap();
                s.discovery = discovery.clone();
                s.jwks = jwks.clone();
            }
            // A fresh issuer each time: nothing from an earlier case.
            let issuers = Arc::new(Issuers::new(&cfg, http_client().unwrap()));
            let refreshed = rt.block_on(issuers.get(&base).unwrap().refresh());
            let validator = Validator::new(issuers, 16384);
            let validated = rt.block_on(validator.validate_at(&token, now));
            if !good_discovery {
                prop_assert!(
                    refreshed.is_err(),
                    "a bad discovery document was accepted: {}",
                    String::from_utf8_lossy(&discovery)
                );
                prop_assert!(validated.is_err(), "a token validated without a good discovery document");
            }
            if good_discovery && has_key {
                prop_assert!(refreshed.is_ok(), "{:?}", refreshed);
                prop_assert!(validated.is_ok(), "{:?} with JWKS {}", validated, String::from_utf8_lossy(&jwks));
            }
            if !has_key {
                prop_assert!(
                    validated.is_err(),
                    "validated without the key in the JWKS: {}",
                    String::from_utf8_lossy(&jwks)
                );
            }
            Ok(())
        })
        .unwrap();
}

// ---------------------------------------------------------------------------
// Odd CheckRequests: any header names, huge values, many headers
// ---------------------------------------------------------------------------

/// Headers with any names (case, punctuation, empty, non-ASCII), values up
/// to 64 KiB, hundreds of them, and huge context extensions: always a
/// CheckResponse, and OK only when some header carries the valid token whole.
#[test]
fn odd_and_huge_check_request_fields_never_allow_without_the_token() {
    let rt = runtime();
    let (idp, h, token) = rt.block_on(started());
    let name = prop_oneof![
        proptest::sample::select(
            &["authorization", "Authorization", "AUTHORIZATION", " authorization", "x-actor-token"][..]
        )
        .prop_map(str::to_owned),
        ".{0,16}",
    ];
    let value = prop_oneof![
        2 => piece().prop_map(Some),
        1 => (0usize..65536, proptest::sample::select(&["A", "eyJ", ".", " ", "\u{0}", "é", "Bearer "][..]))
            .prop_map(|(n, unit)| Some(Piece::Text(unit.repeat(n / unit.len().max(1))))),
    ];
    let strategy = (
        proptest::collection::vec((name, any::<bool>(), value), 0..8),
        0usize..400,
        proptest::collection::vec((".{0,12}", 0usize..100_000), 0..3),
    );
    runner()
        .run(&strategy, |(headers, filler, contexts)| {
            let mut req = request_to("api.test", "/").id("odd");
            let mut carries_valid = false;
            for (name, bearer, p) in &headers {
                let (v, _) = p.as_ref().map(|p| p.render(&token)).unwrap_or_default();
                let v = if *bearer { format!("Bearer {v}") } else { v };
                carries_valid |= v.contains(&token);
                req = req.header(name.clone(), v);
            }
            for i in 0..filler {
                req = req.header(format!("x-filler-{i}"), "f".repeat(i % 97));
            }
            for (key, n) in &contexts {
                req = req.context(key.clone(), "a".repeat(*n));
            }
            let resp = rt.block_on(h.check_request(CheckRequestBuilder::build(req)));
            if rpc_code(&resp) == RPC_OK {
                prop_assert!(carries_valid, "OK without the valid token");
            } else {
                let d = denial(&resp);
                prop_assert!([400, 401, 403, 503].contains(&d.http_status), "status {}", d.http_status);
                // Descriptions are short and name the check, never the input.
                prop_assert!(d.description().len() <= 300, "description of {} bytes", d.description().len());
            }
            Ok(())
        })
        .unwrap();
    rt.block_on(h.shutdown());
    drop(idp);
}

// ---------------------------------------------------------------------------
// The token endpoint's errors are precise
// ---------------------------------------------------------------------------

/// Codes the token endpoint answers with, and the status each comes with.
fn status_of(code: &str) -> &'static [u16] {
    match code {
        "invalid_request" => &[400, 405, 413],
        "unsupported_grant_type" | "invalid_target" | "invalid_scope" | "invalid_grant" => &[400],
        "invalid_client" => &[401, 429],
        "access_denied" => &[403],
        "temporarily_unavailable" => &[503],
        _ => &[],
    }
}

/// Arbitrary bytes, structure-aware forms and client credentials (Basic
/// headers of any shape, client assertions) at a token endpoint with
/// clients: every refusal is RFC 6749 §5.2 JSON with a known code, the status
/// that code comes with, a short description that does not echo the
/// credentials, and `Cache-Control: no-store`.
#[test]
fn token_endpoint_errors_are_precise() {
    let rt = runtime();
    const SECRET: &str = "prop-secret-9c2e7a1f5b3d";
    let (idp, h, token, _dir) = rt.block_on(async {
        let idp = MockIdp::start().await;
        let dir = TempDir::new("properties-clients");
        let file = dir.write("secret", SECRET);
        let clients = format!(
            "clients:\n  - {{ client_id: app, auth: client_secret_basic, secret_file: \"{}\" }}\n  \
             - {{ client_id: spa, auth: none }}\n",
            file.display()
        );
        let h = Harness::builder(&idp).edit(move |y| format!("{y}{clients}")).start().await;
        let token = idp.token(&idp.claims("alice", "orders.read profile"));
        (idp, h, token, dir)
    });
    let basic = prop_oneof![
        Just(None),
        Just(Some(format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("app:{SECRET}"))
        ))),
        (".{0,20}", ".{0,20}").prop_map(|(id, secret)| Some(format!(
            "Basic {}",
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{id}:{secret}"))
        ))),
        "(Basic |basic |Bearer |)[ -~]{0,60}".prop_map(Some),
    ];
    let body = prop_oneof![
        2 => (form_body(), any::<bool>()).prop_map(|(pairs, base)| (pairs, base, None)),
        1 => proptest::collection::vec(any::<u8>(), 0..2048).prop_map(|raw| (vec![], false, Some(raw))),
    ];
    runner()
        .run(&(body, basic), |((generated, base, raw), basic)| {
            let body = match raw {
                Some(raw) => raw,
                None => {
                    let mut s = form_urlencoded::Serializer::new(String::new());
                    if base {
                        for (k, v) in [("grant_type", GRANT), ("subject_token_type", AT), ("audience", "api://x")] {
                            s.append_pair(k, v);
                        }
                        s.append_pair("subject_token", &token);
                    }
                    for (k, p) in &generated {
                        s.append_pair(k, &p.render(&token).0);
                    }
                    s.finish().into_bytes()
                }
            };
            let resp = rt.block_on(async {
                let mut req = h
                    .http
                    .post(h.url("/token"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body.clone());
                if let Some(b) = &basic {
                    req = req.header("authorization", b.as_str());
                }
                req.send().await
            });
            let resp = resp.map_err(|e| TestCaseError::fail(format!("no answer: {e}")))?;
            let status = resp.status().as_u16();
            let cache = resp.headers().get("cache-control").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let text = rt.block_on(resp.text()).unwrap_or_default();
            prop_assert_eq!(cache.as_deref(), Some("no-store"), "{}", text);
            let json: serde_json::Value = serde_json::from_str(&text)
                .map_err(|_| TestCaseError::fail(format!("status {status}: not JSON: {text}")))?;
            if status == 200 {
                prop_assert!(json["access_token"].is_string());
                return Ok(());
            }
            let code = json["error"].as_str().unwrap_or("");
            prop_assert!(status_of(code).contains(&status), "status {} with error {:?}: {}", status, code, text);
            let description = json["error_description"].as_str().unwrap_or("");
            prop_assert!(!description.is_empty() && description.len() <= 300, "description: {:?}", description);
            prop_assert!(!text.contains(SECRET), "the answer echoes the client secret: {}", text);
            prop_assert!(!text.contains(&token[token.len() - 40..]), "the answer echoes the token: {}", text);
            prop_assert!(json.get("access_token").is_none());
            Ok(())
        })
        .unwrap();
    rt.block_on(h.shutdown());
    drop(idp);
}
