//! Flow control of a streaming run's output, as an SSH channel's window: the host says how many
//! bytes it has room for ([`lab_proto::RunSpec::window`], then [`lab_proto::Op::Grant`]), and the
//! threads that read the program's pipes wait for room before they send. A host that reads
//! slowly so slows the program (its pipes fill, its writes block) instead of losing its output.

use std::sync::{Condvar, Mutex};

/// The room the host has granted for one run's output, stdout and stderr together.
#[derive(Debug)]
pub struct Window {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Debug)]
struct State {
    /// Bytes that may still be sent.
    room: u64,
    /// The run has answered: nothing more of its output goes out, and nobody waits.
    closed: bool,
    /// Threads waiting for room now.
    waiting: usize,
}

impl Window {
    /// A window of `room` bytes; `None` is no limit (a host that does not grant).
    pub fn new(room: Option<u64>) -> Self {
        Self {
            state: Mutex::new(State {
                room: room.unwrap_or(u64::MAX),
                closed: false,
                waiting: 0,
            }),
            changed: Condvar::new(),
        }
    }

    /// The host took `bytes` more off the wire.
    pub fn grant(&self, bytes: u64) {
        let mut state = self.lock();
        state.room = state.room.saturating_add(bytes);
        self.changed.notify_all();
    }

    /// Waits until there is room, and takes up to `want` bytes of it; `None` once the window is
    /// closed (the run answered, its late output goes nowhere).
    pub fn take(&self, want: usize) -> Option<usize> {
        let mut state = self.lock();
        while state.room == 0 && !state.closed {
            state.waiting += 1;
            state = self.changed.wait(state).unwrap_or_else(|p| p.into_inner());
            state.waiting -= 1;
        }
        if state.closed {
            return None;
        }
        let n = usize::try_from(state.room).unwrap_or(usize::MAX).min(want);
        state.room -= n as u64;
        Some(n)
    }

    /// Whether a sender waits for the host now: the host holds the output back, so the time
    /// passing is the reader's, not the program's.
    pub fn stalled(&self) -> bool {
        self.lock().waiting > 0
    }

    /// The run answered: waiting senders give up, and later output is not sent.
    pub fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn a_sender_takes_what_was_granted_and_waits_for_more() {
        let window = Arc::new(Window::new(Some(10)));
        assert_eq!(window.take(4), Some(4));
        assert_eq!(window.take(100), Some(6), "no more than the room");
        let waiter = {
            let window = Arc::clone(&window);
            std::thread::spawn(move || window.take(100))
        };
        while !window.stalled() {
            std::thread::sleep(Duration::from_millis(1));
        }
        window.grant(7);
        assert_eq!(waiter.join().expect("joins"), Some(7));
        assert!(!window.stalled());
    }

    #[test]
    fn closing_releases_a_waiting_sender_with_nothing() {
        let window = Arc::new(Window::new(Some(0)));
        let waiter = {
            let window = Arc::clone(&window);
            std::thread::spawn(move || window.take(1))
        };
        while !window.stalled() {
            std::thread::sleep(Duration::from_millis(1));
        }
        window.close();
        assert_eq!(waiter.join().expect("joins"), None);
        window.grant(5);
        assert_eq!(window.take(1), None, "closed stays closed");
    }

    #[test]
    fn no_window_is_no_limit() {
        let window = Window::new(None);
        assert_eq!(window.take(usize::MAX), Some(usize::MAX));
        window.grant(u64::MAX);
        assert_eq!(window.take(3), Some(3));
    }
}
