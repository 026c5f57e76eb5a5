//! Parsers below the rules never panic and stay bounded, on arbitrary bytes
//! and on structure-aware inputs: the token validator (JOSE header, claims
//! visitor, signature, time claims), `jwks::parse` and `Config::from_yaml_str`.

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::config::Config;
use crate::trust::claims::Claims;
use crate::trust::issuer::{Issuers, http_client};
use crate::trust::jwks;
use crate::trust::validator::{TokenError, Validator, json_shape};

const TRUSTED: &str = "https://idp.test";
const NOW: i64 = 1_700_000_000;
const MAX_BYTES: usize = 16384;

/// A validator trusting one IdP whose keys come from a JWKS file (no network),
/// the signer of that IdP, and a signer nobody trusts under the same kid.
struct Fixture {
    rt: tokio::runtime::Runtime,
    validator: Validator,
    idp: Key,
    rogue: Key,
}

/// An ES256 key that signs whatever header it is given (stsgate's `Signer`
/// writes its own header).
struct Key(aws_lc_rs::signature::EcdsaKeyPair);

impl Key {
    fn generate() -> Key {
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        Key(EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap())
    }
    fn jwk(&self, kid: &str) -> Value {
        use aws_lc_rs::signature::KeyPair;
        let point = self.0.public_key().as_ref();
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&point[1..33]), "y": b64(&point[33..65])})
    }
    /// `header.payload.signature` over the given JSON texts.
    fn sign(&self, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self.0.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", b64(sig.as_ref()))
    }
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        crate::install_crypto_provider();
        let idp = Key::generate();
        let rogue = Key::generate();
        let dir = std::env::temp_dir().join(format!("stsgate-properties-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("jwks.json");
        std::fs::write(&file, json!({ "keys": [idp.jwk("k1")] }).to_string()).unwrap();
        let yaml = format!(
            "issuer: https://sts.test\nsigning:\n  keys: [{{ kid: a, ephemeral: true }}]\n\
             trusted_issuers:\n  - {{ issuer: {TRUSTED}, jwks_file: {:?}, algorithms: [ES256, RS256, EdDSA] }}\n",
            file.display().to_string()
        );
        let cfg = Config::from_yaml_str(&yaml).unwrap();
        let issuers = Arc::new(Issuers::new(&cfg, http_client().unwrap()));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(issuers.get(TRUSTED).unwrap().refresh()).unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        Fixture { rt, validator: Validator::new(issuers, MAX_BYTES), idp, rogue }
    })
}

