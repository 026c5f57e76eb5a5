//! stsgate: an OAuth 2.0 Token Exchange (RFC 8693) service in the request path
//! of a service mesh. Envoy calls it through ext_authz v3; it validates the
//! caller's token against trusted IdPs, decides by rules, mints a new token for
//! the destination and hands it back as a header mutation.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod cache;
pub mod codec;
pub mod cli;
pub mod config;
pub mod dev_idp;
pub mod exchange;
pub mod explain;
pub mod ext_authz;
pub mod glob;
pub mod http;
pub mod issuer;
pub mod jwks;
pub mod listener;
pub mod metrics;
pub mod mint;
pub mod readiness;
pub mod reload;
pub mod rules;
pub mod server;
pub mod token_endpoint;
pub mod validate;

/// Generated from stsgate's own ext_authz v3 protos (see `proto/`).
#[allow(clippy::all, missing_docs)]
pub mod pb {
    pub mod envoy {
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

/// Selects aws-lc-rs as rustls' process-wide crypto provider (IdP fetches over
/// TLS). Idempotent: later calls keep the first provider.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
