//! The host end of the agent protocol: requests out, replies matched back to their callers by id.
//!
//! QEMU connects the guest's virtio-serial port to a unix socket the harness listens on. One
//! reader task owns the socket's read half; callers wait on a oneshot for their reply, each with a
//! deadline, so a dead guest fails a call instead of hanging it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lab_proto::{
    Line, LineSplitter, Op, Ready, Reply, Request, Response, Stream, MAX_RESPONSE_BYTES,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{mpsc, oneshot, watch};

type Pending = Arc<Mutex<HashMap<u64, Waiter>>>;

/// Who waits for a request's answer: the final reply, and for a streaming run its output pieces.
#[derive(Debug)]
struct Waiter {
    reply: oneshot::Sender<Reply>,
    output: Option<mpsc::UnboundedSender<(Stream, Vec<u8>)>>,
}

/// A request in flight whose output streams back: its id (to send it input), the pieces of
/// output as they come, and the final reply.
#[derive(Debug)]
pub struct Started {
    pub id: u64,
    pub output: mpsc::UnboundedReceiver<(Stream, Vec<u8>)>,
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
}

#[derive(Debug)]
pub struct AgentClient {
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    ready: watch::Receiver<Option<Ready>>,
    /// Replies no caller waits for: answers to input the agent could not parse.
    unattributed: tokio::sync::Mutex<mpsc::UnboundedReceiver<Reply>>,
    reader: tokio::task::JoinHandle<()>,
}

impl AgentClient {
    pub fn new(stream: UnixStream) -> Self {
        let (read, writer) = stream.into_split();
        let pending: Pending = Arc::default();
        let (ready_tx, ready) = watch::channel(None);
        let (unattributed_tx, unattributed) = mpsc::unbounded_channel();
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
                self.write(&Request { id, op: Op::Hello }).await?;
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

    pub async fn request(&self, op: Op, within: Duration) -> Result<Reply, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            id,
            Waiter {
                reply: tx,
                output: None,
            },
        );
        if let Err(e) = self.write(&Request { id, op }).await {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        self.wait(id, rx, within).await
    }

    /// Sends a request whose output streams back ([`lab_proto::RunSpec::stream`] or `tty`);
    /// the caller reads [`Started::output`] and then awaits [`Started::reply`] (see [`Self::wait`]).
    pub async fn start(&self, op: Op) -> Result<Started, AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, reply) = oneshot::channel();
        let (out_tx, output) = mpsc::unbounded_channel();
        lock(&self.pending).insert(
            id,
            Waiter {
                reply: tx,
                output: Some(out_tx),
            },
        );
        if let Err(e) = self.write(&Request { id, op }).await {
            lock(&self.pending).remove(&id);
            return Err(e);
        }
        Ok(Started { id, output, reply })
    }

    /// Sends a request nobody waits for (input to, or resize of, an interactive run); the agent
    /// only answers such requests when they fail, and those answers go unattributed.
    pub async fn notify(&self, op: Op) -> Result<(), AgentError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.write(&Request { id, op }).await
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
        self.writer
            .lock()
            .await
            .write_all(bytes)
            .await
            .map_err(AgentError::Write)?;
        match tokio::time::timeout(within, unattributed.recv()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(AgentError::Closed),
            Err(_) => Err(AgentError::Timeout(within)),
        }
    }

    async fn write(&self, req: &Request) -> Result<(), AgentError> {
        let line = lab_proto::encode(req);
        self.writer
            .lock()
            .await
            .write_all(&line)
            .await
            .map_err(AgentError::Write)
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
    unattributed: mpsc::UnboundedSender<Reply>,
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

fn route(
    resp: Response,
    pending: &Pending,
    ready: &watch::Sender<Option<Ready>>,
    unattributed: &mpsc::UnboundedSender<Reply>,
) {
    if let Reply::Ready(r) = &resp.reply {
        ready.send_replace(Some(r.clone()));
        return;
    }
    if let Reply::Output { stream, data } = resp.reply {
        // Pieces for a request nobody streams (it timed out, say) are dropped.
        if let Some(out) = resp
            .id
            .and_then(|id| lock(pending).get(&id).and_then(|w| w.output.clone()))
        {
            let _ = out.send((stream, data));
        }
        return;
    }
    match resp.id.and_then(|id| lock(pending).remove(&id)) {
        Some(waiter) => {
            let _ = waiter.reply.send(resp.reply);
        }
        // No caller waits for it: an answer to raw input (whose id, if any, the agent salvaged),
        // or a late reply to a request that timed out.
        None => {
            let _ = unattributed.send(resp.reply);
        }
    }
}
