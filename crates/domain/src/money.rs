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

/// Reads a JSON number (or numeric string) exactly, keeping its scale.
pub fn decimal_from_json(field: &str, v: &Value) -> Result<Decimal, Invalid> {
    let text = match v {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_owned(),
        _ => return Err(Invalid::new(format!("{field} must be a number"))),
    };
    parse_decimal(&text)
        .ok_or_else(|| Invalid::new(format!("{field} is not a representable decimal: {text:?}")))
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

/// Budget left, never below zero, without trailing zeros.
pub fn remaining(budget: Decimal, spend: Decimal) -> Decimal {
    (budget - spend).max(Decimal::ZERO).normalize()
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
