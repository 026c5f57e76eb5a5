//! Shell-style `*` patterns for audiences, scopes, hosts and (later) SPIFFE IDs.
//! Only `*` is special (any run of characters, including none and `/`): these
//! patterns are written by operators in YAML and must read unambiguously.

use std::fmt;

use serde::{Deserialize, Deserializer};

#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    /// Where its `*`s are, worked out once at config load: the common shapes
    /// (`orders`, `bench-*`, `*@example.com`, `api://*/read`, `*`) match
    /// with at most two compares, without a search.
    stars: Stars,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stars {
    /// No `*`: the text is the pattern.
    None,
    /// One `*`, at this byte offset, neither first nor last (`api://*/read`).
    Infix(usize),
    /// Only a final `*` (`bench-*`): the text starts with the rest.
    Prefix,
    /// Only a leading `*` (`*@example.com`): the text ends with the rest.
    Suffix,
    /// `*` alone: any text.
    Any,
    /// Two or more.
    More,
}

impl Glob {
    pub(crate) fn new(pattern: impl Into<String>) -> Glob {
        let pattern = pattern.into();
        let stars = match pattern.find('*') {
            None => Stars::None,
            Some(at) if pattern[at + 1..].contains('*') => Stars::More,
            Some(_) if pattern.len() == 1 => Stars::Any,
            Some(0) => Stars::Suffix,
            Some(at) if at + 1 == pattern.len() => Stars::Prefix,
            Some(at) => Stars::Infix(at),
        };
        Glob { pattern, stars }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// True when the pattern has no `*` and so matches one exact value.
    pub(crate) fn is_literal(&self) -> bool {
        self.stars == Stars::None
    }

    /// Byte compares are char compares here: `*` is ASCII, and UTF-8 never
    /// puts an ASCII byte inside another character. Inlined: a rule check
    /// makes a dozen or two of these, mostly a length compare and a `memcmp`.
    #[inline(always)]
    pub(crate) fn matches(&self, text: &str) -> bool {
        let (p, t) = (self.pattern.as_bytes(), text.as_bytes());
        match self.stars {
            Stars::None => t == p,
            Stars::Prefix => t.starts_with(&p[..p.len() - 1]),
            Stars::Suffix => t.ends_with(&p[1..]),
            Stars::Any => true,
            Stars::Infix(at) => {
                // The two ends must not overlap (`ab*ba` does not match `aba`).
                t.len() >= p.len() - 1 && t.starts_with(&p[..at]) && t.ends_with(&p[at + 1..])
            }
            Stars::More => self.matches_general(text),
        }
    }

    /// Any pattern (the fast shapes too: the tests compare them with this).
    #[inline(never)]
    fn matches_general(&self, text: &str) -> bool {
        let mut parts = self.pattern.split('*');
        // `split` always yields at least one part.
        let first = parts.next().unwrap_or("");
        let Some(mut rest) = text.strip_prefix(first) else { return false };
        let Some(mut part) = parts.next() else {
            return rest.is_empty(); // no `*` at all: exact match
        };
        // Each part after a `*`: the middle ones found leftmost, the last at the end.
        for next in parts {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
            part = next;
        }
        rest.len() >= part.len() && rest.ends_with(part)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.pattern)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.pattern)
    }
}

