//! Test support, not part of Herald: the client side of the SignalR JSON hub protocol as Herald's
//! tests and load generator speak it. [`codec`] is the framing (records, handshake, pings,
//! invocations); [`Client`] is a WebSocket client on top of it for tests, with a deadline on
//! every wait.
//!
//! This file only declares modules and re-exports.
#![forbid(unsafe_code)]

mod client;
pub mod codec;

pub use client::{Client, ConnectError, TimedOut};
