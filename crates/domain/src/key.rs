use crate::ids::KeyId;
use crate::invalid::Invalid;
use crate::thresholds::Thresholds;
use chrono::{DateTime, Utc};
use rand::Rng;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::fmt;

/// SHA-256 of a raw virtual key, lowercase hex. The only form in which keys are stored,
/// compared or logged.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyHash(String);

impl KeyHash {
    /// Accepts 64 hex digits in either case and normalises to lowercase.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let s = s.trim();
        if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(Invalid::new("key hash must be 64 hexadecimal characters"))
        }
    }

    pub fn of_raw(raw: &str) -> Self {
        Self(hex::encode(Sha256::digest(raw.as_bytes())))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyHash {
    type Error = Invalid;
    fn try_from(s: String) -> Result<Self, Invalid> {
        Self::parse(&s)
    }
}

impl From<KeyHash> for String {
    fn from(h: KeyHash) -> String {
        h.0
    }
}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash({}…)", &self.0[..12])
    }
}

impl fmt::Display for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A raw virtual key as a client presents it. Never logged: `Debug` and `Display` redact it.
#[derive(Clone, PartialEq, Eq)]
pub struct RawKey(String);

impl RawKey {
    pub const PREFIX: &'static str = "condt_";
    const RANDOM_LEN: usize = 32;
    const ALPHABET: &'static [u8] =
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

    /// A new key: `condt_` + 32 random characters from `[A-Za-z0-9]`.
    pub fn generate() -> Self {
        let mut rng = rand::rng();
        let mut s = String::with_capacity(Self::PREFIX.len() + Self::RANDOM_LEN);
        s.push_str(Self::PREFIX);
        for _ in 0..Self::RANDOM_LEN {
            s.push(Self::ALPHABET[rng.random_range(0..Self::ALPHABET.len())] as char);
        }
        Self(s)
    }

    /// Wraps a presented credential. Any non-empty text without whitespace is accepted here;
    /// whether it is a key is decided by looking its hash up.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > 512 || s.chars().any(char::is_whitespace) {
            return Err(Invalid::new("malformed credential"));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn hash(&self) -> KeyHash {
        KeyHash::of_raw(&self.0)
    }

    /// The raw text, for the one place that must show it: `herald keys create` stdout.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RawKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RawKey(<redacted>)")
    }
}

/// How a key's budget resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPeriod {
    #[default]
    Total,
    Daily,
    Monthly,
}

impl BudgetPeriod {
    /// Case-insensitive; accepts Conduit's spellings (`Total`, `Daily`, `Monthly`) and
    /// `lifetime`/`none` as total.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s.trim().to_ascii_lowercase().as_str() {
            "total" | "lifetime" | "none" | "" => Ok(Self::Total),
            "daily" | "day" => Ok(Self::Daily),
            "monthly" | "month" => Ok(Self::Monthly),
            other => Err(Invalid::new(format!(
                "budget period must be total, daily or monthly, got {:?}",
                crate::invalid::prefix(other)
            ))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Total => "total",
            Self::Daily => "daily",
            Self::Monthly => "monthly",
        }
    }
}

/// A virtual key as the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualKey {
    pub id: KeyId,
    pub key_hash: KeyHash,
    pub name: String,
    pub group_id: Option<i64>,
    pub enabled: bool,
    pub expires_at: Option<DateTime<Utc>>,
    pub is_admin: bool,
    pub budget: Option<Decimal>,
    pub budget_period: BudgetPeriod,
    /// Per-key override of the default thresholds (percent).
    pub alert_thresholds: Option<Thresholds>,
    /// Spike alerts (docs/events.md, "Spend intelligence"): off unless asked for.
    pub spike_alerts: bool,
    pub current_spend: Decimal,
    pub updated_at: DateTime<Utc>,
}

impl VirtualKey {
    pub fn new(id: KeyId, key_hash: KeyHash, name: impl Into<String>) -> Self {
        Self {
            id,
            key_hash,
            name: name.into(),
            group_id: None,
            enabled: true,
            expires_at: None,
            is_admin: false,
            budget: None,
            budget_period: BudgetPeriod::Total,
            alert_thresholds: None,
            spike_alerts: false,
            current_spend: Decimal::ZERO,
            updated_at: Utc::now(),
        }
    }

    /// Whether a client may connect with this key at `now`.
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.enabled && self.expires_at.is_none_or(|t| t > now)
    }
}

/// How an event names its virtual key: by id, or by the SHA-256 of the raw key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Id(KeyId),
    Hash(KeyHash),
}

impl KeyRef {
    /// An integer, a numeric string, or a 64-character hex string (docs/events.md, "The bus").
    pub fn parse(field: &str, v: &Value) -> Result<Self, Invalid> {
        match v {
            Value::Number(n) => {
                let id = n
                    .as_i64()
                    .ok_or_else(|| Invalid::new(format!("{field} must be a positive integer")))?;
                Ok(Self::Id(KeyId::new(id)?))
            }
            Value::String(s) if s.len() == 64 => Ok(Self::Hash(KeyHash::parse(s)?)),
            Value::String(s) => Ok(Self::Id(KeyId::parse(s)?)),
            _ => Err(Invalid::new(format!(
                "{field} must be a key id or key hash"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_have_the_documented_shape() {
        let k = RawKey::generate();
        let s = k.expose();
        assert!(s.starts_with("condt_"));
        assert_eq!(s.len(), 38);
        assert!(s[6..].bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(RawKey::generate().expose(), s);
    }

    #[test]
    fn hash_is_lowercase_sha256_hex() {
        // sha256("abc")
        assert_eq!(
            KeyHash::of_raw("abc").as_str(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let upper = "BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD";
        assert_eq!(KeyHash::parse(upper), Ok(KeyHash::of_raw("abc")));
        assert!(KeyHash::parse("abc").is_err());
    }

    #[test]
    fn raw_key_never_prints() {
        let k = RawKey::parse("condt_secret").unwrap();
        assert!(!format!("{k:?}").contains("secret"));
    }

    #[test]
    fn usability_follows_enabled_and_expiry() {
        let now = Utc::now();
        let mut k = VirtualKey::new(KeyId::new(1).unwrap(), KeyHash::of_raw("x"), "k");
        assert!(k.is_usable(now));
        k.expires_at = Some(now - chrono::Duration::seconds(1));
        assert!(!k.is_usable(now));
        k.expires_at = Some(now + chrono::Duration::seconds(60));
        assert!(k.is_usable(now));
        k.enabled = false;
        assert!(!k.is_usable(now));
    }

    #[test]
    fn period_parses_case_insensitively() {
        assert_eq!(BudgetPeriod::parse("Monthly"), Ok(BudgetPeriod::Monthly));
        assert_eq!(BudgetPeriod::parse("DAILY"), Ok(BudgetPeriod::Daily));
        assert!(BudgetPeriod::parse("weekly").is_err());
    }
}
