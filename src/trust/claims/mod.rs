//! The claims of a token as stsgate reads them: the registered ones it uses
//! in fields, the rest kept for rules that read or copy them, and the scopes
//! they grant. One pass over the JSON text, shared by subject tokens,
//! introspection answers and JWT bearer assertions.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::Value;

use crate::trust::plain_json::Reader;

mod scan;

/// A JSON string, borrowed from the input when it has no escapes.
pub(crate) struct Text<'a>(pub(crate) std::borrow::Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text<'a>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(std::borrow::Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Claims of a validated token. `aud` and the claims stsgate keeps no field
/// for stay in the JSON text they came from, which the claims keep: a value
/// is built only when a rule, an expression or a copy reads it. Building
/// every one cost ~2,500 instructions a cold exchange (issue 17), mostly for
/// claims nothing reads, and a 16 KiB token of many small values allocated
/// ten times its size.
#[derive(Debug, Clone, Default)]
pub(crate) struct Claims {
    pub(crate) iss: Option<String>,
    pub(crate) sub: Option<String>,
    pub(crate) exp: Option<serde_json::Number>,
    pub(crate) nbf: Option<serde_json::Number>,
    pub(crate) iat: Option<serde_json::Number>,
    pub(crate) jti: Option<String>,
    pub(crate) scope: Option<Value>,
    pub(crate) scp: Option<Value>,
    pub(crate) client_id: Option<String>,
    pub(crate) azp: Option<String>,
    pub(crate) act: Option<Value>,
    pub(crate) may_act: Option<Value>,
    /// The JSON text, then the strings `aud` and `other` hold that had
    /// escapes, decoded.
    text: Source,
    /// `aud` (RFC 7519 §4.1.3: a string or an array of them), in `text`.
    aud: Vec<Span>,
    /// The other claims, (name, JSON value) in `text`, sorted by name, each
    /// name once.
    other: Vec<(Span, Span)>,
}

/// `Claims::text`, printed as its length only: the claims print their
/// fields, and the whole text would repeat them (and is not for logs).
#[derive(Clone, Default)]
struct Source(String);

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "<{} bytes>", self.0.len())
    }
}

impl Claims {
    /// Reads a claims object from its JSON text, which the claims keep:
    /// plain text (no escape, no control character) on the fast path
    /// (`scan`), anything else by serde_json. A member that appears twice
    /// makes the token malformed: which one a downstream parser reads is not
    /// ours to guess.
    pub(crate) fn parse(text: String) -> serde_json::Result<Claims> {
        if let Some(mut c) = scan::scan(&text) {
            c.text = Source(text);
            return Ok(c);
        }
        Claims::parse_with_serde(text)
    }

    /// `parse` by serde_json: any text, and every refusal. One pass
    /// (`#[serde(flatten)]` would buffer every value first, about doubling
    /// the parse).
    fn parse_with_serde(text: String) -> serde_json::Result<Claims> {
        use serde::de::Error;
        let mut extra = String::new();
        let mut c = {
            let mut de = serde_json::Deserializer::from_str(&text);
            let c = serde::Deserializer::deserialize_map(&mut de, ClaimsVisitor { text: &text, extra: &mut extra })?;
            de.end()?;
            c
        };
        let mut text = text;
        text.push_str(&extra);
        if !c.sort_other(&text) {
            return Err(serde_json::Error::custom("a claim appears twice"));
        }
        c.text = Source(text);
        Ok(c)
    }

    /// Sorts the other claims by name (in `text`, which the spans point
    /// into); false when a name appears twice.
    fn sort_other(&mut self, text: &str) -> bool {
        if self.other.len() < 2 {
            return true;
        }
        self.other.sort_unstable_by(|a, b| a.0.get(text).cmp(b.0.get(text)));
        !self.other.windows(2).any(|w| w[0].0.get(text) == w[1].0.get(text))
    }

    /// `parse` of a copy of `text`.
    pub(crate) fn from_json(text: &str) -> serde_json::Result<Claims> {
        Claims::parse(text.to_owned())
    }

    /// The `aud` values.
    pub(crate) fn aud(&self) -> impl Iterator<Item = &str> + Clone {
        self.aud.iter().map(|s| s.get(&self.text.0))
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.other.binary_search_by(|(n, _)| n.get(&self.text.0).cmp(name)).ok()
    }

