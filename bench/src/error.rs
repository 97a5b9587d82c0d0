//! The load generator's one error type: anything, with its message.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
