//! Money is `Decimal` end to end. Values taken from input keep their digits (`12.50` stays
//! `12.50`); computed values are normalised (no trailing zeros), percentages rounded half away
//! from zero to two places (docs/events.md, "Money and numbers").
use crate::invalid::Invalid;
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::Value;

/// Largest single charge accepted; anything above is taken for a bug upstream.
pub const MAX_AMOUNT: Decimal = Decimal::from_parts(1_000_000_000, 0, 0, false, 0);
/// Largest running total accepted.
pub const MAX_TOTAL: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0); // 1e12
/// Largest budget accepted from any entry point (bus events, `POST /v1/keys`,
/// `herald keys create --budget`): the same as a running total, so the budget rules'
/// `threshold × budget` (at most 1000 × 1e12) is far from `Decimal::MAX` (about 7.9e28).
pub const MAX_BUDGET: Decimal = MAX_TOTAL;

/// A budget as an administrator or an event sets it: `0 ≤ budget ≤ MAX_BUDGET`. The one
/// constructor every entry point goes through, so a key cannot be given a budget the budget
/// rules were not written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Budget(Decimal);

impl Budget {
    pub fn new(d: Decimal) -> Result<Self, Invalid> {
        if d.is_sign_negative() && !d.is_zero() {
            return Err(Invalid::new("budget must not be negative"));
        }
        if d > MAX_BUDGET {
            return Err(Invalid::new(format!(
                "budget {} is above the limit of {MAX_BUDGET} (MAX_BUDGET)",
                d.normalize()
            )));
        }
        Ok(Self(d))
    }

    /// A JSON number or numeric string, exactly (`decimal_from_json`), then bounded.
    pub fn from_json(field: &str, v: &Value) -> Result<Self, Invalid> {
        Self::new(decimal_from_json(field, v)?)
    }

    /// Text such as a command-line argument: `25.00`, `1e3`.
    pub fn parse(text: &str) -> Result<Self, Invalid> {
        let d = parse_decimal(text.trim()).ok_or_else(|| {
            Invalid::new(format!(
                "expected a decimal amount, got {:?}",
                crate::invalid::prefix(text)
            ))
        })?;
        Self::new(d)
    }

    pub fn get(self) -> Decimal {
        self.0
    }
}

/// Reads a JSON number (or numeric string) exactly, keeping its scale.
pub fn decimal_from_json(field: &str, v: &Value) -> Result<Decimal, Invalid> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err(Invalid::new(format!("{field} must be a number"))),
    };
    parse_decimal(&text).ok_or_else(|| {
        Invalid::new(format!(
            "{field} is not a representable decimal: {:?}",
            crate::invalid::prefix(&text)
        ))
    })
}

fn parse_decimal(text: &str) -> Option<Decimal> {
    if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()
    } else {
        Decimal::from_str_exact(text).ok()
    }
}

/// A non-negative amount no larger than `max`.
pub fn bounded(field: &str, d: Decimal, max: Decimal) -> Result<Decimal, Invalid> {
    if d.is_sign_negative() && !d.is_zero() {
        return Err(Invalid::new(format!("{field} is negative")));
    }
    if d > max {
        return Err(Invalid::new(format!(
            "{field} is implausibly large ({d} > {max})"
        )));
    }
    Ok(d)
}

/// `spend / budget × 100`, rounded half away from zero to 2 places, without trailing zeros.
/// `None` when there is no positive budget.
pub fn utilization_percent(spend: Decimal, budget: Decimal) -> Option<Decimal> {
    if budget <= Decimal::ZERO {
        return None;
    }
    let exact = spend
        .checked_mul(Decimal::ONE_HUNDRED)?
        .checked_div(budget)?;
    Some(round_percent(exact))
}

pub fn round_percent(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
        .normalize()
}

/// Budget left, never below zero, without trailing zeros. Checked: a difference beyond
/// `Decimal` (only possible for values outside the entry points' bounds) saturates.
pub fn remaining(budget: Decimal, spend: Decimal) -> Decimal {
    let left = budget
        .checked_sub(spend)
        .unwrap_or(if spend.is_sign_negative() {
            Decimal::MAX
        } else {
            Decimal::ZERO
        });
    left.max(Decimal::ZERO).normalize()
}

