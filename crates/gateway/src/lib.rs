//! The gateway (docs/protocol.md): ASP.NET Core SignalR JSON hub protocol over WebSockets,
//! Server-Sent Events and long polling for the stock `@microsoft/signalr` clients, with CORS for
//! pages on other origins. Negotiate hands out signed connection tokens (no state
//! per negotiate, so any node accepts them); each connection is one task that subscribes its
//! audiences on the backplane, replays history from a resume cursor, and forwards live events.
//!
//! Decisions where the contract is silent:
//! - Refusals happen before the upgrade, as plain HTTP: unknown hub 404, missing/bad/disabled/
//!   expired credential or a hub the caller may not use 401 (with `WWW-Authenticate: Bearer`),
//!   forged/expired/foreign connection token 401, undecodable `?cursor=` 400 (reconnecting with
//!   the same cursor could never succeed), key store or backplane down 503, shutting down 503.
//! - Connection tokens live `connection_token_ttl` (5 min); they bind hub, caller (key hash or
//!   `master`) and connection id, and the upgrade must present the same credential.
//! - `negotiateVersion` missing or 0 gets the version-0 answer, whose `connectionId` is the token.
//! - Message size is checked per WebSocket message (and per carried partial record) against
//!   `max_message_bytes`; the transport's own limit is set 4× higher (at least +64 KiB) so that
//!   moderately oversized messages are read whole and answered with a clean Close.
//! - Ping is sent when nothing else was sent for `keepalive_interval`; only SignalR messages
//!   (not WebSocket control frames) count as client activity for `client_timeout`.
//! - `Resume(cursor)` answers `{"replayed": n}` after the replayed events. A cursor entry for an
//!   audience the connection does not have is ignored. An audience missing from the cursor is
//!   not replayed (the cursor only knows audiences the connection delivered from).
//! - A `VirtualKeyUpdated`/`VirtualKeyDeleted` event on the caller's own key stream makes the
//!   connection re-check its key in the store and close (`allowReconnect` false) if it was
//!   deleted, disabled, expired or re-hashed; a key's `expires_at` closes it on time.
//! - Each node caps the hub connections it holds per key and per client address (429 before
//!   the upgrade, `caps.rs`); hub error replies quote at most 64 bytes of any client input.
#![forbid(unsafe_code)]
//!
//! This file only declares modules and re-exports.

pub mod auth;
mod caps;
pub mod cursor;
pub mod hubs;
pub mod msgpack;
mod node;
mod origins;
pub mod protocol;
mod routes;
mod session;
pub mod token;
mod transports;
mod wire;

pub use caps::ClientAddress;
pub use node::{Gateway, GatewayConfig};
pub use origins::AllowedOrigins;
