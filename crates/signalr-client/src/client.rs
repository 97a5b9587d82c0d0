//! A SignalR JSON client over one WebSocket, for tests: records are queued in arrival order, and
//! every read has a deadline so a test fails instead of hanging.
use crate::codec::{self, HANDSHAKE_JSON};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::VecDeque;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Nothing arrived before the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimedOut;

/// Why a connection was not opened.
#[derive(Debug)]
pub enum ConnectError {
    /// The server answered the upgrade with this HTTP status.
    Refused(u16),
    Other(String),
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    records: VecDeque<String>,
    /// Records per text frame received, in order.
    frames: Vec<usize>,
    next_invocation_id: u64,
}

impl Client {
    /// Opens the WebSocket (no handshake yet) with extra request headers.
    pub async fn open(url: &str, headers: &[(&str, &str)]) -> Result<Client, ConnectError> {
        let mut req = url
            .into_client_request()
            .map_err(|e| ConnectError::Other(e.to_string()))?;
        for (k, v) in headers {
            let name = tungstenite::http::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| ConnectError::Other(e.to_string()))?;
            let value = v
                .parse()
                .map_err(|_| ConnectError::Other(format!("header {k}")))?;
            req.headers_mut().insert(name, value);
        }
        match tokio_tungstenite::connect_async(req).await {
            Ok((ws, _)) => Ok(Client {
                ws,
                records: VecDeque::new(),
                frames: Vec::new(),
                next_invocation_id: 0,
            }),
            Err(tungstenite::Error::Http(resp)) => {
                Err(ConnectError::Refused(resp.status().as_u16()))
            }
            Err(e) => Err(ConnectError::Other(e.to_string())),
        }
    }

    /// Opens the WebSocket and completes the JSON handshake within `wait`.
    pub async fn connect(url: &str, wait: Duration) -> Result<Client, ConnectError> {
        let mut c = Self::open(url, &[]).await?;
        c.handshake(wait).await.map_err(ConnectError::Other)?;
        Ok(c)
    }

    /// Sends the JSON handshake and checks the server's empty answer.
    pub async fn handshake(&mut self, wait: Duration) -> Result<(), String> {
        self.send(HANDSHAKE_JSON)
            .await
            .map_err(|e| format!("sending the handshake: {e}"))?;
        match self.next_record(wait).await {
            Ok(Some(r)) if r == "{}" => Ok(()),
            Ok(Some(r)) => Err(format!("handshake refused: {r}")),
            Ok(None) => Err("closed during the handshake".into()),
            Err(TimedOut) => Err("no handshake answer in time".into()),
        }
    }

    /// Sends `text` (one or more records) as one text frame.
    pub async fn send(&mut self, text: &str) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::text(text)).await
    }

    /// Sends `bytes` as one binary frame (MessagePack messages).
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<(), tungstenite::Error> {
        self.ws.send(Message::binary(bytes)).await
    }

    /// The next binary frame as it is, for a MessagePack connection (text frames and control
    /// frames are skipped); `Ok(None)` once the connection is closed.
    pub async fn next_binary(&mut self, wait: Duration) -> Result<Option<Vec<u8>>, TimedOut> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| TimedOut)?;
            match msg {
                Some(Ok(Message::Binary(b))) => return Ok(Some(b.to_vec())),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next record; `Ok(None)` once the connection is closed.
    pub async fn next_record(&mut self, wait: Duration) -> Result<Option<String>, TimedOut> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(r) = self.records.pop_front() {
                return Ok(Some(r));
            }
            let msg = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .map_err(|_| TimedOut)?;
            match msg {
                Some(Ok(Message::Text(t))) => self.push_frame(t.as_str()),
                Some(Ok(Message::Binary(b))) => self.push_frame(&String::from_utf8_lossy(&b)),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Ok(None),
                Some(Ok(_)) => {}
            }
        }
    }

    fn push_frame(&mut self, frame: &str) {
        let before = self.records.len();
        self.records
            .extend(codec::records(frame).map(str::to_owned));
        self.frames.push(self.records.len() - before);
    }

    /// The next record parsed as JSON (a record that is not JSON is returned as a string).
    pub async fn next_message(&mut self, wait: Duration) -> Result<Option<Value>, TimedOut> {
        Ok(self
            .next_record(wait)
            .await?
            .map(|r| serde_json::from_str(&r).unwrap_or(Value::String(r))))
    }

    /// The next invocation (type 1) as (target, first argument), skipping other messages.
    pub async fn next_invocation(
        &mut self,
        wait: Duration,
    ) -> Result<Option<(String, Value)>, TimedOut> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let Some(m) = self.next_message(left).await? else {
                return Ok(None);
            };
            if m["type"] == 1 {
                let target = m["target"].as_str().unwrap_or_default().to_owned();
                return Ok(Some((target, m["arguments"][0].clone())));
            }
        }
    }

    /// Invokes `target` and returns its Completion; records that arrive meanwhile stay queued,
    /// in order, for the next reads.
    pub async fn invoke(
        &mut self,
        target: &str,
        arguments: Value,
        wait: Duration,
    ) -> Result<Value, String> {
        self.next_invocation_id += 1;
        let id = self.next_invocation_id.to_string();
        self.send(&codec::invocation(Some(&id), target, &arguments))
            .await
            .map_err(|e| format!("sending {target}: {e}"))?;
        let deadline = tokio::time::Instant::now() + wait;
        let mut others = VecDeque::new();
        let completion = loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let record = match self.next_record(left).await {
                Ok(Some(r)) => r,
                Ok(None) => break Err(format!("closed before {target} completed")),
                Err(TimedOut) => break Err(format!("no completion of {target} in time")),
            };
            let m: Value = serde_json::from_str(&record).unwrap_or(Value::Null);
            if m["type"] == 3 && m["invocationId"] == id.as_str() {
                break Ok(m);
            }
            others.push_back(record);
        };
        others.append(&mut self.records);
        self.records = others;
        completion
    }

    /// Records per text frame received so far (to check batching).
    pub fn frames(&self) -> &[usize] {
        &self.frames
    }

    /// Puts records back at the front of the queue, in order (for a reader that looked ahead).
    pub fn unread(&mut self, records: impl IntoIterator<Item = String>) {
        let mut ahead: VecDeque<String> = records.into_iter().collect();
        ahead.append(&mut self.records);
        self.records = ahead;
    }
}
