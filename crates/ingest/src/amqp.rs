//! The RabbitMQ side (DESIGN §4, §7 invariants 1 and 5): topology, the consumer loop and
//! `herald publish`.
//!
//! The consumer handles one message at a time and acks it only once the pipeline says its
//! effects are durable. A bad message is re-published unchanged to `<queue>.dead` (with the
//! reason in a header, under publisher confirms) and then acked. While a dependency is down
//! the same message is retried with backoff and nothing new is taken. A lost connection is
//! re-established with backoff; unacked messages go back to the queue and are processed again,
//! which the pipeline makes harmless.
use crate::envelope::{self, MessageMeta};
use crate::pipeline::{Failure, Pipeline};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use herald_domain::{EventId, InboundEvent, Invalid};
use herald_telemetry::metrics;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use rand::Rng;
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::watch;

pub use crate::envelope::EnvelopeKind;

/// The namespace Conduit's events are published under by MassTransit.
pub const MASSTRANSIT_NAMESPACE: &str = "ConduitLLM.Core.Events";

/// The inbound event types of DESIGN §4 (MassTransit publishes each to its own exchange).
pub const EVENT_TYPES: &[&str] = &[
    "SpendUpdated",
    "ImageGenerationProgress",
    "ImageGenerationCompleted",
    "ImageGenerationFailed",
    "ImageGenerationCancelled",
    "VideoGenerationRequested",
    "VideoGenerationStarted",
    "VideoGenerationProgress",
    "VideoGenerationCompleted",
    "VideoGenerationFailed",
    "TaskProgress",
    "TaskCompleted",
    "TaskFailed",
    "TaskCancelled",
    "ProviderHealthChanged",
    "ModelsDiscovered",
    "ModelCapabilitiesDiscovered",
    "ModelMappingChanged",
    "VirtualKeyCreated",
    "VirtualKeyUpdated",
    "VirtualKeyDeleted",
];

pub const MASSTRANSIT_CONTENT_TYPE: &str = "application/vnd.masstransit+json";
pub const CLOUDEVENTS_CONTENT_TYPE: &str = "application/cloudevents+json";
/// Header carrying why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-herald-reason";
/// Header carrying the event id of a dead-lettered message, when it could be read.
pub const EVENT_ID_HEADER: &str = "x-herald-event-id";

/// Retry delays while a dependency is down (the message is held, not acked).
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Reconnect delays after the broker connection is lost or cannot be set up.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Connecting and declaring the topology take milliseconds; a broker that does not answer
/// within this is treated as down.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpConfig {
    pub url: String,
    /// The quorum queue, e.g. `herald.events`. Its dead-letter queue and exchange are
    /// `<queue>.dead`; its topic exchange has the queue's name.
    pub queue: String,
    /// Extra exchanges to bind (declared durable fanout if missing).
    pub bind: Vec<String>,
    pub prefetch: u16,
}

/// The MassTransit exchanges of every event type in DESIGN §4,
/// e.g. `ConduitLLM.Core.Events:SpendUpdated`.
pub fn default_bindings() -> Vec<String> {
    EVENT_TYPES
        .iter()
        .map(|t| masstransit_exchange(t))
        .collect()
}

/// `ConduitLLM.Core.Events:<Type>`; a name that already has a namespace (`Ns:Type`) is kept.
pub fn masstransit_exchange(event_type: &str) -> String {
    if event_type.contains(':') {
        event_type.to_owned()
    } else {
        format!("{MASSTRANSIT_NAMESPACE}:{event_type}")
    }
}

/// The dead-letter exchange and queue of `queue`.
pub fn dead_letter_name(queue: &str) -> String {
    format!("{queue}.dead")
}

/// The delay queue of `queue`: deferred messages wait there, then return to `queue`.
pub fn retry_queue_name(queue: &str) -> String {
    format!("{queue}.retry")
}

/// How long a deferred message waits before it is tried again.
pub const DEFER_DELAY: std::time::Duration = std::time::Duration::from_secs(1);
/// How many times a message is deferred before it is dead-lettered.
pub const MAX_DEFERRALS: i64 = 5;
/// Counts the deferrals of a message.
pub const ATTEMPTS_HEADER: &str = "x-herald-attempts";
/// The routing key a deferred message was first delivered with.
pub const ROUTING_KEY_HEADER: &str = "x-herald-routing-key";

#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    #[error("invalid AMQP setting: {0}")]
    Config(String),
    #[error("RabbitMQ: {0}")]
    Broker(String),
    /// The broker did not take the message (nack, or no queue bound to the exchange).
    #[error("RabbitMQ did not accept the message: {0}")]
    NotAccepted(String),
}

fn broker(context: &str) -> impl FnOnce(lapin::Error) -> AmqpError + '_ {
    move |e| AmqpError::Broker(format!("{context}: {e}"))
}

