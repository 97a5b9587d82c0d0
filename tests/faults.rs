//! Issue 4, consumer faults (docs/reliability.md, invariant 1): while Redis or PostgreSQL is down, `herald
//! consume` takes no message off the queue for good — nothing is acked or dead-lettered before it
//! is durable — and it resumes by itself when the dependency returns; every event then reaches
//! the client exactly once and every alert fires once. Real processes, a private redis-server
//! (stopped and started on the same data dir) and a TCP proxy that cuts PostgreSQL.
#![allow(clippy::unwrap_used)]
mod common;

use common::process::*;
use common::*;
use lapin::options::QueueDeclareOptions;
use std::collections::HashMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(20);

/// Ready messages in `queue` (a passive declare).
async fn ready(queue: &str) -> u32 {
    let conn = lapin::Connection::connect(AMQP_URL, Default::default())
        .await
        .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
    q.message_count()
}

/// Counts invocations by (target, eventId) until `want` distinct events arrived; then publishes
/// `marker` (a SpendUpdated of the same key that crosses nothing) and counts on until it
/// arrives: a duplicate of anything before it would come first (the key's stream order), so no
/// fixed window is needed. The marker is not in the result.
async fn collect(
    client: &mut SignalR,
    want: usize,
    exchange: &str,
    marker: &str,
) -> HashMap<(String, String), usize> {
    let mut seen: HashMap<(String, String), usize> = HashMap::new();
    let mut marked = false;
    loop {
        if seen.len() >= want && !marked {
            publish_mt(exchange, marker, &[]).await;
            marked = true;
        }
        let (name, args) = client
            .next_invocation(WAIT)
            .await
            .unwrap_or_else(|| panic!("only {seen:?} arrived (marker sent: {marked})"));
        let id = args["eventId"].as_str().unwrap_or_default().to_owned();
        if id == "marker" {
            return seen;
        }
        *seen.entry((name, id)).or_default() += 1;
    }
}

/// Waits (bounded) until the consumer has retried a held message at least twice.
async fn wait_for_retries(consumer: &Herald) {
    let mut retries = 0.0;
    for _ in 0..100 {
        retries = sample(
            &consumer.metrics().await,
            "herald_consumer_retries_total",
            &[],
        );
        if retries >= 2.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        retries >= 2.0,
        "the consumer retries with backoff: {retries}"
    );
}

