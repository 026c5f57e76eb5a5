//! SHA-256 over length-prefixed fields: cache keys and key fingerprints.
//! A leaf: imports nothing of ours.

use aws_lc_rs::digest;

/// A SHA-256 digest.
pub(crate) type Digest = [u8; 32];

/// Builds cache keys from length-prefixed fields, so no two different
/// field lists can produce the same byte stream.
pub(crate) struct KeyBuilder(digest::Context);

impl KeyBuilder {
    pub(crate) fn new(domain: &[u8]) -> KeyBuilder {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(domain);
        KeyBuilder(ctx)
    }

    pub(crate) fn field(mut self, bytes: &[u8]) -> KeyBuilder {
        self.0.update(&(bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    pub(crate) fn fields(self, parts: &[&[u8]]) -> KeyBuilder {
        parts.iter().fold(self, |b, p| b.field(p))
    }

    pub(crate) fn opt(self, bytes: Option<&[u8]>) -> KeyBuilder {
        match bytes {
            None => self.field(b"\x00none"),
            Some(b) => self.field(b"\x01").field(b),
        }
    }

    pub(crate) fn finish(self) -> Digest {
        let d = self.0.finish();
        let mut key = [0u8; 32];
        key.copy_from_slice(d.as_ref());
        key
    }
}
