//! Issue 3 so far, end to end on the real services: global events on `/hubs/notifications`,
//! every key's events on `/hubs/admin`, key lifecycle events closing live connections, and the
//! task rules of docs/events.md. Absence is shown with a marker event published after the
//! unwanted one (once it is known to be written) on the audience it would use: the marker's
//! arrival proves the unwanted event is not coming — no fixed quiet windows.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;

use common::*;
use serde_json::Value;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

/// A MassTransit envelope of `event_type` (PascalCase body) to the exchange `app` is bound to.
async fn publish_masstransit(app: &TestApp, id: &str, event_type: &str, message: &str) {
    let body = format!(
        r#"{{"messageId":"{id}","messageType":["urn:message:ConduitLLM.Core.Events:{event_type}"],"message":{message},"sentTime":"2026-11-22T10:00:00Z"}}"#
    );
    amqp_publish(
        &app.exchange(event_type),
        lapin::ExchangeKind::Fanout,
        "",
        body.as_bytes(),
        "application/vnd.masstransit+json",
    )
    .await;
}

/// An admin connection that sees every event: waiting on it for an event proves the event
/// has been written to all of its audiences.
async fn watcher(app: &TestApp) -> SignalR {
    SignalR::connect(&app.ws_url("/hubs/admin", &format!("access_token={MASTER_KEY}")))
        .await
        .unwrap()
}

/// `POST /v1/events` with the master key: a CloudEvent of `event_type`.
async fn post_cloudevent(app: &TestApp, id: &str, event_type: &str, data: &str) -> HttpResponse {
    let body = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/conduit","type":"{event_type}","time":"2026-11-22T10:00:00Z","datacontenttype":"application/json","data":{data}}}"#
    );
    let auth = format!("Bearer {MASTER_KEY}");
    http(
        app.addr,
        "POST",
        "/v1/events",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/cloudevents+json"),
        ],
        &body,
    )
    .await
}

/// Reads until the socket closes: the messages before it (pings skipped). Panics if it stays
/// open and silent for `WAIT` — silence is not a close.
async fn until_closed(client: &mut SignalR) -> Vec<Value> {
    let mut got = Vec::new();
    loop {
        match client.next_or_close(WAIT).await {
            Next::Closed => return got,
            Next::Silent => panic!("the connection is still open after {WAIT:?}; got {got:?}"),
            Next::Message(m) if m["type"] == 6 => {}
            Next::Message(m) => got.push(m),
        }
    }
}

async fn publish_cloudevent(app: &TestApp, id: &str, event_type: &str, data: &str) {
    let body = format!(
        r#"{{"specversion":"1.0","id":"{id}","source":"/conduit","type":"{event_type}","time":"2026-11-22T10:00:00Z","datacontenttype":"application/json","data":{data}}}"#
    );
    amqp_publish(
        &app.queue,
        lapin::ExchangeKind::Topic,
        event_type,
        body.as_bytes(),
        "application/cloudevents+json",
    )
    .await;
}