fn env_with(
    env: &[(&'static str, String)],
    set: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = env
        .iter()
        .filter(|(k, _)| !set.iter().any(|(s, _)| s == k))
        .cloned()
        .collect();
    out.extend(set.iter().cloned());
    out
}

fn queue_of(env: &[(&'static str, String)]) -> String {
    env.iter()
        .find(|(k, _)| *k == "HERALD_AMQP_QUEUE")
        .map(|(_, v)| v.clone())
        .unwrap()
}

#[tokio::test]
async fn the_consumer_holds_messages_while_redis_is_down_and_delivers_each_once_after() {
    let port = free_port();
    let dir = std::env::temp_dir().join(unique("herald-faults-redis-"));
    let mut redis = PrivateRedis::start_on(port, dir.clone());
    let real = real_env("faults-consumer").await;
    let (env, ns) = (real.vars.clone(), real.ns.clone());
    let env = env_with(
        &env,
        &[("HERALD_REDIS_URL", format!("redis://127.0.0.1:{port}/"))],
    );
    let queue = queue_of(&env);
    let consumer = Herald::start(&["consume"], &env);
    consumer.wait_ready().await;
    let gateway = Herald::start(
        &["serve"],
        &env_with(&env, &[("HERALD_NODE_ID", "faults-gateway".into())]),
    );
    gateway.wait_ready().await;
    let key = gateway.create_key(21, "10").await;
    let mut client = SignalR::connect(&format!(
        "ws://{}/hubs/spend?access_token={key}",
        gateway.addr
    ))
    .await
    .unwrap();
    let exchange = format!("{ns}:SpendUpdated");
    publish_mt(&exchange, &masstransit_spend("r-1", 21, "1", "1"), &[]).await;
    let (name, _) = client.next_invocation(WAIT).await.expect("r-1");
    assert_eq!(name, "SpendUpdate");

    redis.stop();
    // 6.00 of 10: crosses 50%. Published while Redis is down.
    publish_mt(&exchange, &masstransit_spend("r-2", 21, "5", "6"), &[]).await;
    publish_mt(&exchange, &masstransit_spend("r-3", 21, "1", "7"), &[]).await;
    // The consumer holds r-2 (unacked, retrying) and does not take r-3 past it: nothing more
    // is consumed, nothing dead-lettered, until Redis is back.
    wait_for_retries(&consumer).await;
    let consumed = |m: &str| sample(m, "herald_messages_consumed_total", &[]);
    assert_eq!(
        consumed(&consumer.metrics().await),
        1.0,
        "only r-1 was acked"
    );
    assert_eq!(
        ready(&format!("{queue}.dead")).await,
        0,
        "nothing dead-lettered"
    );

    let _redis = PrivateRedis::start_on(port, dir);
    let marker = masstransit_spend("marker", 21, "0", "7");
    let seen = collect(&mut client, 3, &exchange, &marker).await;
    assert_eq!(
        seen,
        HashMap::from([
            (("SpendUpdate".into(), "r-2".into()), 1),
            (("SpendUpdate".into(), "r-3".into()), 1),
            (
                (
                    "BudgetAlert".into(),
                    seen.keys()
                        .find(|(n, _)| n == "BudgetAlert")
                        .map(|(_, id)| id.clone())
                        .unwrap_or_default()
                ),
                1
            ),
        ]),
        "each event once, one alert"
    );
    assert_eq!(ready(&queue).await, 0);
    assert_eq!(ready(&format!("{queue}.dead")).await, 0);
}

// Multi-threaded: the proxy's tasks must run while the test blocks on a starting process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_holds_messages_while_postgres_is_unreachable_and_resumes_by_itself() {
    let proxy = FaultProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let real = real_env("faults-pg").await;
    let (env, ns) = (real.vars.clone(), real.ns.clone());
    let database = env
        .iter()
        .find(|(k, _)| *k == "HERALD_DATABASE_URL")
        .map(|(_, v)| v.clone())
        .unwrap();
    let through_proxy = database.replace("127.0.0.1:5432", &proxy.addr.to_string());
    let queue = queue_of(&env);
    // The consumer reaches PostgreSQL only through the proxy; the gateway directly.
    let consumer = Herald::start(
        &["consume"],
        &env_with(&env, &[("HERALD_DATABASE_URL", through_proxy)]),
    );
    consumer.wait_ready().await;
    let gateway = Herald::start(
        &["serve"],
        &env_with(&env, &[("HERALD_NODE_ID", "faults-pg-gateway".into())]),
    );
    gateway.wait_ready().await;
    let key = gateway.create_key(22, "10").await;
    let mut client = SignalR::connect(&format!(
        "ws://{}/hubs/spend?access_token={key}",
        gateway.addr
    ))
    .await
    .unwrap();
    let exchange = format!("{ns}:SpendUpdated");
    publish_mt(&exchange, &masstransit_spend("p-1", 22, "1", "1"), &[]).await;
    client.next_invocation(WAIT).await.expect("p-1");

    proxy.cut();
    publish_mt(&exchange, &masstransit_spend("p-2", 22, "7", "8"), &[]).await;
    publish_mt(&exchange, &masstransit_spend("p-3", 22, "1", "9"), &[]).await;
    wait_for_retries(&consumer).await;
    assert_eq!(
        sample(
            &consumer.metrics().await,
            "herald_messages_consumed_total",
            &[]
        ),
        1.0,
        "only p-1 was acked"
    );
    // Nothing reached the client while the store was unreachable.
    let early = client.next_invocation(Duration::from_millis(1000)).await;
    assert!(early.is_none(), "{early:?}");
    let unready = http(consumer.addr, "GET", "/readyz", &[], "").await;
    assert_eq!(unready.status, 503, "{}", unready.body);
    assert!(unready.body.contains("database"), "{}", unready.body);
    assert_eq!(
        ready(&format!("{queue}.dead")).await,
        0,
        "nothing dead-lettered"
    );

    proxy.restore();
    let marker = masstransit_spend("marker", 22, "0", "9");
    let seen = collect(&mut client, 4, &exchange, &marker).await;
    let count = |name: &str| {
        seen.iter()
            .filter(|((n, _), _)| n == name)
            .map(|(_, c)| *c)
            .collect::<Vec<_>>()
    };
    // 8.00 of 10 crosses 50% and 75%: two alerts, each once; p-2 and p-3 once each.
    assert_eq!(count("SpendUpdate"), [1, 1], "{seen:?}");
    assert_eq!(count("BudgetAlert"), [1, 1], "{seen:?}");
    assert_eq!(ready(&queue).await, 0);
    consumer.wait_ready().await;
}
