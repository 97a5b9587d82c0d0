//! Budget rules (docs/events.md, "Budget alerts"), pure: given what a key has already fired in this period and a new
//! spend observation, decide what fires, what is marked and what re-arms. The store applies
//! the decision atomically; this module only computes it.
use crate::fields::format_time;
use crate::ids::{EventId, KeyId};
use crate::key::{BudgetPeriod, VirtualKey};
use crate::money;
use crate::thresholds::Thresholds;
use chrono::{DateTime, Datelike, TimeZone, Utc};
use rust_decimal::Decimal;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn of(threshold: u32) -> Self {
        match threshold {
            0..75 => Self::Info,
            75..90 => Self::Warning,
            _ => Self::Critical,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

pub fn alert_type(threshold: u32) -> String {
    if threshold == 100 {
        "budget_exceeded".to_owned()
    } else {
        format!("budget_{threshold}_percent")
    }
}

/// Start of the budget period containing `at` (UTC). `Total` never rolls over.
pub fn period_start(period: BudgetPeriod, at: DateTime<Utc>) -> DateTime<Utc> {
    let midnight = |y, m, d| {
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0)
            .single()
            .unwrap_or(DateTime::UNIX_EPOCH)
    };
    match period {
        BudgetPeriod::Total => DateTime::UNIX_EPOCH,
        BudgetPeriod::Daily => midnight(at.year(), at.month(), at.day()),
        BudgetPeriod::Monthly => midnight(at.year(), at.month(), 1),
    }
}

/// End of the period that starts at `start`, if it has one.
pub fn period_end(period: BudgetPeriod, start: DateTime<Utc>) -> Option<DateTime<Utc>> {
    match period {
        BudgetPeriod::Total => None,
        BudgetPeriod::Daily => Some(start + chrono::Duration::days(1)),
        BudgetPeriod::Monthly => {
            let (y, m) = if start.month() == 12 {
                (start.year() + 1, 1)
            } else {
                (start.year(), start.month() + 1)
            };
            Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single()
        }
    }
}

/// What the store remembers of one threshold in one key's period.
#[derive(Debug, Clone, PartialEq)]
pub struct ThresholdState {
    pub threshold: u32,
    /// How many times this threshold has fired or been marked in the period.
    pub generation: u32,
    /// Re-armed after firing: may fire again (as `generation + 1`).
    pub armed: bool,
    /// Source time of the event that fired or marked it.
    pub source_time: DateTime<Utc>,
    /// The budget in force when it fired.
    pub budget: Decimal,
}

/// One SpendUpdated as the budget engine sees it, with the budget and period already resolved.
#[derive(Debug, Clone)]
pub struct SpendObservation {
    pub key_id: KeyId,
    pub event_id: EventId,
    pub source_time: DateTime<Utc>,
    pub total_spend: Decimal,
    pub budget: Decimal,
    pub period: BudgetPeriod,
    pub period_start: DateTime<Utc>,
    pub thresholds: Thresholds,
}

/// A budget alert, fully computed. Its `event_id` is derived from (key, period, threshold,
/// generation), so every attempt to publish it is the same event.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetAlert {
    pub event_id: EventId,
    pub key_id: KeyId,
    pub threshold: u32,
    pub generation: u32,
    pub alert_type: String,
    pub severity: Severity,
    pub percentage: Decimal,
    pub current_spend: Decimal,
    pub budget: Decimal,
    pub remaining: Decimal,
    pub message: String,
    pub period_start: DateTime<Utc>,
    pub period_end: Option<DateTime<Utc>>,
    pub source_event_id: EventId,
    pub timestamp: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Record the threshold as fired and publish `alert`.
    Fire(Box<BudgetAlert>),
    /// Record the threshold as fired without an alert: a higher one fired for the same event.
    Mark { threshold: u32, generation: u32 },
    /// Allow the threshold to fire again.
    Rearm { threshold: u32 },
}

