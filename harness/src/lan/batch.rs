//! Many datagrams per system call on a port's socket: `recvmmsg` takes every frame a guest has
//! queued (up to [`Inbox`]'s size) in one call and one wake-up, `sendmmsg` gives a port all the
//! frames a batch sends it in one call. A frame per call was the switch's limit (a system call
//! and a wake-up per frame; docs/measurements.md).
//!
//! Neither waits: a guest that is not reading loses what its queue cannot hold, as before.
//! The call's headers are made per call (a few KiB, per batch, not per frame): nix's
//! `MultiHeaders` holds raw pointers, so it cannot live in a task that moves between threads.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, UnixAddr};

/// Receive buffers for up to `frames` datagrams, allocated once per port.
#[derive(Debug)]
pub struct Inbox {
    buffers: Vec<Vec<u8>>,
    lengths: Vec<usize>,
}

impl Inbox {
    /// Room for `frames` datagrams of up to `size` bytes each (a longer one is cut to `size`).
    pub fn new(frames: usize, size: usize) -> Self {
        Self {
            buffers: vec![vec![0; size]; frames.max(1)],
            lengths: Vec::with_capacity(frames.max(1)),
        }
    }

    /// Takes what `socket` has queued, without waiting: how many datagrams (`WouldBlock` when
    /// none is queued). They are [`Inbox::frames`] until the next call.
    pub fn receive(&mut self, socket: BorrowedFd<'_>) -> std::io::Result<usize> {
        let mut slices: Vec<[IoSliceMut<'_>; 1]> = self
            .buffers
            .iter_mut()
            .map(|b| [IoSliceMut::new(b)])
            .collect();
        let mut headers = MultiHeaders::<()>::preallocate(slices.len(), None);
        let received = recvmmsg(
            socket.as_raw_fd(),
            &mut headers,
            slices.iter_mut(),
            MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        self.lengths.clear();
        self.lengths.extend(received.map(|m| m.bytes));
        Ok(self.lengths.len())
    }

    /// The datagrams the last [`Inbox::receive`] took, in the order they came.
    pub fn frames(&self) -> impl Iterator<Item = &[u8]> {
        self.buffers
            .iter()
            .zip(&self.lengths)
            .map(|(b, &n)| &b[..n.min(b.len())])
    }
}

/// Sends `frames` from `socket` to `to` (or to the socket's peer, for `None`), up to `per_call`
/// in one call, without waiting: how many went. Fewer than all when the receiver's queue
/// filled on the way; an error (`WouldBlock` for a full queue) when not even the first went.
pub fn send(
    socket: BorrowedFd<'_>,
    to: Option<&UnixAddr>,
    frames: &[&[u8]],
    per_call: usize,
) -> std::io::Result<usize> {
    send_with(socket, to, frames, per_call, MsgFlags::MSG_DONTWAIT)
}

/// [`send`], waiting while the receiver's queue is full (a blocking socket): what a guest's
/// side does, for the benchmarks.
pub fn send_waiting(
    socket: BorrowedFd<'_>,
    to: Option<&UnixAddr>,
    frames: &[&[u8]],
    per_call: usize,
) -> std::io::Result<usize> {
    send_with(socket, to, frames, per_call, MsgFlags::empty())
}

fn send_with(
    socket: BorrowedFd<'_>,
    to: Option<&UnixAddr>,
    frames: &[&[u8]],
    per_call: usize,
    flags: MsgFlags,
) -> std::io::Result<usize> {
    let mut sent = 0;
    for chunk in frames.chunks(per_call.max(1)) {
        let mut headers = MultiHeaders::preallocate(chunk.len(), None);
        let slices: Vec<[IoSlice<'_>; 1]> = chunk.iter().map(|f| [IoSlice::new(f)]).collect();
        let addresses = vec![to.copied(); chunk.len()];
        let went = match sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            &slices,
            &addresses,
            [] as [ControlMessage<'_>; 0],
            flags,
        ) {
            Ok(results) => results.count(),
            Err(e) if sent == 0 => return Err(e.into()),
            Err(_) => 0,
        };
        sent += went;
        if went < chunk.len() {
            break;
        }
    }
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixDatagram;

    fn pair() -> (tempfile::TempDir, UnixDatagram, UnixDatagram, UnixAddr) {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = UnixDatagram::bind(dir.path().join("a")).expect("bind a");
        let b_path = dir.path().join("b");
        let b = UnixDatagram::bind(&b_path).expect("bind b");
        let to = UnixAddr::new(&b_path).expect("address");
        (dir, a, b, to)
    }

    #[test]
    fn a_batch_goes_in_one_call_and_comes_back_in_order_byte_exact() {
        let (_dir, a, b, to) = pair();
        // A unix datagram socket queues at most net.unix.max_dgram_qlen (10 by default)
        // datagrams: batches of 8, each read before the next is sent.
        let frames: Vec<Vec<u8>> = (0..40u8).map(|i| vec![i; 60 + usize::from(i)]).collect();
        let mut inbox = Inbox::new(32, 2048);
        let mut got: Vec<Vec<u8>> = Vec::new();
        for chunk in frames.chunks(8) {
            let refs: Vec<&[u8]> = chunk.iter().map(Vec::as_slice).collect();
            assert_eq!(send(a.as_fd(), Some(&to), &refs, 4).expect("sent"), 8);
            assert_eq!(inbox.receive(b.as_fd()).expect("a batch"), 8);
            got.extend(inbox.frames().map(<[u8]>::to_vec));
        }
        assert_eq!(got, frames);
        let empty = inbox.receive(b.as_fd()).expect_err("nothing queued");
        assert_eq!(empty.kind(), std::io::ErrorKind::WouldBlock);
    }

    #[test]
    fn a_datagram_longer_than_its_buffer_is_cut_to_it() {
        let (_dir, a, b, to) = pair();
        let long = vec![7u8; 3000];
        assert_eq!(send(a.as_fd(), Some(&to), &[&long], 1).expect("sent"), 1);
        let mut inbox = Inbox::new(4, 2048);
        assert_eq!(inbox.receive(b.as_fd()).expect("one"), 1);
        assert_eq!(inbox.frames().next().map(<[u8]>::len), Some(2048));
    }

    #[test]
    fn a_receiver_that_does_not_read_loses_the_rest_without_a_wait() {
        let (_dir, a, _b, to) = pair();
        let frame = vec![0u8; 1514];
        let refs: Vec<&[u8]> = vec![&frame; 1000];
        let sent = send(a.as_fd(), Some(&to), &refs, 32).expect("some sent");
        assert!(sent > 0 && sent < 100, "{sent} sent");
        let full = send(a.as_fd(), Some(&to), &refs, 32).expect_err("a full queue");
        assert_eq!(full.kind(), std::io::ErrorKind::WouldBlock);
    }
}
