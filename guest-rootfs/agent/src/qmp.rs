//! `lab qmp SOCKET COMMAND [ARGUMENTS] [SECONDS]`: one QMP command to the QEMU listening behind
//! SOCKET, its `return` printed as one JSON line. A nest guest has no other QMP client, and it
//! needs one to save an inner VM (`stop`, `migrate`, `query-migrate`): that saved VM is what the
//! inner VMs of every restored clone start from (`lab_harness::nest`).
//!
//! Exit status: 0 with the return value on stdout; 1 when QEMU answers with an error (its class
//! and description on stderr); 3 when nobody answers at SOCKET; 4 on a deadline; 2 on bad input.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub fn run(socket: &str, command: &str, arguments: Option<&str>, within: Duration) -> i32 {
    let arguments = match arguments.map(serde_json::from_str::<Value>) {
        None => None,
        Some(Ok(args @ Value::Object(_))) => Some(args),
        Some(_) => {
            eprintln!("lab qmp: the arguments of {command} must be one JSON object");
            return 2;
        }
    };
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("lab qmp: {socket}: {e}");
            return 3;
        }
    };
    let deadline = Instant::now() + within;
    match session(stream, command, arguments, deadline) {
        Ok(Ok(value)) => {
            println!("{value}");
            0
        }
        Ok(Err(error)) => {
            eprintln!(
                "lab qmp: {command}: {} {}",
                error["class"].as_str().unwrap_or("Error"),
                error["desc"].as_str().unwrap_or_default()
            );
            1
        }
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) =>
        {
            eprintln!("lab qmp: no answer from {socket} within {within:?}");
            4
        }
        Err(e) => {
            eprintln!("lab qmp: {socket}: {e}");
            3
        }
    }
}

/// Greeting, capabilities negotiation, then `command`: its `return` or its `error`.
fn session(
    stream: UnixStream,
    command: &str,
    arguments: Option<Value>,
    deadline: Instant,
) -> io::Result<Result<Value, Value>> {
    let mut writer = stream.try_clone()?;
    let mut reader = Reader {
        lines: BufReader::new(stream),
        deadline,
    };
    let greeting = reader.message()?;
    if greeting.get("QMP").is_none() {
        return Err(io::Error::other(format!("not a QMP greeting: {greeting}")));
    }
    writeln!(writer, "{}", json!({"execute": "qmp_capabilities"}))?;
    if let Err(e) = reader.answer()? {
        return Err(io::Error::other(format!("qmp_capabilities: {e}")));
    }
    let mut request = json!({ "execute": command });
    if let Some(args) = arguments {
        request["arguments"] = args;
    }
    writeln!(writer, "{request}")?;
    reader.answer()
}

struct Reader {
    lines: BufReader<UnixStream>,
    deadline: Instant,
}

impl Reader {
    fn message(&mut self) -> io::Result<Value> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.lines.get_ref().set_read_timeout(Some(left))?;
        let mut line = String::new();
        if self.lines.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "QEMU closed the connection",
            ));
        }
        serde_json::from_str(&line)
            .map_err(|e| io::Error::other(format!("QEMU sent no JSON ({e}): {}", line.trim())))
    }

    /// The next reply, past any events.
    fn answer(&mut self) -> io::Result<Result<Value, Value>> {
        loop {
            let mut message = self.message()?;
            if let Some(value) = message.get_mut("return") {
                return Ok(Ok(value.take()));
            }
            if let Some(error) = message.get_mut("error") {
                return Ok(Err(error.take()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::os::unix::net::UnixListener;

    /// A QMP server for one connection: greets, takes capabilities, sends an event, then
    /// answers the command with `reply`; returns the command it got.
    fn serve_once(listener: UnixListener, reply: &'static str) -> std::thread::JoinHandle<String> {
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().expect("accept");
            let mut out = stream.try_clone().expect("clone");
            let mut lines = BufReader::new(stream).lines();
            writeln!(out, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).expect("write");
            let caps = lines.next().expect("capabilities").expect("write");
            assert!(caps.contains("qmp_capabilities"), "{caps}");
            writeln!(out, r#"{{"return": {{}}}}"#).expect("write");
            let command = lines.next().expect("a command").expect("write");
            writeln!(out, r#"{{"event": "RESUME", "timestamp": {{}}}}"#).expect("write");
            writeln!(out, "{reply}").expect("write");
            command
        })
    }

    fn socket(dir: &tempfile::TempDir) -> (UnixListener, String) {
        let path = dir.path().join("qmp.sock");
        (
            UnixListener::bind(&path).expect("bind"),
            path.display().to_string(),
        )
    }

    #[test]
    fn a_command_gets_its_return_past_events_and_an_error_exits_1() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (listener, path) = socket(&dir);
        let server = serve_once(listener, r#"{"return": {"status": "completed"}}"#);
        let code = run(&path, "query-migrate", None, Duration::from_secs(5));
        assert_eq!(code, 0);
        assert!(server
            .join()
            .expect("the server")
            .contains(r#""execute":"query-migrate""#));

        let dir = tempfile::tempdir().expect("tempdir");
        let (listener, path) = socket(&dir);
        let server = serve_once(
            listener,
            r#"{"error": {"class": "GenericError", "desc": "no"}}"#,
        );
        let code = run(
            &path,
            "migrate",
            Some(r#"{"uri": "exec:cat > /dev/null"}"#),
            Duration::from_secs(5),
        );
        assert_eq!(code, 1);
        assert!(server
            .join()
            .expect("the server")
            .contains(r#""arguments":{"uri":"exec:cat > /dev/null"}"#));
    }

    #[test]
    fn bad_arguments_and_a_missing_socket_have_their_own_exit_codes() {
        assert_eq!(
            run("/nonexistent", "stop", Some("[1]"), Duration::from_secs(1)),
            2
        );
        assert_eq!(
            run(
                "/nonexistent/qmp.sock",
                "stop",
                None,
                Duration::from_secs(1)
            ),
            3
        );
    }
}
