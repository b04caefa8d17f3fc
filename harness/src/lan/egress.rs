//! A port's way out to its guest: a socket of its own connected to the guest's, and the frames
//! waiting for the guest to make room, bounded in bytes.
//!
//! A unix datagram socket queues at most `net.unix.max_dgram_qlen` datagrams (10 by default,
//! root to change), so a guest's socket fills within a burst. The switch does not wait for
//! it: what does not fit waits here, up to [`MAX_WAITING_BYTES`], and a task sends it as the
//! guest reads (only a connected socket is told that the guest has room); past the bound a
//! frame is dropped and counted, as a switch's full egress buffer drops. Frames leave in the
//! order they came.
//!
//! The connection is made at the first frame for the guest, and again after the guest's QEMU
//! went (a refused send): a new QEMU binds a new socket at the same path.

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::net::UnixDatagram;

use super::batch;

/// The most bytes of frames one port holds for its guest, each frame's length counted.
pub const MAX_WAITING_BYTES: usize = 1 << 20;

/// Frames sent per system call.
const PER_CALL: usize = 32;

/// Spare buffers kept for frames to come, so that holding a frame seldom allocates; only
/// buffers of an ordinary frame's size are kept, which bounds them to 512 KiB a port.
const SPARE: usize = 256;
const SPARE_SIZE: usize = 2048;

#[derive(Debug)]
pub struct Egress {
    socket: UnixDatagram,
    guest: PathBuf,
    state: Mutex<Waiting>,
    more: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct Waiting {
    connected: bool,
    frames: VecDeque<Vec<u8>>,
    bytes: usize,
    spare: Vec<Vec<u8>>,
}

impl Waiting {
    /// Holds copies of `frames` up to the bound: how many did not fit.
    fn hold(&mut self, frames: &[&[u8]]) -> usize {
        let mut dropped = 0;
        for frame in frames {
            if self.bytes + frame.len() > MAX_WAITING_BYTES {
                dropped += 1;
                continue;
            }
            let mut copy = self.spare.pop().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(frame);
            self.bytes += copy.len();
            self.frames.push_back(copy);
        }
        dropped
    }

    /// The first `n` frames went.
    fn sent(&mut self, n: usize) {
        for frame in self.frames.drain(..n) {
            self.bytes -= frame.len();
            if self.spare.len() < SPARE && frame.capacity() <= SPARE_SIZE {
                self.spare.push(frame);
            }
        }
    }

    /// The guest went: everything held is lost, and the next frame connects again.
    fn lost(&mut self) -> usize {
        let n = self.frames.len();
        self.sent(n);
        self.connected = false;
        n
    }
}

impl Egress {
    /// The way out to the guest that binds `guest` (now or later). Needs a Tokio runtime.
    pub fn new(guest: PathBuf) -> std::io::Result<Self> {
        Ok(Self {
            socket: UnixDatagram::unbound()?,
            guest,
            state: Mutex::default(),
            more: tokio::sync::Notify::new(),
        })
    }

    /// Sends `frames` at once as far as the guest has room and nothing waits before them;
    /// holds the rest for [`Egress::drain`]. How many were dropped: past the bound, or all of
    /// them when no guest is there.
    pub fn send(&self, frames: &[&[u8]]) -> usize {
        let mut w = lock(&self.state);
        let mut rest = frames;
        if w.frames.is_empty() {
            match self.send_now(&mut w, frames) {
                Some(n) => rest = &frames[n..],
                None => return frames.len(),
            }
        }
        if rest.is_empty() {
            return 0;
        }
        let dropped = w.hold(rest);
        drop(w);
        self.more.notify_one();
        dropped
    }

