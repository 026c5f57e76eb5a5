//! Turning an issuer's JWKS document into verification keys, parsed once per
//! fetch. Keys stsgate could never use for a signature check (encryption keys,
//! symmetric keys, unknown types) are skipped one by one rather than failing
//! the whole set, because real IdPs publish such keys beside their signing keys.

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;

use crate::config::VerifyAlg;

/// The kind of public key, which decides the algorithms it can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl KeyKind {
    /// Whether a key of this kind may verify `alg` (RFC 8725 §3.1: the key, not
    /// the token header, decides what the algorithm can be).
    pub fn fits(self, alg: VerifyAlg) -> bool {
        use VerifyAlg::*;
        match self {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        }
    }
}

/// A parsed public key from an issuer's JWKS.
pub struct VerifyKey {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it pins one.
    pub alg: Option<VerifyAlg>,
    pub key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey").field("kid", &self.kid).field("kind", &self.kind).field("alg", &self.alg).finish()
    }
}

impl VerifyKey {
    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: VerifyAlg) -> bool {
        self.kind.fits(alg) && self.alg.is_none_or(|pinned| pinned == alg)
    }
}

/// The usable keys of one JWKS document.
#[derive(Debug, Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<VerifyKey>>,
    without_kid: Vec<Arc<VerifyKey>>,
    /// Human-readable reasons for each key that was skipped (for the log).
    pub skipped: Vec<String>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn get(&self, kid: &str) -> Option<&Arc<VerifyKey>> {
        self.by_kid.get(kid)
    }

    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.by_kid.keys().map(String::as_str)
    }

    /// For a token without `kid`: the single key that can verify `alg`. With
    /// several candidates the token is ambiguous and is refused rather than
    /// tried against each key.
    pub fn only_key_for(&self, alg: VerifyAlg) -> Option<&Arc<VerifyKey>> {
        let mut candidates = self.by_kid.values().chain(self.without_kid.iter()).filter(|k| k.accepts(alg));
        let first = candidates.next()?;
        if candidates.next().is_some() { None } else { Some(first) }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JwksError {
    #[error("not a JWKS document: {0}")]
    NotJwks(String),
    #[error("the JWKS has no usable signature keys ({})", .0.join("; "))]
    NoUsableKeys(Vec<String>),
}

#[derive(Deserialize)]
struct RawSet {
    keys: Vec<serde_json::Value>,
}

/// Parses a JWKS document; fails only when it is malformed or has no usable key.
pub fn parse(json: &[u8]) -> Result<KeySet, JwksError> {
    let raw: RawSet = serde_json::from_slice(json).map_err(|e| JwksError::NotJwks(e.to_string()))?;
    let mut set = KeySet::default();
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
                        if set.by_kid.insert(kid.clone(), key.clone()).is_some() {
                            // Two keys under one kid make "which key signed" ambiguous.
                            set.by_kid.remove(kid);
                            set.skipped.push(format!("{label}: kid appears more than once, both ignored"));
                        }
                    }
                    None => set.without_kid.push(key),
                }
            }
            Err(why) => set.skipped.push(format!("{label}: {why}")),
        }
    }
    if set.is_empty() {
        return Err(JwksError::NoUsableKeys(set.skipped));
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
        Some(ka) => Some(verify_alg_of(ka).ok_or_else(|| format!("alg {ka:?} is not a signature algorithm stsgate accepts"))?),
    };
    if let Some(alg) = alg {
        if !kind.fits(alg) {
            return Err(format!("alg {} does not fit a {kind:?} key", alg.as_str()));
        }
    }
    let key = DecodingKey::from_jwk(&jwk).map_err(|e| format!("invalid key material ({e})"))?;
    Ok(VerifyKey { kid: jwk.common.key_id.clone(), kind, alg, key })
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
    fn empty_or_malformed_sets_are_errors() {
        assert!(matches!(parse(br#"{"keys":[]}"#), Err(JwksError::NoUsableKeys(_))));
        assert!(matches!(parse(b"<html>"), Err(JwksError::NotJwks(_))));
        assert!(matches!(parse(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#), Err(JwksError::NoUsableKeys(_))));
    }

    #[test]
    fn duplicate_kids_are_both_dropped() {
        let doc = format!(r#"{{"keys":[{EC_KEY},{EC_KEY}]}}"#);
        assert!(matches!(parse(doc.as_bytes()), Err(JwksError::NoUsableKeys(_))));
    }
}
