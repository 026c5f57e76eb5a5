//! stsgate's own signing keys. Keys are parsed once at load into aws-lc-rs
//! key pairs (jsonwebtoken would re-parse the key on every signature, which
//! costs 2x for ES256 and RS256); the JOSE header of the active key is encoded
//! once. The public JWKS is rendered once per key ring. What a minted token
//! says is the engine's (`engine::mint`): this layer knows keys, not claims,
//! so that trust can verify stsgate's own tokens with the key ring.

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Value, json};

use crate::config::{SignAlg, Signing, SigningKey};

/// What can go wrong with one of stsgate's keys: loading it, or signing with it.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("signing key {kid:?}: cannot read {path}: {reason}")]
    Read { kid: String, path: String, reason: String },
    #[error("signing key {kid:?}: {reason}")]
    BadKey { kid: String, reason: String },
    #[error("signing failed")]
    Sign,
    #[error("claims could not be encoded: {0}")]
    Encode(String),
}

enum KeyMaterial {
    Es256(EcdsaKeyPair),
    Rs256(RsaKeyPair),
    EdDsa(Ed25519KeyPair),
}

/// One private key, ready to sign.
pub struct Signer {
    pub(crate) kid: String,
    pub(crate) alg: SignAlg,
    material: KeyMaterial,
    rng: SystemRandom,
    /// base64url of `{"alg":..,"typ":"at+jwt","kid":..}`, encoded once and
    /// shared by every token (and cache entry) this key signs.
    at_jwt_header: Arc<str>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).field("alg", &self.alg).finish_non_exhaustive()
    }
}

