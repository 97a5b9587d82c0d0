//! Invariant 2 of docs/reliability.md: a connection never receives another key's events, admin excepted.
//! 50 keys on two nodes sharing the bus and backplane, a few hundred mixed events; and a key
//! revoked through the bus loses its connection on the other node.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

const KEYS: i64 = 50;

#[tokio::test]
async fn fifty_keys_each_receive_exactly_their_own_events_and_the_global_ones() {
    let nodes = spawn_cluster(2).await;
    let mut raw = BTreeMap::new();
    for id in 1..=KEYS {
        raw.insert(id, nodes[0].create_key(id, Some("1000")).await);
    }
    let mut clients = BTreeMap::new();
    for (id, key) in &raw {
        // Alternate nodes; every key listens on /hubs/events (its own stream + global).
        let node = &nodes[(*id as usize) % 2];
        clients.insert(
            *id,
            SignalR::connect(&node.ws_url("/hubs/events", &format!("access_token={key}")))
                .await
                .unwrap(),
        );
    }
    let mut admin =
        SignalR::connect(&nodes[1].ws_url("/hubs/admin", &format!("access_token={MASTER_KEY}")))
            .await
            .unwrap();

    // 300 spend events spread over the keys, with 10 global provider events among them.
    let mut expected: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    let mut totals: BTreeMap<i64, u32> = BTreeMap::new();
    let mut global = BTreeSet::new();
    let mut messages = Vec::new();
    let spend_exchange = nodes[0].exchange("SpendUpdated");
    for i in 0..300 {
        let key = (i * 7) % KEYS + 1;
        let total = totals.entry(key).or_default();
        *total += 1;
        let id = format!("iso-{i}");
        let body = masstransit_spend(&id, key, "1", &total.to_string());
        messages.push((
            spend_exchange.clone(),
            lapin::ExchangeKind::Fanout,
            String::new(),
            body.into_bytes(),
            "application/vnd.masstransit+json",
        ));
        expected.entry(key).or_default().insert(id);
        if i % 30 == 0 {
            let id = format!("glob-{}", i / 30);
            let body = format!(
                r#"{{"specversion":"1.0","id":"{id}","source":"/conduit","type":"ProviderHealthChanged","data":{{"providerId":{i},"status":"healthy"}}}}"#
            );
            messages.push((
                nodes[0].queue.clone(),
                lapin::ExchangeKind::Topic,
                "ProviderHealthChanged".into(),
                body.into_bytes(),
                "application/cloudevents+json",
            ));
            global.insert(id);
        }
    }
    let started = std::time::Instant::now();
    amqp_publish_many(&messages).await;

    for (id, client) in clients.iter_mut() {
        let want_own = expected.remove(id).unwrap_or_default();
        let mut own = BTreeSet::new();
        let mut globals = BTreeSet::new();
        // One overall deadline: the consumers work through the whole backlog first.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while own.len() < want_own.len() || globals.len() < global.len() {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let Some((name, ev)) = client.next_invocation(left).await else {
                break;
            };
            match name.as_str() {
                "SpendUpdate" => {
                    assert_eq!(
                        ev["virtualKeyId"], *id,
                        "key {id} got another key's event: {ev}"
                    );
                    assert!(
                        own.insert(ev["eventId"].as_str().unwrap().to_string()),
                        "duplicate {ev}"
                    );
                }
                "ProviderHealthChanged" => {
                    assert!(
                        globals.insert(ev["eventId"].as_str().unwrap().to_string()),
                        "duplicate {ev}"
                    );
                }
                "NavigationStateUpdated" => assert_eq!(ev["type"], "provider"),
                other => panic!("key {id}: unexpected {other}: {ev}"),
            }
        }
        assert_eq!(own, want_own, "key {id}: exactly its own events");
        assert_eq!(globals, global, "key {id}: every global event");
    }
    // Nothing else trickles in afterwards: a marker on each audience the client listens to
    // (its key's and global) is published now; until both arrive only the last global event's
    // navigation twin may come.
    let global_marker = r#"{"specversion":"1.0","id":"glob-marker","source":"/conduit","type":"ProviderHealthChanged","data":{"providerId":999,"status":"healthy"}}"#;
    amqp_publish(
        &nodes[0].queue,
        lapin::ExchangeKind::Topic,
        "ProviderHealthChanged",
        global_marker.as_bytes(),
        "application/cloudevents+json",
    )
    .await;
    for (id, client) in clients.iter_mut() {
        let total = (totals.get(id).copied().unwrap_or(0) + 1).to_string();
        publish_spend(&nodes[0], &format!("mark-{id}"), *id, "1", &total).await;
        let mark = format!("mark-{id}");
        for (name, ev) in client
            .until_markers(&["glob-marker", mark.as_str()], Duration::from_secs(30))
            .await
        {
            let eid = ev["eventId"].as_str().unwrap_or("");
            assert!(
                eid == "glob-marker"
                    || eid == mark
                    || (name == "NavigationStateUpdated" && eid.starts_with("glob-")),
                "key {id}: late stray event: {name} {ev}"
            );
        }
    }
    let mut admin_spend = BTreeSet::new();
    while admin_spend.len() < 300 {
        let Some((name, ev)) = admin.next_invocation(Duration::from_secs(10)).await else {
            break;
        };
        let eid = ev["eventId"].as_str().unwrap();
        if name == "SpendUpdate" && eid.starts_with("iso-") {
            admin_spend.insert(eid.to_string());
        }
    }
    assert_eq!(admin_spend.len(), 300, "the admin sees every key's events");
    // Information, not an assertion: how long the two consumers took for the backlog.
    eprintln!(
        "310 events published and delivered to 51 connections in {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_key_revoked_through_the_bus_loses_its_connection_on_the_other_node() {
    let nodes = spawn_cluster(2).await;
    let raw = nodes[0].create_key(7, None).await;
    // The key is usable on the node that did not create it (shared store).
    let mut client =
        SignalR::connect(&nodes[1].ws_url("/hubs/spend", &format!("access_token={raw}")))
            .await
            .unwrap();
    let body = r#"{"specversion":"1.0","id":"kd-7","source":"/conduit","type":"VirtualKeyDeleted","data":{"keyId":7}}"#;
    amqp_publish(
        &nodes[0].queue,
        lapin::ExchangeKind::Topic,
        "VirtualKeyDeleted",
        body.as_bytes(),
        "application/cloudevents+json",
    )
    .await;
    // A Close, then the socket itself closes (silence is not a close).
    let mut got = Vec::new();
    loop {
        match client.next_or_close(Duration::from_secs(10)).await {
            Next::Closed => break,
            Next::Silent => panic!("still open 10 s after the deletion; got {got:?}"),
            Next::Message(m) => got.push(m),
        }
    }
    assert!(
        got.iter().any(|m| m["type"] == 7),
        "closed by the node that holds it, with a Close: {got:?}"
    );
    for node in &nodes {
        assert_eq!(
            upgrade_status(&node.ws_url("/hubs/spend", &format!("access_token={raw}"))).await,
            401
        );
    }
}
