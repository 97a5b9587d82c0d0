//! Acking in frames. Delivery tags rise in delivery order, so every finished delivery below the
//! oldest unfinished one goes out in a single `multiple` ack.
use super::connection::AmqpError;
use herald_domain::Cause;
use herald_telemetry::metrics;
use lapin::Acker;
use lapin::options::BasicAckOptions;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How a delivery's handling ended.
pub(super) enum Handled {
    /// Processed, dead-lettered or deferred: it may be acked.
    Done(u64, Acker),
    /// Shutdown came while it was being retried: left unacked, it returns to the queue.
    Held,
}

/// Finished deliveries waiting to be acked above an unfinished one, beyond which they are
/// acked one by one rather than keep the prefetch window full behind a slow message: a
/// quarter of the window.
pub(super) fn acks_waiting_max(prefetch: u16) -> usize {
    usize::from(prefetch / 4)
}

/// Finished deliveries worth an ack frame of their own while others are still being
/// processed: an eighth of the window. Each frame costs a quorum queue about as much as
/// delivering several messages, so a drain acked every ~7 deliveries spent ~9 µs of the
/// broker's CPU per message on acks alone.
pub(super) fn acks_batch(prefetch: u16) -> usize {
    usize::from(prefetch / 8).max(1)
}

/// The longest a finished delivery waits for its ack when fewer than `acks_batch` are ready.
pub(super) const ACK_DELAY_MAX: Duration = Duration::from_millis(5);

/// The acks of one channel. Delivery tags rise in delivery order, so every finished delivery
/// below the oldest unfinished one goes out in a single `multiple` ack; finished ones above it
/// wait for it (a message held beyond `PIN_GRACE` pins only a quarter of the prefetch window).
/// `A` is what acks one delivery (lapin's `Acker`; a plain tag in the unit tests).
pub(super) struct Acks<A> {
    unfinished: BTreeSet<u64>,
    finished: BTreeMap<u64, A>,
    /// The oldest unfinished delivery when `due` last looked, and since when it was.
    oldest_since: Option<(u64, Instant)>,
}

/// How long the oldest unfinished delivery may hold more than `max_waiting` finished ones
/// before they are acked one by one. Under load one key's next event routinely waits a few
/// milliseconds for its predecessor; acking around it then cost a frame per message.
pub(super) const PIN_GRACE: Duration = Duration::from_millis(100);

impl<A> Default for Acks<A> {
    fn default() -> Self {
        Self {
            unfinished: BTreeSet::new(),
            finished: BTreeMap::new(),
            oldest_since: None,
        }
    }
}

impl<A> Acks<A> {
    pub(super) fn received(&mut self, tag: u64) {
        self.unfinished.insert(tag);
    }

    pub(super) fn finished(&mut self, tag: u64, acker: A) {
        self.unfinished.remove(&tag);
        self.finished.insert(tag, acker);
    }

    pub(super) fn has_finished(&self) -> bool {
        !self.finished.is_empty()
    }

    /// Whether to send the acks due now rather than let more finish first: when `batch`
    /// finished deliveries lie below the oldest unfinished one (one `multiple` frame acks
    /// them), or when nothing else is being processed (no more finishes are coming soon).
    /// The rest is left to the timer (`ACK_DELAY_MAX`).
    pub(super) fn worth_a_frame(&self, batch: usize, idle: bool) -> bool {
        if idle {
            return true;
        }
        let oldest_unfinished = self.unfinished.first().copied().unwrap_or(u64::MAX);
        self.finished
            .range(..oldest_unfinished)
            .nth(batch - 1)
            .is_some()
    }

    /// The acks due now, as (acker, multiple): finished deliveries above an unfinished one
    /// are acked one by one once more than `max_waiting` of them wait and the same delivery
    /// has held them for `PIN_GRACE` (at once when `max_waiting` is 0: shutting down).
    pub(super) fn due(&mut self, max_waiting: usize, now: Instant) -> Vec<(A, bool)> {
        let oldest_unfinished = self.unfinished.first().copied().unwrap_or(u64::MAX);
        if self.oldest_since.map(|(tag, _)| tag) != Some(oldest_unfinished) {
            self.oldest_since = Some((oldest_unfinished, now));
        }
        let held_long = max_waiting == 0
            || self
                .oldest_since
                .is_some_and(|(_, since)| now.saturating_duration_since(since) >= PIN_GRACE);
        let waiting = self.finished.split_off(&oldest_unfinished);
        let below = std::mem::replace(&mut self.finished, waiting);
        let mut due = Vec::new();
        let n = below.len();
        // `multiple` acks everything unacked up to this tag: all of it is finished.
        if let Some((_, acker)) = below.into_iter().next_back() {
            due.push((acker, n > 1));
        }
        if self.finished.len() > max_waiting && held_long {
            due.extend(
                std::mem::take(&mut self.finished)
                    .into_values()
                    .map(|a| (a, false)),
            );
        }
        due
    }
}

