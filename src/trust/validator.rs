//! Subject-token validation following RFC 8725 (JWT BCP): size limit first, then
//! the header (no `none`, no symmetric algorithms, no header-supplied keys, no
//! unknown `crit`), the issuer from the allow-list, the algorithm from *that
//! issuer's* list, the key by `kid`, the signature, and finally the claims.
//! Every refusal is a precise `TokenError`; nothing here panics on input.
//!
//! stsgate's own tokens (`iss` = its own issuer) are accepted only when the
//! validator is given its `OwnIssuer` (some rule lists `self`): verified with
//! stsgate's key ring, `typ` must be `at+jwt`, and the `sub_id` they were
//! minted with is kept (`Validated::own_sub_id`) so that a re-exchanged token
//! still names the user's original IdP.

use crate::clock::now_unix;
use std::mem::MaybeUninit;
use std::sync::Arc;

use base64_simd::AsOut as _;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::config::VerifyAlg;
use crate::trust::claims::{Claims, Text, numeric_date, scopes_of};
use crate::trust::issuer::{Issuer, Issuers, KeyLookupError};
use crate::trust::jwks::VerifyKey;
use crate::trust::own::{OWN_LEEWAY, OwnIssuer};
use crate::trust::plain_json::Reader;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("token is larger than {0} bytes")]
    TooLarge(usize),
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    #[error("encrypted tokens (JWE) are not accepted")]
    Encrypted,
    #[error("unsigned tokens (alg none) are not accepted")]
    AlgNone,
    // Header values are never echoed (they reach logs, the gRPC status and
    // JSON bodies): only stsgate's own names for what it recognised.
    #[error("symmetric (HMAC) algorithms are not accepted")]
    Symmetric,
    #[error("algorithm {alg} is not allowed for this issuer")]
    AlgNotAllowed { alg: &'static str },
    #[error("the token's algorithm is not one stsgate verifies")]
    UnknownAlg,
    #[error("header parameter {0} is not accepted (keys come only from the issuer's JWKS)")]
    HeaderKey(&'static str),
    #[error("header declares critical extensions, which are not supported")]
    Crit,
    #[error("token type (typ) is not an access token")]
    WrongType,
    #[error("token type must be at+jwt for this issuer")]
    NotAtJwt,
    #[error("issuer is not trusted")]
    UntrustedIssuer,
    /// One of stsgate's own tokens where only an IdP's is believed: an own
    /// token names the user it acts for, never a workload.
    #[error("stsgate's own tokens are not accepted as actor tokens")]
    OwnActorToken,
    #[error(transparent)]
    Key(KeyLookupError),
    #[error("signature is invalid")]
    BadSignature,
    #[error("claim {0} is missing or has the wrong type")]
    Claim(&'static str),
    #[error("token has expired")]
    Expired,
    #[error("token is not valid yet (nbf)")]
    NotYetValid,
    #[error("token was issued in the future (iat)")]
    IssuedInFuture,
    #[error("token audience is not accepted")]
    Audience,
    /// The issuer's keys cannot be obtained: not the token's fault (503).
    #[error("{0}")]
    KeysUnavailable(String),
}

impl TokenError {
    /// Whether the failure is on our side (keys unavailable) rather than the token's.
    pub(crate) fn is_unavailable(&self) -> bool {
        matches!(self, TokenError::KeysUnavailable(_))
    }

    /// A bounded label for metrics.
    pub(crate) fn label(&self) -> &'static str {
        match self {
            TokenError::TooLarge(_) => "too_large",
            TokenError::Malformed(_) => "malformed",
            TokenError::Encrypted => "encrypted",
            TokenError::AlgNone => "alg_none",
            TokenError::Symmetric => "symmetric_alg",
            TokenError::AlgNotAllowed { .. } | TokenError::UnknownAlg => "alg_not_allowed",
            TokenError::HeaderKey(_) => "header_key",
            TokenError::Crit => "crit",
            TokenError::WrongType | TokenError::NotAtJwt => "wrong_typ",
            TokenError::UntrustedIssuer => "untrusted_issuer",
            TokenError::OwnActorToken => "own_actor_token",
            TokenError::Key(_) => "unknown_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::Claim(_) => "bad_claim",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::IssuedInFuture => "issued_in_future",
            TokenError::Audience => "audience",
            TokenError::KeysUnavailable(_) => "keys_unavailable",
        }
    }
}

/// The JOSE header fields we read; the key-bearing ones only to refuse them.
/// Borrowed from the decoded header (which is on the stack, see `read_header`).
struct Header<'a> {
    alg: Text<'a>,
    kid: Option<Text<'a>>,
    typ: Option<Text<'a>>,
    // Present at all, whatever the value: `"jku": null` is refused like any
    // other `jku` (an `Option` would read null as absent).
    crit: bool,
    jku: bool,
    x5u: bool,
    jwk: bool,
    x5c: bool,
    enc: bool,
}

/// One pass over the header object, by hand rather than derived (cheaper,
/// issue 17) and as strict: `alg` a string, `kid` and
/// `typ` strings or null, the members above refused whatever their value,
/// a member we read appearing twice malformed; others ignored. Only an
/// object: the derive also read a JSON array positionally.
impl<'de: 'a, 'a> Deserialize<'de> for Header<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Header<'a>, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};

        struct HeaderVisitor;
        impl<'de> Visitor<'de> for HeaderVisitor {
            type Value = Header<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JOSE header object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Header<'de>, A::Error> {
                let (mut alg, mut kid, mut typ) = (None, None, None);
                // Bit n: the nth member of the match below was read.
                let mut seen = 0u16;
                while let Some(Text(key)) = map.next_key()? {
                    let Some(bit) = header_member(&key) else {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    if seen & (1 << bit) != 0 {
                        return Err(A::Error::custom("a header member appears twice"));
                    }
                    seen |= 1 << bit;
                    match bit {
                        0 => alg = Some(map.next_value::<Text<'de>>()?),
                        1 => kid = map.next_value::<Option<Text<'de>>>()?,
                        2 => typ = map.next_value::<Option<Text<'de>>>()?,
                        // Refused later whatever their value: only `seen` matters.
                        _ => map.next_value::<IgnoredAny>().map(drop)?,
                    }
                }
                let alg = alg.ok_or_else(|| A::Error::missing_field("alg"))?;
                Ok(Header::of(alg, kid, typ, seen))
            }
        }
        d.deserialize_map(HeaderVisitor)
    }
}

/// The header members `Header` reads, by name: the bit each one has in the
/// set of those already read (a member may appear once).
fn header_member(name: &str) -> Option<u16> {
    Some(match name {
        "alg" => 0,
        "kid" => 1,
        "typ" => 2,
        "crit" => 3,
        "jku" => 4,
        "x5u" => 5,
        "jwk" => 6,
        "x5c" => 7,
        "enc" => 8,
        _ => return None,
    })
}

