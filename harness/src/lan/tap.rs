//! Live copies of a switch's frames for readers outside it (`lab capture`): a tap on one port
//! (what crosses its cable, both ways) or on the whole switch (what enters each port). A tap
//! never slows the switch: frames are offered without waiting, within a budget of bytes per
//! tap, and what does not fit is dropped and counted for the reader to report.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::mpsc;

/// Bytes a tap may hold for its reader; past them frames are dropped and counted.
pub const TAP_BYTES: usize = 4 << 20;

/// One frame as a tap saw it.
#[derive(Debug)]
pub struct Tapped {
    /// The port it entered by (a switch tap), or the tapped port (a port tap).
    pub port: usize,
    pub at: SystemTime,
    pub bytes: Vec<u8>,
}

/// What a tap's reader holds: the frames, and how many were dropped because it read too
/// slowly. Dropping it removes the tap.
#[derive(Debug)]
pub struct TapReceiver {
    rx: mpsc::UnboundedReceiver<Tapped>,
    shared: Arc<Shared>,
}

impl TapReceiver {
    /// The next frame; `None` once the switch is gone.
    pub async fn recv(&mut self) -> Option<Tapped> {
        let frame = self.rx.recv().await?;
        self.shared
            .queued
            .fetch_sub(frame.bytes.len(), Ordering::Relaxed);
        Some(frame)
    }

    /// Frames dropped so far, because the reader was behind by [`TAP_BYTES`].
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

#[derive(Debug, Default)]
struct Shared {
    queued: AtomicUsize,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Tap {
    /// `None`: every port's incoming frames.
    port: Option<usize>,
    tx: mpsc::UnboundedSender<Tapped>,
    shared: Arc<Shared>,
}

/// A switch's taps.
#[derive(Debug, Default)]
pub(crate) struct Taps(Vec<Tap>);

impl Taps {
    /// A new tap on `port` (`None`: the whole switch).
    pub(crate) fn add(&mut self, port: Option<usize>) -> TapReceiver {
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared::default());
        self.0.push(Tap {
            port,
            tx,
            shared: Arc::clone(&shared),
        });
        TapReceiver { rx, shared }
    }

    /// A frame that came in on `port`: for that port's taps and the switch's.
    pub(crate) fn entered(&mut self, port: usize, frame: &[u8]) {
        self.offer(port, frame, |tap| tap.is_none_or(|p| p == port));
    }

    /// A frame that leaves by `port`: for that port's taps.
    pub(crate) fn left(&mut self, port: usize, frame: &[u8]) {
        self.offer(port, frame, |tap| tap == Some(port));
    }

    fn offer(&mut self, port: usize, frame: &[u8], wants: impl Fn(Option<usize>) -> bool) {
        if self.0.is_empty() {
            return;
        }
        // A tap whose reader is gone goes too.
        self.0.retain(|t| !t.tx.is_closed());
        for tap in self.0.iter().filter(|t| wants(t.port)) {
            let queued = tap.shared.queued.load(Ordering::Relaxed);
            if queued + frame.len() > TAP_BYTES {
                tap.shared.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            tap.shared.queued.fetch_add(frame.len(), Ordering::Relaxed);
            let copy = Tapped {
                port,
                at: SystemTime::now(),
                bytes: frame.to_vec(),
            };
            if tap.tx.send(copy).is_err() {
                tap.shared.queued.fetch_sub(frame.len(), Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_port_tap_sees_its_cable_both_ways_and_a_switch_tap_what_enters() {
        let mut taps = Taps::default();
        let mut port1 = taps.add(Some(1));
        let mut switch = taps.add(None);
        taps.entered(0, b"from port 0");
        taps.left(1, b"to port 1");
        taps.entered(1, b"from port 1");
        let got = |t: &mut TapReceiver| {
            let mut v = Vec::new();
            while let Ok(f) = t.rx.try_recv() {
                v.push((f.port, f.bytes));
            }
            v
        };
        assert_eq!(
            got(&mut port1),
            [(1, b"to port 1".to_vec()), (1, b"from port 1".to_vec())]
        );
        assert_eq!(
            got(&mut switch),
            [(0, b"from port 0".to_vec()), (1, b"from port 1".to_vec())]
        );
    }

    /// A reader that does not read costs the switch nothing but the bytes its tap may hold:
    /// the rest is dropped and counted, and a tap whose reader went is removed.
    #[tokio::test]
    async fn a_slow_reader_loses_frames_counted_never_more_than_its_budget() {
        let mut taps = Taps::default();
        let mut tap = taps.add(None);
        let frame = vec![0u8; 1500];
        let n = 2 * TAP_BYTES / frame.len();
        for _ in 0..n {
            taps.entered(0, &frame);
        }
        let kept = TAP_BYTES / frame.len();
        assert_eq!(tap.dropped(), (n - kept) as u64);
        let mut read = 0;
        while let Ok(f) = tap.rx.try_recv() {
            tap.shared
                .queued
                .fetch_sub(f.bytes.len(), Ordering::Relaxed);
            read += 1;
        }
        assert_eq!(read, kept);
        // Read up, it takes frames again.
        taps.entered(0, &frame);
        assert!(tap.recv().await.is_some());
        drop(tap);
        taps.entered(0, &frame);
        assert!(taps.0.is_empty(), "the tap went with its reader");
    }
}
