//! Herald's domain: identifiers, virtual keys, money, the event vocabulary, inbound and outbound
//! events and the budget rules. Nothing here does I/O; every type that crosses a boundary has a
//! `parse` constructor so invalid data cannot exist past it.
//!
//! This file only declares modules and re-exports; each module imports what it needs from the
//! module that defines it (docs/architecture.md).
#![forbid(unsafe_code)]

pub mod audience;
pub mod budget;
pub mod cause;
pub mod fields;
pub mod forecast;
pub mod ids;
pub mod inbound;
pub mod invalid;
pub mod key;
pub mod key_change;
pub mod money;
pub mod outbound;
pub mod provider;
pub mod summary;
pub mod task;
pub mod thresholds;
pub mod tls;
pub mod vocabulary;

pub use audience::Audience;
pub use cause::Cause;
pub use ids::{EventId, KeyId};
pub use inbound::{InboundEvent, InboundKind, SpendUpdated};
pub use invalid::Invalid;
pub use key::{BudgetPeriod, KeyHash, KeyRef, RawKey, VirtualKey};
pub use outbound::OutboundEvent;
pub use vocabulary::Outbound;
