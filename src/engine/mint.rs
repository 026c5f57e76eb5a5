//! The minted token: its claims (RFC 9068), how it is signed and kept, and
//! what the front doors read from it. A minted token is stored compact (see
//! `Minted`) and assembled into its compact serialization when handed out.

use std::sync::Arc;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64_simd::URL_SAFE_NO_PAD;
use serde::Serialize;
use serde_json::{Map, Value};

use super::Engine;
use super::cache::Weigh;
use crate::config::Outcome;
use crate::rules::{Decision, SubId};
use crate::signing::KeyError;

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("claims could not be encoded: {0}")]
    Encode(String),
    #[error("the system random number generator failed")]
    Random,
    /// The decision names a rule this engine does not hold: a bug, not a
    /// request problem.
    #[error("internal error: rule {0:?} is not in the engine's configuration")]
    UnknownRule(String),
}

/// The claims of an access token minted by stsgate (RFC 9068 §2.2).
#[derive(Debug, Clone, Serialize)]
pub struct AccessClaims {
    pub iss: String,
    /// Who `sub` is, with the namespace it is a name in (RFC 9493): stsgate
    /// re-issues subjects of several IdPs under its one `iss`. Written right
    /// after `iss`, so that everything up to the subject's name is constant
    /// per subject issuer (see `PayloadPrefix`).
    pub sub_id: SubId,
    pub sub: String,
    pub aud: String,
    pub exp: i64,
    pub iat: i64,
    pub jti: String,
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub act: Option<Value>,
    /// Claims added or copied by rules.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `AccessClaims` as `mint` writes them: borrowed from the decision and the
/// request, so that a cold exchange copies no claim before serialising it.
/// The same fields in the same order, so the same JSON bytes.
#[derive(Serialize)]
struct ClaimsOut<'a> {
    iss: &'a str,
    sub_id: &'a SubId,
    sub: &'a str,
    aud: &'a str,
    exp: i64,
    iat: i64,
    jti: &'a str,
    client_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    act: Option<&'a Value>,
    #[serde(flatten)]
    extra: std::borrow::Cow<'a, Map<String, Value>>,
}