    /// Another claim's JSON text, as the issuer wrote it.
    pub(crate) fn other_raw(&self, name: &str) -> Option<&str> {
        self.find(name).map(|i| self.other[i].1.get(&self.text.0))
    }

    /// Another claim's value. It was checked to build when the claims were read.
    pub(crate) fn other(&self, name: &str) -> Option<Value> {
        serde_json::from_str(self.other_raw(name)?).ok()
    }

    pub(crate) fn has_other(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    /// Removes another claim, returning its value.
    pub(crate) fn remove_other(&mut self, name: &str) -> Option<Value> {
        serde_json::from_str(self.remove_other_raw(name)?).ok()
    }

    /// Removes another claim, returning its JSON text.
    pub(crate) fn remove_other_raw(&mut self, name: &str) -> Option<&str> {
        let (_, value) = self.other.remove(self.find(name)?);
        Some(value.get(&self.text.0))
    }

    /// The other claims' names, sorted.
    pub(crate) fn other_names(&self) -> impl Iterator<Item = &str> {
        self.other.iter().map(|(n, _)| n.get(&self.text.0))
    }

    /// Bytes asked of the allocator for the heap blocks only the claims'
    /// text and spans hold (for `Validated::weight`).
    pub(crate) fn text_blocks(&self) -> [usize; 3] {
        let span = std::mem::size_of::<Span>();
        [self.text.0.capacity(), self.aud.capacity() * span, self.other.capacity() * 2 * span]
    }

    /// Whether `pred` holds for another claim's value as text, or for an
    /// element of it when it is an array: strings as they are, numbers and
    /// booleans as JSON writes them; objects, arrays in arrays and null
    /// never. Reads the claim's text without building a value.
    pub(crate) fn any_other_scalar(&self, name: &str, mut pred: impl FnMut(&str) -> bool) -> bool {
        let Some(raw) = self.other_raw(name) else { return false };
        if let Some(found) = plain_strings(raw, &mut pred) {
            return found;
        }
        let mut de = serde_json::Deserializer::from_str(raw);
        serde::Deserializer::deserialize_any(&mut de, AnyScalar { pred: &mut pred, top: true }).unwrap_or(false)
    }
}

/// The claims with a field of their own, by name: the bit each one has in
/// the set of those already read (a claim may appear once).
fn known_claim(name: &str) -> Option<u8> {
    Some(match name {
        "iss" => 0,
        "sub" => 1,
        "aud" => 2,
        "exp" => 3,
        "nbf" => 4,
        "iat" => 5,
        "jti" => 6,
        "scope" => 7,
        "scp" => 8,
        "client_id" => 9,
        "azp" => 10,
        "act" => 11,
        "may_act" => 12,
        _ => return None,
    })
}

/// `Claims::parse`'s visitor: `text` is what it reads; strings with escapes
/// are decoded into `extra`, which will follow `text`.
struct ClaimsVisitor<'de, 'e> {
    text: &'de str,
    extra: &'e mut String,
}

impl<'de> ClaimsVisitor<'de, '_> {
    /// Where a string read from `text` will lie in the claims' text.
    fn span<E: serde::de::Error>(&mut self, s: Cow<'de, str>) -> Result<Span, E> {
        let span = match s {
            Cow::Borrowed(s) => Span::of(self.text, s),
            Cow::Owned(s) => {
                let start = self.text.len() + self.extra.len();
                self.extra.push_str(&s);
                Span::new(start, s.len())
            }
        };
        span.ok_or_else(|| E::custom("claims longer than 4 GiB"))
    }
}

