//! The consumer lag gauge: the queue's ready messages, sampled while a session lasts.
use super::connection::short;
use herald_telemetry::metrics;
use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use std::time::Duration;

/// How often the queue depth is sampled for `herald_consumer_lag_messages`.
pub(super) const LAG_EVERY: Duration = Duration::from_secs(5);

/// Samples the number of ready messages in the queue (a passive declare) while the session
/// lasts. Errors are left to the consumer, which sees the same channel fail.
pub(super) async fn watch_lag(channel: Channel, queue: String) {
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
pub(super) struct AbortOnDrop(pub(super) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
