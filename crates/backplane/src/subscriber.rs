//! The node's subscriber connection to a single Redis server: subscribed only to audiences with
//! local listeners; when it drops or stops answering pings it reconnects, resubscribes and
//! fills each audience's gap from its stream.
use crate::contract::{BackplaneError, unavailable};
use crate::delivery::Delivery;
use crate::entries::decode;
use crate::keys::RedisKeys;
use crate::router::Router;
use crate::streams::{LastPositions, Streams, dispatch, fill_gaps};
use futures_util::StreamExt;
use herald_domain::Audience;
use redis::Value;
use redis::aio::PubSubSink;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub(crate) enum SubscriberCommand {
    Subscribe(Audience, oneshot::Sender<Result<(), BackplaneError>>),
    Vacated(Audience),
}

/// Owns the node's subscriber connection.
pub(crate) struct Subscriber {
    pub(crate) client: redis::Client,
    pub(crate) names: Arc<RedisKeys>,
    pub(crate) router: Arc<Router>,
    pub(crate) probe: Duration,
    pub(crate) weak: Weak<dyn Streams>,
}

impl Subscriber {
    pub(crate) async fn run(self, mut commands: mpsc::UnboundedReceiver<SubscriberCommand>) {
        let mut seen: LastPositions = HashMap::new();
        // Per audience: the stream's newest position when the node subscribed. Gap filling
        // starts there for audiences that have delivered nothing yet.
        let mut floors: LastPositions = HashMap::new();
        let mut backoff = Duration::from_millis(100);
        let mut first = true;
        loop {
            let pubsub =
                tokio::time::timeout(Duration::from_secs(5), self.client.get_async_pubsub()).await;
            let (mut sink, mut stream) = match pubsub {
                Ok(Ok(p)) => p.split(),
                other => {
                    let err = match other {
                        Ok(Err(e)) => e.to_string(),
                        _ => "connect timed out".to_owned(),
                    };
                    tracing::warn!(error = %err, "redis subscriber connection failed; retrying");
                    // Fail subscribe requests that arrive while Redis is down rather than hang them.
                    let deadline = tokio::time::sleep(backoff);
                    tokio::pin!(deadline);
                    loop {
                        tokio::select! {
                            _ = &mut deadline => break,
                            cmd = commands.recv() => match cmd {
                                None => return,
                                Some(SubscriberCommand::Subscribe(_, ack)) => { let _ = ack.send(Err(unavailable(err.to_string()))); }
                                Some(SubscriberCommand::Vacated(a)) => { seen.remove(&a); }
                            }
                        }
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            backoff = Duration::from_millis(100);
            let mut channels: HashMap<String, Audience> = HashMap::new();
            let audiences = self.router.audiences();
            let mut ok = true;
            for a in &audiences {
                if sink.subscribe(self.names.channel(*a)).await.is_err() {
                    ok = false;
                    break;
                }
                channels.insert(self.names.channel(*a), *a);
            }
            if !ok {
                continue;
            }
            if !first {
                herald_telemetry::metrics().reconnects.with("redis").inc();
                tracing::info!(
                    audiences = audiences.len(),
                    "redis subscriber reconnected; filling gaps from history"
                );
                if self
                    .fill_gaps(&audiences, &mut seen, &floors)
                    .await
                    .is_err()
                {
                    continue;
                }
            }
            first = false;
            // Audiences subscribed here for the first time (listeners that arrived while this
            // connection was being made) need a floor too, or a later drop would lose their events.
            if let Some(bp) = self.weak.upgrade() {
                for a in &audiences {
                    if !seen.contains_key(a)
                        && !floors.contains_key(a)
                        && let Ok(Ok(p)) =
                            tokio::time::timeout(self.probe, bp.last_position(*a)).await
                    {
                        floors.insert(*a, p);
                    }
                }
            }
            let mut probe = tokio::time::interval(self.probe);
            probe.tick().await;
            loop {
                tokio::select! {
                    msg = stream.next() => {
                        let Some(msg) = msg else {
                            tracing::warn!("redis subscriber connection closed");
                            break;
                        };
                        let Some(&audience) = channels.get(msg.get_channel_name()) else { continue };
                        let payload: String = match msg.get_payload() { Ok(p) => p, Err(_) => continue };
                        let Some((id, data)) = payload.split_once(' ') else { continue };
                        if let Some(d) = decode(audience, id, data) {
                            self.dispatch(d, &mut seen);
                        }
                    }
                    cmd = commands.recv() => match cmd {
                        None => return,
                        Some(SubscriberCommand::Subscribe(a, ack)) => {
                            let ch = self.names.channel(a);
                            if channels.contains_key(&ch) {
                                let _ = ack.send(Ok(()));
                                continue;
                            }
                            match sink.subscribe(&ch).await {
                                Ok(()) => {
                                    channels.insert(ch, a);
                                    if let Some(bp) = self.weak.upgrade()
                                        && let Ok(Ok(p)) = tokio::time::timeout(self.probe, bp.last_position(a)).await
                                    {
                                        floors.insert(a, p);
                                    }
                                    let _ = ack.send(Ok(()));
                                }
                                Err(e) => { let _ = ack.send(Err(unavailable(e.to_string()))); break; }
                            }
                        }
                        Some(SubscriberCommand::Vacated(a)) => {
                            if self.router.has_listeners(&a) { continue; }
                            seen.remove(&a);
                            floors.remove(&a);
                            let ch = self.names.channel(a);
                            if channels.remove(&ch).is_some() && sink.unsubscribe(&ch).await.is_err() {
                                break;
                            }
                        }
                    },
                    _ = probe.tick() => {
                        let alive = tokio::time::timeout(self.probe, ping(&mut sink)).await;
                        if !matches!(alive, Ok(Ok(()))) {
                            tracing::warn!("redis subscriber connection stopped answering; reconnecting");
                            break;
                        }
                    }
                }
            }
        }
    }

    fn dispatch(&self, d: Delivery, seen: &mut LastPositions) {
        dispatch(&self.router, d, seen);
    }

    async fn fill_gaps(
        &self,
        audiences: &[Audience],
        seen: &mut LastPositions,
        floors: &LastPositions,
    ) -> Result<(), BackplaneError> {
        fill_gaps(&self.weak, &self.router, audiences, seen, floors).await
    }
}

async fn ping(sink: &mut PubSubSink) -> redis::RedisResult<()> {
    let _: Value = sink.ping().await?;
    Ok(())
}