impl ClaimsOut<'_> {
    /// The claims as serde writes `AccessClaims` (the tests compare), by
    /// hand for the fields stsgate sets (issue 17: most of the claims' cost
    /// was serde's); `act` and the rules' claims, JSON of any shape, go
    /// through serde_json.
    fn write(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"iss\":");
        json_string(out, self.iss);
        out.extend_from_slice(b",\"sub_id\":");
        json_sub_id(out, self.sub_id);
        out.extend_from_slice(b",\"sub\":");
        json_string(out, self.sub);
        out.extend_from_slice(b",\"aud\":");
        json_string(out, self.aud);
        out.extend_from_slice(b",\"exp\":");
        json_number(out, self.exp);
        out.extend_from_slice(b",\"iat\":");
        json_number(out, self.iat);
        out.extend_from_slice(b",\"jti\":");
        json_string(out, self.jti);
        out.extend_from_slice(b",\"client_id\":");
        json_string(out, self.client_id);
        if let Some(scope) = self.scope {
            out.extend_from_slice(b",\"scope\":");
            json_string(out, scope);
        }
        if let Some(act) = self.act {
            out.extend_from_slice(b",\"act\":");
            serde_json::to_writer(&mut *out, act)?;
        }
        // `#[serde(flatten)]` of the map: its members, in its order.
        for (name, value) in self.extra.iter() {
            out.push(b',');
            json_string(out, name);
            out.push(b':');
            serde_json::to_writer(&mut *out, value)?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// A JSON string as serde_json writes it: only `"`, `\\` and control
/// characters are escaped, and those few strings are left to serde_json.
pub(super) fn json_string(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Into a Vec, a string cannot fail to encode.
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

/// Whether `s` holds a byte JSON escapes: `"`, `\\` or a control character.
/// Eight bytes at a time: the strings are mostly shorter than a vector, where
/// a byte loop cost ~120 instructions a string, ~25 of them per cold
/// exchange (issue 17). Each test is exact for the word as a whole: a borrow
/// can mark a wrong byte, but only above a byte that matched.
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // Some byte of x is below n (exact for n <= 0x80; n = 1: a zero byte).
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let word =
        |x: u64| below(x, 0x20) | below(x ^ (ONES * u64::from(b'"')), 1) | below(x ^ (ONES * u64::from(b'\\')), 1);
    let load = |c: &[u8]| u64::from_ne_bytes(c.try_into().unwrap_or_default());
    if s.len() < 8 {
        // Padded with a byte that needs nothing.
        let mut tail = [b'a'; 8];
        for (t, &b) in tail.iter_mut().zip(s) {
            *t = b;
        }
        return word(u64::from_ne_bytes(tail)) != 0;
    }
    let found = s.chunks_exact(8).fold(0, |found, c| found | word(load(c)));
    // The tail: the last eight bytes, overlapping the last whole word.
    (found | word(load(&s[s.len() - 8..]))) != 0
}

pub(super) fn json_number(out: &mut Vec<u8>, n: i64) {
    // serde_json's integer writer, without `fmt`'s machinery.
    let _ = serde_json::to_writer(&mut *out, &n);
}

/// `sub_id` as serde writes a `SubId` (the tag first; the tests compare).
pub(super) fn json_sub_id(out: &mut Vec<u8>, id: &SubId) {
    match id {
        SubId::IssSub { iss, sub } => {
            out.extend_from_slice(b"{\"format\":\"iss_sub\",\"iss\":");
            json_string(out, iss);
            out.extend_from_slice(b",\"sub\":");
            json_string(out, sub);
        }
        SubId::Uri { uri } => {
            out.extend_from_slice(b"{\"format\":\"uri\",\"uri\":");
            json_string(out, uri);
        }
        SubId::Opaque { id } => {
            out.extend_from_slice(b"{\"format\":\"opaque\",\"id\":");
            json_string(out, id);
        }
    }
    out.push(b'}');
}

/// A random, unguessable token identifier: 128 random bits, base64url. A
/// broken RNG fails the mint: a predictable or repeated `jti` would defeat
/// replay detection downstream.
pub fn new_jti() -> Result<String, MintError> {
    let bytes = JTI_POOL.with(|pool| pool.borrow_mut().take()).ok_or(MintError::Random)?;
    Ok(URL_SAFE_NO_PAD.encode_to_string(bytes))
}

/// Bytes drawn from the system DRBG per refill of a thread's `jti` pool.
const JTI_POOL_BYTES: usize = 512;

thread_local! {
    /// Random bytes for `jti`s, drawn a block at a time: a call to the DRBG
    /// costs ~2,300 instructions whatever its length, which 16 bytes a cold
    /// exchange paid in full (issue 17); 512 bytes cost little more. They are
    /// not secret (each ends up in a token) and each is handed out once. The
    /// pool is per thread and stsgate never forks, so no two mints share bytes.
    static JTI_POOL: std::cell::RefCell<JtiPool> =
        const { std::cell::RefCell::new(JtiPool { bytes: [0; JTI_POOL_BYTES], next: JTI_POOL_BYTES }) };
}

struct JtiPool {
    bytes: [u8; JTI_POOL_BYTES],
    /// The first byte not yet handed out.
    next: usize,
}

impl JtiPool {
    /// The next 16 bytes, refilling first when they run out; `None` when the
    /// DRBG fails (the pool then stays empty, and the next call tries again).
    fn take(&mut self) -> Option<[u8; 16]> {
        if self.next + 16 > JTI_POOL_BYTES {
            SystemRandom::new().fill(&mut self.bytes).ok()?;
            self.next = 0;
        }
        let taken = &mut self.bytes[self.next..self.next + 16];
        let out: [u8; 16] = (*taken).try_into().ok()?;
        // Never handed out twice, whatever happens to `next`.
        taken.fill(0);
        self.next += 16;
        Some(out)
    }
}

/// A minted token as the cache keeps it: compact and self-contained.
///
/// The claims are stored as raw JSON without their constant start (`iss` and
/// the subject issuer's part of `sub_id`, see `PayloadPrefix`) and followed by
/// the raw signature, in one allocation; prefix, rule, issuer and key are
/// indices into the engine's configuration. The token text is assembled when
/// it is handed out. With about 500 bytes per entry, 100k cached exchanges
/// fit in the memory budget.
#[derive(Debug, Clone)]
pub(crate) struct Minted {
    /// The prefix's `view_head`, the claims after the prefix (together: a JSON
    /// object holding `sub`, `aud`, `scope`, `jti`), then the signature.
    signed: Box<[u8]>,
    rest_len: u32,
    /// Which of the engine's `PayloadPrefix`es the payload starts with.
    prefix: u16,
    pub(crate) exp: i64,
    pub(crate) outcome: Outcome,
    rule: u16,
    issuer: u16,
    signer: u16,
    /// Extra tokens for downstream audiences.
    downstream: Option<Box<[DownstreamToken]>>,
}

/// (index of the rule's `downstream_tokens` entry, token).
type DownstreamToken = (u16, Box<str>);

impl Weigh for Minted {
    /// Approximate bytes held, for the cache's memory bound.
    fn weight(&self) -> usize {
        let downstream: usize = self.downstream.iter().flat_map(|d| d.iter()).map(|(_, t)| t.len() + 32).sum();
        std::mem::size_of::<Self>() + 32 + self.signed.len() + downstream + 48
    }
}

/// A minted token together with the engine parts it refers to: what the
/// front doors read headers, metadata and logs from.
#[derive(Debug)]
pub struct Exchanged<'e> {
    engine: &'e Engine,
    /// Shared with the cache: a hit costs one reference count, not a copy.
    minted: Arc<Minted>,
    /// The audit record of an impersonation, complete with the minted `jti`:
    /// only a token that was actually minted is audited (never cached).
    audit: Option<Box<str>>,
    /// The claims of a token minted just now, as minting had them; `None`
    /// for a cache hit. Boxed: an `Exchanged` is moved through the Check's
    /// futures.
    fresh: Option<Box<Fresh>>,
    /// The compact token as it was signed, for a token minted just now; a
    /// cache hit assembles it from `minted`.
    signed_text: Option<String>,
}

