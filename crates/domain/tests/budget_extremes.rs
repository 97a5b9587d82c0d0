//! Property test (issue 15, item 3): the budget engine driven with extreme decimals, from a
//! seeded generator (no proptest dependency). Every case must end in a correct decision,
//! checked against an independent exact comparison on big integers, or in a refusal naming the
//! limit; none may panic. A failing case prints its seed and inputs.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, TimeZone, Utc};
use herald_domain::budget::{self, Change, SpendObservation, ThresholdState};
use herald_domain::money::{self, Budget, MAX_BUDGET};
use herald_domain::thresholds::Thresholds;
use herald_domain::{BudgetPeriod, EventId, InboundKind, KeyId};
use rust_decimal::Decimal;
use serde_json::json;

/// xorshift64*: small, seeded, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A decimal biased towards the edges: the representable extremes, the bounds and their
/// neighbours, tiny and huge values, and random mantissas at every scale.
fn extreme(r: &mut Rng) -> Decimal {
    let tiny = Decimal::new(1, 28);
    let fixed = [
        Decimal::MAX,
        Decimal::MIN,
        Decimal::ZERO,
        Decimal::ONE,
        tiny,
        -tiny,
        MAX_BUDGET,
        MAX_BUDGET + tiny * Decimal::from(10u64.pow(12)),
        Decimal::from_scientific("1e28").unwrap(),
        Decimal::from_scientific("7.9e26").unwrap(),
        Decimal::from_scientific("7.9e25").unwrap(),
        Decimal::MAX / Decimal::ONE_HUNDRED,
        Decimal::MAX / Decimal::from(1000),
    ];
    match r.below(3) {
        0 => fixed[r.below(fixed.len() as u64) as usize],
        _ => {
            let (lo, mid, hi) = (r.next() as u32, r.next() as u32, r.next() as u32);
            // Mantissas of every width, not just 96-bit ones.
            let hi = hi >> r.below(33).min(31);
            let mid = if r.below(3) == 0 { 0 } else { mid };
            Decimal::from_parts(lo, mid, hi, r.below(4) == 0, r.below(29) as u32)
        }
    }
}

/// Little-endian base-2^32 natural number: just enough to compare exact products.
#[derive(PartialEq, Eq)]
struct Big(Vec<u32>);

