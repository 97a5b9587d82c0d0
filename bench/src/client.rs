//! Benchmark clients: SignalR JSON hub protocol (Herald and the floor), SignalR MessagePack hub
//! protocol (Herald, `--hub-protocol messagepack`) and Socket.IO 4 over Engine.IO 4 WebSocket
//! (the peer). Each connection is one task; every delivery is checked
//! against the connection's key and its event sequence (loss, duplicates, misrouting) and its
//! send timestamp goes into the latency histogram.
use crate::error::Error;
use crate::http::{Http, authority, json_string_field};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use herald_signalr_client::codec;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::TcpSocket;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    SignalR,
    SocketIo,
}

/// Which events a connection has seen, by sequence number within its key: everything below
/// `lo`, plus the (few) numbers in `above` that arrived ahead of a gap.
#[derive(Default)]
pub struct Track {
    lo: u64,
    above: Vec<u64>,
    pub duplicates: u64,
    pub misrouted: u64,
    /// Connected at least once (only those are expected to receive anything).
    pub connected: bool,
    /// The last cursor received (SignalR resume).
    pub cursor: Option<String>,
}

impl Track {
    fn see(&mut self, seq: u64) {
        if seq < self.lo {
            self.duplicates += 1;
        } else if seq == self.lo {
            self.lo += 1;
            while let Some(pos) = self.above.iter().position(|&s| s == self.lo) {
                self.above.swap_remove(pos);
                self.lo += 1;
            }
        } else if self.above.contains(&seq) {
            self.duplicates += 1;
        } else {
            self.above.push(seq);
        }
    }

    /// Every sequence number below `n` has been seen.
    pub fn has_all_below(&self, n: u64) -> bool {
        self.lo >= n
    }

    pub fn unique(&self) -> u64 {
        self.lo + self.above.len() as u64
    }
}

pub struct Shared {
    pub run: String,
    pub protocol: Protocol,
    /// SignalR with the MessagePack hub protocol instead of JSON.
    pub msgpack: bool,
    /// WebSocket payload bytes received after the handshake.
    pub bytes_received: AtomicU64,
    pub hist: Mutex<Histogram<u64>>,
    pub deliveries: AtomicU64,
    /// Records that were not benchmark events of this run (pings excluded).
    pub other_records: AtomicU64,
    pub connected: AtomicUsize,
    pub connects: AtomicU64,
    pub connect_failures: AtomicU64,
    pub gave_up: AtomicUsize,
    pub disconnects: AtomicU64,
    pub last_delivery_ns: AtomicU64,
    pub tracks: Vec<Mutex<Track>>,
    pub reconnect: bool,
    pub stop: AtomicBool,
    pub connect_gate: Semaphore,
}

impl Shared {
    pub fn new(
        run: String,
        protocol: Protocol,
        n: usize,
        reconnect: bool,
        inflight: usize,
    ) -> Self {
        Self {
            run,
            protocol,
            msgpack: false,
            bytes_received: AtomicU64::new(0),
            // 1 µs .. 1 h, 3 significant digits: cannot fail.
            hist: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3)
                    .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!())),
            ),
            deliveries: AtomicU64::new(0),
            other_records: AtomicU64::new(0),
            connected: AtomicUsize::new(0),
            connects: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            gave_up: AtomicUsize::new(0),
            disconnects: AtomicU64::new(0),
            last_delivery_ns: AtomicU64::new(0),
            tracks: (0..n).map(|_| Mutex::new(Track::default())).collect(),
            reconnect,
            stop: AtomicBool::new(false),
            connect_gate: Semaphore::new(inflight.max(1)),
        }
    }

    pub fn track(&self, i: usize) -> std::sync::MutexGuard<'_, Track> {
        self.tracks[i]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Where and how one connection connects.
