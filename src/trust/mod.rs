//! Whom stsgate believes: the trusted issuers, their JWKS, and token
//! validation following RFC 8725.

pub mod issuer;
pub(crate) mod jwks;
pub mod validator;
