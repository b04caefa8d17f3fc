//! The host end of the agent protocol: requests out, replies matched back to their callers by id.
//!
//! QEMU connects the guest's virtio-serial port to a unix socket the harness listens on. One
//! reader task owns the socket's read half; callers wait on a oneshot for their reply, each with a
//! deadline, so a dead guest fails a call instead of hanging it.
//!
//! What a guest sends is held in bounded buffers only, so no guest can grow the host's memory
//! without limit: a streaming run's output waits in a channel of [`OUTPUT_PIECES`] pieces, and
//! what comes while it is full is dropped, counted, and said: the run's result is marked
//! `truncated`, and a terminal shows a line saying how much it lost. (Waiting for the reader
//! instead would stall every other reply of the guest behind one run nobody reads.) Replies
//! nobody waits for are kept up to [`UNATTRIBUTED`] and then dropped; one line is at most
//! [`MAX_RESPONSE_BYTES`]. Writes have deadlines too: a guest that stops reading cannot hang a
//! caller, and a write cut off by its deadline leaves the connection unusable rather than
//! half a line in it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lab_proto::{
    Call, Line, LineSplitter, Op, Ready, Refused, Reply, Request, Response, Stream,
    MAX_RESPONSE_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

type Pending = Arc<Mutex<HashMap<u64, Waiter>>>;

/// Output pieces (each at most the agent's 64 KiB read) a streaming run may have waiting for
/// its reader before more are dropped: 4 MiB at most.
pub const OUTPUT_PIECES: usize = 64;
/// Replies to nobody kept for [`AgentClient::send_raw`]; later ones are dropped.
const UNATTRIBUTED: usize = 16;
/// How long a write to the agent may take when the caller gave no deadline (input, resize):
/// the guest reads its port continuously, so this passes only when it is wedged.
const WRITE_WITHIN: Duration = Duration::from_secs(10);

/// Who waits for a request's answer: the final reply, and for a streaming run its output pieces.
#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<Reply>,
    output: Option<Output>,
}

/// Where a streaming run's output goes, and how much of it found no room.
#[derive(Debug)]
struct Output {
    to: mpsc::Sender<(Stream, Vec<u8>)>,
    dropped: u64,
    /// A terminal's output: a loss is said in it, as no result flag is seen there.
    terminal: bool,
}

impl Output {
    fn new(to: mpsc::Sender<(Stream, Vec<u8>)>, terminal: bool) -> Self {
        Self {
            to,
            dropped: 0,
            terminal,
        }
    }

    /// Passes a piece on if there is room, else counts it. After a loss, a line saying how much
    /// was lost goes first (on a terminal, where no result flag is seen).
    fn pass(&mut self, stream: Stream, data: Vec<u8>) {
        if self.dropped > 0 && self.terminal {
            let note = format!(
                "\r\n[lab: {} bytes of output dropped: not read in time]\r\n",
                self.dropped
            );
            if self.to.try_send((stream, note.into_bytes())).is_err() {
                self.dropped += data.len() as u64;
                return;
            }
            self.dropped = 0;
        }
        let len = data.len() as u64;
        if self.to.try_send((stream, data)).is_err() {
            self.dropped += len;
        }
    }
}

/// A request in flight whose output streams back: its id (to send it input), the pieces of
/// output as they come, and the final reply.
#[derive(Debug)]
pub struct Started {
    pub id: u64,
    pub output: mpsc::Receiver<(Stream, Vec<u8>)>,
    pub reply: oneshot::Receiver<Reply>,
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

#[derive(Debug)]
pub struct AgentClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    ready: watch::Receiver<Option<Ready>>,
    /// Replies no caller waits for: answers to input the agent could not parse.
    unattributed: tokio::sync::Mutex<mpsc::Receiver<Reply>>,
    /// A write was cut off by its deadline: half a line may be in the stream.
    wedged: AtomicBool,
    reader: tokio::task::JoinHandle<()>,
}

