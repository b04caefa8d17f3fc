//! The host end of the agent protocol: requests out, replies matched back to their callers by id.
//!
//! QEMU connects the guest's virtio-serial port to a unix socket the harness listens on. One
//! reader task owns the socket's read half; callers wait on a oneshot for their reply, each with a
//! deadline, so a dead guest fails a call instead of hanging it.
//!
//! A streaming run's output is flow-controlled, as an SSH channel is: the run starts with a
//! window of [`OUTPUT_WINDOW`] bytes, the agent sends no more than that ahead of the reader, and
//! the reader grants more as it takes pieces ([`OutputStream::recv`]). A slow reader so slows the
//! program in the guest and loses nothing, and the output a run holds on the host is bounded by
//! its window whatever the guest writes: bytes past the window (a guest whose root replaced the
//! agent) are dropped, counted, and the run's result says `truncated`. Replies nobody waits for
//! are kept up to [`UNATTRIBUTED`] of at most [`UNATTRIBUTED_BYTES`] each; one line is at most
//! [`MAX_RESPONSE_BYTES`]. Writes have deadlines too: a guest that stops reading cannot hang a
//! caller, and a write cut off by its deadline leaves the connection unusable rather than half a
//! line in it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lab_proto::{
    Call, Op, Ready, Received, Refused, Reply, ReplyReader, Request, Response, Stream,
    MAX_RESPONSE_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

type Pending = Arc<Mutex<HashMap<u64, Waiter>>>;

/// Bytes of a streaming run's output the agent may send ahead of its reader: what a run holds
/// on the host at most.
pub const OUTPUT_WINDOW: u64 = 4 << 20;
/// The reader grants what it took once it has taken this much, not piece by piece.
const GRANT_EVERY: u64 = OUTPUT_WINDOW / 4;
/// Replies to nobody kept for [`AgentClient::send_raw`]; later ones are dropped.
const UNATTRIBUTED: usize = 16;
/// The largest reply to nobody kept: they are the agent's short complaints about bad input.
const UNATTRIBUTED_BYTES: usize = 64 << 10;
/// How long a write to the agent may take when the caller gave no deadline (input, resize):
/// the guest reads its port continuously, so this passes only when it is wedged.
const WRITE_WITHIN: Duration = Duration::from_secs(10);

/// Who waits for a request's answer: the final reply, and for a streaming run its output pieces.
#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<Reply>,
    output: Option<Output>,
}

/// Where a streaming run's output goes, and what its window allows.
#[derive(Debug)]
struct Output {
    to: mpsc::UnboundedSender<(Stream, Vec<u8>)>,
    /// Room for input to its terminal: the agent's [`Reply::InputTaken`] adds to it.
    input_room: Arc<tokio::sync::Semaphore>,
    /// Bytes the agent may have sent in all: the window and every grant since.
    allowed: Arc<AtomicU64>,
    received: u64,
    /// Bytes past the window, dropped.
    overrun: u64,
}

impl Output {
    /// Passes a piece on if the window has room for it; anything past it is the guest's fault,
    /// dropped and counted.
    fn pass(&mut self, stream: Stream, data: Vec<u8>) {
        let len = data.len() as u64;
        if self.received.saturating_add(len) > self.allowed.load(Ordering::Acquire) {
            self.overrun += len;
            return;
        }
        self.received += len;
        // A reader that went away gave the output up: it goes with it.
        let _ = self.to.send((stream, data));
    }
}

/// A request in flight whose output streams back: its id, the pieces of output as they come,
/// where its input goes, and the final reply.
#[derive(Debug)]
pub struct Started {
    pub id: u64,
    pub output: OutputStream,
    pub input: InputSender,
    pub reply: oneshot::Receiver<Reply>,
}

/// Input for a running program's terminal, flow-controlled as its output is: at most
/// [`lab_proto::INPUT_WINDOW`] bytes ahead of what the program took, so a program that does not
/// read its terminal holds up its typist, not the agent's memory, and no key is dropped. A
/// handle of its own (cloneable), so that input can wait for room while output is read.
#[derive(Debug, Clone)]
pub struct InputSender {
    run: u64,
    room: Arc<tokio::sync::Semaphore>,
    writer: Arc<Writer>,
}

