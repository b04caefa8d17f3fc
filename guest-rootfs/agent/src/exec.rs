//! Running one [`RunSpec`]: spawn in its own process group (or, on a terminal, its own session)
//! and its own cgroup ([`crate::limits`]), feed stdin, capture capped output or stream it as it
//! comes, and kill the whole group when the timeout passes.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use lab_proto::{Program, RunOutput, RunSpec, Stream, TtySize, MAX_OUTPUT_BYTES};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// Real programs first (iproute2, dash, bash, kmod, and any package the user added in /usr/bin
/// or /bin); busybox's applet links in /bin fill in the rest.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where a streaming run's output goes as it comes.
pub trait Sink: Send + Sync {
    /// Sends a piece on, waiting while the host has no room for it ([`crate::window`]).
    fn pass(&self, stream: Stream, data: &[u8]);
    /// Whether a [`Sink::pass`] waits for the host now: that time is the reader's, and does
    /// not count against [`DRAIN`].
    fn stalled(&self) -> bool;
    /// The program's terminal took `bytes` of input: the host may send more.
    fn input_taken(&self, bytes: usize);
}

/// What the server keeps of a running interactive program: where its input goes, its
/// terminal (to resize), and its process group (to hang up).
#[derive(Debug)]
pub struct Io {
    pub input: Input,
    pub tty: Option<OwnedFd>,
    pub group: Pid,
}

/// Typed input on its way to a program's terminal, written by a thread of its own: a program
/// that does not read its terminal fills it (4 KiB), and a write there blocks. The request loop
/// only queues; what is written is said to the host ([`Sink::input_taken`]), which sends no
/// more than [`lab_proto::INPUT_WINDOW`] ahead of it, so the queue holds at most that.
pub struct Input {
    queue: mpsc::Sender<Vec<u8>>,
    queued: Arc<std::sync::atomic::AtomicUsize>,
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Input").finish_non_exhaustive()
    }
}

impl Input {
    fn new(mut to: File, taken: Option<Arc<dyn Sink>>) -> Self {
        let (queue, rx) = mpsc::channel::<Vec<u8>>();
        let queued = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = Arc::clone(&queued);
        thread::spawn(move || {
            // Ends when the run ends (its Io, and so the sender, dropped) or its terminal closes.
            while let Ok(data) = rx.recv() {
                if to.write_all(&data).is_err() {
                    break;
                }
                counted.fetch_sub(data.len(), std::sync::atomic::Ordering::Relaxed);
                if let Some(sink) = &taken {
                    sink.input_taken(data.len());
                }
            }
        });
        Self { queue, queued }
    }

    /// Queues `data` for the terminal, in order. Refused only when the host sent more than its
    /// window allows (it does not: the window is its own).
    pub fn send(&self, data: Vec<u8>) -> Result<(), String> {
        let window = usize::try_from(lab_proto::INPUT_WINDOW).unwrap_or(usize::MAX);
        let len = data.len();
        let queued = self
            .queued
            .fetch_add(len, std::sync::atomic::Ordering::Relaxed);
        if queued + len > window {
            self.queued
                .fetch_sub(len, std::sync::atomic::Ordering::Relaxed);
            return Err(format!(
                "{len} bytes of input past the window of {window}: the host must wait until the program takes what it sent"
            ));
        }
        self.queue
            .send(data)
            .map_err(|_| "its terminal is closed".to_string())
    }
}

/// How long output may still drain, and a killed command's processes die, before the reply goes
/// out without them: a background job that keeps a finished session's terminal open must not
/// hold the reply, nor may a timed-out fork bomb's 850 processes, which took about 3 s to die under
/// TCG on a loaded host (the host waits only 10 s past the timeout). They go on dying after it;
/// their cgroup is removed once they have. Time in which the host holds the output back (its
/// window full) does not count: what the program wrote before it ended is all sent.
const DRAIN: Duration = Duration::from_secs(1);

