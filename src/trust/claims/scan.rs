//! `Claims::parse`'s fast path: one pass over claims' plain JSON text (see
//! `plain_json`), without serde's machinery, which cost ~7,500 instructions
//! for a typical 330-byte access token (issue 17). Known claims of unusual
//! types and repeated claims are left to serde_json, like anything the
//! reader leaves: it decides every refusal.

use serde_json::{Number, Value};

use super::{Claims, Span, known_claim};
use crate::trust::plain_json::Reader;

/// The claims `text` holds, or `None` when serde_json must read it.
pub(super) fn scan(text: &str) -> Option<Claims> {
    let mut c = Claims::default();
    let mut seen = 0u16;
    Reader::new(text)?.whole_object(|r, name| {
        let Some(bit) = known_claim(name) else {
            let value = r.value(1)?;
            c.other.push((Span::of(text, name)?, Span::of(text, value)?));
            return Some(());
        };
        if seen & (1 << bit) != 0 {
            return None;
        }
        seen |= 1 << bit;
        match bit {
            0 => c.iss = owned(r)?,
            1 => c.sub = owned(r)?,
            2 => aud(r, text, &mut c.aud)?,
            3 => c.exp = date(r)?,
            4 => c.nbf = date(r)?,
            5 => c.iat = date(r)?,
            6 => c.jti = owned(r)?,
            7 => c.scope = json(r)?,
            8 => c.scp = json(r)?,
            9 => c.client_id = owned(r)?,
            10 => c.azp = owned(r)?,
            11 => c.act = json(r)?,
            _ => c.may_act = json(r)?,
        }
        Some(())
    })?;
    c.sort_other(text).then_some(c)
}

/// `null` or a string, as `Option<String>` reads them.
fn owned(r: &mut Reader<'_>) -> Option<Option<String>> {
    r.string_or_null().map(|s| s.map(str::to_owned))
}

/// `null` or a non-negative integer, as `Option<Number>` reads them (a
/// negative one is serde_json's: `-0` reads as a float).
fn date(r: &mut Reader<'_>) -> Option<Option<Number>> {
    if r.null() {
        return Some(None);
    }
    match r.integer()? {
        (false, n) => Some(Some(Number::from(n))),
        (true, _) => None,
    }
}

/// `aud`: `null`, a string or an array of strings.
fn aud(r: &mut Reader<'_>, text: &str, out: &mut Vec<Span>) -> Option<()> {
    if r.null() {
        return Some(());
    }
    if r.at_string() {
        out.push(Span::of(text, r.string()?)?);
        return Some(());
    }
    // As the serde reader reserves.
    out.reserve_exact(2);
    r.array(|r| {
        out.push(Span::of(text, r.string()?)?);
        Some(())
    })
}

