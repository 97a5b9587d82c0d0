//! Alert thresholds: the validated list a key or the node's default fires at.
use crate::invalid::Invalid;

pub const DEFAULT_THRESHOLDS: [u32; 4] = [50, 75, 90, 100];
const MAX_THRESHOLD: u32 = 1000;

/// Alert thresholds in percent: sorted, distinct, each in 1..=1000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thresholds(Vec<u32>);

impl Default for Thresholds {
    fn default() -> Self {
        Self(DEFAULT_THRESHOLDS.to_vec())
    }
}

impl Thresholds {
    /// Parses a comma list such as `50,75,90,100`.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let list = s
            .split(',')
            .map(|p| {
                p.trim().parse::<u32>().map_err(|_| {
                    Invalid::new(format!("threshold {:?} is not a whole number", p.trim()))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::from_list(list)
    }

    pub fn from_list(mut list: Vec<u32>) -> Result<Self, Invalid> {
        if list.is_empty() {
            return Err(Invalid::new("threshold list is empty"));
        }
        if let Some(bad) = list.iter().find(|t| **t == 0 || **t > MAX_THRESHOLD) {
            return Err(Invalid::new(format!(
                "threshold {bad} is outside 1..={MAX_THRESHOLD}"
            )));
        }
        list.sort_unstable();
        list.dedup();
        Ok(Self(list))
    }

    pub fn as_slice(&self) -> &[u32] {
        &self.0
    }
}
