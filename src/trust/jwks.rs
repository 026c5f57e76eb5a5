//! Turning an issuer's JWKS document into verification keys, parsed once per
//! fetch. Keys stsgate could never use for a signature check (encryption keys,
//! symmetric keys, unknown types) are skipped one by one rather than failing
//! the whole set, because real IdPs publish such keys beside their signing keys.

use std::collections::HashMap;
use std::sync::Arc;

use aws_lc_rs::signature::{self as sig, ParsedPublicKey, RsaPublicKeyComponents};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;

use crate::config::VerifyAlg;

/// The kind of public key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind may verify `alg` (RFC 8725 §3.1: the key, not
    /// the token header, decides what the algorithm can be).
    pub(crate) fn fits(self, alg: VerifyAlg) -> bool {
        use VerifyAlg::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// Smallest RSA modulus accepted (RFC 8725 §3.5 defers to NIST: 2048 bits).
const MIN_RSA_BITS: usize = 2048;

/// A parsed public key from an issuer's JWKS. The aws-lc key objects are built
/// once per fetch, one per algorithm the key may verify, so a signature check
/// does no key parsing (jsonwebtoken rebuilds the key on every call).
pub(crate) struct VerifyKey {
    pub(crate) kid: Option<String>,
    pub(crate) kind: KeyKind,
    /// The JWK's own `alg`, when it pins one.
    pub(crate) alg: Option<VerifyAlg>,
    parsed: Vec<(VerifyAlg, ParsedPublicKey)>,
    /// SHA-256 of the key material, to notice a key withdrawn by its issuer.
    fingerprint: [u8; 32],
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("kind", &self.kind).field("alg", &self.alg).finish()
    }
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn accepts(&self, alg: VerifyAlg) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }

    /// Checks a JWS signature (`signature` already base64url-decoded) over
    /// `signed` (header.payload). False for an algorithm this key does not accept.
    pub(crate) fn verify(&self, alg: VerifyAlg, signed: &[u8], signature: &[u8]) -> bool {
        self.parsed.iter().find(|(a, _)| *a == alg).is_some_and(|(_, key)| key.verify_sig(signed, signature).is_ok())
    }
}

/// The aws-lc algorithm of a JWS `alg` for EC and OKP keys (ECDSA signatures
/// in JWS are the fixed-width r||s form, RFC 7518 §3.4).
fn curve_alg(alg: VerifyAlg) -> Option<&'static dyn sig::VerificationAlgorithm> {
    Some(match alg {
        VerifyAlg::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
        VerifyAlg::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
        VerifyAlg::EdDSA => &sig::ED25519,
        _ => return None,
    })
}

fn rsa_params(alg: VerifyAlg) -> Option<&'static sig::RsaParameters> {
    Some(match alg {
        VerifyAlg::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
        VerifyAlg::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
        VerifyAlg::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
        VerifyAlg::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
        VerifyAlg::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
        VerifyAlg::PS512 => &sig::RSA_PSS_2048_8192_SHA512,
        _ => return None,
    })
}

fn b64_field(name: &str, value: &str) -> Result<Vec<u8>, String> {
    URL_SAFE_NO_PAD.decode(value.trim_end_matches('=')).map_err(|_| format!("`{name}` is not base64url"))
}

type ParsedKeys = Vec<(VerifyAlg, ParsedPublicKey)>;