/// The claims a token was minted with, kept for the audit event and the
/// answer's metadata so that neither parses the signed payload back: the
/// same values `ClaimsOut` serialised (moved out of the decision, not copied).
#[derive(Debug, Clone, serde::Deserialize)]
pub(crate) struct Fresh {
    pub(crate) sub: String,
    pub(crate) sub_id: SubId,
    pub(crate) aud: String,
    pub(crate) client_id: String,
    #[serde(default)]
    pub(crate) scope: Option<String>,
    pub(crate) jti: String,
    #[serde(default)]
    pub(crate) act: Option<Value>,
    #[serde(default)]
    pub(crate) act_as: Option<Value>,
}

/// The claims front doors show in metadata and logs, read from the payload.
#[derive(Debug, serde::Deserialize)]
pub(crate) struct ClaimsView<'a> {
    #[serde(borrow)]
    pub(crate) sub: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(crate) aud: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    pub(crate) scope: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow)]
    pub(crate) jti: std::borrow::Cow<'a, str>,
}

impl<'e> Exchanged<'e> {
    /// A token answered from the minted-token cache (never audited).
    pub(super) fn cached(engine: &'e Engine, minted: Arc<Minted>) -> Exchanged<'e> {
        Exchanged { engine, minted, audit: None, fresh: None, signed_text: None }
    }

    /// The claims this token was minted with: as minting kept them, or (for
    /// a cache hit) read back from the payload; `None` only if the payload
    /// were not the JSON stsgate wrote itself.
    pub(crate) fn claims(&self) -> Option<std::borrow::Cow<'_, Fresh>> {
        match &self.fresh {
            Some(f) => Some(std::borrow::Cow::Borrowed(&**f)),
            None => serde_json::from_value(self.claims_json()).ok().map(std::borrow::Cow::Owned),
        }
    }

    /// The cache entry: shared, not copied.
    pub(super) fn minted(&self) -> &Arc<Minted> {
        &self.minted
    }

    /// Appends the compact serialization of the token to `out`.
    pub(crate) fn write_token(&self, out: &mut String) {
        if let Some(text) = &self.signed_text {
            out.push_str(text);
            return;
        }
        let m = &self.minted;
        let prefix = &self.engine.prefixes[m.prefix as usize];
        let (rest, sig) = m.signed.split_at(m.rest_len as usize);
        let header = self.engine.keys.signers()[m.signer as usize].header_b64();
        prefix.assemble(out, header, &rest[prefix.view_head.len()..], sig);
    }

