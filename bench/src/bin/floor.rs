//! The floor (docs/benchmarks.md): the least a tokio server can do to pass the benchmark load. SignalR
//! JSON handshake and record framing over WebSocket (256-byte read buffer), rooms fed from one
//! Redis pub/sub connection (`PSUBSCRIBE {prefix}:*`; the channel suffix is the room), one
//! frame per wake-up carrying every record queued for the connection, a ping every 15 s.
//! Clients connect to `ws://host/hub?access_token=<room>` (no negotiate, no auth, no history).
use clap::Parser;
use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::Poll;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes, handshake::server};

/// A connection's queue of records: allocated on first use, like Herald's mailbox (tokio's mpsc
/// allocates a block of slots up front), so both servers pay the same for an idle connection.
#[derive(Default)]
struct Queue {
    records: Mutex<VecDeque<Utf8Bytes>>,
    waker: AtomicWaker,
}

impl Queue {
    fn push(&self, record: Utf8Bytes) {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(record);
        self.waker.wake();
    }

    fn try_pop(&self) -> Option<Utf8Bytes> {
        self.records
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
    }

    async fn pop(&self) -> Utf8Bytes {
        std::future::poll_fn(|cx| {
            if let Some(r) = self.try_pop() {
                return Poll::Ready(r);
            }
            self.waker.register(cx.waker());
            self.try_pop().map_or(Poll::Pending, Poll::Ready)
        })
        .await
    }
}

type Rooms = Arc<Mutex<HashMap<String, Vec<Weak<Queue>>>>>;
type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: String,
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(long, default_value = "floor")]
    prefix: String,
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args = Args::parse();
    let rooms: Rooms = Arc::default();
    let mut pubsub = redis::Client::open(args.redis_url.as_str())?
        .get_async_pubsub()
        .await?;
    pubsub.psubscribe(format!("{}:*", args.prefix)).await?;
    let skip = args.prefix.len() + 1;
    let feed = rooms.clone();
    tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(msg) = messages.next().await {
            let room = msg.get_channel_name().get(skip..).unwrap_or_default();
            let payload = String::from_utf8_lossy(msg.get_payload_bytes());
            let record: Utf8Bytes = format!(
                "{{\"type\":1,\"target\":\"SpendUpdate\",\"arguments\":[{payload}]}}\u{1e}"
            )
            .into();
            let mut rooms = feed.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(list) = rooms.get_mut(room) {
                list.retain(|queue| match queue.upgrade() {
                    Some(q) => {
                        q.push(record.clone());
                        true
                    }
                    None => false,
                });
            }
        }
        eprintln!("floor: redis subscription ended");
        std::process::exit(1);
    });
    let listener = tokio::net::TcpListener::bind(&args.listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(connection(tcp, rooms.clone()));
    }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn connection(tcp: tokio::net::TcpStream, rooms: Rooms) -> Option<()> {
    let _ = tcp.set_nodelay(true);
    let mut room = String::new();
    let take_room = |req: &server::Request, resp| {
        let query = req.uri().query().unwrap_or_default();
        room = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("access_token="))
            .unwrap_or_default()
            .to_owned();
        Ok(resp)
    };
    // Idle connections dominate memory: a small read buffer (clients send a few small
    // records), and the HTTP handshake boxed so its state is not part of the connection's
    // future for the connection's whole life.
    let config = WebSocketConfig::default().read_buffer_size(256);
    let mut ws = Box::pin(tokio_tungstenite::accept_hdr_async_with_config(
        tcp,
        take_room,
        Some(config),
    ))
    .await
    .ok()?;
    match ws.next().await? {
        Ok(Message::Text(t)) if t.contains("\"json\"") && t.ends_with('\u{1e}') => {}
        _ => return None,
    }
    let queue = Arc::new(Queue::default());
    ws.send(Message::text("{}\u{1e}")).await.ok()?;
    rooms
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(room)
        .or_default()
        .push(Arc::downgrade(&queue));
    let mut ping = tokio::time::interval(std::time::Duration::from_secs(15));
    loop {
        tokio::select! {
            m = ws.next() => match m? {
                Ok(Message::Text(_) | Message::Ping(_) | Message::Pong(_)) => {}
                _ => return None,
            },
            first = queue.pop() => {
                let frame = match queue.try_pop() {
                    None => first,
                    Some(second) => {
                        let mut s = String::with_capacity(4 * first.len());
                        s.push_str(&first);
                        s.push_str(&second);
                        while s.len() < 16 * 1024 && let Some(next) = queue.try_pop() {
                            s.push_str(&next);
                        }
                        s.into()
                    }
                };
                ws.send(Message::Text(frame)).await.ok()?;
            }
            _ = ping.tick() => ws.send(Message::text("{\"type\":6}\u{1e}")).await.ok()?,
        }
    }
}