    /// How many of `frames` went now; `None` when there is no guest to send to.
    fn send_now(&self, w: &mut Waiting, frames: &[&[u8]]) -> Option<usize> {
        if !w.connected {
            self.socket.connect(&self.guest).ok()?;
            w.connected = true;
        }
        match batch::send(self.socket.as_fd(), None, frames, PER_CALL) {
            Ok(n) => Some(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Some(0),
            Err(_) => {
                w.connected = false;
                None
            }
        }
    }

    /// Sends what waits, as the guest makes room, for as long as the switch runs; `dropped`
    /// is told of frames lost because the guest went.
    pub async fn drain(&self, dropped: impl Fn(usize)) {
        loop {
            self.more.notified().await;
            while !lock(&self.state).frames.is_empty() {
                if self.socket.writable().await.is_err() {
                    break;
                }
                let sent = self
                    .socket
                    .try_io(tokio::io::Interest::WRITABLE, || self.send_held());
                match sent {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(_) => {
                        // Counted once the lock is let go: the counter is behind the switch's.
                        let lost = lock(&self.state).lost();
                        dropped(lost);
                    }
                }
            }
        }
    }

    /// Sends the first frames that wait: how many went (`WouldBlock`: none had room).
    fn send_held(&self) -> std::io::Result<usize> {
        let mut w = lock(&self.state);
        let n = w.frames.len().min(PER_CALL);
        let frames: Vec<&[u8]> = w.frames.iter().take(n).map(Vec::as_slice).collect();
        let sent = batch::send(self.socket.as_fd(), None, &frames, PER_CALL)?;
        w.sent(sent);
        Ok(sent)
    }

    /// Bytes of frames waiting for the guest.
    pub fn waiting_bytes(&self) -> usize {
        lock(&self.state).bytes
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    fn frames(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut f = vec![0u8; 1514];
                f[..8].copy_from_slice(&(i as u64).to_be_bytes());
                f
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_past_the_guests_queue_waits_and_arrives_whole_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("guest.sock");
        let guest = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        let egress = Arc::new(Egress::new(path).expect("egress"));
        let lost = Arc::new(AtomicUsize::new(0));
        let drain = {
            let (egress, lost) = (Arc::clone(&egress), Arc::clone(&lost));
            tokio::spawn(async move {
                egress
                    .drain(|n| {
                        lost.fetch_add(n, Ordering::Relaxed);
                    })
                    .await;
            })
        };
        // 500 frames at once: 10 fit in the guest's queue, the rest wait (740 KiB < 1 MiB).
        let burst = frames(500);
        let refs: Vec<&[u8]> = burst.iter().map(Vec::as_slice).collect();
        assert_eq!(egress.send(&refs), 0, "nothing dropped");
        assert!(egress.waiting_bytes() > 0, "the rest waits");
        let got = tokio::task::spawn_blocking(move || {
            guest
                .set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            let mut got = Vec::new();
            let mut buf = vec![0u8; 2048];
            while got.len() < 500 {
                let n = guest.recv(&mut buf).expect("a frame within 10 s");
                got.push(buf[..n].to_vec());
            }
            got
        })
        .await
        .expect("reader");
        assert_eq!(got, burst, "every frame, in order, byte-exact");
        assert_eq!(egress.waiting_bytes(), 0);
        assert_eq!(lost.load(Ordering::Relaxed), 0);
        drain.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn past_the_bound_frames_are_dropped_and_a_missing_guest_loses_them_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("guest.sock");
        let egress = Egress::new(path.clone()).expect("egress");
        let burst = frames(10);
        let refs: Vec<&[u8]> = burst.iter().map(Vec::as_slice).collect();
        assert_eq!(egress.send(&refs), 10, "no guest yet: all dropped");

        let _guest = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        // Nobody reads: 10 in its queue, then up to the bound, then dropped.
        let flood = frames(1000);
        let refs: Vec<&[u8]> = flood.iter().map(Vec::as_slice).collect();
        let dropped = egress.send(&refs);
        let held = MAX_WAITING_BYTES / 1514;
        assert!(
            (1000 - 11 - held..=1000 - 9 - held).contains(&dropped),
            "{dropped} dropped, {held} held"
        );
        assert!(egress.waiting_bytes() <= MAX_WAITING_BYTES);
    }
}