pub struct ConnSpec {
    pub index: usize,
    /// The key id this connection listens to.
    pub key_id: i64,
    /// Credential: raw virtual key (Herald) or the room name (floor, peer).
    pub token: String,
    /// Base WebSocket URLs (`ws://host:port`), first for the first connect; reconnects rotate.
    pub urls: Arc<Vec<String>>,
    pub reconnect_urls: Arc<Vec<String>>,
    /// Path of the hub (`/hubs/spend`, `/hub`, `/socket.io/`).
    pub path: Arc<str>,
    pub negotiate: bool,
    /// Long polling instead of a WebSocket (negotiates first).
    pub long_polling: bool,
    pub source: Option<IpAddr>,
}

/// Runs one connection until the run stops (reconnecting if asked to).
pub async fn run_connection(spec: ConnSpec, shared: Arc<Shared>) {
    let mut attempt = 0u32;
    let mut ever = false;
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return;
        }
        let urls = if ever {
            &spec.reconnect_urls
        } else {
            &spec.urls
        };
        let base = &urls[(spec.index + attempt as usize) % urls.len()];
        let permit = shared.connect_gate.acquire().await;
        let cursor = shared.track(spec.index).cursor.clone();
        let conn = tokio::time::timeout(Duration::from_secs(20), async {
            if spec.long_polling {
                crate::longpoll::connect(&spec.path, &spec.token, base, cursor.as_deref())
                    .await
                    .map(Open::LongPoll)
            } else {
                connect(&spec, base, cursor.as_deref(), &shared)
                    .await
                    .map(|(ws, rest)| Open::WebSocket(ws, rest))
            }
        })
        .await
        .unwrap_or_else(|_| Err("connect timed out".into()));
        drop(permit);
        match conn {
            Ok(open) => {
                attempt = 0;
                ever = true;
                shared.track(spec.index).connected = true;
                shared.connects.fetch_add(1, Ordering::Relaxed);
                shared.connected.fetch_add(1, Ordering::Relaxed);
                let _ = match open {
                    Open::WebSocket(ws, rest) => session(ws, rest, &spec, &shared).await,
                    Open::LongPoll(lp) => {
                        crate::longpoll::session(lp, |r| records(r, &spec, &shared)).await
                    }
                };
                shared.connected.fetch_sub(1, Ordering::Relaxed);
                shared.disconnects.fetch_add(1, Ordering::Relaxed);
                if !shared.reconnect {
                    return;
                }
            }
            Err(e) => {
                shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
                if !shared.reconnect && attempt >= 5 {
                    eprintln!("connection {} gave up: {e}", spec.index);
                    shared.gave_up.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            }
        }
        // Back off with jitter so reconnects spread out.
        let base_ms = 50u64 << attempt.min(5);
        let jitter = now_ns() % base_ms.max(1);
        tokio::time::sleep(Duration::from_millis(base_ms + jitter)).await;
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// A connection that completed its handshake.
enum Open {
    WebSocket(Ws, Vec<u8>),
    LongPoll(crate::longpoll::LongPoll),
}

/// Connects and completes the protocol handshake. Returns the socket and any records that
/// arrived in the same frame as the handshake answer.
async fn connect(
    spec: &ConnSpec,
    base: &str,
    cursor: Option<&str>,
    shared: &Shared,
) -> Result<(Ws, Vec<u8>), Error> {
    let protocol = shared.protocol;
    let host = authority(base)?;
    let mut url = format!("{base}{}", spec.path);
    match protocol {
        Protocol::SignalR => {
            let token = if spec.negotiate {
                let mut http = Http::new(host.clone());
                let r = http
                    .post(
                        &format!("{}/negotiate?negotiateVersion=1", spec.path),
                        Some(&spec.token),
                        "",
                    )
                    .await?;
                if r.status != 200 {
                    return Err(format!("negotiate answered {}", r.status).into());
                }
                Some(
                    json_string_field(&r.body, "connectionToken")
                        .ok_or("negotiate: no connectionToken")?
                        .to_owned(),
                )
            } else {
                None
            };
            url.push_str("?access_token=");
            url.push_str(&spec.token);
            if let Some(t) = token {
                url.push_str("&id=");
                url.push_str(&t);
            }
            if let Some(c) = cursor {
                url.push_str("&cursor=");
                url.push_str(c);
            }
        }
        Protocol::SocketIo => {
            url.push_str("?EIO=4&transport=websocket&key=");
            url.push_str(&spec.token);
        }
    }
    let addr: SocketAddr = tokio::net::lookup_host(&host)
        .await?
        .next()
        .ok_or("no address")?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(src) = spec.source {
        socket.bind(SocketAddr::new(src, 0))?;
    }
    let tcp = socket.connect(addr).await?;
    tcp.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, tcp, Some(config)).await?;
    let rest = match protocol {
        Protocol::SignalR if shared.msgpack => {
            ws.send(Message::text(codec::handshake("messagepack", 1)))
                .await?;
            let first = next_data(&mut ws).await?;
            let at = first
                .iter()
                .position(|&b| b == 0x1e)
                .ok_or("handshake answer without a record separator")?;
            if first[..at].trim_ascii() != b"{}" {
                return Err(format!(
                    "handshake refused: {}",
                    String::from_utf8_lossy(&first[..at])
                )
                .into());
            }
            first[at + 1..].to_vec()
        }
        Protocol::SignalR => {
            ws.send(Message::text(codec::HANDSHAKE_JSON)).await?;
            let first = next_text(&mut ws).await?;
            codec::split_handshake(&first)?.as_bytes().to_vec()
        }
        Protocol::SocketIo => {
            let open = next_text(&mut ws).await?;
            if !open.starts_with('0') {
                return Err(format!("engine.io open expected, got {open:?}").into());
            }
            ws.send(Message::text("40")).await?;
            loop {
                let m = next_text(&mut ws).await?;
                if m.starts_with("40") {
                    break;
                }
                if m == "2" {
                    ws.send(Message::text("3")).await?;
                    continue;
                }
                return Err(format!("socket.io connect refused: {m}").into());
            }
            Vec::new()
        }
    };
    Ok((ws, rest))
}

