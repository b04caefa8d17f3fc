//! This side of a remote terminal: the local terminal in raw mode, its size, and the loop that
//! passes keys to a remote shell and its screen back. `lab shell` runs it against a guest
//! session directly; `lab attach` against the running shell's control socket.

use std::io::Write;

use anyhow::Context;
use lab_harness::TtySize;
use nix::sys::termios::{self, SetArg, Termios};
use tokio::io::AsyncReadExt;
use tokio::signal::unix::{signal, SignalKind};

/// Where keys typed here go: a handle apart from the output, since sending them may wait for
/// room (the program has not taken what came before) while its screen must still be read.
pub(crate) trait Keys: Clone + 'static {
    /// Sends `data`, in order, once there is room for it.
    fn send(&self, data: Vec<u8>) -> impl std::future::Future<Output = anyhow::Result<()>>;
}

/// Keys typed and not yet sent that a relay holds before it stops reading more: past it, the
/// typist waits (their terminal buffers), as the program's own terminal would make them.
pub(crate) const MAX_TYPED: usize = lab_harness::INPUT_WINDOW as usize;

/// A send of keys in flight, polled beside the output.
type Sending = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>;

/// Keys typed and not yet sent, and the send in flight: a relay reads keys while there is room
/// ([`Typing::has_room`]) and polls [`Typing::sent`] beside the output, so keys wait for the
/// program without holding up its screen.
pub(crate) struct Typing<K> {
    keys: K,
    typed: Vec<u8>,
    sending: Option<Sending>,
}

impl<K: Keys> Typing<K> {
    pub(crate) fn new(keys: K) -> Self {
        Self {
            keys,
            typed: Vec::new(),
            sending: None,
        }
    }

    /// Whether more keys may be taken: at most [`MAX_TYPED`] wait.
    pub(crate) fn has_room(&self) -> bool {
        self.typed.len() < MAX_TYPED
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.typed.extend_from_slice(data);
        self.start();
    }

    /// Ends when the send in flight has (then the next one starts); never while none is.
    /// Cancel-safe: a send cut off here goes on at the next call.
    pub(crate) async fn sent(&mut self) -> anyhow::Result<()> {
        let Some(sending) = &mut self.sending else {
            return std::future::pending().await;
        };
        let result = sending.await;
        self.sending = None;
        self.start();
        result
    }

    /// All that was typed and not yet sent, if nothing is being sent now.
    fn start(&mut self) {
        if self.sending.is_none() && !self.typed.is_empty() {
            let (keys, data) = (self.keys.clone(), std::mem::take(&mut self.typed));
            self.sending = Some(Box::pin(async move { keys.send(data).await }));
        }
    }
}

/// A shell running on a terminal somewhere else.
pub(crate) trait Remote {
    type Keys: Keys;
    /// Where keys typed here go.
    fn keys(&self) -> Self::Keys;
    /// The next piece of what its terminal shows; `None` once it has ended.
    async fn output(&mut self) -> Option<Vec<u8>>;
    /// This terminal changed size.
    async fn resize(&mut self, size: TtySize) -> anyhow::Result<()>;
    /// Its exit code, once [`Remote::output`] has said `None`.
    async fn finish(self) -> anyhow::Result<i32>;
}

/// Passes keys in and the screen out until the remote shell ends (its exit code) or this
/// process is told to stop (SIGHUP: the terminal closed; SIGTERM; SIGINT when stdin is not a
/// terminal), which returns 128 + the signal's number.
pub(crate) async fn relay(mut remote: impl Remote) -> anyhow::Result<i32> {
    let _raw = RawMode::enable();
    let mut stdin = tokio::io::stdin();
    let mut stdin_open = true;
    let mut buf = vec![0u8; 4096];
    let mut winch = signal(SignalKind::window_change())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut typing = Typing::new(remote.keys());
    loop {
        tokio::select! {
            out = remote.output() => match out {
                Some(bytes) => {
                    let mut stdout = std::io::stdout().lock();
                    stdout.write_all(&bytes).and_then(|()| stdout.flush()).context("writing to the terminal")?;
                }
                None => break,
            },
            sent = typing.sent() => sent?,
            n = stdin.read(&mut buf), if stdin_open && typing.has_room() => match n {
                Ok(n @ 1..) => typing.push(&buf[..n]),
                // Our input ended: as if Ctrl-D was typed at the prompt.
                _ => {
                    stdin_open = false;
                    typing.push(b"\x04");
                }
            },
            _ = winch.recv() => remote.resize(size()).await?,
            _ = hup.recv() => return Ok(129),
            _ = term.recv() => return Ok(143),
            _ = int.recv() => return Ok(130),
        }
    }
    remote.finish().await
}

/// A line on stderr, if there still is one: the terminal may be gone (a closed window), and
/// saying so must not panic before the guests are shut down.
pub(crate) fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// This terminal's size, or 24x80 when stdout is not one.
pub(crate) fn size() -> TtySize {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the pointer, which lives across the call.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        TtySize {
            rows: ws.ws_row,
            cols: ws.ws_col,
        }
    } else {
        TtySize { rows: 24, cols: 80 }
    }
}

/// `$TERM` here, for the guest's shell.
pub(crate) fn kind() -> String {
    std::env::var("TERM").unwrap_or_else(|_| "xterm-256color".into())
}

/// The local terminal in raw mode while it lives: keys (Ctrl-C, arrows, Tab) go to the guest's
/// terminal, which does the line editing and signals. Restored on drop, whatever happens.
struct RawMode {
    saved: Option<Termios>,
}

impl RawMode {
    fn enable() -> Self {
        let stdin = std::io::stdin();
        let Ok(saved) = termios::tcgetattr(&stdin) else {
            return Self { saved: None };
        };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        match termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw) {
            Ok(()) => Self { saved: Some(saved) },
            Err(_) => Self { saved: None },
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSANOW, saved);
        }
    }
}
