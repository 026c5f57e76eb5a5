//! Shell-style `*` patterns for audiences, scopes, hosts and (later) SPIFFE IDs.
//! Only `*` is special (any run of characters, including none and `/`): these
//! patterns are written by operators in YAML and must read unambiguously.

use std::fmt;

use serde::{Deserialize, Deserializer};

#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pattern: String,
}

impl Glob {
    pub(crate) fn new(pattern: impl Into<String>) -> Glob {
        Glob { pattern: pattern.into() }
    }

    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// True when the pattern has no `*` and so matches one exact value.
    pub(crate) fn is_literal(&self) -> bool {
        !self.pattern.contains('*')
    }

    pub(crate) fn matches(&self, text: &str) -> bool {
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
}
