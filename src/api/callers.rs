//! Who calls Check, and what that caller is believed about.
//!
//! The caller of Check is an Envoy. It reports the downstream's mTLS identity
//! (`attributes.source.principal`) and asks for a token for an audience; both
//! are believed only from a caller that proved who it is, and only as far as
//! `ext_authz.callers` allows it:
//!
//! - `mtls`: the URI SAN (SPIFFE ID) of the client certificate the gRPC
//!   listener verified in the TLS handshake, read once per connection
//!   (`ConnInfo`, which tonic hands every request of the connection);
//! - `xfcc`: the `URI` of the last element of the `x-forwarded-client-cert`
//!   header, the element the proxy next to stsgate appended for the client it
//!   verified, believed only when the TCP peer is in `xfcc_trusted_peers`
//!   (stsgate's own sidecar);
//! - `none`: nobody is identified and everybody is believed (development).
//!
//! A caller that is refused here never reaches the engine: `CallerRefused`
//! becomes one `Refusal` (`refusal.rs`, labels `caller_unknown` and
//! `caller_audience`).

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use tonic::metadata::MetadataMap;

use crate::config::{CallerIdentity, CheckCaller, ExtAuthz};

/// The gRPC metadata header stsgate's own sidecar sets (Envoy's
/// `forward_client_cert_details`).
pub(crate) const XFCC_HEADER: &str = "x-forwarded-client-cert";

/// Longest identity believed; a SPIFFE ID is at most 2048 bytes.
const MAX_IDENTITY: usize = 2048;

/// What the gRPC listener knows of the connection a Check arrived on: tonic's
/// `ConnectInfo` of the connection, put into every request's extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The TCP peer.
    pub remote: SocketAddr,
    /// The identity the TLS handshake proved: the one URI SAN of the verified
    /// client certificate. `None` in plaintext, or when the certificate has
    /// no URI SAN or several.
    pub certified: Option<Arc<str>>,
}

/// Why a caller has no identity; for the log line of its refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unidentified {
    /// Not called over a connection (in process).
    NoConnection,
    /// mtls: the certificate has no URI SAN, or more than one.
    NoUriSan,
    /// xfcc: the TCP peer is not in `xfcc_trusted_peers`.
    UntrustedPeer(SocketAddr),
    /// xfcc: a trusted peer sent no `x-forwarded-client-cert`.
    NoXfcc,
    /// xfcc: the header cannot be read, or its last element names no single URI.
    BadXfcc(&'static str),
}

impl fmt::Display for Unidentified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unidentified::NoConnection => f.write_str("not called over the gRPC listener"),
            Unidentified::NoUriSan => f.write_str("its client certificate has no single URI SAN"),
            Unidentified::UntrustedPeer(peer) => {
                write!(
                    f,
                    "its x-forwarded-client-cert is not believed from {} (not in ext_authz.xfcc_trusted_peers)",
                    peer.ip()
                )
            }
            Unidentified::NoXfcc => f.write_str("a trusted peer sent no x-forwarded-client-cert"),
            Unidentified::BadXfcc(why) => write!(f, "x-forwarded-client-cert: {why}"),
        }
    }
}

/// Why a Check caller is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CallerRefused {
    /// `callers` is configured and the caller is not identified, or no
    /// entry names it.
    Unknown { identity: Option<String>, why: String },
    /// The caller's entry does not list the audience it asks for.
    Audience { identity: String, audience: String },
}

impl CallerRefused {
    /// The metric label.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            CallerRefused::Unknown { .. } => "caller_unknown",
            CallerRefused::Audience { .. } => "caller_audience",
        }
    }

    /// The log line: the description and, for an unknown caller, why.
    pub(crate) fn log_line(&self) -> String {
        match self {
            CallerRefused::Unknown { why, .. } => format!("Check caller refused: {self} ({why})"),
            CallerRefused::Audience { .. } => format!("Check caller refused: {self}"),
        }
    }
}

/// The description the denial carries (Envoy shows it to the downstream).
impl fmt::Display for CallerRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallerRefused::Unknown { identity: None, .. } => f.write_str("the Check caller is not authenticated"),
            CallerRefused::Unknown { identity: Some(id), .. } => {
                write!(f, "the Check caller {id} is not allowed to call Check")
            }
            CallerRefused::Audience { identity, audience } => {
                write!(f, "the Check caller {identity} may not ask for audience {audience:?}")
            }
        }
    }
}

/// The caller of one Check, as far as it is believed.
#[derive(Debug)]
pub(crate) struct Admitted<'a> {
    identity: Option<Cow<'a, str>>,
    /// Its `callers` entry; none when `callers` is empty (anyone may call).
    entry: Option<&'a CheckCaller>,
    /// Whether the `source.principal` it reports is the actor.
    believed: bool,
}

