//! `stsgate inspect TOKEN`: what a token says and whether stsgate would
//! believe it now. It decodes the JOSE header and the claims without trusting
//! them, shows the time claims against the clock and the `act` chain as a
//! tree (most recent actor first), and, given a configuration, names the
//! trusted issuer the token claims to come from and validates it exactly as
//! a subject token is validated (stsgate's own tokens with its own keys).
//! The signature is never printed.

use std::fmt::Write as _;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use crate::clock::now_unix;
use crate::config::Config;
use crate::engine::Engine;
use crate::trust::issuer::http_client;
use crate::trust::own::OwnIssuer;
use crate::trust::validator::Validator;

/// The decoded token and, with a configuration, the verdict.
#[derive(Debug)]
pub(crate) struct Inspection {
    pub(crate) header: Map<String, Value>,
    pub(crate) claims: Map<String, Value>,
    /// Which configured issuer `iss` names: a trusted issuer, stsgate itself, or none.
    pub(crate) issuer: Option<IssuerMatch>,
    /// `Ok` when the token validates now as a subject token; why not otherwise.
    pub(crate) verified: Option<Result<(), String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum IssuerMatch {
    Trusted(usize),
    Own,
    Unknown,
}

/// A JWT's JOSE header and claims, as decoded.
type HeaderAndClaims = (Map<String, Value>, Map<String, Value>);

/// Decodes a compact JWS without verifying anything.
pub(crate) fn decode(token: &str) -> Result<HeaderAndClaims, String> {
    let token = token.trim();
    let parts: Vec<&str> = token.split('.').collect();
    match parts.len() {
        3 => {}
        5 => return Err("a JWE (five parts): an encrypted token, which stsgate does not read".into()),
        1 => {
            return Err(format!(
                "not a JWT ({} bytes, no dots): an opaque token, which only its issuer can read \
                 (by introspection)",
                token.len()
            ));
        }
        n => return Err(format!("not a compact JWT: {n} dot-separated parts, expected 3")),
    }
    let segment = |name: &str, b64: &str| -> Result<Map<String, Value>, String> {
        let bytes = URL_SAFE_NO_PAD.decode(b64).map_err(|e| format!("the {name} is not base64url: {e}"))?;
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err(format!("the {name} is JSON but not an object")),
            Err(e) => Err(format!("the {name} is not JSON: {e}")),
        }
    };
    Ok((segment("header", parts[0])?, segment("claims", parts[1])?))
}

/// Decodes `token` and, with `cfg`, fetches the trusted issuers' keys once and
/// validates it.
pub(crate) async fn inspect(token: &str, cfg: Option<Config>) -> Result<Inspection, String> {
    let (header, claims) = decode(token)?;
    let Some(cfg) = cfg else {
        return Ok(Inspection { header, claims, issuer: None, verified: None });
    };
    crate::install_crypto_provider();
    let iss = claims.get("iss").and_then(Value::as_str);
    let issuer = Some(match iss {
        Some(i) if i == cfg.issuer => IssuerMatch::Own,
        Some(i) => {
            cfg.trusted_issuers.iter().position(|t| t.issuer == i).map_or(IssuerMatch::Unknown, IssuerMatch::Trusted)
        }
        None => IssuerMatch::Unknown,
    });
    let http = http_client().map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    // Inspecting writes no audit event: the configured audit file is not opened.
    let cfg = Config { audit: Default::default(), ..cfg };
    let engine = Engine::load(Arc::new(cfg), http, None).map_err(|e| e.to_string())?;
    let verified = if issuer == Some(IssuerMatch::Unknown) {
        Err(format!("{} is not a trusted issuer", iss.map_or("a token without iss".to_owned(), |i| format!("{i:?}"))))
    } else {
        if let Some(IssuerMatch::Trusted(_)) = issuer {
            // Only the issuer the token names; the others are not needed.
            if let Some(found) = iss.and_then(|i| engine.issuers.get(i)) {
                if let Err(e) = found.refresh().await {
                    return Ok(Inspection {
                        header,
                        claims,
                        issuer,
                        verified: Some(Err(format!("its issuer's keys cannot be read: {e}"))),
                    });
                }
            }
        }
        // Own tokens verify with this configuration's signing keys (an
        // ephemeral key is a new one in this process: nothing it did not sign verifies).
        let own = OwnIssuer::new(&engine.cfg.issuer, &engine.keys);
        let validator = Validator::new(engine.issuers.clone(), engine.cfg.tokens.max_token_bytes).with_own(Some(own));
        validator.validate_at(token.trim(), now_unix()).await.map(|_| ()).map_err(|e| e.to_string())
    };
    Ok(Inspection { header, claims, issuer, verified: Some(verified) })
}

/// The inspection as JSON (`--json`).
pub(crate) fn to_json(i: &Inspection, cfg_issuers: &[String]) -> Value {
    let issuer = i.issuer.as_ref().map(|m| match m {
        IssuerMatch::Trusted(n) => json!({"trusted_issuer": cfg_issuers.get(*n)}),
        IssuerMatch::Own => json!({"own": true}),
        IssuerMatch::Unknown => json!({"trusted": false}),
    });
    let verified = i.verified.as_ref().map(|v| match v {
        Ok(()) => json!({"valid": true}),
        Err(why) => json!({"valid": false, "reason": why}),
    });
    json!({
        "header": i.header,
        "claims": i.claims,
        "act_chain": act_chain(&i.claims),
        "issuer": issuer,
        "verification": verified,
    })
}

