//! `Claims::parse`'s fast path: one pass over claims' JSON text of the
//! common shape, without serde's machinery (which cost ~7,500 instructions
//! for a typical 330-byte access token, issue 17).
//!
//! It reads only what it can read completely and exactly as serde_json
//! would: text without a backslash or a control character, numbers that are
//! integers of at most 18 digits, nesting at most `MAX_DEPTH` deep, and
//! known claims of their usual types. Anything else, syntax errors and
//! duplicates included, answers `None`, and serde_json reads the text: it
//! decides every refusal, so errors read as they always did.

use serde_json::{Number, Value};

use super::{Claims, Span, known_claim};

/// Levels of arrays and objects a claim's value may nest here; deeper ones
/// go to serde_json, which knows its own limit.
const MAX_DEPTH: u32 = 32;

/// The claims `text` holds, or `None` when serde_json must read it.
pub(super) fn scan(text: &str) -> Option<Claims> {
    let bytes = text.as_bytes();
    // No escape and no control character anywhere: every string ends at
    // its next `"`, and whitespace is only spaces.
    if awkward(bytes) {
        return None;
    }
    let mut r = Reader { bytes, at: 0 };
    let mut c = Claims::default();
    let mut seen = 0u16;
    r.space();
    r.eat(b'{')?;
    r.space();
    if r.eat(b'}').is_none() {
        loop {
            let (start, end) = r.string()?;
            r.space();
            r.eat(b':')?;
            r.space();
            match known_claim(&text[start..end]) {
                None => {
                    let from = r.at;
                    r.value(1)?;
                    c.other.push((Span::new(start, end - start)?, Span::new(from, r.at - from)?));
                }
                Some(bit) => {
                    if seen & (1 << bit) != 0 {
                        return None;
                    }
                    seen |= 1 << bit;
                    match bit {
                        0 => c.iss = r.text(text)?,
                        1 => c.sub = r.text(text)?,
                        2 => r.aud(&mut c.aud)?,
                        3 => c.exp = r.date()?,
                        4 => c.nbf = r.date()?,
                        5 => c.iat = r.date()?,
                        6 => c.jti = r.text(text)?,
                        7 => c.scope = r.json(text)?,
                        8 => c.scp = r.json(text)?,
                        9 => c.client_id = r.text(text)?,
                        10 => c.azp = r.text(text)?,
                        11 => c.act = r.json(text)?,
                        _ => c.may_act = r.json(text)?,
                    }
                }
            }
            r.space();
            if r.eat(b',').is_some() {
                r.space();
                continue;
            }
            r.eat(b'}')?;
            break;
        }
    }
    r.space();
    if r.at != bytes.len() {
        return None;
    }
    if c.other.len() > 1 {
        c.other.sort_unstable_by(|a, b| a.0.get(text).cmp(b.0.get(text)));
        if c.other.windows(2).any(|w| w[0].0.get(text) == w[1].0.get(text)) {
            return None;
        }
    }
    Some(c)
}

/// Whether `bytes` holds a `\\` or a control character. A block of fixed
/// size at a time, which the compiler turns into vector compares (a byte
/// loop cost ~4 instructions a byte).
fn awkward(bytes: &[u8]) -> bool {
    let bad = |b: &u8| (*b < 0x20) | (*b == b'\\');
    let mut blocks = bytes.chunks_exact(32);
    let found = blocks.by_ref().any(|block| {
        let block: &[u8; 32] = block.try_into().unwrap_or(&[0x20; 32]);
        block.iter().fold(false, |found, b| found | bad(b))
    });
    found || blocks.remainder().iter().any(bad)
}

/// A cursor over text that holds no `\\` and no control character.
struct Reader<'t> {
    bytes: &'t [u8],
    at: usize,
}