impl Admitted<'_> {
    /// The caller's identity, when it proved one.
    pub(crate) fn identity(&self) -> Option<&str> {
        self.identity.as_deref()
    }

    /// Whether `source.principal` from this caller is believed.
    pub(crate) fn believes_source_principal(&self) -> bool {
        self.believed
    }

    /// Whether the caller may ask for a token for `audience`.
    pub(crate) fn may_ask_for(&self, audience: &str) -> Result<(), CallerRefused> {
        let Some(entry) = self.entry else { return Ok(()) };
        if entry.audiences.iter().any(|a| a.matches(audience)) {
            return Ok(());
        }
        Err(CallerRefused::Audience {
            identity: self.identity.as_deref().unwrap_or_default().to_owned(),
            audience: audience.chars().take(128).collect(),
        })
    }
}

/// Identifies the caller of a Check from its connection (`conn`, absent
/// in process) and gRPC metadata, as `ea.caller_identity` says, and admits it
/// or not by `ea.callers`. `tls` says whether the gRPC listener has TLS.
pub(crate) fn admit<'a>(
    ea: &'a ExtAuthz,
    tls: bool,
    conn: Option<&'a ConnInfo>,
    metadata: &'a MetadataMap,
) -> Result<Admitted<'a>, CallerRefused> {
    let identity = match ea.caller_identity(tls) {
        // Nobody is identified, so everybody is believed; `callers` is
        // empty (check-config refuses it otherwise).
        CallerIdentity::None => return Ok(Admitted { identity: None, entry: None, believed: true }),
        CallerIdentity::Mtls => match conn {
            None => Err(Unidentified::NoConnection),
            Some(c) => c.certified.as_deref().map(Cow::Borrowed).ok_or(Unidentified::NoUriSan),
        },
        CallerIdentity::Xfcc => xfcc_identity(ea, conn, metadata),
    };
    if ea.callers.is_empty() {
        // Anyone may call; only an identified caller is believed.
        let believed = identity.is_ok();
        return Ok(Admitted { identity: identity.ok(), entry: None, believed });
    }
    let identity = identity.map_err(|why| CallerRefused::Unknown { identity: None, why: why.to_string() })?;
    let Some(entry) = ea.callers.iter().find(|c| c.identity.matches(&identity)) else {
        return Err(CallerRefused::Unknown {
            identity: Some(identity.into_owned()),
            why: "no ext_authz.callers entry names it".into(),
        });
    };
    Ok(Admitted { identity: Some(identity), entry: Some(entry), believed: entry.source_principal })
}

/// The identity in `x-forwarded-client-cert`, from a trusted peer only.
fn xfcc_identity<'a>(
    ea: &ExtAuthz,
    conn: Option<&ConnInfo>,
    metadata: &'a MetadataMap,
) -> Result<Cow<'a, str>, Unidentified> {
    let conn = conn.ok_or(Unidentified::NoConnection)?;
    if !ea.xfcc_trusted_peers.iter().any(|net| net.contains(conn.remote.ip())) {
        return Err(Unidentified::UntrustedPeer(conn.remote));
    }
    let mut values = metadata.get_all(XFCC_HEADER).iter();
    let value = values.next().ok_or(Unidentified::NoXfcc)?;
    if values.next().is_some() {
        return Err(Unidentified::BadXfcc("more than one header"));
    }
    let value = value.to_str().map_err(|_| Unidentified::BadXfcc("not visible ASCII"))?;
    xfcc_uri(value).map_err(Unidentified::BadXfcc)
}

/// The one `URI` of the last element of an `x-forwarded-client-cert` value:
/// the element the proxy next to stsgate appended for the client certificate
/// it verified (under `SANITIZE_SET` the only one; under `APPEND_FORWARD`
/// the ones before it came from further away and are not believed).
///
/// Envoy's format: elements separated by `,`, each of `;`-separated
/// `Key=value` pairs (keys case-insensitive), a value holding `,`, `;` or `=`
/// double-quoted with `\"` for a quote inside.
pub(crate) fn xfcc_uri(value: &str) -> Result<Cow<'_, str>, &'static str> {
    let last = split_unquoted(value, b',')?.pop().unwrap_or("");
    if last.trim().is_empty() {
        return Err("the last element is empty");
    }
    let mut uri = None;
    for pair in split_unquoted(last, b';')? {
        let pair = pair.trim();
        let (key, raw) = pair.split_once('=').ok_or("a pair without `=`")?;
        if !key.trim().eq_ignore_ascii_case("uri") {
            continue;
        }
        if uri.is_some() {
            return Err("the last element names more than one URI");
        }
        uri = Some(unquote(raw.trim())?);
    }
    let uri = uri.ok_or("the last element names no URI")?;
    if uri.is_empty() || uri.len() > MAX_IDENTITY || uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the URI is empty, too long or holds blanks");
    }
    Ok(uri)
}