impl Acks<Acker> {
    pub(super) async fn flush(&mut self, max_waiting: usize) -> Result<(), AmqpError> {
        for (acker, multiple) in self.due(max_waiting, Instant::now()) {
            ack(&acker, multiple).await?;
        }
        Ok(())
    }
}

pub(super) async fn ack(acker: &Acker, multiple: bool) -> Result<(), AmqpError> {
    metrics().consumer_acks.inc();
    match acker.ack(BasicAckOptions { multiple }).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(AmqpError::Broker(
            "could not ack: the channel is no longer usable".into(),
        )),
        Err(e) => Err(AmqpError::Broker(Cause::context("acking", e))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    pub(super) fn finished_deliveries_below_the_oldest_unfinished_go_in_one_multiple_ack() {
        let now = Instant::now();
        let mut acks = Acks::default();
        for tag in 1..=6 {
            acks.received(tag);
        }
        acks.finished(2, 2);
        acks.finished(3, 3);
        assert_eq!(acks.due(10, now), vec![], "1 is unfinished: 2 and 3 wait");
        acks.finished(1, 1);
        assert_eq!(acks.due(10, now), vec![(3, true)], "1..=3 in one frame");
        acks.finished(5, 5);
        acks.finished(4, 4);
        assert_eq!(acks.due(10, now), vec![(5, true)]);
        acks.finished(6, 6);
        assert_eq!(
            acks.due(10, now),
            vec![(6, false)],
            "a lone one is not multiple"
        );
        assert_eq!(acks.due(10, now), vec![]);
        assert!(!acks.has_finished());
    }

    #[test]
    pub(super) fn acks_wait_for_a_batch_unless_nothing_else_is_in_flight() {
        let now = Instant::now();
        let batch = acks_batch(256);
        assert_eq!(batch, 32);
        assert_eq!(acks_batch(1), 1, "a window of one acks each delivery");
        let mut acks = Acks::default();
        for tag in 1..=40 {
            acks.received(tag);
        }
        // 2..=33 finished, 1 not: none can be acked yet.
        for tag in 2..=33 {
            acks.finished(tag, tag);
        }
        assert!(!acks.worth_a_frame(batch, false), "all wait above 1");
        assert!(
            acks.worth_a_frame(batch, true),
            "nothing in flight: ack now"
        );
        acks.finished(1, 1);
        assert!(
            acks.worth_a_frame(batch, false),
            "33 below the oldest unfinished"
        );
        assert_eq!(acks.due(64, now), vec![(33, true)], "1..=33 in one frame");
        for tag in 34..=40 {
            acks.finished(tag, tag);
        }
        assert!(
            !acks.worth_a_frame(batch, false),
            "7 ackable: wait for more"
        );
    }

    #[test]
    pub(super) fn a_held_delivery_pins_only_so_many_finished_ones() {
        let now = Instant::now();
        let mut acks = Acks::default();
        for tag in 1..=5 {
            acks.received(tag);
        }
        for tag in 2..=4 {
            acks.finished(tag, tag);
        }
        assert_eq!(acks.due(3, now), vec![], "three may wait");
        acks.finished(5, 5);
        assert_eq!(
            acks.due(3, now),
            vec![],
            "a fourth, but 1 has only just pinned them"
        );
        assert_eq!(
            acks.due(3, now + PIN_GRACE),
            vec![(2, false), (3, false), (4, false), (5, false)],
            "1 held them for the grace: all go one by one"
        );
        // On shutdown (max 0) nothing finished stays unacked; 1 is never acked.
        acks.received(6);
        acks.finished(6, 6);
        assert_eq!(acks.due(0, now + PIN_GRACE), vec![(6, false)]);
        assert!(acks.unfinished.contains(&1));
    }
}