impl Signer {
    /// Loads a configured key: from its PEM file, or generated for `ephemeral`.
    pub(crate) fn load(cfg: &SigningKey) -> Result<Signer, KeyError> {
        let bad = |reason: String| KeyError::BadKey { kid: cfg.kid.clone(), reason };
        let material = match &cfg.file {
            None => generate(cfg.alg).map_err(bad)?,
            Some(path) => {
                let text = std::fs::read(path).map_err(|e| KeyError::Read {
                    kid: cfg.kid.clone(),
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                parse_pem(cfg.alg, &text, path).map_err(bad)?
            }
        };
        Ok(Signer::from_material(cfg.kid.clone(), cfg.alg, material))
    }

    /// A fresh in-memory key (development issuer, tests).
    pub fn generate(kid: impl Into<String>, alg: SignAlg) -> Result<Signer, KeyError> {
        let kid = kid.into();
        let material = generate(alg).map_err(|reason| KeyError::BadKey { kid: kid.clone(), reason })?;
        Ok(Signer::from_material(kid, alg, material))
    }

    fn from_material(kid: String, alg: SignAlg, material: KeyMaterial) -> Signer {
        let header = json!({"alg": alg.as_str(), "typ": "at+jwt", "kid": kid});
        let at_jwt_header: Arc<str> = URL_SAFE_NO_PAD.encode(header.to_string()).into();
        Signer { kid, alg, material, rng: SystemRandom::new(), at_jwt_header }
    }

    /// Signs `claims` as an RFC 9068 access token (`typ: at+jwt`).
    pub fn sign_access_token(&self, claims: &impl Serialize) -> Result<String, KeyError> {
        self.sign_with_header(&self.at_jwt_header, claims)
    }

    /// The encoded `at+jwt` header of this key.
    pub(crate) fn header_b64(&self) -> &Arc<str> {
        &self.at_jwt_header
    }

    /// Signs an access token given its raw JSON claims; returns the compact
    /// serialization, completed in place after the signing input, and the
    /// raw signature (the cache keeps the parts, see `engine::mint::Minted`).
    pub(crate) fn sign_payload(&self, payload: &[u8]) -> Result<(String, Vec<u8>), KeyError> {
        self.sign_compact(&self.at_jwt_header, payload)
    }

    /// `header_b64` `.` base64url(`payload`), signed: the compact token and
    /// the raw signature.
    fn sign_compact(&self, header_b64: &str, payload: &[u8]) -> Result<(String, Vec<u8>), KeyError> {
        let b64 = |n: usize| n.div_ceil(3) * 4;
        let room = header_b64.len() + 1 + b64(payload.len()) + 1 + b64(self.signature_len());
        let mut token = String::with_capacity(room);
        token.push_str(header_b64);
        token.push('.');
        // The request path's encoder (SIMD, issue 17); the same text as `base64`'s.
        base64_simd::URL_SAFE_NO_PAD.encode_append(payload, &mut token);
        let sig = self.sign_raw(token.as_bytes())?;
        token.push('.');
        base64_simd::URL_SAFE_NO_PAD.encode_append(&sig, &mut token);
        Ok((token, sig))
    }

    /// Bytes of a raw signature of this key.
    fn signature_len(&self) -> usize {
        match &self.material {
            KeyMaterial::Es256(_) | KeyMaterial::EdDsa(_) => 64,
            KeyMaterial::Rs256(k) => k.public_modulus_len(),
        }
    }

    /// Signs with another `typ` (the development IdP mimics IdPs that send `JWT`).
    pub fn sign_typed(&self, typ: &str, claims: &impl Serialize) -> Result<String, KeyError> {
        let header = json!({"alg": self.alg.as_str(), "typ": typ, "kid": self.kid});
        self.sign_with_header(&URL_SAFE_NO_PAD.encode(header.to_string()), claims)
    }

    fn sign_with_header(&self, header_b64: &str, claims: &impl Serialize) -> Result<String, KeyError> {
        let payload = serde_json::to_vec(claims).map_err(|e| KeyError::Encode(e.to_string()))?;
        self.sign_compact(header_b64, &payload).map(|(token, _)| token)
    }

    fn sign_raw(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        match &self.material {
            KeyMaterial::Es256(k) => {
                k.sign(&self.rng, message).map(|s| s.as_ref().to_vec()).map_err(|_| KeyError::Sign)
            }
            KeyMaterial::Rs256(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &self.rng, message, &mut sig).map_err(|_| KeyError::Sign)?;
                Ok(sig)
            }
            KeyMaterial::EdDsa(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }

    /// The public half as a JWK.
    pub fn public_jwk(&self) -> Value {
        let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
        let mut jwk = match &self.material {
            KeyMaterial::Es256(k) => {
                // Uncompressed SEC1 point: 0x04 || x (32) || y (32).
                let point = k.public_key().as_ref();
                json!({"kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..65])})
            }
            KeyMaterial::Rs256(k) => {
                let public = k.public_key();
                json!({"kty": "RSA", "n": b64(public.modulus().big_endian_without_leading_zero()),
                       "e": b64(public.exponent().big_endian_without_leading_zero())})
            }
            KeyMaterial::EdDsa(k) => json!({"kty": "OKP", "crv": "Ed25519", "x": b64(k.public_key().as_ref())}),
        };
        let obj = jwk.as_object_mut().expect("json! object");
        obj.insert("kid".into(), Value::String(self.kid.clone()));
        obj.insert("alg".into(), Value::String(self.alg.as_str().into()));
        obj.insert("use".into(), Value::String("sig".into()));
        jwk
    }
}

fn generate(alg: SignAlg) -> Result<KeyMaterial, String> {
    let failed = |_| format!("could not generate a {} key", alg.as_str());
    Ok(match alg {
        SignAlg::ES256 => {
            KeyMaterial::Es256(EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).map_err(failed)?)
        }
        SignAlg::RS256 => KeyMaterial::Rs256(RsaKeyPair::generate(KeySize::Rsa2048).map_err(failed)?),
        SignAlg::EdDSA => KeyMaterial::EdDsa(Ed25519KeyPair::generate().map_err(failed)?),
    })
}

fn parse_pem(alg: SignAlg, text: &[u8], path: &Path) -> Result<KeyMaterial, String> {
    let block = pem::parse(text).map_err(|e| format!("{} is not a PEM file: {e}", path.display()))?;
    let der = block.contents();
    let tag = block.tag();
    let rejected = |e: aws_lc_rs::error::KeyRejected| {
        format!("{} ({tag}) is not a valid {} private key: {e}", path.display(), alg.as_str())
    };
    Ok(match (alg, tag) {
        (SignAlg::ES256, "PRIVATE KEY" | "EC PRIVATE KEY") => KeyMaterial::Es256(
            EcdsaKeyPair::from_private_key_der(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, der).map_err(rejected)?,
        ),
        (SignAlg::RS256, "PRIVATE KEY") => {
            KeyMaterial::Rs256(check_rsa(RsaKeyPair::from_pkcs8(der).map_err(rejected)?)?)
        }
        (SignAlg::RS256, "RSA PRIVATE KEY") => {
            KeyMaterial::Rs256(check_rsa(RsaKeyPair::from_der(der).map_err(rejected)?)?)
        }
        (SignAlg::EdDSA, "PRIVATE KEY") => {
            KeyMaterial::EdDsa(Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(rejected)?)
        }
        (_, tag) => {
            return Err(format!(
                "{} holds a {tag:?} PEM block, which is not a {} private key (expected PKCS#8 \"PRIVATE KEY\")",
                path.display(),
                alg.as_str()
            ));
        }
    })
}

fn check_rsa(key: RsaKeyPair) -> Result<RsaKeyPair, String> {
    if key.public_modulus_len() < 256 {
        return Err(format!("RSA key is {} bits; at least 2048 are required", key.public_modulus_len() * 8));
    }
    Ok(key)
}

/// All of stsgate's keys: the active one signs, all are published.
pub struct KeyRing {
    active: Arc<Signer>,
    all: Vec<Arc<Signer>>,
    jwks_json: String,
}

impl KeyRing {
    pub(crate) fn load(cfg: &Signing) -> Result<KeyRing, KeyError> {
        KeyRing::load_keeping(cfg, None)
    }

    /// Like `load`, but an `ephemeral` key that `running` (the running
    /// configuration and its ring) declares too, same kid and alg, keeps its
    /// key: it lives as long as the process, so tokens it signed stay
    /// verifiable across reloads.
    pub(crate) fn load_keeping(cfg: &Signing, running: Option<(&Signing, &KeyRing)>) -> Result<KeyRing, KeyError> {
        let kept = |k: &SigningKey| {
            let (was, ring) = running.filter(|_| k.ephemeral)?;
            let was_ephemeral = was.keys.iter().any(|w| w.ephemeral && w.kid == k.kid && w.alg == k.alg);
            ring.signers().iter().find(|s| was_ephemeral && s.kid == k.kid && s.alg == k.alg).cloned()
        };
        let all = cfg
            .keys
            .iter()
            .map(|k| match kept(k) {
                Some(signer) => Ok(signer),
                None => Signer::load(k).map(Arc::new),
            })
            .collect::<Result<Vec<_>, _>>()?;
        KeyRing::from_signers(all, cfg.active_kid())
    }

    pub(crate) fn from_signers(all: Vec<Arc<Signer>>, active_kid: &str) -> Result<KeyRing, KeyError> {
        let active = all
            .iter()
            .find(|s| s.kid == active_kid)
            .cloned()
            .ok_or_else(|| KeyError::BadKey { kid: active_kid.into(), reason: "no such key".into() })?;
        let keys: Vec<Value> = all.iter().map(|s| s.public_jwk()).collect();
        let jwks_json = json!({ "keys": keys }).to_string();
        Ok(KeyRing { active, all, jwks_json })
    }

    pub fn active(&self) -> &Arc<Signer> {
        &self.active
    }

    /// Position of the active key in `signers()`.
    pub(crate) fn active_index(&self) -> usize {
        self.all.iter().position(|s| Arc::ptr_eq(s, &self.active)).unwrap_or(0)
    }

    pub(crate) fn signers(&self) -> &[Arc<Signer>] {
        &self.all
    }

    /// The public JWKS document, rendered once.
    pub(crate) fn jwks_json(&self) -> &str {
        &self.jwks_json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(alg: SignAlg) {
        let signer = Signer::generate("k", alg).unwrap();
        let claims = json!({"sub": "alice", "exp": 4_000_000_000i64, "aud": "x"});
        let token = signer.sign_access_token(&claims).unwrap();
        let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_value(json!({"keys": [signer.public_jwk()]})).unwrap();
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwks.keys[0]).unwrap();
        let jalg = match alg {
            SignAlg::ES256 => jsonwebtoken::Algorithm::ES256,
            SignAlg::RS256 => jsonwebtoken::Algorithm::RS256,
            SignAlg::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        };
        let mut v = jsonwebtoken::Validation::new(jalg);
        v.set_audience(&["x"]);
        let data = jsonwebtoken::decode::<Value>(&token, &key, &v).unwrap();
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.header.typ.as_deref(), Some("at+jwt"));
        assert_eq!(data.header.kid.as_deref(), Some("k"));
    }

    #[test]
    fn every_signing_algorithm_verifies_with_its_published_jwk() {
        roundtrip(SignAlg::ES256);
        roundtrip(SignAlg::EdDSA);
        roundtrip(SignAlg::RS256);
    }
}
