//! Shell-style `*` patterns for audiences, scopes, hosts and (later) SPIFFE IDs.
//! Only `*` is special (any run of characters, including none and `/`): these
//! patterns are written by operators in YAML and must read unambiguously.

use std::fmt;

use serde::{Deserialize, Deserializer};

#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
    /// Where its `*`s are: the common shapes (`orders`, `bench-*`,
    /// `*@example.com`, `api://*/read`) match without a search.
    stars: Stars,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stars {
    None,
    One(usize),
    More,
}

impl Glob {
    pub(crate) fn new(pattern: impl Into<String>) -> Glob {
        let pattern = pattern.into();
        let stars = match pattern.find('*') {
            None => Stars::None,
            Some(at) if !pattern[at + 1..].contains('*') => Stars::One(at),
            Some(_) => Stars::More,
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

    pub(crate) fn matches(&self, text: &str) -> bool {
        match self.stars {
            Stars::None => return text == self.pattern,
            Stars::One(at) => {
                let (head, tail) = (&self.pattern[..at], &self.pattern[at + 1..]);
                return text.len() >= head.len() + tail.len() && text.starts_with(head) && text.ends_with(tail);
            }
            Stars::More => {}
        }
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
                assert_eq!(g.matches(text), reference(pattern.as_bytes(), text.as_bytes()), "{pattern:?} vs {text:?}");
            }
        }
    }
}