impl Change {
    pub fn threshold(&self) -> u32 {
        match self {
            Self::Fire(a) => a.threshold,
            Self::Mark { threshold, .. } | Self::Rearm { threshold } => *threshold,
        }
    }
}

/// What one SpendUpdated tells the budget engine before its key is looked up.
#[derive(Debug, Clone)]
pub struct SpendFacts {
    pub key_id: KeyId,
    pub event_id: EventId,
    pub source_time: DateTime<Utc>,
    pub total_spend: Decimal,
    /// The event's own budget, period and period start, which win over the key's.
    pub budget: Option<Decimal>,
    pub period: Option<BudgetPeriod>,
    pub period_start: Option<DateTime<Utc>>,
    /// This event's charge and what it was for (the spend summary's transactions).
    pub amount: Decimal,
    pub model: Option<String>,
    pub provider: Option<String>,
    pub request_id: Option<String>,
}

impl SpendFacts {
    /// The budget in force: the event's, else the key's.
    pub fn budget(&self, key: Option<&VirtualKey>) -> Option<Decimal> {
        self.budget.or(key.and_then(|k| k.budget))
    }

    /// The budget period in force and its start: the event's, else the key's (total without
    /// either).
    pub fn period(&self, key: Option<&VirtualKey>) -> (BudgetPeriod, DateTime<Utc>) {
        let period = self
            .period
            .or(key.map(|k| k.budget_period))
            .unwrap_or(BudgetPeriod::Total);
        let start = self
            .period_start
            .unwrap_or_else(|| period_start(period, self.source_time));
        (period, start)
    }

    /// The observation to evaluate, or `None` when no positive budget applies. The key's own
    /// thresholds apply when it has a list, else `defaults`.
    pub fn observation(
        &self,
        key: Option<&VirtualKey>,
        defaults: &Thresholds,
    ) -> Option<SpendObservation> {
        let budget = self.budget(key).filter(|b| *b > Decimal::ZERO)?;
        let (period, period_start) = self.period(key);
        let thresholds = key
            .and_then(|k| k.alert_thresholds.clone())
            .unwrap_or_else(|| defaults.clone());
        Some(SpendObservation {
            key_id: self.key_id,
            event_id: self.event_id.clone(),
            source_time: self.source_time,
            total_spend: self.total_spend,
            budget,
            period,
            period_start,
            thresholds,
        })
    }
}

/// Applies `change` (decided for `obs`) to the period's `state`, as the store records it.
pub fn apply(state: &mut Vec<ThresholdState>, obs: &SpendObservation, change: &Change) {
    let threshold = change.threshold();
    let generation = match change {
        Change::Rearm { .. } => {
            state
                .iter_mut()
                .filter(|s| s.threshold == threshold)
                .for_each(|s| s.armed = true);
            return;
        }
        Change::Mark { generation, .. } => *generation,
        Change::Fire(alert) => alert.generation,
    };
    state.retain(|s| s.threshold != threshold);
    state.push(ThresholdState {
        threshold,
        generation,
        armed: false,
        source_time: obs.source_time,
        budget: obs.budget,
    });
}

/// Decides what `obs` does to the thresholds of its period, given their `state`.
pub fn decide(obs: &SpendObservation, state: &[ThresholdState]) -> Vec<Change> {
    if obs.budget <= Decimal::ZERO {
        return Vec::new();
    }
    let mut changes = Vec::new();
    let mut crossed_unfired = Vec::new();
    for &t in obs.thresholds.as_slice() {
        let st = state.iter().find(|s| s.threshold == t);
        let active = st.is_some_and(|s| !s.armed);
        // spend / budget × 100 ≥ t, exact and without overflow for any decimals.
        let crossed = money::reached(obs.total_spend, obs.budget, t);
        match (crossed, st) {
            (true, _) if !active => crossed_unfired.push((t, st.map_or(1, |s| s.generation + 1))),
            (false, Some(s)) if active => {
                let raised_budget = obs.budget > s.budget;
                let newer = obs.source_time > s.source_time;
                if raised_budget || newer {
                    changes.push(Change::Rearm { threshold: t });
                }
            }
            _ => {}
        }
    }
    if let Some((&(top, generation), lower)) = crossed_unfired.split_last() {
        changes.extend(lower.iter().map(|&(threshold, generation)| Change::Mark {
            threshold,
            generation,
        }));
        changes.push(Change::Fire(Box::new(alert(obs, top, generation))));
    }
    changes
}

