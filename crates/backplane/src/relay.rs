//! Messages from one node to another, addressed by name: the requests of a long-polling or
//! Server-Sent Events connection land on any node behind a round-robin balancer and are relayed
//! to the node that holds the connection (docs/decisions.md, "Fallback transports without sticky
//! sessions"). A node listens on a name; any node sends to it and learns whether a listener got
//! it. Over Redis this is pub/sub on `{prefix}:relay:{name}` through one server (on a cluster,
//! the first node given), because only there does PUBLISH count every receiver.
use crate::contract::{BackplaneError, unavailable};
use crate::inbox::{Listeners, RelayInbox};
use futures_util::StreamExt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

pub(crate) enum RelayCommand {
    Listen(String, oneshot::Sender<Result<(), BackplaneError>>),
    Unlisten(String),
}

/// The Redis side: one subscriber connection for the names this node listens to, and one
/// connection for PUBLISH, both to the same server.
pub(crate) struct RedisRelay {
    prefix: String,
    client: redis::Client,
    listeners: Arc<Listeners>,
    commands: mpsc::UnboundedSender<RelayCommand>,
    publisher: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

impl RedisRelay {
    pub(crate) fn start(client: redis::Client, prefix: &str, probe: Duration) -> Self {
        let listeners = Arc::new(Listeners::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let left = tx.clone();
        listeners.on_leave(move |name| {
            let _ = left.send(RelayCommand::Unlisten(name.to_owned()));
        });
        let prefix = format!("{prefix}:relay:");
        tokio::spawn(subscriber(
            client.clone(),
            prefix.clone(),
            listeners.clone(),
            probe,
            rx,
        ));
        Self {
            prefix,
            client,
            listeners,
            commands: tx,
            publisher: tokio::sync::Mutex::new(None),
        }
    }

    pub(crate) async fn listen(&self, name: &str) -> Result<RelayInbox, BackplaneError> {
        let inbox = self.listeners.add(name);
        let (ack, done) = oneshot::channel();
        self.commands
            .send(RelayCommand::Listen(name.to_owned(), ack))
            .map_err(|_| unavailable("relay subscriber stopped"))?;
        match tokio::time::timeout(Duration::from_secs(5), done).await {
            Ok(Ok(Ok(()))) => Ok(inbox),
            Ok(Ok(Err(e))) => Err(e),
            _ => Err(unavailable("relay subscribe timed out")),
        }
    }

    /// `SET NX PX` on the relay's server: true for the first caller only.
    pub(crate) async fn claim(&self, name: &str, ttl: Duration) -> Result<bool, BackplaneError> {
        let mut conn = self.publisher().await?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let set = tokio::time::timeout(
            Duration::from_secs(5),
            redis::cmd("SET")
                .arg(format!("{}claim:{name}", self.prefix))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async::<Option<String>>(&mut conn),
        )
        .await;
        match set {
            Ok(Ok(v)) => Ok(v.is_some()),
            Ok(Err(e)) => {
                *self.publisher.lock().await = None;
                Err(unavailable(e))
            }
            Err(_) => {
                *self.publisher.lock().await = None;
                Err(unavailable("relay claim timed out"))
            }
        }
    }

    /// The connection for PUBLISH and claims, made on first use and after a failure.
    async fn publisher(&self) -> Result<redis::aio::MultiplexedConnection, BackplaneError> {
        let mut slot = self.publisher.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let c = tokio::time::timeout(
            Duration::from_secs(5),
            self.client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| unavailable("relay connection timed out"))?
        .map_err(unavailable)?;
        *slot = Some(c.clone());
        Ok(c)
    }

    pub(crate) async fn send(&self, name: &str, payload: Vec<u8>) -> Result<bool, BackplaneError> {
        // Local listeners first: no round trip when the holder is this node.
        if self.listeners.contains(name) {
            return Ok(self.listeners.deliver(name, payload));
        }
        let mut conn = self.publisher().await?;
        let published = tokio::time::timeout(
            Duration::from_secs(5),
            redis::cmd("PUBLISH")
                .arg(format!("{}{name}", self.prefix))
                .arg(payload)
                .query_async::<i64>(&mut conn),
        )
        .await;
        match published {
            Ok(Ok(n)) => Ok(n > 0),
            other => {
                // The next send makes a new connection.
                *self.publisher.lock().await = None;
                Err(match other {
                    Ok(Err(e)) => unavailable(e),
                    _ => unavailable("relay publish timed out"),
                })
            }
        }
    }
}

async fn subscriber(
    client: redis::Client,
    prefix: String,
    listeners: Arc<Listeners>,
    probe: Duration,
    mut commands: mpsc::UnboundedReceiver<RelayCommand>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let pubsub = tokio::time::timeout(Duration::from_secs(5), client.get_async_pubsub()).await;
        let (mut sink, mut stream) = match pubsub {
            Ok(Ok(p)) => p.split(),
            _ => {
                tracing::warn!("redis relay subscriber connection failed; retrying");
                // Fail what asks meanwhile rather than hang it.
                let pause = tokio::time::sleep(backoff);
                tokio::pin!(pause);
                loop {
                    tokio::select! {
                        () = &mut pause => break,
                        cmd = commands.recv() => match cmd {
                            None => return,
                            Some(RelayCommand::Listen(_, ack)) => {
                                let _ = ack.send(Err(unavailable("redis relay connection down")));
                            }
                            Some(RelayCommand::Unlisten(_)) => {}
                        }
                    }
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        backoff = Duration::from_millis(100);
        let mut ok = true;
        for name in listeners.names() {
            if sink.subscribe(format!("{prefix}{name}")).await.is_err() {
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        let mut tick = tokio::time::interval(probe);
        tick.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let Some(name) = msg.get_channel_name().strip_prefix(prefix.as_str()) else { continue };
                    let payload: Vec<u8> = match msg.get_payload() { Ok(p) => p, Err(_) => continue };
                    listeners.deliver(name, payload);
                }
                cmd = commands.recv() => match cmd {
                    None => return,
                    Some(RelayCommand::Listen(name, ack)) => {
                        let r = sink.subscribe(format!("{prefix}{name}")).await;
                        let failed = r.is_err();
                        let _ = ack.send(r.map_err(unavailable));
                        if failed { break; }
                    }
                    Some(RelayCommand::Unlisten(name)) => {
                        if !listeners.contains(&name)
                            && sink.unsubscribe(format!("{prefix}{name}")).await.is_err()
                        {
                            break;
                        }
                    }
                },
                _ = tick.tick() => {
                    let alive = tokio::time::timeout(probe, sink.ping::<redis::Value>()).await;
                    if !matches!(alive, Ok(Ok(_))) {
                        tracing::warn!("redis relay subscriber stopped answering; reconnecting");
                        break;
                    }
                }
            }
        }
    }
}

/// The in-process side (`standalone`): every listener is local.
#[derive(Default)]
pub(crate) struct LocalRelay {
    listeners: Arc<Listeners>,
    claims: Mutex<HashMap<String, tokio::time::Instant>>,
}

impl LocalRelay {
    pub(crate) fn listen(&self, name: &str) -> RelayInbox {
        self.listeners.add(name)
    }

    pub(crate) fn send(&self, name: &str, payload: Vec<u8>) -> bool {
        self.listeners.deliver(name, payload)
    }

    pub(crate) fn claim(&self, name: &str, ttl: Duration) -> bool {
        let now = tokio::time::Instant::now();
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        claims.retain(|_, until| *until > now);
        if claims.contains_key(name) {
            return false;
        }
        claims.insert(name.to_owned(), now + ttl);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_listener_receives_until_dropped_and_a_claim_is_taken_once() {
        let relay = LocalRelay::default();
        assert!(!relay.send("a", b"x".to_vec()), "nobody listens yet");
        let mut inbox = relay.listen("a");
        assert!(relay.send("a", b"x".to_vec()));
        assert_eq!(inbox.recv().await, Some(b"x".to_vec()));
        drop(inbox);
        assert!(!relay.send("a", b"y".to_vec()), "the listener left");
        assert!(relay.claim("c", Duration::from_secs(60)));
        assert!(!relay.claim("c", Duration::from_secs(60)));
    }

    #[tokio::test]
    async fn a_full_inbox_refuses_instead_of_growing() {
        let relay = LocalRelay::default();
        let _inbox = relay.listen("a");
        let accepted = (0..crate::inbox::INBOX_SLOTS + 10)
            .filter(|_| relay.send("a", vec![0]))
            .count();
        assert_eq!(accepted, crate::inbox::INBOX_SLOTS);
    }
}