    pub fn token(&self) -> String {
        let mut s = String::new();
        self.write_token(&mut s);
        s
    }

    /// `sub`, `aud`, `scope` and `jti`; `None` only if the payload were not
    /// the JSON stsgate wrote itself.
    pub(crate) fn view(&self) -> Option<ClaimsView<'_>> {
        use std::borrow::Cow::Borrowed;
        if let Some(f) = &self.fresh {
            // Minted just now: what minting had, not a parse of what it wrote.
            let (sub, aud, jti) = (Borrowed(f.sub.as_str()), Borrowed(f.aud.as_str()), Borrowed(f.jti.as_str()));
            return Some(ClaimsView { sub, aud, scope: f.scope.as_deref().map(Borrowed), jti });
        }
        serde_json::from_slice(&self.minted.signed[..self.minted.rest_len as usize]).ok()
    }

    /// All claims, as JSON: the payload exactly as signed.
    pub(crate) fn claims_json(&self) -> Value {
        let m = &self.minted;
        let prefix = &self.engine.prefixes[m.prefix as usize];
        let mut payload = prefix.padded.clone();
        payload.extend_from_slice(&m.signed[prefix.view_head.len()..m.rest_len as usize]);
        serde_json::from_slice(&payload).unwrap_or_default()
    }

    pub(crate) fn exp(&self) -> i64 {
        self.minted.exp
    }

    pub(crate) fn outcome(&self) -> Outcome {
        self.minted.outcome
    }

    /// The audit record `exchange` writes for this token (impersonation only).
    pub(crate) fn audit(&self) -> Option<&str> {
        self.audit.as_deref()
    }

    pub fn rule(&self) -> &'e str {
        &self.engine.cfg.rules[self.minted.rule as usize].name
    }

    /// The issuer of the subject token: a trusted issuer, or stsgate itself
    /// for a re-exchanged token of its own.
    pub(crate) fn subject_issuer(&self) -> &'e str {
        let cfg = &self.engine.cfg;
        cfg.trusted_issuers.get(self.minted.issuer as usize).map_or(cfg.issuer.as_str(), |t| t.issuer.as_str())
    }

    /// Extra tokens for downstream audiences: (request header, token).
    pub(crate) fn downstream(&self) -> impl Iterator<Item = (&'e str, &str)> + '_ {
        let tokens = &self.engine.cfg.rules[self.minted.rule as usize].grant.downstream_tokens;
        self.minted
            .downstream
            .iter()
            .flat_map(|d| d.iter())
            .map(move |(i, t)| (tokens[*i as usize].header.as_str(), &**t))
    }
}

/// The constant start of a payload, padded with JSON whitespace to a
/// multiple of three bytes, so that its base64 is a constant that can be
/// concatenated with the base64 of the rest. Cache entries store only the
/// rest, and a hit encodes fewer bytes.
///
/// The generic prefix is `{"iss":"<stsgate>",`. Each trusted issuer also has
/// one that runs on into `sub_id` up to the subject's name:
/// `{"iss":"<stsgate>","sub_id":{"format":"iss_sub","iss":"<idp>","sub":`,
/// which keeps about 80 bytes per entry out of the cache.
#[derive(Debug)]
pub(super) struct PayloadPrefix {
    /// What serde_json writes.
    written: Vec<u8>,
    /// The same, padded with spaces (after the last `,` or `:`).
    padded: Vec<u8>,
    padded_b64: String,
    /// Stored before the rest, to make the rest a JSON object that `view`
    /// can read without the prefix.
    view_head: &'static [u8],
    /// The subject issuer of an `iss_sub` prefix.
    subject_issuer: Option<String>,
}