impl<'a> Header<'a> {
    /// Reads a header: plain JSON text on the fast path, the rest (and
    /// every refusal) by serde_json.
    fn parse(json: &'a str) -> Option<Header<'a>> {
        Header::scan(json).or_else(|| serde_json::from_str(json).ok())
    }

    /// The fast path (issue 17): plain JSON text, `alg` a string, `kid` and
    /// `typ` strings or null, each member we read once; else `None`.
    fn scan(json: &'a str) -> Option<Header<'a>> {
        let (mut alg, mut kid, mut typ, mut seen) = (None, None, None, 0u16);
        let text = |s: &'a str| Text(std::borrow::Cow::Borrowed(s));
        Reader::new(json)?.whole_object(|r, name| {
            let Some(bit) = header_member(name) else {
                return r.value(1).map(drop);
            };
            if seen & (1 << bit) != 0 {
                return None;
            }
            seen |= 1 << bit;
            match bit {
                0 => alg = Some(text(r.string()?)),
                1 => kid = r.string_or_null()?.map(text),
                2 => typ = r.string_or_null()?.map(text),
                _ => drop(r.value(1)?),
            }
            Some(())
        })?;
        Some(Header::of(alg?, kid, typ, seen))
    }

    /// The header of the members read; `seen` has the bit of each one
    /// (`header_member`).
    fn of(alg: Text<'a>, kid: Option<Text<'a>>, typ: Option<Text<'a>>, seen: u16) -> Header<'a> {
        let present = |bit: u16| seen & (1 << bit) != 0;
        Header {
            alg,
            kid,
            typ,
            crit: present(3),
            jku: present(4),
            x5u: present(5),
            jwk: present(6),
            x5c: present(7),
            enc: present(8),
        }
    }
}

/// base64url without padding, as strict as the `base64` crate's
/// `URL_SAFE_NO_PAD` (the tests compare): only the URL-safe alphabet, no `=`,
/// no whitespace, no length of 1 mod 4, and the unused bits of the last
/// character zero, so that each byte string has exactly one encoding. SIMD:
/// decoding took a tenth of a cold exchange's non-crypto work (issue 17).
const B64URL: base64_simd::Base64 = base64_simd::URL_SAFE_NO_PAD;

/// Decodes `src` into `buf` when it fits, else `None` (`Some(Err)` when it
/// is not base64url). Checks the length before `decode`, which panics on a
/// short output. `buf` need not be initialised (zeroing it cost more than
/// decoding a header); what is returned is only what `decode` wrote.
fn b64_decode_into<'b>(src: &str, buf: &'b mut [MaybeUninit<u8>]) -> Option<Result<&'b [u8], base64_simd::Error>> {
    let n = match B64URL.decoded_length(src.as_bytes()) {
        Ok(n) => n,
        Err(e) => return Some(Err(e)),
    };
    let buf = buf.get_mut(..n)?;
    Some(B64URL.decode(src.as_bytes(), buf.as_out()).map(|b| &*b))
}

/// What validation keeps of the JOSE header: the algorithm, checked, and
/// what the key lookup and the `typ` rules read.
struct HeaderInfo {
    alg: VerifyAlg,
    kid: Option<String>,
    at_jwt: bool,
}

/// Decodes and checks the JOSE header. A header is a few dozen bytes:
/// decoded on the stack and read in place, one allocation (`kid`) in all.
fn read_header(h64: &str) -> Result<HeaderInfo, TokenError> {
    const MALFORMED: TokenError = TokenError::Malformed("header is not base64url JSON");
    let mut buf = [MaybeUninit::uninit(); 512];
    let heap: Vec<u8>;
    let json: &[u8] = match b64_decode_into(h64, &mut buf) {
        Some(decoded) => decoded.map_err(|_| MALFORMED)?,
        None => {
            heap = B64URL.decode_to_vec(h64).map_err(|_| MALFORMED)?;
            &heap
        }
    };
    // UTF-8 checked once, not string by string (`from_slice` would).
    let json = std::str::from_utf8(json).map_err(|_| MALFORMED)?;
    let header = Header::parse(json).ok_or(MALFORMED)?;
    let alg = check_header(&header)?;
    let at_jwt = header.typ.as_deref().is_some_and(is_at_jwt);
    Ok(HeaderInfo { alg, kid: header.kid.map(|k| k.0.into_owned()), at_jwt })
}

/// An RFC 9493 subject identifier, as the `sub_id` claim of minted tokens.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "snake_case")]
pub enum SubId {
    /// `{"format":"iss_sub","iss":..,"sub":..}`: a subject (or actor) token's
    /// `sub` in its issuer's namespace (§3.2.5).
    IssSub { iss: String, sub: String },
    /// `{"format":"uri","uri":..}`: an mTLS peer's URI identity, e.g. a SPIFFE ID (§3.2.7).
    Uri { uri: String },
    /// `{"format":"opaque","id":..}`: an mTLS peer identity that is not a URI (§3.2.4).
    Opaque { id: String },
}

impl SubId {
    fn weight(&self) -> usize {
        match self {
            SubId::IssSub { iss, sub } => weigh::string(iss) + weigh::string(sub),
            SubId::Uri { uri: s } | SubId::Opaque { id: s } => weigh::string(s),
        }
    }
}

/// A token that passed every check, with the values later stages need.
#[derive(Debug, Clone)]
pub struct Validated {
    /// `iss`: a trusted issuer's, or stsgate's own for one of its own tokens.
    pub(crate) issuer: String,
    pub(crate) sub: String,
    pub(crate) exp: i64,
    pub(crate) scopes: Vec<String>,
    /// `client_id`, else `azp`, of the subject token.
    pub(crate) client_id: Option<String>,
    pub(crate) claims: Claims,
    /// Set exactly for stsgate's own tokens: the `sub_id` it was minted with,
    /// which names the subject in its original issuer's namespace (the
    /// user's IdP), so that a re-exchange keeps naming it.
    pub(crate) own_sub_id: Option<SubId>,
}

impl Validated {
    /// Whether this is one of stsgate's own tokens.
    pub(crate) fn is_own(&self) -> bool {
        self.own_sub_id.is_some()
    }

    /// RFC 9493 identifier of `sub`: the one an own token was minted with,
    /// else `sub` in the token issuer's namespace.
    pub(crate) fn sub_id(&self) -> SubId {
        match &self.own_sub_id {
            Some(id) => id.clone(),
            None => SubId::IssSub { iss: self.issuer.clone(), sub: self.sub.clone() },
        }
    }

    /// Bytes this value holds in its `Arc`: the struct, every string, array
    /// and claim map it owns (claim values of any depth included), each heap
    /// block rounded the way the allocator rounds it. An upper estimate, for
    /// the validated-token cache's memory bound: every claim is kept, since
    /// rules may copy any of them into the minted token.
    pub fn weight(&self) -> usize {
        use weigh::*;
        let c = &self.claims;
        // ArcInner: two counters, then the value.
        heap(std::mem::size_of::<Self>() + 2 * std::mem::size_of::<usize>())
            + string(&self.issuer)
            + string(&self.sub)
            + strings(&self.scopes)
            + [&self.client_id, &c.iss, &c.sub, &c.jti, &c.client_id, &c.azp]
                .into_iter()
                .flatten()
                .map(string)
                .sum::<usize>()
            + [&c.scope, &c.scp, &c.act, &c.may_act].into_iter().flatten().map(value).sum::<usize>()
            + c.text_blocks().into_iter().map(heap).sum::<usize>()
            + self.own_sub_id.as_ref().map_or(0, SubId::weight)
    }
}

/// Heap bytes held by owned JSON values, for `Validated::weight`.
mod weigh {
    use std::mem::size_of;