fn validate(token: &str) -> Result<crate::trust::validator::Validated, TokenError> {
    let f = fixture();
    f.rt.block_on(f.validator.validate_at(token, NOW))
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Arbitrary JSON, small but nested.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,12}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            proptest::collection::btree_map(".{0,8}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A claim value: often of the right type, sometimes anything.
fn claim(right: impl Strategy<Value = Value> + 'static) -> impl Strategy<Value = Option<Value>> {
    proptest::option::weighted(0.8, prop_oneof![3 => right.boxed(), 1 => json_value().boxed()])
}

/// A claims object: half of them plausible (trusted `iss`, a `sub`, a live
/// `exp`) with generated other members, half generated member by member.
fn claims() -> impl Strategy<Value = Value> {
    let plausible = (
        "[a-z]{1,6}",
        NOW - 400..NOW + 400,
        proptest::option::of("[a-z. ]{0,20}"),
        proptest::option::of(json_value()),
        proptest::collection::btree_map("x_[a-z_]{0,8}", json_value(), 0..4),
    )
        .prop_map(|(sub, exp, scope, act, other)| {
            let mut c: serde_json::Map<String, Value> = other.into_iter().collect();
            c.insert("iss".into(), json!(TRUSTED));
            c.insert("sub".into(), json!(sub));
            c.insert("exp".into(), json!(exp));
            if let Some(scope) = scope {
                c.insert("scope".into(), json!(scope));
            }
            if let Some(act) = act {
                c.insert("act".into(), act);
            }
            Value::Object(c)
        });
    prop_oneof![plausible, any_claims()]
}

fn any_claims() -> impl Strategy<Value = Value> {
    let date = prop_oneof![
        (NOW - 400..NOW + 400).prop_map(|n| json!(n)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        Just(json!(u64::MAX)),
        Just(json!("1700000000")),
    ];
    (
        (
            claim(prop_oneof![Just(json!(TRUSTED)), Just(json!("https://evil.test"))]),
            claim("[a-z]{0,6}".prop_map(Value::String)),
            claim(prop_oneof![Just(json!("orders")), Just(json!(["orders", "x"]))]),
            claim(date.clone()),
            claim(date.clone()),
            claim(date),
        ),
        (
            claim("[a-z. ]{0,20}".prop_map(Value::String)),
            claim(json_value()),
            claim(json_value()),
            proptest::collection::btree_map("[a-z_]{1,8}", json_value(), 0..4),
        ),
    )
        .prop_map(|((iss, sub, aud, exp, nbf, iat), (scope, act, may_act, other))| {
            let mut o: serde_json::Map<String, Value> = other.into_iter().collect();
            for (k, v) in [("iss", iss), ("sub", sub), ("aud", aud), ("exp", exp), ("nbf", nbf), ("iat", iat)]
                .into_iter()
                .chain([("scope", scope), ("act", act), ("may_act", may_act)])
            {
                if let Some(v) = v {
                    o.insert(k.into(), v);
                }
            }
            Value::Object(o)
        })
}

/// A JOSE header that often looks like a real one, and sometimes carries the
/// members RFC 8725 says to refuse.
fn header() -> impl Strategy<Value = Value> {
    let plausible = (
        proptest::option::of(Just("k1")),
        proptest::option::of(proptest::sample::select(&["JWT", "at+jwt"][..])),
        proptest::option::weighted(
            0.3,
            (proptest::sample::select(&["jku", "x5u", "jwk", "x5c", "crit", "enc"][..]), json_value()),
        ),
    )
        .prop_map(|(kid, typ, refused)| {
            let mut h = json!({ "alg": "ES256" });
            if let Some((name, value)) = refused {
                h[name] = value;
            }
            if let Some(kid) = kid {
                h["kid"] = json!(kid);
            }
            if let Some(typ) = typ {
                h["typ"] = json!(typ);
            }
            h
        });
    prop_oneof![plausible, any_header()]
}

fn any_header() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(&["ES256", "RS256", "EdDSA", "none", "NONE", "HS256", "PS256", "", "es256"][..]),
        proptest::option::of(proptest::sample::select(&["k1", "k2", ""][..])),
        proptest::option::of(proptest::sample::select(
            &["JWT", "at+jwt", "application/at+jwt", "logout+jwt", "dpop+jwt"][..],
        )),
        proptest::option::of(proptest::sample::select(&["jku", "x5u", "jwk", "x5c", "crit", "enc", "zip", "b64"][..])),
        json_value(),
    )
        .prop_map(|(alg, kid, typ, extra, value)| {
            let mut h = json!({ "alg": alg });
            if let Some(kid) = kid {
                h["kid"] = json!(kid);
            }
            if let Some(typ) = typ {
                h["typ"] = json!(typ);
            }
            if let Some(extra) = extra {
                h[extra] = value;
            }
            h
        })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    /// Arbitrary text is refused, never a panic.
    #[test]
    fn validator_refuses_arbitrary_text(token in prop_oneof![".{0,300}", "[A-Za-z0-9_.=+/-]{0,400}"]) {
        prop_assert!(validate(&token).is_err());
    }

    /// Arbitrary base64url parts (any bytes, any JSON) are refused.
    #[test]
    fn validator_refuses_arbitrary_parts(
        h in prop_oneof![proptest::collection::vec(any::<u8>(), 0..64), header().prop_map(|h| h.to_string().into_bytes())],
        p in prop_oneof![proptest::collection::vec(any::<u8>(), 0..128), json_value().prop_map(|v| v.to_string().into_bytes()),
                         claims().prop_map(|c| c.to_string().into_bytes())],
        s in proptest::collection::vec(any::<u8>(), 0..600),
        extra in proptest::collection::vec("[A-Za-z0-9_-]{0,8}", 0..3),
    ) {
        let mut token = format!("{}.{}.{}", b64(&h), b64(&p), b64(&s));
        for e in extra {
            token.push('.');
            token.push_str(&e);
        }
        prop_assert!(validate(&token).is_err());
    }

    /// Tokens the trusted IdP really signed, with generated headers and claims:
    /// never a panic; accepted only when every RFC 8725 / RFC 7519 check holds.
    /// The same token signed by a key nobody trusts is always refused.
    #[test]
    fn validator_checks_every_signed_token(h in header(), c in claims()) {
        signed_token_checks(&h, &c)?;
    }

    /// The claims visitor on arbitrary bytes and arbitrary JSON: no panic, and
    /// a repeated member is always refused.
    #[test]
    fn claims_visitor_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256), v in json_value(), c in claims()) {
        let _ = std::str::from_utf8(&bytes).map(Claims::from_json);
        let _ = Claims::parse(v.to_string());
        let text = c.to_string();
        if let Some(body) = text.strip_prefix('{').and_then(|t| t.strip_suffix('}')).filter(|b| !b.is_empty()) {
            let first = body.split(',').next().unwrap();
            if serde_json::from_str::<Value>(&format!("{{{first}}}")).is_ok() {
                let doubled = format!("{{{body},{first}}}");
                prop_assert!(Claims::from_json(&doubled).is_err(), "duplicate accepted: {}", doubled);
            }
        }
    }

    /// `jwks::parse` on arbitrary bytes and on generated JWK objects: no
    /// panic; never more keys than entries.
    #[test]
    fn jwks_parse_never_panics(
        bytes in proptest::collection::vec(any::<u8>(), 0..256),
        keys in proptest::collection::vec(jwk(), 0..5),
    ) {
        let _ = jwks::parse(&bytes);
        let doc = json!({ "keys": keys }).to_string();
        let set = jwks::parse(doc.as_bytes());
        prop_assert!(set.is_ok(), "a keys array is a JWKS");
        let set = set.unwrap();
        prop_assert!(set.len() <= keys.len());
    }

    /// `Config::from_yaml_str` on arbitrary and YAML-ish text: no panic.
    #[test]
    fn config_parse_never_panics(text in prop_oneof![".{0,200}", yamlish()]) {
        let _ = Config::from_yaml_str(&text);
        let _ = Config::from_yaml_validated(&text);
    }
}

