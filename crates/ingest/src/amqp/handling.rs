//! One delivery to its end: processed, dead-lettered with a reason, deferred to the retry
//! queue, or held unacked while a dependency is down.
use super::acks::Handled;
use super::connection::{AmqpError, accepted, amqp_int, broker, short, stopped};
use super::consumer::{Consumer, Decoded};
use super::topology::{
    ATTEMPTS_HEADER, EVENT_ID_HEADER, MAX_DEFERRALS, REASON_HEADER, ROUTING_KEY_HEADER,
    dead_letter_name, retry_queue_name,
};
use crate::envelope;
use crate::pipeline::Failure;
use futures_util::FutureExt;
use herald_domain::{EventId, Invalid};
use herald_telemetry::metrics;
use lapin::Channel;
use lapin::message::Delivery as AmqpDelivery;
use lapin::options::BasicPublishOptions;
use lapin::types::{AMQPValue, ShortString};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// Retry delays while a dependency is down (the message is held, not acked).
pub(super) const RETRY_MIN: Duration = Duration::from_millis(100);
pub(super) const RETRY_MAX: Duration = Duration::from_secs(5);

impl Consumer {
    /// Processes one delivery to its end: done (processed, dead-lettered or deferred — the
    /// caller acks it), or held on shutdown (left unacked). `Err` means the channel or
    /// connection failed.
    pub(super) async fn handle(
        &self,
        mut delivery: AmqpDelivery,
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
                    // A redelivery after a crash, a second publish by the producer: safe to
                    // ack, but said and counted rather than dropped in silence.
                    if p.duplicate {
                        self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                        metrics().duplicates.with("amqp").inc();
                        tracing::info!(event_id = %p.event_id, event_type = p.event_type, redelivered = delivery.redelivered, "duplicate event: its id was already published; acked, nothing sent again");
                    }
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
    pub(super) async fn attempt(&self, decoded: &Decoded) -> Result<crate::Processed, Failure> {
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
    pub(super) async fn defer(
        &self,
        channel: &Channel,
        delivery: &AmqpDelivery,
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
    pub(super) async fn dead_letter(
        &self,
        channel: &Channel,
        delivery: &AmqpDelivery,
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
pub(super) async fn republish(
    channel: &Channel,
    exchange: ShortString,
    routing_key: ShortString,
    delivery: &AmqpDelivery,
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