/// Runs `spec` to its end. A streaming run's output goes to `sink` instead of the result; an
/// interactive one (on a terminal) hands its [`Io`] to `started` as soon as it runs.
pub fn run(
    spec: &RunSpec,
    sink: Option<Arc<dyn Sink>>,
    started: impl FnOnce(Io),
) -> Result<RunOutput, String> {
    let started_at = Instant::now();
    let sink = if spec.streams() { sink } else { None };
    let group = crate::limits::Group::create();
    let Started {
        pgid,
        stdout,
        stderr,
        done,
    } = match (&group, spec.tty) {
        (Some(group), None) => start_in(group, spec, sink.clone())?,
        _ => start_with_std(group.as_ref(), spec, sink.clone(), started)?,
    };

    let ended = match done.recv_timeout(spec.timeout) {
        Ok(status) => Some(status.map_err(|e| e.to_string())?),
        Err(RecvTimeoutError::Timeout) => None,
        Err(RecvTimeoutError::Disconnected) => return Err("waiter thread panicked".to_string()),
    };
    let timed_out = ended.is_none();
    if timed_out {
        // All of it, also what left the process group (a daemon in a session of its own).
        if let Some(group) = &group {
            group.kill();
        }
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    // A command that ended by itself leaves its children be, as a shell over ssh does: a
    // daemon, `setsid cmd &` or `nohup cmd &` lives on in the command's cgroup. Ending them
    // here would race them: a child that has not yet called setsid() when the shell exits
    // looks like any background job. Past the end (or kill), output drains for at most DRAIN:
    // a child may hold the pipes open for as long as it lives, and the reply does not wait
    // for it.
    let stalled = || sink.as_ref().is_some_and(|s| s.stalled());
    let status = ended.or_else(|| done.recv_timeout(DRAIN).ok()?.ok());
    let mut drain_until = Instant::now() + DRAIN;
    let (stdout, out_cut) = finish(stdout, &mut drain_until, &stalled);
    let (stderr, err_cut) = finish(stderr, &mut drain_until, &stalled);
    let oom_killed = group.as_ref().is_some_and(|g| g.oom_kills() > 0);
    Ok(RunOutput {
        oom_killed,
        code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        // Not yet reaped when the reply went out: killed by us all the same.
        signal: status.map_or(Some(Signal::SIGKILL as i32), |s| s.signal()),
        timed_out,
        stdout,
        stderr,
        truncated: out_cut || err_cut,
        duration: started_at.elapsed(),
    })
}

/// A command just started: its process group, its output as it is read, and its exit status
/// once the waiter thread has it.
struct Started {
    pgid: Pid,
    stdout: Captured,
    stderr: Captured,
    done: mpsc::Receiver<std::io::Result<ExitStatus>>,
}

/// The common case: a pipe for each stream, started inside its cgroup ([`crate::spawn`]).
fn start_in(
    group: &crate::limits::Group,
    spec: &RunSpec,
    sink: Option<Arc<dyn Sink>>,
) -> Result<Started, String> {
    let argv = argv(spec);
    let env = environment(spec);
    let plan = crate::spawn::Plan {
        argv: &argv,
        env: &env,
        cwd: spec.cwd.as_deref().unwrap_or("/"),
        stdin: spec.stdin.is_some(),
    };
    let child = crate::spawn::spawn(&plan, group.dir()).map_err(|e| spawn_error(spec, &e))?;
    feed_stdin(child.stdin, spec.stdin.clone());
    let pid = child.pid;
    Ok(Started {
        pgid: Pid::from_raw(pid),
        stdout: capture(Some(child.stdout), Stream::Stdout, sink.clone()),
        stderr: capture(Some(child.stderr), Stream::Stderr, sink),
        done: waiter(move || crate::spawn::wait(pid)),
    })
}

/// A terminal session (or a guest without cgroups): std's spawn, which enters the cgroup
/// between fork and exec. An interactive one hands its [`Io`] to `started`.
fn start_with_std(
    group: Option<&crate::limits::Group>,
    spec: &RunSpec,
    sink: Option<Arc<dyn Sink>>,
    started: impl FnOnce(Io),
) -> Result<Started, String> {
    let mut cmd = command(spec);
    if let Some(group) = group {
        // SAFETY: the closure only opens, writes and closes files (async-signal-safe).
        unsafe {
            cmd.pre_exec(group.enter());
        }
    }
    let tty = match spec.tty {
        Some(size) => Some(attach_tty(&mut cmd, size)?),
        None => None,
    };
    let mut child = cmd.spawn().map_err(|e| spawn_error(spec, &e))?;
    let pgid = Pid::from_raw(child.id() as i32);
    // Our copy of the terminal's far end must close, or reading the near end never ends.
    drop(cmd);
    let (stdout, stderr) = match tty {
        Some(master) => {
            let reader = File::from(master.try_clone().map_err(|e| e.to_string())?);
            started(Io {
                input: Input::new(
                    File::from(master.try_clone().map_err(|e| e.to_string())?),
                    sink.clone(),
                ),
                tty: Some(master),
                group: pgid,
            });
            (
                capture(Some(reader), Stream::Stdout, sink.clone()),
                capture(None::<File>, Stream::Stderr, None),
            )
        }
        None => {
            let stdin = child.stdin.take().map(|p| File::from(OwnedFd::from(p)));
            feed_stdin(stdin, spec.stdin.clone());
            (
                capture(child.stdout.take(), Stream::Stdout, sink.clone()),
                capture(child.stderr.take(), Stream::Stderr, sink),
            )
        }
    };
    Ok(Started {
        pgid,
        stdout,
        stderr,
        done: waiter(move || child.wait()),
    })
}

/// Runs `wait` on a thread of its own; its result comes on the channel.
fn waiter(
    wait: impl FnOnce() -> std::io::Result<ExitStatus> + Send + 'static,
) -> mpsc::Receiver<std::io::Result<ExitStatus>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(wait());
    });
    rx
}