impl PayloadPrefix {
    /// Index 0 is the generic prefix; then one per subject issuer.
    pub(super) fn all<'a>(issuer: &str, subject_issuers: impl Iterator<Item = &'a str>) -> Vec<PayloadPrefix> {
        let json = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let generic = format!("{{\"iss\":{},", json(issuer));
        let mut out = vec![PayloadPrefix::new(generic.clone().into_bytes(), b"{", None)];
        for idp in subject_issuers {
            let written = format!("{generic}\"sub_id\":{{\"format\":\"iss_sub\",\"iss\":{},\"sub\":", json(idp));
            out.push(PayloadPrefix::new(written.into_bytes(), b"{\"sub_id\":{\"sub\":", Some(idp.to_owned())));
        }
        out
    }

    fn new(written: Vec<u8>, view_head: &'static [u8], subject_issuer: Option<String>) -> PayloadPrefix {
        let mut padded = written.clone();
        while padded.len() % 3 != 0 {
            padded.push(b' ');
        }
        let padded_b64 = URL_SAFE_NO_PAD.encode_to_string(&padded);
        PayloadPrefix { written, padded, padded_b64, view_head, subject_issuer }
    }

    /// The prefix a token with this `sub_id` starts with.
    fn index_for(prefixes: &[PayloadPrefix], sub_id: &SubId) -> usize {
        match sub_id {
            SubId::IssSub { iss, .. } => {
                prefixes.iter().position(|p| p.subject_issuer.as_deref() == Some(iss.as_str())).unwrap_or(0)
            }
            _ => 0,
        }
    }

    /// `header.b64(prefix + rest).b64(sig)`.
    fn assemble(&self, out: &mut String, header_b64: &str, rest: &[u8], sig: &[u8]) {
        out.reserve(header_b64.len() + self.padded_b64.len() + 2 + (rest.len() + sig.len()) * 4 / 3 + 4);
        out.push_str(header_b64);
        out.push('.');
        out.push_str(&self.padded_b64);
        // SIMD base64 (issue 17), the same text as the `base64` crate's.
        URL_SAFE_NO_PAD.encode_append(rest, out);
        out.push('.');
        URL_SAFE_NO_PAD.encode_append(sig, out);
    }
}

/// What a granted exchange mints, besides the rules' decision.
pub(super) struct MintRequest<'a> {
    pub(crate) subject_issuer: &'a str,
    pub(crate) audience: &'a str,
    /// `client_id` when the rules chose none.
    pub(crate) default_client_id: &'a str,
    pub(crate) exp: i64,
    pub(crate) now: i64,
}