/// The first text or binary message (MessagePack answers the handshake in a binary frame).
async fn next_data(ws: &mut Ws) -> Result<Vec<u8>, Error> {
    loop {
        match ws.next().await.ok_or("closed during handshake")?? {
            Message::Text(t) => return Ok(t.as_bytes().to_vec()),
            Message::Binary(b) => return Ok(b.to_vec()),
            Message::Close(_) => return Err("closed during handshake".into()),
            _ => {}
        }
    }
}

async fn next_text(ws: &mut Ws) -> Result<String, Error> {
    loop {
        match ws.next().await.ok_or("closed during handshake")?? {
            Message::Text(t) => return Ok(t.as_str().to_owned()),
            Message::Close(_) => return Err("closed during handshake".into()),
            _ => {}
        }
    }
}

/// Reads deliveries until the server closes (the process exits at the end of a run).
async fn session(mut ws: Ws, rest: Vec<u8>, spec: &ConnSpec, shared: &Shared) -> Result<(), Error> {
    if !rest.is_empty() {
        if shared.msgpack {
            msgpack_frame(&rest, spec, shared)?;
        } else {
            records(&String::from_utf8_lossy(&rest), spec, shared)?;
        }
    }
    let ping_msgpack: &[u8] = &[0x02, 0x91, 0x06];
    let mut ping = tokio::time::interval(Duration::from_secs(15));
    ping.tick().await;
    loop {
        tokio::select! {
            m = ws.next() => match m.ok_or("closed")?? {
                Message::Binary(b) if shared.msgpack => {
                    shared.bytes_received.fetch_add(b.len() as u64, Ordering::Relaxed);
                    msgpack_frame(&b, spec, shared)?;
                }
                Message::Text(t) => match shared.protocol {
                    Protocol::SignalR => {
                        shared.bytes_received.fetch_add(t.len() as u64, Ordering::Relaxed);
                        records(t.as_str(), spec, shared)?
                    }
                    Protocol::SocketIo => match t.as_str() {
                        "2" => ws.send(Message::text("3")).await?,
                        s if s.starts_with("42") => deliver(s, spec, shared),
                        s if s.starts_with("41") || s.starts_with('1') => return Ok(()),
                        _ => {}
                    },
                },
                Message::Close(_) => return Ok(()),
                _ => {}
            },
            _ = ping.tick(), if shared.protocol == Protocol::SignalR => {
                if shared.msgpack {
                    ws.send(Message::binary(ping_msgpack.to_vec())).await?;
                } else {
                    ws.send(Message::text(codec::PING)).await?;
                }
            }
        }
    }
}