/// The program and its arguments: `ip netns exec NS` first for a run in a namespace, and a
/// script run by `/bin/sh -c`.
fn argv(spec: &RunSpec) -> Vec<String> {
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = &spec.netns {
        argv.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    match &spec.program {
        Program::Argv(a) => argv.extend(a.iter().cloned()),
        Program::Script(s) => argv.extend(["/bin/sh".to_string(), "-c".to_string(), s.clone()]),
    }
    argv
}

/// A command's whole environment: ours, then the request's, which wins.
fn environment(spec: &RunSpec) -> Vec<(String, String)> {
    let term = if spec.tty.is_some() {
        "xterm-256color"
    } else {
        "dumb"
    };
    let mut env: BTreeMap<String, String> = [("PATH", PATH), ("HOME", "/root"), ("TERM", term)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(spec.env.clone());
    env.into_iter().collect()
}

fn command(spec: &RunSpec) -> Command {
    let argv = argv(spec);
    let mut cmd = Command::new(argv.first().map(String::as_str).unwrap_or("/bin/true"));
    cmd.args(argv.iter().skip(1))
        .env_clear()
        .envs(environment(spec))
        .current_dir(spec.cwd.as_deref().unwrap_or("/"))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if spec.tty.is_none() {
        cmd.process_group(0);
    }
    cmd
}

/// Gives `cmd` a new terminal of `size` as stdin, stdout, stderr and controlling terminal, in a
/// session of its own; returns the terminal's near end.
fn attach_tty(cmd: &mut Command, size: TtySize) -> Result<OwnedFd, String> {
    let winsize = nix::pty::Winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let (master, slave) = open_pty()?;
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } != 0 {
        return Err(format!("pty size: {}", std::io::Error::last_os_error()));
    }
    let io = |fd: &OwnedFd| {
        fd.try_clone()
            .map(Stdio::from)
            .map_err(|e| format!("pty: {e}"))
    };
    cmd.stdin(io(&slave)?)
        .stdout(io(&slave)?)
        .stderr(io(&slave)?);
    // SAFETY: setsid and ioctl are async-signal-safe and touch only the child's own state.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(master)
}

/// A new terminal pair, both ends close-on-exec from their first moment: commands started
/// beside it on other threads must not inherit them (a program holding the master keeps a
/// finished session's terminal open).
fn open_pty() -> Result<(OwnedFd, OwnedFd), String> {
    use nix::fcntl::OFlag;
    let fail = |what: &str, e: nix::Error| format!("{what}: {e}");
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| fail("posix_openpt", e))?;
    nix::pty::grantpt(&master).map_err(|e| fail("grantpt", e))?;
    nix::pty::unlockpt(&master).map_err(|e| fail("unlockpt", e))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| fail("ptsname", e))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| fail(&name, e))?;
    Ok((OwnedFd::from(master), slave))
}

/// Sets the terminal's size; the kernel tells its foreground job with SIGWINCH.
pub fn resize(tty: &OwnedFd, size: TtySize) -> Result<(), String> {
    let winsize = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which lives across the call.
    match unsafe { libc::ioctl(tty.as_raw_fd(), libc::TIOCSWINSZ, &winsize) } {
        0 => Ok(()),
        _ => Err(format!("resize: {}", std::io::Error::last_os_error())),
    }
}

/// The terminal's far side went away: SIGHUP to the group (an interactive bash passes it on to
/// its jobs, then exits), and SIGCONT so that a stopped job hears it too.
pub fn hang_up(io: &mut Io) -> Result<(), String> {
    killpg(io.group, Signal::SIGHUP).map_err(|e| format!("hang up: {e}"))?;
    let _ = killpg(io.group, Signal::SIGCONT);
    Ok(())
}

