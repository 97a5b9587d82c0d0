use crate::invalid::Invalid;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A virtual key's numeric id (Conduit's `VirtualKeyId`). Always positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(i64);

impl KeyId {
    pub fn new(id: i64) -> Result<Self, Invalid> {
        if id > 0 {
            Ok(Self(id))
        } else {
            Err(Invalid::new(format!(
                "key id must be a positive integer, got {id}"
            )))
        }
    }

    /// Parses the decimal text form (`"42"`).
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let id = s.trim().parse::<i64>().map_err(|_| {
            Invalid::new(format!(
                "key id must be a positive integer, got {:?}",
                crate::invalid::prefix(s)
            ))
        })?;
        Self::new(id)
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of a source event (`messageId` / CloudEvents `id`): the idempotency key for
/// everything downstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(String);

impl EventId {
    pub const MAX_LEN: usize = 200;

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Invalid::new("event id is empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(Invalid::new(format!(
                "event id longer than {} bytes",
                Self::MAX_LEN
            )));
        }
        if s.chars().any(char::is_control) {
            return Err(Invalid::new("event id contains control characters"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_id_rejects_zero_negative_and_text() {
        assert!(KeyId::new(0).is_err());
        assert!(KeyId::new(-3).is_err());
        assert!(KeyId::parse("abc").is_err());
        assert_eq!(KeyId::parse(" 42 ").map(KeyId::get), Ok(42));
    }

    #[test]
    fn event_id_rejects_empty_long_and_control() {
        assert!(EventId::parse("  ").is_err());
        assert!(EventId::parse(&"x".repeat(201)).is_err());
        assert!(EventId::parse("a\nb").is_err());
        assert_eq!(
            EventId::parse("abc-1").map(|e| e.to_string()),
            Ok("abc-1".into())
        );
    }
}
