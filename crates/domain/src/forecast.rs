//! Spend intelligence (docs/events.md, "Spend intelligence"), pure: burn rate, trend, forecast
//! and spike detection for one key's budget period, from the SpendUpdated events' running totals
//! and source times only. The store keeps a [`RateState`] per (key, period) and applies
//! [`observe`] under the key's lock; the same events give the same state and the same alerts in
//! whatever process, and an event that is not newer than the state changes nothing.
//!
//! Long because: one purpose, the state and rules of the burn rate (rates, trend, forecast,
//! spike, their alerts' contents), which share the state's private helpers.
use crate::budget::{SpendFacts, period_end};
use crate::fields::format_time;
use crate::ids::{EventId, KeyId};
use crate::key::BudgetPeriod;
use crate::key::VirtualKey;
use crate::money;
use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use std::time::Duration;

/// The node's settings (`HERALD_FORECAST_*`, `HERALD_SPIKE_*`, `HERALD_SPEND_BASELINE_WINDOW`,
/// `HERALD_TREND_TOLERANCE_PERCENT`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// The burn rate's window: the rate on SpendUpdate, the trend and the forecast.
    pub window: Duration,
    /// The spike alert's "last window".
    pub spike_window: Duration,
    /// The baseline the trend and spikes compare with.
    pub baseline_window: Duration,
    pub min_events: u32,
    pub min_span: Duration,
    pub trend_tolerance_percent: u32,
    /// k: a spike is the spike window's rate above k × baseline.
    pub spike_factor: Decimal,
}

impl Default for RateConfig {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(15 * 60),
            spike_window: Duration::from_secs(5 * 60),
            baseline_window: Duration::from_secs(60 * 60),
            min_events: 5,
            min_span: Duration::from_secs(5 * 60),
            trend_tolerance_percent: 25,
            spike_factor: Decimal::from(3),
        }
    }
}

/// A forecast re-arms when the rate falls under this share of the rate that would spend the
/// budget left exactly by the period's end.
const REARM_SHARE: f64 = 0.8;
/// Projections further away than this are "never" (and cannot overflow a time).
const MAX_PROJECTION_SECS: f64 = 10.0 * 366.0 * 86_400.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trend {
    Up,
    Down,
    Stable,
}

impl Trend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Down => "down",
            Self::Stable => "stable",
        }
    }

    pub fn parse(s: &str) -> Self {
        match s {
            "up" => Self::Up,
            "down" => Self::Down,
            _ => Self::Stable,
        }
    }
}

/// What the store keeps per (key, period).
#[derive(Debug, Clone, PartialEq)]
pub struct RateState {
    pub first_time: DateTime<Utc>,
    pub last_time: DateTime<Utc>,
    pub last_total: Decimal,
    /// Events taken (newer than the state when they came).
    pub events: u32,
    /// Exponentially decayed sums of spend at `last_time`, one per window.
    pub spike_sum: f64,
    pub window_sum: f64,
    pub baseline_sum: f64,
    pub forecast_generation: u32,
    /// Fired and not re-armed.
    pub forecast_active: bool,
    /// The budget in force when the forecast fired.
    pub forecast_budget: Option<Decimal>,
    pub spike_generation: u32,
    pub spike_active: bool,
}

/// One SpendUpdated as the rate sees it, with its key's budget and period resolved.
#[derive(Debug, Clone)]
pub struct RateInput {
    pub key_id: KeyId,
    pub event_id: EventId,
    pub source_time: DateTime<Utc>,
    pub total_spend: Decimal,
    pub amount: Decimal,
    /// A positive budget, if one applies.
    pub budget: Option<Decimal>,
    pub period: BudgetPeriod,
    pub period_start: DateTime<Utc>,
    /// The key has spike alerts on.
    pub spike_alerts: bool,
}

impl RateInput {
    /// What the burn rate of the key's period takes from `facts`.
    pub fn of(facts: &SpendFacts, key: Option<&VirtualKey>) -> Self {
        let (period, period_start) = facts.period(key);
        Self {
            key_id: facts.key_id,
            event_id: facts.event_id.clone(),
            source_time: facts.source_time,
            total_spend: facts.total_spend,
            amount: facts.amount,
            budget: facts.budget(key).filter(|b| *b > Decimal::ZERO),
            period,
            period_start,
            spike_alerts: key.is_some_and(|k| k.spike_alerts),
        }
    }
}