fn alert(obs: &SpendObservation, threshold: u32, generation: u32) -> BudgetAlert {
    let percentage = money::utilization_percent(obs.total_spend, obs.budget).unwrap_or_default();
    let severity = Severity::of(threshold);
    let message = if threshold >= 100 {
        format!(
            "Virtual key {} has exceeded its {} budget: {} of {} spent ({}%)",
            obs.key_id,
            obs.period.as_str(),
            obs.total_spend,
            obs.budget,
            percentage
        )
    } else {
        format!(
            "Virtual key {} has used {}% of its {} budget ({} of {})",
            obs.key_id,
            percentage,
            obs.period.as_str(),
            obs.total_spend,
            obs.budget
        )
    };
    BudgetAlert {
        event_id: alert_event_id(obs.key_id, obs.period_start, threshold, generation),
        key_id: obs.key_id,
        threshold,
        generation,
        alert_type: alert_type(threshold),
        severity,
        percentage,
        current_spend: obs.total_spend,
        budget: obs.budget,
        remaining: money::remaining(obs.budget, obs.total_spend),
        message,
        period_start: obs.period_start,
        period_end: period_end(obs.period, obs.period_start),
        source_event_id: obs.event_id.clone(),
        timestamp: obs.source_time,
    }
}

/// `budget-alert:{key}:{period start}:{threshold}:{generation}`; stable across retries.
pub fn alert_event_id(
    key: KeyId,
    period_start: DateTime<Utc>,
    threshold: u32,
    generation: u32,
) -> EventId {
    let id = format!(
        "budget-alert:{key}:{}:{threshold}:{generation}",
        format_time(period_start)
    );
    // Always valid: short, no control characters.
    EventId::parse(&id).unwrap_or_else(|_| unreachable!("alert ids are well-formed"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn obs(spend: &str, budget: &str, at: &str) -> SpendObservation {
        SpendObservation {
            key_id: KeyId::new(9).unwrap(),
            event_id: EventId::parse(&format!("ev-{spend}-{at}")).unwrap(),
            source_time: t(at),
            total_spend: d(spend),
            budget: d(budget),
            period: BudgetPeriod::Total,
            period_start: DateTime::UNIX_EPOCH,
            thresholds: Thresholds::default(),
        }
    }

    /// Applies the decided changes the way a store does, returning the alerts fired.
    fn apply(state: &mut Vec<ThresholdState>, o: &SpendObservation) -> Vec<BudgetAlert> {
        let mut fired = Vec::new();
        for c in decide(o, state) {
            super::apply(state, o, &c);
            if let Change::Fire(a) = c {
                fired.push(*a);
            }
        }
        fired
    }

    fn facts(budget: Option<&str>) -> SpendFacts {
        SpendFacts {
            key_id: KeyId::new(9).unwrap(),
            event_id: EventId::parse("ev-facts").unwrap(),
            source_time: t("2026-11-15T10:00:00Z"),
            total_spend: d("30"),
            budget: budget.map(d),
            period: None,
            period_start: None,
            amount: d("1"),
            model: None,
            provider: None,
            request_id: None,
        }
    }

    fn key_with(budget: Option<&str>, thresholds: Option<Vec<u32>>) -> VirtualKey {
        let mut k = VirtualKey::new(
            KeyId::new(9).unwrap(),
            crate::key::KeyHash::of_raw("condt_facts"),
            "facts",
        );
        k.budget = budget.map(d);
        k.budget_period = BudgetPeriod::Monthly;
        k.alert_thresholds = thresholds.map(|t| Thresholds::from_list(t).unwrap());
        k
    }

    #[test]
    fn an_observation_takes_the_event_budget_over_the_key_and_the_key_period() {
        let key = key_with(Some("100"), Some(vec![10, 20]));
        let o = facts(Some("40"))
            .observation(Some(&key), &Thresholds::default())
            .unwrap();
        assert_eq!(o.budget, d("40"));
        assert_eq!(o.period, BudgetPeriod::Monthly);
        assert_eq!(o.period_start, t("2026-11-01T00:00:00Z"));
        assert_eq!(o.thresholds.as_slice(), &[10, 20]);
        let o = facts(None)
            .observation(Some(&key), &Thresholds::default())
            .unwrap();
        assert_eq!(
            o.budget,
            d("100"),
            "the key's budget when the event has none"
        );
    }

    #[test]
    fn no_positive_budget_means_no_observation_and_no_key_thresholds_mean_the_defaults() {
        let defaults = Thresholds::parse("60,80").unwrap();
        assert!(facts(None).observation(None, &defaults).is_none());
        assert!(facts(Some("0")).observation(None, &defaults).is_none());
        let key = key_with(None, None);
        assert!(facts(None).observation(Some(&key), &defaults).is_none());
        let o = facts(Some("50"))
            .observation(Some(&key), &defaults)
            .unwrap();
        assert_eq!(o.thresholds, defaults);
        let o = facts(Some("50")).observation(None, &defaults).unwrap();
        assert_eq!(
            o.period,
            BudgetPeriod::Total,
            "no key, no event period: total"
        );
    }

    #[test]
    fn exactly_on_a_threshold_fires() {
        let mut st = vec![];
        let a = apply(&mut st, &obs("50", "100", "2026-01-01T00:00:00Z"));
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].threshold, 50);
        assert_eq!(a[0].alert_type, "budget_50_percent");
        assert_eq!(a[0].severity, Severity::Info);
        assert_eq!(a[0].percentage.to_string(), "50");
        assert!(apply(&mut st, &obs("49.99", "100", "2025-12-31T00:00:00Z")).is_empty());
    }

    #[test]
    fn a_jump_fires_only_the_highest_and_marks_the_rest() {
        let mut st = vec![];
        let a = apply(&mut st, &obs("95", "100", "2026-01-01T00:00:00Z"));
        assert_eq!(a.iter().map(|a| a.threshold).collect::<Vec<_>>(), vec![90]);
        assert_eq!(a[0].severity, Severity::Critical);
        assert_eq!(st.len(), 3);
        let b = apply(&mut st, &obs("130", "100", "2026-01-01T00:01:00Z"));
        assert_eq!(b[0].alert_type, "budget_exceeded");
        assert_eq!(b[0].remaining, Decimal::ZERO);
        assert_eq!(b[0].percentage.to_string(), "130");
    }

    #[test]
    fn no_budget_or_zero_budget_never_fires() {
        assert!(decide(&obs("10", "0", "2026-01-01T00:00:00Z"), &[]).is_empty());
        assert!(decide(&obs("10", "-5", "2026-01-01T00:00:00Z"), &[]).is_empty());
    }

    #[test]
    fn redelivery_and_late_events_do_not_fire_again() {
        let mut st = vec![];
        let o = obs("80", "100", "2026-01-01T00:00:10Z");
        assert_eq!(apply(&mut st, &o).len(), 1);
        assert!(apply(&mut st, &o).is_empty(), "same message again");
        // An older event with lower spend arrives late: no re-arm.
        assert!(apply(&mut st, &obs("60", "100", "2026-01-01T00:00:05Z")).is_empty());
        assert!(apply(&mut st, &obs("80", "100", "2026-01-01T00:00:11Z")).is_empty());
    }

    #[test]
    fn a_refund_newer_than_the_alert_rearms() {
        let mut st = vec![];
        apply(&mut st, &obs("80", "100", "2026-01-01T00:00:10Z"));
        assert!(apply(&mut st, &obs("70", "100", "2026-01-01T00:00:20Z")).is_empty());
        let again = apply(&mut st, &obs("76", "100", "2026-01-01T00:00:30Z"));
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].generation, 2);
        assert_ne!(
            again[0].event_id,
            alert_event_id(KeyId::new(9).unwrap(), DateTime::UNIX_EPOCH, 75, 1)
        );
    }

    #[test]
    fn a_raised_budget_rearms_even_for_an_older_event() {
        let mut st = vec![];
        apply(&mut st, &obs("80", "100", "2026-01-01T00:00:10Z"));
        let changes = decide(&obs("80", "200", "2026-01-01T00:00:05Z"), &st);
        // 40% of the new budget: both thresholds passed so far are armed again.
        assert_eq!(
            changes,
            vec![
                Change::Rearm { threshold: 50 },
                Change::Rearm { threshold: 75 }
            ]
        );
    }

    #[test]
    fn a_new_period_is_a_fresh_start() {
        let mut o = obs("60", "100", "2026-03-15T12:00:00Z");
        o.period = BudgetPeriod::Monthly;
        o.period_start = period_start(o.period, o.source_time);
        assert_eq!(format_time(o.period_start), "2026-03-01T00:00:00Z");
        assert_eq!(
            period_end(o.period, o.period_start).map(format_time),
            Some("2026-04-01T00:00:00Z".into())
        );
        let a = decide(&o, &[]);
        // State is per period: the store passes no state for a period it has not seen.
        assert!(matches!(&a[..], [Change::Fire(al)] if al.threshold == 50));
        let march = alert_event_id(o.key_id, o.period_start, 50, 1);
        let april = alert_event_id(
            o.key_id,
            period_start(BudgetPeriod::Monthly, t("2026-04-02T00:00:00Z")),
            50,
            1,
        );
        assert_ne!(march, april);
        assert_eq!(
            format_time(period_start(BudgetPeriod::Daily, t("2026-12-31T23:59:59Z"))),
            "2026-12-31T00:00:00Z"
        );
        assert_eq!(
            period_end(BudgetPeriod::Monthly, t("2026-12-01T00:00:00Z")).map(format_time),
            Some("2027-01-01T00:00:00Z".into())
        );
    }

    #[test]
    fn many_decimal_places_compare_exactly() {
        let below = obs("74.999999999999999999", "100", "2026-01-01T00:00:00Z");
        let a = decide(&below, &[]);
        assert!(matches!(&a[..], [Change::Fire(al)] if al.threshold == 50));
        // Rounded for display only.
        if let [Change::Fire(al)] = &a[..] {
            assert_eq!(al.percentage.to_string(), "75");
        }
        let at = obs(
            "0.0000000000000000075",
            "0.00000000000000001",
            "2026-01-01T00:00:00Z",
        );
        assert!(
            matches!(&decide(&at, &[])[..], [Change::Mark { .. }, Change::Fire(al)] if al.threshold == 75)
        );
    }

    #[test]
    fn per_key_thresholds_and_severity() {
        let mut o = obs("85", "100", "2026-01-01T00:00:00Z");
        o.thresholds = Thresholds::parse("80, 20").unwrap();
        assert_eq!(o.thresholds.as_slice(), &[20, 80]);
        let a = decide(&o, &[]);
        assert!(
            matches!(&a[..], [Change::Mark { threshold: 20, .. }, Change::Fire(al)] if al.threshold == 80 && al.severity == Severity::Warning)
        );
        assert!(Thresholds::parse("0").is_err());
        assert!(Thresholds::parse("50,abc").is_err());
        assert!(Thresholds::parse("").is_err());
    }
}
