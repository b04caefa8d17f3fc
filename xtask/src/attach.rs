//! `cargo xtask lab attach HOST`: a second terminal into a lab that `lab shell` is running.
//!
//! The running shell is the only process that can talk to its guests (it holds their agents'
//! sockets), so it serves a control socket and starts each attached shell itself; `lab attach`
//! is a terminal relay to that socket. The socket lives in a fresh directory under the temp dir
//! that only its user may enter (0700), named like the guests' state directories so that the
//! leak check would see it left behind; `lab.json` beside it says which process and hosts it
//! serves. Messages are `lab_proto::attach`'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use futures::stream::{FuturesUnordered, StreamExt};
use lab_harness::{Cmd, Lab, TtySize};
use lab_proto::attach::{ToAttach, ToShell, MAX_LINE_BYTES};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};

use crate::terminal::{self, say, Remote, Typing};

const SOCKET: &str = "control.sock";
const ABOUT: &str = "lab.json";

/// How long a hung-up guest shell may take to end before its connection is let go.
const HANGUP_GRACE: Duration = Duration::from_secs(10);

/// A guest shell's exit code as a local shell gives it: its own, or 128 + the signal that
/// ended it.
pub(crate) fn exit_code(out: &lab_harness::RunOutput) -> i32 {
    out.code.unwrap_or_else(|| 128 + out.signal.unwrap_or(1))
}

/// A root bash on a guest's terminal, the same for `lab shell` and `lab attach`.
pub(crate) fn guest_shell(cwd: &str, term: &str) -> Cmd {
    Cmd::argv(["/bin/bash", "-i"])
        .cwd(cwd)
        .env("TERM", term)
        .env("PS1", "\\u@\\h:\\w\\$ ")
}

/// The running shell's side: the control socket, removed with its directory on drop.
pub(crate) struct Control {
    // Held for its drop, which removes the socket and lab.json.
    _dir: tempfile::TempDir,
    listener: UnixListener,
}

impl Control {
    /// Opens the control socket for `lab` (call inside the runtime).
    pub(crate) fn open(lab: &Lab) -> anyhow::Result<Self> {
        // 0700: nobody else can reach the socket, whatever the umask.
        let dir = lab_harness::rundirs::create("shell", None)
            .context("creating the shell's control directory")?;
        let listener = UnixListener::bind(dir.path().join(SOCKET))
            .context("opening the shell's control socket")?;
        let hosts: Vec<_> = lab
            .vms()
            .iter()
            .map(|vm| serde_json::json!({ "name": vm.name(), "ip": lab.ip(vm.name()) }))
            .collect();
        let about = serde_json::json!({ "pid": std::process::id(), "hosts": hosts });
        std::fs::write(dir.path().join(ABOUT), about.to_string())
            .context("writing the shell's lab.json")?;
        Ok(Self {
            _dir: dir,
            listener,
        })
    }

    /// Serves `lab attach` connections, each on a shell of its own, until dropped (when the lab
    /// shell ends: the attached terminals then see their connection close).
    pub(crate) async fn serve(&self, lab: &Lab) {
        let mut attached = FuturesUnordered::new();
        loop {
            tokio::select! {
                conn = self.listener.accept() => {
                    if let Ok((stream, _)) = conn {
                        // Errors go to the attached terminal, if it is still there: this one is
                        // in raw mode, showing host1's shell.
                        attached.push(async move { let _ = serve_one(lab, stream).await; });
                    }
                }
                Some(()) = attached.next(), if !attached.is_empty() => {}
            }
        }
    }
}

/// One attached terminal: a shell on the host it asks for, until either side ends.
async fn serve_one(lab: &Lab, stream: UnixStream) -> anyhow::Result<()> {
    let (read, write) = stream.into_split();
    let mut from = Lines::new(read);
    let mut to = Sender(write);
    let (host, size, term) = match from.next::<ToShell>().await? {
        Some(ToShell::Attach { host, size, term }) => (host, size, term),
        Some(ToShell::Steer { target, action }) => {
            let result = crate::steer::apply(lab, &target, &action).await;
            return to.send(&crate::steer::answer(result)).await;
        }
        Some(ToShell::Capture { target }) => {
            return crate::capture::serve(lab, &target, from, to).await;
        }
        Some(ToShell::Events) => return serve_events(lab, from, to).await,
        _ => {
            return to
                .send(&ToAttach::Refused {
                    reason: "the first message must say which host to attach to, or what to change"
                        .into(),
                })
                .await
        }
    };
    let Some(vm) = lab.vms().iter().find(|vm| vm.name() == host) else {
        let names: Vec<_> = lab.vms().iter().map(|vm| vm.name()).collect();
        let reason = format!("this lab has no {host:?}; its hosts are {} (start one with more: `lab shell --hosts N`)", names.join(", "));
        return to.send(&ToAttach::Refused { reason }).await;
    };
    let mut session = match vm.interactive(guest_shell("/root", &term), size).await {
        Ok(session) => session,
        Err(e) => {
            return to
                .send(&ToAttach::Refused {
                    reason: format!("could not start a shell on {host}: {e}"),
                })
                .await
        }
    };
    to.send(&ToAttach::Attached {
        ip: lab.ip(&host),
        host,
    })
    .await?;
    // Keys wait for room apart from the screen: a program that writes and does not read must
    // not hold up its output behind its input. Past MAX_TYPED waiting, this stops reading the
    // socket, and the attached terminal waits.
    let mut typing = Typing::new(crate::shell::GuestKeys(session.input_sender()));
    loop {
        tokio::select! {
            out = session.output() => match out {
                Some(data) => to.send(&ToAttach::Output { data }).await?,
                None => break,
            },
            sent = typing.sent() => sent?,
            msg = from.next::<ToShell>(), if typing.has_room() => match msg {
                Ok(Some(ToShell::Input { data })) => typing.push(&data),
                Ok(Some(ToShell::Resize { size })) => session.resize(size).await?,
                Ok(Some(
                    ToShell::Attach { .. }
                    | ToShell::Steer { .. }
                    | ToShell::Capture { .. }
                    | ToShell::Events,
                )) => {}
                // The attached terminal went away: hang its shell up, as a closed window does.
                Ok(None) | Err(_) => {
                    session.hang_up().await?;
                    let drained = tokio::time::timeout(HANGUP_GRACE, async { while session.output().await.is_some() {} });
                    if drained.await.is_ok() {
                        session.finish().await?;
                    }
                    return Ok(());
                }
            },
        }
    }
    let out = session.finish().await?;
    to.send(&ToAttach::Ended {
        code: exit_code(&out),
    })
    .await
}