impl Big {
    fn of(d: Decimal) -> Self {
        let m = d.mantissa().unsigned_abs();
        Big(vec![
            m as u32,
            (m >> 32) as u32,
            (m >> 64) as u32,
            (m >> 96) as u32,
        ])
    }
    fn times(mut self, k: u32) -> Self {
        let mut carry = 0u64;
        for limb in &mut self.0 {
            let v = u64::from(*limb) * u64::from(k) + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry > 0 {
            self.0.push(carry as u32);
        }
        self
    }
    fn times_pow10(self, n: u32) -> Self {
        (0..n).fold(self, |b, _| b.times(10))
    }
    fn cmp(&self, other: &Big) -> std::cmp::Ordering {
        let len = self.0.len().max(other.0.len());
        let at = |b: &Big, i: usize| b.0.get(i).copied().unwrap_or(0);
        (0..len)
            .rev()
            .map(|i| at(self, i).cmp(&at(other, i)))
            .find(|o| o.is_ne())
            .unwrap_or(std::cmp::Ordering::Equal)
    }
}

/// spend × 100 ≥ t × budget, exactly, for a positive budget: both sides scaled by
/// 10^(scale of spend + scale of budget) to integers.
fn reference_reached(spend: Decimal, budget: Decimal, t: u32) -> bool {
    if spend <= Decimal::ZERO {
        return false;
    }
    let lhs = Big::of(spend).times(100).times_pow10(budget.scale());
    let rhs = Big::of(budget).times(t).times_pow10(spend.scale());
    lhs.cmp(&rhs).is_ge()
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap()
}

fn case(r: &mut Rng) -> (SpendObservation, Vec<ThresholdState>) {
    let n = 1 + r.below(4) as usize;
    let list: Vec<u32> = (0..n).map(|_| 1 + r.below(1000) as u32).collect();
    let thresholds = Thresholds::from_list(list).unwrap();
    let mut state = Vec::new();
    for &t in thresholds.as_slice() {
        if r.below(3) == 0 {
            state.push(ThresholdState {
                threshold: t,
                generation: 1 + r.below(3) as u32,
                armed: r.below(2) == 0,
                source_time: at(1_700_000_000 + r.below(100) as i64),
                budget: extreme(r),
            });
        }
    }
    let obs = SpendObservation {
        key_id: KeyId::new(7).unwrap(),
        event_id: EventId::parse("ev-extreme").unwrap(),
        source_time: at(1_700_000_000 + r.below(100) as i64),
        total_spend: extreme(r),
        budget: extreme(r),
        period: BudgetPeriod::Monthly,
        period_start: at(1_698_796_800),
        thresholds,
    };
    (obs, state)
}

/// What `decide` must do, from the reference comparison alone.
fn check_decision(obs: &SpendObservation, state: &[ThresholdState], changes: &[Change]) {
    if obs.budget <= Decimal::ZERO {
        assert!(changes.is_empty(), "no positive budget, no change");
        return;
    }
    let active = |t: u32| state.iter().any(|s| s.threshold == t && !s.armed);
    let due: Vec<u32> = obs
        .thresholds
        .as_slice()
        .iter()
        .copied()
        .filter(|&t| reference_reached(obs.total_spend, obs.budget, t) && !active(t))
        .collect();
    let recorded: Vec<u32> = changes
        .iter()
        .filter(|c| !matches!(c, Change::Rearm { .. }))
        .map(Change::threshold)
        .collect();
    assert_eq!(recorded, due, "fired and marked = crossed and not active");
    let fired: Vec<&budget::BudgetAlert> = changes
        .iter()
        .filter_map(|c| match c {
            Change::Fire(a) => Some(a.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(fired.len(), usize::from(!due.is_empty()));
    if let Some(a) = fired.first() {
        assert_eq!(Some(&a.threshold), due.last(), "the highest crossed fires");
        assert!(a.remaining >= Decimal::ZERO);
    }
    for c in changes {
        if let Change::Rearm { threshold } = c {
            assert!(active(*threshold));
            assert!(!reference_reached(obs.total_spend, obs.budget, *threshold));
        }
    }
}

#[test]
fn the_budget_engine_decides_correctly_or_refuses_for_extreme_decimals() {
    let seed = std::env::var("HERALD_PROPTEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x15_1e28_u64);
    let mut r = Rng(seed);
    let (mut refused, mut fired) = (0, 0);
    for i in 0..20_000 {
        let (obs, state) = case(&mut r);
        let what = format!(
            "seed {seed:#x} case {i}: spend {} budget {} thresholds {:?}",
            obs.total_spend,
            obs.budget,
            obs.thresholds.as_slice()
        );
        // Every entry point goes through Budget: in bounds it is taken as is, out of bounds
        // refused with the limit named.
        match Budget::new(obs.budget) {
            Ok(b) => assert!(b.get() >= Decimal::ZERO && b.get() <= MAX_BUDGET, "{what}"),
            Err(e) => {
                refused += 1;
                let e = e.to_string();
                assert!(
                    e.contains("MAX_BUDGET") || e.contains("negative"),
                    "{what}: {e}"
                );
            }
        }
        // The engine itself takes any decimal (a key stored before the bound existed).
        let changes = std::panic::catch_unwind(|| budget::decide(&obs, &state))
            .unwrap_or_else(|_| panic!("{what}: decide panicked"));
        check_decision(&obs, &state, &changes);
        fired += changes
            .iter()
            .filter(|c| matches!(c, Change::Fire(_)))
            .count();
        let _ = money::utilization_percent(obs.total_spend, obs.budget);
        let _ = money::remaining(obs.budget, obs.total_spend);
    }
    // The generator reached both sides of the bound and of the thresholds.
    assert!(
        refused > 1000 && fired > 1000,
        "refused {refused}, fired {fired}"
    );
}

#[test]
fn a_1e28_budget_is_refused_naming_the_limit_at_the_bus_and_the_engine_still_decides() {
    let spend = |budget: serde_json::Value| {
        InboundKind::parse(
            "SpendUpdated",
            &json!({"keyId": 1, "amount": 1, "newTotalSpend": 5, "budget": budget}),
        )
    };
    let e = spend(json!(1e28)).unwrap_err().to_string();
    assert!(e.contains("MAX_BUDGET"), "{e}");
    let e = spend(json!("1".repeat(100_000))).unwrap_err().to_string();
    assert!(e.len() < 400, "a bounded reason: {} bytes", e.len());
    assert!(spend(json!(1e12)).is_ok());
    let key_change =
        InboundKind::parse("VirtualKeyUpdated", &json!({"keyId": 1, "budget": "1e28"}));
    assert!(key_change.unwrap_err().to_string().contains("MAX_BUDGET"));

    // The panic: a 1e28 budget and the default thresholds.
    let mut r = Rng(1);
    let (mut obs, _) = case(&mut r);
    obs.budget = Decimal::from_scientific("1e28").unwrap();
    obs.total_spend = MAX_BUDGET;
    obs.thresholds = Thresholds::default();
    assert!(
        budget::decide(&obs, &[]).is_empty(),
        "1e12 is far below 50% of 1e28"
    );
}
