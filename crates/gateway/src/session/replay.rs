//! Resume from history: `?cursor=` at connect and `Resume(cursor)` later, each event once, in
//! stream order, with `ResumeGap` where history no longer reaches back.
use super::{Boxed, FRAME_TARGET, Frame, ReplayError, Session};
use crate::cursor::Cursor;
use herald_backplane::Position;
use herald_domain::Audience;
use herald_telemetry::metrics;

impl Session {
    /// Replays, per audience named in `from`, every event after `from` this connection has
    /// not delivered, in stream order within each part: first those between `from` and the
    /// connection's floor (older than anything it sent live), then those after what it
    /// delivered that have not arrived live yet. Returns the number of events sent.
    pub(super) fn replay<'a>(
        &'a mut self,
        from: &'a Cursor,
    ) -> Boxed<'a, Result<usize, ReplayError>> {
        Box::pin(self.replay_now(from))
    }

    pub(super) async fn replay_now(&mut self, from: &Cursor) -> Result<usize, ReplayError> {
        let mut sent = 0;
        for i in 0..self.subscriptions.len() {
            let audience = self.subscriptions[i].audience();
            let Some(requested) = from.get(audience) else {
                continue;
            };
            let floor = self.floors.get(audience);
            let mut noted = false;
            if let Some(floor) = floor
                && requested < floor
            {
                // Events the connection never had: published before it connected.
                sent += self
                    .replay_history(audience, requested, Some(floor), true)
                    .await?;
                noted = true;
                self.floors.set(audience, requested);
            }
            let start = match self.delivered.get(audience) {
                Some(last) if last > requested => last,
                _ => requested,
            };
            // Live events up to here are already with the client: skip them when they arrive.
            self.delivered.set(audience, start);
            sent += self.replay_history(audience, start, None, !noted).await?;
        }
        Ok(sent)
    }

    /// Sends the history of `audience` after `after`, page by page. With `until`: only up to
    /// it, without moving `delivered` (these events are older than what the connection already
    /// sent). Without: through `render`, which skips what was delivered and moves `delivered`
    /// along. `note`: count the resume (and report a gap) on the first page. Returns the number
    /// of events sent.
    pub(super) async fn replay_history(
        &mut self,

        audience: Audience,
        after: Position,
        until: Option<Position>,
        note: bool,
    ) -> Result<usize, ReplayError> {
        let page = self.gw.config.history_page;
        let mut after = after;
        let mut first = note;
        let mut sent = 0;
        loop {
            let history = self
                .gw
                .backplane
                .history(audience, Some(after), page)
                .await
                .map_err(ReplayError::Unavailable)?;
            let mut buf = Frame::new(self.proto);
            if first {
                self.note_resume(audience, history.gap, &mut buf);
            }
            first = false;
            let mut done = history.events.len() < page;
            for d in &history.events {
                let wrote = match until {
                    Some(u) if d.position > u => {
                        done = true;
                        break;
                    }
                    Some(_) => self.listens_to(d.audience) && self.write(d, &mut buf),
                    None => self.render(d, &mut buf),
                };
                if wrote {
                    sent += 1;
                }
                if buf.len() >= FRAME_TARGET {
                    self.send(buf.take()).await?;
                }
            }
            if !buf.is_empty() {
                self.send(buf).await?;
            }
            match history.events.last() {
                Some(d) if !done => after = d.position,
                _ => break,
            }
        }
        Ok(sent)
    }

    /// Counts a resume and, when history no longer reaches back to the cursor, puts a
    /// `ResumeGap` record in `buf`.
    pub(super) fn note_resume(&mut self, audience: Audience, gap: bool, buf: &mut Frame) {
        let outcome = if gap { "gap" } else { "replayed" };
        metrics().resumes.with(outcome).inc();
        if gap {
            let payload = format!("{{\"audience\":\"{audience}\"}}");
            let cursor = self.delivered.encode();
            buf.push_object("ResumeGap", &payload, Some(&cursor));
        }
    }
}