    use serde_json::{Map, Value};

    /// What the binary's allocator (mimalloc) hands out for `n` requested
    /// bytes of alignment 1 (string bytes): two-word steps up to 8 words,
    /// then four size classes per power of two (at most 25% more) up to
    /// 512 KiB, then (upper estimate) whole 64 KiB. No header.
    pub(crate) fn bytes(n: usize) -> usize {
        const WORD: usize = size_of::<usize>();
        let words = n.div_ceil(WORD);
        match words {
            0 => 0,
            1..=8 => words.next_multiple_of(2) * WORD,
            _ if n <= 512 << 10 => {
                let top = (words - 1).ilog2();
                let step = 1usize << (top - 2);
                ((words - 1) / step + 1) * step * WORD
            }
            _ => n.next_multiple_of(64 << 10),
        }
    }

    /// The same for a block of word alignment (vectors, map nodes, `Arc`s):
    /// a size class that is not a power of two does not promise its blocks
    /// that alignment, and mimalloc then takes `n + align - 1` bytes (align
    /// up to two words).
    pub(crate) fn heap(n: usize) -> usize {
        if n == 0 { 0 } else { bytes(n + 2 * size_of::<usize>() - 1) }
    }

    // The capacity, not the length, is what is held.
    #[allow(clippy::ptr_arg)]
    pub(crate) fn string(s: &String) -> usize {
        bytes(s.capacity())
    }

    #[allow(clippy::ptr_arg)]
    pub(crate) fn strings(v: &Vec<String>) -> usize {
        heap(v.capacity() * size_of::<String>()) + v.iter().map(string).sum::<usize>()
    }

    pub(crate) fn value(v: &Value) -> usize {
        match v {
            Value::Null | Value::Bool(_) | Value::Number(_) => 0,
            Value::String(s) => string(s),
            Value::Array(a) => heap(a.capacity() * size_of::<Value>()) + a.iter().map(value).sum::<usize>(),
            Value::Object(m) => map(m),
        }
    }

    /// serde_json's `Map` is a `BTreeMap`: nodes of at most 11 entries, each
    /// node but the root holding at least 5, so a map of `n` entries has at
    /// most `1 + n / 5` nodes (one leaf while `n <= 11`). Internal nodes also
    /// hold 12 child pointers.
    pub(crate) fn map(m: &Map<String, Value>) -> usize {
        const ENTRIES: usize = 11 * (size_of::<String>() + size_of::<Value>());
        // Parent pointer, index in the parent, length.
        const LEAF: usize = ENTRIES + size_of::<usize>() + 4;
        const INTERNAL: usize = LEAF + 12 * size_of::<usize>();
        let nodes = match m.len() {
            0 => 0,
            1..=11 => heap(LEAF),
            n => (1 + n / 5) * heap(INTERNAL),
        };
        nodes + m.iter().map(|(k, v)| string(k) + value(v)).sum::<usize>()
    }
}

/// Validates subject and actor tokens against the trusted issuers (and, when
/// given one, stsgate's own issuer).
pub struct Validator {
    issuers: Arc<Issuers>,
    max_bytes: usize,
    own: Option<OwnIssuer>,
}

impl Validator {
    pub fn new(issuers: Arc<Issuers>, max_bytes: usize) -> Validator {
        Validator { issuers, max_bytes, own: None }
    }

    /// Also accepts stsgate's own tokens, verified with `own`'s keys. Without
    /// it, a token with stsgate's `iss` is from an untrusted issuer.
    pub(crate) fn with_own(self, own: Option<OwnIssuer>) -> Validator {
        Validator { own, ..self }
    }

    pub async fn validate(&self, token: &str) -> Result<Validated, TokenError> {
        self.validate_at(token, now_unix()).await
    }

