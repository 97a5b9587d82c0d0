//! The consumer's connection life and its delivery loop: up to the prefetch count of deliveries
//! in flight, one at a time per partition (see `partitions`), acked in frames (see `acks`).
use super::acks::{ACK_DELAY_MAX, Acks, Handled, acks_batch, acks_waiting_max};
use super::connection::{AmqpError, bounded, broker, connect, is_stopped, jitter, short, stopped};
use super::lag::{AbortOnDrop, watch_lag};
use super::message::meta_of;
use super::partitions::Partitions;
use super::topology::{AmqpConfig, declare_topology};
use crate::envelope;
use crate::pipeline::Pipeline;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use herald_domain::{Cause, InboundEvent, Invalid};
use herald_telemetry::metrics;
use lapin::Connection;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Reconnect delays after the broker connection is lost or cannot be set up.
pub(super) const RECONNECT_MIN: Duration = Duration::from_millis(250);
pub(super) const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// How long closing the connection or cancelling the consumer may take.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// Messages whose event id was already published (acked; nothing sent again).
    pub duplicates: AtomicU64,
    /// Connections lost or failed to set up.
    pub reconnects: AtomicU64,
}

/// A delivery's body decoded into an event, or why it cannot be.
pub(super) type Decoded = Result<InboundEvent, Invalid>;

/// The AMQP consumer role.
pub struct Consumer {
    pub(super) config: AmqpConfig,
    pub(super) pipeline: Pipeline,
    pub(super) stats: Arc<ConsumerStats>,
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

pub(super) enum End {
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
            c = bounded(connect(&self.config.url, &name, &self.config.tls)) => c?,
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
        let mut partitions: Partitions<(AmqpDelivery, Decoded)> = Partitions::default();
        let start = |(delivery, decoded): (AmqpDelivery, Decoded),
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
            let queued = partitions.waiting();
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
                    let mut finished: Option<(String, _)> = Some(first);
                    while let Some((partition, r)) = finished {
                        if let Handled::Done(tag, acker) = r? {
                            acks.finished(tag, acker);
                            *consumed = true;
                            if let Some(next) = partitions.finished(&partition) {
                                inflight.push(start(next, partition, shutdown.clone()));
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
                        Some(Err(e)) => return Err(AmqpError::Broker(Cause::context("consuming", e))),
                        None => {
                            return Err(AmqpError::Broker("the broker cancelled the consumer".into()));
                        }
                    };
                    acks.received(delivery.delivery_tag);
                    // Decoded once: the partition comes from the event the pipeline processes.
                    let decoded = envelope::decode(&delivery.data, &meta_of(&delivery));
                    let partition = envelope::partition(&decoded);
                    if let Some(item) = partitions.admit(&partition, (delivery, decoded)) {
                        inflight.push(start(item, partition, shutdown.clone()));
                    }
                }
            }
        }
    }
}
