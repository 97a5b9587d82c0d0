//! From the mailbox to the socket: which events this connection forwards (its audiences, the
//! hub's table, its filters), each once by position, batched into frames.
use super::{FRAME_TARGET, Frame, Session, Step, expiry_instant};
use herald_backplane::{Delivery, Received};
use herald_domain::Audience;
use herald_domain::vocabulary::TaskFamily;
use herald_telemetry::metrics;
use std::future::Future;

impl Session {
    /// Conduit's task hub: the object event (image/video families) plus the positional method
    /// for its phase; generic `Task*` events only positionally. `false` when nothing is
    /// written (another task than the ones subscribed, or a phase without a method). Reads the
    /// task facts the pipeline rendered once ([`herald_domain::outbound::ConduitTask`]).
    pub(super) fn render_conduit_task(&self, d: &Delivery, cursor: &str, buf: &mut Frame) -> bool {
        let Some(task) = &d.event.task else {
            return false;
        };
        if let Some(f) = &self.filters
            && !f.tasks.is_empty()
            && !f.tasks.contains(&task.task_id)
        {
            return false;
        }
        let Some((family, phase)) = d.event.name.task() else {
            return false;
        };
        let mut wrote = false;
        if family != TaskFamily::Generic {
            buf.push_event(&d.event, Some(cursor));
            wrote = true;
        }
        if let (Some(method), Some(_)) = (phase.conduit_method(), &task.args) {
            buf.push_positional(method, &d.event);
            wrote = true;
        }
        wrote
    }

    pub(super) fn listens_to(&self, audience: Audience) -> bool {
        self.subscriptions.iter().any(|s| s.audience() == audience)
    }

    /// Appends the record for `d` to `buf` unless the connection already has it or the hub does
    /// not forward it; either way its position counts as delivered. Returns whether a record
    /// was written.
    pub(super) fn render(&mut self, d: &Delivery, buf: &mut Frame) -> bool {
        // Defence in depth for "never another key's events": only our own audiences.
        if !self.listens_to(d.audience) {
            return false;
        }
        if self
            .delivered
            .get(d.audience)
            .is_some_and(|last| d.position <= last)
        {
            return false;
        }
        self.delivered.set(d.audience, d.position);
        self.write(d, buf)
    }

    /// Appends the record for `d` (already known to be undelivered) to `buf` if the hub and the
    /// connection's filters forward it.
    pub(super) fn write(&mut self, d: &Delivery, buf: &mut Frame) -> bool {
        if let Some((own, _)) = &self.own_key
            && d.audience == Audience::Key(*own)
            && d.event.name.is_key_change()
        {
            self.recheck_key = true;
        }
        if !self.hub.forwards(d.event.name) {
            return false;
        }
        if let Some(f) = &self.filters
            && !f.admin_keys.is_empty()
            && d.event.key_id.is_some_and(|k| !f.admin_keys.contains(&k))
        {
            return false;
        }
        let cursor = self.delivered.encode();
        let wrote = if self.hub.conduit_tasks {
            self.render_conduit_task(d, &cursor, buf)
        } else {
            buf.push_event(&d.event, Some(&cursor));
            true
        };
        if wrote {
            self.delivered_total.inc();
        }
        wrote
    }

    /// Not an `async fn`: the frame is built before the future starts, so the future (part of
    /// the loop's, which every idle connection holds) keeps neither `r` nor a `Delivery`.
    pub(super) fn on_mailbox(&mut self, r: Received) -> impl Future<Output = Step> + Send + '_ {
        let buf = match r {
            Received::Delivery(d) => self.batch(&d).ok_or(true),
            Received::Overflowed => Err(true),
            Received::Closed => Err(false),
        };
        async move {
            match buf {
                Err(true) => return self.slow_consumer().await,
                Err(false) => return self.close(Some("Subscription lost."), true).await,
                Ok(buf) if !buf.is_empty() => self.send(buf).await?,
                Ok(_) => {}
            }
            if std::mem::take(&mut self.recheck_key) {
                Box::pin(self.recheck_key()).await?;
            }
            Ok(())
        }
    }

    /// The frame for `first` and everything already queued behind it (up to about
    /// `FRAME_TARGET`); `None` when the mailbox overflowed. Not async: the loop's future,
    /// held by every idle connection, holds none of this.
    pub(super) fn batch(&mut self, first: &Delivery) -> Option<Frame> {
        let mut buf = Frame::new(self.proto);
        self.render(first, &mut buf);
        while buf.len() < FRAME_TARGET {
            match self.receiver.try_recv() {
                Some(Received::Delivery(d)) => {
                    self.render(&d, &mut buf);
                }
                Some(Received::Overflowed) => return None,
                Some(Received::Closed) | None => break,
            }
        }
        Some(buf)
    }

    /// Closes the connection when its key was deleted, disabled, expired or re-hashed; picks up
    /// a changed expiry. A store outage keeps the connection (the next change re-checks).
    pub(super) async fn recheck_key(&mut self) -> Step {
        let Some((id, hash)) = self.own_key.clone() else {
            return Ok(());
        };
        match self.gw.store.key_by_id(id).await {
            Ok(Some(k)) if k.key_hash == hash && k.is_usable(chrono::Utc::now()) => {
                self.key_expires = expiry_instant(k.expires_at);
                Ok(())
            }
            Ok(Some(_)) => {
                self.close(Some("The key was disabled or has expired."), false)
                    .await
            }
            Ok(None) => self.close(Some("The key was deleted."), false).await,
            Err(e) => {
                tracing::warn!(connection = %self.connection_id, error = %e, "key re-check failed");
                Ok(())
            }
        }
    }

    pub(super) async fn slow_consumer(&mut self) -> Step {
        tracing::info!(connection = %self.connection_id, hub = self.hub.name, "slow consumer closed");
        metrics().slow_consumer_closes.with(self.hub.name).inc();
        self.close(Some("slow consumer: outbound queue full"), true)
            .await
    }
}
