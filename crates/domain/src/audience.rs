use crate::ids::KeyId;
use crate::invalid::Invalid;
use std::fmt;

/// Who an event is for. Each audience has one live channel and one history stream
/// (docs/protocol.md, "Hubs"): `vkey:{id}`, `global`, `admin`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Audience {
    Key(KeyId),
    Global,
    Admin,
}

impl Audience {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "global" => Ok(Self::Global),
            "admin" => Ok(Self::Admin),
            _ => match s.strip_prefix("vkey:") {
                Some(id) => Ok(Self::Key(KeyId::parse(id)?)),
                None => Err(Invalid::new(format!(
                    "unknown audience {:?}",
                    crate::invalid::prefix(s)
                ))),
            },
        }
    }
}

impl fmt::Display for Audience {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Key(id) => write!(f, "vkey:{id}"),
            Self::Global => f.write_str("global"),
            Self::Admin => f.write_str("admin"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for a in [
            Audience::Key(KeyId::new(42).unwrap()),
            Audience::Global,
            Audience::Admin,
        ] {
            assert_eq!(Audience::parse(&a.to_string()), Ok(a));
        }
        assert!(Audience::parse("vkey:0").is_err());
        assert!(Audience::parse("room").is_err());
    }
}