impl<'de> serde::de::Visitor<'de> for ClaimsVisitor<'de, '_> {
    type Value = Claims;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object of claims")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(mut self, mut map: A) -> Result<Claims, A::Error> {
        use serde::de::Error;
        let mut c = Claims::default();
        let mut seen = 0u16;
        // A claim name, borrowed from the input when it has no escapes.
        while let Some(Text(key)) = map.next_key()? {
            let Some(bit) = known_claim(&key) else {
                let raw: &'de serde_json::value::RawValue = map.next_value()?;
                // The raw value's syntax is checked; what building a
                // value would refuse besides (a number out of range, an
                // escape that names no character) is refused here too,
                // without building it, for a value that could hold one.
                if may_not_build(raw.get()) {
                    Checked::check(raw.get()).map_err(A::Error::custom)?;
                }
                let value = self.span(Cow::Borrowed(raw.get()))?;
                let name = self.span(key)?;
                c.other.push((name, value));
                continue;
            };
            if seen & (1 << bit) != 0 {
                return Err(A::Error::custom(format!("claim {key} appears twice")));
            }
            seen |= 1 << bit;
            match bit {
                0 => c.iss = map.next_value()?,
                1 => c.sub = map.next_value()?,
                2 => map.next_value_seed(AudSeed { visitor: &mut self, out: &mut c.aud })?,
                3 => c.exp = map.next_value()?,
                4 => c.nbf = map.next_value()?,
                5 => c.iat = map.next_value()?,
                6 => c.jti = map.next_value()?,
                7 => c.scope = map.next_value()?,
                8 => c.scp = map.next_value()?,
                9 => c.client_id = map.next_value()?,
                10 => c.azp = map.next_value()?,
                11 => c.act = map.next_value()?,
                _ => c.may_act = map.next_value()?,
            }
        }
        Ok(c)
    }
}

/// `aud`: null, a string or an array of strings, each noted as a span
/// (`#[serde(untagged)]` would buffer every element as a generic value).
struct AudSeed<'v, 'de, 'e> {
    visitor: &'v mut ClaimsVisitor<'de, 'e>,
    out: &'v mut Vec<Span>,
}

impl<'de> serde::de::DeserializeSeed<'de> for AudSeed<'_, 'de, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for AudSeed<'_, 'de, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a string or an array of strings")
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<(), E> {
        self.out.push(self.visitor.span(Cow::Borrowed(v))?);
        Ok(())
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        self.out.push(self.visitor.span(Cow::Owned(v.to_owned()))?);
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        // serde_json gives no hint; two fits most tokens without growing
        // (an empty vector grows to four at once).
        self.out.reserve_exact(2);
        while let Some(Text(s)) = seq.next_element()? {
            self.out.push(self.visitor.span(s)?);
        }
        Ok(())
    }
}

/// Where a string lies in `Claims::text`: byte offset and length.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    len: u32,
}

impl Span {
    fn new(start: usize, len: usize) -> Option<Span> {
        Some(Span { start: u32::try_from(start).ok()?, len: u32::try_from(len).ok()? })
    }

    /// `part`'s place in `text`, when `part` is a slice of it.
    fn of(text: &str, part: &str) -> Option<Span> {
        let start = (part.as_ptr() as usize).checked_sub(text.as_ptr() as usize)?;
        (start + part.len() <= text.len()).then_some(())?;
        Span::new(start, part.len())
    }

    fn get(self, text: &str) -> &str {
        // Spans are made only for the text they are read from; `get` keeps
        // any mistake an empty string, not a panic.
        text.get(self.start as usize..(self.start + self.len) as usize).unwrap_or_default()
    }
}

/// `any_other_scalar` without serde for what claims matched on mostly are:
/// a string, or an array of strings, in plain JSON text (`None` for
/// anything else, which serde then reads).
fn plain_strings(raw: &str, pred: &mut impl FnMut(&str) -> bool) -> Option<bool> {
    let mut r = Reader::new(raw)?;
    if r.at_string() {
        return Some(pred(r.string()?));
    }
    // Only strings, before `pred` is asked about any (serde would ask again).
    r.array(|r| r.string().map(drop))?;
    let mut found = false;
    Reader::new(raw)?.array(|r| {
        let s = r.string()?;
        found = found || pred(s);
        Some(())
    })?;
    Some(found)
}

/// `Claims::any_other_scalar`'s reader: a scalar, or (at the top) an array of them.
struct AnyScalar<'p> {
    pred: &'p mut dyn FnMut(&str) -> bool,
    top: bool,
}

