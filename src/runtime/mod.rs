//! The running process: start-up and shutdown, the listeners and their
//! connection limits, and configuration reload (which owns the live engine).

pub mod listener;
pub mod reload;
pub mod server;
