//! Client authentication at the token endpoint (RFC 6749 §2.3):
//! `client_secret_basic` (the `Authorization: Basic` header, id and secret
//! form-urlencoded before base64, §2.3.1), `client_secret_post`
//! (`client_id` + `client_secret` form parameters), `private_key_jwt`
//! (RFC 7523 §2.2: a JWT signed with one of the client's keys, checked in
//! `engine::clients`) and public clients
//! (`client_id` only), as `clients` configures each. One method per request
//! (two at once is `invalid_request`); every failure is the same 401
//! `invalid_client`, whose description never says whether the client exists
//! nor echoes what was sent. Repeated failures per client are rate limited
//! (`engine::clients`): 429 with `Retry-After`.
//!
//! `tls_client_auth` (RFC 8705 §2.1): `client_id` plus a client certificate,
//! taken from where `listen.http_client_cert` says: the TLS handshake of the
//! HTTP listener (verified against `listen.http_tls.client_ca`), or the last
//! element of `x-forwarded-client-cert` from a peer in `xfcc_trusted_peers`
//! only (the proxy that verified it). Anything else (no certificate, an XFCC
//! from another peer, two XFCC headers, one that cannot be read) is no
//! certificate: `invalid_client`, never a fallback to another source.

use std::borrow::Cow;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{HeaderMap, HeaderValue};
use base64::Engine as _;

use crate::api::callers::{XFCC_HEADER, xfcc_last_element};
use crate::api::refusal::Refusal;
use crate::clock::now_unix;
use crate::config::{ClientAuthMethod, ClientCertSource};
use crate::engine::Engine;
use crate::engine::client_certs::ClientCert;
use crate::engine::clients::{ClientAuthError, Clients};

/// RFC 7523 §2.2 `client_assertion_type`.
pub(crate) const ASSERTION_TYPE_JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// The client credentials a request carries.
#[derive(Debug, Default)]
pub(crate) struct Presented<'a> {
    /// The `Authorization` header, if any.
    pub(crate) authorization: Option<&'a HeaderValue>,
    pub(crate) client_id: Option<&'a str>,
    pub(crate) client_secret: Option<&'a str>,
    pub(crate) client_assertion: Option<&'a str>,
    pub(crate) client_assertion_type: Option<&'a str>,
    /// The request's client certificate (see [`client_cert`]).
    pub(crate) client_cert: CertSeen,
}

/// What the HTTP listener knows of the connection a request came on; in
/// every request's extensions.
#[derive(Debug, Clone)]
pub(crate) struct HttpPeer {
    /// The TCP peer.
    pub(crate) remote: SocketAddr,
    /// The leaf certificate (DER) the client presented in the TLS handshake
    /// and `listen.http_tls.client_ca` verified; none in plaintext or without one.
    pub(crate) cert: Option<Arc<[u8]>>,
}