#[tokio::test]
async fn notifications_hub_gets_global_events_and_nothing_of_other_keys() {
    let app = spawn_app().await;
    let a = app.create_key(1, Some("10")).await;
    let _b = app.create_key(2, Some("10")).await;
    let mut notes =
        SignalR::connect(&app.ws_url("/hubs/navigation-state", &format!("access_token={a}")))
            .await
            .unwrap();
    let mut admin = watcher(&app).await;
    publish_cloudevent(
        &app,
        "ph-1",
        "ProviderHealthChanged",
        r#"{"providerId":3,"providerName":"openai","status":"Degraded","latencyMs":812}"#,
    )
    .await;
    publish_cloudevent(&app, "mm-1", "ModelMappingChanged", r#"{"mappingId":5,"modelAlias":"fast","providerId":3,"isEnabled":true,"changeType":"Updated"}"#).await;
    publish_spend(&app, "spend-b", 2, "1", "1").await;
    publish_cloudevent(
        &app,
        "ku-2",
        "VirtualKeyUpdated",
        r#"{"keyId":2,"isEnabled":true,"changedProperties":["IsEnabled"]}"#,
    )
    .await;
    let (n1, e1) = notes.next_invocation(WAIT).await.unwrap();
    assert_eq!(
        (n1.as_str(), e1["status"].as_str(), e1["eventId"].as_str()),
        ("ProviderHealthChanged", Some("degraded"), Some("ph-1"))
    );
    assert!(e1["cursor"].is_string());
    let (n2, e2) = notes.next_invocation(WAIT).await.unwrap();
    assert_eq!(
        (n2.as_str(), e2["type"].as_str(), e2["action"].as_str()),
        ("NavigationStateUpdated", Some("provider"), Some("updated"))
    );
    let (n3, e3) = notes.next_invocation(WAIT).await.unwrap();
    assert_eq!(
        (
            n3.as_str(),
            e3["type"].as_str(),
            e3["data"]["modelAlias"].as_str()
        ),
        (
            "NavigationStateUpdated",
            Some("model_mapping"),
            Some("fast")
        )
    );
    // Key 2's spend and update are written (the admin saw them); then a global marker and key
    // 1's own update: key 1's notifications get exactly those two (and the navigation event).
    admin.until_markers(&["spend-b", "ku-2"], WAIT).await;
    publish_cloudevent(
        &app,
        "ph-marker",
        "ProviderHealthChanged",
        r#"{"providerId":3,"status":"healthy"}"#,
    )
    .await;
    publish_cloudevent(
        &app,
        "ku-1",
        "VirtualKeyUpdated",
        r#"{"keyId":1,"isEnabled":true,"changedProperties":["IsEnabled"]}"#,
    )
    .await;
    let mut got: Vec<(String, String)> = notes
        .until_markers(&["ph-marker", "ku-1"], WAIT)
        .await
        .into_iter()
        .map(|(n, e)| (n, e["eventId"].as_str().unwrap_or("").to_owned()))
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            (
                "NavigationStateUpdated".to_owned(),
                "ph-marker:nav".to_owned()
            ),
            ("ProviderHealthChanged".to_owned(), "ph-marker".to_owned()),
            ("VirtualKeyUpdated".to_owned(), "ku-1".to_owned()),
        ],
        "key 1's own VirtualKeyUpdated and the global events; nothing of key 2"
    );
}

#[tokio::test]
async fn admin_hub_sees_every_key_and_needs_an_admin_credential() {
    let app = spawn_app().await;
    let a = app.create_key(11, Some("10")).await;
    app.create_key(12, None).await;
    assert_eq!(
        upgrade_status(&app.ws_url("/hubs/admin", &format!("access_token={a}"))).await,
        401,
        "a plain key is not admin"
    );
    let mut admin = SignalR::connect(&app.ws_url(
        "/hubs/admin-notifications",
        &format!("access_token={MASTER_KEY}"),
    ))
    .await
    .unwrap();
    publish_spend(&app, "s-11", 11, "6", "6").await;
    publish_spend(&app, "s-12", 12, "1", "1").await;
    let mut seen: Vec<(String, Option<i64>)> = admin
        .until_markers(&["s-11", "s-12"], WAIT)
        .await
        .into_iter()
        .map(|(n, e)| (n, e["virtualKeyId"].as_i64()))
        .collect();
    // The alert follows its spend in key 11's stream.
    while !seen.contains(&("BudgetAlert".into(), Some(11))) {
        let (n, e) = admin
            .next_invocation(WAIT)
            .await
            .unwrap_or_else(|| panic!("no BudgetAlert of key 11; got {seen:?}"));
        seen.push((n, e["virtualKeyId"].as_i64()));
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            ("BudgetAlert".into(), Some(11)),
            ("SpendUpdate".into(), Some(11)),
            ("SpendUpdate".into(), Some(12)),
        ]
    );
}

#[tokio::test]
async fn disabling_a_key_by_event_closes_its_connection_and_refuses_the_next() {
    let app = spawn_app().await;
    let raw = app.create_key(21, None).await;
    let mut client = SignalR::connect(&app.ws_url("/hubs/events", &format!("access_token={raw}")))
        .await
        .unwrap();
    publish_cloudevent(
        &app,
        "ku-1",
        "VirtualKeyUpdated",
        r#"{"keyId":21,"isEnabled":false,"changedProperties":["IsEnabled"]}"#,
    )
    .await;
    // The connection sees its own key's update, then a Close, then the socket closes.
    let got = until_closed(&mut client).await;
    assert_eq!(got.len(), 2, "the update and a Close: {got:?}");
    assert_eq!(
        (
            got[0]["target"].as_str(),
            got[0]["arguments"][0]["eventId"].as_str()
        ),
        (Some("VirtualKeyUpdated"), Some("ku-1")),
        "{got:?}"
    );
    let close = &got[1];
    assert_eq!(close["type"], 7, "{close}");
    assert_ne!(
        close["allowReconnect"], true,
        "a revoked key must not reconnect (absent = false): {close}"
    );
    assert!(
        close["error"]
            .as_str()
            .is_some_and(|e| e.contains("disabled")),
        "{close}"
    );
    assert_eq!(
        upgrade_status(&app.ws_url("/hubs/events", &format!("access_token={raw}"))).await,
        401
    );
}