/// The inspection for a person.
pub(crate) fn to_text(i: &Inspection, cfg_issuers: &[String], now: i64) -> String {
    let mut out = String::new();
    let pretty = |m: &Map<String, Value>| serde_json::to_string_pretty(m).unwrap_or_default();
    let _ = writeln!(out, "header:\n{}", indent(&pretty(&i.header)));
    let _ = writeln!(out, "claims:\n{}", indent(&pretty(&i.claims)));
    for name in ["iat", "nbf", "exp"] {
        if let Some(t) = i.claims.get(name).and_then(Value::as_i64) {
            let _ = writeln!(out, "{name}: {} ({})", rfc3339(t), relative(t, now));
        }
    }
    let chain = act_chain(&i.claims);
    if !chain.is_empty() {
        let _ = writeln!(out, "act chain (the current actor first, then who acted before it):");
        for (depth, actor) in chain.iter().enumerate() {
            let _ = writeln!(out, "{}└─ {actor}", "   ".repeat(depth + 1));
        }
    }
    match &i.issuer {
        None => {
            let _ = writeln!(out, "issuer: not checked (give --config to check it against a configuration)");
        }
        Some(IssuerMatch::Trusted(n)) => {
            let name = cfg_issuers.get(*n).map_or("?", String::as_str);
            let _ = writeln!(out, "issuer: trusted_issuers[{n}] ({name})");
        }
        Some(IssuerMatch::Own) => {
            let _ = writeln!(out, "issuer: stsgate itself (this configuration's issuer)");
        }
        Some(IssuerMatch::Unknown) => {
            let _ = writeln!(out, "issuer: not a trusted issuer of this configuration");
        }
    }
    match &i.verified {
        None => {}
        Some(Ok(())) => {
            let _ = writeln!(out, "verification: valid now as a subject token");
        }
        Some(Err(why)) => {
            let _ = writeln!(out, "verification: refused: {why}");
        }
    }
    out
}

/// The `act` chain, outermost (current) actor first: each actor's `sub`,
/// with its `client_id` or `iss` when it has one.
pub(crate) fn act_chain(claims: &Map<String, Value>) -> Vec<String> {
    let mut chain = Vec::new();
    let mut act = claims.get("act");
    // A chain deeper than any stsgate mints is shown up to a bound.
    while let Some(Value::Object(a)) = act {
        if chain.len() == 32 {
            chain.push("… (deeper than 32)".to_owned());
            break;
        }
        let sub = a.get("sub").and_then(Value::as_str).unwrap_or("(no sub)");
        let mut line = sub.to_owned();
        for extra in ["client_id", "iss"] {
            if let Some(v) = a.get(extra).and_then(Value::as_str) {
                let _ = write!(line, " ({extra} {v})");
            }
        }
        chain.push(line);
        act = a.get("act");
    }
    chain
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}")).collect::<Vec<_>>().join("\n")
}

fn rfc3339(t: i64) -> String {
    u64::try_from(t)
        .ok()
        .map(|s| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .map_or_else(|| t.to_string(), |at| humantime::format_rfc3339_seconds(at).to_string())
}

fn relative(t: i64, now: i64) -> String {
    let d = |s: i64| humantime::format_duration(std::time::Duration::from_secs(s.unsigned_abs())).to_string();
    match t.cmp(&now) {
        std::cmp::Ordering::Greater => format!("in {}", d(t - now)),
        std::cmp::Ordering::Less => format!("{} ago", d(now - t)),
        std::cmp::Ordering::Equal => "now".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(header: &Value, claims: &Value) -> String {
        let enc = |v: &Value| URL_SAFE_NO_PAD.encode(v.to_string());
        format!("{}.{}.c2ln", enc(header), enc(claims))
    }

    #[test]
    fn decodes_without_trusting_and_shows_the_act_chain_outermost_first() {
        let claims = json!({"sub": "alice", "exp": 1_000_060, "act": {"sub": "orders", "client_id": "o",
                             "act": {"sub": "web"}}});
        let (header, claims) = decode(&jwt(&json!({"alg": "ES256", "kid": "k"}), &claims)).unwrap();
        assert_eq!(header["kid"], "k");
        assert_eq!(act_chain(&claims), ["orders (client_id o)", "web"]);
        let i = Inspection { header, claims, issuer: None, verified: None };
        let text = to_text(&i, &[], 1_000_000);
        assert!(text.contains("exp: 1970-01-12T13:47:40Z (in 1m)"), "{text}");
        assert!(text.contains("   └─ orders (client_id o)\n      └─ web"), "{text}");
        assert!(!text.contains("c2ln"), "the signature is never shown: {text}");
    }

    #[test]
    fn what_is_not_a_jwt_is_named() {
        assert!(decode("opaque-reference-token").unwrap_err().contains("opaque token"));
        assert!(decode("a.b.c.d.e").unwrap_err().contains("JWE"));
        assert!(decode("a.b").unwrap_err().contains("2 dot-separated parts"));
        assert!(decode("!!.e30.x").unwrap_err().contains("header is not base64url"));
        let array = format!("{}.e30.x", URL_SAFE_NO_PAD.encode("[1]"));
        assert!(decode(&array).unwrap_err().contains("header is JSON but not an object"));
    }

    #[test]
    fn a_hostile_act_chain_is_bounded() {
        let mut act = json!({"sub": "bottom"});
        for i in 0..100 {
            act = json!({"sub": format!("a{i}"), "act": act});
        }
        let chain = act_chain(json!({"act": act}).as_object().unwrap());
        assert_eq!(chain.len(), 33);
        assert!(chain[32].contains("deeper than 32"));
    }
}