impl InputSender {
    /// Sends `data` in order, waiting for room as the program takes what came before. Once the
    /// program has ended its input goes nowhere, as a closed terminal's does: `Ok`.
    pub async fn send(&self, data: &[u8]) -> Result<(), AgentError> {
        let most = usize::try_from(lab_proto::INPUT_WINDOW).unwrap_or(usize::MAX);
        for piece in data.chunks(most) {
            // Held until the piece is written: cancelled before, the room is given back.
            let Ok(room) = self.room.acquire_many(piece.len() as u32).await else {
                return Ok(());
            };
            let input = lab_proto::encode(&Request {
                id: 0,
                op: Op::Input {
                    run: self.run,
                    data: piece.to_vec(),
                },
            });
            self.writer.write(&input, WRITE_WITHIN).await?;
            room.forget();
        }
        Ok(())
    }
}

/// A streaming run's output, piece by piece, in order. Taking a piece makes room for more
/// (the reader's grant); dropping the stream gives up the rest, and the run goes on unhindered.
#[derive(Debug)]
pub struct OutputStream {
    run: u64,
    pieces: mpsc::UnboundedReceiver<(Stream, Vec<u8>)>,
    allowed: Arc<AtomicU64>,
    /// Taken since the last grant.
    taken: u64,
    writer: Arc<Writer>,
}

impl OutputStream {
    /// The next piece; `None` once the run has answered and every piece was taken. Safe to
    /// cancel (in a `select!`): a piece is either returned or still waiting.
    pub async fn recv(&mut self) -> Option<(Stream, Vec<u8>)> {
        let piece = self.pieces.recv().await?;
        self.took(piece.1.len());
        Some(piece)
    }

    /// The next piece if one is waiting.
    pub fn try_recv(&mut self) -> Option<(Stream, Vec<u8>)> {
        let piece = self.pieces.try_recv().ok()?;
        self.took(piece.1.len());
        Some(piece)
    }

    fn took(&mut self, len: usize) {
        self.taken += len as u64;
        if self.taken >= GRANT_EVERY {
            let bytes = std::mem::take(&mut self.taken);
            self.grant(bytes);
        }
    }

    /// Lets the agent send `bytes` more. The allowance grows before the agent hears of it, so
    /// what it sends on the grant is never taken for an overrun.
    fn grant(&self, bytes: u64) {
        let previous = self.allowed.fetch_add(bytes, Ordering::AcqRel);
        if previous.checked_add(bytes).is_none() {
            self.allowed.store(u64::MAX, Ordering::Release);
        }
        let grant = lab_proto::encode(&Request {
            id: 0,
            op: Op::Grant {
                run: self.run,
                bytes,
            },
        });
        let writer = Arc::clone(&self.writer);
        // Off the reader's path, so that taking a piece never waits and stays cancel-safe.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { writer.write(&grant, WRITE_WITHIN).await });
        }
    }
}

impl Drop for OutputStream {
    /// Nobody reads on: the agent may send the rest at once (and it is dropped here), so that
    /// the run is not held up by a reader that is gone.
    fn drop(&mut self) {
        self.grant(u64::MAX);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("the agent connection closed (guest gone?)")]
    Closed,
    #[error("writing to the agent: {0}")]
    Write(std::io::Error),
    #[error("a write to the agent did not finish within {0:?} (the guest stopped reading); the connection is unusable")]
    Wedged(Duration),
}

/// Why a [`lab_proto::Call`] got no answer: the connection, or the agent's refusal.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Refused(#[from] Refused),
}

/// The answer to a `C` from the reply that came (or did not).
pub fn answer<C: Call>(reply: Result<Reply, AgentError>) -> Result<C::Ok, CallError> {
    Ok(C::answer(reply?)?)
}

/// The write half of the connection: whole lines only, each within a deadline.
#[derive(Debug)]
struct Writer {
    half: tokio::sync::Mutex<OwnedWriteHalf>,
    /// A write was cut off by its deadline: half a line may be in the stream.
    wedged: AtomicBool,
}

impl Writer {
    /// Writes `bytes` whole within `within` (waiting for the lock counts too); one cut off
    /// leaves the connection wedged, and every later write fails at once.
    async fn write(&self, bytes: &[u8], within: Duration) -> Result<(), AgentError> {
        if self.wedged.load(Ordering::Relaxed) {
            return Err(AgentError::Wedged(within));
        }
        let write = async {
            let mut half = self.half.lock().await;
            half.write_all(bytes).await.map_err(AgentError::Write)
        };
        match tokio::time::timeout(within, write).await {
            Ok(result) => result,
            Err(_) => {
                self.wedged.store(true, Ordering::Relaxed);
                Err(AgentError::Wedged(within))
            }
        }
    }
}

