use std::fmt;
use std::str::FromStr;

/// A position in an audience's history stream: a Redis stream id `ms-seq`. Ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Position {
    pub ms: u64,
    pub seq: u64,
}

impl Position {
    pub const ZERO: Self = Self { ms: 0, seq: 0 };
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a stream position: {0:?}")]
pub struct BadPosition(pub String);

impl FromStr for Position {
    type Err = BadPosition;
    fn from_str(s: &str) -> Result<Self, BadPosition> {
        let bad = || BadPosition(s.chars().take(40).collect());
        let (ms, seq) = s.split_once('-').ok_or_else(bad)?;
        Ok(Self {
            ms: ms.parse().map_err(|_| bad())?,
            seq: seq.parse().map_err(|_| bad())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_orders_and_prints() {
        let a: Position = "1700000000000-3".parse().unwrap();
        let b: Position = "1700000000001-0".parse().unwrap();
        assert!(a < b);
        assert_eq!(a.to_string(), "1700000000000-3");
        assert!("17".parse::<Position>().is_err());
        assert!("a-b".parse::<Position>().is_err());
    }
}
