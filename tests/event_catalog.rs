//! docs/events.md is executable: every ```json input block is processed by the real pipeline
//! (in-memory store and backplane, key 42 with a 10.00 monthly budget), and the events it
//! publishes must equal the ```json output <Name> blocks that follow it, in order. `cursor`
//! is added per connection by the gateway and is not part of the documented objects. The
//! table before each input is executed too: each event reaches exactly the audiences listed
//! (one mailbox per audience), and the hubs listed are exactly those the gateway's hub table
//! lets the event through to (a client of the event's key, or the master key for admin hubs).
//! Each event is also encoded as a MessagePack client receives it and must decode to the same
//! values as its documented JSON form, by the rules and money table of the document's
//! "MessagePack form" section.
//! `HERALD_PRINT_CATALOG=1` prints what the code produces, for writing the document.
#![allow(clippy::unwrap_used)]

use herald_backplane::{Backplane, Mailbox, MemoryBackplane, Received};
use herald_domain::outbound::decimal_fields;
use herald_domain::{Audience, KeyHash, KeyId, Outbound, OutboundEvent, VirtualKey};
use herald_gateway::auth::Principal;
use herald_gateway::hubs;
use herald_gateway::msgpack;
use herald_ingest::envelope::MessageMeta;
use herald_ingest::{Pipeline, PipelineConfig};
use herald_store::{MemoryStore, Store};
use rust_decimal::Decimal;
use serde_json::Value;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

struct Example {
    input: String,
    outputs: Vec<(String, String)>,
    /// The table rows before the input: event name → (audiences, hubs).
    routes: Vec<(String, Vec<String>, Vec<String>)>,
}

/// The backticked items of a table cell.
fn ticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