#[derive(Debug)]
pub struct AgentClient {
    writer: Arc<Writer>,
    pending: Pending,
    next_id: AtomicU64,
    ready: watch::Receiver<Option<Ready>>,
    /// Replies no caller waits for: answers to input the agent could not parse.
    unattributed: tokio::sync::Mutex<mpsc::Receiver<Reply>>,
    reader: tokio::task::JoinHandle<()>,
}

impl AgentClient {
    pub fn new(stream: UnixStream) -> Self {
        let (read, half) = stream.into_split();
        let pending: Pending = Arc::default();
        let (ready_tx, ready) = watch::channel(None);
        let (unattributed_tx, unattributed) = mpsc::channel(UNATTRIBUTED);
        let reader = tokio::spawn(read_loop(
            read,
            Arc::clone(&pending),
            ready_tx,
            unattributed_tx,
        ));
        Self {
            writer: Arc::new(Writer {
                half: tokio::sync::Mutex::new(half),
                wedged: AtomicBool::new(false),
            }),
            pending,
            next_id: AtomicU64::new(1),
            ready,
            unattributed: tokio::sync::Mutex::new(unattributed),
            reader,
        }
    }

    /// Waits until the agent announces itself, nudging it with `hello` every `nudge` in case its
    /// first announcement was sent before anyone listened (or, restored from a snapshot, long ago).
    pub async fn wait_ready(&self, within: Duration, nudge: Duration) -> Result<Ready, AgentError> {
        let mut ready = self.ready.clone();
        let wait = async {
            loop {
                if let Some(r) = ready.borrow_and_update().clone() {
                    return Ok(r);
                }
                // Fire and forget: the reply, if any, lands in the watch as well.
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                self.write(&Request { id, op: Op::Hello }, within).await?;
                match tokio::time::timeout(nudge, ready.changed()).await {
                    Ok(Err(_)) => return Err(AgentError::Closed),
                    _ => continue,
                }
            }
        };
        tokio::time::timeout(within, wait)
            .await
            .map_err(|_| AgentError::Timeout(within))?
    }

    /// Sends `call` and waits for its answer; `within` bounds both the write and the wait.
    pub async fn call<C: Call>(&self, call: C, within: Duration) -> Result<C::Ok, CallError> {
        answer::<C>(self.request(call.into(), within).await)
    }

    /// Sends `op` and waits for its reply; `within` bounds both the write and the wait.
    pub async fn request(&self, op: Op, within: Duration) -> Result<Reply, AgentError> {
        let started = tokio::time::Instant::now();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            id,
            Waiter {
                reply: tx,
                output: None,
            },
        );
        if let Err(e) = self.write(&Request { id, op }, within).await {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        self.wait(id, rx, within.saturating_sub(started.elapsed()))
            .await
            .map_err(|e| match e {
                AgentError::Timeout(_) => AgentError::Timeout(within),
                other => other,
            })
    }

    /// Sends a run whose output streams back ([`lab_proto::RunSpec::stream`] or `tty`), with
    /// a window of [`OUTPUT_WINDOW`] bytes; the caller reads [`Started::output`] and then
    /// awaits [`Started::reply`] (see [`Self::wait`]).
    pub async fn start(&self, mut op: Op) -> Result<Started, AgentError> {
        if let Op::Run(spec) = &mut op {
            spec.window = Some(OUTPUT_WINDOW);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, reply) = oneshot::channel();
        let (to, pieces) = mpsc::unbounded_channel();
        let allowed = Arc::new(AtomicU64::new(OUTPUT_WINDOW));
        let input_room = Arc::new(tokio::sync::Semaphore::new(
            usize::try_from(lab_proto::INPUT_WINDOW).unwrap_or(usize::MAX),
        ));
        let output = Output {
            to,
            input_room: Arc::clone(&input_room),
            allowed: Arc::clone(&allowed),
            received: 0,
            overrun: 0,
        };
        lock(&self.pending).insert(
            id,
            Waiter {
                reply: tx,
                output: Some(output),
            },
        );
        let output = OutputStream {
            run: id,
            pieces,
            allowed,
            taken: 0,
            writer: Arc::clone(&self.writer),
        };
        let input = InputSender {
            run: id,
            room: input_room,
            writer: Arc::clone(&self.writer),
        };
        if let Err(e) = self.write(&Request { id, op }, WRITE_WITHIN).await {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        Ok(Started {
            id,
            output,
            input,
            reply,
        })
    }

    /// Sends a request nobody waits for (input to, or resize of, an interactive run); the agent
    /// only answers such requests when they fail, and those answers go unattributed.
    pub async fn notify(&self, op: Op) -> Result<(), AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.write(&Request { id, op }, WRITE_WITHIN).await
    }