fn short(s: &str, what: &str) -> Result<ShortString, AmqpError> {
    ShortString::try_new(s)
        .map_err(|_| AmqpError::Config(format!("{what} {s:?} is longer than 255 bytes")))
}

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// Declares Herald's topology; safe to call any number of times (same names, same arguments).
/// - quorum queue `<queue>`, dead-lettering to exchange `<queue>.dead`;
/// - fanout exchange `<queue>.dead` bound to quorum queue `<queue>.dead`;
/// - topic exchange `<queue>` bound to the queue with `#`;
/// - each exchange of `config.bind`, durable fanout, bound to the queue.
pub async fn declare_topology(channel: &Channel, config: &AmqpConfig) -> Result<(), AmqpError> {
    if config.queue.trim().is_empty() {
        return Err(AmqpError::Config("queue name is empty".into()));
    }
    let dead_name = dead_letter_name(&config.queue);
    let queue = short(&config.queue, "queue name")?;
    let dead = short(&dead_name, "dead-letter queue name")?;
    let quorum = |dlx: Option<&str>| {
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        if let Some(dlx) = dlx {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.into()),
            );
        }
        args
    };

    channel
        .exchange_declare(
            dead.clone(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("declaring the dead-letter exchange"))?;
    channel
        .queue_declare(dead.clone(), durable_queue(), quorum(None))
        .await
        .map_err(broker("declaring the dead-letter queue"))?;
    channel
        .queue_bind(
            dead.clone(),
            dead.clone(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("binding the dead-letter queue"))?;
    // The delay queue: messages expire after DEFER_DELAY and dead-letter straight back into the
    // queue through the default exchange.
    let retry = short(&retry_queue_name(&config.queue), "retry queue name")?;
    let mut retry_args = FieldTable::default();
    retry_args.insert(
        "x-message-ttl".into(),
        AMQPValue::LongLongInt(i64::try_from(DEFER_DELAY.as_millis()).unwrap_or(1000)),
    );
    retry_args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    retry_args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(config.queue.as_str().into()),
    );
    channel
        .queue_declare(retry, durable_queue(), retry_args)
        .await
        .map_err(broker("declaring the retry queue"))?;
    channel
        .queue_declare(queue.clone(), durable_queue(), quorum(Some(&dead_name)))
        .await
        .map_err(broker(
            "declaring the queue (if it exists with other arguments, delete it or pick another HERALD_AMQP_QUEUE)",
        ))?;
    channel
        .exchange_declare(
            queue.clone(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("declaring the topic exchange"))?;
    channel
        .queue_bind(
            queue.clone(),
            queue.clone(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(broker("binding the topic exchange"))?;

    let mut seen = std::collections::HashSet::new();
    for name in &config.bind {
        let name = name.trim();
        // The queue's own topic exchange (listed in the default HERALD_AMQP_BIND) is bound
        // above; redeclaring it as fanout would fail.
        if name.is_empty() || name == config.queue || name == dead_name || !seen.insert(name) {
            continue;
        }
        let exchange = short(name, "exchange name")?;
        channel
            .exchange_declare(
                exchange.clone(),
                ExchangeKind::Fanout,
                durable_exchange(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| {
                AmqpError::Broker(format!(
                    "declaring exchange {name:?} as durable fanout (does it exist with another type?): {e}"
                ))
            })?;
        channel
            .queue_bind(
                queue.clone(),
                exchange,
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(broker("binding an exchange to the queue"))?;
    }
    Ok(())
}

/// Counters of one consumer, for metrics.
#[derive(Debug, Default)]
pub struct ConsumerStats {
    /// Messages processed and acked.
    pub processed: AtomicU64,
    /// Messages re-published to the dead-letter queue and acked.
    pub dead_lettered: AtomicU64,
    /// Processing attempts that failed on a dependency and were retried.
    pub retries: AtomicU64,
    /// Deliveries the broker flagged as redelivered.
    pub redelivered: AtomicU64,
    /// Connections lost or failed to set up.
    pub reconnects: AtomicU64,
}

/// A delivery's body decoded into an event, or why it cannot be.
type Decoded = Result<InboundEvent, Invalid>;

/// The AMQP consumer role.
pub struct Consumer {
    config: AmqpConfig,
    pipeline: Pipeline,
    stats: Arc<ConsumerStats>,
}

/// Runs a consumer until `shutdown` turns true (or its sender is dropped). `ready` is true
/// exactly while the consumer is registered with the broker.
pub async fn run_consumer(
    config: AmqpConfig,
    pipeline: Pipeline,
    shutdown: watch::Receiver<bool>,
    ready: Arc<AtomicBool>,
) {
    Consumer::new(config, pipeline).run(shutdown, ready).await;
}

enum End {
    Shutdown,
}

impl Consumer {
    pub fn new(config: AmqpConfig, pipeline: Pipeline) -> Self {
        Self {
            config,
            pipeline,
            stats: Arc::default(),
        }
    }

    pub fn stats(&self) -> Arc<ConsumerStats> {
        self.stats.clone()
    }

    pub async fn run(self, mut shutdown: watch::Receiver<bool>, ready: Arc<AtomicBool>) {
        let mut delay = RECONNECT_MIN;
        loop {
            if is_stopped(&shutdown) {
                break;
            }
            let mut consumed = false;
            let result = self.session(&mut shutdown, &ready, &mut consumed).await;
            ready.store(false, Ordering::SeqCst);
            match result {
                Ok(End::Shutdown) => break,
                Err(e) => {
                    self.stats.reconnects.fetch_add(1, Ordering::Relaxed);
                    metrics().reconnects.with("amqp").inc();
                    if consumed {
                        delay = RECONNECT_MIN;
                    }
                    let wait = jitter(delay);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, queue = %self.config.queue, "AMQP consumer disconnected; reconnecting");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = stopped(&mut shutdown) => break,
                    }
                    delay = (delay * 2).min(RECONNECT_MAX);
                }
            }
        }
        ready.store(false, Ordering::SeqCst);
        tracing::info!(queue = %self.config.queue, "AMQP consumer stopped");
    }

    /// One connection's life. `consumed` is set once a message has been handled, so a
    /// connection that worked for a while reconnects quickly after it drops.
    async fn session(
        &self,
        shutdown: &mut watch::Receiver<bool>,
        ready: &AtomicBool,
        consumed: &mut bool,
    ) -> Result<End, AmqpError> {
        // The queue in the connection name tells operators (and tests) which consumer it is.
        let name = format!("herald consume {}", self.config.queue);
        let conn = tokio::select! {
            c = bounded(connect(&self.config.url, &name)) => c?,
            _ = stopped(shutdown) => return Ok(End::Shutdown),
        };
        let result = self.consume(&conn, shutdown, ready, consumed).await;
        ready.store(false, Ordering::SeqCst);
        // Closing returns every unacked delivery to the queue.
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "OK".into())).await;
        result
    }

    async fn consume(
        &self,
        conn: &Connection,
        shutdown: &mut watch::Receiver<bool>,
        ready: &AtomicBool,
        consumed: &mut bool,
    ) -> Result<End, AmqpError> {
        let setup = async {
            let channel = conn
                .create_channel()
                .await
                .map_err(broker("opening a channel"))?;
            declare_topology(&channel, &self.config).await?;
            channel
                .basic_qos(self.config.prefetch.max(1), BasicQosOptions::default())
                .await
                .map_err(broker("setting the prefetch count"))?;
            // Dead-letter publishes get their own channel in confirm mode, so a confirm is
            // never confused with anything on the consuming channel.
            let dead = conn
                .create_channel()
                .await
                .map_err(broker("opening a channel"))?;
            dead.confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(broker("enabling publisher confirms"))?;
            let consumer = channel
                .basic_consume(
                    short(&self.config.queue, "queue name")?,
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(broker("starting to consume"))?;
            Ok::<_, AmqpError>((channel, dead, consumer))
        };
        let (channel, dead, mut consumer) = tokio::select! {
            s = bounded(setup) => s?,
            _ = stopped(shutdown) => return Ok(End::Shutdown),
        };
        ready.store(true, Ordering::SeqCst);
        tracing::info!(queue = %self.config.queue, prefetch = self.config.prefetch, "AMQP consumer active");
        let _lag = AbortOnDrop(tokio::spawn(watch_lag(
            channel.clone(),
            self.config.queue.clone(),
        )));
        // Up to `prefetch` deliveries are processed at once, one at a time per partition (a
        // key, a task, the global stream), so one key's events keep their bus order while
        // different keys proceed in parallel. Finished deliveries are acked together (see
        // `Acks`): once an eighth of the window can go in one frame, nothing else is in
        // flight, or `ACK_DELAY_MAX` has passed.
        let mut acks = Acks::default();
        let mut ack_timer = tokio::time::interval(ACK_DELAY_MAX);
        ack_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut inflight = FuturesUnordered::new();
        let mut busy: HashSet<String> = HashSet::new();
        let mut waiting: HashMap<String, VecDeque<(Delivery, Decoded)>> = HashMap::new();
        let start = |(delivery, decoded): (Delivery, Decoded),
                     partition: String,
                     shutdown: watch::Receiver<bool>| {
            let (channel, dead) = (&channel, &dead);
            async move {
                let mut shutdown = shutdown;
                let r = self
                    .handle(delivery, decoded, channel, dead, &mut shutdown)
                    .await;
                (partition, r)
            }
        };
        let inflight_gauge = &metrics().consumer_inflight;
        loop {
            let queued: usize = waiting.values().map(VecDeque::len).sum();
            inflight_gauge.set(i64::try_from(inflight.len() + queued).unwrap_or(i64::MAX));
            tokio::select! {
                biased;
                _ = stopped(shutdown) => {
                    ready.store(false, Ordering::SeqCst);
                    // Stop deliveries; prefetched, unacked ones return to the queue when the
                    // connection closes. Messages being processed finish (or, while retrying,
                    // give up at once and stay unacked).
                    let _ = tokio::time::timeout(
                        CLOSE_TIMEOUT,
                        channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()),
                    )
                    .await;
                    while let Some((_, r)) = inflight.next().await {
                        if let Handled::Done(tag, acker) = r? {
                            acks.finished(tag, acker);
                        }
                    }
                    acks.flush(0).await?;
                    return Ok(End::Shutdown);
                }
                Some(first) = inflight.next(), if !inflight.is_empty() => {
                    // Take every finish that is ready now, then ack them in as few frames as
                    // the order of the delivery tags allows.
                    let mut finished = Some(first);
                    while let Some((partition, r)) = finished {
                        if let Handled::Done(tag, acker) = r? {
                            acks.finished(tag, acker);
                            *consumed = true;
                            match waiting.get_mut(&partition).and_then(VecDeque::pop_front) {
                                Some(next) => {
                                    inflight.push(start(next, partition, shutdown.clone()));
                                }
                                None => {
                                    waiting.remove(&partition);
                                    busy.remove(&partition);
                                }
                            }
                        }
                        finished = inflight.next().now_or_never().flatten();
                    }
                    if acks.worth_a_frame(acks_batch(self.config.prefetch), inflight.is_empty()) {
                        acks.flush(acks_waiting_max(self.config.prefetch)).await?;
                    }
                }
                // Finished deliveries never wait longer than this for their ack.
                _ = ack_timer.tick(), if acks.has_finished() => {
                    acks.flush(acks_waiting_max(self.config.prefetch)).await?;
                }
                next = consumer.next() => {
                    let delivery = match next {
                        Some(Ok(d)) => d,
                        Some(Err(e)) => return Err(AmqpError::Broker(format!("consuming: {e}"))),
                        None => {
                            return Err(AmqpError::Broker(
                                "the broker cancelled the consumer".into(),
                            ));
                        }
                    };
                    acks.received(delivery.delivery_tag);
                    // Decoded once: the partition comes from the event the pipeline processes.
                    let decoded = envelope::decode(&delivery.data, &meta_of(&delivery));
                    let partition = envelope::partition(&decoded);
                    if busy.insert(partition.clone()) {
                        inflight.push(start((delivery, decoded), partition, shutdown.clone()));
                    } else {
                        waiting
                            .entry(partition)
                            .or_default()
                            .push_back((delivery, decoded));
                    }
                }
            }
        }
    }

    /// Processes one delivery to its end: done (processed, dead-lettered or deferred — the
    /// caller acks it), or held on shutdown (left unacked). `Err` means the channel or
    /// connection failed.
    async fn handle(
        &self,
        mut delivery: Delivery,
        decoded: Decoded,
        channel: &Channel,
        dead: &Channel,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Handled, AmqpError> {
        if delivery.redelivered {
            self.stats.redelivered.fetch_add(1, Ordering::Relaxed);
            metrics().consumer_redeliveries.inc();
        }
        let body: Arc<Vec<u8>> = Arc::new(std::mem::take(&mut delivery.data));
        let mut delay = RETRY_MIN;
        loop {
            match self.attempt(&decoded).await {
                Ok(p) => {
                    self.stats.processed.fetch_add(1, Ordering::Relaxed);
                    metrics().consumed.with(p.event_type).inc();
                    tracing::debug!(event_id = %p.event_id, event_type = p.event_type, key_id = p.key_id.map(|k| k.get()), published = p.published, alerts = p.alerts, "processed");
                    return Ok(Handled::Done(delivery.delivery_tag, delivery.acker));
                }
                Err(Failure::Rejected(reason)) => {
                    let event_id = envelope::peek_event_id(&body);
                    self.dead_letter(dead, &delivery, &body, &reason, event_id.as_ref())
                        .await?;
                    self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    metrics().dead_lettered.with("rejected").inc();
                    let message_id = event_id
                        .as_ref()
                        .map(EventId::to_string)
                        .or_else(|| {
                            delivery
                                .properties
                                .message_id()
                                .as_ref()
                                .map(ToString::to_string)
                        })
                        .unwrap_or_else(|| "-".into());
                    tracing::warn!(message_id = %message_id, reason = %reason, routing_key = %delivery.routing_key, "message dead-lettered");
                    return Ok(Handled::Done(delivery.delivery_tag, delivery.acker));
                }
                Err(Failure::Deferred(reason)) => {
                    let attempts = delivery
                        .properties
                        .headers()
                        .as_ref()
                        .and_then(|h| h.inner().get(ATTEMPTS_HEADER).and_then(amqp_int))
                        .unwrap_or(0)
                        + 1;
                    if attempts >= MAX_DEFERRALS {
                        let reason = Invalid::new(format!("{reason} (after {attempts} attempts)"));
                        let event_id = envelope::peek_event_id(&body);
                        self.dead_letter(dead, &delivery, &body, &reason, event_id.as_ref())
                            .await?;
                        self.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
                        metrics().dead_lettered.with("deferred_too_often").inc();
                        tracing::warn!(event_id = ?event_id.map(|e| e.to_string()), %reason, "message dead-lettered");
                    } else {
                        self.defer(dead, &delivery, &body, attempts).await?;
                        metrics().consumer_deferred.inc();
                        tracing::info!(%reason, attempts, "message deferred");
                    }
                    return Ok(Handled::Done(delivery.delivery_tag, delivery.acker));
                }
                Err(Failure::Transient(error)) => {
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    metrics().consumer_retries.inc();
                    tracing::warn!(error = %error, retry_in_ms = delay.as_millis() as u64, "dependency unavailable; holding the message and retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        // Left unacked: it returns to the queue when the connection closes.
                        _ = stopped(shutdown) => return Ok(Handled::Held),
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                    // The broker redelivers the message once the channel is gone; holding on
                    // to it would only keep the consumer looking alive.
                    if !channel.status().connected() {
                        return Err(AmqpError::Broker(
                            "the connection was lost while retrying a message".into(),
                        ));
                    }
                }
            }
        }
    }

    /// Runs the pipeline, catching a panic so that a bug costs one message, which is
    /// dead-lettered, instead of the consumer. Caught in place: a task per message cost a
    /// spawn and a cross-thread wake-up per delivery.
    async fn attempt(&self, decoded: &Decoded) -> Result<crate::Processed, Failure> {
        let event = match decoded {
            Ok(event) => event.clone(),
            Err(reason) => return Err(Failure::Rejected(reason.clone())),
        };
        match AssertUnwindSafe(self.pipeline.process_event(event))
            .catch_unwind()
            .await
        {
            Ok(r) => r,
            Err(_) => {
                tracing::error!("processing a message panicked; dead-lettering it");
                Err(Failure::Rejected(Invalid::new(
                    "internal error while processing",
                )))
            }
        }
    }

    /// Parks the message in `<queue>.retry` (unchanged, with the attempt count and its
    /// original routing key in headers) and waits for the broker's confirm.
    async fn defer(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        body: &[u8],
        attempts: i64,
    ) -> Result<(), AmqpError> {
        let mut extra = vec![(ATTEMPTS_HEADER, AMQPValue::LongLongInt(attempts))];
        let has_original = delivery
            .properties
            .headers()
            .as_ref()
            .is_some_and(|h| h.inner().contains_key(ROUTING_KEY_HEADER));
        if !has_original {
            extra.push((
                ROUTING_KEY_HEADER,
                AMQPValue::LongString(delivery.routing_key.as_str().into()),
            ));
        }
        let retry = short(&retry_queue_name(&self.config.queue), "retry queue name")?;
        republish(
            channel,
            "".into(),
            retry,
            delivery,
            body,
            extra,
            "the retry queue",
        )
        .await
    }

    /// Re-publishes the message unchanged (body and properties) to `<queue>.dead`, adding the
    /// reason headers, and waits for the broker's confirm.
    async fn dead_letter(
        &self,
        channel: &Channel,
        delivery: &Delivery,
        body: &[u8],
        reason: &Invalid,
        event_id: Option<&EventId>,
    ) -> Result<(), AmqpError> {
        let mut extra = vec![(
            REASON_HEADER,
            AMQPValue::LongString(reason.0.clone().into()),
        )];
        if let Some(id) = event_id {
            extra.push((EVENT_ID_HEADER, AMQPValue::LongString(id.as_str().into())));
        }
        let exchange = short(
            &dead_letter_name(&self.config.queue),
            "dead-letter exchange",
        )?;
        republish(
            channel,
            exchange,
            delivery.routing_key.clone(),
            delivery,
            body,
            extra,
            "the dead-letter exchange",
        )
        .await
    }
}

/// Publishes `body` with the delivery's properties plus `extra` headers (mandatory, so an
/// unroutable message is an error) and waits for the broker's confirm.
async fn republish(
    channel: &Channel,
    exchange: ShortString,
    routing_key: ShortString,
    delivery: &Delivery,
    body: &[u8],
    extra: Vec<(&str, AMQPValue)>,
    target: &str,
) -> Result<(), AmqpError> {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    for (name, value) in extra {
        headers.insert(name.into(), value);
    }
    let properties = delivery.properties.clone().with_headers(headers);
    let confirm = channel
        .basic_publish(
            exchange,
            routing_key,
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties,
        )
        .await
        .map_err(broker(target))?
        .await
        .map_err(broker(target))?;
    accepted(confirm, target)
}

/// How often the queue depth is sampled for `herald_consumer_lag_messages`.
const LAG_EVERY: Duration = Duration::from_secs(5);

/// Samples the number of ready messages in the queue (a passive declare) while the session
/// lasts. Errors are left to the consumer, which sees the same channel fail.
async fn watch_lag(channel: Channel, queue: String) {
    let Ok(name) = short(&queue, "queue name") else {
        return;
    };
    loop {
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        match channel
            .queue_declare(name.clone(), passive, FieldTable::default())
            .await
        {
            Ok(q) => metrics().consumer_lag.set(i64::from(q.message_count())),
            Err(_) => return,
        }
        tokio::time::sleep(LAG_EVERY).await;
    }
}

/// Aborts a helper task when the session that started it ends.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How a delivery's handling ended.
enum Handled {
    /// Processed, dead-lettered or deferred: it may be acked.
    Done(u64, Acker),
    /// Shutdown came while it was being retried: left unacked, it returns to the queue.
    Held,
}

/// Finished deliveries waiting to be acked above an unfinished one, beyond which they are
/// acked one by one rather than keep the prefetch window full behind a slow message: a
/// quarter of the window.
fn acks_waiting_max(prefetch: u16) -> usize {
    usize::from(prefetch / 4)
}

/// Finished deliveries worth an ack frame of their own while others are still being
/// processed: an eighth of the window. Each frame costs a quorum queue about as much as
/// delivering several messages, so a drain acked every ~7 deliveries spent ~9 µs of the
/// broker's CPU per message on acks alone.
fn acks_batch(prefetch: u16) -> usize {
    usize::from(prefetch / 8).max(1)
}

/// The longest a finished delivery waits for its ack when fewer than `acks_batch` are ready.
const ACK_DELAY_MAX: Duration = Duration::from_millis(5);

/// The acks of one channel. Delivery tags rise in delivery order, so every finished delivery
/// below the oldest unfinished one goes out in a single `multiple` ack; finished ones above it
/// wait for it (a message held beyond `PIN_GRACE` pins only a quarter of the prefetch window).
/// `A` is what acks one delivery (lapin's `Acker`; a plain tag in the unit tests).
struct Acks<A> {
    unfinished: BTreeSet<u64>,
    finished: BTreeMap<u64, A>,
    /// The oldest unfinished delivery when `due` last looked, and since when it was.
    oldest_since: Option<(u64, Instant)>,
}

/// How long the oldest unfinished delivery may hold more than `max_waiting` finished ones
/// before they are acked one by one. Under load one key's next event routinely waits a few
/// milliseconds for its predecessor; acking around it then cost a frame per message.
const PIN_GRACE: Duration = Duration::from_millis(100);

impl<A> Default for Acks<A> {
    fn default() -> Self {
        Self {
            unfinished: BTreeSet::new(),
            finished: BTreeMap::new(),
            oldest_since: None,
        }
    }
}

impl<A> Acks<A> {
    fn received(&mut self, tag: u64) {
        self.unfinished.insert(tag);
    }

    fn finished(&mut self, tag: u64, acker: A) {
        self.unfinished.remove(&tag);
        self.finished.insert(tag, acker);
    }

    fn has_finished(&self) -> bool {
        !self.finished.is_empty()
    }

    /// Whether to send the acks due now rather than let more finish first: when `batch`
    /// finished deliveries lie below the oldest unfinished one (one `multiple` frame acks
    /// them), or when nothing else is being processed (no more finishes are coming soon).
    /// The rest is left to the timer (`ACK_DELAY_MAX`).
    fn worth_a_frame(&self, batch: usize, idle: bool) -> bool {
        if idle {
            return true;
        }
        let oldest_unfinished = self.unfinished.first().copied().unwrap_or(u64::MAX);
        self.finished
            .range(..oldest_unfinished)
            .nth(batch - 1)
            .is_some()
    }

    /// The acks due now, as (acker, multiple): finished deliveries above an unfinished one
    /// are acked one by one once more than `max_waiting` of them wait and the same delivery
    /// has held them for `PIN_GRACE` (at once when `max_waiting` is 0: shutting down).
    fn due(&mut self, max_waiting: usize, now: Instant) -> Vec<(A, bool)> {
        let oldest_unfinished = self.unfinished.first().copied().unwrap_or(u64::MAX);
        if self.oldest_since.map(|(tag, _)| tag) != Some(oldest_unfinished) {
            self.oldest_since = Some((oldest_unfinished, now));
        }
        let held_long = max_waiting == 0
            || self
                .oldest_since
                .is_some_and(|(_, since)| now.saturating_duration_since(since) >= PIN_GRACE);
        let waiting = self.finished.split_off(&oldest_unfinished);
        let below = std::mem::replace(&mut self.finished, waiting);
        let mut due = Vec::new();
        let n = below.len();
        // `multiple` acks everything unacked up to this tag: all of it is finished.
        if let Some((_, acker)) = below.into_iter().next_back() {
            due.push((acker, n > 1));
        }
        if self.finished.len() > max_waiting && held_long {
            due.extend(
                std::mem::take(&mut self.finished)
                    .into_values()
                    .map(|a| (a, false)),
            );
        }
        due
    }
}

impl Acks<Acker> {
    async fn flush(&mut self, max_waiting: usize) -> Result<(), AmqpError> {
        for (acker, multiple) in self.due(max_waiting, Instant::now()) {
            ack(&acker, multiple).await?;
        }
        Ok(())
    }
}

async fn ack(acker: &Acker, multiple: bool) -> Result<(), AmqpError> {
    metrics().consumer_acks.inc();
    match acker.ack(BasicAckOptions { multiple }).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(AmqpError::Broker(
            "could not ack: the channel is no longer usable".into(),
        )),
        Err(e) => Err(AmqpError::Broker(format!("acking: {e}"))),
    }
}

fn accepted(confirm: Confirmation, target: &str) -> Result<(), AmqpError> {
    match confirm {
        Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
        Confirmation::Ack(Some(_)) => Err(AmqpError::NotAccepted(format!(
            "no queue is bound to {target}"
        ))),
        Confirmation::Nack(_) => Err(AmqpError::NotAccepted(format!("{target} nacked it"))),
    }
}

fn amqp_int(v: &AMQPValue) -> Option<i64> {
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        _ => None,
    }
}

/// What the pipeline needs to know about a delivery besides its body.
pub fn meta_of(delivery: &Delivery) -> MessageMeta {
    let p = &delivery.properties;
    // A deferred message comes back with the queue's name as routing key; its own is kept.
    let original = p
        .headers()
        .as_ref()
        .and_then(|h| header_text(h, ROUTING_KEY_HEADER));
    MessageMeta {
        routing_key: original.unwrap_or_else(|| delivery.routing_key.to_string()),
        content_type: p.content_type().as_ref().map(ToString::to_string),
        message_type: p.kind().as_ref().map(ToString::to_string),
        traceparent: p
            .headers()
            .as_ref()
            .and_then(|h| header_text(h, "traceparent")),
    }
}

/// A header's value as text, if it is a string.
pub fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

async fn connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let props = ConnectionProperties::default().with_connection_name(LongString::from(name));
    Connection::connect(url, props)
        .await
        .map_err(|e| AmqpError::Broker(format!("connecting to {}: {e}", redact(url))))
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn bounded<T>(f: impl Future<Output = Result<T, AmqpError>>) -> Result<T, AmqpError> {
    tokio::time::timeout(SETUP_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(AmqpError::Broker(
                "the broker did not answer in time".into(),
            ))
        })
}

