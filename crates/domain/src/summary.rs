//! `GetSpendSummary` (docs/protocol.md, "Client methods"): a key's current period as the
//! durable record has it, built from what a store read.
use crate::budget::period_end;
use crate::fields::format_time;
use crate::forecast::RateView;
use crate::ids::KeyId;
use crate::key::{BudgetPeriod, VirtualKey};
use crate::money;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

/// One SpendUpdated as the summary lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpendTransaction {
    pub event_id: String,
    pub timestamp: String,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub amount: Decimal,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub total_spend: Decimal,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub request_id: Option<String>,
}

/// Spend of one model or provider in the period.
#[derive(Debug, Clone, PartialEq)]
pub struct Share {
    /// `None`: events that named none.
    pub name: Option<String>,
    pub spend: Decimal,
    pub requests: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ModelShare {
    pub model: Option<String>,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub spend: Decimal,
    pub requests: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderShare {
    pub provider: Option<String>,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub spend: Decimal,
    pub requests: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ForecastSummary {
    pub projected_exhaustion: String,
    pub exceeds_budget: bool,
    pub window_minutes: u64,
}

/// The rate of the key's latest period as a store keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct PeriodRate {
    pub period: BudgetPeriod,
    pub period_start: DateTime<Utc>,
    pub view: RateView,
    pub window_minutes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SpendSummary {
    pub virtual_key_id: KeyId,
    #[serde(with = "rust_decimal::serde::arbitrary_precision_option")]
    pub budget: Option<Decimal>,
    pub budget_period: &'static str,
    pub period_start: Option<String>,
    pub period_end: Option<String>,
    #[serde(with = "rust_decimal::serde::arbitrary_precision")]
    pub total_spend: Decimal,
    #[serde(with = "rust_decimal::serde::arbitrary_precision_option")]
    pub period_spend: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::arbitrary_precision_option")]
    pub budget_remaining: Option<Decimal>,
    #[serde(with = "rust_decimal::serde::arbitrary_precision_option")]
    pub budget_percentage: Option<Decimal>,
    pub by_model: Vec<ModelShare>,
    pub by_provider: Vec<ProviderShare>,
    #[serde(with = "rust_decimal::serde::arbitrary_precision_option")]
    pub burn_rate_per_hour: Option<Decimal>,
    pub trend: Option<&'static str>,
    pub rate_as_of: Option<String>,
    pub forecast: Option<ForecastSummary>,
    pub recent: Vec<SpendTransaction>,
}

impl SpendSummary {
    /// Keeps the newest `n` transactions.
    pub fn with_limit(mut self, n: usize) -> Self {
        self.recent.truncate(n);
        self
    }
}

fn largest_first(shares: &mut [Share]) {
    shares.sort_by(|a, b| b.spend.cmp(&a.spend).then_with(|| a.name.cmp(&b.name)));
}

impl SpendSummary {
    /// `None` when the store knows neither the key nor any spend of it.
    pub fn build(
        key_id: KeyId,
        key: Option<&VirtualKey>,
        rate: Option<PeriodRate>,
        mut models: Vec<Share>,
        mut providers: Vec<Share>,
        recent: Vec<SpendTransaction>,
    ) -> Option<Self> {
        if key.is_none() && rate.is_none() {
            return None;
        }
        let budget = key.and_then(|k| k.budget);
        let total = key.map_or_else(
            || recent.first().map_or(Decimal::ZERO, |t| t.total_spend),
            |k| k.current_spend,
        );
        let positive = budget.filter(|b| *b > Decimal::ZERO);
        largest_first(&mut models);
        largest_first(&mut providers);
        let period = rate
            .as_ref()
            .map(|r| r.period)
            .or(key.map(|k| k.budget_period))
            .unwrap_or_default();
        let start = rate.as_ref().map(|r| r.period_start);
        Some(Self {
            virtual_key_id: key_id,
            budget,
            budget_period: period.as_str(),
            period_start: start
                .filter(|s| *s != DateTime::UNIX_EPOCH)
                .map(format_time),
            period_end: start.and_then(|s| period_end(period, s)).map(format_time),
            total_spend: total,
            period_spend: rate.as_ref().map(|_| {
                models
                    .iter()
                    .fold(Decimal::ZERO, |a, s| a.saturating_add(s.spend))
            }),
            budget_remaining: positive.map(|b| money::remaining(b, total)),
            budget_percentage: positive.and_then(|b| money::utilization_percent(total, b)),
            by_model: models
                .into_iter()
                .map(|s| ModelShare {
                    model: s.name,
                    spend: s.spend,
                    requests: s.requests,
                })
                .collect(),
            by_provider: providers
                .into_iter()
                .map(|s| ProviderShare {
                    provider: s.name,
                    spend: s.spend,
                    requests: s.requests,
                })
                .collect(),
            burn_rate_per_hour: rate.as_ref().map(|r| r.view.burn_rate_per_hour),
            trend: rate.as_ref().map(|r| r.view.trend.as_str()),
            rate_as_of: rate.as_ref().map(|r| format_time(r.view.as_of)),
            forecast: rate.as_ref().and_then(|r| {
                r.view.projection.map(|p| ForecastSummary {
                    projected_exhaustion: format_time(p.exhaustion),
                    exceeds_budget: p.exceeds_budget,
                    window_minutes: r.window_minutes,
                })
            }),
            recent,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::Trend;
    use crate::key::KeyHash;

    #[test]
    fn a_summary_lists_shares_largest_first_and_nulls_what_it_lacks() {
        let id = KeyId::new(42).unwrap();
        assert!(SpendSummary::build(id, None, None, vec![], vec![], vec![]).is_none());
        let mut key = VirtualKey::new(id, KeyHash::of_raw("k"), "k");
        key.budget = Some(Decimal::new(1000, 2));
        key.current_spend = Decimal::new(975, 2);
        let start = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let rate = PeriodRate {
            period: BudgetPeriod::Monthly,
            period_start: start,
            view: RateView {
                burn_rate_per_hour: Decimal::new(12, 1),
                trend: Trend::Up,
                as_of: start,
                projection: None,
            },
            window_minutes: 15,
        };
        let share = |n: Option<&str>, s: i64| Share {
            name: n.map(str::to_owned),
            spend: Decimal::new(s, 2),
            requests: 1,
        };
        let s = SpendSummary::build(
            id,
            Some(&key),
            Some(rate),
            vec![share(Some("a"), 1), share(None, 300)],
            vec![share(Some("p"), 301)],
            vec![],
        )
        .unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(
            json,
            r#"{"virtualKeyId":42,"budget":10.00,"budgetPeriod":"monthly","periodStart":"2026-11-01T00:00:00Z","periodEnd":"2026-12-01T00:00:00Z","totalSpend":9.75,"periodSpend":3.01,"budgetRemaining":0.25,"budgetPercentage":97.5,"byModel":[{"model":null,"spend":3.00,"requests":1},{"model":"a","spend":0.01,"requests":1}],"byProvider":[{"provider":"p","spend":3.01,"requests":1}],"burnRatePerHour":1.2,"trend":"up","rateAsOf":"2026-11-01T00:00:00Z","forecast":null,"recent":[]}"#
        );
    }
}