/// One parsed key per algorithm this JWK may verify, and the material's fingerprint.
fn parse_material(jwk: &Jwk, kind: KeyKind, pinned: Option<VerifyAlg>) -> Result<(ParsedKeys, [u8; 32]), String> {
    let algs = VerifyAlg::ALL.into_iter().filter(|a| kind.fits(*a) && pinned.is_none_or(|p| p == *a));
    let rejected = |e: aws_lc_rs::error::KeyRejected| format!("invalid key material ({e})");
    match &jwk.algorithm {
        AlgorithmParameters::RSA(p) => {
            let n = b64_field("n", &p.n)?;
            let e = b64_field("e", &p.e)?;
            // Bit length from the first non-zero byte, so no subtraction can wrap.
            let Some(first) = n.iter().position(|b| *b != 0) else {
                return Err("RSA modulus is zero".into());
            };
            let bits = (n.len() - first - 1) * 8 + (8 - n[first].leading_zeros() as usize);
            if bits < MIN_RSA_BITS {
                return Err(format!("RSA key of {bits} bits is shorter than {MIN_RSA_BITS}"));
            }
            let components = RsaPublicKeyComponents { n: n.as_slice(), e: e.as_slice() };
            let keys = algs
                .filter_map(|a| rsa_params(a).map(|params| (a, params)))
                .map(|(a, params)| components.to_parsed_public_key(params).map(|k| (a, k)).map_err(rejected))
                .collect::<Result<_, _>>()?;
            Ok((keys, fingerprint(&[b"RSA", &n, &e])))
        }
        AlgorithmParameters::EllipticCurve(p) => {
            let (x, y) = (b64_field("x", &p.x)?, b64_field("y", &p.y)?);
            // SEC 1 uncompressed point: 0x04 || X || Y.
            let point: Vec<u8> = std::iter::once(4u8).chain(x).chain(y).collect();
            Ok((curve_keys(algs, &point, rejected)?, fingerprint(&[b"EC", &point])))
        }
        AlgorithmParameters::OctetKeyPair(p) => {
            let x = b64_field("x", &p.x)?;
            Ok((curve_keys(algs, &x, rejected)?, fingerprint(&[b"OKP", &x])))
        }
        AlgorithmParameters::OctetKey(_) => Err("symmetric (oct) keys are never accepted from an issuer".into()),
    }
}

fn fingerprint(parts: &[&[u8]]) -> [u8; 32] {
    crate::digest::KeyBuilder::new(b"stsgate/jwk/v1").fields(parts).finish()
}

fn curve_keys(
    algs: impl Iterator<Item = VerifyAlg>,
    public: &[u8],
    rejected: impl Fn(aws_lc_rs::error::KeyRejected) -> String,
) -> Result<Vec<(VerifyAlg, ParsedPublicKey)>, String> {
    algs.filter_map(|a| curve_alg(a).map(|lc| (a, lc)))
        .map(|(a, lc)| ParsedPublicKey::new(lc, public).map(|k| (a, k)).map_err(&rejected))
        .collect()
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    without_kid: Vec<Arc<VerifyKey>>,
    /// Human-readable reasons for each key that was skipped (for the log).
    pub(crate) skipped: Vec<String>,
}