impl Reader<'_> {
    fn space(&mut self) {
        while self.bytes.get(self.at) == Some(&b' ') {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.bytes.get(self.at) == Some(&b)).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes.get(self.at..)?.starts_with(word).then(|| self.at += word.len())
    }

    /// A string: where its content starts and ends.
    fn string(&mut self) -> Option<(usize, usize)> {
        self.eat(b'"')?;
        let start = self.at;
        let end = start + memchr::memchr(b'"', &self.bytes[start..])?;
        self.at = end + 1;
        Some((start, end))
    }

    /// An integer as JSON writes one, of at most 18 digits (so that it
    /// fits an i64 and a u64): whether it is negative, and its magnitude.
    fn integer(&mut self) -> Option<(bool, u64)> {
        let negative = self.eat(b'-').is_some();
        let digits = self.bytes[self.at..].iter().take_while(|b| b.is_ascii_digit()).count();
        let text = &self.bytes[self.at..self.at + digits];
        // No leading zero; a fraction or an exponent is serde_json's to read.
        if digits == 0 || digits > 18 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        if matches!(self.bytes.get(self.at + digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.at += digits;
        Some((negative, text.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))))
    }

    /// Any value, checked and skipped; `depth` is the level it lies at.
    fn value(&mut self, depth: u32) -> Option<()> {
        match *self.bytes.get(self.at)? {
            b'"' => self.string().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'-' | b'0'..=b'9' => self.integer().map(drop),
            open @ (b'[' | b'{') => {
                if depth >= MAX_DEPTH {
                    return None;
                }
                let close = if open == b'[' { b']' } else { b'}' };
                self.at += 1;
                self.space();
                if self.eat(close).is_some() {
                    return Some(());
                }
                loop {
                    if open == b'{' {
                        self.string()?;
                        self.space();
                        self.eat(b':')?;
                        self.space();
                    }
                    self.value(depth + 1)?;
                    self.space();
                    if self.eat(b',').is_none() {
                        return self.eat(close);
                    }
                    self.space();
                }
            }
            _ => None,
        }
    }

    /// `null` or a string, as `Option<String>` reads them.
    fn text(&mut self, text: &str) -> Option<Option<String>> {
        if self.literal(b"null").is_some() {
            return Some(None);
        }
        let (start, end) = self.string()?;
        Some(Some(text[start..end].to_owned()))
    }

    /// `null` or a non-negative integer, as `Option<Number>` reads them
    /// (a negative one is serde_json's: `-0` reads as a float).
    fn date(&mut self) -> Option<Option<Number>> {
        if self.literal(b"null").is_some() {
            return Some(None);
        }
        match self.integer()? {
            (false, n) => Some(Some(Number::from(n))),
            (true, _) => None,
        }
    }

    /// `aud`: `null`, a string or an array of strings.
    fn aud(&mut self, out: &mut Vec<Span>) -> Option<()> {
        match *self.bytes.get(self.at)? {
            b'n' => self.literal(b"null"),
            b'"' => {
                let (start, end) = self.string()?;
                out.push(Span::new(start, end - start)?);
                Some(())
            }
            b'[' => {
                self.at += 1;
                // As the serde reader reserves.
                out.reserve_exact(2);
                self.space();
                if self.eat(b']').is_some() {
                    return Some(());
                }
                loop {
                    let (start, end) = self.string()?;
                    out.push(Span::new(start, end - start)?);
                    self.space();
                    if self.eat(b',').is_none() {
                        return self.eat(b']');
                    }
                    self.space();
                }
            }
            _ => None,
        }
    }

    /// Any value as `Option<Value>` reads it: `null` is `None`, a string
    /// is built here, anything else by serde_json from its checked text.
    fn json(&mut self, text: &str) -> Option<Option<Value>> {
        if self.literal(b"null").is_some() {
            return Some(None);
        }
        if self.bytes.get(self.at) == Some(&b'"') {
            let (start, end) = self.string()?;
            return Some(Some(Value::String(text[start..end].to_owned())));
        }
        let from = self.at;
        self.value(1)?;
        serde_json::from_str(&text[from..self.at]).ok().map(Some)
    }
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