impl<'de> Deserialize<'de> for Glob {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() {
            return Err(serde::de::Error::custom("a pattern must not be empty"));
        }
        Ok(Glob::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::Glob;

    #[test]
    fn matches_like_a_shell_star() {
        let cases = [
            ("orders", "orders", true),
            ("orders", "orders2", false),
            ("*", "", true),
            ("*", "anything/at/all", true),
            ("api://*", "api://orders", true),
            ("api://*", "http://orders", false),
            ("*.example.com", "a.example.com", true),
            ("*.example.com", "example.com", false),
            ("spiffe://cluster.local/ns/*/sa/web", "spiffe://cluster.local/ns/prod/sa/web", true),
            ("spiffe://cluster.local/ns/*/sa/web", "spiffe://cluster.local/ns/prod/sa/api", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "acb", false),
            ("ab*ba", "aba", false),
            ("orders.*", "orders.read", true),
        ];
        for (pattern, text, want) in cases {
            assert_eq!(Glob::new(pattern).matches(text), want, "{pattern:?} vs {text:?}");
        }
    }

    /// Every pattern over `a`, `b`, `*` up to 5 characters against every text
    /// over `a`, `b` up to 5: the same answers as a plain recursive matcher,
    /// whichever shape (no star, one, several) the pattern has.
    #[test]
    fn every_shape_matches_like_the_definition() {
        fn reference(p: &[u8], t: &[u8]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some((b'*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
                Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
            }
        }
        fn all(alphabet: &[u8], max: usize) -> Vec<String> {
            let mut out = vec![String::new()];
            let mut last = vec![String::new()];
            for _ in 0..max {
                last = last.iter().flat_map(|s| alphabet.iter().map(move |c| format!("{s}{}", *c as char))).collect();
                out.extend(last.iter().cloned());
            }
            out
        }
        let texts = all(b"ab", 5);
        for pattern in all(b"ab*", 5).into_iter().filter(|p| !p.is_empty()) {
            let g = Glob::new(pattern.as_str());
            for text in &texts {
                let want = reference(pattern.as_bytes(), text.as_bytes());
                assert_eq!(g.matches(text), want, "{pattern:?} vs {text:?}");
                assert_eq!(g.matches_general(text), want, "{pattern:?} vs {text:?}");
            }
        }
    }

    /// Random patterns and texts, multi-byte characters among them: each
    /// shape's compare gives the general matcher's answer and the
    /// definition's, on random texts, texts made to fit the pattern (each `*`
    /// replaced by some filler) and texts where its ends would overlap.
    #[test]
    fn fast_shapes_agree_with_the_general_matcher() {
        use proptest::prelude::*;

        fn reference(p: &[char], t: &[char]) -> bool {
            match p.split_first() {
                None => t.is_empty(),
                Some(('*', rest)) => (0..=t.len()).any(|i| reference(rest, &t[i..])),
                Some((c, rest)) => t.first() == Some(c) && reference(rest, &t[1..]),
            }
        }
        // Few characters, so that random texts often share a pattern's ends.
        let alphabet = |star: bool| {
            let mut chars = vec!['a', 'é', '€', '/'];
            if star {
                chars.extend(['*', '*']);
            }
            proptest::sample::select(chars)
        };
        let string = |star: bool, max: usize| {
            proptest::collection::vec(alphabet(star), 0..max).prop_map(|v| v.into_iter().collect::<String>())
        };
        let pattern = string(true, 8).prop_filter("patterns are not empty", |p| !p.is_empty());
        let fillers = proptest::collection::vec(string(false, 4), 0..8);
        let config = ProptestConfig { failure_persistence: None, ..ProptestConfig::default() };
        proptest!(config, |(pattern in pattern, text in string(false, 8), fillers in fillers, cut in 0usize..8)| {
            let g = Glob::new(pattern.as_str());
            let mut fits = String::new();
            let mut filler = fillers.iter();
            for c in pattern.chars() {
                match c {
                    '*' => fits.push_str(filler.next().map_or("", String::as_str)),
                    c => fits.push(c),
                }
            }
            // The pattern's characters without its `*`s, some cut from the middle.
            let plain: Vec<char> = pattern.chars().filter(|c| *c != '*').collect();
            let cut = cut.min(plain.len());
            let (keep_head, keep_tail) = ((plain.len() - cut) / 2, (plain.len() - cut).div_ceil(2));
            let overlap: String = plain[..keep_head].iter().chain(&plain[plain.len() - keep_tail..]).collect();
            let p: Vec<char> = pattern.chars().collect();
            for t in [text.as_str(), fits.as_str(), overlap.as_str()] {
                let want = reference(&p, &t.chars().collect::<Vec<_>>());
                prop_assert_eq!(g.matches(t), want, "{:?} vs {:?}", pattern, t);
                prop_assert_eq!(g.matches_general(t), want, "{:?} vs {:?}", pattern, t);
            }
            prop_assert!(g.matches(&fits), "{:?} vs {:?}", pattern, fits);
        });
    }

    #[test]
    fn shapes_are_classified() {
        use super::Stars;
        let cases = [
            ("orders", Stars::None),
            ("*", Stars::Any),
            ("bench-*", Stars::Prefix),
            ("*@example.com", Stars::Suffix),
            ("api://*/read", Stars::Infix(6)),
            ("**", Stars::More),
            ("a*b*", Stars::More),
            ("é*", Stars::Prefix),
        ];
        for (pattern, want) in cases {
            assert!(Glob::new(pattern).stars == want, "{pattern:?}");
        }
    }
}
