//! The SignalR handshake: the first record, within the handshake timeout, or a clean refusal.
use super::{CLOSE_GRACE, Session, Step, Stop, later, out, stopping};
use crate::protocol::{self, Protocol};
use axum::extract::ws::Message;
use tokio::time::Instant;

impl Session {
    pub(super) async fn handshake(&mut self) -> Step {
        let deadline = later(Instant::now(), self.gw.config.handshake_timeout);
        // Sees a shutdown that began before it was created too (`stopping` checks the value).
        let mut shutdown = self.gw.shutdown.subscribe();
        loop {
            if let Some((record, rest)) = protocol::take_record(&self.inbuf) {
                let result = protocol::parse_handshake(record);
                self.inbuf = rest.to_vec();
                return match result {
                    Ok(Protocol::MessagePack) if self.ws.text_only() => {
                        let e = protocol::binary_on_text_transport(Protocol::MessagePack);
                        self.refuse_handshake(&e).await
                    }
                    Ok(p) => {
                        self.proto = p;
                        self.send(out::handshake_ok(p)).await
                    }
                    Err(e) => self.refuse_handshake(&e).await,
                };
            }
            if self.inbuf.len() > self.gw.config.max_message_bytes {
                return self
                    .refuse_handshake("Handshake request is too large.")
                    .await;
            }
            let msg = tokio::select! {
                () = stopping(&mut shutdown) => {
                    self.close_socket().await;
                    return Err(Stop);
                }
                () = tokio::time::sleep_until(deadline) => {
                    let secs = self.gw.config.handshake_timeout.as_secs_f64();
                    return self
                        .refuse_handshake(&format!("Handshake was not received within {secs} seconds."))
                        .await;
                }
                m = futures_util::StreamExt::next(&mut self.ws) => m,
            };
            match msg {
                Some(Ok(Message::Text(t))) => self.inbuf.extend_from_slice(t.as_bytes()),
                Some(Ok(Message::Binary(b))) => self.inbuf.extend_from_slice(&b),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return Err(Stop),
            }
        }
    }

    pub(super) async fn refuse_handshake(&mut self, error: &str) -> Step {
        tracing::debug!(connection = %self.connection_id, error, "handshake refused");
        let _ = tokio::time::timeout(
            CLOSE_GRACE,
            self.send(out::Frame::Text(protocol::handshake_error(error))),
        )
        .await;
        self.close_socket().await;
        Err(Stop)
    }
}