/// A request's client certificate, or why it has none that is believed.
#[derive(Debug)]
pub(crate) struct CertSeen(pub(crate) Result<ClientCert, &'static str>);

impl Default for CertSeen {
    fn default() -> Self {
        CertSeen(Err("none presented"))
    }
}

/// The client certificate of a request, from the source
/// `listen.http_client_cert` names (read per request: a reload applies).
pub(crate) fn client_cert(engine: &Engine, peer: Option<&HttpPeer>, headers: &HeaderMap) -> CertSeen {
    CertSeen(match engine.cfg.listen.client_cert_source() {
        None => Err("stsgate takes client certificates from nowhere (listen.http_client_cert)"),
        Some(ClientCertSource::Tls) => match peer.and_then(|p| p.cert.as_deref()) {
            Some(der) => ClientCert::from_der(der),
            None => Err("none presented in the TLS handshake"),
        },
        Some(ClientCertSource::Xfcc) => {
            let trusted = engine.cfg.listen.http_client_cert.as_ref().map(|c| c.xfcc_trusted_peers.as_slice());
            match peer {
                Some(p) if trusted.unwrap_or_default().iter().any(|net| net.contains(p.remote.ip())) => {
                    forwarded_cert(headers)
                }
                _ => Err("x-forwarded-client-cert is not believed from this peer (listen.http_client_cert)"),
            }
        }
    })
}

/// The certificate of the last `x-forwarded-client-cert` element: its
/// `Cert` (URL-encoded PEM) when the proxy forwards it, else its `Subject`,
/// `URI` and `DNS` fields.
fn forwarded_cert(headers: &HeaderMap) -> Result<ClientCert, &'static str> {
    let mut values = headers.get_all(XFCC_HEADER).iter();
    let value = values.next().ok_or("a trusted peer sent no x-forwarded-client-cert")?;
    if values.next().is_some() {
        return Err("more than one x-forwarded-client-cert header");
    }
    let value = value.to_str().map_err(|_| "x-forwarded-client-cert is not visible ASCII")?;
    let pairs = xfcc_last_element(value)?;
    let all = |key: &str| -> Vec<&Cow<'_, str>> { pairs.iter().filter(|(k, _)| k == key).map(|(_, v)| v).collect() };
    if let [cert] = all("cert")[..] {
        let pem = percent_decode(cert).ok_or("x-forwarded-client-cert: Cert is not URL-encoded")?;
        let der = pem::parse(pem).map_err(|_| "x-forwarded-client-cert: Cert is not a PEM certificate")?;
        return ClientCert::from_der(der.contents());
    }
    let subject = match all("subject")[..] {
        [] => None,
        [s] => Some(s.as_ref()),
        _ => return Err("x-forwarded-client-cert: more than one Subject"),
    };
    let owned = |key| all(key).into_iter().map(|v| v.clone().into_owned()).collect::<Vec<_>>();
    let (uris, dns) = (owned("uri"), owned("dns"));
    if subject.is_none() && uris.is_empty() && dns.is_empty() {
        return Err("x-forwarded-client-cert names no Cert, Subject, URI or DNS");
    }
    ClientCert::from_fields(subject, uris, dns)
}

/// `%XX` escapes decoded (Envoy's URL encoding of the PEM); `+` stays `+`.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether the request tried HTTP Basic (its 401 then challenges Basic).
pub(crate) fn tried_basic(authorization: Option<&HeaderValue>) -> bool {
    authorization
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.get(..6))
        .is_some_and(|s| s.eq_ignore_ascii_case("basic "))
}

/// Authenticates the request's client: `Ok(Some(id))` for an authenticated
/// client, `Ok(None)` for a request without client authentication where
/// `token_endpoint.allow_unauthenticated` lets it through.
pub(crate) async fn authenticate(engine: &Engine, p: &Presented<'_>) -> Result<Option<String>, Refusal> {
    let assertion = p.client_assertion.is_some() || p.client_assertion_type.is_some();
    let methods = [p.authorization.is_some(), p.client_secret.is_some(), assertion];
    if methods.iter().filter(|m| **m).count() > 1 {
        return Err(Refusal::bad_request(
            "several_client_methods",
            "use one client authentication method per request (RFC 6749 §2.3)",
        ));
    }
    let clients = &engine.clients;
    let unauthenticated = engine.cfg.token_endpoint.allows_unauthenticated(&engine.cfg.clients);

    let (client_id, method, secret) = if let Some(header) = p.authorization {
        let (id, secret) = parse_basic(header)?;
        if p.client_id.is_some_and(|form| form != id) {
            return Err(Refusal::bad_request("client_id_mismatch", "client_id differs from the Basic credentials"));
        }
        (id, ClientAuthMethod::ClientSecretBasic, Some(secret))
    } else if let Some(secret) = p.client_secret {
        let Some(id) = p.client_id else {
            return Err(Refusal::bad_request("missing_parameter", "client_secret is given without client_id"));
        };
        (id.to_owned(), ClientAuthMethod::ClientSecretPost, Some(secret.to_owned()))
    } else if assertion {
        return assertion_client(engine, p).await.map(Some);
    } else if let Some(id) = p.client_id.filter(|id| clients.uses_certificate(id)) {
        return certificate_client(engine, p, id).map(Some);
    } else if let Some(id) = p.client_id {
        // A public client, or an unknown client_id where unauthenticated
        // requests are served anyway (as before `clients` existed).
        match clients.public(id) {
            Ok(()) => return Ok(Some(id.to_owned())),
            Err(ClientAuthError::Unknown) if unauthenticated => return Ok(None),
            Err(e) => return Err(fail(engine, e, id)),
        }
    } else if unauthenticated {
        return Ok(None);
    } else {
        return Err(Refusal::client_required());
    };

    if let Some(wait) = clients.locked(&client_id) {
        return Err(Refusal::client_rate_limited(&client_id, wait.as_secs().max(1)));
    }
    let secret = secret.unwrap_or_default();
    match clients.secret(&client_id, method, &secret).await {
        Ok(()) => Ok(Some(client_id)),
        Err(e) => Err(fail(engine, e, &client_id)),
    }
}

