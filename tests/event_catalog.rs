//! docs/events.md is executable: every ```json input block is processed by the real pipeline
//! (in-memory store and backplane, key 42 with a 10.00 monthly budget), and the events it
//! publishes must equal the ```json output <Name> blocks that follow it, in order. `cursor`
//! is added per connection by the gateway and is not part of the documented objects.
//! `HERALD_PRINT_CATALOG=1` prints what the code produces, for writing the document.
#![allow(clippy::unwrap_used)]

use herald_backplane::{Backplane, Mailbox, MemoryBackplane, Received};
use herald_domain::{Audience, KeyHash, KeyId, VirtualKey};
use herald_ingest::envelope::MessageMeta;
use herald_ingest::{Pipeline, PipelineConfig};
use herald_store::{MemoryStore, Store};
use rust_decimal::Decimal;
use serde_json::Value;
use std::sync::Arc;

struct Example {
    input: String,
    outputs: Vec<(String, String)>,
}

fn examples(doc: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        let Some(info) = line.strip_prefix("```json ") else {
            continue;
        };
        let body: Vec<&str> = lines
            .by_ref()
            .take_while(|l| !l.starts_with("```"))
            .collect();
        let body = body.join("\n");
        let mut words = info.split_whitespace();
        match (words.next(), words.next()) {
            (Some("input"), _) => out.push(Example {
                input: body,
                outputs: Vec::new(),
            }),
            (Some("output"), Some(name)) => out
                .last_mut()
                .expect("an output follows an input")
                .outputs
                .push((name.to_string(), body)),
            _ => {}
        }
    }
    out
}

#[tokio::test]
async fn the_documented_examples_are_what_the_code_produces() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    let examples = examples(&doc);
    assert!(
        examples.len() >= 10,
        "the catalog documents every family ({} examples)",
        examples.len()
    );
    let print = std::env::var_os("HERALD_PRINT_CATALOG").is_some();

    let store = Arc::new(MemoryStore::new());
    let mut key = VirtualKey::new(
        KeyId::new(42).unwrap(),
        KeyHash::of_raw("condt_catalog"),
        "catalog",
    );
    key.budget = Some(Decimal::new(1000, 2));
    key.budget_period = herald_domain::BudgetPeriod::Monthly;
    store.put_key(&key).await.unwrap();
    let backplane = Arc::new(MemoryBackplane::new(1000));
    let (mailbox, mut admin) = Mailbox::new(1 << 24);
    let _sub = backplane.subscribe(Audience::Admin, mailbox).await.unwrap();
    let pipeline = Pipeline::new(PipelineConfig::default(), store, backplane);

    for (i, ex) in examples.iter().enumerate() {
        pipeline
            .process(ex.input.as_bytes(), &MessageMeta::default())
            .await
            .unwrap_or_else(|e| panic!("example {i} was refused: {e}\n{}", ex.input));
        let mut produced = Vec::new();
        while let Some(Received::Delivery(d)) = admin.try_recv() {
            produced.push((d.event.name.name(), d.event.payload.get().to_string()));
        }
        if print {
            for (name, payload) in &produced {
                let pretty =
                    serde_json::to_string_pretty(&serde_json::from_str::<Value>(payload).unwrap())
                        .unwrap();
                println!("example {i}:\n```json output {name}\n{pretty}\n```");
            }
            continue;
        }
        let names: Vec<&str> = produced.iter().map(|(n, _)| *n).collect();
        let want: Vec<&str> = ex.outputs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names, want,
            "example {i}: the events published\n{}",
            ex.input
        );
        for ((name, got), (_, doc)) in produced.iter().zip(&ex.outputs) {
            let got: Value = serde_json::from_str(got).unwrap();
            let doc: Value = serde_json::from_str(doc).unwrap_or_else(|e| {
                panic!("example {i} {name}: the documented JSON is invalid: {e}")
            });
            assert_eq!(got, doc, "example {i}: {name} differs from docs/events.md");
        }
    }
}