/// Any value as `Option<Value>` reads it: `null` is `None`, a string is
/// built here, anything else by serde_json from its checked text.
fn json(r: &mut Reader<'_>) -> Option<Option<Value>> {
    if r.null() {
        return Some(None);
    }
    if r.at_string() {
        return Some(Some(Value::String(r.string()?.to_owned())));
    }
    serde_json::from_str(r.value(1)?).ok().map(Some)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    use super::*;

    /// What the fast path read, against serde_json's reading of the same
    /// text: `None` when the fast path left it to serde_json.
    fn both(text: &str) -> Option<Claims> {
        let mut fast = scan(text)?;
        fast.text = super::super::Source(text.to_owned());
        let slow = Claims::parse_with_serde(text.to_owned());
        let slow = slow.unwrap_or_else(|e| panic!("the fast path accepted what serde_json refuses ({e}): {text}"));
        // Fields, spans and the text's length; spans are offsets into the
        // same text (no escapes: serde_json appended nothing).
        assert_eq!(format!("{fast:?}"), format!("{slow:?}"), "{text}");
        assert_eq!(fast.aud().collect::<Vec<_>>(), slow.aud().collect::<Vec<_>>(), "{text}");
        assert_eq!(fast.other_names().collect::<Vec<_>>(), slow.other_names().collect::<Vec<_>>(), "{text}");
        for name in slow.other_names() {
            assert_eq!(fast.other_raw(name), slow.other_raw(name), "{text}");
        }
        assert_eq!(fast.text_blocks(), slow.text_blocks(), "{text}: the cache weighs both alike");
        Some(fast)
    }

    /// The tokens IdPs issue take the fast path and read as serde_json
    /// reads them.
    #[test]
    fn common_tokens_take_the_fast_path() {
        for text in [
            r#"{"iss":"https://idp.example/realms/corp","sub":"user-1","aud":["mesh","account"],"exp":1800000000,"iat":1700000000,"nbf":1700000000,"jti":"j","scope":"openid profile","client_id":"web","groups":["a","b"],"email":"u@x.example"}"#,
            r#"{"exp":1800000000,"iat":1700000000,"jti":"5f0c","iss":"https://kc/realms/r","aud":"account","sub":"f:1","typ":"Bearer","azp":"web","session_state":"s","acr":"1","realm_access":{"roles":["offline_access","uma_authorization"]},"resource_access":{"account":{"roles":["manage-account","view-profile"]}},"scope":"profile email","sid":"s","email_verified":false,"preferred_username":"alice"}"#,
            // Azure AD v2, Okta and Auth0 access tokens' shapes.
            r#"{"aud":"api://orders","iss":"https://login.microsoftonline.com/t/v2.0","iat":1700000000,"nbf":1700000000,"exp":1700003600,"aio":"AXQAi/8","azp":"c1","azpacr":"0","name":"A B","oid":"o-1","preferred_username":"a@b.example","rh":"0.AR8","roles":["Orders.Read"],"scp":"access_as_user","sub":"s","tid":"t","uti":"u","ver":"2.0"}"#,
            r#"{"ver":1,"jti":"AT.x","iss":"https://dev.okta.com/oauth2/default","aud":"api://default","iat":1700000000,"exp":1700003600,"cid":"0oa","uid":"00u","scp":["openid","email"],"auth_time":1700000000,"sub":"a@b.example","groups":["Everyone"]}"#,
            r#"{"https://example.com/roles":["admin"],"iss":"https://t.auth0.com/","sub":"auth0|1","aud":["https://api.example","https://t.auth0.com/userinfo"],"iat":1700000000,"exp":1700086400,"azp":"x","scope":"openid profile","permissions":["read:orders"]}"#,
            r#"{"iss":"https://sts","sub":"alice","aud":"orders","exp":1,"act":{"sub":"spiffe://a","act":{"sub":"spiffe://b"}},"may_act":{"sub":"x"},"scp":["a","b"],"sub_id":{"format":"iss_sub","iss":"i","sub":"s"}}"#,
            r#" { "sub" : "a" , "aud" : [ ] , "n" : [ 1 , -2 , 0 , true , false , null , { } , [ ] ] , "e" : "" } "#,
            r#"{"iss":null,"sub":null,"aud":null,"exp":null,"scope":null,"act":null,"jti":"é😀"}"#,
            "{}",
        ] {
            assert!(both(text).is_some(), "fast path: {text}");
        }
    }

    /// What the fast path leaves to serde_json: escapes, control characters,
    /// fractions, exponents, long or negative dates, deep nesting, known
    /// claims of odd types, duplicates and every syntax error.
    #[test]
    fn the_rest_goes_to_serde_json() {
        let deep = format!(r#"{{"x":{}{}}}"#, "[".repeat(32), "]".repeat(32));
        let shallow = format!(r#"{{"x":{}{}}}"#, "[".repeat(31), "]".repeat(31));
        assert!(both(&shallow).is_some());
        for text in [
            r#"{"sub":"a\"b"}"#,
            r#"{"s\u0075b":"a"}"#,
            "{\"sub\":\"a\tb\"}",
            "{\n\"sub\":\"a\"}",
            r#"{"exp":1.5}"#,
            r#"{"exp":1e9}"#,
            r#"{"exp":-1}"#,
            r#"{"exp":-0}"#,
            r#"{"x":-0.0}"#,
            r#"{"exp":1234567890123456789}"#,
            r#"{"x":12345678901234567890}"#,
            r#"{"exp":01}"#,
            r#"{"x":[01]}"#,
            r#"{"exp":"1"}"#,
            r#"{"sub":1}"#,
            r#"{"aud":[1]}"#,
            r#"{"aud":{}}"#,
            r#"{"sub":"a","sub":"b"}"#,
            r#"{"x":1,"y":2,"x":3}"#,
            r#"{"x":1,}"#,
            r#"{"x":[1,]}"#,
            r#"{"x":tru}"#,
            r#"{"x":nul}"#,
            r#"{"x":1}x"#,
            r#"{"x":1"#,
            r#"{"x"1}"#,
            r#"{x:1}"#,
            r#"["x"]"#,
            r#"{"x":-}"#,
            r#"{"x":+1}"#,
            r#"{"x":.5}"#,
            &deep,
        ] {
            assert!(scan(text).is_none(), "left to serde_json: {text}");
        }
    }

    /// JSON-like text from the pieces claims are made of, well formed or
    /// nearly (a dropped or doubled character, odd spacing), so that both
    /// readers meet every edge.
    fn piece() -> impl Strategy<Value = String> {
        // Mostly scalars at the top, which most claims are.
        prop_oneof![3 => scalar(), 1 => scalar().prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(","))),
                proptest::collection::vec((name(), inner), 0..4).prop_map(|v| {
                    let members: Vec<String> = v.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })]
    }

    fn scalar() -> impl Strategy<Value = String> {
        // Mostly what the fast path reads, so that whole objects reach it.
        prop_oneof![
            8 => Just("\"a\"".to_owned()),
            2 => Just("\"\"".to_owned()),
            2 => Just("\"é\"".to_owned()),
            8 => "-?(0|[1-9][0-9]{0,19})",
            4 => Just("true".to_owned()),
            2 => Just("false".to_owned()),
            4 => Just("null".to_owned()),
            1 => Just("\"a\\\"b\"".to_owned()),
            1 => Just("\"\\u00e9\"".to_owned()),
            1 => Just("\"\\ud800\"".to_owned()),
            1 => "-?(0|[1-9][0-9]{0,20})(\\.[0-9]{1,3})?([eE][-+]?[0-9]{1,3})?",
            1 => Just("-0".to_owned()),
            1 => Just("01".to_owned()),
            1 => Just("nul".to_owned()),
        ]
    }

    fn name() -> impl Strategy<Value = String> {
        let known =
            vec!["iss", "sub", "aud", "exp", "nbf", "iat", "jti", "scope", "scp", "client_id", "azp", "act", "may_act"];
        prop_oneof![
            6 => prop::sample::select(known).prop_map(|n| format!("\"{n}\"")),
            12 => prop::sample::select(vec!["groups", "email", "x", "y", ""]).prop_map(|n| format!("\"{n}\"")),
            1 => Just("\"s\\u0075b\"".to_owned()),
        ]
    }

    fn claims_text() -> impl Strategy<Value = String> {
        let members = proptest::collection::vec((name(), piece()), 0..6);
        let spacing = prop::sample::select(vec!["", "", "", " ", "  ", "\n", "\t"]);
        (members, spacing, any::<u16>(), 0..8u8).prop_map(|(members, sp, at, edit)| {
            let body: Vec<String> = members.into_iter().map(|(k, v)| format!("{sp}{k}{sp}:{sp}{v}{sp}")).collect();
            let mut text = format!("{sp}{{{}}}{sp}", body.join(","));
            // Now and then one character dropped or doubled.
            let i = usize::from(at) % text.len();
            if text.is_char_boundary(i) && text.is_char_boundary(i + 1) {
                match edit {
                    0 => drop(text.remove(i)),
                    1 => text.insert(i, text.as_bytes()[i] as char),
                    _ => {}
                }
            }
            text
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 4000, ..ProptestConfig::default() })]

        /// Whatever the fast path reads, serde_json reads alike (`both`
        /// panics otherwise); and serde_json refuses nothing it accepted.
        #[test]
        fn the_fast_path_reads_as_serde_json(text in claims_text()) {
            both(&text);
        }
    }

    /// The generator reaches the fast path often, and serde_json's
    /// refusals often too: the property above compares something.
    #[test]
    fn the_generator_reaches_both_paths() {
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut fast, mut refused) = (0, 0);
        for _ in 0..2000 {
            let text = claims_text().new_tree(&mut runner).unwrap().current();
            fast += usize::from(scan(&text).is_some());
            refused += usize::from(Claims::parse_with_serde(text).is_err());
        }
        assert!(fast > 300 && refused > 300, "fast {fast}, refused {refused} of 2000");
    }
}
