//! Against the real RabbitMQ (HERALD_TEST_AMQP_URL, default the local broker). Every test
//! uses its own queue and exchanges (`herald.test.<random>`) and deletes them at the end.
#![allow(clippy::unwrap_used)]
use herald_backplane::{
    Backplane, Mailbox, MailboxReceiver, MemoryBackplane, Received, Subscription,
};
use herald_domain::tls::ClientTls;
use herald_domain::{Audience, KeyHash, KeyId, OutboundEvent, VirtualKey};
use herald_ingest::amqp::{self, AmqpConfig, Consumer, ConsumerStats, EnvelopeKind};
use herald_ingest::{Pipeline, PipelineConfig};
use herald_store::hooked::{Call, Hooked};
use herald_store::{MemoryStore, SharedStore, Store, StoreError};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeDeleteOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use rust_decimal::Decimal;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The test command's run tag (`HERALD_TEST_RUN`, docs/testing.md) goes into every name this
/// test creates, so `scripts/test` can count and remove what its run left behind.
fn run_tag() -> String {
    std::env::var("HERALD_TEST_RUN")
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        .collect()
}

const WAIT: Duration = Duration::from_secs(15);

fn url() -> String {
    std::env::var("HERALD_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn unique() -> String {
    format!(
        "herald.test.{}{}",
        run_tag(),
        hex::encode(rand::random::<[u8; 6]>())
    )
}

/// Until `cond` holds, or panics after [`WAIT`]. Polling, not a timing assertion.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Broker {
    conn: Connection,
    ch: Channel,
}

impl Broker {
    async fn new() -> Self {
        let conn = Connection::connect(&url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ at HERALD_TEST_AMQP_URL");
        let ch = conn.create_channel().await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        Self { conn, ch }
    }

    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        props: BasicProperties,
    ) {
        let c = self
            .ch
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                body,
                props,
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert_eq!(c, lapin::Confirmation::Ack(None), "routed and confirmed");
    }

    /// Ready (not unacked) messages in `queue`, once no consumer is attached any more: the
    /// broker returns a departed consumer's unacked messages asynchronously (quorum queues go
    /// through Raft), so the count is read only after it has let go of the consumer.
    async fn count(&self, queue: &str) -> u32 {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let ch = self.conn.create_channel().await.unwrap();
            let q = ch
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .unwrap();
            let _ = ch.close(200, "OK".into()).await;
            if q.consumer_count() == 0 {
                return q.message_count();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{queue} still has a consumer"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn cleanup(&self, config: &AmqpConfig) {
        let ch = self.conn.create_channel().await.unwrap();
        let dead = amqp::dead_letter_name(&config.queue);
        let retry = amqp::retry_queue_name(&config.queue);
        for q in [&config.queue, &dead, &retry] {
            let _ = ch
                .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
                .await;
        }
        for e in config.bind.iter().chain([&config.queue, &dead]) {
            let _ = ch
                .exchange_delete(e.as_str().into(), ExchangeDeleteOptions::default())
                .await;
        }
        let _ = self.conn.close(200, "OK".into()).await;
    }
}

fn config(base: &str) -> AmqpConfig {
    AmqpConfig {
        url: url(),
        queue: base.to_owned(),
        // A private "MassTransit" exchange: binding the real ConduitLLM ones would let
        // parallel tests (and other herald instances on this broker) see each other's events.
        bind: vec![mt_exchange(base), base.to_owned()],
        prefetch: 10,
        tls: ClientTls::default(),
    }
}

fn mt_exchange(base: &str) -> String {
    format!("{base}.Events:SpendUpdated")
}

fn mt_body(base: &str, id: &str, message: &str) -> Vec<u8> {
    format!(
        r#"{{"messageId":"{id}","messageType":["urn:message:{}"],"message":{message},"sentTime":"2026-01-02T03:04:05Z","headers":{{}}}}"#,
        mt_exchange(base)
    )
    .into_bytes()
}

fn mt_props() -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/vnd.masstransit+json".into())
        .with_delivery_mode(2)
}

struct Running {
    shutdown: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    stats: Arc<ConsumerStats>,
    task: JoinHandle<()>,
}

struct Node {
    store: SharedStore,
    backplane: Arc<MemoryBackplane>,
    admin: MailboxReceiver,
    _sub: Subscription,
}

