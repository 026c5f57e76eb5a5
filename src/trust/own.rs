//! stsgate's own tokens as subject tokens, for re-exchange along a delegation
//! chain (`match.issuers: [self]`). They are verified with the public half of
//! stsgate's own key ring (`signing::KeyRing`), as a `KeySet` like an IdP's:
//! every key the ring publishes, so a token signed just before a rotation
//! stays verifiable while its key is still in `signing.keys`. Nothing is
//! fetched: the keys are the ones this process signs with, and a reload that
//! changes them builds a new engine (and a new `OwnIssuer`).

use std::sync::Arc;
use std::time::Duration;

use crate::config::VerifyAlg;
use crate::signing::KeyRing;
use crate::trust::issuer::KeyLookupError;
use crate::trust::jwks::{self, KeySet, VerifyKey};

/// Clock skew allowed on an own token's `exp`, `nbf` and `iat`: the replicas
/// that minted it and the one that reads it run on different clocks.
pub(crate) const OWN_LEEWAY: Duration = Duration::from_secs(30);

/// stsgate itself as the issuer of subject tokens: its `iss` and the
/// verification keys of its ring.
pub(crate) struct OwnIssuer {
    pub(crate) issuer: String,
    keys: KeySet,
}

impl std::fmt::Debug for OwnIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnIssuer").field("issuer", &self.issuer).field("keys", &self.keys.len()).finish()
    }
}

impl OwnIssuer {
    /// The verification view of `ring`: the JWKS it publishes, parsed like an
    /// IdP's (each key pinned to its `alg`).
    pub(crate) fn new(issuer: &str, ring: &KeyRing) -> OwnIssuer {
        // The ring renders its own JWKS from keys it holds, so it parses; were
        // it ever not to, no own token would verify (fail closed).
        let keys = jwks::parse(ring.jwks_json().as_bytes()).unwrap_or_default();
        OwnIssuer { issuer: issuer.to_owned(), keys }
    }

    /// The key of the ring that must verify a token with this `kid` and `alg`.
    /// stsgate names the key of every token it signs, so a token without a
    /// `kid` is none of its own; the algorithm must be the key's own.
    pub(crate) fn key_for(&self, kid: Option<&str>, alg: VerifyAlg) -> Result<Arc<VerifyKey>, KeyLookupError> {
        let unknown = || KeyLookupError::UnknownKid { alg: alg.as_str() };
        let kid = kid.ok_or_else(unknown)?;
        self.keys.get(kid).filter(|k| k.accepts(alg)).cloned().ok_or_else(unknown)
    }
}
