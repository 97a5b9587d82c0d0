//! Issue 4, per-audience subscriptions across nodes: a node subscribes to an audience's live
//! channel only while it has a local listener (PUBSUB NUMSUB counts nodes, not clients), a node
//! without listeners of a key carries none of its traffic, and nothing leaks after many
//! connect/disconnect cycles. Two real nodes on the real Redis.
#![allow(clippy::unwrap_used)]
mod common;

use common::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(10);

async fn numsub(prefix: &str, audience: &str) -> i64 {
    let client = redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (_, n): (String, i64) = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(format!("{prefix}:{{{audience}}}:live"))
        .query_async(&mut conn)
        .await
        .unwrap();
    n
}

/// Polls until the subscriber count of `audience` is `want` (subscribe and unsubscribe are
/// asynchronous to the client's connect and close); returns the last count seen.
async fn numsub_becomes(prefix: &str, audience: &str, want: i64) -> i64 {
    let mut n = -1;
    for _ in 0..100 {
        n = numsub(prefix, audience).await;
        if n == want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    n
}

#[tokio::test]
async fn nodes_subscribe_per_audience_only_while_they_have_listeners_and_never_leak() {
    let nodes = spawn_cluster(2).await;
    let prefix = nodes[0].redis_prefix.clone();
    let k61 = nodes[0].create_key(61, None).await;
    let k62 = nodes[0].create_key(62, None).await;
    assert_eq!(numsub(&prefix, "vkey:61").await, 0);

    // Three clients of key 61 on node 0: one subscription (the node's), not three.
    let url = |n: usize, key: &str| nodes[n].ws_url("/hubs/spend", &format!("access_token={key}"));
    let mut on_0 = Vec::new();
    for _ in 0..3 {
        on_0.push(SignalR::connect(&url(0, &k61)).await.unwrap());
    }
    assert_eq!(numsub_becomes(&prefix, "vkey:61", 1).await, 1);
    assert_eq!(
        numsub(&prefix, "vkey:62").await,
        0,
        "nobody listens to key 62"
    );

    // Node 1 has no listener of key 61: it is not subscribed, so it carries none of key 61's
    // traffic, yet the clients on node 0 get it.
    publish_spend(&nodes[0], "so-1", 61, "1", "1").await;
    for c in &mut on_0 {
        let (name, ev) = c.next_invocation(WAIT).await.expect("SpendUpdate");
        assert_eq!(
            (name.as_str(), &ev["eventId"]),
            ("SpendUpdate", &"so-1".into())
        );
    }
    let mut on_1 = SignalR::connect(&url(1, &k61)).await.unwrap();
    assert_eq!(numsub_becomes(&prefix, "vkey:61", 2).await, 2);
    publish_spend(&nodes[0], "so-2", 61, "1", "2").await;
    let (_, ev) = on_1
        .next_invocation(WAIT)
        .await
        .expect("SpendUpdate on node 1");
    assert_eq!(ev["eventId"], "so-2");

    // Many short-lived clients of key 62 on node 1, some overlapping.
    for round in 0..40 {
        let a = SignalR::connect(&url(1, &k62)).await.unwrap();
        let b = SignalR::connect(&url(round % 2, &k62)).await.unwrap();
        drop(a);
        drop(b);
    }
    assert_eq!(
        numsub_becomes(&prefix, "vkey:62", 0).await,
        0,
        "key 62's subscriptions leaked after connect/disconnect cycles"
    );
    assert_eq!(numsub(&prefix, "vkey:61").await, 2, "key 61 is untouched");

    // The last listener leaving a node unsubscribes that node only.
    drop(on_1);
    assert_eq!(numsub_becomes(&prefix, "vkey:61", 1).await, 1);
    drop(on_0);
    assert_eq!(numsub_becomes(&prefix, "vkey:61", 0).await, 0);
}
