//! Money (crates/domain/src/money.rs): decimal amounts as they arrive in events (JSON numbers
//! or numeric strings), in `POST /v1/keys` and on the command line (`--budget`), then the
//! arithmetic every SpendUpdated runs on them. Input: two amounts separated by a newline, and
//! a threshold after a second newline. Properties: a parsed amount prints back to the same
//! digits; the arithmetic never panics and agrees with exact checked arithmetic.
#![no_main]
use herald_domain::money::{
    self, Budget, MAX_BUDGET, decimal_from_json, reached, remaining, utilization_percent,
};
use libfuzzer_sys::fuzz_target;
use rust_decimal::Decimal;
use serde_json::Value;

/// The amount `text` stands for, by every entry point; checks they agree.
fn amount(text: &str) -> Option<Decimal> {
    let from_string = decimal_from_json("amount", &Value::String(text.to_owned())).ok();
    if let Ok(v @ Value::Number(_)) = serde_json::from_str::<Value>(text) {
        // A JSON number and the same digits in a string are the same amount.
        assert_eq!(
            decimal_from_json("amount", &v).ok(),
            from_string,
            "{text:?}"
        );
    }
    if let Some(d) = from_string {
        // Printed and parsed again: the same value and the same scale (digits are kept).
        let printed = d.to_string();
        let back = decimal_from_json("amount", &Value::String(printed.clone()))
            .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(back, d);
        assert_eq!(back.scale(), d.scale(), "{printed:?} from {text:?}");
        // The command-line and admin-API budget takes the same text, bounded.
        match Budget::parse(text) {
            Ok(b) => assert!(b.get() == d && d <= MAX_BUDGET && !(d < Decimal::ZERO)),
            Err(_) => assert!(d > MAX_BUDGET || d < Decimal::ZERO),
        }
    }
    from_string
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = input.splitn(3, '\n');
    let spend = lines.next().and_then(amount);
    let budget = lines.next().and_then(amount);
    let threshold: u32 = lines
        .next()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(50);
    let (Some(spend), Some(budget)) = (spend, budget) else {
        return;
    };
    let left = remaining(budget, spend);
    assert!(left >= Decimal::ZERO);
    if let Some(diff) = budget.checked_sub(spend) {
        assert_eq!(left, diff.max(Decimal::ZERO).normalize());
    }
    if let Some(p) = utilization_percent(spend, budget) {
        assert!(budget > Decimal::ZERO);
        assert!(p.scale() <= 2);
    }
    let _ = money::round_percent(spend);
    if budget > Decimal::ZERO {
        let r = reached(spend, budget, threshold);
        // Exact where the products fit: spend × 100 ≥ threshold × budget.
        if let (Some(l), Some(rhs)) = (
            spend.checked_mul(Decimal::ONE_HUNDRED),
            Decimal::from(threshold).checked_mul(budget),
        ) {
            assert_eq!(
                r,
                spend > Decimal::ZERO && l >= rhs,
                "{spend} {budget} {threshold}"
            );
        }
        // Monotone: more spend never un-reaches a threshold.
        if r && let Some(more) = spend.checked_add(Decimal::ONE) {
            assert!(reached(more, budget, threshold));
        }
    }
});