/// Where the budget runs out at the current rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Projection {
    pub exhaustion: DateTime<Utc>,
    pub exceeds_budget: bool,
}

/// The rate as of the state's latest event: what SpendUpdate and the summary show.
#[derive(Debug, Clone, PartialEq)]
pub struct RateView {
    pub burn_rate_per_hour: Decimal,
    pub trend: Trend,
    pub as_of: DateTime<Utc>,
    pub projection: Option<Projection>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SpendAlertKind {
    Forecast {
        projected_exhaustion: DateTime<Utc>,
        rate_per_hour: Decimal,
        window_minutes: u64,
    },
    Spike {
        rate_per_hour: Decimal,
        baseline_per_hour: Decimal,
        spike_factor: Decimal,
        window_minutes: u64,
        baseline_minutes: u64,
    },
}

/// A forecast or spike alert, fully computed; its id is derived from (key, period, kind,
/// generation), so every attempt to publish it is the same event.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendAlert {
    pub event_id: EventId,
    pub key_id: KeyId,
    pub generation: u32,
    pub kind: SpendAlertKind,
    pub current_spend: Decimal,
    pub budget: Option<Decimal>,
    pub period_start: DateTime<Utc>,
    pub period_end: Option<DateTime<Utc>>,
    pub source_event_id: EventId,
    pub timestamp: DateTime<Utc>,
    pub message: String,
}

impl SpendAlert {
    /// `forecast` or `spike`: the store's `kind` and the metric's label.
    pub fn label(&self) -> &'static str {
        match self.kind {
            SpendAlertKind::Forecast { .. } => "forecast",
            SpendAlertKind::Spike { .. } => "spike",
        }
    }

    pub fn alert_type(&self) -> &'static str {
        match self.kind {
            SpendAlertKind::Forecast { .. } => "budget_forecast_exceeded",
            SpendAlertKind::Spike { .. } => "spend_spike",
        }
    }
}

/// What one event does to its period's rate state.
#[derive(Debug, Clone, PartialEq)]
pub struct RateStep {
    /// The state to store (equal to the old one when `changed` is false).
    pub state: RateState,
    /// The event was newer than the state and was taken.
    pub changed: bool,
    pub view: RateView,
    pub alerts: Vec<SpendAlert>,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64().max(1.0)
}

fn to_f64(d: Decimal) -> f64 {
    d.to_f64().unwrap_or(0.0)
}

/// A rate per hour as written: at most 6 decimal places, no trailing zeros, never negative.
pub fn per_hour(rate_per_sec: f64) -> Decimal {
    let v = rate_per_sec * 3600.0;
    if !v.is_finite() || v <= 0.0 {
        return Decimal::ZERO;
    }
    Decimal::try_from(v)
        .map(|d| d.round_dp(6).normalize())
        .unwrap_or(Decimal::ZERO)
}

impl RateState {
    fn first(input: &RateInput) -> Self {
        let added = to_f64(input.amount).max(0.0);
        Self {
            first_time: input.source_time,
            last_time: input.source_time,
            last_total: input.total_spend,
            events: 1,
            spike_sum: added,
            window_sum: added,
            baseline_sum: added,
            forecast_generation: 0,
            forecast_active: false,
            forecast_budget: None,
            spike_generation: 0,
            spike_active: false,
        }
    }

    /// Spend per second over a window from its decayed sum, corrected for a period younger
    /// than the window (docs/events.md, "Method").
    fn rate(&self, sum: f64, window: Duration, cfg: &RateConfig) -> f64 {
        let tau = secs(window);
        let age = (self.last_time - self.first_time)
            .to_std()
            .unwrap_or_default()
            .max(cfg.min_span);
        let denominator = tau * (1.0 - (-secs(age) / tau).exp());
        if denominator > 0.0 {
            sum / denominator
        } else {
            0.0
        }
    }

    fn evidence(&self, cfg: &RateConfig) -> bool {
        self.events >= cfg.min_events
            && (self.last_time - self.first_time)
                .to_std()
                .is_ok_and(|age| age >= cfg.min_span)
    }

