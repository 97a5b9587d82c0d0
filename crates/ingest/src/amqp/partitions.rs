//! Per-partition order: at most one item of a partition (a key, a task, the global stream) is
//! in flight; the rest wait in arrival order. Different partitions proceed in parallel.
use std::collections::{HashMap, VecDeque};

/// Items waiting behind the one in flight, per partition.
pub(super) struct Partitions<T> {
    /// Partitions with an item in flight, and what waits behind it.
    busy: HashMap<String, VecDeque<T>>,
}

impl<T> Default for Partitions<T> {
    fn default() -> Self {
        Self {
            busy: HashMap::new(),
        }
    }
}

impl<T> Partitions<T> {
    /// `Some(item)` when `partition` is idle: start it now. Otherwise it waits its turn.
    pub(super) fn admit(&mut self, partition: &str, item: T) -> Option<T> {
        match self.busy.get_mut(partition) {
            Some(queue) => {
                queue.push_back(item);
                None
            }
            None => {
                self.busy.insert(partition.to_owned(), VecDeque::new());
                Some(item)
            }
        }
    }

    /// The item in flight for `partition` finished: the next one to start, if any.
    pub(super) fn finished(&mut self, partition: &str) -> Option<T> {
        let next = self.busy.get_mut(partition).and_then(VecDeque::pop_front);
        if next.is_none() {
            self.busy.remove(partition);
        }
        next
    }

    /// Items waiting (not in flight).
    pub(super) fn waiting(&self) -> usize {
        self.busy.values().map(VecDeque::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_item_per_partition_in_flight_the_rest_in_order() {
        let mut p = Partitions::default();
        assert_eq!(p.admit("k1", 1), Some(1));
        assert_eq!(p.admit("k1", 2), None);
        assert_eq!(
            p.admit("k2", 3),
            Some(3),
            "another partition runs in parallel"
        );
        assert_eq!(p.admit("k1", 4), None);
        assert_eq!(p.waiting(), 2);
        assert_eq!(p.finished("k1"), Some(2));
        assert_eq!(p.finished("k1"), Some(4));
        assert_eq!(p.finished("k1"), None);
        assert_eq!(p.admit("k1", 5), Some(5), "idle again");
        assert_eq!(p.finished("k2"), None);
        assert_eq!(p.waiting(), 0);
    }
}