/// RFC 8705 §2.1: a `tls_client_auth` client's `client_id` and certificate.
fn certificate_client(engine: &Engine, p: &Presented<'_>, client_id: &str) -> Result<String, Refusal> {
    if let Some(wait) = engine.clients.locked(client_id) {
        return Err(Refusal::client_rate_limited(client_id, wait.as_secs().max(1)));
    }
    let cert = p.client_cert.0.as_ref().map_err(|why| *why);
    match engine.clients.certificate(client_id, cert) {
        Ok(()) => Ok(client_id.to_owned()),
        Err(e) => Err(fail(engine, e, client_id)),
    }
}

/// RFC 7523 §2.2: `client_assertion_type` jwt-bearer and a `client_assertion`
/// signed by one of the client's keys.
async fn assertion_client(engine: &Engine, p: &Presented<'_>) -> Result<String, Refusal> {
    let (Some(assertion), Some(kind)) = (p.client_assertion, p.client_assertion_type) else {
        return Err(Refusal::bad_request(
            "missing_parameter",
            "client_assertion and client_assertion_type go together",
        ));
    };
    let claimed = Clients::assertion_issuer(assertion).unwrap_or_default();
    if kind != ASSERTION_TYPE_JWT_BEARER {
        return Err(fail(engine, ClientAuthError::BadAssertion("client_assertion_type"), &claimed));
    }
    if p.client_id.is_some_and(|id| id != claimed) {
        return Err(fail(engine, ClientAuthError::BadAssertion("client_id is not the assertion's iss"), &claimed));
    }
    if let Some(wait) = engine.clients.locked(&claimed) {
        return Err(Refusal::client_rate_limited(&claimed, wait.as_secs().max(1)));
    }
    // stsgate's issuer or its token endpoint URL (RFC 7523 §3).
    let cfg = &engine.cfg;
    let audiences = [cfg.issuer.clone(), format!("{}{}", cfg.issuer.trim_end_matches('/'), cfg.token_endpoint.path)];
    engine.clients.assertion(assertion, &audiences, now_unix()).await.map_err(|e| fail(engine, e, &claimed))
}

/// A failed authentication: counted against the client's rate (but for an
/// unreachable replay store, which is not the client's failure).
fn fail(engine: &Engine, e: ClientAuthError, client_id: &str) -> Refusal {
    if e == ClientAuthError::ReplayStoreDown {
        return Refusal::replay_store_down();
    }
    match engine.clients.failed(client_id) {
        Some(wait) => Refusal::client_rate_limited(client_id, wait.as_secs().max(1)),
        None => Refusal::client(e, Some(client_id)),
    }
}

/// `Basic base64(urlencode(id):urlencode(secret))` (RFC 6749 §2.3.1).
fn parse_basic(header: &HeaderValue) -> Result<(String, String), Refusal> {
    let bad = || Refusal::client_malformed("the Authorization header is not HTTP Basic client credentials");
    let value = header.to_str().map_err(|_| bad())?;
    let (scheme, rest) = value.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(rest.trim()).map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
    // application/x-www-form-urlencoded (`+` is a space); a bare `&` is
    // taken literally.
    let unescape = |s: &str| -> String {
        let pair = format!("v={}", s.replace('&', "%26"));
        form_urlencoded::parse(pair.as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
    };
    let (id, secret) = (unescape(id), unescape(secret));
    if id.is_empty() {
        return Err(bad());
    }
    Ok((id, secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(raw: &str) -> HeaderValue {
        HeaderValue::from_str(&format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))).unwrap()
    }

    #[test]
    fn basic_credentials_are_form_decoded() {
        assert_eq!(parse_basic(&basic("a%3Ab:s%25+x:y")).unwrap(), ("a:b".into(), "s% x:y".into()));
        assert_eq!(parse_basic(&basic("id:")).unwrap(), ("id".into(), "".into()));
        for bad in [
            basic("nocolon"),
            basic(":s"),
            HeaderValue::from_static("Bearer abc"),
            HeaderValue::from_static("Basic !!"),
        ] {
            assert!(parse_basic(&bad).is_err(), "{bad:?}");
        }
    }
}
