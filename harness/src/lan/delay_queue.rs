//! The frames one cable holds back while its impairment delays them, in the order they are due.
//! One queue (and one timer task, in [`super`]) per cable, not a task per frame: a flood over a
//! long delay costs the queue's bytes, bounded, with each frame's bookkeeping counted in.
//!
//! Like [`super::impair`], this is logic without I/O: [`DelayQueue::hold`] takes a frame or
//! refuses it, [`DelayQueue::due`] hands back those whose time has come.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Instant;

/// What a held frame does when it is due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// It was coming in on the cable: the switch takes it now.
    Switch,
    /// It was going out on the cable: it reaches the guest now.
    Send,
}

/// A frame held until `at`.
#[derive(Debug, PartialEq, Eq)]
pub struct Held {
    pub at: Instant,
    /// Frames due at the same instant leave in the order they came.
    seq: u64,
    pub then: Then,
    pub bytes: Vec<u8>,
}

impl Held {
    /// What holding it costs: its bytes and its bookkeeping (the heap's slot and the
    /// allocation's header), so that a flood of tiny frames is bounded as surely as big ones.
    fn cost(&self) -> usize {
        self.bytes.capacity() + std::mem::size_of::<Held>() + 16
    }
}

impl Ord for Held {
    /// Earliest first (the heap is a max-heap, so reversed).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// One cable's held frames, at most `limit` bytes of them (costs included).
#[derive(Debug)]
pub struct DelayQueue {
    heap: BinaryHeap<Held>,
    bytes: usize,
    limit: usize,
    seq: u64,
}

impl DelayQueue {
    pub fn new(limit: usize) -> Self {
        Self {
            heap: BinaryHeap::new(),
            bytes: 0,
            limit,
            seq: 0,
        }
    }

    /// Holds `bytes` until `at`; gives them back when the queue has no room (the caller counts
    /// the drop). `Ok(true)` when this frame is now the first due, so a timer must wake sooner.
    pub fn hold(&mut self, at: Instant, then: Then, bytes: Vec<u8>) -> Result<bool, Vec<u8>> {
        self.seq += 1;
        let held = Held {
            at,
            seq: self.seq,
            then,
            bytes,
        };
        let cost = held.cost();
        if self.bytes + cost > self.limit {
            return Err(held.bytes);
        }
        let first = self.next_due().is_none_or(|next| at < next);
        self.bytes += cost;
        self.heap.push(held);
        Ok(first)
    }

    /// When the first held frame is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.heap.peek().map(|h| h.at)
    }

    /// Every frame due by `now`, in the order they are due.
    pub fn due(&mut self, now: Instant) -> Vec<Held> {
        let mut out = Vec::new();
        while self.heap.peek().is_some_and(|h| h.at <= now) {
            if let Some(held) = self.heap.pop() {
                self.bytes -= held.cost();
                out.push(held);
            }
        }
        out
    }

    /// What the held frames cost now.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn frames_leave_in_the_order_they_are_due_and_ties_in_the_order_they_came() {
        let mut q = DelayQueue::new(1 << 20);
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        assert_eq!(q.hold(at(30), Then::Send, vec![1]), Ok(true));
        assert_eq!(q.hold(at(10), Then::Switch, vec![2]), Ok(true), "sooner");
        assert_eq!(q.hold(at(10), Then::Send, vec![3]), Ok(false), "a tie");
        assert_eq!(q.hold(at(20), Then::Send, vec![4]), Ok(false));
        assert!(q.due(at(5)).is_empty());
        let first: Vec<u8> = q.due(at(20)).iter().map(|h| h.bytes[0]).collect();
        assert_eq!(first, [2, 3, 4]);
        assert_eq!(q.next_due(), Some(at(30)));
        let last = q.due(at(100));
        assert_eq!((last.len(), last[0].then), (1, Then::Send));
        assert!(q.is_empty() && q.bytes() == 0, "every byte given back");
    }

    #[test]
    fn a_flood_of_tiny_frames_is_bounded_by_its_bookkeeping_too() {
        let limit = 1 << 20;
        let mut q = DelayQueue::new(limit);
        let later = Instant::now() + Duration::from_secs(600);
        let (mut held, mut refused) = (0usize, 0usize);
        for _ in 0..1_000_000 {
            match q.hold(later, Then::Send, vec![0u8; 60]) {
                Ok(_) => held += 1,
                Err(_) => refused += 1,
            }
        }
        assert!(q.bytes() <= limit, "{}", q.bytes());
        // Each 60-byte frame costs well over 60 bytes: the count alone would let 17k in.
        assert!(held < limit / 60 && held == q.len(), "{held} held");
        assert_eq!(held + refused, 1_000_000);
    }
}
