//! The request loop: read lines from the virtio-serial port, answer each request on its own thread
//! so slow commands do not hold up others. Nothing the host sends can end this loop: bad input
//! gets an error reply.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::Duration;

use lab_proto::{
    Line, LineSplitter, Op, Ready, Reply, Request, Response, TtySize, MAX_REQUEST_BYTES,
    PROTOCOL_VERSION,
};

use crate::exec::{Io, Sink};
use crate::window::Window;

type Writer = Arc<Mutex<File>>;

/// Interactive runs still going, by the id of the request that started them.
fn running() -> &'static Mutex<HashMap<u64, Io>> {
    static RUNNING: OnceLock<Mutex<HashMap<u64, Io>>> = OnceLock::new();
    RUNNING.get_or_init(Mutex::default)
}

/// The output windows of streaming runs still going, by the id of the request that started them.
fn windows() -> &'static Mutex<HashMap<u64, Arc<Window>>> {
    static WINDOWS: OnceLock<Mutex<HashMap<u64, Arc<Window>>>> = OnceLock::new();
    WINDOWS.get_or_init(Mutex::default)
}

/// A streaming run's output on its way to the host: as [`Reply::Output`] pieces of its request,
/// each sent only once the host has room for it.
struct Streamed {
    writer: Writer,
    id: u64,
    window: Arc<Window>,
}

impl Sink for Streamed {
    fn pass(&self, stream: lab_proto::Stream, mut data: &[u8]) {
        while !data.is_empty() {
            // Closed: the run has answered, and what comes now goes nowhere.
            let Some(n) = self.window.take(data.len()) else {
                return;
            };
            let (piece, rest) = data.split_at(n);
            write(
                &self.writer,
                &lab_proto::output_frame(self.id, stream, piece),
            );
            data = rest;
        }
    }

    fn stalled(&self) -> bool {
        self.window.stalled()
    }

    fn input_taken(&self, bytes: usize) {
        let bytes = bytes as u64;
        send(&self.writer, Some(self.id), Reply::InputTaken { bytes });
    }
}

pub fn run(port: &str) -> std::io::Result<()> {
    crate::limits::protect_agent();
    // A virtio-serial port opens once (a second open is EBUSY): one read-write handle, duplicated.
    let mut reader = OpenOptions::new().read(true).write(true).open(port)?;
    let writer: Writer = Arc::new(Mutex::new(reader.try_clone()?));
    // Say we are up without being asked: the host may already be waiting.
    send(&writer, None, ready());
    let mut splitter = LineSplitter::new(MAX_REQUEST_BYTES);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            // No host connected to the port reads as end-of-file: wait for one.
            Ok(0) => {
                thread::sleep(Duration::from_millis(50));
                continue;
            }
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for line in splitter.push(&buf[..n]) {
            dispatch(&writer, line);
        }
    }
}

fn dispatch(writer: &Writer, line: Line) {
    let line = match line {
        Line::Complete(l) if l.iter().all(u8::is_ascii_whitespace) => return,
        Line::Complete(l) => l,
        Line::Oversized { len } => {
            let message =
                format!("request of {len} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes");
            return send(writer, None, Reply::Error { message });
        }
    };
    let request: Request = match lab_proto::decode(&line, MAX_REQUEST_BYTES) {
        Ok(r) => r,
        Err(e) => {
            return send(
                writer,
                lab_proto::salvage_id(&line),
                Reply::Error {
                    message: e.to_string(),
                },
            )
        }
    };
    // Keystrokes are queued in order, on this thread (they must not overtake each other), to
    // each terminal's own writer: this loop never waits on a program's terminal.
    match request.op {
        Op::Input { run, data } => {
            return to_running(writer, request.id, run, |io| io.input.send(data))
        }
        Op::Resize { run, rows, cols } => {
            return to_running(writer, request.id, run, |io| match &io.tty {
                Some(tty) => crate::exec::resize(tty, TtySize { rows, cols }),
                None => Err("not running on a terminal".into()),
            })
        }
        Op::Hangup { run } => return to_running(writer, request.id, run, crate::exec::hang_up),
        Op::Grant { run, bytes } => {
            if let Some(window) = lock(windows()).get(&run) {
                window.grant(bytes);
            }
            return;
        }
        _ => {}
    }
    let writer = Arc::clone(writer);
    thread::spawn(move || {
        let id = Some(request.id);
        if matches!(request.op, Op::PowerOff) {
            send(&writer, id, Reply::Done);
            crate::init::power_off();
        }
        send(&writer, id, handle(request.id, request.op, &writer));
    });
}

