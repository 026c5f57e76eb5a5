//! The running process: start-up and shutdown, the listeners and their
//! connection limits, TLS on the gRPC listener, and configuration reload
//! (which owns the live engine).

pub mod listener;
pub mod reload;
pub mod server;
pub mod telemetry;
pub mod tls;
