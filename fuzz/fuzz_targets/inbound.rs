//! The domain's inbound parsing (crates/domain, `InboundKind::parse`): an event body of any
//! type, as the envelope hands it over, then what the consumer computes from a SpendUpdated
//! without a store (the budget engine and the SpendUpdate payload). Input: the short type name,
//! a newline, then the JSON body.
#![no_main]
use chrono::{TimeZone, Utc};
use herald_domain::budget::{self, Change, SpendFacts};
use herald_domain::thresholds::Thresholds;
use herald_domain::{EventId, InboundEvent, InboundKind, KeyRef, OutboundEvent};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some(at) = data.iter().position(|&b| b == b'\n') else {
        return;
    };
    let Ok(type_name) = std::str::from_utf8(&data[..at]) else {
        return;
    };
    let Ok(body) = serde_json::from_slice::<Value>(&data[at + 1..]) else {
        return;
    };
    let parsed = InboundKind::parse(type_name, &body);
    // Type names match case-insensitively.
    let upper = InboundKind::parse(&type_name.to_ascii_uppercase(), &body);
    assert_eq!(parsed.is_ok(), upper.is_ok());
    if let (Ok(a), Ok(b)) = (&parsed, &upper) {
        assert_eq!(a, b);
    }
    let Ok(Some(kind)) = parsed else {
        return;
    };
    assert!(kind.type_name().eq_ignore_ascii_case(kind.spec().name));
    let InboundKind::SpendUpdated(s) = &kind else {
        return;
    };
    let KeyRef::Id(key_id) = s.key else {
        return;
    };
    let Ok(event_id) = EventId::parse("fuzz-1") else {
        return;
    };
    let source_time = Utc
        .with_ymd_and_hms(2026, 11, 22, 10, 0, 0)
        .single()
        .unwrap_or_default();
    let ev = InboundEvent {
        id: event_id.clone(),
        source_time,
        traceparent: None,
        kind: kind.clone(),
    };
    let _ = OutboundEvent::spend_update(&ev, s, key_id, s.budget, None);
    let facts = SpendFacts {
        key_id,
        event_id,
        source_time,
        total_spend: s.new_total_spend,
        budget: s.budget,
        period: s.budget_period,
        period_start: s.period_start,
        amount: s.amount,
        model: s.model.clone(),
        provider: s.provider.clone(),
        request_id: s.request_id.clone(),
    };
    let Ok(thresholds) = Thresholds::from_list(vec![1, 50, 75, 90, 100, 1000]) else {
        return;
    };
    let Some(obs) = facts.observation(None, &thresholds) else {
        return;
    };
    let mut state = Vec::new();
    for change in budget::decide(&obs, &state) {
        if let Change::Fire(alert) = &change {
            let _ = OutboundEvent::budget_alert(alert, None);
        }
        budget::apply(&mut state, &obs, &change);
    }
    // The same observation again, once its changes are recorded, fires nothing more (a
    // redelivered event must not alert twice).
    let again = budget::decide(&obs, &state);
    assert!(
        !again.iter().any(|c| matches!(c, Change::Fire(_))),
        "a repeated observation fired again: {again:?}"
    );
});
