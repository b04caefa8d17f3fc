//! `lab call SOCKET [SECONDS]`: hands one request (a JSON line on stdin) to the agent listening
//! behind SOCKET and prints its answer. The inner VMs of a nest run the agent too; their port is a
//! QEMU socket inside this guest, so the host reaches them through the guest's own agent and this.
//!
//! Exit status: 0 with the response line on stdout; 3 when nobody answers at SOCKET (the inner VM
//! is not up yet, or gone); 4 on a deadline; 2 on bad input.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use lab_proto::{Received, ReplyReader, Request, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};

pub fn run(socket: &str, within: Duration) -> i32 {
    let mut line = Vec::new();
    if let Err(e) = io::stdin().read_to_end(&mut line) {
        eprintln!("lab call: reading the request: {e}");
        return 2;
    }
    let id = match lab_proto::decode::<Request>(line.trim_ascii(), MAX_REQUEST_BYTES) {
        Ok(r) => r.id,
        Err(e) => {
            eprintln!("lab call: the request on stdin is not one: {e}");
            return 2;
        }
    };
    let mut stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lab call: {socket}: {e}");
            return 3;
        }
    };
    let deadline = Instant::now() + within;
    match exchange(&mut stream, line.trim_ascii(), id, deadline) {
        Ok(Some(response)) => {
            let mut out = io::stdout().lock();
            let _ = out.write_all(&response).and_then(|()| out.write_all(b"\n"));
            0
        }
        Ok(None) => {
            eprintln!("lab call: {socket} closed before answering request {id}");
            3
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            eprintln!("lab call: no answer from {socket} within {within:?}");
            4
        }
        Err(e) => {
            eprintln!("lab call: {socket}: {e}");
            3
        }
    }
}

/// Sends `request` and returns the first response carrying `id`, as a JSON line; replies for
/// nobody (the agent's unprompted ready message) are skipped.
fn exchange(
    stream: &mut UnixStream,
    request: &[u8],
    id: u64,
    deadline: Instant,
) -> io::Result<Option<Vec<u8>>> {
    stream.write_all(request)?;
    stream.write_all(b"\n")?;
    let mut replies = ReplyReader::new(MAX_RESPONSE_BYTES);
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut buf)?;
        if n == 0 {
            return Ok(None);
        }
        for received in replies.push(&buf[..n]) {
            if let Received::Reply { response, .. } = received {
                if response.id == Some(id) {
                    let mut line = lab_proto::encode(&response);
                    line.pop(); // its newline: the caller ends the line it prints
                    return Ok(Some(line));
                }
            }
        }
    }
}