    /// Waits for the final reply to request `id`, for at most `within`.
    pub async fn wait(
        &self,
        id: u64,
        rx: oneshot::Receiver<Reply>,
        within: Duration,
    ) -> Result<Reply, AgentError> {
        match tokio::time::timeout(within, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(AgentError::Closed),
            Err(_) => {
                self.forget(id);
                Err(AgentError::Timeout(within))
            }
        }
    }

    /// Nobody waits for request `id` any more: its late reply and output are dropped.
    pub fn forget(&self, id: u64) {
        lock(&self.pending).remove(&id);
    }

    /// Sends bytes as they are (for testing the agent's defences) and returns the agent's answer to
    /// input it could not attribute to a request.
    pub async fn send_raw(&self, bytes: &[u8], within: Duration) -> Result<Reply, AgentError> {
        let mut unattributed = self.unattributed.lock().await;
        // Forget stale replies (late answers to timed-out requests) before asking.
        while unattributed.try_recv().is_ok() {}
        self.writer.write(bytes, within).await?;
        match tokio::time::timeout(within, unattributed.recv()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(AgentError::Closed),
            Err(_) => Err(AgentError::Timeout(within)),
        }
    }

    async fn write(&self, req: &Request, within: Duration) -> Result<(), AgentError> {
        self.writer.write(&lab_proto::encode(req), within).await
    }
}

impl Drop for AgentClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn read_loop(
    mut read: tokio::net::unix::OwnedReadHalf,
    pending: Pending,
    ready: watch::Sender<Option<Ready>>,
    unattributed: mpsc::Sender<Reply>,
) {
    let mut replies = ReplyReader::new(MAX_RESPONSE_BYTES);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for received in replies.push(&buf[..n]) {
            match received {
                Received::Reply { response, len } => {
                    route(response, len, &pending, &ready, &unattributed);
                }
                Received::Oversized { len } => tracing::warn!(
                    "agent sent a reply of {len} bytes, over {MAX_RESPONSE_BYTES}; dropped"
                ),
                Received::Malformed(e) => tracing::warn!("undecodable agent reply: {e}"),
            }
        }
    }
    // Dropping every sender wakes every waiter with `Closed`.
    lock(&pending).clear();
}

