//! stsgate: an OAuth 2.0 Token Exchange (RFC 8693) service in the request path
//! of a service mesh. Envoy calls it through ext_authz v3; it validates the
//! caller's token against trusted IdPs, decides by rules, mints a new token for
//! the destination and hands it back as a header mutation.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

// Layers, top to bottom; a module imports only from layers below it.
pub mod api;
pub mod cli;
pub mod config;
pub mod engine;
pub mod rules;
pub mod runtime;
pub mod signing;
pub mod trust;
// Leaves: they import nothing of ours.
pub mod backoff;
pub mod ca_bundle;
pub mod clock;
pub mod digest;
pub mod glob;
pub mod json_shape;
pub mod metrics;
// The exported spans' target and W3C trace context (OpenTelemetry).
pub mod trace;
// CheckRequests for tests, benches and the load generator (feature `testkit`).
#[cfg(feature = "testkit")]
pub mod testkit;

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
