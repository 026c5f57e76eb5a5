//! The RFC 7523 §2.1 JWT bearer grant at the token endpoint
//! (`grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`, `assertion`):
//! which assertions are accepted before the rules see them as a subject token.
//!
//! An assertion is believed from one of two signers:
//! - a trusted issuer: validated exactly like a subject token (the issuer's
//!   keys, its algorithms, `typ`, leeway and `audiences`, RFC 8725);
//! - the authenticated client itself, with a key of its `private_key_jwt`
//!   JWKS, when its `iss` is that client and a rule listing `client` in
//!   `match.issuers` names the client in `match.clients`. The subject is
//!   then named in the client's namespace (`sub_id` iss = the client id).
//!
//! Either way (RFC 7523 §3): `aud` names stsgate (its issuer or its token
//! endpoint URL), `exp` is required and at most `MAX_AHEAD` seconds ahead,
//! `nbf`/`iat` are honoured, and a `jti` is required and accepted once
//! (`engine.replay`, shared with client assertions under its own key
//! domain). Every failure is `invalid_grant` (RFC 7523 §3.1); a replay store
//! that cannot answer is 503, never a replay accepted.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use tracing::Level;

use crate::api::refusal::{Class, Condition, Credential, Door, Refusal};
use crate::config::VerifyAlg;
use crate::digest::KeyBuilder;
use crate::engine::Engine;
use crate::engine::clients::{Clients, MAX_ASSERTION_LIFETIME};
use crate::trust::claims::{Claims, numeric_date, scopes_of};
use crate::trust::validator::{TokenError, Validated, json_shape};

pub(crate) const GRANT_TYPE_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Clock skew allowed on a client-signed assertion's `exp`, `nbf` and `iat`,
/// and on the `exp` bound below (the signer's clock may run ahead).
pub(crate) const LEEWAY: i64 = 30;

/// The furthest ahead an assertion's `exp` may be: the client assertion
/// bound (5 minutes) plus `LEEWAY`. The minted token never outlives it.
pub(crate) const MAX_AHEAD: i64 = MAX_ASSERTION_LIFETIME + LEEWAY;

/// A checked assertion, and who vouches for its subject.
#[derive(Debug)]
pub(crate) enum Asserted {
    /// Signed by a trusted issuer: the engine exchanges it as a subject token.
    Issuer,
    /// Signed by the authenticated client with its own key.
    Client(Arc<Validated>),
}

/// An assertion refused: `invalid_grant`, described without its contents.
pub(crate) fn bad_assertion(e: &TokenError) -> Refusal {
    if e.is_unavailable() {
        return Refusal::token(e, Credential::Subject, Door::Token);
    }
    Refusal::new(Class::Unauthenticated, Condition::BadGrant, e.label(), format!("assertion: {e}"))
        .logged(Level::DEBUG, format!("JWT bearer assertion refused: {e}"))
}

fn refused(label: &'static str, why: &'static str) -> Refusal {
    Refusal::new(Class::Unauthenticated, Condition::BadGrant, label, format!("assertion: {why}"))
        .logged(Level::DEBUG, format!("JWT bearer assertion refused: {why}"))
}

/// Checks `assertion`, presented by `client` (if authenticated), and
/// records its `jti` as used.
pub(crate) async fn check(
    engine: &Engine,
    assertion: &str,
    client: Option<&str>,
    now: i64,
) -> Result<Asserted, Refusal> {
    let by_client =
        client.filter(|c| Clients::assertion_issuer(assertion).as_deref() == Some(*c) && may_assert(engine, c));
    let (subject, asserted) = match by_client {
        Some(c) => {
            let v = verify_client_signed(engine, assertion, c, now).map_err(|e| bad_assertion(&e))?;
            let v = Arc::new(v);
            (v.clone(), Asserted::Client(v))
        }
        None => {
            let epoch = engine.issuers.key_epoch();
            let v = engine.validate(assertion, now, epoch).await.map_err(|e| bad_assertion(&e))?;
            (v, Asserted::Issuer)
        }
    };
    let cfg = &engine.cfg;
    let endpoint = format!("{}{}", cfg.issuer.trim_end_matches('/'), cfg.token_endpoint.path);
    if !subject.claims.aud().any(|a| a == cfg.issuer || a == endpoint) {
        return Err(refused("assertion_audience", "aud must name stsgate's issuer or token endpoint"));
    }
    if subject.exp > now + MAX_AHEAD {
        return Err(refused("assertion_lifetime", "exp is more than 5 minutes ahead"));
    }
    let Some(jti) = subject.claims.jti.as_deref().filter(|j| !j.is_empty()) else {
        return Err(refused("assertion_jti", "jti is required"));
    };
    // The signer's namespace: two issuers may use the same jti.
    let key = KeyBuilder::new(b"stsgate jwt bearer assertion").fields(&[subject.issuer.as_bytes(), jti.as_bytes()]);
    match engine.replay.first_use(key.finish(), subject.exp, now).await {
        Ok(true) => Ok(asserted),
        Ok(false) => Err(refused("assertion_replayed", "it was used before (its jti was seen)")),
        Err(e) => Err(Refusal::replay_store_down().logged(Level::WARN, format!("JWT bearer assertion refused: {e}"))),
    }
}

/// Whether some rule lets `client` assert subjects itself.
fn may_assert(engine: &Engine, client: &str) -> bool {
    engine
        .cfg
        .rules
        .iter()
        .any(|r| r.when.admits_client_assertions() && r.when.clients.iter().any(|g| g.matches(client)))
}