    pub async fn validate_at(&self, token: &str, now: i64) -> Result<Validated, TokenError> {
        if token.len() > self.max_bytes {
            return Err(TokenError::TooLarge(self.max_bytes));
        }
        let (h64, p64, s64) = jws_parts(token)?;
        if s64.is_empty() {
            return Err(TokenError::AlgNone);
        }

        let header = read_header(h64)?;
        let alg = header.alg;

        let payload = B64URL.decode_to_vec(p64).map_err(|_| TokenError::Malformed("payload is not base64url"))?;
        // Before any value is built: the claims are not yet known to come from
        // the issuer, and tiny JSON values cost far more as values than as text.
        json_shape::check(&payload).map_err(TokenError::Malformed)?;
        // UTF-8 checked once for the whole text, not string by string.
        let text = String::from_utf8(payload).map_err(|_| TokenError::Malformed("payload is not UTF-8 JSON"))?;
        let mut claims =
            Claims::parse(text).map_err(|_| TokenError::Malformed("payload is not base64url JSON claims"))?;
        let iss = claims.iss.as_deref().ok_or(TokenError::Claim("iss"))?;
        let own = self.own.as_ref().filter(|own| own.issuer == iss);
        // The key, the leeway and the accepted audiences: stsgate's own, or
        // the trusted issuer's.
        let (key, leeway, audiences): (Arc<VerifyKey>, i64, &[String]) = match own {
            Some(own) => {
                // stsgate signs every token it mints as an RFC 9068 access token.
                if !header.at_jwt {
                    return Err(TokenError::NotAtJwt);
                }
                let key = own.key_for(header.kid.as_deref(), alg).map_err(TokenError::Key)?;
                (key, OWN_LEEWAY.as_secs() as i64, &[])
            }
            None => {
                let issuer: &Arc<Issuer> = self.issuers.get(iss).ok_or(TokenError::UntrustedIssuer)?;
                let cfg = &issuer.cfg;
                if !cfg.algorithms.contains(&alg) {
                    return Err(TokenError::AlgNotAllowed { alg: alg.as_str() });
                }
                if cfg.require_at_jwt && !header.at_jwt {
                    return Err(TokenError::NotAtJwt);
                }
                let key = issuer.key_for(header.kid.as_deref(), alg).await.map_err(|e| match e {
                    KeyLookupError::NotLoaded(_) | KeyLookupError::Unreachable { .. } => {
                        TokenError::KeysUnavailable(e.to_string())
                    }
                    KeyLookupError::UnknownKid { .. } | KeyLookupError::AmbiguousKey(_) => TokenError::Key(e),
                })?;
                (key, cfg.leeway.0.as_secs() as i64, &cfg.audiences)
            }
        };
        let signed = &token[..h64.len() + 1 + p64.len()];
        // JWS signatures are at most 512 bytes (RSA-4096); decode on the stack.
        let mut sig_buf = [MaybeUninit::uninit(); 1024];
        let Some(Ok(sig)) = b64_decode_into(s64, &mut sig_buf) else {
            return Err(TokenError::BadSignature);
        };
        if !key.verify(alg, signed.as_bytes(), sig) {
            return Err(TokenError::BadSignature);
        }

        // Claims, only now that they are known to come from the issuer.
        let exp = numeric_date(&claims.exp).ok_or(TokenError::Claim("exp"))?;
        if now > exp.saturating_add(leeway) {
            return Err(TokenError::Expired);
        }
        if claims.nbf.is_some() {
            let nbf = numeric_date(&claims.nbf).ok_or(TokenError::Claim("nbf"))?;
            if nbf > now.saturating_add(leeway) {
                return Err(TokenError::NotYetValid);
            }
        }
        if claims.iat.is_some() {
            let iat = numeric_date(&claims.iat).ok_or(TokenError::Claim("iat"))?;
            if iat > now.saturating_add(leeway) {
                return Err(TokenError::IssuedInFuture);
            }
        }
        if !audiences.is_empty() && !claims.aud().any(|a| audiences.iter().any(|x| x == a)) {
            return Err(TokenError::Audience);
        }
        // Moved, not copied, into `Validated`'s own fields, which rules and
        // CEL read (`claims` keeps `azp`, which they read there).
        let issuer = claims.iss.take().unwrap_or_default();
        let sub = claims.sub.take().filter(|s| !s.is_empty()).ok_or(TokenError::Claim("sub"))?;
        let scopes = scopes_of(&claims).map_err(TokenError::Claim)?;
        let client_id = claims.client_id.take().or_else(|| claims.azp.clone());
        // An own token names its subject's original issuer in `sub_id`
        // (stsgate writes it into every token): kept, not copied from `other`.
        let own_sub_id = match own {
            None => None,
            Some(_) => {
                let raw = claims.remove_other_raw("sub_id").ok_or(TokenError::Claim("sub_id"))?;
                Some(serde_json::from_str::<SubId>(raw).map_err(|_| TokenError::Claim("sub_id"))?)
            }
        };
        Ok(Validated { issuer, sub, exp, scopes, client_id, claims, own_sub_id })
    }
}

/// The three parts of a JWS compact serialization. The dots by SIMD search:
/// `str::split` took ~1,200 instructions on a 900-byte token (issue 17).
fn jws_parts(token: &str) -> Result<(&str, &str, &str), TokenError> {
    let bytes = token.as_bytes();
    let dot_after = |from: usize| memchr::memchr(b'.', &bytes[from..]).map(|i| from + i);
    let Some((d1, d2)) = dot_after(0).and_then(|d1| Some((d1, dot_after(d1 + 1)?))) else {
        return Err(TokenError::Malformed("expected three dot-separated parts"));
    };
    // Plain searches, cheaper than an iterator (issue 17); only a token
    // with a third dot is counted further.
    if let Some(d3) = dot_after(d2 + 1) {
        // A JWE compact serialization has five parts.
        return Err(match memchr::memchr_iter(b'.', &bytes[d3 + 1..]).count() {
            1 => TokenError::Encrypted,
            _ => TokenError::Malformed("too many parts"),
        });
    }
    // '.' is ASCII: the slices start and end on char boundaries.
    Ok((&token[..d1], &token[d1 + 1..d2], &token[d2 + 1..]))
}

/// Header checks that need no issuer: returns the (asymmetric) algorithm.
fn check_header(header: &Header<'_>) -> Result<VerifyAlg, TokenError> {
    if header.enc {
        return Err(TokenError::Encrypted);
    }
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(TokenError::AlgNone);
    }
    if header.alg.starts_with("HS") {
        return Err(TokenError::Symmetric);
    }
    let alg = VerifyAlg::from_name(&header.alg).ok_or(TokenError::UnknownAlg)?;
    for (name, present) in [("jku", header.jku), ("x5u", header.x5u), ("jwk", header.jwk), ("x5c", header.x5c)] {
        if present {
            return Err(TokenError::HeaderKey(name));
        }
    }
    if header.crit {
        return Err(TokenError::Crit);
    }
    if let Some(typ) = &header.typ {
        // RFC 8725 §3.11: a typed JWT of another kind (logout, DPoP proof, ...)
        // must not be accepted as an access token.
        let t = media_subtype(typ);
        if !(t.eq_ignore_ascii_case(b"jwt") || t.eq_ignore_ascii_case(b"at+jwt")) {
            return Err(TokenError::WrongType);
        }
    }
    Ok(alg)
}

/// `typ` without an `application/` prefix (RFC 7515 §4.1.9 lets it be
/// left out), in any case. Bytes: compared, not lowercased into a copy.
fn media_subtype(typ: &str) -> &[u8] {
    const PREFIX: &[u8] = b"application/";
    let t = typ.as_bytes();
    match t.split_at_checked(PREFIX.len()) {
        Some((head, rest)) if head.eq_ignore_ascii_case(PREFIX) => rest,
        _ => t,
    }
}

fn is_at_jwt(typ: &str) -> bool {
    media_subtype(typ).eq_ignore_ascii_case(b"at+jwt")
}

/// Bounds on the shape of a JSON text, checked in one pass over its bytes
/// before anything is parsed. Parsed into values, a tiny JSON value costs far
/// more than its text: `0,` (2 bytes) becomes a 32-byte array slot, `{"a":0}`
/// (7 bytes) a ~600-byte B-tree node. Without a bound, a 16 KiB token of
/// such values allocates a megabyte before its signature is checked. With
/// these, what any payload costs as values is bounded by a constant plus a
/// small multiple of its length, whatever its shape.
///
/// The counts over-estimate (every `,` `:` `[` `{` outside strings counts
/// as a value), which only makes the bound safer. Real tokens are far below
/// them: hundreds of `groups`, an `act` chain of the deepest rule (25).
pub(crate) mod json_shape {
    /// JSON values in one document (array elements and object members).
    pub(crate) const MAX_VALUES: usize = 2048;
    /// Object members in one document (each costs a B-tree slot and its key).
    pub(crate) const MAX_MEMBERS: usize = 512;
    /// Non-empty objects and arrays in one document (each its own allocation).
    pub(crate) const MAX_CONTAINERS: usize = 128;
    /// Nesting of objects and arrays.
    pub(crate) const MAX_DEPTH: usize = 32;

    pub(crate) use crate::json_shape::measure;