/// "No such file" from exec of a file that exists means its `#!` interpreter is missing: say so.
fn spawn_error(spec: &RunSpec, e: &std::io::Error) -> String {
    let what = describe(&spec.program);
    if let (Program::Argv(argv), Some(libc::ENOENT)) = (&spec.program, e.raw_os_error()) {
        if let Some(interpreter) = argv
            .first()
            .and_then(|p| missing_interpreter(p, spec.cwd.as_deref()))
        {
            return format!(
                "cannot start {what}: its interpreter {interpreter} (its #! line) is not in the guest; \
                 add the package that has it (e.g. --package bash) or change the #! line"
            );
        }
    }
    format!("cannot start {what}: {e}")
}

/// The `#!` interpreter of `program` (relative to `cwd` if it has a slash), if the file exists
/// and its interpreter does not.
fn missing_interpreter(program: &str, cwd: Option<&str>) -> Option<String> {
    if !program.contains('/') {
        return None;
    }
    let path = std::path::Path::new(cwd.unwrap_or("/")).join(program);
    let mut head = [0u8; 256];
    let n = File::open(&path).ok()?.read(&mut head).ok()?;
    let line = head[..n]
        .strip_prefix(b"#!")?
        .split(|&b| b == b'\n')
        .next()?;
    let interpreter = String::from_utf8_lossy(line)
        .split_whitespace()
        .next()?
        .to_string();
    (!std::path::Path::new(&interpreter).exists()).then_some(interpreter)
}

fn describe(program: &Program) -> String {
    match program {
        Program::Argv(a) => format!("{a:?}"),
        Program::Script(_) => "script".to_string(),
    }
}

fn feed_stdin(pipe: Option<File>, data: Option<Vec<u8>>) {
    if let (Some(mut pipe), Some(data)) = (pipe, data) {
        // A program that exits without reading its input gives EPIPE: that is its business.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
}

/// The most one read of a program's output takes: a program that writes faster than the host
/// reads fills its pipe ([`crate::spawn`] makes it [`PIPE_SIZE`]), and each read then moves a
/// quarter of it as one piece: under TCG every piece's wakeup, frame and port write cost more
/// than its bytes.
const READ_SIZE: usize = 256 * 1024;

/// How much a program's output pipe holds.
pub const PIPE_SIZE: usize = 1 << 20;

/// What a reader thread has kept so far (the bytes and whether any were dropped), and the
/// channel that says it reached the end.
struct Captured {
    kept: Arc<Mutex<(Vec<u8>, bool)>>,
    ended: mpsc::Receiver<()>,
}

/// Reads a pipe (or terminal) to its end. Streaming, each piece goes to `sink`; otherwise at most
/// [`MAX_OUTPUT_BYTES`] are kept. Reading on past the cap keeps the program from blocking on a
/// full pipe.
fn capture<R: Read + Send + 'static>(
    pipe: Option<R>,
    stream: Stream,
    sink: Option<Arc<dyn Sink>>,
) -> Captured {
    let kept = Arc::new(Mutex::new((Vec::new(), false)));
    let (tx, ended) = mpsc::channel();
    let keep = Arc::clone(&kept);
    thread::spawn(move || {
        if let Some(mut pipe) = pipe {
            let mut chunk = vec![0u8; READ_SIZE];
            // A terminal whose far end closed reads as EIO: that is its end of file.
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                match &sink {
                    Some(sink) => sink.pass(stream, &chunk[..n]),
                    None => {
                        let (kept, cut) = &mut *keep.lock().unwrap_or_else(|p| p.into_inner());
                        let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
                        kept.extend_from_slice(&chunk[..n.min(room)]);
                        *cut |= n > room;
                    }
                }
            }
        }
        let _ = tx.send(());
    });
    Captured { kept, ended }
}

/// What a capture kept, waiting for its end until `deadline` (shared by a command's streams).
/// Past it, what came so far is the result. Time in which the host holds the output back
/// (`stalled`) moves the deadline with it: that time is the reader's.
fn finish(
    captured: Captured,
    deadline: &mut Instant,
    stalled: &dyn Fn() -> bool,
) -> (Vec<u8>, bool) {
    const STEP: Duration = Duration::from_millis(20);
    let mut last = Instant::now();
    loop {
        let now = Instant::now();
        if stalled() {
            *deadline += now - last;
        }
        last = now;
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            break;
        }
        match captured.ended.recv_timeout(left.min(STEP)) {
            Err(mpsc::RecvTimeoutError::Timeout) => continue,
            _ => break,
        }
    }
    std::mem::take(&mut *captured.kept.lock().unwrap_or_else(|p| p.into_inner()))
}
