//! Whom stsgate believes: the trusted issuers, their JWKS, stsgate's own
//! tokens (verified with its own key ring, for re-exchange), and token
//! validation following RFC 8725.

pub(crate) mod claims;
pub mod introspection;
pub mod issuer;
pub(crate) mod jwks;
pub(crate) mod own;
pub(crate) mod plain_json;
pub mod validator;