impl Engine {
    /// Mints the token a decision grants, and its downstream tokens, with the
    /// active key.
    pub(super) fn mint(&self, decision: Decision, req: &MintRequest<'_>) -> Result<Exchanged<'_>, MintError> {
        let rule = *self.rule_index.get(&decision.rule).ok_or_else(|| MintError::UnknownRule(decision.rule.clone()))?;
        // RFC 9068 client_id: the client that asked, as the rules chose it (an
        // actor token's from an admitted issuer, else the subject token's),
        // else the front door's default.
        let client_id = decision.client_id.as_deref().unwrap_or(req.default_client_id);
        // The rules' claims are borrowed; copied only to add `act_as` among them.
        let extra = match &decision.act_as {
            None => std::borrow::Cow::Borrowed(&decision.claims),
            Some(act_as) => {
                let mut extra = decision.claims.clone();
                extra.insert("act_as".into(), act_as.clone());
                std::borrow::Cow::Owned(extra)
            }
        };
        let jti = new_jti()?;
        let scope = (!decision.scopes.is_empty()).then(|| decision.scopes.join(" "));
        let claims = ClaimsOut {
            iss: &self.cfg.issuer,
            sub: &decision.sub,
            sub_id: &decision.sub_id,
            aud: req.audience,
            exp: req.exp,
            iat: req.now,
            jti: &jti,
            client_id,
            scope: scope.as_deref(),
            act: decision.act.as_ref(),
            extra,
        };
        let signer_index = self.keys.active_index();
        let signer = &self.keys.signers()[signer_index];
        let prefix_index = PayloadPrefix::index_for(&self.prefixes, claims.sub_id);
        let prefix = &self.prefixes[prefix_index];
        // The padded payload, its compact token and the raw signature.
        let sign = |c: &ClaimsOut<'_>| -> Result<(Vec<u8>, String, Vec<u8>), MintError> {
            // serde_json writes the fields in order (`iss`, then `sub_id` with
            // its tag first), exactly as the prefix expects. Sized for a
            // typical token, so that the buffer is not regrown while written.
            let mut payload = Vec::with_capacity(512);
            c.write(&mut payload).map_err(|e| MintError::Encode(e.to_string()))?;
            if !payload.starts_with(&prefix.written) {
                return Err(MintError::Encode("unexpected claims layout".into()));
            }
            // The padded prefix is the written one plus spaces: pad in place.
            let at = prefix.written.len();
            payload.splice(at..at, prefix.padded[at..].iter().copied());
            let (token, sig) = signer.sign_payload(&payload)?;
            Ok((payload, token, sig))
        };
        let (payload, signed_text, sig) = sign(&claims)?;
        let rest = &payload[prefix.padded.len()..];
        let mut signed = Vec::with_capacity(prefix.view_head.len() + rest.len() + sig.len());
        signed.extend_from_slice(prefix.view_head);
        signed.extend_from_slice(rest);
        let rest_len = signed.len();
        signed.extend_from_slice(&sig);
        let audit = decision.audit.as_ref().map(|a| format!("{a}; minted jti {:?}", claims.jti).into_boxed_str());
        let mut downstream = Vec::with_capacity(decision.downstream.len());
        if !decision.downstream.is_empty() {
            let entries = &self.cfg.rules[rule as usize].grant.downstream_tokens;
            for d in &decision.downstream {
                let jti = new_jti()?;
                let scope = (!d.scopes.is_empty()).then(|| d.scopes.join(" "));
                let extra = std::borrow::Cow::Borrowed(&*claims.extra);
                let c = ClaimsOut { aud: &d.audience, jti: &jti, scope: scope.as_deref(), extra, ..claims };
                let (_, token, _) = sign(&c)?;
                let i = entries.iter().position(|e| e.header == d.header).unwrap_or(0) as u16;
                downstream.push((i, token.into_boxed_str()));
            }
        }
        let minted = Minted {
            signed: signed.into_boxed_slice(),
            rest_len: rest_len as u32,
            prefix: prefix_index as u16,
            exp: req.exp,
            outcome: decision.outcome,
            rule,
            issuer: self.issuer_index.get(req.subject_issuer).copied().unwrap_or(0),
            signer: signer_index as u16,
            downstream: (!downstream.is_empty()).then(|| downstream.into_boxed_slice()),
        };
        // The claims move on for the audit event and the answer.
        let fresh = Fresh {
            client_id: decision.client_id.unwrap_or_else(|| req.default_client_id.to_owned()),
            sub: decision.sub,
            sub_id: decision.sub_id,
            aud: req.audience.to_owned(),
            scope,
            jti,
            act: decision.act,
            act_as: decision.act_as,
        };
        let (minted, fresh) = (Arc::new(minted), Some(Box::new(fresh)));
        Ok(Exchanged { engine: self, minted, audit, fresh, signed_text: Some(signed_text) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(sub_id: SubId) -> AccessClaims {
        AccessClaims {
            iss: "https://sts.example".into(),
            sub_id,
            sub: "alice".into(),
            aud: "orders".into(),
            exp: 2,
            iat: 1,
            jti: "j".into(),
            client_id: "c".into(),
            scope: None,
            act: None,
            extra: Map::new(),
        }
    }

    /// The cache layout rests on serde writing `iss`, then `sub_id` with its
    /// tag first: each prefix must be exactly the start of what is signed,
    /// and the stored rest plus `view_head` must read as the claims object.
    #[test]
    fn payload_prefixes_are_the_start_of_the_serialized_claims() {
        let idps = ["https://idp-a.example", "https://idp-\"b\".example"];
        let prefixes = PayloadPrefix::all("https://sts.example", idps.into_iter());
        let cases = [
            (SubId::IssSub { iss: idps[1].into(), sub: "alice".into() }, 2),
            (SubId::IssSub { iss: idps[0].into(), sub: "alice".into() }, 1),
            (SubId::IssSub { iss: "https://unknown.example".into(), sub: "alice".into() }, 0),
            (SubId::Uri { uri: "spiffe://x/ns/a/sa/b".into() }, 0),
        ];
        for (sub_id, expected) in cases {
            let i = PayloadPrefix::index_for(&prefixes, &sub_id);
            assert_eq!(i, expected, "{sub_id:?}");
            let p = &prefixes[i];
            assert_eq!(p.padded.len() % 3, 0);
            let json = serde_json::to_vec(&claims(sub_id.clone())).unwrap();
            let rest = json.strip_prefix(p.written.as_slice()).expect("the prefix starts the payload");
            // The padded prefix + rest is the same JSON, and so is view_head + rest.
            let padded: Value = serde_json::from_slice(&[p.padded.as_slice(), rest].concat()).unwrap();
            assert_eq!(padded, serde_json::from_slice::<Value>(&json).unwrap());
            let stored = [p.view_head, rest].concat();
            let view: ClaimsView<'_> = serde_json::from_slice(&stored).unwrap();
            assert_eq!((&*view.sub, &*view.aud, &*view.jti), ("alice", "orders", "j"));
        }
        assert!(
            prefixes[1].written.len() > prefixes[0].written.len() + 60,
            "the point: ~80 bytes kept out of each entry"
        );
    }

    /// `mint` writes `ClaimsOut`; the layout test above and the bench use
    /// `AccessClaims`: both must give the same bytes, with and without the
    /// optional claims and with extra claims sorted around `act_as`.
    #[test]
    fn borrowed_claims_serialise_like_access_claims() {
        let plain = claims(SubId::IssSub { iss: "https://idp.example".into(), sub: "alice".into() });
        let mut full = claims(SubId::Uri { uri: "spiffe://x/ns/a/sa/b".into() });
        full.scope = Some("orders.read profile".into());
        full.act = Some(serde_json::json!({"sub": "svc", "act": {"sub": "edge"}}));
        full.extra.insert("act_as".into(), serde_json::json!({"sub": "bob"}));
        full.extra.insert("aaa".into(), serde_json::json!(1));
        full.extra.insert("zzz".into(), serde_json::json!(["x"]));
        // Every string escaped where serde_json escapes (quotes, backslash,
        // control characters), non-ASCII left as it is.
        let odd = "q\"b\\n\nt\tc\u{1}d\u{7f}ü\u{2028}";
        let mut hostile = claims(SubId::Opaque { id: odd.into() });
        (hostile.iss, hostile.sub, hostile.aud, hostile.jti, hostile.client_id) =
            (odd.into(), odd.into(), odd.into(), odd.into(), odd.into());
        (hostile.exp, hostile.iat, hostile.scope) = (-1, i64::MAX, Some(odd.into()));
        hostile.extra.insert(odd.into(), serde_json::json!({ odd: [odd, 1.5, null] }));
        for owned in [plain, full, hostile] {
            let borrowed = ClaimsOut {
                iss: &owned.iss,
                sub_id: &owned.sub_id,
                sub: &owned.sub,
                aud: &owned.aud,
                exp: owned.exp,
                iat: owned.iat,
                jti: &owned.jti,
                client_id: &owned.client_id,
                scope: owned.scope.as_deref(),
                act: owned.act.as_ref(),
                extra: std::borrow::Cow::Borrowed(&owned.extra),
            };
            let (b, o) = (serde_json::to_string(&borrowed).unwrap(), serde_json::to_string(&owned).unwrap());
            assert_eq!(b, o);
            // What `mint` signs: written by hand, the same bytes.
            let mut written = Vec::new();
            borrowed.write(&mut written).unwrap();
            assert_eq!(String::from_utf8(written).unwrap(), o);
        }
    }

    /// The audit event and the answer's metadata read the claims minting
    /// kept instead of the payload: they must be the claims signed, for
    /// each shape of token (plain, `act` chain, `act_as`, default client).
    #[test]
    fn the_claims_kept_are_the_claims_signed() {
        crate::install_crypto_provider();
        let yaml = r#"
issuer: https://sts.test
signing: { keys: [{ kid: sts, ephemeral: true }] }
trusted_issuers: [{ issuer: "https://idp.test", jwks_url: "https://idp.test/jwks", algorithms: [ES256] }]
audit: { stdout: true }
rules:
  - { name: r, match: { audiences: [orders] }, grant: { scopes: ["*"] } }
"#;
        let cfg = Arc::new(crate::config::Config::from_yaml_validated(yaml).unwrap());
        let engine = Engine::load(cfg, crate::trust::issuer::http_client().unwrap(), None).unwrap();
        let plain = Decision {
            rule: "r".into(),
            outcome: Outcome::Exchange,
            sub: "alice".into(),
            act: None,
            act_as: None,
            scopes: vec!["orders.read".into(), "profile".into()],
            max_lifetime: None,
            sub_id: SubId::IssSub { iss: "https://idp.test".into(), sub: "alice".into() },
            client_id: Some("web".into()),
            claims: Map::new(),
            downstream: Vec::new(),
            audit: None,
        };
        let chain = Decision {
            outcome: Outcome::Delegation,
            act: Some(serde_json::json!({"sub": "svc", "iss": "https://idp.test", "act": {"sub": "edge"}})),
            scopes: Vec::new(),
            client_id: None,
            ..plain.clone()
        };
        let act_as = Decision {
            outcome: Outcome::Delegation,
            sub: "spiffe://x/ns/a/sa/b".into(),
            sub_id: SubId::Uri { uri: "spiffe://x/ns/a/sa/b".into() },
            act_as: Some(serde_json::json!({"sub": "alice", "iss": "https://idp.test"})),
            claims: [("email".to_owned(), serde_json::json!("a@x"))].into_iter().collect(),
            ..plain.clone()
        };
        let req = MintRequest {
            subject_issuer: "https://idp.test",
            audience: "orders",
            default_client_id: "sts",
            exp: 2,
            now: 1,
        };
        for decision in [plain, chain, act_as] {
            let done = engine.mint(decision.clone(), &req).unwrap();
            let kept = done.claims().unwrap().into_owned();
            // What `claims()` reads back from the payload for a cache hit.
            let read: Fresh = serde_json::from_value(done.claims_json()).unwrap();
            assert_eq!(format!("{kept:?}"), format!("{read:?}"), "{decision:?}");
            assert_eq!(
                (kept.aud.as_str(), kept.client_id.as_str()),
                ("orders", decision.client_id.as_deref().unwrap_or("sts"))
            );
            let view = done.view().unwrap();
            let cached = Exchanged::cached(&engine, done.minted().clone());
            let read = cached.view().unwrap();
            assert_eq!((&view.sub, &view.aud, &view.scope, &view.jti), (&read.sub, &read.aud, &read.scope, &read.jti));
            // The token as signed is the one a cache hit assembles.
            assert_eq!(done.token(), cached.token(), "{decision:?}");
        }
    }

    #[test]
    fn jtis_are_distinct() {
        assert_ne!(new_jti().unwrap(), new_jti().unwrap());
        assert_eq!(new_jti().unwrap().len(), 22);
        // Across many refills of the pool and several threads: no repeat, and
        // each is 16 bytes, not all zero (a consumed, zeroed slot handed out).
        let draw = || (0..20 * JTI_POOL_BYTES / 16).map(|_| new_jti().unwrap()).collect::<Vec<_>>();
        let threads: Vec<_> = (0..4).map(|_| std::thread::spawn(draw)).collect();
        let mut all = draw();
        for t in threads {
            all.extend(t.join().unwrap());
        }
        let n = all.len();
        for jti in &all {
            let bytes = URL_SAFE_NO_PAD.decode_to_vec(jti).unwrap();
            assert_eq!(bytes.len(), 16);
            assert!(bytes.iter().any(|&b| b != 0), "{jti}");
        }
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n, "a jti repeated");
    }

    /// Every byte value at every position of strings of every length up to
    /// three words: escaped exactly when serde_json escapes it.
    #[test]
    fn needs_escape_finds_every_byte_json_escapes() {
        let naive = |s: &[u8]| s.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\');
        for len in 0..=24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    // Around it: plain bytes, and bytes next to the ones tested.
                    for fill in [b'a', 0x21, 0xff, 0x5d, 0x80] {
                        let mut s = vec![fill; len];
                        s[at] = b;
                        assert_eq!(needs_escape(&s), naive(&s), "{s:?}");
                    }
                }
            }
        }
        let mut out = Vec::new();
        json_string(&mut out, "a\"b\\c\u{1}d\u{7f}é");
        assert_eq!(out, serde_json::to_vec("a\"b\\c\u{1}d\u{7f}é").unwrap());
    }

    /// The SIMD encoder writes what the `base64` crate's URL_SAFE_NO_PAD
    /// writes, for every length through its vector and scalar paths, and
    /// appends without touching what is already there.
    #[test]
    fn base64url_encoding_matches_base64s() {
        use base64::Engine as _;
        let bytes: Vec<u8> = (0..700u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        for n in 0..bytes.len() {
            let want = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes[..n]);
            let mut out = String::from("head.");
            URL_SAFE_NO_PAD.encode_append(&bytes[..n], &mut out);
            assert_eq!(out.strip_prefix("head."), Some(want.as_str()), "{n}");
        }
    }
}
