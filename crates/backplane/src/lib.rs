//! The backplane (docs/protocol.md, "History window"; docs/reliability.md): history streams and
//! live channels per audience. Redis in production (one server or a cluster); in memory for
//! `standalone`. Gateway nodes hand it a [`Mailbox`] per local listener; it subscribes to an
//! audience's channel only while that audience has one.
//!
//! This file only declares modules and re-exports.
#![forbid(unsafe_code)]

mod cluster;
mod connection;
mod contract;
mod delivery;
mod entries;
mod inbox;
mod keys;
mod mailbox;
mod memory;
mod position;
mod redis;
mod redis_config;
mod relay;
mod router;
mod script;
mod streams;
mod subscriber;
mod tls;

pub use contract::{Backplane, BackplaneError, History, Published, SharedBackplane, TASK_TTL};
pub use delivery::Delivery;
pub use inbox::RelayInbox;
pub use mailbox::{Mailbox, MailboxReceiver, Received};
pub use memory::MemoryBackplane;
pub use position::Position;
pub use redis::RedisBackplane;
pub use redis_config::RedisConfig;
pub use router::Subscription;
#[cfg(feature = "bench")]
pub use script::history_script_for_plain_subscribers;