/// The checks of `validator_checks_every_signed_token`; `Ok(true)` when the
/// token was accepted.
fn signed_token_checks(h: &Value, c: &Value) -> Result<bool, TestCaseError> {
    let f = fixture();
    let token = f.idp.sign(&h.to_string(), &c.to_string());
    let accepted = match validate(&token) {
        Ok(v) => {
            prop_assert_eq!(h["alg"].as_str(), Some("ES256"));
            prop_assert!(h.get("kid").is_none_or(|k| k == "k1"), "{}", h);
            // Present at all, even as `null`, is refused.
            for refused in ["jku", "x5u", "jwk", "x5c", "crit", "enc"] {
                prop_assert!(h.get(refused).is_none(), "{} accepted: {}", refused, h);
            }
            prop_assert!(h.get("typ").is_none_or(|t| t == "JWT" || t == "at+jwt" || t == "application/at+jwt"));
            prop_assert_eq!(v.issuer.as_str(), TRUSTED);
            prop_assert!(!v.sub.is_empty());
            prop_assert_eq!(c["sub"].as_str(), Some(v.sub.as_str()));
            prop_assert!(v.exp >= NOW - 61, "expired token accepted: exp {}", v.exp);
            prop_assert!(c.get("nbf").and_then(Value::as_f64).is_none_or(|n| n <= (NOW + 61) as f64));
            prop_assert!(c.get("iat").and_then(Value::as_f64).is_none_or(|n| n <= (NOW + 61) as f64));
            true
        }
        Err(_) => false,
    };
    let rogue = f.rogue.sign(&h.to_string(), &c.to_string());
    prop_assert!(validate(&rogue).is_err(), "a rogue key's signature was accepted");
    Ok(accepted)
}

