//! Shared integration-test harness, one file per fake:
//!
//! - `jose`: JOSE forging independent of stsgate (raw JWS, `alg: none`, HS256
//!   confusion, IdP keys and JWKS documents);
//! - `idp`: a controllable mock OIDC identity provider on a real HTTP port;
//! - `harness`: the real stsgate server on ephemeral ports, its configuration,
//!   and verification of minted tokens against its published JWKS;
//! - `check`: `CheckRequest`s and readers of `CheckResponse`s;
//! - `process`: scratch directories, spawned binaries, free ports, polling
//!   (also used by the Envoy end-to-end harness, `tests/e2e/mod.rs`);
//! - `pki`: a CA, server and client certificates made at test time;
//! - `redis`: a real `redis-server`, plain or over TLS.
//!
//! Each test binary does `mod support; use support::*;` and uses only part of it.
#![allow(dead_code)]

mod check;
mod harness;
mod idp;
mod jose;
mod pki;
mod process;
mod redis;

// A test binary that uses nothing of one of them would warn.
#[allow(unused_imports)]
pub use {self::redis::*, check::*, harness::*, idp::*, jose::*, pki::*, process::*};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// stsgate's own issuer in every harness configuration.
pub const STS_ISSUER: &str = "https://sts.test";
/// The kid of stsgate's (ephemeral, ES256) signing key in the harness.
pub const STS_KID: &str = "sts-es256";
/// google.rpc.Code values.
pub const RPC_OK: i32 = 0;
pub const RPC_INVALID_ARGUMENT: i32 = 3;
pub const RPC_PERMISSION_DENIED: i32 = 7;
pub const RPC_UNAVAILABLE: i32 = 14;
pub const RPC_UNAUTHENTICATED: i32 = 16;