impl Node {
    async fn new(store: SharedStore) -> Self {
        let backplane = Arc::new(MemoryBackplane::new(10_000));
        let (mb, admin) = Mailbox::new(1 << 24);
        let sub = backplane.subscribe(Audience::Admin, mb).await.unwrap();
        Self {
            store,
            backplane,
            admin,
            _sub: sub,
        }
    }

    async fn start(&self, config: &AmqpConfig) -> Running {
        let pipeline = Pipeline::new(
            PipelineConfig::default(),
            self.store.clone(),
            self.backplane.clone(),
        );
        let consumer = Consumer::new(config.clone(), pipeline);
        let stats = consumer.stats();
        let (shutdown, rx) = watch::channel(false);
        let ready = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(consumer.run(rx, ready.clone()));
        eventually("the consumer to become ready", || {
            ready.load(Ordering::SeqCst)
        })
        .await;
        Running {
            shutdown,
            ready,
            stats,
            task,
        }
    }

    /// The next event the admin audience receives, if one arrives within `within`.
    async fn next(&mut self, within: Duration) -> Option<Arc<OutboundEvent>> {
        match tokio::time::timeout(within, self.admin.recv()).await {
            Ok(Received::Delivery(d)) => Some(d.event),
            _ => None,
        }
    }

    /// Events up to and including the one with id `last`.
    async fn until(&mut self, last: &str) -> Vec<Arc<OutboundEvent>> {
        let mut got = vec![];
        loop {
            let ev = self
                .next(WAIT)
                .await
                .unwrap_or_else(|| panic!("no event {last}; got {:?}", names(&got)));
            let done = ev.event_id.as_str() == last;
            got.push(ev);
            if done {
                return got;
            }
        }
    }
}

fn names(evs: &[Arc<OutboundEvent>]) -> Vec<String> {
    evs.iter()
        .map(|e| format!("{}:{}", e.name, e.event_id))
        .collect()
}

impl Running {
    async fn stop(self) {
        self.shutdown.send(true).unwrap();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("consumer stops")
            .unwrap();
        assert!(
            !self.ready.load(Ordering::SeqCst),
            "not ready after shutdown"
        );
    }
}

async fn put_key(store: &dyn Store, id: i64, budget: &str) {
    let mut k = VirtualKey::new(
        KeyId::new(id).unwrap(),
        KeyHash::of_raw(&format!("condt_{id}")),
        "k",
    );
    k.budget = Some(Decimal::from_str(budget).unwrap());
    store.put_key(&k).await.unwrap();
}