fn is_stopped(rx: &watch::Receiver<bool>) -> bool {
    *rx.borrow() || rx.has_changed().is_err()
}

/// Resolves once shutdown is requested, or when nobody can request it any more (the sender
/// is gone: the process is going away).
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// ±20 %, so consumers that lost the broker together do not reconnect in lockstep.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::rng().random_range(0.8..1.2))
}

/// Publishes one event to the bus, as `herald publish` does: CloudEvents to the topic exchange
/// `<queue>` with the type as routing key, or a MassTransit envelope to the type's fanout
/// exchange (`ConduitLLM.Core.Events:<Type>`, or `event_type` itself if it has a namespace).
/// Declares the queue's topology (without extra bindings) first, so an event published before
/// any consumer ran waits in the queue. Waits for the broker's confirm.
pub async fn publish_event(
    url: &str,
    queue: &str,
    event_type: &str,
    body: &Value,
    event_id: &str,
    envelope: EnvelopeKind,
) -> Result<(), AmqpError> {
    let event_type = event_type.trim();
    if event_type.is_empty()
        || event_type.len() > 200
        || !event_type
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(AmqpError::Config(format!(
            "event type {event_type:?} must be 1-200 characters of letters, digits, '.', ':', '_' or '-'"
        )));
    }
    let id = EventId::parse(event_id).map_err(|e| AmqpError::Config(format!("event id: {e}")))?;
    if !body.is_object() {
        return Err(AmqpError::Config(
            "the event body must be a JSON object".into(),
        ));
    }
    let config = AmqpConfig {
        url: url.to_owned(),
        queue: queue.to_owned(),
        bind: Vec::new(),
        prefetch: 1,
    };
    let now = herald_domain::event::format_time(chrono::Utc::now());
    let short_type = envelope::short_type_name(event_type);
    let (exchange, routing_key, payload, content_type) = match envelope {
        EnvelopeKind::CloudEvents => (
            queue.to_owned(),
            short_type.to_owned(),
            json!({
                "specversion": "1.0",
                "id": id.as_str(),
                "source": "herald-publish",
                "type": short_type,
                "time": now,
                "datacontenttype": "application/json",
                "data": body,
            }),
            CLOUDEVENTS_CONTENT_TYPE,
        ),
        EnvelopeKind::MassTransit => {
            let exchange = masstransit_exchange(event_type);
            let payload = json!({
                "messageId": id.as_str(),
                "sourceAddress": "rabbitmq://herald/herald-publish",
                "destinationAddress": format!("rabbitmq://herald/{exchange}"),
                "messageType": [format!("urn:message:{exchange}")],
                "message": body,
                "sentTime": now,
                "headers": {},
            });
            (exchange, String::new(), payload, MASSTRANSIT_CONTENT_TYPE)
        }
    };
    let payload = serde_json::to_vec(&payload)
        .map_err(|e| AmqpError::Config(format!("serializing the event: {e}")))?;
    let exchange_name = short(&exchange, "exchange name")?;
    let routing_key = short(&routing_key, "routing key")?;

    let conn = bounded(connect(url, "herald publish")).await?;
    let result = bounded(async {
        let channel = conn
            .create_channel()
            .await
            .map_err(broker("opening a channel"))?;
        declare_topology(&channel, &config).await?;
        if envelope == EnvelopeKind::MassTransit {
            channel
                .exchange_declare(
                    exchange_name.clone(),
                    ExchangeKind::Fanout,
                    durable_exchange(),
                    FieldTable::default(),
                )
                .await
                .map_err(broker("declaring the MassTransit exchange"))?;
        }
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(broker("enabling publisher confirms"))?;
        let properties = BasicProperties::default()
            .with_content_type(content_type.into())
            .with_message_id(short(id.as_str(), "event id")?)
            .with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                exchange_name,
                routing_key,
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &payload,
                properties,
            )
            .await
            .map_err(broker("publishing"))?
            .await
            .map_err(broker("publishing"))?;
        accepted(confirm, &format!("exchange {exchange:?}"))
    })
    .await;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "OK".into())).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finished_deliveries_below_the_oldest_unfinished_go_in_one_multiple_ack() {
        let now = Instant::now();
        let mut acks = Acks::default();
        for tag in 1..=6 {
            acks.received(tag);
        }
        acks.finished(2, 2);
        acks.finished(3, 3);
        assert_eq!(acks.due(10, now), vec![], "1 is unfinished: 2 and 3 wait");
        acks.finished(1, 1);
        assert_eq!(acks.due(10, now), vec![(3, true)], "1..=3 in one frame");
        acks.finished(5, 5);
        acks.finished(4, 4);
        assert_eq!(acks.due(10, now), vec![(5, true)]);
        acks.finished(6, 6);
        assert_eq!(
            acks.due(10, now),
            vec![(6, false)],
            "a lone one is not multiple"
        );
        assert_eq!(acks.due(10, now), vec![]);
        assert!(!acks.has_finished());
    }

    #[test]
    fn acks_wait_for_a_batch_unless_nothing_else_is_in_flight() {
        let now = Instant::now();
        let batch = acks_batch(256);
        assert_eq!(batch, 32);
        assert_eq!(acks_batch(1), 1, "a window of one acks each delivery");
        let mut acks = Acks::default();
        for tag in 1..=40 {
            acks.received(tag);
        }
        // 2..=33 finished, 1 not: none can be acked yet.
        for tag in 2..=33 {
            acks.finished(tag, tag);
        }
        assert!(!acks.worth_a_frame(batch, false), "all wait above 1");
        assert!(
            acks.worth_a_frame(batch, true),
            "nothing in flight: ack now"
        );
        acks.finished(1, 1);
        assert!(
            acks.worth_a_frame(batch, false),
            "33 below the oldest unfinished"
        );
        assert_eq!(acks.due(64, now), vec![(33, true)], "1..=33 in one frame");
        for tag in 34..=40 {
            acks.finished(tag, tag);
        }
        assert!(
            !acks.worth_a_frame(batch, false),
            "7 ackable: wait for more"
        );
    }

    #[test]
    fn a_held_delivery_pins_only_so_many_finished_ones() {
        let now = Instant::now();
        let mut acks = Acks::default();
        for tag in 1..=5 {
            acks.received(tag);
        }
        for tag in 2..=4 {
            acks.finished(tag, tag);
        }
        assert_eq!(acks.due(3, now), vec![], "three may wait");
        acks.finished(5, 5);
        assert_eq!(
            acks.due(3, now),
            vec![],
            "a fourth, but 1 has only just pinned them"
        );
        assert_eq!(
            acks.due(3, now + PIN_GRACE),
            vec![(2, false), (3, false), (4, false), (5, false)],
            "1 held them for the grace: all go one by one"
        );
        // On shutdown (max 0) nothing finished stays unacked; 1 is never acked.
        acks.received(6);
        acks.finished(6, 6);
        assert_eq!(acks.due(0, now + PIN_GRACE), vec![(6, false)]);
        assert!(acks.unfinished.contains(&1));
    }

    #[test]
    fn default_bindings_are_masstransit_exchanges() {
        let b = default_bindings();
        assert!(b.contains(&"ConduitLLM.Core.Events:SpendUpdated".to_owned()));
        assert!(b.contains(&"ConduitLLM.Core.Events:VirtualKeyDeleted".to_owned()));
        assert_eq!(b.len(), EVENT_TYPES.len());
        assert_eq!(
            masstransit_exchange("Acme:SpendUpdated"),
            "Acme:SpendUpdated"
        );
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host"), "amqp://host");
    }

    #[test]
    fn headers_read_as_text() {
        let mut h = FieldTable::default();
        h.insert("traceparent".into(), AMQPValue::LongString("00-ab".into()));
        h.insert("n".into(), AMQPValue::LongInt(3));
        assert_eq!(header_text(&h, "traceparent").as_deref(), Some("00-ab"));
        assert_eq!(header_text(&h, "n"), None);
        assert_eq!(header_text(&h, "missing"), None);
    }

    #[test]
    fn over_long_names_are_config_errors() {
        assert!(matches!(
            short(&"q".repeat(300), "queue name"),
            Err(AmqpError::Config(_))
        ));
    }
}