/// Whether `spend` has reached `threshold` percent of `budget` (`spend × 100 ≥ threshold ×
/// budget`, exact, without division), for any decimals: a product beyond `Decimal::MAX` is
/// compared by what its overflow proves instead of panicking. `budget` must be positive.
pub fn reached(spend: Decimal, budget: Decimal, threshold: u32) -> bool {
    if spend <= Decimal::ZERO {
        return false;
    }
    let t = Decimal::from(threshold);
    match (
        spend.checked_mul(Decimal::ONE_HUNDRED),
        t.checked_mul(budget),
    ) {
        (Some(lhs), Some(rhs)) => lhs >= rhs,
        // threshold × budget is above Decimal::MAX, spend × 100 is not.
        (Some(_), None) => false,
        (None, Some(_)) => true,
        // Both huge (> 7.9e26): budget / 100 is exact at that size (few decimal places), and
        // spend ≥ threshold × (budget / 100) is the same comparison.
        (None, None) => match budget
            .checked_div(Decimal::ONE_HUNDRED)
            .and_then(|q| q.checked_mul(t))
        {
            Some(rhs) => spend >= rhs,
            None => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::str::FromStr;

    fn parse(s: &str) -> Result<Decimal, Invalid> {
        let v: Value = serde_json::from_str(s).unwrap();
        decimal_from_json("amount", &v)
    }

    #[test]
    fn keeps_input_digits() {
        assert_eq!(parse("12.50").unwrap().to_string(), "12.50");
        assert_eq!(parse("0.000123").unwrap().to_string(), "0.000123");
        assert_eq!(parse("\"7.10\"").unwrap().to_string(), "7.10");
        assert_eq!(parse("1.5e2").unwrap(), Decimal::from(150));
    }

    #[test]
    fn many_decimal_places_are_exact_or_refused() {
        assert_eq!(
            parse("0.0000000000000000000000000001").unwrap().to_string(),
            "0.0000000000000000000000000001"
        );
        assert!(parse("0.00000000000000000000000000000000001").is_err());
        assert!(parse("true").is_err());
        assert!(decimal_from_json("x", &json!(null)).is_err());
    }

    #[test]
    fn bounds() {
        assert!(bounded("amount", Decimal::from(-1), MAX_AMOUNT).is_err());
        assert!(bounded("amount", MAX_AMOUNT + Decimal::ONE, MAX_AMOUNT).is_err());
        assert_eq!(MAX_TOTAL, Decimal::from(1_000_000_000_000i64));
        assert!(bounded("amount", Decimal::ZERO, MAX_AMOUNT).is_ok());
    }

    #[test]
    fn budgets_are_bounded_at_every_entry_point_with_the_limit_named() {
        let e = Budget::from_json("budget", &json!(1e28))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1000000000000") && e.contains("MAX_BUDGET"),
            "{e}"
        );
        let e = Budget::parse("10000000000000000000000000000")
            .unwrap_err()
            .to_string();
        assert!(e.contains("MAX_BUDGET"), "{e}");
        assert!(Budget::parse("-1").is_err());
        assert!(Budget::parse("abc").is_err());
        assert_eq!(Budget::parse(" 25.00 ").unwrap().get().to_string(), "25.00");
        assert_eq!(Budget::parse("1e12").unwrap().get(), MAX_BUDGET);
        let long = "9".repeat(100_000);
        let e = Budget::parse(&long).unwrap_err().to_string();
        assert!(
            e.len() < 400,
            "the error echoes a bounded prefix: {} bytes",
            e.len()
        );
    }

    #[test]
    fn reached_is_exact_and_never_overflows() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert!(reached(d("50"), d("100"), 50));
        assert!(!reached(d("49.99"), d("100"), 50));
        assert!(!reached(d("1000000000000"), d("1e28"), 50));
        assert!(
            reached(Decimal::MAX, d("1e28"), 100),
            "7.9e28 is above 1e28"
        );
        assert!(!reached(d("1e28"), Decimal::MAX, 1000));
        assert!(reached(Decimal::MAX, Decimal::MAX, 100));
        assert!(!reached(Decimal::MAX, Decimal::MAX, 101));
        assert!(reached(
            Decimal::MAX,
            d("0.0000000000000000000000000001"),
            1000
        ));
        assert!(!reached(Decimal::MIN, d("1"), 1));
        assert_eq!(remaining(Decimal::MAX, Decimal::MIN), Decimal::MAX);
        assert_eq!(remaining(Decimal::MIN, Decimal::MAX), Decimal::ZERO);
    }

    #[test]
    fn percentages_round_half_away_from_zero() {
        let d = |s: &str| Decimal::from_str(s).unwrap();
        assert_eq!(
            utilization_percent(d("1"), d("3")).unwrap().to_string(),
            "33.33"
        );
        assert_eq!(
            utilization_percent(d("2"), d("3")).unwrap().to_string(),
            "66.67"
        );
        assert_eq!(
            utilization_percent(d("0.00125"), d("1"))
                .unwrap()
                .to_string(),
            "0.13"
        );
        assert_eq!(
            utilization_percent(d("80.00"), d("100.00"))
                .unwrap()
                .to_string(),
            "80"
        );
        assert_eq!(utilization_percent(d("1"), d("0")), None);
        assert_eq!(remaining(d("100.00"), d("12.50")).to_string(), "87.5");
        assert_eq!(remaining(d("10"), d("12.50")).to_string(), "0");
    }
}