/// Conduit's task hub: object events and positional methods, task ownership through the
/// registry, SubscribeToTask's checks and the admin bypass.
#[tokio::test]
async fn task_events_reach_their_owner_on_the_tasks_hub_with_conduits_methods() {
    let app = spawn_app().await;
    let a = app.create_key(31, None).await;
    let b = app.create_key(32, None).await;
    let mut ca =
        SignalR::connect(&app.ws_url("/hubs/video-generation", &format!("access_token={a}")))
            .await
            .unwrap();
    let mut cb = SignalR::connect(&app.ws_url("/hubs/tasks", &format!("access_token={b}")))
        .await
        .unwrap();
    for (id, t, body) in [
        (
            "vr-1",
            "VideoGenerationRequested",
            r#"{"RequestId":"vid-1","VirtualKeyId":31,"Prompt":"a cat"}"#,
        ),
        (
            "vp-1",
            "VideoGenerationProgress",
            r#"{"RequestId":"vid-1","Progress":40,"Message":"rendering"}"#,
        ),
        (
            "tc-1",
            "TaskCompleted",
            r#"{"TaskId":"job-9","VirtualKeyId":31,"TaskType":"batch","Result":{"url":"https://cdn/x"}}"#,
        ),
    ] {
        publish_masstransit(&app, id, t, body).await;
    }
    let mut got = Vec::new();
    while got.len() < 4 {
        let m = ca.next_raw_message(WAIT).await.expect("task events");
        if m["type"] == 1 {
            got.push((
                m["target"].as_str().unwrap_or("").to_string(),
                m["arguments"].clone(),
            ));
        }
    }
    assert_eq!(got[0].0, "VideoGenerationRequested");
    assert_eq!(got[0].1[0]["status"], "pending");
    assert_eq!(got[1].0, "VideoGenerationProgress");
    assert_eq!(
        got[2],
        (
            "TaskProgress".to_string(),
            serde_json::json!(["vid-1", 40, "rendering"])
        )
    );
    assert_eq!(
        got[3],
        (
            "TaskCompleted".to_string(),
            serde_json::json!(["job-9", {"url": "https://cdn/x"}])
        )
    );
    // Key 31's four events are written (ca has them); a task event of key 32 published now is
    // the first thing key 32's connection receives: none of key 31's reached it.
    publish_masstransit(
        &app,
        "tp-32",
        "TaskProgress",
        r#"{"TaskId":"job-32","VirtualKeyId":32,"TaskType":"batch","Progress":1}"#,
    )
    .await;
    let first = cb.next_raw_message(WAIT).await.expect("key 32's marker");
    assert_eq!(
        (first["target"].as_str(), first["arguments"].clone()),
        (Some("TaskProgress"), serde_json::json!(["job-32", 1, null])),
        "key 32 sees none of key 31's tasks, then its own"
    );

    let denied = cb
        .invoke("SubscribeToTask", serde_json::json!(["vid-1"]))
        .await;
    assert_eq!(denied["error"], "Unauthorized access to task");
    let missing = cb
        .invoke("subscribetotask", serde_json::json!(["no-such-task"]))
        .await;
    assert_eq!(missing["error"], "Task not found");
    let state = ca
        .invoke("SubscribeToTask", serde_json::json!(["vid-1"]))
        .await;
    assert_eq!(state["result"]["status"], "running", "{state}");
    assert_eq!(state["result"]["progress"], 40);
    assert_eq!(state["result"]["virtualKeyId"], 31);
    let mut admin =
        SignalR::connect(&app.ws_url("/hubs/admin", &format!("access_token={MASTER_KEY}")))
            .await
            .unwrap();
    let any = admin
        .invoke("SubscribeToTask", serde_json::json!(["vid-1"]))
        .await;
    assert_eq!(
        any["result"]["taskId"], "vid-1",
        "admins may look at any task: {any}"
    );

    // Subscribed to vid-1 only: job-10's progress no longer reaches this /hubs/tasks connection.
    publish_masstransit(
        &app,
        "tp-2",
        "TaskProgress",
        r#"{"TaskId":"job-10","VirtualKeyId":31,"TaskType":"batch","Progress":5}"#,
    )
    .await;
    publish_masstransit(
        &app,
        "vc-1",
        "VideoGenerationCompleted",
        r#"{"RequestId":"vid-1","VideoUrl":"https://cdn/v.mp4"}"#,
    )
    .await;
    let (name, _) = ca.next_invocation(WAIT).await.unwrap();
    assert_eq!(name, "VideoGenerationCompleted", "job-10 was filtered out");
    let (name, args) = ca.next_invocation(WAIT).await.unwrap();
    assert_eq!(
        (name.as_str(), args.as_str()),
        ("TaskCompleted", Some("vid-1"))
    );
}