impl<'de> serde::de::Visitor<'de> for AnyScalar<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a claim value")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<bool, E> {
        Ok((self.pred)(v))
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<bool, E> {
        Ok((self.pred)(if v { "true" } else { "false" }))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<bool, E> {
        Ok((self.pred)(&serde_json::Number::from(v).to_string()))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<bool, E> {
        Ok((self.pred)(&serde_json::Number::from(v).to_string()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<bool, E> {
        Ok(serde_json::Number::from_f64(v).is_some_and(|n| (self.pred)(&n.to_string())))
    }
    fn visit_unit<E: serde::de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut found = false;
        // Every element is read (the reader must reach the array's end);
        // `pred` stops being asked once one matched.
        while let Some(hit) = seq.next_element_seed(ElementSeed { pred: &mut *self.pred, top: self.top && !found })? {
            found |= hit;
        }
        Ok(found)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(false)
    }
}

/// An element of a top-level array: a scalar is asked about, anything else
/// (and every element once `top` is off) is skipped.
struct ElementSeed<'p> {
    pred: &'p mut dyn FnMut(&str) -> bool,
    top: bool,
}

impl<'de> serde::de::DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        if self.top {
            d.deserialize_any(AnyScalar { pred: self.pred, top: false })
        } else {
            serde::de::IgnoredAny::deserialize(d).map(|_| false)
        }
    }
}

/// Whether valid JSON `raw` could still fail to build as a `Value`: only
/// through an escape (`\\`), a number with an exponent (a digit or `.`
/// before `e`/`E`), or length: 310 digits overflow an f64, and nesting past
/// serde_json's depth limit (a claim 127 levels deep, which a syntax check
/// does not count) takes at least 254 bytes. Cheaper than `Checked`, which
/// then decides.
fn may_not_build(raw: &str) -> bool {
    let b = raw.as_bytes();
    b.len() >= 200
        || memchr::memchr(b'\\', b).is_some()
        || b.windows(2).any(|w| (w[0].is_ascii_digit() || w[0] == b'.') && w[1] | 0x20 == b'e')
}

/// Accepts exactly the JSON `Value` accepts, building nothing: what a raw
/// claim is checked with. It is read on its own, so it counts the levels
/// left below it itself: serde_json's limit counted from the claims object.
#[derive(Clone, Copy)]
struct Checked {
    levels_left: usize,
}

/// Arrays and objects a claim's value may nest: serde_json stops building
/// values 128 levels down, one of them the claims object (the tests pin it).
const CLAIM_LEVELS: usize = 126;

impl<'de> serde::de::DeserializeSeed<'de> for Checked {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Checked {
    fn check(raw: &str) -> serde_json::Result<()> {
        let mut de = serde_json::Deserializer::from_str(raw);
        serde::de::DeserializeSeed::deserialize(Checked { levels_left: CLAIM_LEVELS }, &mut de)?;
        de.end()
    }

    /// The seed for what one level further down holds.
    fn below<E: serde::de::Error>(self) -> Result<Checked, E> {
        let levels_left = self.levels_left.checked_sub(1).ok_or_else(|| E::custom("claim nested too deep"))?;
        Ok(Checked { levels_left })
    }
}

impl<'de> serde::de::Visitor<'de> for Checked {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let below = self.below()?;
        while seq.next_element_seed(below)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let below = self.below()?;
        while map.next_key::<Text<'_>>()?.is_some() {
            map.next_value_seed(below)?;
        }
        Ok(())
    }
}

/// NumericDate (RFC 7519 §2): seconds, possibly fractional; rounded down.
pub(crate) fn numeric_date(n: &Option<serde_json::Number>) -> Option<i64> {
    let n = n.as_ref()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    n.as_f64().filter(|f| f.is_finite() && f.abs() < 1e15).map(|f| f.floor() as i64)
}

/// Scopes from `scope` (RFC 8693 §4.2, RFC 7662, space-separated) or `scp`
/// (string or array, as Azure AD and Okta send): subject tokens,
/// introspection answers and JWT bearer assertions alike. Sorted, without
/// duplicates.
/// A malformed one is refused with its name.
pub(crate) fn scopes_of(claims: &Claims) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    for (name, value) in [("scope", &claims.scope), ("scp", &claims.scp)] {
        match value {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => push_scopes(s, &mut out),
            Some(Value::Array(items)) => {
                for item in items {
                    push_scopes(item.as_str().ok_or(name)?, &mut out);
                }
            }
            Some(_) => return Err(name),
        }
    }
    // Tokens often list their scopes sorted already.
    if !out.is_sorted() {
        out.sort_unstable();
    }
    out.dedup();
    Ok(out)
}

