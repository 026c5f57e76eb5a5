//! The front doors: the ext_authz Check, the RFC 8693 token endpoint, the
//! HTTP router (JWKS, metadata, probes, metrics), readiness, `explain`, `inspect` and
//! the development IdP. Each renders the engine's answers in its own wire format;
//! refusals are mapped once, in `refusal`; `callers` says who may call Check.

pub mod callers;
pub(crate) mod client_auth;
pub(crate) mod codec;
pub(crate) mod dev_idp;
pub(crate) mod explain;
pub mod ext_authz;
pub(crate) mod inspect;
pub(crate) mod jwt_bearer;
pub mod readiness;
pub(crate) mod refusal;
pub(crate) mod router;
pub(crate) mod token_endpoint;