    /// Checks `json` against the bounds above; the error names the one
    /// exceeded. Text that is not JSON passes here and fails in the parser.
    pub(crate) fn check(json: &[u8]) -> Result<(), &'static str> {
        if surely_within(json) {
            return Ok(());
        }
        let shape = measure(json);
        if shape.depth > MAX_DEPTH {
            return Err("claims nest deeper than 32 levels");
        }
        if shape.values > MAX_VALUES {
            return Err("claims hold more than 2048 JSON values");
        }
        if shape.members > MAX_MEMBERS {
            return Err("claims hold more than 512 object members");
        }
        if shape.containers > MAX_CONTAINERS {
            return Err("claims hold more than 128 objects and arrays");
        }
        Ok(())
    }

    /// Whether the bounds hold, counted without telling strings apart: every
    /// `,` `:` `[` `{` anywhere, each one at most a value (`measure` counts
    /// only those outside strings), each `:` at most a member, each `[` `{`
    /// at most a container and a level of nesting. These counts are never
    /// below `measure`'s, so within them the text is within the bounds; a
    /// typical token is, and this loop (vectorised) costs a small part of
    /// `measure`'s, which decides only when it is not.
    pub(super) fn surely_within(json: &[u8]) -> bool {
        let (mut separators, mut colons, mut opens) = (0usize, 0usize, 0usize);
        // Byte-wide counters per chunk (at most 128 each, no overflow): the
        // loop runs 16 or 32 bytes a step.
        for chunk in json.chunks(128) {
            let (mut s, mut c, mut o) = (0u8, 0u8, 0u8);
            for &b in chunk {
                s += u8::from(b == b',');
                c += u8::from(b == b':');
                o += u8::from(b == b'[') + u8::from(b == b'{');
            }
            (separators, colons, opens) =
                (separators + usize::from(s), colons + usize::from(c), opens + usize::from(o));
        }
        1 + separators + colons + opens <= MAX_VALUES
            && colons <= MAX_MEMBERS
            && opens <= MAX_CONTAINERS
            && opens <= MAX_DEPTH
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;

    fn header(json: &str) -> Result<VerifyAlg, TokenError> {
        check_header(&serde_json::from_str::<Header<'_>>(json).unwrap())
    }

    #[test]
    fn header_checks_refuse_each_attack() {
        assert_eq!(header(r#"{"alg":"none"}"#), Err(TokenError::AlgNone));
        assert_eq!(header(r#"{"alg":"NONE"}"#), Err(TokenError::AlgNone));
        assert_eq!(header(r#"{"alg":"HS256"}"#), Err(TokenError::Symmetric));
        assert_eq!(header(r#"{"alg":"RS1"}"#), Err(TokenError::UnknownAlg));
        assert_eq!(header(r#"{"alg":"RS256","jku":"https://evil/jwks"}"#), Err(TokenError::HeaderKey("jku")));
        assert_eq!(header(r#"{"alg":"RS256","x5u":"https://evil/cert"}"#), Err(TokenError::HeaderKey("x5u")));
        assert_eq!(header(r#"{"alg":"RS256","jwk":{"kty":"RSA"}}"#), Err(TokenError::HeaderKey("jwk")));
        assert_eq!(header(r#"{"alg":"RS256","x5c":["MII"]}"#), Err(TokenError::HeaderKey("x5c")));
        assert_eq!(header(r#"{"alg":"RS256","crit":["exp"]}"#), Err(TokenError::Crit));
        // Present with a null value is present: refused all the same.
        assert_eq!(header(r#"{"alg":"RS256","jku":null}"#), Err(TokenError::HeaderKey("jku")));
        assert_eq!(header(r#"{"alg":"RS256","x5c":null}"#), Err(TokenError::HeaderKey("x5c")));
        assert_eq!(header(r#"{"alg":"RS256","crit":null}"#), Err(TokenError::Crit));
        assert_eq!(header(r#"{"alg":"RS256","enc":null}"#), Err(TokenError::Encrypted));
        assert_eq!(header(r#"{"alg":"RS256","typ":"logout+jwt"}"#), Err(TokenError::WrongType));
        assert_eq!(header(r#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#), Err(TokenError::Encrypted));
        assert_eq!(header(r#"{"alg":"RS256","typ":"JWT"}"#), Ok(VerifyAlg::RS256));
        assert_eq!(header(r#"{"alg":"ES256","typ":"application/at+jwt"}"#), Ok(VerifyAlg::ES256));
    }

    /// `typ` is read as lowercasing it and stripping `application/` read it,
    /// without the copy, on odd cases, prefixes and non-ASCII text.
    #[test]
    fn typ_rules_read_like_lowercasing() {
        let old = |typ: &str| {
            let t = typ.to_ascii_lowercase();
            let t = t.strip_prefix("application/").unwrap_or(&t);
            (matches!(t, "jwt" | "at+jwt"), t == "at+jwt")
        };
        let heads = [
            "",
            "application/",
            "APPLICATION/",
            "Application/",
            "application",
            "applicatioN/",
            "application/application/",
        ];
        let tails = [
            "jwt",
            "JWT",
            "Jwt",
            "at+jwt",
            "AT+JWT",
            "At+Jwt",
            "at+jw",
            "jwtx",
            "at+jwt ",
            "",
            "é",
            "jẇt",
            "logout+jwt",
            "/jwt",
        ];
        for head in heads {
            for tail in tails {
                let typ = format!("{head}{tail}");
                let json = serde_json::json!({"alg": "RS256", "typ": typ}).to_string();
                let got = (header(&json).is_ok(), is_at_jwt(&typ));
                assert_eq!(got, old(&typ), "{typ:?}");
            }
        }
        // Cut inside a multi-byte character at the prefix's length: no panic.
        for typ in ["applicatioé/jwt", "ééééééjwt", "appé"] {
            assert_eq!(
                (header(&serde_json::json!({"alg": "RS256", "typ": typ}).to_string()).is_ok(), is_at_jwt(typ)),
                old(typ)
            );
        }
    }

    /// The hand-written header reader reads every object as the derived one
    /// did (kept here as the reference): all pairs of members and random
    /// longer headers over the members we read, an unknown one, an escaped
    /// name and values of every type. Arrays, which the derive read
    /// positionally, are now refused.
    #[test]
    fn headers_read_like_the_derived_reader() {
        #[derive(Deserialize)]
        struct Derived<'a> {
            #[serde(borrow)]
            alg: Text<'a>,
            #[serde(default, borrow)]
            kid: Option<Text<'a>>,
            #[serde(default, borrow)]
            typ: Option<Text<'a>>,
            #[serde(default, deserialize_with = "present")]
            crit: bool,
            #[serde(default, deserialize_with = "present")]
            jku: bool,
            #[serde(default, deserialize_with = "present")]
            x5u: bool,
            #[serde(default, deserialize_with = "present")]
            jwk: bool,
            #[serde(default, deserialize_with = "present")]
            x5c: bool,
            #[serde(default, deserialize_with = "present")]
            enc: bool,
        }
        fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
            IgnoredAny::deserialize(d).map(|_| true)
        }
        type Read = (String, Option<String>, Option<String>, [bool; 6]);
        let read = |h: Header<'_>| -> Read {
            let text = |t: Option<Text<'_>>| t.map(|t| t.0.into_owned());
            (h.alg.0.into_owned(), text(h.kid), text(h.typ), [h.crit, h.jku, h.x5u, h.jwk, h.x5c, h.enc])
        };
        let serde = |json: &str| serde_json::from_str::<Header<'_>>(json).ok().map(read);
        // What validation reads; the fast path reads what it reads as serde
        // does, and often (plain text, no repeated member).
        let fast = std::cell::Cell::new(0);
        let new = |json: &str| -> Option<Read> {
            if let Some(h) = Header::scan(json) {
                assert_eq!(Some(read(h)), serde(json), "fast path: {json}");
                fast.set(fast.get() + 1);
            }
            Header::parse(json).map(read)
        };
        let old = |json: &str| -> Option<Read> {
            let h = serde_json::from_str::<Derived<'_>>(json).ok()?;
            let text = |t: Option<Text<'_>>| t.map(|t| t.0.into_owned());
            Some((h.alg.0.into_owned(), text(h.kid), text(h.typ), [h.crit, h.jku, h.x5u, h.jwk, h.x5c, h.enc]))
        };
        let keys = ["alg", "kid", "typ", "crit", "jku", "x5u", "jwk", "x5c", "enc", "x", "\\u0061lg", "k\\u0069d"];
        let values =
            ["\"RS256\"", "null", "1", "{}", "[\"a\"]", "\"at+jwt\"", "\"k\\/1\"", "true", "{\"alg\":\"none\"}"];
        let member = |n: usize| format!("\"{}\":{}", keys[n % keys.len()], values[n / keys.len() % values.len()]);
        let members = keys.len() * values.len();
        let (mut accepted, mut refused) = (0, 0);
        let mut check = |json: String| {
            let got = new(&json);
            assert_eq!(got, old(&json), "{json}");
            if got.is_some() { accepted += 1 } else { refused += 1 }
        };
        for a in 0..members {
            for b in 0..members {
                check(format!("{{{},{}}}", member(a), member(b)));
            }
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            let mut next = || {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as usize
            };
            let n = 1 + next() % 6;
            let body: Vec<String> = (0..n).map(|_| member(next())).collect();
            check(format!("{{{}}}", body.join(",")));
        }
        assert!(accepted > 1000 && refused > 1000, "{accepted} accepted, {refused} refused");
        assert!(fast.get() > 300, "{} read on the fast path", fast.get());
        for common in [r#"{"alg":"RS256","typ":"JWT","kid":"k1"}"#, r#"{"kid":"k1","alg":"ES256","typ":"at+jwt"}"#] {
            assert!(Header::scan(common).is_some(), "{common}");
        }
        // Not an object: refused, and nothing else is read as a header.
        for bad in [
            r#"["RS256"]"#,
            r#"["RS256",null,null,false,false,false,false,false,false]"#,
            "\"RS256\"",
            "null",
            "{}",
            r#"{"alg":"RS256"} x"#,
        ] {
            assert!(new(bad).is_none(), "{bad}");
        }
        assert!(old(r#"["RS256"]"#).is_some(), "the derive read arrays");
    }

    #[test]
    fn duplicate_header_members_are_refused() {
        // A header with two `alg` members must not be read "the lenient way".
        assert!(serde_json::from_str::<Header<'_>>(r#"{"alg":"RS256","alg":"none"}"#).is_err());
    }

    /// stsgate's own tokens: verified with every key of its ring and nothing else.
    mod own {
        use super::*;
        use crate::config::{Config, SignAlg};
        use crate::signing::{KeyRing, Signer};
        use crate::trust::issuer::http_client;
        use serde_json::json;

        const STS: &str = "https://sts.test";

        struct Ring {
            active: Arc<Signer>,
            older: Arc<Signer>,
            ring: KeyRing,
        }

        /// A ring of two keys (the active one and one kept for rotation overlap).
        fn ring() -> Ring {
            let active = Arc::new(Signer::generate("new", SignAlg::ES256).unwrap());
            let older = Arc::new(Signer::generate("old", SignAlg::EdDSA).unwrap());
            let ring = KeyRing::from_signers(vec![active.clone(), older.clone()], "new").unwrap();
            Ring { active, older, ring }
        }

        /// A validator trusting one IdP, and stsgate itself when `ring` is given.
        fn validator(ring: Option<&KeyRing>) -> Validator {
            crate::install_crypto_provider();
            let cfg = Config::from_yaml_str(
                "issuer: https://sts.test\nsigning:\n  keys: [{ kid: a, ephemeral: true }]\n\
                 trusted_issuers:\n  - { issuer: https://idp.test, jwks_url: https://idp.test/jwks }\n",
            )
            .unwrap();
            let issuers = Arc::new(Issuers::new(&cfg, http_client().unwrap()));
            Validator::new(issuers, 16384).with_own(ring.map(|r| OwnIssuer::new(STS, r)))
        }

        fn claims(now: i64) -> serde_json::Value {
            json!({
                "iss": STS, "sub": "alice", "aud": "orders", "exp": now + 120, "iat": now, "jti": "j",
                "client_id": "web-app", "scope": "orders.read orders.write",
                "sub_id": {"format": "iss_sub", "iss": "https://idp.test", "sub": "alice"},
                "act": {"sub": "spiffe://cluster.local/ns/shop/sa/web"},
            })
        }

        async fn validate(v: &Validator, token: &str) -> Result<Validated, TokenError> {
            v.validate_at(token, 1_700_000_000).await
        }

        #[tokio::test]
        async fn an_own_token_verifies_with_any_key_of_the_ring_and_keeps_what_rules_need() {
            let r = ring();
            let v = validator(Some(&r.ring));
            let now = 1_700_000_000;
            for signer in [&r.active, &r.older] {
                let token = signer.sign_access_token(&claims(now)).unwrap();
                let got = validate(&v, &token).await.unwrap_or_else(|e| panic!("{}: {e}", signer.kid));
                assert!(got.is_own());
                assert_eq!((got.issuer.as_str(), got.sub.as_str(), got.exp), (STS, "alice", now + 120));
                assert_eq!(got.scopes, ["orders.read", "orders.write"]);
                assert_eq!(got.client_id.as_deref(), Some("web-app"));
                assert_eq!(got.claims.aud().collect::<Vec<_>>(), ["orders"]);
                assert_eq!(got.claims.act, Some(json!({"sub": "spiffe://cluster.local/ns/shop/sa/web"})));
                // The original issuer is carried, not stsgate's.
                let original = SubId::IssSub { iss: "https://idp.test".into(), sub: "alice".into() };
                assert_eq!(got.sub_id(), original);
                assert!(!got.claims.has_other("sub_id"), "kept once, as own_sub_id");
            }
        }

        #[tokio::test]
        async fn own_tokens_are_refused_when_anything_is_off() {
            let r = ring();
            let v = validator(Some(&r.ring));
            let now = 1_700_000_000;
            let sign = |c: &serde_json::Value| r.active.sign_access_token(c).unwrap();

            // A key the ring does not hold, under a new kid and under one of the ring's.
            let stranger = Signer::generate("stranger", SignAlg::ES256).unwrap();
            let err = validate(&v, &stranger.sign_access_token(&claims(now)).unwrap()).await.unwrap_err();
            assert!(matches!(err, TokenError::Key(KeyLookupError::UnknownKid { .. })), "{err:?}");
            let impostor = Signer::generate("new", SignAlg::ES256).unwrap();
            assert_eq!(
                validate(&v, &impostor.sign_access_token(&claims(now)).unwrap()).await.unwrap_err(),
                TokenError::BadSignature
            );

            // The algorithm is the key's: an ES256 token naming the EdDSA key.
            let token = sign(&claims(now));
            let (_, rest) = token.split_once('.').unwrap();
            let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"at+jwt","kid":"old"}"#);
            let err = validate(&v, &format!("{header}.{rest}")).await.unwrap_err();
            assert!(matches!(err, TokenError::Key(KeyLookupError::UnknownKid { alg: "ES256" })), "{err:?}");
            // No kid: stsgate always names its key.
            let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","typ":"at+jwt"}"#);
            let err = validate(&v, &format!("{header}.{rest}")).await.unwrap_err();
            assert!(matches!(err, TokenError::Key(KeyLookupError::UnknownKid { .. })), "{err:?}");

            // Another iss, signed by the very same key: not stsgate's token.
            let mut other = claims(now);
            other["iss"] = json!("https://sts.test/");
            assert_eq!(validate(&v, &sign(&other)).await.unwrap_err(), TokenError::UntrustedIssuer);

            // typ must be at+jwt.
            for typ in ["JWT", "jwt"] {
                let token = r.active.sign_typed(typ, &claims(now)).unwrap();
                assert_eq!(validate(&v, &token).await.unwrap_err(), TokenError::NotAtJwt, "{typ}");
            }
            let mut header: serde_json::Value =
                serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap()).unwrap();
            header.as_object_mut().unwrap().remove("typ");
            let untyped = format!("{}.{rest}", URL_SAFE_NO_PAD.encode(header.to_string()));
            assert_eq!(validate(&v, &untyped).await.unwrap_err(), TokenError::NotAtJwt);

            // Expired (past the leeway), not yet valid, no sub_id, a malformed one.
            let mut expired = claims(now);
            expired["exp"] = json!(now - OWN_LEEWAY.as_secs() as i64 - 1);
            assert_eq!(validate(&v, &sign(&expired)).await.unwrap_err(), TokenError::Expired);
            let mut early = claims(now);
            early["nbf"] = json!(now + 3600);
            assert_eq!(validate(&v, &sign(&early)).await.unwrap_err(), TokenError::NotYetValid);
            for sub_id in [None, Some(json!("alice")), Some(json!({"format": "email", "email": "a@x"}))] {
                let mut c = claims(now);
                match sub_id {
                    None => c.as_object_mut().unwrap().remove("sub_id"),
                    Some(bad) => c.as_object_mut().unwrap().insert("sub_id".into(), bad),
                };
                assert_eq!(validate(&v, &sign(&c)).await.unwrap_err(), TokenError::Claim("sub_id"));
            }
        }

        #[tokio::test]
        async fn without_the_own_issuer_stsgates_tokens_are_untrusted() {
            let r = ring();
            let token = r.active.sign_access_token(&claims(1_700_000_000)).unwrap();
            assert_eq!(validate(&validator(None), &token).await.unwrap_err(), TokenError::UntrustedIssuer);
        }
    }

    #[test]
    fn json_shape_bounds_each_costly_shape_and_only_those() {
        use json_shape::*;
        let array = |n: usize, unit: &str| format!("{{\"a\":[{}]}}", vec![unit; n].join(","));
        // `{"a":[...]}`: the root, one member, the array, then one value per element after the first.
        assert_eq!(check(array(MAX_VALUES - 3, "0").as_bytes()), Ok(()));
        assert_eq!(check(array(MAX_VALUES - 2, "0").as_bytes()), Err("claims hold more than 2048 JSON values"));
        let members = |n: usize| format!("{{{}}}", (0..n).map(|i| format!("\"{i}\":0")).collect::<Vec<_>>().join(","));
        assert_eq!(check(members(MAX_MEMBERS).as_bytes()), Ok(()));
        assert_eq!(check(members(MAX_MEMBERS + 1).as_bytes()), Err("claims hold more than 512 object members"));
        assert_eq!(check(array(MAX_CONTAINERS - 2, "[0]").as_bytes()), Ok(()));
        assert_eq!(
            check(array(MAX_CONTAINERS - 1, "[0]").as_bytes()),
            Err("claims hold more than 128 objects and arrays")
        );
        // Empty containers allocate nothing and are not counted as containers.
        assert_eq!(check(array(1000, "[ ]").as_bytes()), Ok(()));
        let deep = |n: usize| format!("{}0{}", "[".repeat(n), "]".repeat(n));
        assert_eq!(check(deep(MAX_DEPTH).as_bytes()), Ok(()));
        assert_eq!(check(deep(MAX_DEPTH + 1).as_bytes()), Err("claims nest deeper than 32 levels"));
        // Structure inside strings (escaped quotes included) is text, not values.
        let text = format!("{{\"a\":\"{}\\\"{}\"}}", "[,:{".repeat(5000), "]".repeat(100));
        assert_eq!(check(text.as_bytes()), Ok(()));
        // Junk passes here and is the parser's to refuse; nothing panics.
        for junk in [&b"]]]]"[..], b"\"", b"{", b"\\", b"\xff\xfe[", b""] {
            assert_eq!(check(junk), Ok(()));
        }
    }

    /// `check` passes a text on the quick over-count alone only when the
    /// exact `measure` would pass it too: the bound holds before any parse.
    #[test]
    fn the_quick_shape_count_never_passes_what_measure_refuses() {
        use json_shape::*;
        let exact = |json: &[u8]| {
            let s = measure(json);
            s.depth <= MAX_DEPTH && s.values <= MAX_VALUES && s.members <= MAX_MEMBERS && s.containers <= MAX_CONTAINERS
        };
        // Random texts of the bytes that matter, dense enough to cross every bound.
        let alphabet = b"[]{},:\" 0a\\";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let (mut quick, mut refused) = (0, 0);
        for case in 0..4000 {
            let len = [16, 200, 600, 2500, 9000][case % 5];
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    alphabet[(seed % alphabet.len() as u64) as usize]
                })
                .collect();
            if surely_within(&text) {
                quick += 1;
                assert!(exact(&text), "{}", String::from_utf8_lossy(&text));
            }
            refused += usize::from(!exact(&text));
            assert_eq!(check(&text).is_ok(), exact(&text));
        }
        assert!(quick > 100 && refused > 100, "both ways exercised: {quick} quick, {refused} refused");
        // A real token's claims take the quick way.
        let claims = br#"{"iss":"https://idp.example/realms/corp","sub":"user-1","aud":["a","b"],"exp":1,"iat":1,
            "scope":"openid profile","groups":["customers","staff"],"email":"u@x.example","url":"https://x:8443/"}"#;
        assert!(surely_within(claims));
    }

    /// The header is read in place from a stack buffer; escapes, and a
    /// header too long for the buffer, still read the same.
    #[test]
    fn headers_read_the_same_borrowed_escaped_or_long() {
        let b64 = |json: &str| URL_SAFE_NO_PAD.encode(json);
        let h = read_header(&b64(r#"{"alg":"RS256","kid":"k\/1","typ":"at+jwt"}"#)).unwrap();
        assert_eq!((h.alg, h.kid.as_deref(), h.at_jwt), (VerifyAlg::RS256, Some("k/1"), true));
        let long = format!(r#"{{"alg":"ES256","x":"{}","kid":"k2"}}"#, "y".repeat(2000));
        let h = read_header(&b64(&long)).unwrap();
        assert_eq!((h.alg, h.kid.as_deref(), h.at_jwt), (VerifyAlg::ES256, Some("k2"), false));
        let refused = format!(r#"{{"alg":"ES256","x":"{}","jwk":{{}}}}"#, "y".repeat(2000));
        assert!(matches!(read_header(&b64(&refused)), Err(TokenError::HeaderKey("jwk"))));
        for bad in ["!!!", &b64("{\"alg\":1}"), &b64("[]"), &b64(&format!("{{\"alg\":\"{}", "a".repeat(900)))] {
            assert!(matches!(read_header(bad), Err(TokenError::Malformed(_))), "{bad}");
        }
    }

    /// The SIMD decoder accepts exactly what the `base64` crate's strict
    /// `URL_SAFE_NO_PAD` accepts, and decodes it to the same bytes.
    fn assert_decodes_like_base64(input: &[u8]) {
        let want = URL_SAFE_NO_PAD.decode(input).ok();
        let got = B64URL.decode_to_vec(input).ok();
        assert_eq!(got, want, "{:?}", String::from_utf8_lossy(input));
        // The stack-buffer path: the same, or `None` when too long.
        if let Ok(text) = std::str::from_utf8(input) {
            let mut buf = [MaybeUninit::uninit(); 64];
            match b64_decode_into(text, &mut buf) {
                Some(r) => assert_eq!(r.ok().map(<[u8]>::to_vec), want, "{text:?}"),
                // Too long for the buffer, valid or not: read_header then
                // decodes onto the heap, a signature is refused.
                None => assert!(B64URL.decoded_length(input).is_ok_and(|n| n > buf.len()), "{text:?}"),
            }
        }
    }

    /// Every string of up to three characters over the alphabet, the
    /// standard alphabet's `+` and `/`, padding, whitespace, a dot, a NUL and
    /// non-ASCII: non-canonical last characters ("QR" for "QQ"), lengths of 1
    /// mod 4 and padding are refused by both.
    #[test]
    fn base64url_decoding_is_as_strict_as_base64s_exhaustively() {
        let mut chars: Vec<u8> = (b'A'..=b'Z').chain(b'a'..=b'z').chain(b'0'..=b'9').collect();
        chars.extend_from_slice(b"-_+/= \t\r\n.\0\x80\xff");
        let mut accepted = 0;
        for len in 0..=3 {
            let mut idx = vec![0usize; len];
            loop {
                let s: Vec<u8> = idx.iter().map(|&i| chars[i]).collect();
                assert_decodes_like_base64(&s);
                accepted += usize::from(URL_SAFE_NO_PAD.decode(&s).is_ok());
                // Next combination, odometer-wise.
                let Some(k) = idx.iter().rposition(|&i| i + 1 < chars.len()) else { break };
                idx[k] += 1;
                idx[k + 1..].iter_mut().for_each(|i| *i = 0);
            }
        }
        // "" + 2 chars (64 * 4 canonical) + 3 chars (64 * 64 * 16): the
        // comparison saw both outcomes, and canonical ones only.
        assert_eq!(accepted, 1 + 64 * 4 + 64 * 64 * 16);
        for (s, ok) in [("QQ", true), ("QR", false), ("QUE", true), ("QUF", false), ("QQ==", false), ("QQ=", false)] {
            assert_eq!(B64URL.decode_to_vec(s).is_ok(), ok, "{s}");
        }
        for bad in ["Q+E", "Q/E", "QU E", "QUE\n", "A", "AAAAA", "a+b/"] {
            assert!(B64URL.decode_to_vec(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]
        /// Long inputs take the SIMD paths: valid encodings of random bytes,
        /// then one character replaced (by any of the alphabet, changing the
        /// trailing bits when last, or by a refused one), or padding added,
        /// or cut to any length.
        #[test]
        fn base64url_decoding_is_as_strict_as_base64s_on_long_inputs(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            with in proptest::sample::select(b"AQgw_-+/= \n.\x80\0".to_vec()),
            how in 0..4u8,
        ) {
            let mut s = URL_SAFE_NO_PAD.encode(&bytes).into_bytes();
            assert_decodes_like_base64(&s);
            match how {
                0 if !s.is_empty() => { let i = at.index(s.len()); s[i] = with; }
                1 if !s.is_empty() => { let n = s.len(); s[n - 1] = with; }
                2 => s.extend_from_slice(b"=="),
                _ => s.truncate(at.index(s.len() + 1)),
            }
            assert_decodes_like_base64(&s);
        }
    }

    /// The parts as `str::split` read them, with the same refusals: fewer
    /// than three parts, five (JWE), or any other number above three.
    #[test]
    fn jws_parts_split_like_str_split() {
        let by_split = |token: &str| -> Result<(String, String, String), TokenError> {
            let mut parts = token.split('.');
            let (Some(h), Some(p), Some(s)) = (parts.next(), parts.next(), parts.next()) else {
                return Err(TokenError::Malformed("expected three dot-separated parts"));
            };
            if parts.next().is_some() {
                return Err(if parts.count() == 1 {
                    TokenError::Encrypted
                } else {
                    TokenError::Malformed("too many parts")
                });
            }
            Ok((h.into(), p.into(), s.into()))
        };
        for n in 0..=8 {
            for shape in ["", "a", "é", "ab.c"] {
                let token = vec![shape; n + 1].join(".");
                let got = jws_parts(&token).map(|(h, p, s)| (h.to_owned(), p.to_owned(), s.to_owned()));
                assert_eq!(got, by_split(&token), "{token:?}");
            }
        }
        let long = format!("{}.{}.{}", "h".repeat(300), "p".repeat(900), "s".repeat(342));
        assert_eq!(jws_parts(&long).unwrap(), (&long[..300], &long[301..1201], &long[1202..]));
        assert_eq!(jws_parts("a.b.c.d.e"), Err(TokenError::Encrypted));
        assert_eq!(jws_parts("a.b.c.d"), Err(TokenError::Malformed("too many parts")));
        assert_eq!(jws_parts("a.b"), Err(TokenError::Malformed("expected three dot-separated parts")));
        assert_eq!(jws_parts(".."), Ok(("", "", "")));
    }

    /// A signature too long for the stack buffer is a bad signature, not a panic.
    #[test]
    fn signatures_longer_than_the_buffer_are_refused() {
        let mut buf = [MaybeUninit::uninit(); 1024];
        assert!(b64_decode_into(&URL_SAFE_NO_PAD.encode([7u8; 1024]), &mut buf).is_some_and(|r| r.is_ok()));
        assert!(b64_decode_into(&URL_SAFE_NO_PAD.encode([7u8; 1025]), &mut buf).is_none());
    }
}
