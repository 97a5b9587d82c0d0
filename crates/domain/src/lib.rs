//! Herald's domain: identifiers, virtual keys, money, inbound and outbound events and the
//! budget rules. Nothing here does I/O; every type that crosses a boundary has a `parse`
//! constructor so invalid data cannot exist past it.
#![forbid(unsafe_code)]

pub mod audience;
pub mod budget;
pub mod catalog;
pub mod event;
pub mod ids;
pub mod key;
pub mod money;

pub use audience::Audience;
pub use event::{InboundEvent, InboundKind, KeyRef, OutboundEvent, SpendUpdated};
pub use ids::{EventId, KeyId};
pub use key::{BudgetPeriod, KeyHash, RawKey, VirtualKey};

/// Why a value from outside was refused. The text is short and names the field; it ends up in
/// the `x-herald-reason` header of a dead-lettered message or in a client error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Invalid {
    pub fn new(reason: impl Into<String>) -> Self {
        Self(reason.into())
    }
}
