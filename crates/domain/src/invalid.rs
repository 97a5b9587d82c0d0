//! The one error of the domain: a value from outside that was refused.

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