/// The `Key=value` pairs of the last element of an `x-forwarded-client-cert`
/// value (keys lowercased, values unquoted), for the token endpoint's
/// client certificate (`api/client_auth.rs`); same format as `xfcc_uri`.
pub(crate) fn xfcc_last_element(value: &str) -> Result<Vec<(String, Cow<'_, str>)>, &'static str> {
    let last = split_unquoted(value, b',')?.pop().unwrap_or("");
    if last.trim().is_empty() {
        return Err("the last element is empty");
    }
    let mut pairs = Vec::new();
    for pair in split_unquoted(last, b';')? {
        let (key, raw) = pair.trim().split_once('=').ok_or("a pair without `=`")?;
        pairs.push((key.trim().to_ascii_lowercase(), unquote(raw.trim())?));
    }
    Ok(pairs)
}

/// `text` split at each `sep` outside double quotes.
fn split_unquoted(text: &str, sep: u8) -> Result<Vec<&str>, &'static str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, b) in text.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if quoted {
        return Err("an unterminated quote");
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// A value, its quotes removed and `\"` made `"`.
fn unquote(raw: &str) -> Result<Cow<'_, str>, &'static str> {
    let Some(inner) = raw.strip_prefix('"') else {
        return if raw.contains('"') { Err("a stray quote") } else { Ok(Cow::Borrowed(raw)) };
    };
    let inner = inner.strip_suffix('"').ok_or("a stray quote")?;
    if !inner.contains('\\') {
        return Ok(Cow::Borrowed(inner));
    }
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        out.push(if c == '\\' { chars.next().ok_or("a trailing backslash")? } else { c });
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;
    use crate::config::Config;

    const WEB: &str = "spiffe://cluster.local/ns/shop/sa/web";

    #[test]
    fn xfcc_names_the_uri_of_its_last_element() {
        let by = "By=spiffe://cluster.local/ns/sts/sa/stsgate;Hash=468ed33be74eee6556d90c0149c1309e9ba61d6425303443c0748a02dd8de688";
        let cases: &[(String, Result<&str, &str>)] = &[
            (format!("{by};Subject=\"CN=web,O=shop\";URI={WEB}"), Ok(WEB)),
            (format!("{by};URI={WEB};DNS=web.shop"), Ok(WEB)),
            (format!("uri=\"{WEB}\""), Ok(WEB)),
            // APPEND_FORWARD: what came from further away is not believed.
            (format!("By=x;URI=spiffe://evil/sa/admin,{by};URI={WEB}"), Ok(WEB)),
            (
                format!("{by};URI={WEB},By=x;URI=spiffe://cluster.local/ns/shop/sa/other"),
                Ok("spiffe://cluster.local/ns/shop/sa/other"),
            ),
            // Quoted commas and semicolons do not split.
            (format!("Subject=\"a,b;c=d\";URI={WEB}"), Ok(WEB)),
            (r#"Subject="say \"hi\", or not";URI="spiffe://a/b""#.to_owned(), Ok("spiffe://a/b")),
            (format!("{by};Hash=abc"), Err("the last element names no URI")),
            (format!("{by};URI={WEB};URI=spiffe://x/y"), Err("the last element names more than one URI")),
            (format!("{by};URI={WEB},"), Err("the last element is empty")),
            (format!("{by};URI=\"{WEB}"), Err("an unterminated quote")),
            (format!("{by};URI={WEB};junk"), Err("a pair without `=`")),
            ("URI=".to_owned(), Err("the URI is empty, too long or holds blanks")),
            ("URI=a\"b\"c".to_owned(), Err("a stray quote")),
        ];
        for (value, want) in cases {
            assert_eq!(xfcc_uri(value).as_deref().map_err(|e| *e), *want, "{value}");
        }
    }

    fn ext_authz(yaml: &str) -> ExtAuthz {
        let text = format!(
            "issuer: https://sts.example.com\nsigning: {{ keys: [{{ kid: k1, ephemeral: true }}] }}\n\
             trusted_issuers: [{{ issuer: https://idp.example.com, jwks_url: https://idp.example.com/jwks }}]\n\
             ext_authz:\n{yaml}"
        );
        let cfg = Config::from_yaml_str(&text).unwrap();
        cfg.ext_authz
    }

    fn conn(remote: &str, certified: Option<&str>) -> ConnInfo {
        ConnInfo { remote: remote.parse().unwrap(), certified: certified.map(Arc::from) }
    }

    fn xfcc(uri: &str) -> MetadataMap {
        let mut m = MetadataMap::new();
        m.insert(XFCC_HEADER, MetadataValue::try_from(format!("By=spiffe://sts;URI={uri}")).unwrap());
        m
    }

    #[test]
    fn mtls_callers_are_admitted_by_identity_and_audience() {
        let ea = ext_authz(&format!(
            "  caller_identity: mtls\n  callers:\n    - {{ identity: \"{WEB}\", audiences: [orders, \"api://*\"] }}\n    \
             - {{ identity: \"spiffe://cluster.local/ns/ops/*\", audiences: [\"*\"], source_principal: false }}\n"
        ));
        let none = MetadataMap::new();
        let web = conn("10.0.0.1:5000", Some(WEB));
        let a = admit(&ea, true, Some(&web), &none).unwrap();
        assert_eq!((a.identity(), a.believes_source_principal()), (Some(WEB), true));
        assert_eq!(a.may_ask_for("orders"), Ok(()));
        assert_eq!(a.may_ask_for("api://billing"), Ok(()));
        assert_eq!(
            a.may_ask_for("payments"),
            Err(CallerRefused::Audience { identity: WEB.into(), audience: "payments".into() })
        );
        let ops = conn("10.0.0.1:5000", Some("spiffe://cluster.local/ns/ops/sa/tool"));
        let a = admit(&ea, true, Some(&ops), &none).unwrap();
        assert!(!a.believes_source_principal());
        assert_eq!(a.may_ask_for("payments"), Ok(()));

        let other = conn("10.0.0.1:5000", Some("spiffe://cluster.local/ns/shop/sa/intruder"));
        let refused = admit(&ea, true, Some(&other), &none).unwrap_err();
        assert_eq!(refused.label(), "caller_unknown");
        assert_eq!(
            refused.to_string(),
            "the Check caller spiffe://cluster.local/ns/shop/sa/intruder is not allowed to call Check"
        );
        for unidentified in [Some(conn("10.0.0.1:5000", None)), None] {
            let refused = admit(&ea, true, unidentified.as_ref(), &none).unwrap_err();
            assert_eq!(refused.to_string(), "the Check caller is not authenticated");
        }
        // A forged XFCC means nothing under mtls.
        let forged = xfcc(WEB);
        assert!(admit(&ea, true, Some(&conn("127.0.0.1:1", None)), &forged).is_err());
    }

    #[test]
    fn xfcc_is_believed_from_trusted_peers_only() {
        let ea = ext_authz(&format!(
            "  caller_identity: xfcc\n  xfcc_trusted_peers: [127.0.0.6/32, \"::1\"]\n  \
             callers: [{{ identity: \"{WEB}\", audiences: [orders] }}]\n"
        ));
        let header = xfcc(WEB);
        for trusted in ["127.0.0.6:40000", "[::1]:40000", "[::ffff:127.0.0.6]:40000"] {
            let peer = conn(trusted, None);
            let a = admit(&ea, false, Some(&peer), &header).unwrap_or_else(|e| panic!("{trusted}: {e}"));
            assert_eq!(a.identity(), Some(WEB));
        }
        let refused = admit(&ea, false, Some(&conn("127.0.0.1:40000", None)), &header).unwrap_err();
        assert_eq!(
            refused,
            CallerRefused::Unknown {
                identity: None,
                why: "its x-forwarded-client-cert is not believed from 127.0.0.1 (not in ext_authz.xfcc_trusted_peers)"
                    .into()
            }
        );
        // A certificate on the connection is not what xfcc reads.
        let none = MetadataMap::new();
        assert!(admit(&ea, false, Some(&conn("127.0.0.6:1", Some(WEB))), &none).is_err());
        let mut two = xfcc(WEB);
        two.append(XFCC_HEADER, MetadataValue::from_static("URI=spiffe://x/y"));
        let refused = admit(&ea, false, Some(&conn("127.0.0.6:1", None)), &two).unwrap_err();
        assert!(
            matches!(refused, CallerRefused::Unknown { identity: None, ref why } if why.contains("more than one header"))
        );
    }

    #[test]
    fn without_callers_anyone_may_call_but_only_the_identified_are_believed() {
        let none = MetadataMap::new();
        let open = ext_authz("  {}\n");
        let a = admit(&open, false, None, &none).unwrap();
        assert!(a.believes_source_principal(), "caller_identity none believes everyone (development)");
        let mtls = ext_authz("  caller_identity: mtls\n");
        let (web, nameless) = (conn("10.0.0.1:1", Some(WEB)), conn("10.0.0.1:1", None));
        let a = admit(&mtls, true, Some(&web), &none).unwrap();
        assert!(a.believes_source_principal());
        assert_eq!(a.may_ask_for("anything"), Ok(()));
        let a = admit(&mtls, true, Some(&nameless), &none).unwrap();
        assert!(!a.believes_source_principal(), "an unidentified caller is not believed");
    }
}
