//! Issue 3 so far, end to end on the real services: global events on `/hubs/notifications`,
//! every key's events on `/hubs/admin`, and key lifecycle events closing live connections.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(1500);

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
    publish_cloudevent(
        &app,
        "ph-1",
        "ProviderHealthChanged",
        r#"{"providerId":3,"providerName":"openai","status":"Degraded","latencyMs":812}"#,
    )
    .await;
    publish_cloudevent(&app, "mm-1", "ModelMappingChanged", r#"{"mappingId":5,"modelAlias":"fast","providerId":3,"isEnabled":true,"changeType":"Updated"}"#).await;
    publish_spend(&app, "spend-b", 2, "1", "1").await;
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
    assert!(
        notes.next_invocation(QUIET).await.is_none(),
        "key 2's spend is not on key 1's notifications"
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
    let mut seen = Vec::new();
    while let Some((name, ev)) = admin.next_invocation(QUIET).await {
        seen.push((name, ev["virtualKeyId"].as_i64()));
    }
    assert!(seen.contains(&("SpendUpdate".into(), Some(11))), "{seen:?}");
    assert!(seen.contains(&("SpendUpdate".into(), Some(12))), "{seen:?}");
    assert!(seen.contains(&("BudgetAlert".into(), Some(11))), "{seen:?}");
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
    // The connection sees its own key's update, then is closed.
    let mut closed = false;
    for _ in 0..20 {
        match client.next_raw_message(WAIT).await {
            None => {
                closed = true;
                break;
            }
            Some(m) if m["type"] == 7 => {
                assert_ne!(
                    m["allowReconnect"], true,
                    "a revoked key must not reconnect (absent = false): {m}"
                );
                assert!(
                    m["error"].as_str().is_some_and(|e| e.contains("disabled")),
                    "{m}"
                );
                closed = true;
                break;
            }
            Some(_) => continue,
        }
    }
    assert!(closed, "the revoked key's connection was closed");
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
    let mt = |id: &str, t: &str, body: &str| {
        format!(
            r#"{{"messageId":"{id}","messageType":["urn:message:ConduitLLM.Core.Events:{t}"],"message":{body},"sentTime":"2026-11-22T10:00:00Z"}}"#
        )
    };
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
        let body = mt(id, t, body);
        amqp_publish(
            &app.exchange(t),
            lapin::ExchangeKind::Fanout,
            "",
            body.as_bytes(),
            "application/vnd.masstransit+json",
        )
        .await;
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
    assert!(
        cb.next_invocation(QUIET).await.is_none(),
        "key 32 sees none of key 31's tasks"
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
    let body = mt(
        "tp-2",
        "TaskProgress",
        r#"{"TaskId":"job-10","VirtualKeyId":31,"TaskType":"batch","Progress":5}"#,
    );
    amqp_publish(
        &app.exchange("TaskProgress"),
        lapin::ExchangeKind::Fanout,
        "",
        body.as_bytes(),
        "application/vnd.masstransit+json",
    )
    .await;
    let body = mt(
        "vc-1",
        "VideoGenerationCompleted",
        r#"{"RequestId":"vid-1","VideoUrl":"https://cdn/v.mp4"}"#,
    );
    amqp_publish(
        &app.exchange("VideoGenerationCompleted"),
        lapin::ExchangeKind::Fanout,
        "",
        body.as_bytes(),
        "application/vnd.masstransit+json",
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
    publish_spend(&app, "n-42", 42, "1", "1").await;
    publish_cloudevent(
        &app,
        "ph-n",
        "ProviderHealthChanged",
        r#"{"providerId":1,"status":"healthy"}"#,
    )
    .await;
    publish_spend(&app, "n-41", 41, "1", "1").await;
    let mut seen = Vec::new();
    while let Some((name, ev)) = admin.next_invocation(QUIET).await {
        seen.push((name, ev["eventId"].as_str().unwrap_or("").to_string()));
    }
    assert!(seen.iter().any(|(_, id)| id == "n-41"), "{seen:?}");
    assert!(
        seen.iter().any(|(_, id)| id == "ph-n"),
        "global events still pass: {seen:?}"
    );
    assert!(
        !seen.iter().any(|(_, id)| id == "n-42"),
        "key 42 was filtered out: {seen:?}"
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