    fn trend(&self, cfg: &RateConfig) -> Trend {
        if !self.evidence(cfg) {
            return Trend::Stable;
        }
        let rate = self.rate(self.window_sum, cfg.window, cfg);
        let baseline = self.rate(self.baseline_sum, cfg.baseline_window, cfg);
        let tolerance = 1.0 + f64::from(cfg.trend_tolerance_percent) / 100.0;
        if baseline <= 0.0 {
            return if rate > 0.0 { Trend::Up } else { Trend::Stable };
        }
        let ratio = rate / baseline;
        if ratio > tolerance {
            Trend::Up
        } else if ratio < 1.0 / tolerance {
            Trend::Down
        } else {
            Trend::Stable
        }
    }

    /// When `budget` runs out at the window's rate, if it is positive, some is left, the
    /// period has an end and there is evidence.
    fn projection(&self, input: &RateInput, cfg: &RateConfig) -> Option<(Projection, f64)> {
        let budget = input.budget.filter(|b| *b > Decimal::ZERO)?;
        let end = period_end(input.period, input.period_start)?;
        if !self.evidence(cfg) {
            return None;
        }
        let left = to_f64(budget - self.last_total);
        let rate = self.rate(self.window_sum, cfg.window, cfg);
        if left <= 0.0 || rate <= 0.0 {
            return None;
        }
        let to_end = (end - self.last_time).num_milliseconds() as f64 / 1000.0;
        let break_even = if to_end > 0.0 { left / to_end } else { 0.0 };
        let away = left / rate;
        let exhaustion = if away < MAX_PROJECTION_SECS {
            self.last_time + chrono::Duration::seconds(away.round() as i64)
        } else {
            self.last_time + chrono::Duration::seconds(MAX_PROJECTION_SECS as i64)
        };
        Some((
            Projection {
                exhaustion,
                exceeds_budget: exhaustion < end,
            },
            rate / break_even.max(f64::MIN_POSITIVE),
        ))
    }

    pub fn view(&self, input: &RateInput, cfg: &RateConfig) -> RateView {
        RateView {
            burn_rate_per_hour: per_hour(self.rate(self.window_sum, cfg.window, cfg)),
            trend: self.trend(cfg),
            as_of: self.last_time,
            projection: self.projection(input, cfg).map(|(p, _)| p),
        }
    }

    /// Takes `input` if it is newer than the state (source time; at the same time, a larger
    /// total): decays the sums to its time and adds what the total grew by.
    fn take(&self, input: &RateInput, cfg: &RateConfig) -> Option<Self> {
        let t = input.source_time;
        let newer =
            t > self.last_time || (t == self.last_time && input.total_spend > self.last_total);
        if !newer {
            return None;
        }
        let dt = (t - self.last_time).num_milliseconds() as f64 / 1000.0;
        let added = to_f64((input.total_spend - self.last_total).max(Decimal::ZERO));
        let decay = |sum: f64, window: Duration| sum * (-dt / secs(window)).exp() + added;
        let mut next = self.clone();
        next.spike_sum = decay(self.spike_sum, cfg.spike_window);
        next.window_sum = decay(self.window_sum, cfg.window);
        next.baseline_sum = decay(self.baseline_sum, cfg.baseline_window);
        next.last_time = t;
        next.last_total = input.total_spend;
        next.events = self.events.saturating_add(1);
        Some(next)
    }
}

/// Applies one SpendUpdated to its period's state (`None`: the period has none yet).
pub fn observe(prev: Option<&RateState>, input: &RateInput, cfg: &RateConfig) -> RateStep {
    let next = match prev {
        None => RateState::first(input),
        Some(s) => match s.take(input, cfg) {
            Some(next) => next,
            None => {
                return RateStep {
                    view: s.view(input, cfg),
                    state: s.clone(),
                    changed: false,
                    alerts: Vec::new(),
                };
            }
        },
    };
    let mut state = next;
    let mut alerts = Vec::new();
    forecast(&mut state, input, cfg, &mut alerts);
    spike(&mut state, input, cfg, &mut alerts);
    RateStep {
        view: state.view(input, cfg),
        state,
        changed: true,
        alerts,
    }
}