impl KeySet {
    pub(crate) fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid.get(kid)
    }

    /// Whether some key of `older` is no longer in this set (removed, or its
    /// kid now names other material): tokens it verified must be checked again.
    pub(crate) fn withdraws_any_of(&self, older: &KeySet) -> bool {
        let ours: std::collections::HashSet<([u8; 32], Option<&str>)> =
            self.all().map(|k| (k.fingerprint, k.kid.as_deref())).collect();
        older.all().any(|k| !ours.contains(&(k.fingerprint, k.kid.as_deref())))
    }

    fn all(&self) -> impl Iterator<Item = &Arc<VerifyKey>> {
        self.by_kid.values().chain(self.without_kid.iter())
    }

    /// Whether some key can verify `alg`.
    pub(crate) fn accepts_any(&self, alg: VerifyAlg) -> bool {
        self.all().any(|k| k.accepts(alg))
    }

    /// For a token without `kid`: the single key that can verify `alg`. With
    /// several candidates the token is ambiguous and is refused rather than
    /// tried against each key.
    pub(crate) fn only_key_for(&self, alg: VerifyAlg) -> Option<&Arc<VerifyKey>> {
        let mut candidates = self.all().filter(|k| k.accepts(alg));
        let first = candidates.next()?;
        if candidates.next().is_some() { None } else { Some(first) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
}

/// Bounds of a JWKS document (`json_shape`): room for 200 keys with
/// certificate chains, where IdPs publish a handful.
const MAX_JWKS_VALUES: usize = 16_384;
const MAX_JWKS_CONTAINERS: usize = 1_024;
const MAX_JWKS_DEPTH: usize = 8;

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document; fails only when it is not a JWKS at all. A set
/// with no usable key is a valid answer: the IdP withdrew every key, and
/// tokens of that issuer must be refused, not checked against older keys.
pub(crate) fn parse(json: &[u8]) -> Result<KeySet, JwksError> {
    // Bounded before parsing: a document of tiny entries would otherwise
    // cost far more memory (and skipped-entry log lines) than its size.
    let shape = crate::json_shape::measure(json);
    if shape.values > MAX_JWKS_VALUES || shape.containers > MAX_JWKS_CONTAINERS || shape.depth > MAX_JWKS_DEPTH {
        return Err(JwksError::NotJwks(format!(
            "too large to be a key set: at most {MAX_JWKS_CONTAINERS} objects and arrays, \
             {MAX_JWKS_VALUES} JSON values, {MAX_JWKS_DEPTH} levels"
        )));
    }
    let raw: RawSet = serde_json::from_slice(json).map_err(|e| JwksError::NotJwks(e.to_string()))?;
    let mut set = KeySet::default();
    // A kid two signature keys share is ambiguous for the whole document:
    // every key under it is skipped, however many there are.
    let mut duplicated = std::collections::HashSet::new();
    for (i, value) in raw.keys.into_iter().enumerate() {
        let label = value
            .get("kid")
            .and_then(|k| k.as_str())
            .map(|k| format!("key {k:?}"))
            .unwrap_or_else(|| format!("key #{i}"));
        match parse_key(value) {
            Ok(key) => {
                let key = Arc::new(key);
                match &key.kid {
                    Some(kid) => {
                        if duplicated.contains(kid) || set.by_kid.remove(kid).is_some() {
                            duplicated.insert(kid.clone());
                            set.skipped.push(format!("{label}: kid appears more than once, all its keys ignored"));
                        } else {
                            set.by_kid.insert(kid.clone(), key.clone());
                        }
                    }
                    None => set.without_kid.push(key),
                }
            }
            Err(why) => set.skipped.push(format!("{label}: {why}")),
        }
    }
    Ok(set)
}

fn parse_key(value: serde_json::Value) -> Result<VerifyKey, String> {
    let jwk: Jwk = serde_json::from_value(value).map_err(|e| format!("not a supported JWK ({e})"))?;
    if let Some(use_) = &jwk.common.public_key_use {
        if *use_ != PublicKeyUse::Signature {
            return Err("not a signature key (use is not \"sig\")".into());
        }
    }
    if let Some(ops) = &jwk.common.key_operations {
        if !ops.iter().any(|op| matches!(op, jsonwebtoken::jwk::KeyOperations::Verify)) {
            return Err("key_ops does not include \"verify\"".into());
        }
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::P256,
            EllipticCurve::P384 => KeyKind::P384,
            ref other => return Err(format!("unsupported EC curve {other:?}")),
        },
        AlgorithmParameters::OctetKeyPair(p) => match p.curve {
            EllipticCurve::Ed25519 => KeyKind::Ed25519,
            ref other => return Err(format!("unsupported OKP curve {other:?}")),
        },
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never accepted from an issuer".into());
        }
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => {
            Some(verify_alg_of(ka).ok_or_else(|| format!("alg {ka:?} is not a signature algorithm stsgate accepts"))?)
        }
    };
    if let Some(alg) = alg {
        if !kind.fits(alg) {
            return Err(format!("alg {} does not fit a {kind:?} key", alg.as_str()));
        }
    }
    let (parsed, fingerprint) = parse_material(&jwk, kind, alg)?;
    Ok(VerifyKey { kid: jwk.common.key_id.clone(), kind, alg, parsed, fingerprint })
}