/// `lab events`' side: the lab's events, each as it happens, until the reader or the lab goes.
async fn serve_events(lab: &Lab, mut from: Lines, mut to: Sender) -> anyhow::Result<()> {
    let mut events = lab.events().subscribe();
    loop {
        tokio::select! {
            line = events.next() => match line {
                Some(line) => to.send(&ToAttach::Event { line: line.to_string() }).await?,
                None => return Ok(()),
            },
            _ = from.next::<ToShell>() => return Ok(()),
        }
    }
}

/// `lab events`: the running lab's events as NDJSON on stdout, until it ends or the reader goes.
pub fn events(pid: Option<u32>) -> anyhow::Result<()> {
    let shell = find(pid)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let (mut from, mut to) = connect(&shell).await?;
        to.send(&ToShell::Events).await?;
        let mut out = std::io::stdout();
        while let Ok(Some(msg)) = from.next::<ToAttach>().await {
            if let ToAttach::Event { line } = msg {
                use std::io::Write;
                if out
                    .write_all(line.as_bytes())
                    .and_then(|()| out.flush())
                    .is_err()
                {
                    // The reader went.
                    return Ok(());
                }
            }
        }
        Ok(())
    })
}

/// `lab attach`: finds the running shell, joins it, relays this terminal until the attached
/// shell ends; exits with its exit code.
pub fn run(host: &str, pid: Option<u32>) -> anyhow::Result<()> {
    let shell = find(pid)?;
    let rt = tokio::runtime::Runtime::new()?;
    let code = rt.block_on(attach(&shell, host));
    // The thread reading our stdin may still be blocked in a read: do not wait for it.
    rt.shutdown_background();
    let code = code?;
    say(&format!(
        "\r\nlab: detached from {host}; the lab runs on in its shell (pid {})",
        shell.pid
    ));
    std::process::exit(code);
}

/// A connection to `shell`'s control socket: messages in, messages out.
pub(crate) async fn connect(shell: &Found) -> anyhow::Result<(Lines, Sender)> {
    let socket = shell.dir.join(SOCKET);
    let stream = UnixStream::connect(&socket).await.with_context(|| {
        format!(
            "connecting to the lab shell of pid {} at {}",
            shell.pid,
            socket.display()
        )
    })?;
    let (read, write) = stream.into_split();
    Ok((Lines::new(read), Sender(write)))
}

/// Sends `first` to `shell` and reads its answer: the connection for what follows, and the
/// answer, unless it refused (its reason is the error) or closed the connection.
pub(crate) async fn request(
    shell: &Found,
    first: &ToShell,
) -> anyhow::Result<(ToAttach, Lines, Sender)> {
    let (mut from, mut to) = connect(shell).await?;
    to.send(first).await?;
    match from.next::<ToAttach>().await? {
        Some(ToAttach::Refused { reason }) => bail!("{reason}"),
        Some(answer) => Ok((answer, from, to)),
        None => bail!(
            "the lab shell of pid {} closed the connection (is it ending?)",
            shell.pid
        ),
    }
}

async fn attach(shell: &Found, host: &str) -> anyhow::Result<i32> {
    let attach = ToShell::Attach {
        host: host.into(),
        size: terminal::size(),
        term: terminal::kind(),
    };
    let (answer, from, to) = request(shell, &attach).await?;
    let ToAttach::Attached { host, ip } = answer else {
        bail!("the lab shell answered {answer:?} instead of attaching");
    };
    say(&format!(
        "lab: attached to {host} ({ip}/24 on eth0) of the lab shell of pid {}; `exit` detaches",
        shell.pid
    ));
    let remote = Attached {
        from,
        to: SharedSender(std::sync::Arc::new(tokio::sync::Mutex::new(to))),
        ended: None,
        shell_pid: shell.pid,
    };
    terminal::relay(remote).await
}