/// Appends the whitespace-separated words of `s`, split exactly as
/// `str::split_whitespace` splits them: the one scope splitter, for the
/// scopes a token holds and those a request asks for (`rules::split_scopes`).
/// ASCII text, which scopes are (RFC 6749 §3.3), is split on its bytes
/// into a vector allocated once.
pub(crate) fn push_scopes(s: &str, out: &mut Vec<String>) {
    if !s.is_ascii() {
        out.extend(s.split_whitespace().map(str::to_owned));
        return;
    }
    // The ASCII characters `char::is_whitespace` accepts: \t \n \v \f \r
    // and space (`u8::is_ascii_whitespace` leaves out \v).
    let is_space = |b: &u8| matches!(b, b'\t'..=b'\r' | b' ');
    let bytes = s.as_bytes();
    // A word starts at a non-space after a space or the start.
    let (mut words, mut after_space) = (0usize, true);
    for b in bytes {
        let space = is_space(b);
        words += usize::from(after_space & !space);
        after_space = space;
    }
    // Exactly for the first string; then amortised, since an `scp` array of
    // many strings must not reallocate at each one.
    if out.capacity() == 0 {
        out.reserve_exact(words);
    } else {
        out.reserve(words);
    }
    let mut start = 0;
    for word in bytes.split(is_space) {
        if !word.is_empty() {
            // ASCII: every index is a character boundary.
            out.push(s[start..start + word.len()].to_owned());
        }
        start += word.len() + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_dates_accept_fractions_and_refuse_junk() {
        let n = |s: &str| numeric_date(&Some(serde_json::from_str(s).unwrap()));
        assert_eq!(n("1700000000"), Some(1700000000));
        assert_eq!(n("1700000000.9"), Some(1700000000));
        assert_eq!(n("1e300"), None);
    }

    #[test]
    fn claims_parse_in_one_pass_and_refuse_duplicates() {
        let c = Claims::from_json(
            r#"{"iss":"i","sub":"s","aud":"a","exp":1,"scope":"x","groups":["g"],"n\u0061me":"v","act":{"sub":"z"}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.iss.as_deref(), c.sub.as_deref(), c.aud().collect::<Vec<_>>()),
            (Some("i"), Some("s"), vec!["a"])
        );
        assert_eq!(c.other("groups"), Some(serde_json::json!(["g"])));
        assert_eq!(c.other("name"), Some(serde_json::json!("v")), "escaped keys are read too");
        assert!(c.act.is_some());
        let aud = Claims::from_json(r#"{"aud":["a","b\u0063",""]}"#).unwrap();
        assert_eq!(aud.aud().collect::<Vec<_>>(), ["a", "bc", ""], "escaped values decoded");
        let null = Claims::from_json(r#"{"sub":null,"aud":null}"#).unwrap();
        assert!(null.sub.is_none() && null.aud().next().is_none());
        for dup in [
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"aud":"a","aud":["b"]}"#,
            r#"{"groups":1,"groups":2}"#,
            r#"{"sub":"a","s\u0075b":"b"}"#,
            r#"{"g":1,"x":0,"\u0067":2}"#,
            r#"{"a\u0062":1,"x":0,"\u0061b":2}"#,
        ] {
            assert!(Claims::from_json(dup).is_err(), "{dup}");
        }
        for bad in [r#"{"exp":"soon"}"#, r#"{"aud":[1]}"#, r#"{"aud":{}}"#, r#"{"sub":5}"#, "[]", r#"{"x":1e400}"#] {
            assert!(Claims::from_json(bad).is_err(), "{bad}");
        }
    }

    /// The other claims are kept as text and built on demand: every one
    /// reads as the value the whole object builds (names and values with
    /// escapes, nesting, numbers of each kind, a duplicate inside a nested
    /// object, which `Value` keeps the last of), and an object is refused
    /// exactly when building it as a `Value` fails (apart from a repeated
    /// claim, which is refused).
    #[test]
    fn other_claims_read_as_built_values() {
        let text = r#"{"sub":"s","groups":["a","b\"c",{"k":[1]}],"e\u006dail":"x@y","n":-3,"u":18446744073709551615,
            "f":1.5e3,"t":true,"z":null,"o":{"a":1,"a":2},"\u00e9":"\ud83d\ude00","aud":"w","empty":""}"#;
        let c = Claims::from_json(text).unwrap();
        let whole: serde_json::Map<String, Value> = serde_json::from_str(text).unwrap();
        let mut names: Vec<&str> = whole.keys().map(String::as_str).filter(|k| !["sub", "aud"].contains(k)).collect();
        names.sort_unstable();
        assert_eq!(c.other_names().collect::<Vec<_>>(), names);
        for name in names {
            assert_eq!(c.other(name).as_ref(), whole.get(name), "{name}");
            assert!(c.has_other(name));
        }
        assert!(!c.has_other("sub") && c.other("missing").is_none());
        let mut removed = c.clone();
        assert_eq!(removed.remove_other("n"), Some(serde_json::json!(-3)));
        assert!(!removed.has_other("n") && removed.remove_other("n").is_none() && removed.has_other("t"));
        for (text, builds) in [
            (r#"{"x":1e400}"#, false),
            (r#"{"x":"\ud800"}"#, false),
            (r#"{"x":"\q"}"#, false),
            (r#"{"x":[1,]}"#, false),
            (r#"{"x":-0.0,"y":1e-400}"#, true),
            (r#"{"x":{"a":1,"a":2}}"#, true),
        ] {
            let value = serde_json::from_str::<Value>(text).is_ok();
            assert_eq!((Claims::from_json(text).is_ok(), value), (builds, builds), "{text}");
        }
        // Nesting past serde_json's depth limit, which a bare syntax check
        // does not count (introspection answers have no shape bounds).
        for depth in [100, 125, 126, 127, 128, 200] {
            let arrays = format!(r#"{{"x":{}{}}}"#, "[".repeat(depth), "]".repeat(depth));
            let objects = format!(r#"{{"x":{}0{}}}"#, r#"{"k":"#.repeat(depth), "}".repeat(depth));
            for text in [arrays, objects] {
                let value = serde_json::from_str::<Value>(&text).is_ok();
                assert_eq!(Claims::from_json(&text).is_ok(), value, "depth {depth}");
                assert_eq!(value, depth < 127, "depth {depth}: where the limit lies");
            }
        }
    }

    /// `any_other_scalar` answers as a match over the built value did: a
    /// string, number or boolean as text, each element of an array, nothing
    /// for null, objects or arrays in arrays; and it stops asking once one
    /// matched.
    #[test]
    fn other_claim_scalars_match_as_built_values() {
        fn built(v: &Value, pred: &mut dyn FnMut(&str) -> bool) -> bool {
            let scalar = |v: &Value, pred: &mut dyn FnMut(&str) -> bool| match v {
                Value::String(s) => pred(s),
                Value::Number(n) => pred(&n.to_string()),
                Value::Bool(b) => pred(if *b { "true" } else { "false" }),
                _ => false,
            };
            match v {
                Value::Array(items) => items.iter().any(|i| scalar(i, pred)),
                other => scalar(other, pred),
            }
        }
        let values = [
            r#""a""#,
            r#""a\"b""#,
            "1",
            "-1",
            "1.0",
            "1e2",
            "18446744073709551615",
            "true",
            "false",
            "null",
            "{}",
            r#"{"a":"a"}"#,
            "[]",
            r#"["x","a"]"#,
            r#"[["a"],"b"]"#,
            r#"[{"a":1},2,true,null]"#,
            r#"["a","a","a"]"#,
            r#"["x",1]"#,
            r#"[ "x" , "a" ]"#,
            r#"["x",["a"]]"#,
            r#""""#,
            r#"[]"#,
        ];
        for v in values {
            let c = Claims::from_json(&format!(r#"{{"c":{v}}}"#)).unwrap();
            let value: Value = serde_json::from_str(v).unwrap();
            let (mut lazy, mut eager) = (Vec::new(), Vec::new());
            let first = |seen: &mut Vec<String>, s: &str| {
                seen.push(s.to_owned());
                s == "a" || s == "2" || s == "true"
            };
            let got = c.any_other_scalar("c", |s| first(&mut lazy, s));
            assert_eq!(got, built(&value, &mut |s| first(&mut eager, s)), "{v}");
            assert_eq!(lazy, eager, "{v}: asked about the same texts, in order");
            assert!(!c.any_other_scalar("absent", |_| true));
        }
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let c = |json: &str| scopes_of(&Claims::from_json(json).unwrap());
        assert_eq!(c(r#"{"scope":"b a  a"}"#).unwrap(), vec!["a", "b"]);
        assert_eq!(c(r#"{"scp":["x","y"]}"#).unwrap(), vec!["x", "y"]);
        assert_eq!(c(r#"{"scope":42}"#), Err("scope"));
        assert_eq!(c(r#"{}"#).unwrap(), Vec::<String>::new());
    }

    /// Scopes split as `str::split_whitespace` and then sort and dedup split
    /// them, on every string of up to four characters over an alphabet of
    /// each ASCII whitespace (\v included, which `u8::is_ascii_whitespace`
    /// leaves out), Unicode whitespace, a non-whitespace non-ASCII character
    /// and scope characters; then in an `scp` array, and after a `scope`.
    #[test]
    fn scopes_split_exactly_like_split_whitespace() {
        let old = |parts: &[&str]| {
            let mut v: Vec<String> = parts.iter().flat_map(|s| s.split_whitespace().map(str::to_owned)).collect();
            v.sort();
            v.dedup();
            v
        };
        let alphabet =
            ["a", "b", " ", "\t", "\n", "\u{b}", "\u{c}", "\r", "\u{1c}", "\u{85}", "\u{a0}", "\u{3000}", "é", "."];
        let mut cases = 0;
        for len in 0..=4u32 {
            for n in 0..alphabet.len().pow(len) {
                let s: String = (0..len).map(|k| alphabet[n / alphabet.len().pow(k) % alphabet.len()]).collect();
                let scope = Claims { scope: Some(Value::String(s.clone())), ..Claims::default() };
                assert_eq!(scopes_of(&scope).unwrap(), old(&[&s]), "{s:?}");
                let scp = Claims { scp: Some(serde_json::json!([s, "b a", s])), ..Claims::default() };
                assert_eq!(scopes_of(&scp).unwrap(), old(&[&s, "b a", &s]), "{s:?}");
                let both = Claims { scope: Some(Value::String("z a".into())), ..scp };
                assert_eq!(scopes_of(&both).unwrap(), old(&["z a", &s, "b a", &s]), "{s:?}");
                cases += 1;
            }
        }
        assert_eq!(cases, 1 + 14 + 14 * 14 + 14 * 14 * 14 + 14 * 14 * 14 * 14);
        // Already sorted, unsorted, duplicates; the vector holds exactly the scopes.
        let c = |s: &str| scopes_of(&Claims { scope: Some(Value::String(s.into())), ..Claims::default() }).unwrap();
        assert_eq!(c("a b c"), ["a", "b", "c"]);
        assert_eq!(
            c("  openid profile email orders.read orders.write "),
            ["email", "openid", "orders.read", "orders.write", "profile"]
        );
        assert_eq!(c("c\u{b}b\u{c}a\r\nc"), ["a", "b", "c"]);
        assert_eq!(c("c\u{a0}b\u{3000}a\u{85}é"), ["a", "b", "c", "é"]);
        assert_eq!(c("a\u{1c}b"), ["a\u{1c}b"], "a control character that is not whitespace");
        assert_eq!(c("x y z").capacity(), 3);
        // A non-string element of `scp` (or of a `scope` array) is still refused.
        for bad in [r#"{"scp":["a",1]}"#, r#"{"scp":[null]}"#, r#"{"scope":["a",{}]}"#, r#"{"scp":true}"#] {
            let claims = Claims::from_json(bad).unwrap();
            assert!(scopes_of(&claims).is_err(), "{bad}");
        }
    }
}