fn verify_alg_of(ka: KeyAlgorithm) -> Option<VerifyAlg> {
    Some(match ka {
        KeyAlgorithm::RS256 => VerifyAlg::RS256,
        KeyAlgorithm::RS384 => VerifyAlg::RS384,
        KeyAlgorithm::RS512 => VerifyAlg::RS512,
        KeyAlgorithm::PS256 => VerifyAlg::PS256,
        KeyAlgorithm::PS384 => VerifyAlg::PS384,
        KeyAlgorithm::PS512 => VerifyAlg::PS512,
        KeyAlgorithm::ES256 => VerifyAlg::ES256,
        KeyAlgorithm::ES384 => VerifyAlg::ES384,
        KeyAlgorithm::EdDSA => VerifyAlg::EdDSA,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_of_tiny_entries_is_refused_before_it_is_parsed() {
        // 512 KiB of `{"a":0},` would be ~65,000 values: refused by its
        // shape, so a broken refresh keeps the old keys instead.
        let tiny = format!("{{\"keys\":[{}{{}}]}}", "{\"a\":0},".repeat(60_000));
        let err = parse(tiny.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("too large to be a key set"), "{err}");
        // 200 keys with a certificate chain each still fit.
        let key = r#"{"kty":"EC","crv":"P-256","x":"AA","y":"AA","x5c":["a","b","c"],"use":"enc"}"#;
        let many = format!("{{\"keys\":[{}]}}", vec![key; 200].join(","));
        assert!(parse(many.as_bytes()).is_ok());
    }

    const EC_KEY: &str = r#"{"kty":"EC","crv":"P-256","kid":"ec1","use":"sig","alg":"ES256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

    #[test]
    fn skips_unusable_keys_and_keeps_the_rest() {
        let doc = format!(
            r#"{{"keys":[{EC_KEY},
            {{"kty":"oct","kid":"h","k":"c2VjcmV0"}},
            {{"kty":"EC","crv":"P-256","kid":"enc","use":"enc","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
            {{"kty":"EC","crv":"P-256","kid":"mismatch","alg":"RS256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}},
            {{"kty":"weird","kid":"w"}}]}}"#
        );
        let set = parse(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        let key = set.get("ec1").unwrap();
        assert!(key.accepts(VerifyAlg::ES256));
        assert!(!key.accepts(VerifyAlg::RS256));
        assert!(!key.accepts(VerifyAlg::ES384));
        assert_eq!(set.skipped.len(), 4, "{:?}", set.skipped);
        assert!(set.skipped.iter().any(|s| s.contains("symmetric")));
    }

    #[test]
    fn malformed_documents_are_errors() {
        for doc in [&b"<html>"[..], b"", b"{}", br#"{"keys":null}"#, br#"{"keys":{}}"#, br#"[]"#] {
            assert!(matches!(parse(doc), Err(JwksError::NotJwks(_))), "{}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn a_jwks_without_usable_keys_is_an_empty_set_not_an_error() {
        let n_1024 = URL_SAFE_NO_PAD.encode([0xC5u8; 128]);
        for doc in [
            r#"{"keys":[]}"#.to_owned(),
            r#"{"keys":[{"kty":"oct","kid":"h","k":"c2VjcmV0"}]}"#.to_owned(),
            format!(r#"{{"keys":[{{"kty":"RSA","kid":"short","n":"{n_1024}","e":"AQAB"}}]}}"#),
        ] {
            let set = parse(doc.as_bytes()).unwrap_or_else(|e| panic!("{doc}: {e}"));
            assert!(set.is_empty(), "{doc}");
            assert!(set.only_key_for(VerifyAlg::RS256).is_none());
        }
    }

    #[test]
    fn every_key_of_a_duplicated_kid_is_dropped() {
        use crate::config::SignAlg;
        use crate::signing::Signer;
        let jwk = |kid: &str| Signer::generate(kid, SignAlg::ES256).unwrap().public_jwk();
        let other = jwk("other");
        for copies in [2, 3, 4] {
            let mut keys: Vec<serde_json::Value> = (0..copies).map(|_| jwk("dup")).collect();
            keys.push(other.clone());
            let set = parse(serde_json::json!({ "keys": keys }).to_string().as_bytes()).unwrap();
            assert!(set.get("dup").is_none(), "{copies} keys under one kid: none may be trusted");
            assert!(set.get("other").is_some());
            assert_eq!(set.len(), 1, "{copies}");
            assert_eq!(set.skipped.iter().filter(|s| s.contains("more than once")).count(), copies - 1);
        }
        // The very same key twice is no exception.
        let doc = format!(r#"{{"keys":[{EC_KEY},{EC_KEY},{EC_KEY}]}}"#);
        assert!(parse(doc.as_bytes()).unwrap().is_empty());
    }

    #[test]
    fn a_zero_or_empty_rsa_modulus_is_refused_without_panicking() {
        for n in ["AAAA", "", "AA", &URL_SAFE_NO_PAD.encode([0u8; 256])] {
            let doc = format!(r#"{{"keys":[{{"kty":"RSA","kid":"zero","n":"{n}","e":"AQAB"}}]}}"#);
            let set = parse(doc.as_bytes()).unwrap();
            assert!(set.is_empty(), "n = {n:?}");
            assert!(set.skipped.iter().any(|s| s.contains("RSA modulus is zero")), "n = {n:?}: {:?}", set.skipped);
        }
        // Leading zero bytes do not count towards the size.
        let mut n = vec![0u8; 4];
        n.extend([0x01u8; 256]);
        let doc = format!(r#"{{"keys":[{{"kty":"RSA","kid":"z","n":"{}","e":"AQAB"}}]}}"#, URL_SAFE_NO_PAD.encode(&n));
        let set = parse(doc.as_bytes()).unwrap();
        assert!(set.skipped.iter().any(|s| s.contains("2041 bits")), "{:?}", set.skipped);
    }

    #[test]
    fn parsed_keys_verify_their_own_algorithm_only() {
        use crate::config::SignAlg;
        use crate::signing::Signer;
        for (sign, verify, other) in [
            (SignAlg::RS256, VerifyAlg::RS256, VerifyAlg::PS256),
            (SignAlg::ES256, VerifyAlg::ES256, VerifyAlg::ES384),
            (SignAlg::EdDSA, VerifyAlg::EdDSA, VerifyAlg::ES256),
        ] {
            let signer = Signer::generate("k", sign).unwrap();
            let doc = serde_json::json!({ "keys": [signer.public_jwk()] }).to_string();
            let set = parse(doc.as_bytes()).unwrap();
            let key = set.get("k").unwrap();
            let token = signer.sign_typed("JWT", &serde_json::json!({"sub": "a"})).unwrap();
            let (signed, s64) = token.rsplit_once('.').unwrap();
            let mut signature = URL_SAFE_NO_PAD.decode(s64).unwrap();
            assert!(key.verify(verify, signed.as_bytes(), &signature), "{sign:?}");
            assert!(!key.verify(other, signed.as_bytes(), &signature), "{sign:?} key must not verify {other:?}");
            assert!(!key.verify(verify, format!("{signed}x").as_bytes(), &signature), "{sign:?}: other message");
            signature[10] ^= 1;
            assert!(!key.verify(verify, signed.as_bytes(), &signature), "{sign:?}: flipped bit");
        }
    }

    #[test]
    fn short_rsa_keys_and_bad_material_are_skipped_with_a_reason() {
        let n_1024 = URL_SAFE_NO_PAD.encode([0xC5u8; 128]);
        let doc = format!(
            r#"{{"keys":[{EC_KEY},
            {{"kty":"RSA","kid":"short","n":"{n_1024}","e":"AQAB"}},
            {{"kty":"RSA","kid":"junk","n":"not base64!","e":"AQAB"}},
            {{"kty":"EC","crv":"P-256","kid":"offcurve","x":"AAAA","y":"AAAA"}}]}}"#
        );
        let set = parse(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 1, "{:?}", set.skipped);
        assert!(set.skipped.iter().any(|s| s.contains("\"short\"") && s.contains("1024 bits")), "{:?}", set.skipped);
        assert!(set.skipped.iter().any(|s| s.contains("\"junk\"") && s.contains("base64url")), "{:?}", set.skipped);
        assert!(
            set.skipped.iter().any(|s| s.contains("\"offcurve\"") && s.contains("invalid key material")),
            "{:?}",
            set.skipped
        );
    }

    #[test]
    fn withdrawing_or_replacing_a_key_is_noticed_and_adding_one_is_not() {
        use crate::config::SignAlg;
        use crate::signing::Signer;
        let jwk = |kid: &str| Signer::generate(kid, SignAlg::ES256).unwrap().public_jwk();
        let (a, b, a_again) = (jwk("a"), jwk("b"), jwk("a"));
        let set =
            |keys: &[&serde_json::Value]| parse(serde_json::json!({ "keys": keys }).to_string().as_bytes()).unwrap();
        let old = set(&[&a]);
        assert!(!set(&[&a, &b]).withdraws_any_of(&old), "a key was added");
        assert!(!set(&[&a]).withdraws_any_of(&old), "the same set again");
        assert!(set(&[&b]).withdraws_any_of(&old), "a was removed");
        assert!(set(&[&a_again]).withdraws_any_of(&old), "kid a now names other material");
    }
}