/// The attached shell, seen from `lab attach`.
struct Attached {
    from: Lines,
    to: SharedSender,
    ended: Option<i32>,
    shell_pid: u32,
}

/// The control socket's write half, shared by keys and window sizes.
#[derive(Clone)]
struct SharedSender(std::sync::Arc<tokio::sync::Mutex<Sender>>);

impl SharedSender {
    async fn send<T: serde::Serialize>(&self, msg: &T) -> anyhow::Result<()> {
        self.0.lock().await.send(msg).await
    }
}

impl crate::terminal::Keys for SharedSender {
    async fn send(&self, data: Vec<u8>) -> anyhow::Result<()> {
        SharedSender::send(self, &ToShell::Input { data }).await
    }
}

impl Remote for Attached {
    type Keys = SharedSender;

    fn keys(&self) -> SharedSender {
        self.to.clone()
    }

    async fn output(&mut self) -> Option<Vec<u8>> {
        loop {
            match self.from.next::<ToAttach>().await {
                Ok(Some(ToAttach::Output { data })) => return Some(data),
                Ok(Some(ToAttach::Ended { code })) => {
                    self.ended = Some(code);
                    return None;
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    async fn resize(&mut self, size: TtySize) -> anyhow::Result<()> {
        self.to.send(&ToShell::Resize { size }).await
    }

    async fn finish(self) -> anyhow::Result<i32> {
        self.ended.with_context(|| {
            format!(
                "the lab shell (pid {}) ended, and its guests with it",
                self.shell_pid
            )
        })
    }
}

/// A running lab shell's control directory.
#[derive(Debug)]
pub(crate) struct Found {
    dir: PathBuf,
    pub(crate) pid: u32,
    hosts: Vec<String>,
}

/// The running lab shell to attach to: the one there is, or the one of `pid`.
pub(crate) fn find(pid: Option<u32>) -> anyhow::Result<Found> {
    let mut shells = running_shells();
    if let Some(pid) = pid {
        return shells.into_iter().find(|s| s.pid == pid).with_context(|| {
            format!("no lab shell of pid {pid} is running (leave out --pid to pick the only one)")
        });
    }
    match shells.len() {
        0 => bail!("no lab shell is running: start one in another terminal with `cargo xtask lab shell --hosts 2` (or `lab up FILE`), then run this again"),
        1 => Ok(shells.remove(0)),
        _ => {
            let list: Vec<_> = shells.iter().map(|s| format!("  --pid {}  ({})", s.pid, s.hosts.join(", "))).collect();
            bail!("{} lab shells are running; say which with one of:\n{}", shells.len(), list.join("\n"))
        }
    }
}

/// This user's control directories whose shell process is alive, by pid: the lab directories
/// that hold a `lab.json`.
fn running_shells() -> Vec<Found> {
    let mut found: Vec<Found> = lab_harness::rundirs::ours()
        .iter()
        .filter_map(|dir| about(dir))
        .filter(|s| lab_harness::rundirs::alive(s.pid))
        .collect();
    found.sort_by_key(|s| s.pid);
    found
}

/// What `lab.json` in `dir` says, if it says it.
fn about(dir: &Path) -> Option<Found> {
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(ABOUT)).ok()?).ok()?;
    let pid = u32::try_from(json["pid"].as_u64()?).ok()?;
    let hosts = json["hosts"]
        .as_array()?
        .iter()
        .filter_map(|h| h["name"].as_str().map(String::from))
        .collect();
    Some(Found {
        dir: dir.to_path_buf(),
        pid,
        hosts,
    })
}

/// Messages in, one JSON line each. Keeps a partly read line across calls, so that reading can
/// be one branch of a `select!` and lose nothing when another branch wins.
pub(crate) struct Lines {
    reader: BufReader<OwnedReadHalf>,
    buf: Vec<u8>,
}

impl Lines {
    fn new(read: OwnedReadHalf) -> Self {
        Self {
            reader: BufReader::new(read),
            buf: Vec::new(),
        }
    }

    /// The next message; `None` when the other side closed the connection.
    pub(crate) async fn next<T: DeserializeOwned>(&mut self) -> anyhow::Result<Option<T>> {
        // read_until appends what it has read even when cancelled, so a retry resumes the line.
        let n = (&mut self.reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut self.buf)
            .await?;
        if n == 0 && self.buf.is_empty() {
            return Ok(None);
        }
        let line = std::mem::take(&mut self.buf);
        let line = line.strip_suffix(b"\n").unwrap_or(&line);
        Ok(Some(lab_proto::decode(line, MAX_LINE_BYTES)?))
    }
}

/// Messages out.
pub(crate) struct Sender(OwnedWriteHalf);

impl Sender {
    pub(crate) async fn send<T: serde::Serialize>(&mut self, msg: &T) -> anyhow::Result<()> {
        self.0
            .write_all(&lab_proto::encode(msg))
            .await
            .context("writing to the control socket")
    }
}
