//! The claims of a token as stsgate reads them: the registered ones it uses
//! in fields, the rest kept for rules that read or copy them, and the scopes
//! they grant. One pass over the JSON text, shared by subject tokens,
//! introspection answers and JWT bearer assertions.

use serde::Deserialize;
use serde_json::{Map, Value};

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

/// Claims of a validated token. `other` keeps the rest for rules that copy
/// claims into the minted token.
#[derive(Debug, Clone, Default)]
pub(crate) struct Claims {
    pub(crate) iss: Option<String>,
    pub(crate) sub: Option<String>,
    pub(crate) aud: Vec<String>,
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
    pub(crate) other: Map<String, Value>,
}

/// One pass over the claims object (`#[serde(flatten)]` would buffer every
/// value first, about doubling the parse). A member that appears twice makes
/// the token malformed: which one a downstream parser reads is not ours to guess.
impl<'de> Deserialize<'de> for Claims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Claims, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};

        struct ClaimsVisitor;
        impl<'de> Visitor<'de> for ClaimsVisitor {
            type Value = Claims;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
                let mut c = Claims::default();
                let mut seen = 0u16;
                // A claim name, borrowed from the input when it has no escapes.
                while let Some(Text(key)) = map.next_key()? {
                    let bit = match &*key {
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
                        _ => {
                            let value: Value = map.next_value()?;
                            if c.other.insert(key.into_owned(), value).is_some() {
                                return Err(A::Error::custom("a claim appears twice"));
                            }
                            continue;
                        }
                    };
                    if seen & (1 << bit) != 0 {
                        return Err(A::Error::custom(format!("claim {key} appears twice")));
                    }
                    seen |= 1 << bit;
                    match bit {
                        0 => c.iss = map.next_value()?,
                        1 => c.sub = map.next_value()?,
                        2 => {
                            c.aud = map.next_value::<Option<OneOrMany>>()?.map(OneOrMany::into_vec).unwrap_or_default()
                        }
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
        d.deserialize_map(ClaimsVisitor)
    }
}

/// `aud` is a string or an array of strings (RFC 7519 §4.1.3), read
/// straight into strings (`#[serde(untagged)]` would buffer every element
/// as a generic value first, doubling what a large `aud` costs).
struct OneOrMany(Vec<String>);

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        self.0
    }
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<OneOrMany, D::Error> {
        use serde::de::{Error, SeqAccess, Visitor};
        struct Aud;
        impl<'de> Visitor<'de> for Aud {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                // serde_json gives no hint; two fits most tokens without
                // growing (an empty vector grows to four at once).
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(2).min(16));
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(Aud)
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
        let c: Claims = serde_json::from_str(
            r#"{"iss":"i","sub":"s","aud":"a","exp":1,"scope":"x","groups":["g"],"n\u0061me":"v","act":{"sub":"z"}}"#,
        )
        .unwrap();
        assert_eq!(
            (c.iss.as_deref(), c.sub.as_deref(), c.aud.as_slice()),
            (Some("i"), Some("s"), &["a".to_string()][..])
        );
        assert_eq!(c.other.get("groups"), Some(&serde_json::json!(["g"])));
        assert_eq!(c.other.get("name"), Some(&serde_json::json!("v")), "escaped keys are read too");
        assert!(c.act.is_some());
        let aud: Claims = serde_json::from_str(r#"{"aud":["a","b"]}"#).unwrap();
        assert_eq!(aud.aud, ["a", "b"]);
        let null: Claims = serde_json::from_str(r#"{"sub":null,"aud":null}"#).unwrap();
        assert!(null.sub.is_none() && null.aud.is_empty());
        for dup in [
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"aud":"a","aud":["b"]}"#,
            r#"{"groups":1,"groups":2}"#,
            r#"{"sub":"a","s\u0075b":"b"}"#,
        ] {
            assert!(serde_json::from_str::<Claims>(dup).is_err(), "{dup}");
        }
        for bad in [r#"{"exp":"soon"}"#, r#"{"aud":[1]}"#, r#"{"sub":5}"#, "[]"] {
            assert!(serde_json::from_str::<Claims>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_come_from_scope_or_scp() {
        let c = |json: &str| scopes_of(&serde_json::from_str::<Claims>(json).unwrap());
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
            let claims: Claims = serde_json::from_str(bad).unwrap();
            assert!(scopes_of(&claims).is_err(), "{bad}");
        }
    }
}