fn forecast(state: &mut RateState, input: &RateInput, cfg: &RateConfig, out: &mut Vec<SpendAlert>) {
    let projection = state.projection(input, cfg);
    if state.forecast_active {
        let raised = match (input.budget, state.forecast_budget) {
            (Some(now), Some(then)) => now > then,
            _ => false,
        };
        let exceeds = projection.is_some_and(|(p, _)| p.exceeds_budget);
        let slowed = projection.is_some_and(|(_, share)| share < REARM_SHARE);
        // No projection with budget left means no rate or no evidence: nothing to re-arm on.
        if slowed || (raised && !exceeds) {
            state.forecast_active = false;
        }
        return;
    }
    let Some((p, _)) = projection.filter(|(p, _)| p.exceeds_budget) else {
        return;
    };
    state.forecast_active = true;
    state.forecast_generation = state.forecast_generation.saturating_add(1);
    state.forecast_budget = input.budget;
    let rate = per_hour(state.rate(state.window_sum, cfg.window, cfg));
    let budget = input.budget.unwrap_or_default();
    let message = format!(
        "Virtual key {} will exhaust its {} budget at {} at {} per hour ({} of {} spent)",
        input.key_id,
        input.period.as_str(),
        format_time(p.exhaustion),
        rate,
        input.total_spend,
        budget
    );
    out.push(alert(
        input,
        "budget-forecast",
        state.forecast_generation,
        SpendAlertKind::Forecast {
            projected_exhaustion: p.exhaustion,
            rate_per_hour: rate,
            window_minutes: cfg.window.as_secs() / 60,
        },
        message,
    ));
}

fn spike(state: &mut RateState, input: &RateInput, cfg: &RateConfig, out: &mut Vec<SpendAlert>) {
    if !input.spike_alerts || !state.evidence(cfg) {
        return;
    }
    let baseline = state.rate(state.baseline_sum, cfg.baseline_window, cfg);
    if baseline <= 0.0 {
        return;
    }
    let rate = state.rate(state.spike_sum, cfg.spike_window, cfg);
    let k = to_f64(cfg.spike_factor);
    if state.spike_active {
        if rate < (k / 2.0).max(1.0) * baseline {
            state.spike_active = false;
        }
        return;
    }
    if rate <= k * baseline {
        return;
    }
    state.spike_active = true;
    state.spike_generation = state.spike_generation.saturating_add(1);
    let (rate, baseline) = (per_hour(rate), per_hour(baseline));
    let window_minutes = cfg.spike_window.as_secs() / 60;
    let message = format!(
        "Virtual key {} is spending {} per hour over the last {} minutes, more than {} times its baseline of {} per hour",
        input.key_id, rate, window_minutes, cfg.spike_factor, baseline
    );
    out.push(alert(
        input,
        "spend-spike",
        state.spike_generation,
        SpendAlertKind::Spike {
            rate_per_hour: rate,
            baseline_per_hour: baseline,
            spike_factor: cfg.spike_factor,
            window_minutes,
            baseline_minutes: cfg.baseline_window.as_secs() / 60,
        },
        message,
    ));
}

fn alert(
    input: &RateInput,
    prefix: &str,
    generation: u32,
    kind: SpendAlertKind,
    message: String,
) -> SpendAlert {
    let id = format!(
        "{prefix}:{}:{}:{generation}",
        input.key_id,
        format_time(input.period_start)
    );
    SpendAlert {
        // Always valid: short, no control characters.
        event_id: EventId::parse(&id).unwrap_or_else(|_| input.event_id.clone()),
        key_id: input.key_id,
        generation,
        kind,
        current_spend: input.total_spend,
        budget: input.budget,
        period_start: input.period_start,
        period_end: period_end(input.period, input.period_start),
        source_event_id: input.event_id.clone(),
        timestamp: input.source_time,
        message,
    }
}