#[tokio::test]
async fn an_admin_narrows_to_named_keys_and_widens_again() {
    let app = spawn_app().await;
    app.create_key(41, None).await;
    app.create_key(42, None).await;
    let mut admin = SignalR::connect(&app.ws_url("/hubs/admin", &format!("api_key={MASTER_KEY}")))
        .await
        .unwrap();
    let r = admin
        .invoke("SubscribeToVirtualKey", serde_json::json!([41]))
        .await;
    assert!(r.get("error").is_none(), "{r}");
    let mut all = watcher(&app).await;
    publish_spend(&app, "n-42", 42, "1", "1").await;
    publish_cloudevent(
        &app,
        "ph-n",
        "ProviderHealthChanged",
        r#"{"providerId":1,"status":"healthy"}"#,
    )
    .await;
    // n-42 is in the admin stream before the marker n-41 is published.
    all.until_markers(&["n-42", "ph-n"], WAIT).await;
    publish_spend(&app, "n-41", 41, "1", "1").await;
    let mut seen: Vec<String> = admin
        .until_markers(&["n-41", "ph-n"], WAIT)
        .await
        .into_iter()
        .map(|(_, ev)| ev["eventId"].as_str().unwrap_or("").to_string())
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        ["n-41", "ph-n", "ph-n:nav"],
        "key 41 and the global events; key 42 was filtered out"
    );
    admin
        .invoke("UnsubscribeFromVirtualKey", serde_json::json!(["41"]))
        .await;
    publish_spend(&app, "n-42b", 42, "1", "2").await;
    let (_, ev) = admin.next_invocation(WAIT).await.unwrap();
    assert_eq!(
        ev["eventId"], "n-42b",
        "after the last unsubscribe every key is seen again"
    );
}

/// docs/events.md §6: changing a key's hash closes its open connections; the old raw key is
/// refused from then on.
#[tokio::test]
async fn changing_a_keys_hash_closes_its_connections_and_refuses_the_old_key() {
    let app = spawn_app().await;
    let raw = app.create_key(22, None).await;
    let mut client = SignalR::connect(&app.ws_url("/hubs/events", &format!("access_token={raw}")))
        .await
        .unwrap();
    publish_cloudevent(
        &app,
        "kh-1",
        "VirtualKeyUpdated",
        r#"{"keyId":22,"keyHash":"0000000000000000000000000000000000000000000000000000000000000022","changedProperties":["KeyHash"]}"#,
    )
    .await;
    let got = until_closed(&mut client).await;
    let close = got
        .iter()
        .find(|m| m["type"] == 7)
        .unwrap_or_else(|| panic!("a Close before the socket closed: {got:?}"));
    assert_ne!(
        close["allowReconnect"], true,
        "the old key must not reconnect: {close}"
    );
    assert_eq!(
        upgrade_status(&app.ws_url("/hubs/events", &format!("access_token={raw}"))).await,
        401
    );
}