/// The signed-token property is not vacuous: its generators reach accepted tokens.
#[test]
fn signed_tokens_are_sometimes_accepted() {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (header(), claims());
    let mut accepted = 0;
    for _ in 0..300 {
        let (h, c) = strategy.new_tree(&mut runner).unwrap().current();
        accepted += signed_token_checks(&h, &c).unwrap() as usize;
    }
    assert!(accepted >= 10, "only {accepted} of 300 generated tokens accepted");
}

fn b64_field() -> impl Strategy<Value = Value> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..80).prop_map(|b| json!(b64(&b))),
        Just(json!(b64(&[0u8; 32]))),
        json_value(),
    ]
}

/// A JWK: real key types and curves with arbitrary (often wrong) material.
fn jwk() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(&["RSA", "EC", "OKP", "oct", "junk"][..]),
        proptest::sample::select(&["P-256", "P-384", "P-521", "Ed25519", "X25519", "secp256k1"][..]),
        (b64_field(), b64_field(), b64_field(), b64_field()),
        (
            proptest::option::of(proptest::sample::select(&["sig", "enc", "x"][..])),
            proptest::option::of(proptest::sample::select(&["ES256", "RS256", "EdDSA", "HS256", "x"][..])),
            proptest::option::of("[a-z0-9]{0,4}"),
            proptest::option::of(proptest::collection::vec(
                proptest::sample::select(&["verify", "sign", "x"][..]),
                0..3,
            )),
        ),
    )
        .prop_map(|(kty, crv, (x, y, n, e), (use_, alg, kid, ops))| {
            let mut k = json!({ "kty": kty, "crv": crv, "x": x, "y": y, "n": n, "e": e });
            if let Some(u) = use_ {
                k["use"] = json!(u);
            }
            if let Some(a) = alg {
                k["alg"] = json!(a);
            }
            if let Some(kid) = kid {
                k["kid"] = json!(kid);
            }
            if let Some(ops) = ops {
                k["key_ops"] = json!(ops);
            }
            k
        })
}

/// Text built from YAML's own pieces: keys of the configuration, indentation,
/// flow collections, anchors, aliases, tags and scalars.
fn yamlish() -> impl Strategy<Value = String> {
    let piece = proptest::sample::select(
        &[
            "issuer: ",
            "signing:",
            "keys:",
            "trusted_issuers:",
            "rules:",
            "- ",
            "  ",
            "\n",
            "{",
            "}",
            "[",
            "]",
            ", ",
            ": ",
            "&a ",
            "*a",
            "!!binary ",
            "!!str ",
            "<<: *a",
            "~",
            "null",
            "true",
            "1e999",
            "-1",
            "2m",
            "\"",
            "'",
            "#",
            "https://idp.test",
            "kid: a",
            "ephemeral: true",
            "match:",
            "grant:",
            "outcome: delegation",
            "scopes: [\"*\"]",
            "max_lifetime: 99999999999h",
            "max_chain_depth: 18446744073709551616",
            "? ",
            "|\n",
            ">\n",
            "---\n",
            "...\n",
        ][..],
    );
    proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat())
}