/// RFC 8725 checks, the signature with `client`'s key, then the time claims.
fn verify_client_signed(engine: &Engine, token: &str, client: &str, now: i64) -> Result<Validated, TokenError> {
    let max = engine.cfg.tokens.max_token_bytes;
    if token.len() > max {
        return Err(TokenError::TooLarge(max));
    }
    let mut parts = token.split('.');
    let (Some(h64), Some(p64), Some(s64), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    let header: Map<String, Value> = decode_json(h64).ok_or(TokenError::Malformed("header is not base64url JSON"))?;
    let alg = check_header(&header)?;
    let kid = header.get("kid").and_then(Value::as_str);
    let key = engine
        .clients
        .signing_key_of(client, kid, alg)
        .ok_or(TokenError::Malformed("no key of the client fits its kid and alg"))?;
    let signature = URL_SAFE_NO_PAD.decode(s64).map_err(|_| TokenError::BadSignature)?;
    if !key.verify(alg, &token.as_bytes()[..h64.len() + 1 + p64.len()], &signature) {
        return Err(TokenError::BadSignature);
    }
    let payload = URL_SAFE_NO_PAD.decode(p64).map_err(|_| TokenError::Malformed("payload is not base64url"))?;
    // The same bounds on the claims' shape as for any subject token.
    json_shape::check(&payload).map_err(TokenError::Malformed)?;
    let claims = String::from_utf8(payload)
        .ok()
        .and_then(|text| Claims::parse(text).ok())
        .ok_or(TokenError::Malformed("payload is not JSON claims"))?;
    if claims.iss.as_deref() != Some(client) {
        return Err(TokenError::Claim("iss"));
    }
    let exp = numeric_date(&claims.exp).ok_or(TokenError::Claim("exp"))?;
    if now > exp + LEEWAY {
        return Err(TokenError::Expired);
    }
    if claims.nbf.is_some() && numeric_date(&claims.nbf).ok_or(TokenError::Claim("nbf"))? > now + LEEWAY {
        return Err(TokenError::NotYetValid);
    }
    if claims.iat.is_some() && numeric_date(&claims.iat).ok_or(TokenError::Claim("iat"))? > now + LEEWAY {
        return Err(TokenError::IssuedInFuture);
    }
    let sub = claims.sub.clone().filter(|s| !s.is_empty()).ok_or(TokenError::Claim("sub"))?;
    let scopes = scopes_of(&claims).map_err(TokenError::Claim)?;
    let client_id = claims.client_id.clone().or_else(|| claims.azp.clone());
    Ok(Validated { issuer: client.to_owned(), sub, exp, scopes, client_id, claims, own_sub_id: None })
}

/// The JOSE header as the validator reads a subject token's (RFC 8725):
/// an asymmetric algorithm stsgate verifies, no header-supplied keys, no
/// `crit`, not encrypted, and a `typ` (if any) of a plain or access token JWT.
fn check_header(header: &Map<String, Value>) -> Result<VerifyAlg, TokenError> {
    if header.contains_key("enc") {
        return Err(TokenError::Encrypted);
    }
    let alg = header.get("alg").and_then(Value::as_str).ok_or(TokenError::Malformed("no alg"))?;
    if alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgNone);
    }
    if alg.starts_with("HS") {
        return Err(TokenError::Symmetric);
    }
    let alg = VerifyAlg::from_name(alg).ok_or(TokenError::UnknownAlg)?;
    // Present at all, whatever the value (null included).
    for name in ["jku", "x5u", "jwk", "x5c"] {
        if header.contains_key(name) {
            return Err(TokenError::HeaderKey(name));
        }
    }
    if header.contains_key("crit") {
        return Err(TokenError::Crit);
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(t)) => {
            let t = t.to_ascii_lowercase();
            if !matches!(t.strip_prefix("application/").unwrap_or(&t), "jwt" | "at+jwt") {
                return Err(TokenError::WrongType);
            }
        }
        Some(_) => return Err(TokenError::WrongType),
    }
    Ok(alg)
}

fn decode_json<T: serde::de::DeserializeOwned>(b64: &str) -> Option<T> {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(b64).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(v: Value) -> Result<VerifyAlg, TokenError> {
        check_header(v.as_object().unwrap())
    }

    #[test]
    fn client_signed_headers_follow_rfc_8725() {
        use serde_json::json;
        assert_eq!(header(json!({"alg": "ES256", "typ": "JWT"})), Ok(VerifyAlg::ES256));
        assert_eq!(header(json!({"alg": "none"})), Err(TokenError::AlgNone));
        assert_eq!(header(json!({"alg": "HS256"})), Err(TokenError::Symmetric));
        assert_eq!(header(json!({"alg": "ES256", "jku": null})), Err(TokenError::HeaderKey("jku")));
        assert_eq!(header(json!({"alg": "ES256", "x5c": []})), Err(TokenError::HeaderKey("x5c")));
        assert_eq!(header(json!({"alg": "ES256", "crit": ["b64"]})), Err(TokenError::Crit));
        assert_eq!(header(json!({"alg": "ES256", "typ": "dpop+jwt"})), Err(TokenError::WrongType));
        assert_eq!(header(json!({"alg": "ES256", "enc": "A128GCM"})), Err(TokenError::Encrypted));
        assert_eq!(header(json!({"alg": "XX1"})), Err(TokenError::UnknownAlg));
    }

    #[test]
    fn numeric_dates_and_scopes() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).unwrap();
        assert_eq!(numeric_date(&Some(n("12.9"))), Some(12));
        assert_eq!(numeric_date(&Some(n("1e300"))), None);
        let claims = Claims::from_json(r#"{"scope":"b a","scp":["a c"]}"#).unwrap();
        assert_eq!(scopes_of(&claims).unwrap(), ["a", "b", "c"]);
        let claims = Claims::from_json(r#"{"scope":1}"#).unwrap();
        assert_eq!(scopes_of(&claims), Err("scope"));
    }
}