fn examples(doc: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut routes = Vec::new();
    let mut lines = doc.lines();
    while let Some(line) = lines.next() {
        if let Some(row) = line.strip_prefix("| `") {
            let cells: Vec<&str> = row.split('|').collect();
            assert!(
                cells.len() >= 3,
                "a table row has event, audiences, hubs: {line}"
            );
            let name = cells[0].trim().trim_end_matches('`').to_owned();
            routes.push((name, ticked(cells[1]), ticked(cells[2])));
            continue;
        }
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
                routes: std::mem::take(&mut routes),
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

/// The hubs (`/hubs/{name}`) through which an event published to `audiences` reaches a client:
/// a connection of key `key` on a virtual-key hub, the master key on an admin hub. Uses the
/// gateway's hub table: who may connect, which audiences it listens to, what it forwards.
fn hubs_receiving(name: &str, audiences: &BTreeSet<String>, key: i64) -> BTreeSet<String> {
    let vk = VirtualKey::new(KeyId::new(key).unwrap(), KeyHash::of_raw("k"), "k");
    let principals = [Principal::Key(Box::new(vk)), Principal::Master];
    let event = herald_domain::Outbound::parse(name)
        .unwrap_or_else(|| panic!("{name} is not an event of the vocabulary"));
    hubs::HUBS
        .iter()
        .filter(|h| h.forwards(event))
        .filter(|h| {
            principals.iter().any(|p| {
                h.admits(p)
                    && h.audiences_for(p)
                        .iter()
                        .any(|a| audiences.contains(&a.to_string()))
            })
        })
        .map(|h| format!("/hubs/{}", h.name))
        .collect()
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
    // One mailbox per other audience the examples can reach.
    let mut others = Vec::new();
    for a in [
        Audience::Key(KeyId::new(42).unwrap()),
        Audience::Key(KeyId::new(43).unwrap()),
        Audience::Global,
    ] {
        let (mailbox, rx) = Mailbox::new(1 << 24);
        let sub = backplane.subscribe(a, mailbox).await.unwrap();
        others.push((a, rx, sub));
    }
    let pipeline = Pipeline::new(PipelineConfig::default(), store, backplane);

    for (i, ex) in examples.iter().enumerate() {
        pipeline
            .process(ex.input.as_bytes(), &MessageMeta::default())
            .await
            .unwrap_or_else(|e| panic!("example {i} was refused: {e}\n{}", ex.input));
        let mut produced = Vec::new();
        let mut sent = Vec::new();
        // eventId → the audiences it was published to.
        let mut reached: HashMap<String, BTreeSet<String>> = HashMap::new();
        while let Some(Received::Delivery(d)) = admin.try_recv() {
            produced.push((d.event.name.name(), d.event.payload.get().to_string()));
            sent.push(d.event.clone());
            reached
                .entry(d.event.event_id.to_string())
                .or_default()
                .insert(d.audience.to_string());
        }
        for (_, rx, _) in &mut others {
            while let Some(Received::Delivery(d)) = rx.try_recv() {
                reached
                    .entry(d.event.event_id.to_string())
                    .or_default()
                    .insert(d.audience.to_string());
            }
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
        for (ev, (name, doc)) in sent.iter().zip(&ex.outputs) {
            let doc: Value = serde_json::from_str(doc).unwrap();
            msgpack_form_matches(i, name, ev, &doc);
        }
        // The table: audiences and hubs of each event.
        let table: Vec<&str> = ex.routes.iter().map(|(n, _, _)| n.as_str()).collect();
        assert_eq!(
            table, want,
            "example {i}: the table names the events published"
        );
        for ((name, payload), (_, audiences, hubs)) in produced.iter().zip(&ex.routes) {
            let event: Value = serde_json::from_str(payload).unwrap();
            let id = event["eventId"].as_str().unwrap();
            let got: BTreeSet<String> = reached.remove(id).unwrap_or_default();
            let doc: BTreeSet<String> = audiences.iter().cloned().collect();
            assert_eq!(got, doc, "example {i}: audiences of {name} {id}");
            let key = got
                .iter()
                .find_map(|a| a.strip_prefix("vkey:")?.parse().ok());
            let got = hubs_receiving(name, &doc, key.unwrap_or(42));
            let doc: BTreeSet<String> = hubs.iter().cloned().collect();
            assert_eq!(got, doc, "example {i}: hubs of {name} {id}");
        }
    }
}

/// Splits one length-prefixed MessagePack message off `buf`, decoded: `[1, {}, nil, target,
/// arguments, []]` of an Invocation, returned as (target, arguments).
fn invocation(buf: &[u8]) -> (String, Vec<rmpv::Value>) {
    let (msg, rest) = msgpack::take_message(buf, usize::MAX).unwrap().unwrap();
    assert!(rest.is_empty(), "one message");
    let mut rd = msg;
    let rmpv::Value::Array(items) = rmpv::decode::read_value(&mut rd).unwrap() else {
        panic!("not an array")
    };
    assert!(rd.is_empty(), "the prefix is the message's length");
    assert_eq!(items.len(), 6, "{items:?}");
    assert_eq!(items[5], rmpv::Value::Array(Vec::new()), "no stream ids");
    assert_eq!(items[0], rmpv::Value::from(1));
    assert_eq!(items[1], rmpv::Value::Map(Vec::new()));
    assert_eq!(items[2], rmpv::Value::Nil);
    let rmpv::Value::Array(args) = &items[4] else {
        panic!("arguments are not an array")
    };
    (items[3].as_str().unwrap().to_owned(), args.clone())
}

/// `mp` carries the value of `json` by the rules of docs/events.md, "MessagePack form".
fn same_value(json: &Value, mp: &rmpv::Value, money: bool) -> bool {
    use rmpv::Value as Mp;
    match (json, mp) {
        (Value::Null, Mp::Nil) => true,
        (Value::Bool(a), Mp::Boolean(b)) => a == b,
        (Value::String(a), Mp::String(b)) => b.as_str() == Some(a),
        // Money: always the exact digits as text.
        (Value::Number(n), Mp::String(s)) if money => s.as_str() == Some(&n.to_string()),
        (Value::Number(_), _) if money => false,
        (Value::Number(n), Mp::Integer(i)) => {
            n.as_i64().is_some_and(|a| i.as_i64() == Some(a))
                || n.as_u64().is_some_and(|a| i.as_u64() == Some(a))
        }
        // A fraction or an exponent: the exact JSON digits as text.
        (Value::Number(n), Mp::String(s)) => {
            n.as_i64().is_none() && n.as_u64().is_none() && s.as_str() == Some(&n.to_string())
        }
        (Value::Array(a), Mp::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| same_value(x, y, false))
        }
        (Value::Object(a), Mp::Map(b)) => {
            a.len() == b.len()
                && a.iter().all(|(k, x)| {
                    b.iter()
                        .find(|(key, _)| key.as_str() == Some(k))
                        .is_some_and(|(_, y)| same_value(x, y, false))
                })
        }
        _ => false,
    }
}

/// The event as a MessagePack connection receives it (with a cursor, and Conduit's positional
/// form for task events) decodes to the documented JSON values.
fn msgpack_form_matches(i: usize, name: &str, ev: &OutboundEvent, doc: &Value) {
    let mut buf = Vec::new();
    msgpack::push_event(&mut buf, ev, Some("cursor-1"));
    let (target, args) = invocation(&buf);
    assert_eq!(target, name);
    let [rmpv::Value::Map(entries)] = args.as_slice() else {
        panic!("example {i}: {name}: one object argument")
    };
    assert_eq!(
        entries.last(),
        Some(&("cursor".into(), "cursor-1".into())),
        "example {i}: {name}: the cursor comes last"
    );
    let object = rmpv::Value::Map(entries[..entries.len() - 1].to_vec());
    let Value::Object(fields) = doc else {
        panic!("example {i}: {name} is not an object")
    };
    let rmpv::Value::Map(got) = &object else {
        unreachable!()
    };
    assert_eq!(
        got.len(),
        fields.len(),
        "example {i}: {name}: the same fields"
    );
    let money = decimal_fields(ev.name);
    for (k, json) in fields {
        let mp = got
            .iter()
            .find(|(key, _)| key.as_str() == Some(k))
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("example {i}: {name}: {k} missing in MessagePack"));
        assert!(
            same_value(json, mp, money.contains(&k.as_str())),
            "example {i}: {name}.{k}: JSON {json} but MessagePack {mp}"
        );
    }
    if let (Some(method), Some(task)) = (
        ev.name.task().and_then(|(_, p)| p.conduit_method()),
        &ev.task,
    ) {
        let Some(json_args) = &task.args else { return };
        let json_args: Value = serde_json::from_str(json_args.get()).unwrap();
        let mut buf = Vec::new();
        msgpack::push_positional(&mut buf, method, ev);
        let (target, args) = invocation(&buf);
        assert_eq!(target, method.name());
        assert!(
            same_value(&json_args, &rmpv::Value::Array(args.clone()), false),
            "example {i}: {}: JSON {json_args} but MessagePack {args:?}",
            method.name()
        );
    }
}

/// The money table of "MessagePack form" lists exactly the fields the code carries as text.
#[test]
fn the_documented_money_fields_are_the_codes() {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md")).unwrap();
    let section = doc
        .split("## MessagePack form")
        .nth(1)
        .expect("docs/events.md has a MessagePack form section");
    let mut listed = 0;
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let names = ticked(cells[1]);
        let fields = ticked(cells[2]);
        for name in names {
            let event = Outbound::parse(&name).unwrap_or_else(|| panic!("{name} is no event"));
            assert_eq!(decimal_fields(event), fields, "{name}'s money fields");
            listed += 1;
        }
    }
    assert_eq!(
        listed, 2,
        "the money table names SpendUpdate and BudgetAlert"
    );
}
