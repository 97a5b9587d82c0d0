//! Virtual key administration shared by `herald keys` and `POST /v1/keys`.
use chrono::{DateTime, Utc};
use herald_domain::money::Budget;
use herald_domain::thresholds::Thresholds;
use herald_domain::{BudgetPeriod, KeyHash, KeyId, VirtualKey};

/// A key as an administrator describes it.
pub struct KeySpec<'a> {
    pub id: KeyId,
    pub name: &'a str,
    pub hash: KeyHash,
    /// Bounded by its constructor (`MAX_BUDGET`), whichever entry point built it.
    pub budget: Option<Budget>,
    pub period: Option<&'a str>,
    pub admin: bool,
    pub thresholds: Option<Vec<u32>>,
    pub expires_at: Option<&'a str>,
    /// Spike alerts on (docs/events.md, "Spend intelligence").
    pub spike_alerts: bool,
}

impl KeySpec<'_> {
    pub fn build(self) -> Result<VirtualKey, String> {
        let name = if self.name.is_empty() {
            format!("key {}", self.id)
        } else {
            self.name.to_owned()
        };
        let mut key = VirtualKey::new(self.id, self.hash, name);
        key.budget = self.budget.map(Budget::get);
        key.budget_period = self
            .period
            .map(BudgetPeriod::parse)
            .transpose()
            .map_err(|e| e.to_string())?
            .unwrap_or_default();
        key.is_admin = self.admin;
        key.spike_alerts = self.spike_alerts;
        if let Some(t) = self.thresholds {
            key.alert_thresholds = Some(Thresholds::from_list(t).map_err(|e| e.to_string())?);
        }
        key.expires_at = self
            .expires_at
            .map(|t| {
                DateTime::parse_from_rfc3339(t)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| format!("expiry is not an RFC 3339 time: {t:?}"))
            })
            .transpose()?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> KeySpec<'static> {
        KeySpec {
            id: KeyId::new(3).unwrap(),
            name: "",
            hash: KeyHash::of_raw("x"),
            budget: Some(Budget::parse("25.00").unwrap()),
            period: Some("Monthly"),
            admin: false,
            thresholds: Some(vec![90, 50]),
            expires_at: Some("2030-01-01T00:00:00Z"),
            spike_alerts: true,
        }
    }

    #[test]
    fn builds_a_key_and_refuses_bad_parts() {
        let k = spec().build().unwrap();
        assert_eq!(k.name, "key 3");
        assert_eq!(k.budget_period, BudgetPeriod::Monthly);
        assert!(k.spike_alerts);
        assert_eq!(
            k.alert_thresholds.as_ref().map(Thresholds::as_slice),
            Some(&[50, 90][..])
        );
        assert!(
            KeySpec {
                period: Some("weekly"),
                ..spec()
            }
            .build()
            .is_err()
        );
        assert!(
            KeySpec {
                thresholds: Some(vec![0]),
                ..spec()
            }
            .build()
            .is_err()
        );
        assert!(
            KeySpec {
                expires_at: Some("tomorrow"),
                ..spec()
            }
            .build()
            .is_err()
        );
        assert!(Budget::parse("-1").is_err() && Budget::parse("1e28").is_err());
    }
}