/// Structural bounds the validator keeps, whatever the token holds.
#[test]
fn validator_bounds_size_and_nesting() {
    // Longer than the limit: refused before any decoding.
    let long = "a".repeat(MAX_BYTES + 1);
    assert_eq!(validate(&long).unwrap_err(), TokenError::TooLarge(MAX_BYTES));
    // Nesting far deeper than serde_json's recursion limit (128): refused,
    // never a stack overflow, in the header, the payload and a JWKS.
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let claims = format!(r#"{{"iss":"{TRUSTED}","sub":"a","exp":{},"x":{deep}}}"#, NOW + 60);
    let f = fixture();
    let token = f.idp.sign(r#"{"alg":"ES256","kid":"k1"}"#, &claims);
    assert!(token.len() <= MAX_BYTES);
    assert!(validate(&token).is_err());
    let header = format!(r#"{{"alg":"ES256","x":{deep}}}"#);
    assert!(validate(&format!("{}.{}.c2ln", b64(header.as_bytes()), b64(b"{}"))).is_err());
    assert!(jwks::parse(format!(r#"{{"keys":[{deep}]}}"#).as_bytes()).is_err());
    // Claims: the validator's own bound (32 levels, the claims object
    // included) comes before serde_json's (128), with a precise error.
    let nested = |n: usize| {
        let x = format!("{}{}", "[".repeat(n), "]".repeat(n));
        let claims = format!(r#"{{"iss":"{TRUSTED}","sub":"a","exp":{},"x":{x}}}"#, NOW + 60);
        validate(&f.idp.sign(r#"{"alg":"ES256","kid":"k1"}"#, &claims))
    };
    assert_eq!(nested(100).unwrap_err(), TokenError::Malformed("claims nest deeper than 32 levels"));
    assert_eq!(nested(32).unwrap_err(), TokenError::Malformed("claims nest deeper than 32 levels"));
    let got = nested(31);
    assert!(got.is_ok(), "{got:?}");
}

/// What `json_shape::measure` counts on the bytes is never less than what
/// parsing builds, however the text is laid out (compact, pretty, strings
/// full of brackets, quotes and escapes): the validator's bounds on values,
/// members, containers and depth hold for what is actually allocated.
fn true_shape(v: &Value, depth: usize, s: &mut crate::json_shape::Shape) {
    s.values += 1;
    match v {
        Value::Array(a) => {
            s.depth = s.depth.max(depth + 1);
            s.containers += usize::from(!a.is_empty());
            a.iter().for_each(|v| true_shape(v, depth + 1, s));
        }
        Value::Object(o) => {
            s.depth = s.depth.max(depth + 1);
            s.containers += usize::from(!o.is_empty());
            s.members += o.len();
            o.values().for_each(|v| true_shape(v, depth + 1, s));
        }
        _ => {}
    }
}

/// Strings that look like structure.
fn tricky_json() -> impl Strategy<Value = Value> {
    let tricky = prop_oneof![
        "[\\[\\]{}:,\"\\\\]{0,12}".prop_map(Value::String),
        ".{0,12}".prop_map(Value::String),
        Just(Value::Null),
        any::<i64>().prop_map(|n| json!(n)),
    ];
    tricky.prop_recursive(6, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            proptest::collection::btree_map("[\\[\\]{}:,\"\\\\a-c]{0,6}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn json_shape_never_undercounts(v in prop_oneof![json_value(), tricky_json()], pretty in any::<bool>()) {
        let text = if pretty { serde_json::to_string_pretty(&v).unwrap() } else { v.to_string() };
        let measured = json_shape::measure(text.as_bytes());
        let mut real = crate::json_shape::Shape::default();
        true_shape(&v, 0, &mut real);
        prop_assert!(measured.values >= real.values, "values {} < {} in {}", measured.values, real.values, text);
        prop_assert_eq!(measured.members, real.members, "members in {}", text);
        prop_assert_eq!(measured.containers, real.containers, "containers in {}", text);
        prop_assert_eq!(measured.depth, real.depth, "depth in {}", text);
    }

    /// Any bytes: measuring never panics, and what passes `check` and parses
    /// is within the bounds.
    #[test]
    fn json_shape_check_bounds_what_parses(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        if json_shape::check(&bytes).is_ok() {
            if let Ok(v) = serde_json::from_slice::<Value>(&bytes) {
                let mut real = crate::json_shape::Shape::default();
                true_shape(&v, 0, &mut real);
                prop_assert!(real.values <= json_shape::MAX_VALUES && real.depth <= json_shape::MAX_DEPTH);
            }
        }
    }
}

/// YAML aliases are expanded by serde_yaml_ng with a repetition limit: a
/// "billion laughs" document (10^10 scalars, in `add_claims`, which takes any
/// YAML value) is refused quickly instead of growing without bound.
#[test]
fn config_refuses_alias_bombs() {
    let mut doc = String::from(
        "issuer: https://sts.test\nrules:\n  - name: x\n    grant:\n      add_claims:\n        a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n",
    );
    for i in 1..10 {
        let p = i - 1;
        doc.push_str(&format!(
            "        a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"
        ));
    }
    let started = std::time::Instant::now();
    let err = Config::from_yaml_str(&doc).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("repetition limit"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
}