/// docs/events.md §9: over `POST /v1/events` an event whose task owner is not known yet is a
/// 409 (the caller retries); once the request naming the owner is in, the same event is taken.
#[tokio::test]
async fn post_events_answers_409_for_an_unknown_task_owner_until_the_owner_is_known() {
    let app = spawn_app().await;
    app.create_key(35, None).await;
    let progress = r#"{"requestId":"vid-35","progress":10}"#;
    let r = post_cloudevent(&app, "vp-35", "VideoGenerationProgress", progress).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(
        r.json()["error"]
            .as_str()
            .is_some_and(|e| e.contains("unknown task owner")),
        "{}",
        r.body
    );
    let r = post_cloudevent(
        &app,
        "vr-35",
        "VideoGenerationRequested",
        r#"{"requestId":"vid-35","virtualKeyId":35,"prompt":"a dog"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let r = post_cloudevent(&app, "vp-35", "VideoGenerationProgress", progress).await;
    assert_eq!(r.status, 202, "the retry is taken: {}", r.body);
}

/// docs/events.md §12: progress never goes backwards within a task — neither in what clients
/// receive nor in the state `SubscribeToTask` returns.
#[tokio::test]
async fn task_progress_never_goes_backwards() {
    let app = spawn_app().await;
    let raw = app.create_key(36, None).await;
    let mut client = SignalR::connect(&app.ws_url("/hubs/events", &format!("access_token={raw}")))
        .await
        .unwrap();
    for (id, progress) in [("p-60", 60), ("p-30", 30)] {
        let r = post_cloudevent(
            &app,
            id,
            "TaskProgress",
            &format!(
                r#"{{"taskId":"batch-36","virtualKeyId":36,"taskType":"batch","progress":{progress}}}"#
            ),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    let mut got = Vec::new();
    for _ in 0..2 {
        let (name, ev) = client.next_invocation(WAIT).await.expect("task events");
        got.push((name, ev["eventId"].clone(), ev["progress"].clone()));
    }
    assert_eq!(
        got,
        [
            ("TaskProgress".into(), "p-60".into(), 60.into()),
            ("TaskProgress".into(), "p-30".into(), 60.into()),
        ],
        "a lower progress does not lower the task's"
    );
    let state = client
        .invoke("SubscribeToTask", serde_json::json!(["batch-36"]))
        .await;
    assert_eq!(state["result"]["progress"], 60, "{state}");
}

/// docs/events.md §14: on `/hubs/tasks`, `TaskCancelled(taskId, reason)` takes the reason from
/// `reason`, else `message`, else `error`.
#[tokio::test]
async fn task_cancelled_takes_its_positional_reason_from_reason_then_message_then_error() {
    let app = spawn_app().await;
    let raw = app.create_key(37, None).await;
    let mut client = SignalR::connect(&app.ws_url("/hubs/tasks", &format!("access_token={raw}")))
        .await
        .unwrap();
    let cases = [
        ("t-r", r#""reason":"r","message":"m","error":"e""#, "r"),
        ("t-m", r#""message":"m","error":"e""#, "m"),
        ("t-e", r#""error":"e""#, "e"),
    ];
    for (task, fields, _) in cases {
        let r = post_cloudevent(
            &app,
            &format!("x-{task}"),
            "TaskCancelled",
            &format!(r#"{{"taskId":"{task}","virtualKeyId":37,"taskType":"batch",{fields}}}"#),
        )
        .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    for (task, _, reason) in cases {
        let m = client.next_raw_message(WAIT).await.expect("TaskCancelled");
        assert_eq!(
            (m["target"].as_str(), m["arguments"].clone()),
            (Some("TaskCancelled"), serde_json::json!([task, reason])),
            "{m}"
        );
    }
}

/// docs/events.md §5: the key store learns a key from `VirtualKeyCreated` (hash included), so
/// the key can connect at once on every node.
#[tokio::test]
async fn a_key_created_by_event_can_connect_at_once_on_every_node() {
    let nodes = spawn_cluster(2).await;
    let raw = format!("condt_{}", unique("created"));
    let hash = herald_domain::KeyHash::of_raw(&raw);
    for n in &nodes {
        assert_eq!(
            upgrade_status(&n.ws_url("/hubs/events", &format!("access_token={raw}"))).await,
            401,
            "unknown before the event"
        );
    }
    let mut admin = watcher(&nodes[1]).await;
    publish_masstransit(
        &nodes[0],
        "kc-61",
        "VirtualKeyCreated",
        &format!(
            r#"{{"KeyId":61,"KeyHash":"{}","KeyName":"by-event","IsEnabled":true}}"#,
            hash.as_str()
        ),
    )
    .await;
    admin.until_markers(&["kc-61"], WAIT).await;
    for n in &nodes {
        let client =
            SignalR::connect(&n.ws_url("/hubs/events", &format!("access_token={raw}"))).await;
        assert!(client.is_ok(), "node {}: {:?}", n.addr, client.err());
    }
}
