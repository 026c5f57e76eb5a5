//! JOSE helpers independent of stsgate: base64url, raw JWS signing (any
//! header, any algorithm), forged tokens (`alg: none`, HS256 alg confusion),
//! IdP keys generated at test time and the JWKS documents that publish them.

use std::sync::Arc;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Value, json};

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn b64json(v: &Value) -> String {
    b64(v.to_string().as_bytes())
}

/// `base64url(header).base64url(claims).signature` signed with `key`/`alg`,
/// whatever the header claims the algorithm is.
pub fn sign_raw(header: &Value, claims: &Value, key: &EncodingKey, alg: Algorithm) -> String {
    let signing_input = format!("{}.{}", b64json(header), b64json(claims));
    let sig = jsonwebtoken::crypto::sign(signing_input.as_bytes(), key, alg).expect("signing failed");
    format!("{signing_input}.{sig}")
}

/// An unsigned token: `alg: none` and an empty signature.
pub fn forge_none(claims: &Value) -> String {
    format!("{}.{}.", b64json(&json!({"alg": "none", "typ": "JWT"})), b64json(claims))
}

/// An HS256 token whose HMAC secret is `secret` (the alg-confusion attack
/// uses the issuer's public key as the secret).
pub fn forge_hs256(secret: &[u8], kid: Option<&str>, claims: &Value) -> String {
    let mut header = json!({"alg": "HS256", "typ": "JWT"});
    if let Some(kid) = kid {
        header["kid"] = json!(kid);
    }
    sign_raw(&header, claims, &EncodingKey::from_secret(secret), Algorithm::HS256)
}

/// Decodes the (unverified) header and payload of a compact JWT.
pub fn peek(token: &str) -> (Value, Value) {
    let mut parts = token.split('.');
    let mut decode = |what: &str| -> Value {
        let part = parts.next().unwrap_or_else(|| panic!("token has no {what}: {token}"));
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).expect("base64url")).expect("json")
    };
    let h = decode("header");
    let p = decode("payload");
    (h, p)
}

/// Minimal DER reader: (tag, contents, rest).
fn der_tlv(input: &[u8]) -> (u8, &[u8], &[u8]) {
    let tag = input[0];
    let (len, hdr) = if input[1] < 0x80 {
        (input[1] as usize, 2)
    } else {
        let n = (input[1] & 0x7f) as usize;
        let len = input[2..2 + n].iter().fold(0usize, |l, b| (l << 8) | *b as usize);
        (len, 2 + n)
    };
    (tag, &input[hdr..hdr + len], &input[hdr + len..])
}

/// jsonwebtoken's aws-lc backend wants PKCS#1 `RSAPrivateKey` DER: the OCTET
/// STRING inside PKCS#8 `PrivateKeyInfo { version, algorithm, privateKey }`.
fn pkcs1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
    let (tag, seq, _) = der_tlv(pkcs8);
    assert_eq!(tag, 0x30, "PKCS#8 SEQUENCE");
    let (tag, _version, rest) = der_tlv(seq);
    assert_eq!(tag, 0x02, "PKCS#8 version");
    let (tag, _alg, rest) = der_tlv(rest);
    assert_eq!(tag, 0x30, "PKCS#8 algorithm");
    let (tag, key, _) = der_tlv(rest);
    assert_eq!(tag, 0x04, "PKCS#8 privateKey");
    key.to_vec()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

/// A private key of the mock IdP, generated at test time.
pub struct IdpKey {
    pub kid: String,
    pub alg: Algorithm,
    encoding: EncodingKey,
    /// The public JWK, as the IdP publishes it.
    pub jwk: Value,
    /// The public key as PEM (SubjectPublicKeyInfo), e.g. for alg confusion.
    pub public_pem: String,
}

impl std::fmt::Debug for IdpKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdpKey({}, {:?})", self.kid, self.alg)
    }
}