impl AgentClient {
    pub fn new(stream: UnixStream) -> Self {
        let (read, writer) = stream.into_split();
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
            writer: tokio::sync::Mutex::new(writer),
            pending,
            next_id: AtomicU64::new(1),
            ready,
            unattributed: tokio::sync::Mutex::new(unattributed),
            wedged: AtomicBool::new(false),
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

    /// Sends a request whose output streams back ([`lab_proto::RunSpec::stream`] or `tty`);
    /// the caller reads [`Started::output`] and then awaits [`Started::reply`] (see [`Self::wait`]).
    /// Output the caller does not read in time is dropped, and the result says `truncated`.
    pub async fn start(&self, op: Op) -> Result<Started, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, reply) = oneshot::channel();
        let (out_tx, output) = mpsc::channel(OUTPUT_PIECES);
        let terminal = matches!(&op, Op::Run(spec) if spec.tty.is_some());
        lock(&self.pending).insert(
            id,
            Waiter {
                reply: tx,
                output: Some(Output::new(out_tx, terminal)),
            },
        );
        if let Err(e) = self.write(&Request { id, op }, WRITE_WITHIN).await {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        Ok(Started { id, output, reply })
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
                lock(&self.pending).remove(&id);
                Err(AgentError::Timeout(within))
            }
        }
    }

    /// Sends bytes as they are (for testing the agent's defences) and returns the agent's answer to
    /// input it could not attribute to a request.
    pub async fn send_raw(&self, bytes: &[u8], within: Duration) -> Result<Reply, AgentError> {
        let mut unattributed = self.unattributed.lock().await;
        // Forget stale replies (late answers to timed-out requests) before asking.
        while unattributed.try_recv().is_ok() {}
        self.write_bytes(bytes, within).await?;
        match tokio::time::timeout(within, unattributed.recv()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(AgentError::Closed),
            Err(_) => Err(AgentError::Timeout(within)),
        }
    }

    async fn write(&self, req: &Request, within: Duration) -> Result<(), AgentError> {
        self.write_bytes(&lab_proto::encode(req), within).await
    }

    /// Writes `bytes` whole within `within` (waiting for the writer's lock counts too); one cut
    /// off leaves the connection wedged, and every later write fails at once.
    async fn write_bytes(&self, bytes: &[u8], within: Duration) -> Result<(), AgentError> {
        if self.wedged.load(Ordering::Relaxed) {
            return Err(AgentError::Wedged(within));
        }
        let write = async {
            let mut writer = self.writer.lock().await;
            writer.write_all(bytes).await.map_err(AgentError::Write)
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
    let mut splitter = LineSplitter::new(MAX_RESPONSE_BYTES);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        for line in splitter.push(&buf[..n]) {
            let Line::Complete(line) = line else {
                tracing::warn!("agent sent a reply over {MAX_RESPONSE_BYTES} bytes; dropped");
                continue;
            };
            match lab_proto::decode::<Response>(&line, MAX_RESPONSE_BYTES) {
                Ok(resp) => route(resp, &pending, &ready, &unattributed),
                Err(e) => tracing::warn!("undecodable agent reply: {e}"),
            }
        }
    }
    // Dropping every sender wakes every waiter with `Closed`.
    lock(&pending).clear();
}

/// Hands `resp` to whoever waits for it, never waiting itself.
fn route(
    resp: Response,
    pending: &Pending,
    ready: &watch::Sender<Option<Ready>>,
    unattributed: &mpsc::Sender<Reply>,
) {
    if let Reply::Ready(r) = &resp.reply {
        ready.send_replace(Some(r.clone()));
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
            let mut reply = resp.reply;
            if let (Reply::Ran(out), Some(output)) = (&mut reply, &waiter.output) {
                if output.dropped > 0 {
                    tracing::warn!(
                        "{} bytes of a command's output were dropped: its reader did not keep up",
                        output.dropped
                    );
                    out.truncated = true;
                }
            }
            let _ = waiter.reply.send(reply);
        }
        // No caller waits for it: an answer to raw input (whose id, if any, the agent salvaged),
        // or a late reply to a request that timed out.
        // Past UNATTRIBUTED of them waiting, they are dropped: nobody may ever ask.
        None => {
            let _ = unattributed.try_send(resp.reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;

    /// The id of the first request the host sends on `guest`.
    async fn first_request(guest: &mut tokio::io::BufReader<UnixStream>) -> u64 {
        let mut line = String::new();
        guest.read_line(&mut line).await.expect("a request");
        let req: Request = serde_json::from_str(&line).expect("a request line");
        req.id
    }

    /// This process's resident memory (nextest runs each test in a process of its own).
    fn rss() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmRSS")
            * 1024
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_guest_writing_a_gibibyte_to_a_reader_that_never_reads_costs_bounded_memory() {
        let (host, guest) = UnixStream::pair().expect("pair");
        let agent = AgentClient::new(host);
        let spec = lab_proto::RunSpec::new(
            lab_proto::Program::Script("base64 /dev/urandom".into()),
            Duration::from_secs(600),
        );
        // Started, and its output never read: `lab run ... | sleep 600`.
        let started = agent.start(Op::Run(spec)).await.expect("start");
        let mut guest = tokio::io::BufReader::new(guest);
        let id = first_request(&mut guest).await;
        let mut guest = guest.into_inner();
        let piece = |stream| {
            lab_proto::encode(&Response {
                id: Some(id),
                reply: Reply::Output {
                    stream,
                    data: vec![b'A'; 64 << 10],
                },
            })
        };
        let (out, err) = (piece(Stream::Stdout), piece(Stream::Stderr));
        let before = rss();
        let mut written = 0usize;
        while written < 1 << 30 {
            guest.write_all(&out).await.expect("write");
            guest.write_all(&err).await.expect("write");
            written += 2 * (64 << 10);
        }
        // And the run's own reply still gets through, behind all that.
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
        let done = lab_proto::encode(&Response {
            id: Some(id),
            reply: Reply::Ran(ran),
        });
        guest.write_all(&done).await.expect("write");
        let reply = agent
            .wait(started.id, started.reply, Duration::from_secs(60))
            .await
            .expect("the reply comes");
        let grown = rss().saturating_sub(before);
        assert!(
            grown < 64 << 20,
            "the host grew by {} MiB for 1 GiB nobody read",
            grown >> 20
        );
        assert!(
            matches!(&reply, Reply::Ran(out) if out.truncated),
            "the result says output was dropped: {reply:?}"
        );
        assert_eq!(started.output.len(), OUTPUT_PIECES, "what fit is kept");
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
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Half a line may be in the stream: later calls fail at once rather than garble it.
        let err = agent.notify(Op::Hello).await.expect_err("wedged");
        assert!(err.to_string().contains("unusable"), "{err}");
    }
}
