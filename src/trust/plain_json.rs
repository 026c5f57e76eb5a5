//! A reader of plain JSON text: text with no escape and no control
//! character, which is what the JOSE headers and claims of most tokens are.
//! The fast paths of the header and claims readers use it (serde's
//! machinery cost a cold exchange ~10,000 instructions, issue 17).
//!
//! It reads only what it can read completely and exactly as serde_json
//! would: strings without escapes, integers of at most 18 digits, nesting at
//! most `MAX_DEPTH` deep. Anything else, every syntax error included,
//! answers `None`; the caller then hands the text to serde_json, which
//! decides every refusal, so errors read as they always did.

/// Levels of arrays and objects a value may nest here; deeper ones go to
/// serde_json, which knows its own limit.
const MAX_DEPTH: u32 = 32;

/// A cursor over plain JSON text.
pub(crate) struct Reader<'t> {
    text: &'t str,
    at: usize,
}

impl<'t> Reader<'t> {
    /// A reader of `text`, when it is plain: no `\\`, no control character
    /// (so every string ends at its next `"`, and whitespace is only spaces).
    pub(crate) fn new(text: &'t str) -> Option<Reader<'t>> {
        (!awkward(text.as_bytes())).then_some(Reader { text, at: 0 })
    }

    fn bytes(&self) -> &'t [u8] {
        self.text.as_bytes()
    }

    fn space(&mut self) {
        while self.bytes().get(self.at) == Some(&b' ') {
            self.at += 1;
        }
    }

    fn eat(&mut self, b: u8) -> Option<()> {
        (self.bytes().get(self.at) == Some(&b)).then(|| self.at += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.bytes().get(self.at..)?.starts_with(word).then(|| self.at += word.len())
    }

    /// Reads `null` if it comes next.
    pub(crate) fn null(&mut self) -> bool {
        self.literal(b"null").is_some()
    }

    /// Whether a string comes next.
    pub(crate) fn at_string(&self) -> bool {
        self.bytes().get(self.at) == Some(&b'"')
    }

    /// A string's content.
    pub(crate) fn string(&mut self) -> Option<&'t str> {
        self.eat(b'"')?;
        let start = self.at;
        let end = start + memchr::memchr(b'"', &self.bytes()[start..])?;
        self.at = end + 1;
        // Both ends are ASCII quotes: character boundaries.
        self.text.get(start..end)
    }

    /// `null` (`None`) or a string.
    pub(crate) fn string_or_null(&mut self) -> Option<Option<&'t str>> {
        if self.null() {
            return Some(None);
        }
        self.string().map(Some)
    }

    /// An integer as JSON writes one, of at most 18 digits (so that it
    /// fits an i64 and a u64): whether it is negative, and its magnitude.
    pub(crate) fn integer(&mut self) -> Option<(bool, u64)> {
        let negative = self.eat(b'-').is_some();
        let rest = &self.bytes()[self.at..];
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        let text = &rest[..digits];
        // No leading zero; a fraction or an exponent is serde_json's to read.
        if digits == 0 || digits > 18 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        if matches!(rest.get(digits), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        self.at += digits;
        Some((negative, text.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'))))
    }

    /// Any value, checked; its text. `depth` is the level it lies at (a
    /// member of the outermost object lies at 1).
    pub(crate) fn value(&mut self, depth: u32) -> Option<&'t str> {
        let from = self.at;
        match *self.bytes().get(self.at)? {
            b'"' => self.string().map(drop)?,
            b't' => self.literal(b"true")?,
            b'f' => self.literal(b"false")?,
            b'n' => self.literal(b"null")?,
            b'-' | b'0'..=b'9' => self.integer().map(drop)?,
            b'[' if depth < MAX_DEPTH => self.array(|r| r.value(depth + 1).map(drop))?,
            b'{' if depth < MAX_DEPTH => self.object(|r, _| r.value(depth + 1).map(drop))?,
            _ => return None,
        }
        self.text.get(from..self.at)
    }

    /// An array, each element read by `element`.
    pub(crate) fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        self.space();
        if self.eat(b']').is_some() {
            return Some(());
        }
        loop {
            element(self)?;
            self.space();
            if self.eat(b',').is_none() {
                return self.eat(b']');
            }
            self.space();
        }
    }

    /// An object, each member's value read by `member`, given its name.
    pub(crate) fn object(&mut self, mut member: impl FnMut(&mut Self, &'t str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        self.space();
        if self.eat(b'}').is_some() {
            return Some(());
        }
        loop {
            let name = self.string()?;
            self.space();
            self.eat(b':')?;
            self.space();
            member(self, name)?;
            self.space();
            if self.eat(b',').is_none() {
                return self.eat(b'}');
            }
            self.space();
        }
    }

    /// The whole text as one object, each member read by `member`; spaces
    /// around it, nothing else.
    pub(crate) fn whole_object(mut self, member: impl FnMut(&mut Self, &'t str) -> Option<()>) -> Option<()> {
        self.space();
        self.object(member)?;
        self.space();
        (self.at == self.text.len()).then_some(())
    }
}

/// Whether `bytes` holds a `\\` or a control character. A block of fixed
/// size at a time, which the compiler turns into vector compares.
fn awkward(bytes: &[u8]) -> bool {
    let bad = |b: &u8| (*b < 0x20) | (*b == b'\\');
    let mut blocks = bytes.chunks_exact(32);
    let found = blocks.by_ref().any(|block| {
        let block: &[u8; 32] = block.try_into().unwrap_or(&[0x20; 32]);
        block.iter().fold(false, |found, b| found | bad(b))
    });
    found || blocks.remainder().iter().any(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Escapes and control characters are found wherever they lie: in a
    /// whole block, in the tail, at either end.
    #[test]
    fn awkward_text_is_found_anywhere() {
        for len in 0..80 {
            assert!(!awkward(&vec![b'a'; len]), "{len}");
            for at in 0..len {
                for bad in [b'\\', 0, 0x1f, b'\n', b'\t'] {
                    let mut text = vec![b'a'; len];
                    text[at] = bad;
                    assert!(awkward(&text), "{len} {at} {bad}");
                }
                let mut text = vec![b'a'; len];
                text[at] = 0x20;
                assert!(!awkward(&text), "a space is plain");
            }
        }
    }

    /// Values read as serde_json reads their syntax, and what the reader
    /// leaves to serde_json it answers `None` for.
    #[test]
    fn values_are_read_or_left() {
        let value = |text: &str| Reader::new(text).and_then(|mut r| r.value(1).map(str::len));
        for ok in ["1", "-1", "0", "true", "null", "\"\"", "[]", "{}", "[ 1 , [ ] , { \"a\" : null } ]", "\"é\""] {
            assert_eq!(value(ok), Some(ok.len()), "{ok}");
            assert!(serde_json::from_str::<serde_json::Value>(ok).is_ok(), "{ok}");
        }
        for left in
            ["01", "-", "1.5", "1e3", "1234567890123456789", "tru", "[1,]", "{\"a\"}", "{a:1}", "\"a\\\"\"", "+1"]
        {
            assert_eq!(value(left), None, "{left}");
        }
        let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(value(&deep(31)).is_some());
        assert!(value(&deep(32)).is_none(), "deeper than MAX_DEPTH: serde_json's");
    }
}