#[tokio::test]
async fn topology_is_idempotent_and_publish_event_routes_both_envelopes() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    amqp::declare_topology(&broker.ch, &cfg).await.unwrap();
    amqp::declare_topology(&broker.ch, &cfg).await.unwrap();
    // And on a fresh channel after the first one has been used.
    let ch = broker.conn.create_channel().await.unwrap();
    amqp::declare_topology(&ch, &cfg).await.unwrap();

    let body =
        serde_json::from_str(r#"{"keyId":3,"amount":0.000123,"newTotalSpend":12.50}"#).unwrap();
    amqp::publish_event(
        &url(),
        &base,
        "SpendUpdated",
        &body,
        "ce-1",
        EnvelopeKind::CloudEvents,
        &ClientTls::default(),
    )
    .await
    .unwrap();
    amqp::publish_event(
        &url(),
        &base,
        &mt_exchange(&base),
        &body,
        "mt-1",
        EnvelopeKind::MassTransit,
        &ClientTls::default(),
    )
    .await
    .unwrap();
    assert_eq!(broker.count(&base).await, 2, "both wait in the queue");
    // Nothing is bound to an exchange nobody declared a binding for: the caller hears of it.
    let err = amqp::publish_event(
        &url(),
        &base,
        &format!("{base}.Other:SpendUpdated"),
        &body,
        "x",
        EnvelopeKind::MassTransit,
        &ClientTls::default(),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no queue is bound"), "{err}");
    assert!(
        amqp::publish_event(
            &url(),
            &base,
            "bad type!",
            &body,
            "x",
            EnvelopeKind::CloudEvents,
            &ClientTls::default()
        )
        .await
        .is_err()
    );

    let mut node = Node::new(Arc::new(MemoryStore::new())).await;
    let run = node.start(&cfg).await;
    let a = node.next(WAIT).await.unwrap();
    let b = node.next(WAIT).await.unwrap();
    let mut ids = [a.event_id.to_string(), b.event_id.to_string()];
    ids.sort();
    assert_eq!(ids, ["ce-1", "mt-1"]);
    assert!(
        a.payload
            .get()
            .contains(r#""newSpend":0.000123,"totalSpend":12.50"#),
        "{}",
        a.payload.get()
    );
    run.stop().await;
    assert_eq!(broker.count(&base).await, 0);
    // publish_event declared the exchange it could not route through; remove it too.
    broker
        .ch
        .exchange_delete(
            format!("{base}.Other:SpendUpdated").as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    broker.cleanup(&cfg).await;
}

#[tokio::test]
async fn masstransit_spend_updated_is_processed_and_acked() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    let mut node = Node::new(Arc::new(MemoryStore::new())).await;
    let run = node.start(&cfg).await;
    assert!(run.ready.load(Ordering::SeqCst));
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut headers = FieldTable::default();
    headers.insert("traceparent".into(), AMQPValue::LongString(tp.into()));
    broker
        .publish(
            &mt_exchange(&base),
            "",
            &mt_body(
                &base,
                "mt-1",
                r#"{"KeyId":42,"Amount":0.5,"NewTotalSpend":10.50,"Model":"gpt-4o"}"#,
            ),
            mt_props().with_headers(headers),
        )
        .await;
    let ev = node.next(WAIT).await.expect("SpendUpdate");
    assert_eq!(ev.name.name(), "SpendUpdate");
    assert_eq!(ev.event_id.as_str(), "mt-1");
    assert_eq!(ev.key_id, KeyId::new(42).ok());
    assert_eq!(
        ev.traceparent.as_deref(),
        Some(tp),
        "trace context from the AMQP headers"
    );
    assert_eq!(
        ev.payload.get(),
        r#"{"eventId":"mt-1","timestamp":"2026-01-02T03:04:05Z","virtualKeyId":42,"newSpend":0.5,"totalSpend":10.50,"model":"gpt-4o","trend":"stable","burnRatePerHour":7.055453}"#
    );
    let stats = run.stats.clone();
    eventually("the ack", || stats.processed.load(Ordering::SeqCst) == 1).await;
    run.stop().await;
    assert_eq!(
        broker.count(&base).await,
        0,
        "acked: nothing comes back after the channel closes"
    );
    assert_eq!(broker.count(&amqp::dead_letter_name(&base)).await, 0);
    broker.cleanup(&cfg).await;
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_unchanged_and_the_next_good_one_flows() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    let mut node = Node::new(Arc::new(MemoryStore::new())).await;
    let run = node.start(&cfg).await;

    let garbage = b"\x00{not json".to_vec();
    let mut headers = FieldTable::default();
    headers.insert("x-custom".into(), AMQPValue::LongString("kept".into()));
    let garbage_props = BasicProperties::default()
        .with_message_id("garbage-1".into())
        .with_headers(headers);
    broker
        .publish(&base, "SpendUpdated", &garbage, garbage_props.clone())
        .await;
    let negative = mt_body(
        &base,
        "bad-2",
        r#"{"keyId":1,"amount":-5,"newTotalSpend":1}"#,
    );
    broker
        .publish(&mt_exchange(&base), "", &negative, mt_props())
        .await;
    let good = mt_body(
        &base,
        "good-3",
        r#"{"keyId":1,"amount":5,"newTotalSpend":6}"#,
    );
    broker
        .publish(&mt_exchange(&base), "", &good, mt_props())
        .await;

    let evs = node.until("good-3").await;
    assert_eq!(names(&evs), ["SpendUpdate:good-3"]);
    let stats = run.stats.clone();
    eventually("the acks", || stats.processed.load(Ordering::SeqCst) == 1).await;
    // Different messages are processed concurrently: the bad ones may finish after the good.
    let dead_count = run.stats.clone();
    eventually("the dead letters", || {
        dead_count.dead_lettered.load(Ordering::SeqCst) == 2
    })
    .await;
    run.stop().await;
    assert_eq!(broker.count(&base).await, 0);

    let dead = amqp::dead_letter_name(&base);
    assert_eq!(broker.count(&dead).await, 2);
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            broker
                .ch
                .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // In the order they were dead-lettered, which concurrency leaves open.
    got.sort_by_key(|m| m.delivery.data != garbage);
    let second = got.pop().unwrap();
    let first = got.pop().unwrap();
    let h = first.delivery.properties.headers().clone().unwrap();
    assert_eq!(first.delivery.data, garbage, "body unchanged");
    assert!(
        amqp::header_text(&h, "x-herald-reason")
            .unwrap()
            .starts_with("not valid JSON")
    );
    assert_eq!(
        amqp::header_text(&h, "x-custom").as_deref(),
        Some("kept"),
        "original headers kept"
    );
    assert_eq!(
        first
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("garbage-1")
    );
    assert_eq!(amqp::header_text(&h, "x-herald-event-id"), None);
    let h = second.delivery.properties.headers().clone().unwrap();
    assert_eq!(second.delivery.data, negative);
    assert_eq!(
        amqp::header_text(&h, "x-herald-reason").as_deref(),
        Some("amount is negative")
    );
    assert_eq!(
        amqp::header_text(&h, "x-herald-event-id").as_deref(),
        Some("bad-2")
    );
    assert_eq!(
        second
            .delivery
            .properties
            .content_type()
            .as_ref()
            .map(|s| s.as_str()),
        Some("application/vnd.masstransit+json")
    );
    broker.cleanup(&cfg).await;
}

#[tokio::test]
async fn a_redelivered_message_yields_one_spend_update_and_one_alert() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    let store: SharedStore = Arc::new(MemoryStore::new());
    put_key(store.as_ref(), 1, "100").await;
    let mut node = Node::new(store).await;
    let run = node.start(&cfg).await;
    let body = mt_body(
        &base,
        "dup-1",
        r#"{"keyId":1,"amount":80,"newTotalSpend":80}"#,
    );
    broker
        .publish(&mt_exchange(&base), "", &body, mt_props())
        .await;
    broker
        .publish(&mt_exchange(&base), "", &body, mt_props())
        .await;
    // A later message marks the end: everything the duplicates caused has arrived before it.
    let sentinel = mt_body(
        &base,
        "sentinel",
        r#"{"keyId":2,"amount":1,"newTotalSpend":1}"#,
    );
    broker
        .publish(&mt_exchange(&base), "", &sentinel, mt_props())
        .await;
    let evs = node.until("sentinel").await;
    let alert_id = herald_domain::budget::alert_event_id(
        KeyId::new(1).unwrap(),
        chrono::DateTime::UNIX_EPOCH,
        75,
        1,
    );
    assert_eq!(
        names(&evs),
        [
            "SpendUpdate:dup-1".to_owned(),
            format!("BudgetAlert:{alert_id}"),
            "SpendUpdate:sentinel".to_owned()
        ]
    );
    let stats = run.stats.clone();
    eventually("the acks", || stats.processed.load(Ordering::SeqCst) == 3).await;
    // The repeat is acked but said: counted as a duplicate, not dropped in silence.
    assert_eq!(run.stats.duplicates.load(Ordering::SeqCst), 1);
    run.stop().await;
    assert_eq!(broker.count(&base).await, 0);
    broker.cleanup(&cfg).await;
}

/// A store that is unavailable while `down` is set (adding and deleting keys still work);
/// counts the calls it refused.
#[derive(Clone)]
struct Flaky {
    down: Arc<AtomicBool>,
    refused: Arc<AtomicUsize>,
    store: SharedStore,
}

impl Flaky {
    fn new(down: bool) -> Self {
        let down = Arc::new(AtomicBool::new(down));
        let refused = Arc::new(AtomicUsize::new(0));
        let (is_down, count) = (down.clone(), refused.clone());
        let store = Hooked::new(move |call| {
            let refuse = !matches!(call, Call::PutKey(_) | Call::DeleteKey(_))
                && is_down.load(Ordering::SeqCst);
            if refuse {
                count.fetch_add(1, Ordering::SeqCst);
            }
            std::future::ready(if refuse {
                Err(StoreError::Unavailable("test outage".into()))
            } else {
                Ok(())
            })
        });
        Self {
            down,
            refused,
            store: Arc::new(store),
        }
    }
}

#[tokio::test]
async fn a_transient_failure_holds_the_message_until_the_store_recovers() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    let store = Flaky::new(true);
    let mut node = Node::new(store.store.clone()).await;
    let run = node.start(&cfg).await;
    broker
        .publish(
            &mt_exchange(&base),
            "",
            &mt_body(&base, "t-1", r#"{"keyId":1,"amount":1,"newTotalSpend":1}"#),
            mt_props(),
        )
        .await;
    broker
        .publish(
            &mt_exchange(&base),
            "",
            &mt_body(&base, "t-2", r#"{"keyId":1,"amount":1,"newTotalSpend":2}"#),
            mt_props(),
        )
        .await;
    let s = store.clone();
    eventually("several refused attempts", || {
        s.refused.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert!(
        node.admin.try_recv().is_none(),
        "nothing published while the store is down"
    );
    assert_eq!(run.stats.processed.load(Ordering::SeqCst), 0);
    assert!(
        run.ready.load(Ordering::SeqCst),
        "still consuming: the dependency is what is down"
    );
    store.down.store(false, Ordering::SeqCst);
    // In order, each exactly once.
    let evs = node.until("t-2").await;
    assert_eq!(names(&evs), ["SpendUpdate:t-1", "SpendUpdate:t-2"]);
    let stats = run.stats.clone();
    eventually("the acks", || stats.processed.load(Ordering::SeqCst) == 2).await;
    assert!(run.stats.retries.load(Ordering::SeqCst) >= 3);
    assert_eq!(run.stats.dead_lettered.load(Ordering::SeqCst), 0);
    run.stop().await;
    assert_eq!(broker.count(&base).await, 0);
    broker.cleanup(&cfg).await;
}

#[tokio::test]
async fn shutdown_while_retrying_leaves_the_message_in_the_queue() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    let store = Flaky::new(true);
    let mut node = Node::new(store.store.clone()).await;
    let run = node.start(&cfg).await;
    broker
        .publish(
            &mt_exchange(&base),
            "",
            &mt_body(&base, "s-1", r#"{"keyId":1,"amount":1,"newTotalSpend":1}"#),
            mt_props(),
        )
        .await;
    let s = store.clone();
    eventually("a refused attempt", || {
        s.refused.load(Ordering::SeqCst) >= 2
    })
    .await;
    run.stop().await;
    // Not acked: back in the queue once the consumer is gone.
    assert_eq!(broker.count(&base).await, 1);
    assert!(node.admin.try_recv().is_none());

    store.down.store(false, Ordering::SeqCst);
    let run = node.start(&cfg).await;
    let evs = node.until("s-1").await;
    assert_eq!(names(&evs), ["SpendUpdate:s-1"]);
    let stats = run.stats.clone();
    eventually("the ack", || stats.processed.load(Ordering::SeqCst) == 1).await;
    assert_eq!(run.stats.redelivered.load(Ordering::SeqCst), 1);
    run.stop().await;
    assert_eq!(broker.count(&base).await, 0);
    broker.cleanup(&cfg).await;
}

#[tokio::test]
async fn the_consumer_recovers_when_the_broker_cancels_it() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    let mut node = Node::new(Arc::new(MemoryStore::new())).await;
    let run = node.start(&cfg).await;
    // Deleting the queue under the consumer makes the broker cancel it; the consumer must
    // reconnect, declare the topology again and carry on.
    broker
        .ch
        .queue_delete(base.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    let stats = run.stats.clone();
    eventually("a reconnect", || {
        stats.reconnects.load(Ordering::SeqCst) >= 1
    })
    .await;
    let ready = run.ready.clone();
    eventually("ready again", || ready.load(Ordering::SeqCst)).await;
    broker
        .publish(
            &mt_exchange(&base),
            "",
            &mt_body(&base, "r-1", r#"{"keyId":1,"amount":1,"newTotalSpend":1}"#),
            mt_props(),
        )
        .await;
    let evs = node.until("r-1").await;
    assert_eq!(names(&evs), ["SpendUpdate:r-1"]);
    run.stop().await;
    broker.cleanup(&cfg).await;
}

/// Closes this test's consumer connection from the broker side (`rabbitmqctl`, found by the
/// queue name in its connection name): how many were closed, or `Err` when rabbitmqctl is not
/// usable here.
async fn kill_connection(queue: &str) -> Result<usize, String> {
    let queue = queue.to_owned();
    tokio::task::spawn_blocking(move || {
        let run = |args: &[&str]| -> Result<String, String> {
            let o = std::process::Command::new("rabbitmqctl")
                .args(args)
                .output()
                .map_err(|e| format!("rabbitmqctl: {e}"))?;
            if !o.status.success() {
                return Err(format!(
                    "rabbitmqctl {args:?}: {} {}",
                    o.status,
                    String::from_utf8_lossy(&o.stderr).trim()
                ));
            }
            Ok(String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let list = run(&["-q", "list_connections", "pid", "client_properties"])?;
        let mut killed = 0;
        let needle = format!("herald consume {queue}\"");
        for line in list.lines().filter(|l| l.contains(&needle)) {
            let Some((pid, _)) = line.split_once('\t') else {
                continue;
            };
            run(&["-q", "close_connection", pid, "test"])?;
            killed += 1;
        }
        Ok(killed)
    })
    .await
    .map_err(|e| e.to_string())?
}

/// A test that cannot run here: fails under the test command or CI (`HERALD_TEST_STRICT`,
/// `CI`), else says so on the real stderr (not the captured output) so the skip is visible.
fn skip(test: &str, why: &str) {
    let strict = ["HERALD_TEST_STRICT", "CI"]
        .iter()
        .any(|k| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false"));
    assert!(
        !strict,
        "{test}: precondition missing ({why}); HERALD_TEST_STRICT/CI make that a failure"
    );
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED {test}: {why}");
}

#[tokio::test]
async fn a_message_held_across_a_lost_connection_is_processed_once() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    let store = Flaky::new(true);
    let mut node = Node::new(store.store.clone()).await;
    let run = node.start(&cfg).await;
    broker
        .publish(
            &mt_exchange(&base),
            "",
            &mt_body(&base, "c-1", r#"{"keyId":1,"amount":1,"newTotalSpend":1}"#),
            mt_props(),
        )
        .await;
    let s = store.clone();
    eventually("a refused attempt", || {
        s.refused.load(Ordering::SeqCst) >= 1
    })
    .await;
    match kill_connection(&base).await {
        Ok(0) => panic!("no broker connection named after this consumer's queue {base}"),
        Ok(_) => {}
        Err(why) => {
            run.stop().await;
            broker.cleanup(&cfg).await;
            skip(
                "a_message_held_across_a_lost_connection_is_processed_once",
                &why,
            );
            return;
        }
    }
    let stats = run.stats.clone();
    eventually("the consumer to notice and reconnect", || {
        stats.reconnects.load(Ordering::SeqCst) >= 1
    })
    .await;
    let ready = run.ready.clone();
    eventually("ready again", || ready.load(Ordering::SeqCst)).await;
    store.down.store(false, Ordering::SeqCst);
    broker
        .publish(
            &mt_exchange(&base),
            "",
            &mt_body(&base, "c-2", r#"{"keyId":1,"amount":1,"newTotalSpend":2}"#),
            mt_props(),
        )
        .await;
    let evs = node.until("c-2").await;
    assert_eq!(names(&evs), ["SpendUpdate:c-1", "SpendUpdate:c-2"]);
    let stats = run.stats.clone();
    eventually("the acks", || stats.processed.load(Ordering::SeqCst) == 2).await;
    assert!(
        run.stats.redelivered.load(Ordering::SeqCst) >= 1,
        "c-1 came back from the broker"
    );
    run.stop().await;
    assert_eq!(broker.count(&base).await, 0);
    broker.cleanup(&cfg).await;
}

/// Throughput of one consumer with the in-memory store and backplane (not a pass/fail
/// target; run with `cargo test --release -p herald-ingest --test amqp -- --ignored --nocapture`).
#[tokio::test]
#[ignore]
async fn throughput_in_memory() {
    const N: u64 = 20_000;
    let base = unique();
    let mut cfg = config(&base);
    cfg.prefetch = 500;
    let broker = Broker::new().await;
    amqp::declare_topology(&broker.ch, &cfg).await.unwrap();
    let store: SharedStore = Arc::new(MemoryStore::new());
    for k in 1..=100 {
        put_key(store.as_ref(), k, "1000").await;
    }
    for i in 0..N {
        let body = mt_body(
            &base,
            &format!("p-{i}"),
            &format!(
                r#"{{"keyId":{},"amount":0.01,"newTotalSpend":{}.5}}"#,
                i % 100 + 1,
                i / 100
            ),
        );
        drop(
            broker
                .ch
                .basic_publish(
                    mt_exchange(&base).as_str().into(),
                    "".into(),
                    BasicPublishOptions::default(),
                    &body,
                    mt_props(),
                )
                .await
                .unwrap(),
        );
    }
    broker.ch.wait_for_confirms().await.unwrap();
    let node = Node::new(store).await;
    let started = std::time::Instant::now();
    let run = node.start(&cfg).await;
    let stats = run.stats.clone();
    eventually("all processed", || {
        stats.processed.load(Ordering::SeqCst) == N
    })
    .await;
    let secs = started.elapsed().as_secs_f64();
    eprintln!("{N} SpendUpdated in {secs:.2}s: {:.0}/s", N as f64 / secs);
    run.stop().await;
    broker.cleanup(&cfg).await;
}

/// A task event that arrives before the event naming its key is deferred through
/// `<queue>.retry` and delivered once the owner is known; one whose owner never shows up is
/// dead-lettered after MAX_DEFERRALS attempts with its reason.
#[tokio::test]
async fn task_events_wait_for_their_owner_within_a_bounded_window() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    let mut node = Node::new(Arc::new(MemoryStore::new())).await;
    let run = node.start(&cfg).await;
    let ce = |id: &str, t: &str, data: &str| {
        format!(r#"{{"specversion":"1.0","id":"{id}","source":"/t","type":"{t}","time":"2026-01-02T03:04:05Z","data":{data}}}"#).into_bytes()
    };
    let props = BasicProperties::default().with_content_type("application/cloudevents+json".into());
    broker
        .publish(
            &base,
            "ImageGenerationProgress",
            &ce(
                "late-1",
                "ImageGenerationProgress",
                r#"{"taskId":"img-late","progress":10}"#,
            ),
            props.clone(),
        )
        .await;
    broker
        .publish(
            &base,
            "ImageGenerationProgress",
            &ce(
                "orphan-1",
                "ImageGenerationProgress",
                r#"{"taskId":"nobody","progress":10}"#,
            ),
            props.clone(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker
        .publish(
            &base,
            "ImageGenerationCompleted",
            &ce(
                "own-1",
                "ImageGenerationCompleted",
                r#"{"taskId":"img-late","virtualKeyId":9}"#,
            ),
            props.clone(),
        )
        .await;
    let got = node.until("late-1").await;
    assert_eq!(
        names(&got),
        [
            "ImageGenerationCompleted:own-1",
            "ImageGenerationProgress:late-1"
        ]
    );
    assert_eq!(
        got[1].key_id,
        KeyId::new(9).ok(),
        "delivered to the owner the registry learnt"
    );
    let stats = run.stats.clone();
    eventually("the orphan to be dead-lettered", || {
        stats.dead_lettered.load(Ordering::SeqCst) == 1
    })
    .await;
    // A marker published after the orphan was dead-lettered is the next event anyone gets.
    broker
        .publish(
            &base,
            "ImageGenerationProgress",
            &ce(
                "mark-1",
                "ImageGenerationProgress",
                r#"{"taskId":"img-late","progress":20}"#,
            ),
            props.clone(),
        )
        .await;
    assert_eq!(
        names(&node.until("mark-1").await),
        ["ImageGenerationProgress:mark-1"],
        "the orphan reached no one"
    );
    run.stop().await;
    let ch = broker.conn.create_channel().await.unwrap();
    let dead = ch
        .basic_get(
            amqp::dead_letter_name(&base).as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
        .expect("the orphan in the dead-letter queue");
    let headers = dead
        .delivery
        .properties
        .headers()
        .clone()
        .unwrap_or_default();
    let reason = amqp::header_text(&headers, amqp::REASON_HEADER).unwrap_or_default();
    assert!(
        reason.contains("unknown task owner for task nobody")
            && reason.contains("after 5 attempts"),
        "{reason}"
    );
    assert_eq!(
        String::from_utf8_lossy(&dead.delivery.data),
        String::from_utf8_lossy(&ce(
            "orphan-1",
            "ImageGenerationProgress",
            r#"{"taskId":"nobody","progress":10}"#
        )),
        "body unchanged"
    );
    let _ = ch
        .queue_delete(
            amqp::retry_queue_name(&base).as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await;
    broker.cleanup(&cfg).await;
}

#[tokio::test]
async fn keys_are_processed_in_parallel_and_each_key_in_order() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    // Every `record_spend` of key 1 takes a second: a slow key.
    let slow = KeyId::new(1).unwrap();
    let store = Hooked::new(move |call| async move {
        if call == Call::RecordSpend(slow) {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        Ok(())
    });
    let mut node = Node::new(Arc::new(store)).await;
    let run = node.start(&cfg).await;
    // Key 1 first (slow), then key 2's ten messages, then key 1 again.
    let mut ids = vec![("s1-a".to_owned(), 1, 1)];
    ids.extend((0..10).map(|i| (format!("f2-{i}"), 2, i + 1)));
    ids.push(("s1-b".to_owned(), 1, 2));
    for (id, key, total) in &ids {
        let body = format!(r#"{{"KeyId":{key},"Amount":1,"NewTotalSpend":{total}}}"#);
        broker
            .publish(
                &mt_exchange(&base),
                "",
                &mt_body(&base, id, &body),
                mt_props(),
            )
            .await;
    }
    let mut got = Vec::new();
    while got.len() < ids.len() {
        let ev = node.next(WAIT).await.expect("a SpendUpdate");
        got.push(ev.event_id.as_str().to_owned());
    }
    let at = |id: &str| got.iter().position(|g| g == id).unwrap();
    // Key 2 did not wait behind the slow key 1 (a one-at-a-time consumer would deliver s1-a
    // first) ...
    assert!(at("f2-9") < at("s1-a"), "key 2 waited for key 1: {got:?}");
    // ... while each key kept its bus order.
    assert!(at("s1-a") < at("s1-b"), "{got:?}");
    let key2: Vec<&String> = got.iter().filter(|g| g.starts_with("f2-")).collect();
    let want: Vec<String> = (0..10).map(|i| format!("f2-{i}")).collect();
    assert_eq!(key2, want.iter().collect::<Vec<_>>(), "key 2 in order");
    let stats = run.stats.clone();
    eventually("every ack", || {
        stats.processed.load(Ordering::SeqCst) == ids.len() as u64
    })
    .await;
    run.stop().await;
    assert_eq!(broker.count(&base).await, 0);
    broker.cleanup(&cfg).await;
}

/// A store that, like the PostgreSQL one, group-commits its spend totals, and whose batch call
/// panics (a bug) whenever the batch holds key 13.
fn panics_on_key_13() -> Hooked {
    let totals = herald_coalesce::Coalescer::spawn(1, 64, |keys: Arc<[KeyId]>| async move {
        tokio::task::yield_now().await;
        assert!(
            keys.iter().all(|k| k.get() != 13),
            "a bug set off by key 13"
        );
        Ok::<_, StoreError>(vec![(); keys.len()])
    });
    Hooked::new(move |call| {
        let totals = totals.clone();
        async move {
            match call {
                Call::RecordSpend(key) => totals
                    .call(key)
                    .await
                    .map_err(|_| StoreError::Unavailable("batch worker stopped".into()))?,
                _ => Ok(()),
            }
        }
    })
}

/// A bug in a group-committed store call, set off by one message, costs that message (dead-
/// lettered with a reason) and nothing else: its batch-mates and later messages flow, and the
/// batch worker keeps serving.
#[tokio::test]
async fn a_panic_in_a_batched_store_call_dead_letters_one_message_and_the_rest_flow() {
    let base = unique();
    let cfg = config(&base);
    let broker = Broker::new().await;
    let mut node = Node::new(Arc::new(panics_on_key_13())).await;
    let run = node.start(&cfg).await;
    for key in 1..=20 {
        let body = format!(r#"{{"KeyId":{key},"Amount":1,"NewTotalSpend":{key}}}"#);
        broker
            .publish(
                &mt_exchange(&base),
                "",
                &mt_body(&base, &format!("p-{key}"), &body),
                mt_props(),
            )
            .await;
    }
    let mut got = std::collections::BTreeSet::new();
    while got.len() < 19 {
        let ev = node.next(WAIT).await.expect("a SpendUpdate");
        got.insert(ev.event_id.as_str().to_owned());
    }
    assert!(!got.contains("p-13"), "{got:?}");
    let stats = run.stats.clone();
    eventually("19 acks and one dead letter", || {
        stats.processed.load(Ordering::SeqCst) == 19
            && stats.dead_lettered.load(Ordering::SeqCst) == 1
    })
    .await;
    run.stop().await;
    assert_eq!(broker.count(&base).await, 0, "nothing held or left");
    let dead = amqp::dead_letter_name(&base);
    let msg = broker
        .ch
        .basic_get(dead.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .expect("the dead letter");
    let headers = msg.properties.headers().clone().unwrap_or_default();
    assert_eq!(
        amqp::header_text(&headers, amqp::REASON_HEADER).as_deref(),
        Some("internal error while processing")
    );
    assert_eq!(
        amqp::header_text(&headers, amqp::EVENT_ID_HEADER).as_deref(),
        Some("p-13")
    );
    broker.cleanup(&cfg).await;
}