/// Hands `resp` (`len` bytes on the wire) to whoever waits for it, never waiting itself.
fn route(
    resp: Response,
    len: usize,
    pending: &Pending,
    ready: &watch::Sender<Option<Ready>>,
    unattributed: &mpsc::Sender<Reply>,
) {
    if let Reply::Ready(r) = &resp.reply {
        ready.send_replace(Some(r.clone()));
        return;
    }
    if let Reply::InputTaken { bytes } = resp.reply {
        if let Some(id) = resp.id {
            if let Some(out) = lock(pending).get(&id).and_then(|w| w.output.as_ref()) {
                // Never past the window: a guest cannot grant itself more.
                let window = usize::try_from(lab_proto::INPUT_WINDOW).unwrap_or(usize::MAX);
                let room = usize::try_from(bytes)
                    .unwrap_or(usize::MAX)
                    .min(window.saturating_sub(out.input_room.available_permits()));
                out.input_room.add_permits(room);
            }
        }
        return;
    }
    if let Reply::Output { stream, data } = resp.reply {
        // Pieces for a request nobody streams (it timed out, say) are dropped.
        if let Some(id) = resp.id {
            if let Some(out) = lock(pending).get_mut(&id).and_then(|w| w.output.as_mut()) {
                out.pass(stream, data);
            }
        }
        return;
    }
    match resp.id.and_then(|id| lock(pending).remove(&id)) {
        Some(waiter) => {
            // The run has ended: input waiting for room goes nowhere.
            if let Some(output) = &waiter.output {
                output.input_room.close();
            }
            let mut reply = resp.reply;
            if let (Reply::Ran(out), Some(output)) = (&mut reply, &waiter.output) {
                if output.overrun > 0 {
                    tracing::warn!(
                        "the guest sent {} bytes of a command's output past its window; dropped",
                        output.overrun
                    );
                    out.truncated = true;
                }
            }
            let _ = waiter.reply.send(reply);
        }
        // No caller waits for it: an answer to raw input (whose id, if any, the agent salvaged),
        // or a late reply to a request that timed out. Past UNATTRIBUTED of them waiting, and
        // any long one, they are dropped: nobody may ever ask.
        None if len <= UNATTRIBUTED_BYTES => {
            let _ = unattributed.try_send(resp.reply);
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// This process's resident memory (nextest runs each test in a process of its own).
    fn rss() -> u64 {
        crate::host::memory_kib(std::process::id(), "status", "VmRSS:") * 1024
    }

    fn streaming_run() -> Op {
        Op::Run(lab_proto::RunSpec::new(
            lab_proto::Program::Script("base64 /dev/urandom".into()),
            Duration::from_secs(600),
        ))
    }

    fn output_line(id: u64, stream: Stream, data: Vec<u8>) -> Vec<u8> {
        lab_proto::encode_response(&Response {
            id: Some(id),
            reply: Reply::Output { stream, data },
        })
    }

    fn ran_line(id: u64) -> Vec<u8> {
        let ran = lab_proto::RunOutput {
            code: Some(0),
            signal: None,
            timed_out: false,
            stdout: Vec::new(),
            stderr: Vec::new(),
            truncated: false,
            oom_killed: false,
            duration: Duration::ZERO,
        };
        lab_proto::encode(&Response {
            id: Some(id),
            reply: Reply::Ran(ran),
        })
    }

    /// The guest's end of a streaming run, as the agent does it: at most the window ahead of
    /// the host's grants. Sends `total` bytes (a counter's bytes, so that any loss or
    /// reordering shows) in pieces of `piece`, then the reply.
    async fn agent_keeping_to_its_window(guest: UnixStream, total: usize, piece: usize) {
        let (read, mut write) = guest.into_split();
        let mut lines = tokio::io::BufReader::new(read).lines();
        let first = lines.next_line().await.expect("read").expect("a request");
        let req: Request = serde_json::from_str(&first).expect("a request line");
        let Op::Run(spec) = &req.op else {
            panic!("not a run: {req:?}")
        };
        let room = Arc::new(AtomicU64::new(spec.window.expect("a window")));
        let granted = Arc::new(tokio::sync::Notify::new());
        let grants = {
            let (room, granted) = (Arc::clone(&room), Arc::clone(&granted));
            tokio::spawn(async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    let grant: Request = serde_json::from_str(&line).expect("a request line");
                    let Op::Grant { run, bytes } = grant.op else {
                        panic!("not a grant: {grant:?}")
                    };
                    assert_eq!(run, req.id, "a grant names its run");
                    room.fetch_add(bytes.min(u64::MAX / 2), Ordering::SeqCst);
                    granted.notify_one();
                }
            })
        };
        let mut sent = 0usize;
        while sent < total {
            let n = piece.min(total - sent);
            while room.load(Ordering::SeqCst) < n as u64 {
                granted.notified().await;
            }
            room.fetch_sub(n as u64, Ordering::SeqCst);
            let data: Vec<u8> = (sent..sent + n).map(|i| (i % 251) as u8).collect();
            write
                .write_all(&output_line(req.id, Stream::Stdout, data))
                .await
                .expect("write");
            sent += n;
        }
        write.write_all(&ran_line(req.id)).await.expect("write");
        grants.abort();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_slow_reader_gets_every_byte_in_order_and_the_host_holds_no_more_than_the_window() {
        let (host, guest) = UnixStream::pair().expect("pair");
        let agent = AgentClient::new(host);
        let mut started = agent.start(streaming_run()).await.expect("start");
        let total = 3 * OUTPUT_WINDOW as usize + 12345;
        let guest = tokio::spawn(agent_keeping_to_its_window(guest, total, 40 << 10));
        let mut got = Vec::with_capacity(total);
        let mut most_waiting = 0usize;
        loop {
            // A reader slower than the guest: the guest has filled the window each time.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let waiting: usize = started.output.pieces.len();
            most_waiting = most_waiting.max(waiting);
            match started.output.recv().await {
                Some((_, data)) => got.extend_from_slice(&data),
                None => break,
            }
            if got.len() == total {
                break;
            }
        }
        guest.await.expect("the guest's side ran");
        let reply = agent
            .wait(started.id, started.reply, Duration::from_secs(60))
            .await
            .expect("the reply comes");
        assert!(
            matches!(&reply, Reply::Ran(out) if !out.truncated),
            "{reply:?}"
        );
        assert_eq!(got.len(), total, "every byte");
        assert!(
            got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "in order"
        );
        // Pieces of 40 KiB: the window's 4 MiB is 103 of them; a grant's round trip adds none.
        assert!(
            most_waiting as u64 * (40 << 10) <= OUTPUT_WINDOW + (40 << 10),
            "{most_waiting} pieces waited at once"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_guest_that_ignores_its_window_costs_the_window_and_the_result_says_truncated() {
        let (host, guest) = UnixStream::pair().expect("pair");
        let agent = AgentClient::new(host);
        // Started, and its output never read: `lab run ... | sleep 600`.
        let mut started = agent.start(streaming_run()).await.expect("start");
        let mut guest = tokio::io::BufReader::new(guest);
        let mut line = String::new();
        guest.read_line(&mut line).await.expect("a request");
        let id = serde_json::from_str::<Request>(&line)
            .expect("a request")
            .id;
        let mut guest = guest.into_inner();
        let (out, err) = (
            output_line(id, Stream::Stdout, vec![b'A'; 64 << 10]),
            output_line(id, Stream::Stderr, vec![b'B'; 64 << 10]),
        );
        let before = rss();
        let mut written = 0usize;
        while written < 1 << 30 {
            guest.write_all(&out).await.expect("write");
            guest.write_all(&err).await.expect("write");
            written += 2 * (64 << 10);
        }
        // And the run's own reply still gets through, behind all that.
        guest.write_all(&ran_line(id)).await.expect("write");
        let reply = agent
            .wait(started.id, started.reply, Duration::from_secs(60))
            .await
            .expect("the reply comes");
        let grown = rss().saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "the host grew by {} MiB for 1 GiB past the window",
            grown >> 20
        );
        assert!(
            matches!(&reply, Reply::Ran(out) if out.truncated),
            "the result says output was dropped: {reply:?}"
        );
        let mut kept = 0u64;
        while let Some((_, data)) = started.output.try_recv() {
            kept += data.len() as u64;
        }
        assert_eq!(kept, OUTPUT_WINDOW, "the window's worth is kept, no more");
    }

    #[tokio::test]
    async fn a_long_unattributed_reply_is_not_kept() {
        let (host, mut guest) = UnixStream::pair().expect("pair");
        let agent = AgentClient::new(host);
        let long = Response {
            id: None,
            reply: Reply::Error {
                message: "x".repeat(UNATTRIBUTED_BYTES),
            },
        };
        let short = Response {
            id: None,
            reply: Reply::Error {
                message: "bad input".into(),
            },
        };
        let mut lines = lab_proto::encode(&long);
        lines.extend(lab_proto::encode(&short));
        let send = agent.send_raw(b"", Duration::from_secs(10));
        let (reply, written) = tokio::join!(send, guest.write_all(&lines));
        written.expect("write");
        assert_eq!(
            reply.expect("a reply"),
            short.reply,
            "the long one was dropped"
        );
    }

    #[tokio::test]
    async fn a_write_to_a_guest_that_stopped_reading_ends_at_its_deadline() {
        let (host, _guest) = UnixStream::pair().expect("pair");
        let agent = AgentClient::new(host);
        let op = Op::WriteFile {
            path: "/big".into(),
            data: vec![0; 16 << 20],
            mode: 0o644,
        };
        let started = std::time::Instant::now();
        let err = agent
            .request(op.clone(), Duration::from_secs(1))
            .await
            .expect_err("nobody reads");
        assert!(matches!(err, AgentError::Wedged(_)), "{err}");
        // A generous multiple of the 1 s deadline: on a loaded machine, encoding 16 MiB and
        // scheduling the timer took 3 s.
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{:?}",
            started.elapsed()
        );
        // Half a line may be in the stream: later calls fail at once rather than garble it.
        let err = agent.notify(Op::Hello).await.expect_err("wedged");
        assert!(err.to_string().contains("unusable"), "{err}");
    }
}
