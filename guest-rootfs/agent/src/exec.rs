//! Running one [`RunSpec`]: spawn in its own process group, feed stdin, capture capped output,
//! and kill the whole group when the timeout passes.

use std::io::{Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Instant;

use lab_proto::{Program, RunOutput, RunSpec, MAX_OUTPUT_BYTES};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// iproute2, dash and iputils come first; busybox applets fill in the rest.
pub const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

pub fn run(spec: &RunSpec) -> Result<RunOutput, String> {
    let started = Instant::now();
    let mut child = command(spec).spawn().map_err(|e| format!("cannot start {}: {e}", describe(&spec.program)))?;
    let pgid = Pid::from_raw(child.id() as i32);
    feed_stdin(&mut child, spec.stdin.clone());
    let stdout = capture(child.stdout.take());
    let stderr = capture(child.stderr.take());

    let (done_tx, done_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = done_tx.send(());
        status
    });
    let timed_out = done_rx.recv_timeout(spec.timeout).is_err();
    // Kill the whole group either way: a finished shell may have left background children that
    // still hold the output pipes open, and we must not wait for them.
    let _ = killpg(pgid, Signal::SIGKILL);
    let status = waiter.join().map_err(|_| "waiter thread panicked".to_string())?.map_err(|e| e.to_string())?;
    let (stdout, out_cut) = stdout.join().unwrap_or_default();
    let (stderr, err_cut) = stderr.join().unwrap_or_default();
    Ok(RunOutput {
        code: if timed_out { None } else { status.code() },
        signal: status.signal(),
        timed_out,
        stdout,
        stderr,
        truncated: out_cut || err_cut,
        duration: started.elapsed(),
    })
}

fn command(spec: &RunSpec) -> Command {
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = &spec.netns {
        argv.extend(["ip", "netns", "exec", ns].map(String::from));
    }
    match &spec.program {
        Program::Argv(a) => argv.extend(a.iter().cloned()),
        Program::Script(s) => argv.extend(["/bin/sh".to_string(), "-c".to_string(), s.clone()]),
    }
    let mut cmd = Command::new(argv.first().map(String::as_str).unwrap_or("/bin/true"));
    cmd.args(argv.iter().skip(1))
        .env_clear()
        .env("PATH", PATH)
        .env("HOME", "/root")
        .env("TERM", "dumb")
        .envs(&spec.env)
        .current_dir("/")
        .stdin(if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    cmd
}

fn describe(program: &Program) -> String {
    match program {
        Program::Argv(a) => format!("{a:?}"),
        Program::Script(_) => "script".to_string(),
    }
}

fn feed_stdin(child: &mut Child, data: Option<Vec<u8>>) {
    if let (Some(mut pipe), Some(data)) = (child.stdin.take(), data) {
        // A program that exits without reading its input gives EPIPE: that is its business.
        thread::spawn(move || {
            let _ = pipe.write_all(&data);
        });
    }
}

/// Reads a pipe to its end, keeping at most [`MAX_OUTPUT_BYTES`]; returns the bytes and whether
/// any were dropped. Reading on past the cap keeps the program from blocking on a full pipe.
fn capture<R: Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<(Vec<u8>, bool)> {
    thread::spawn(move || {
        let Some(mut pipe) = pipe else { return (Vec::new(), false) };
        let mut kept = Vec::new();
        let mut cut = false;
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let room = MAX_OUTPUT_BYTES.saturating_sub(kept.len());
                    kept.extend_from_slice(&chunk[..n.min(room)]);
                    cut |= n > room;
                }
            }
        }
        (kept, cut)
    })
}