impl IdpKey {
    /// Generates a key with aws-lc-rs, exports it as PKCS#8 and loads it into
    /// jsonwebtoken; the public JWK is built from the key's public half.
    pub fn generate(kind: KeyKind, kid: &str) -> Arc<IdpKey> {
        let pem_of = |der: &[u8]| pem::encode(&pem::Pem::new("PUBLIC KEY", der.to_vec()));
        let (alg, encoding, jwk, public_pem) = match kind {
            KeyKind::Rsa => {
                let kp = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("rsa keygen");
                let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der<'_>>::as_der(&kp).expect("pkcs8");
                let encoding = EncodingKey::from_rsa_der(&pkcs1_from_pkcs8(pkcs8.as_ref()));
                let public = kp.public_key();
                let jwk = json!({"kty": "RSA", "use": "sig", "alg": "RS256",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero())});
                let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(public).expect("spki");
                (Algorithm::RS256, encoding, jwk, pem_of(spki.as_ref()))
            }
            KeyKind::P256 | KeyKind::P384 => {
                let (signing, alg, crv, n) = if kind == KeyKind::P256 {
                    (&ECDSA_P256_SHA256_FIXED_SIGNING, Algorithm::ES256, "P-256", 32)
                } else {
                    (&ECDSA_P384_SHA384_FIXED_SIGNING, Algorithm::ES384, "P-384", 48)
                };
                let kp = EcdsaKeyPair::generate(signing).expect("ec keygen");
                let pkcs8 = kp.to_pkcs8v1().expect("pkcs8");
                let encoding = EncodingKey::from_ec_der(pkcs8.as_ref());
                let point = kp.public_key().as_ref();
                let alg_name = if alg == Algorithm::ES256 { "ES256" } else { "ES384" };
                let jwk = json!({"kty": "EC", "crv": crv, "use": "sig", "alg": alg_name,
                    "x": b64(&point[1..1 + n]), "y": b64(&point[1 + n..1 + 2 * n])});
                let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(kp.public_key()).expect("spki");
                (alg, encoding, jwk, pem_of(spki.as_ref()))
            }
            KeyKind::Ed25519 => {
                let kp = Ed25519KeyPair::generate().expect("ed25519 keygen");
                let pkcs8 = kp.to_pkcs8v1().expect("pkcs8");
                let encoding = EncodingKey::from_ed_der(pkcs8.as_ref());
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "use": "sig", "alg": "EdDSA",
                    "x": b64(kp.public_key().as_ref())});
                let spki = AsDer::<aws_lc_rs::encoding::PublicKeyX509Der<'_>>::as_der(kp.public_key()).expect("spki");
                (Algorithm::EdDSA, encoding, jwk, pem_of(spki.as_ref()))
            }
        };
        let mut jwk = jwk;
        jwk["kid"] = json!(kid);
        Arc::new(IdpKey { kid: kid.to_owned(), alg, encoding, jwk, public_pem })
    }

    pub fn alg_name(&self) -> &'static str {
        match self.alg {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
            other => panic!("unexpected {other:?}"),
        }
    }

    /// The header an IdP would send: `{"alg", "typ": "JWT", "kid"}`.
    pub fn header(&self) -> Value {
        json!({"alg": self.alg_name(), "typ": "JWT", "kid": self.kid})
    }

    /// Signs `claims` under `header` with this key (the header is not checked).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        sign_raw(header, claims, &self.encoding, self.alg)
    }

    pub fn token(&self, claims: &Value) -> String {
        self.sign(&self.header(), claims)
    }
}

/// A JWKS document of public keys plus any extra raw entries.
pub fn jwks_doc(keys: &[Arc<IdpKey>], extra: &[Value]) -> Value {
    let mut all: Vec<Value> = extra.to_vec();
    all.extend(keys.iter().map(|k| k.jwk.clone()));
    json!({ "keys": all })
}

/// Entries real IdPs publish beside their signing keys, none usable by stsgate.
pub fn junk_jwks_entries() -> Vec<Value> {
    let enc = IdpKey::generate(KeyKind::P256, "enc-1");
    let mut enc_jwk = enc.jwk.clone();
    enc_jwk["use"] = json!("enc");
    enc_jwk.as_object_mut().unwrap().remove("alg");
    let mismatched = IdpKey::generate(KeyKind::P256, "mismatch-1");
    let mut mismatched_jwk = mismatched.jwk.clone();
    mismatched_jwk["alg"] = json!("RS256");
    vec![
        json!({"kty": "oct", "kid": "hmac-1", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQ"}),
        enc_jwk,
        mismatched_jwk,
        json!({"kty": "EC", "crv": "secp256k1", "kid": "k1-curve", "x": "AA", "y": "AA"}),
        json!({"kty": "RSA", "kid": "broken-rsa", "n": "!!!", "e": "AQAB"}),
        json!({"kty": "weird", "kid": "weird-1"}),
        json!("not even an object"),
    ]
}
