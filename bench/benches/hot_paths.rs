//! Micro-benchmarks of Herald's hot paths (issue #5): SignalR record encode/decode, budget
//! evaluation, and fan-out of one event to N local connections through the backplane router.
#![allow(clippy::unwrap_used)]
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use herald_backplane::{Backplane, Mailbox, MemoryBackplane, Received};
use herald_domain::budget::{self, SpendObservation, ThresholdState};
use herald_domain::thresholds::Thresholds;
use herald_domain::{Audience, BudgetPeriod, EventId, KeyId, OutboundEvent};
use herald_gateway::{msgpack, protocol};
use rust_decimal::Decimal;
use std::hint::black_box;

const PAYLOAD: &str = r#"{"eventId":"r1-42-7","timestamp":"2026-11-22T10:00:00Z","virtualKeyId":42,"newSpend":0.000123,"totalSpend":12.50,"budget":50.00,"budgetRemaining":37.5,"budgetPercentage":25,"requestId":"t1790000000000000000"}"#;
const CURSOR: &str = "dmtleTo0Mj0xNzkwMDAwMDAwMDAwLTA";

fn protocol_benches(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_invocation_with_cursor", |b| {
        let mut buf = String::with_capacity(512);
        b.iter(|| {
            buf.clear();
            protocol::push_invocation(&mut buf, "SpendUpdate", black_box(PAYLOAD), Some(CURSOR));
            black_box(buf.len())
        })
    });
    let mut frame = String::new();
    for _ in 0..16 {
        protocol::push_invocation(&mut frame, "SpendUpdate", PAYLOAD, Some(CURSOR));
    }
    g.throughput(Throughput::Elements(16));
    g.bench_function("split_16_records", |b| {
        b.iter(|| {
            let mut rest = black_box(frame.as_bytes());
            let mut n = 0;
            while let Some((rec, tail)) = protocol::take_record(rest) {
                n += rec.len();
                rest = tail;
            }
            black_box(n)
        })
    });
    // MessagePack: the per-connection part (envelope, map header, cursor around the event's
    // form) and the once-per-node part (the form itself).
    let event: OutboundEvent = serde_json::from_value(serde_json::json!({
        "eventId": "r1-42-7", "name": "SpendUpdate", "timestamp": "2026-11-22T10:00:00Z",
        "payload": serde_json::from_str::<serde_json::Value>(PAYLOAD).unwrap(),
    }))
    .unwrap();
    g.throughput(Throughput::Elements(1));
    g.bench_function("encode_invocation_with_cursor_msgpack", |b| {
        let mut buf = Vec::with_capacity(512);
        b.iter(|| {
            buf.clear();
            msgpack::push_event(&mut buf, black_box(&event), Some(CURSOR));
            black_box(buf.len())
        })
    });
    g.bench_function("msgpack_event_form_once_per_node", |b| {
        b.iter(|| black_box(msgpack::event_form(black_box(&event))))
    });
    g.bench_function("parse_ping", |b| {
        b.iter(|| black_box(protocol::parse_message(black_box(br#"{"type":6}"#))))
    });
    g.bench_function("parse_invocation", |b| {
        let rec = br#"{"type":1,"invocationId":"3","target":"Resume","arguments":["dmtleTo0Mj0xNzkwMDAwMDAwMDAwLTA"]}"#;
        b.iter(|| black_box(protocol::parse_message(black_box(rec))))
    });
    g.bench_function("parse_handshake", |b| {
        b.iter(|| {
            black_box(protocol::parse_handshake(black_box(
                br#"{"protocol":"json","version":1}"#,
            )))
        })
    });
    g.finish();
}

fn budget_benches(c: &mut Criterion) {
    let t0 = chrono::DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
        .unwrap()
        .to_utc();
    let obs = |spend: i64| SpendObservation {
        key_id: KeyId::new(42).unwrap(),
        event_id: EventId::parse("m-1").unwrap(),
        source_time: t0 + chrono::Duration::hours(5),
        total_spend: Decimal::new(spend, 2),
        budget: Decimal::new(10_000, 2),
        period: BudgetPeriod::Monthly,
        period_start: t0,
        thresholds: Thresholds::parse("50,75,90,100").unwrap(),
    };
    let fired = |t: u32| ThresholdState {
        threshold: t,
        generation: 1,
        armed: false,
        source_time: t0,
        budget: Decimal::new(10_000, 2),
    };
    let mut g = c.benchmark_group("budget_decide");
    g.throughput(Throughput::Elements(1));
    let below = obs(1_000);
    g.bench_function("below_every_threshold", |b| {
        b.iter(|| black_box(budget::decide(black_box(&below), &[])))
    });
    let crossing = obs(8_000);
    g.bench_function("crosses_50_and_75_fires_alert", |b| {
        b.iter(|| black_box(budget::decide(black_box(&crossing), &[])))
    });
    let state = [fired(50), fired(75)];
    g.bench_function("already_fired_no_change", |b| {
        b.iter(|| black_box(budget::decide(black_box(&crossing), black_box(&state))))
    });
    g.finish();
}

fn fanout_benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("fanout_one_event");
    for n in [1usize, 100, 1_000, 10_000] {
        let bp = MemoryBackplane::new(16);
        let audience = Audience::Key(KeyId::new(42).unwrap());
        let mut receivers = Vec::with_capacity(n);
        let mut subs = Vec::with_capacity(n);
        for _ in 0..n {
            let (mb, rx) = Mailbox::new(1 << 20);
            subs.push(rt.block_on(bp.subscribe(audience, mb)).unwrap());
            receivers.push(rx);
        }
        let mut seq = 0u64;
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(format!("{n}_connections"), |b| {
            b.iter_batched(
                || {
                    seq += 1;
                    OutboundEvent {
                        event_id: EventId::parse(&format!("e{seq}")).unwrap(),
                        name: herald_domain::Outbound::SpendUpdate,
                        key_id: Some(KeyId::new(42).unwrap()),
                        timestamp: chrono::Utc::now(),
                        traceparent: None,
                        payload: serde_json::value::RawValue::from_string(PAYLOAD.to_owned())
                            .unwrap(),
                        task: None,
                        binary: Default::default(),
                    }
                },
                |ev| {
                    rt.block_on(bp.publish(&[audience], &ev)).unwrap();
                    let mut got = 0;
                    for rx in &mut receivers {
                        if let Some(Received::Delivery(d)) = rx.try_recv() {
                            got += d.event.payload.get().len();
                        }
                    }
                    black_box(got)
                },
                BatchSize::SmallInput,
            )
        });
        drop(subs);
    }
    g.finish();
}

criterion_group!(benches, protocol_benches, budget_benches, fanout_benches);
criterion_main!(benches);