/// `budget − spend` and the utilization, for an alert with a budget.
pub fn budget_figures(spend: Decimal, budget: Option<Decimal>) -> Option<(Decimal, Decimal)> {
    let b = budget.filter(|b| *b > Decimal::ZERO)?;
    Some((
        money::remaining(b, spend),
        money::utilization_percent(spend, b).unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    fn t0() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-10T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    /// Feeds a curve: (minutes after midnight, total) with a daily budget of `budget`.
    struct Run {
        state: Option<RateState>,
        cfg: RateConfig,
        budget: Option<Decimal>,
        spikes: bool,
        alerts: Vec<SpendAlert>,
        last: Option<RateView>,
    }

    impl Run {
        fn new(budget: Option<&str>, spikes: bool) -> Self {
            Self {
                state: None,
                cfg: RateConfig::default(),
                budget: budget.map(d),
                spikes,
                alerts: vec![],
                last: None,
            }
        }

        fn at(&mut self, id: &str, minute: f64, total: Decimal, amount: Decimal) -> bool {
            let input = RateInput {
                key_id: KeyId::new(7).unwrap(),
                event_id: EventId::parse(id).unwrap(),
                source_time: t0() + chrono::Duration::milliseconds((minute * 60_000.0) as i64),
                total_spend: total,
                amount,
                budget: self.budget,
                period: BudgetPeriod::Daily,
                period_start: t0(),
                spike_alerts: self.spikes,
            };
            let step = observe(self.state.as_ref(), &input, &self.cfg);
            self.state = Some(step.state);
            self.alerts.extend(step.alerts);
            self.last = Some(step.view);
            step.changed
        }

        /// `n` events `every` minutes apart from `from`, each adding `each`.
        fn steady(&mut self, name: &str, from: f64, every: f64, n: u32, each: &str) {
            for i in 0..n {
                let total = self.state.as_ref().map_or(Decimal::ZERO, |s| s.last_total) + d(each);
                self.at(
                    &format!("{name}-{i}"),
                    from + every * f64::from(i),
                    total,
                    d(each),
                );
            }
        }

        fn kinds(&self) -> Vec<String> {
            self.alerts
                .iter()
                .map(|a| format!("{}#{}", a.label(), a.generation))
                .collect()
        }
    }

    #[test]
    fn a_steady_spend_reads_its_rate_from_the_start_and_is_stable() {
        let mut r = Run::new(None, false);
        // 0.5 every minute = 30 per hour.
        r.steady("s", 0.0, 1.0, 60, "0.5");
        let v = r.last.clone().unwrap();
        let rate = to_f64(v.burn_rate_per_hour);
        assert!((rate - 30.0).abs() < 1.5, "{rate}");
        assert_eq!(v.trend, Trend::Stable);
        assert!(r.alerts.is_empty());
    }

    #[test]
    fn no_trend_and_no_forecast_before_the_minimum_evidence() {
        let mut r = Run::new(Some("1"), false);
        // Four events in two minutes would exhaust 1.00 at once: not enough evidence.
        r.steady("s", 0.0, 0.5, 4, "0.2");
        assert_eq!(r.last.clone().unwrap().trend, Trend::Stable);
        assert!(r.last.clone().unwrap().projection.is_none());
        assert!(r.alerts.is_empty());
    }

    #[test]
    fn a_redelivery_or_a_late_event_changes_nothing() {
        let mut r = Run::new(Some("100"), false);
        r.steady("s", 0.0, 1.0, 10, "0.1");
        let before = r.state.clone();
        assert!(
            !r.at("s-9", 9.0, d("1.0"), d("0.1")),
            "the same event again"
        );
        assert!(!r.at("late", 3.0, d("0.4"), d("0.1")), "an older event");
        assert_eq!(r.state, before);
        // At the same time a larger total is new spend.
        assert!(r.at("same-time", 9.0, d("1.1"), d("0.1")));
    }

    #[test]
    fn an_accelerating_spend_fires_the_forecast_once_with_its_projection() {
        let mut r = Run::new(Some("100"), false);
        // 6 per hour for an hour: 24 h × 6 = 144 > 100 but 6 left... total 6 at 01:00,
        // projected at (100-6)/6 h = 15.7 h after 01:00, before midnight: fires.
        // Start slower: 2 per hour for 2 hours (projection after the day's end), then 30/h.
        r.steady("slow", 0.0, 6.0, 20, "0.2");
        assert!(r.alerts.is_empty(), "{:?}", r.kinds());
        assert_eq!(r.last.clone().unwrap().trend, Trend::Stable);
        r.steady("fast", 120.0, 1.0, 60, "0.5");
        assert_eq!(r.kinds(), ["forecast#1"]);
        let a = &r.alerts[0];
        assert_eq!(
            a.event_id.as_str(),
            "budget-forecast:7:2026-03-10T00:00:00Z:1"
        );
        assert_eq!(a.alert_type(), "budget_forecast_exceeded");
        let SpendAlertKind::Forecast {
            projected_exhaustion,
            rate_per_hour,
            window_minutes,
        } = a.kind
        else {
            panic!("{a:?}")
        };
        assert_eq!(window_minutes, 15);
        assert!(projected_exhaustion < t0() + chrono::Duration::days(1));
        assert!(projected_exhaustion > a.timestamp);
        // Fires as soon as the rate passes the one that spends the 96 left in the 22 h left.
        assert!(to_f64(rate_per_hour) > 96.0 / 22.0, "{rate_per_hour}");
        assert_eq!(r.last.clone().unwrap().trend, Trend::Up);
    }

    #[test]
    fn a_pause_rearms_the_forecast_and_a_new_burst_fires_the_next_generation() {
        let mut r = Run::new(Some("100"), false);
        r.steady("fast", 0.0, 1.0, 30, "0.5");
        assert_eq!(r.kinds(), ["forecast#1"]);
        // Three hours of nothing, then a trickle: the rate falls, the forecast re-arms.
        r.steady("trickle", 210.0, 10.0, 6, "0.01");
        assert!(!r.state.as_ref().unwrap().forecast_active);
        assert_eq!(r.last.clone().unwrap().trend, Trend::Down);
        r.steady("again", 270.0, 1.0, 40, "0.6");
        assert_eq!(r.kinds(), ["forecast#1", "forecast#2"]);
    }

    #[test]
    fn a_raised_budget_rearms_when_the_projection_moves_past_the_end() {
        let mut r = Run::new(Some("100"), false);
        r.steady("fast", 0.0, 1.0, 30, "0.5");
        assert_eq!(r.kinds(), ["forecast#1"]);
        r.budget = Some(d("10000"));
        r.steady("more", 30.0, 1.0, 5, "0.5");
        assert!(!r.state.as_ref().unwrap().forecast_active);
        r.budget = Some(d("100"));
        r.steady("back", 35.0, 1.0, 2, "0.5");
        assert_eq!(r.kinds(), ["forecast#1", "forecast#2"]);
    }

    #[test]
    fn a_spike_fires_once_only_for_keys_that_asked_and_rearms_when_it_passes() {
        for spikes in [false, true] {
            let mut r = Run::new(None, spikes);
            r.steady("base", 0.0, 1.0, 120, "0.05");
            r.steady("spike", 120.0, 0.25, 40, "0.5");
            r.steady("calm", 130.0, 1.0, 60, "0.05");
            if spikes {
                assert_eq!(r.kinds(), ["spike#1"]);
                assert!(!r.state.as_ref().unwrap().spike_active, "re-armed");
                let SpendAlertKind::Spike {
                    rate_per_hour,
                    baseline_per_hour,
                    ..
                } = r.alerts[0].kind
                else {
                    panic!()
                };
                assert!(rate_per_hour > Decimal::from(3) * baseline_per_hour);
                assert_eq!(
                    r.alerts[0].event_id.as_str(),
                    "spend-spike:7:2026-03-10T00:00:00Z:1"
                );
            } else {
                assert!(r.alerts.is_empty());
            }
        }
    }

    #[test]
    fn the_first_event_of_a_period_counts_its_amount_and_totals_falling_add_nothing() {
        let mut r = Run::new(None, false);
        r.at("a", 0.0, d("500"), d("2"));
        assert_eq!(r.state.as_ref().unwrap().window_sum, 2.0);
        r.at("b", 1.0, d("400"), d("1"));
        assert!(r.state.as_ref().unwrap().window_sum <= 2.0);
        assert_eq!(r.state.as_ref().unwrap().last_total, d("400"));
    }

    #[test]
    fn rates_are_written_with_six_places_at_most() {
        assert_eq!(per_hour(1.0 / 3600.0 / 3.0).to_string(), "0.333333");
        assert_eq!(per_hour(f64::NAN), Decimal::ZERO);
        assert_eq!(per_hour(-1.0), Decimal::ZERO);
        assert_eq!(Trend::parse("up"), Trend::Up);
    }
}