/// Handles the SignalR records of one frame; `Err` when the server sent Close.
pub(crate) fn records(frame: &str, spec: &ConnSpec, shared: &Shared) -> Result<(), Error> {
    for rec in codec::records(frame) {
        if rec.starts_with("{\"type\":6") {
            continue;
        }
        if rec.starts_with("{\"type\":7") {
            return Err(format!("server closed: {rec}").into());
        }
        deliver(rec, spec, shared);
    }
    Ok(())
}

/// Accounts the events of one MessagePack frame; `Err` when the server sent Close.
fn msgpack_frame(frame: &[u8], spec: &ConnSpec, shared: &Shared) -> Result<(), Error> {
    crate::msgpack::messages(frame, |fields| match fields {
        Some((id, request, cursor)) => deliver_fields(id, request, cursor, spec, shared),
        None => {
            shared.other_records.fetch_add(1, Ordering::Relaxed);
        }
    })
}

/// Accounts one delivered JSON record.
fn deliver(rec: &str, spec: &ConnSpec, shared: &Shared) {
    deliver_fields(
        json_string_field(rec, "eventId"),
        json_string_field(rec, "requestId"),
        json_string_field(rec, "cursor"),
        spec,
        shared,
    );
}

/// Accounts one delivered event: `eventId` is `{run}-{key}-{seq}`, `requestId` is
/// `t{send time in ns since the epoch}`.
fn deliver_fields(
    event_id: Option<&str>,
    request_id: Option<&str>,
    cursor: Option<&str>,
    spec: &ConnSpec,
    shared: &Shared,
) {
    let now = now_ns();
    let parsed = event_id.and_then(|id| {
        let mut parts = id.rsplitn(3, '-');
        let seq: u64 = parts.next()?.parse().ok()?;
        let key: i64 = parts.next()?.parse().ok()?;
        (parts.next()? == shared.run).then_some((key, seq))
    });
    let Some((key, seq)) = parsed else {
        shared.other_records.fetch_add(1, Ordering::Relaxed);
        return;
    };
    if let Some(sent) = request_id
        .and_then(|r| r.strip_prefix('t'))
        .and_then(|t| t.parse::<u64>().ok())
    {
        let us = now.saturating_sub(sent) / 1000;
        let _ = shared
            .hist
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(us.max(1));
    }
    shared.deliveries.fetch_add(1, Ordering::Relaxed);
    shared.last_delivery_ns.fetch_max(now, Ordering::Relaxed);
    let mut t = shared.track(spec.index);
    if key != spec.key_id {
        t.misrouted += 1;
        return;
    }
    t.see(seq);
    if shared.reconnect
        && let Some(c) = cursor
    {
        t.cursor = Some(c.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::Track;

    #[test]
    fn track_counts_unique_and_duplicates() {
        let mut t = Track::default();
        for s in [0, 1, 3, 2, 2, 5, 4, 0] {
            t.see(s);
        }
        assert_eq!(t.unique(), 6);
        assert_eq!(t.duplicates, 2);
    }
}