/// Applies `action` to the interactive run `run`; only a failure is answered.
fn to_running(
    writer: &Writer,
    id: u64,
    run: u64,
    action: impl FnOnce(&mut Io) -> Result<(), String>,
) {
    let mut runs = lock(running());
    let result = match runs.get_mut(&run) {
        Some(io) => action(io),
        None => Err(format!(
            "no interactive run {run} (it ended, or was never started on a terminal)"
        )),
    };
    drop(runs);
    if let Err(message) = result {
        send(writer, Some(id), Reply::Error { message });
    }
}

fn handle(id: u64, op: Op, writer: &Writer) -> Reply {
    let result = match op {
        Op::Hello => Ok(ready()),
        Op::Run(spec) => {
            let window = Arc::new(Window::new(spec.window));
            lock(windows()).insert(id, Arc::clone(&window));
            let sink: Arc<dyn Sink> = Arc::new(Streamed {
                writer: Arc::clone(writer),
                id,
                window: Arc::clone(&window),
            });
            let register = |io| {
                lock(running()).insert(id, io);
            };
            let result = crate::exec::run(&spec, Some(sink), register).map(Reply::Ran);
            lock(running()).remove(&id);
            lock(windows()).remove(&id);
            // A detached child's output after the answer goes nowhere, and waits for nothing.
            window.close();
            result
        }
        Op::ReadFile { path } => fs::read(&path)
            .map(|data| Reply::File { data })
            .map_err(|e| format!("read {path}: {e}")),
        Op::WriteFile { path, data, mode } => write_file(&path, &data, mode).map(|()| Reply::Done),
        Op::Resume(resume) => crate::resume::resume(&resume).map(|()| Reply::Done),
        Op::Network(network) => crate::network::apply(&network).map(|()| Reply::Done),
        Op::Reach(reach) => crate::reach::reach(&reach).map(|()| Reply::Done),
        Op::Unpack { archive } => crate::unpack::unpack(&archive).map(|()| Reply::Done),
        Op::PowerOff
        | Op::Input { .. }
        | Op::Resize { .. }
        | Op::Hangup { .. }
        | Op::Grant { .. } => {
            unreachable!("handled before dispatch to a thread")
        }
    };
    result.unwrap_or_else(|message| Reply::Error { message })
}

fn write_file(path: &str, data: &[u8], mode: u32) -> Result<(), String> {
    let fail = |e: std::io::Error| format!("write {path}: {e}");
    fs::write(path, data).map_err(fail)?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(fail)
}

fn ready() -> Reply {
    let kernel_release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let uptime_secs = fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(0.0);
    let modules = fs::read_to_string("/run/lab-modules")
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect();
    Reply::Ready(Ready {
        protocol: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        kernel_release,
        uptime_secs,
        modules,
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn send(writer: &Writer, id: Option<u64>, reply: Reply) {
    write(writer, &lab_proto::encode_response(&Response { id, reply }));
}

/// Writes one encoded reply whole, so that replies of several threads do not interleave.
fn write(writer: &Writer, line: &[u8]) {
    // A poisoned lock only means another reply panicked mid-write; the port itself is still usable.
    let mut port = writer.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = port.write_all(line).and_then(|()| port.flush()) {
        eprintln!("lab: reply lost: {e}");
    }
}
