//! The wire format between the host harness and the `lab` agent in the guest.
//!
//! Architecture invariant: this crate is the only place that knows how messages look on the wire.
//! Both ends call [`encode`]/[`encode_response`] and [`LineSplitter`]/[`ReplyReader`]/[`decode`];
//! neither formats JSON or frames by hand.
//!
//! Framing is one JSON object per line (`\n`-terminated) over the virtio-serial port named
//! [`PORT_NAME`], except a streaming run's output, which the agent sends as binary frames
//! ([`replies`]). Every request carries an `id`; the reply repeats it, so the host may have several
//! commands in flight (for example a `wait_until_succeeds` poll beside a long-running ping). Replies
//! to input the agent could not attribute to a request (a malformed or oversized line) carry no id.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod attach;
pub mod replies;

pub use replies::{encode_response, output_frame, Received, ReplyReader};

/// Name of the virtio-serial port the agent listens on (`-device virtserialport,name=...`).
/// The agent finds it through `/sys/class/virtio-ports/*/name`: there is no udev in the guest.
pub const PORT_NAME: &str = "lab.agent";

/// Protocol version, bumped on any incompatible change; the agent announces it in [`Ready`].
pub const PROTOCOL_VERSION: u32 = 3;

/// Largest request line the agent accepts (a `write_file` of a few MiB fits, base64-encoded).
pub const MAX_REQUEST_BYTES: usize = 32 << 20;

/// Largest reply line the host accepts. Output beyond [`MAX_OUTPUT_BYTES`] per stream is cut by the
/// agent, so a reply stays under this even with escaping.
pub const MAX_RESPONSE_BYTES: usize = 192 << 20;

/// Per-stream cap on captured command output; more is discarded and flagged as truncated.
pub const MAX_OUTPUT_BYTES: usize = 32 << 20;

/// Bytes of input ([`Op::Input`]) the host may have sent to a run's terminal that its program
/// has not taken yet; the agent says what it took with [`Reply::InputTaken`]. A host that sends
/// more is refused, as a program that is not reading its terminal would make it buffer without
/// end.
pub const INPUT_WINDOW: u64 = 64 << 10;

/// A message from the host to the agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    #[serde(flatten)]
    pub op: Op,
}

/// What the host asks the agent to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Answered with [`Reply::Ready`]; the host polls with it until the agent is up.
    Hello,
    /// Run a program to completion (or until its timeout).
    Run(RunSpec),
    /// Read a whole file.
    ReadFile { path: String },
    /// Create or replace a file.
    WriteFile {
        path: String,
        #[serde(with = "b64")]
        data: Vec<u8>,
        mode: u32,
    },
    /// Sync and power the guest off. Answered with [`Reply::Done`] just before it happens.
    PowerOff,
    /// Bytes for the stdin (or terminal) of the running request `run`, started with
    /// [`RunSpec::tty`]. Not answered unless it fails (the run is gone, say).
    Input {
        run: u64,
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    /// The terminal of the running request `run` changed size. Not answered unless it fails.
    Resize { run: u64, rows: u16, cols: u16 },
    /// The host took `bytes` more of the running request `run`'s output off the wire: the agent
    /// may send that many more ([`RunSpec::window`]). Not answered: a grant for a run that has
    /// just ended is normal and ignored.
    Grant { run: u64, bytes: u64 },
    /// The person at the running request `run`'s terminal went away: its process group gets
    /// SIGHUP, as when a terminal window closes. Not answered unless it fails.
    Hangup { run: u64 },
    /// Unpack a newc cpio archive (a user's directory, [`crate`]'s callers build it) at `/`, as
    /// the kernel unpacks the image's layers at boot: for guests restored from a snapshot that
    /// holds the image without it. Answered with [`Reply::Done`].
    Unpack {
        #[serde(with = "b64")]
        archive: Vec<u8>,
    },
    /// This guest was just restored from a snapshot that other guests restore too: make it its
    /// own. Answered with [`Reply::Done`], or an error naming the step that failed.
    Resume(Resume),
    /// Give the guest's NICs their addresses and routes: what a lab's spec says of one host.
    /// Answered with [`Reply::Done`] once every NIC named is operational, or an error naming
    /// the step that failed.
    Network(Network),
    /// Wait until every address answers an ICMP echo, as `until ping -c1 ADDR` would.
    /// Answered with [`Reply::Done`], or an error naming those that did not answer in time.
    Reach(Reach),
}

/// A request that names the reply it is answered with, so a caller gets that reply's content
/// and never matches replies by hand (as `qapi` does for QMP commands): `agent.call(ReadFile {
/// .. })` is a `Vec<u8>`. The agent's [`Reply::Error`] and a reply of the wrong kind are the
/// caller's error ([`Refused`]).
pub trait Call: Into<Op> {
    /// What a successful reply carries.
    type Ok;
    /// The content of `reply`, if it is the kind this request is answered with.
    fn answer(reply: Reply) -> Result<Self::Ok, Refused>;
}

/// Why a [`Call`] got no answer of its kind.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Refused {
    /// The agent could not do it, and said why.
    #[error("{0}")]
    Failed(String),
    /// A reply of another kind: a bug in the agent or the harness.
    #[error("unexpected reply {0:?}")]
    Unexpected(Box<Reply>),
}

impl Refused {
    fn from(reply: Reply) -> Self {
        match reply {
            Reply::Error { message } => Self::Failed(message),
            other => Self::Unexpected(Box::new(other)),
        }
    }
}

/// Read a whole file: [`Op::ReadFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadFile {
    pub path: String,
}

/// Create or replace a file: [`Op::WriteFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteFile {
    pub path: String,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Unpack a cpio archive at `/`: [`Op::Unpack`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpack {
    pub archive: Vec<u8>,
}

/// Sync and power off: [`Op::PowerOff`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerOff;

/// Is the agent up? [`Op::Hello`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello;

impl From<ReadFile> for Op {
    fn from(c: ReadFile) -> Op {
        Op::ReadFile { path: c.path }
    }
}

impl From<WriteFile> for Op {
    fn from(c: WriteFile) -> Op {
        Op::WriteFile {
            path: c.path,
            data: c.data,
            mode: c.mode,
        }
    }
}

impl From<Unpack> for Op {
    fn from(c: Unpack) -> Op {
        Op::Unpack { archive: c.archive }
    }
}

impl From<PowerOff> for Op {
    fn from(_: PowerOff) -> Op {
        Op::PowerOff
    }
}

impl From<Hello> for Op {
    fn from(_: Hello) -> Op {
        Op::Hello
    }
}

impl From<RunSpec> for Op {
    fn from(spec: RunSpec) -> Op {
        Op::Run(spec)
    }
}

impl From<Resume> for Op {
    fn from(resume: Resume) -> Op {
        Op::Resume(resume)
    }
}

impl From<Reach> for Op {
    fn from(reach: Reach) -> Op {
        Op::Reach(reach)
    }
}

impl From<Network> for Op {
    fn from(network: Network) -> Op {
        Op::Network(network)
    }
}

/// The [`Call`] impls: which reply answers which request, said once.
macro_rules! answered_by {
    ($($call:ty => $pattern:pat => $ok:ty = $value:expr;)*) => {$(
        impl Call for $call {
            type Ok = $ok;
            fn answer(reply: Reply) -> Result<$ok, Refused> {
                match reply {
                    $pattern => Ok($value),
                    other => Err(Refused::from(other)),
                }
            }
        }
    )*};
}

answered_by! {
    Hello => Reply::Ready(ready) => Ready = ready;
    RunSpec => Reply::Ran(out) => RunOutput = out;
    ReadFile => Reply::File { data } => Vec<u8> = data;
    WriteFile => Reply::Done => () = ();
    Unpack => Reply::Done => () = ();
    PowerOff => Reply::Done => () = ();
    Resume => Reply::Done => () = ();
    Network => Reply::Done => () = ();
    Reach => Reply::Done => () = ();
}

/// IPv4 addresses a guest waits to reach: a LAN's readiness, checked by its agent without
/// starting `ping` (under TCG, a restored guest translates every program it starts anew).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reach {
    pub addresses: Vec<String>,
    #[serde(with = "millis")]
    pub within: Duration,
}

/// A host's network, as the agent sets it up with netlink rather than `ip` in a shell: under
/// TCG a restored guest translates every program it starts anew (docs/measurements.md).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    /// The NICs to bring up, each with its addresses and routes, in order.
    pub nics: Vec<NicSetup>,
    /// Turn on IPv4 and IPv6 forwarding.
    pub forwarding: bool,
    /// Lines to add to `/etc/hosts`.
    pub hosts: String,
}

/// One NIC of a [`Network`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NicSetup {
    /// Its name in the guest, `eth0`.
    pub name: String,
    /// Its addresses with their prefix, `10.0.1.1/24` or `fd01::1/64`. IPv6 ones are added
    /// without duplicate detection (`nodad`): a lab's addresses are unique by construction.
    pub addresses: Vec<String>,
    /// Its routes, added once it is up.
    pub routes: Vec<RouteSetup>,
}

/// A route through a gateway on a [`NicSetup`]'s link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteSetup {
    /// The destination with its prefix; `None` for the default route of `via`'s family.
    pub to: Option<String>,
    pub via: String,
}

/// What makes a restored guest different from every other clone of its snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resume {
    pub hostname: String,
    /// The NICs' addresses (`52:54:00:..`), `eth0` first; QEMU's NICs follow when the guest
    /// sets them.
    pub macs: Vec<String>,
    /// The host's wall clock, nanoseconds since 1970: the snapshot's clock is stale.
    pub unix_nanos: u64,
    /// Host randomness, credited to the kernel's pool and used to reseed its generator at once:
    /// a snapshot copies the generator's state, so every clone would read the same
    /// `/dev/urandom` bytes, UUIDs and MACs until it reseeded by itself.
    #[serde(with = "b64")]
    pub entropy: Vec<u8>,
}

/// A MAC address as [`Resume::mac`] carries it and the kernel prints it: six bytes of two hex
/// digits each, between colons. The harness and the agent both read MACs with this.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let part = parts
            .next()
            .filter(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))?;
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// A terminal's size, in characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TtySize {
    pub rows: u16,
    pub cols: u16,
}

/// Which output stream a piece of [`Reply::Output`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// What to run, where, and for how long.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSpec {
    pub program: Program,
    /// Run inside this network namespace (`ip netns exec NAME ...`), as the seed's containers do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
    /// Bytes fed to the program's stdin; stdin is empty (`/dev/null`) otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    pub stdin: Option<Vec<u8>>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The agent kills the program's whole process group after this long.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// Working directory (`/` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Send output as it comes, in [`Reply::Output`] messages carrying this request's id, before
    /// the final [`Reply::Ran`] (whose `stdout`/`stderr` are then empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stream: bool,
    /// Run on a new pseudo-terminal of this size, as its session leader with it as the
    /// controlling terminal (line editing, Ctrl-C to the foreground job, job control). Implies
    /// `stream`; input comes in [`Op::Input`], and stdout and stderr are both the terminal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<TtySize>,
    /// Flow control of a streaming run, as an SSH channel's window: the agent sends at most
    /// this many bytes of output (stdout and stderr together) beyond what the host granted
    /// with [`Op::Grant`], and stops reading the program's pipes until more is granted, so a
    /// slow reader slows the program and loses nothing. `None`: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
}

impl RunSpec {
    /// A spec with no namespace, stdin, environment, directory or terminal.
    pub fn new(program: Program, timeout: Duration) -> Self {
        Self {
            program,
            netns: None,
            stdin: None,
            env: BTreeMap::new(),
            timeout,
            cwd: None,
            stream: false,
            tty: None,
            window: None,
        }
    }

    /// Whether output goes out as it comes ([`RunSpec::stream`] or a terminal).
    pub fn streams(&self) -> bool {
        self.stream || self.tty.is_some()
    }
}

/// A program given either as an argument vector or as a shell script.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Program {
    /// Executed directly, looked up in `PATH`.
    Argv(Vec<String>),
    /// Run by the guest's real shell (`/bin/sh` is dash, not busybox: busybox `sh` would run its own
    /// `ip` applet, which lacks `netns`, `-d` and `-j`).
    Script(String),
}

/// A message from the agent to the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// The request this answers; `None` for input that could not be parsed far enough to find one.
    pub id: Option<u64>,
    #[serde(flatten)]
    pub reply: Reply,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    Ready(Ready),
    Ran(RunOutput),
    /// The running request's program took `bytes` of its input (they are written to its
    /// terminal): the host may send that many more ([`INPUT_WINDOW`]).
    InputTaken {
        bytes: u64,
    },
    /// A piece of a streaming run's output; more may follow, then [`Reply::Ran`].
    Output {
        stream: Stream,
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    File {
        #[serde(with = "b64")]
        data: Vec<u8>,
    },
    Done,
    Error {
        message: String,
    },
}

/// Sent in answer to [`Op::Hello`]: the agent is up and the guest is set up.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub protocol: u32,
    pub agent_version: String,
    /// `uname -r` of the running kernel.
    pub kernel_release: String,
    /// Seconds since the guest kernel started, from `/proc/uptime`.
    pub uptime_secs: f64,
    /// Modules the init loaded, in load order.
    pub modules: Vec<String>,
}

/// The result of a [`RunSpec`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunOutput {
    /// Exit code; `None` when the program was killed by a signal or timed out.
    pub code: Option<i32>,
    /// The signal that ended it, if any.
    pub signal: Option<i32>,
    pub timed_out: bool,
    #[serde(with = "b64")]
    pub stdout: Vec<u8>,
    #[serde(with = "b64")]
    pub stderr: Vec<u8>,
    /// True when a stream hit [`MAX_OUTPUT_BYTES`] and the rest was discarded.
    pub truncated: bool,
    /// True when the guest's OOM killer ended the command (all of it: a command is one cgroup).
    #[serde(default)]
    pub oom_killed: bool,
    #[serde(with = "millis")]
    pub duration: Duration,
}

impl RunOutput {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// How a kselftest-style program ended: exit 0 passes, 4 (`KSFT_SKIP`) skips, anything else
    /// (another code, a signal, a timeout) fails.
    pub fn verdict(&self) -> Verdict {
        match (self.timed_out, self.code) {
            (false, Some(0)) => Verdict::Pass,
            (false, Some(KSFT_SKIP)) => Verdict::Skip,
            _ => Verdict::Fail,
        }
    }
}

/// The exit code with which kselftest programs say "skipped": not a pass, not a failure.
pub const KSFT_SKIP: i32 = 4;

/// See [`RunOutput::verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Skip,
    Fail,
}

/// Why a line could not be turned into a message.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    #[error("an output frame of stream {0}, which is none")]
    BadStream(u8),
}

/// Serializes a message as one line, newline included.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    // Serializing these types cannot fail: every field is a plain value or a string-keyed map.
    let mut line = serde_json::to_vec(msg)
        .unwrap_or_else(|e| panic!("lab-proto: unserializable message: {e}"));
    line.push(b'\n');
    line
}

/// Parses one line (without its newline) into a message.
pub fn decode<'a, T: Deserialize<'a>>(line: &'a [u8], limit: usize) -> Result<T, DecodeError> {
    if line.len() > limit {
        return Err(DecodeError::TooLarge {
            len: line.len(),
            limit,
        });
    }
    Ok(serde_json::from_slice(line)?)
}

/// Best effort: the `id` of a request that failed to decode, so its error reply can be matched.
pub fn salvage_id(line: &[u8]) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: u64,
    }
    serde_json::from_slice::<IdOnly>(line).ok().map(|m| m.id)
}

/// One item cut from a byte stream by a [`LineSplitter`].
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Complete(Vec<u8>),
    /// A line longer than the limit ended here; its bytes were discarded, `len` counts them.
    Oversized {
        len: usize,
    },
}

/// Cuts a byte stream into lines without ever buffering more than `limit` bytes of one line,
/// so a peer that never sends a newline cannot exhaust memory.
#[derive(Debug)]
pub struct LineSplitter {
    limit: usize,
    buf: Vec<u8>,
    /// Bytes of the current line thrown away after it passed the limit.
    discarded: usize,
}

impl LineSplitter {
    pub fn new(limit: usize) -> Self {
        Self {
            limit,
            buf: Vec::new(),
            discarded: 0,
        }
    }

    /// Feeds bytes; returns the lines they complete.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n') {
            self.take(&bytes[..pos]);
            out.push(self.finish_line());
            bytes = &bytes[pos + 1..];
        }
        self.take(bytes);
        out
    }

    pub(crate) fn take(&mut self, part: &[u8]) {
        if self.discarded > 0 || self.buf.len() + part.len() > self.limit {
            self.discarded += self.buf.len() + part.len();
            self.buf.clear();
        } else {
            self.buf.extend_from_slice(part);
        }
    }

    pub(crate) fn finish_line(&mut self) -> Line {
        if self.discarded > 0 {
            let len = std::mem::take(&mut self.discarded);
            Line::Oversized { len }
        } else {
            Line::Complete(std::mem::take(&mut self.buf))
        }
    }
}

pub(crate) mod b64 {
    use base64::{engine::general_purpose::STANDARD, Engine};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

mod b64_opt {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match bytes {
            Some(b) => super::b64::serialize(b, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::b64")] Vec<u8>);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_takes_its_own_reply_and_refuses_any_other() {
        let file = || Reply::File {
            data: b"x".to_vec(),
        };
        assert_eq!(ReadFile::answer(file()), Ok(b"x".to_vec()));
        assert_eq!(WriteFile::answer(Reply::Done), Ok(()));
        assert_eq!(
            Hello::answer(Reply::Ready(Ready::default())),
            Ok(Ready::default())
        );
        let failed = Reply::Error {
            message: "no such file".into(),
        };
        assert_eq!(
            ReadFile::answer(failed),
            Err(Refused::Failed("no such file".into()))
        );
        let wrong = ReadFile::answer(Reply::Done).expect_err("Done answers no read");
        assert_eq!(wrong, Refused::Unexpected(Box::new(Reply::Done)));
        assert_eq!(wrong.to_string(), "unexpected reply Done");
        assert!(matches!(Op::from(PowerOff), Op::PowerOff));
    }

    #[test]
    fn macs_parse_as_six_hex_bytes() {
        assert_eq!(
            parse_mac("02:00:3d:22:00:0a"),
            Some([2, 0, 0x3d, 0x22, 0, 0x0a])
        );
        assert_eq!(parse_mac("02:00:3d:22:00"), None);
        assert_eq!(parse_mac("02:00:3d:22:00:0a:01"), None);
        assert_eq!(parse_mac("zz:00:3d:22:00:0a"), None);
    }

    #[test]
    fn request_round_trips_through_one_line() {
        let req = Request {
            id: 7,
            op: Op::Run(RunSpec {
                program: Program::Script("ip -d link show\n".into()),
                netns: Some("ns1".into()),
                stdin: Some(b"\x00\xffbinary".to_vec()),
                env: BTreeMap::from([("A".into(), "b".into())]),
                timeout: Duration::from_millis(1500),
                cwd: Some("/lab".into()),
                stream: true,
                tty: Some(TtySize { rows: 24, cols: 80 }),
                window: Some(4 << 20),
            }),
        };
        let line = encode(&req);
        assert_eq!(
            line.iter().filter(|&&b| b == b'\n').count(),
            1,
            "exactly one newline, at the end"
        );
        let back: Request = decode(&line[..line.len() - 1], MAX_REQUEST_BYTES).expect("decodes");
        assert_eq!(back, req);
    }

    #[test]
    fn older_run_requests_without_the_new_fields_still_decode() {
        let line = br#"{"id":3,"op":"run","program":{"argv":["true"]},"timeout":1000}"#;
        let req: Request = decode(line, MAX_REQUEST_BYTES).expect("decodes");
        let Op::Run(spec) = req.op else {
            panic!("not a run")
        };
        assert_eq!(
            spec,
            RunSpec::new(Program::Argv(vec!["true".into()]), Duration::from_secs(1))
        );
        assert!(!spec.streams());
    }

    #[test]
    fn kselftest_skip_is_neither_pass_nor_fail() {
        let out = |code, timed_out| RunOutput {
            code,
            signal: None,
            timed_out,
            stdout: vec![],
            stderr: vec![],
            truncated: false,
            oom_killed: false,
            duration: Duration::ZERO,
        };
        assert_eq!(out(Some(0), false).verdict(), Verdict::Pass);
        assert_eq!(out(Some(4), false).verdict(), Verdict::Skip);
        assert_eq!(out(Some(1), false).verdict(), Verdict::Fail);
        assert_eq!(out(None, true).verdict(), Verdict::Fail);
    }

    #[test]
    fn wire_shape_is_tagged_and_flat() {
        let line = encode(&Request {
            id: 1,
            op: Op::Hello,
        });
        assert_eq!(
            std::str::from_utf8(&line).expect("utf8"),
            "{\"id\":1,\"op\":\"hello\"}\n"
        );
    }

    #[test]
    fn splitter_cuts_lines_across_chunks() {
        let mut s = LineSplitter::new(16);
        assert!(s.push(b"{\"a\"").is_empty());
        assert_eq!(
            s.push(b":1}\n{}\nx"),
            vec![
                Line::Complete(b"{\"a\":1}".to_vec()),
                Line::Complete(b"{}".to_vec())
            ]
        );
        assert_eq!(s.push(b"\n"), vec![Line::Complete(b"x".to_vec())]);
    }

    #[test]
    fn splitter_discards_oversized_line_and_recovers() {
        let mut s = LineSplitter::new(4);
        assert!(s.push(b"0123").is_empty());
        assert!(s.push(b"456789").is_empty());
        assert_eq!(
            s.push(b"ab\nok\n"),
            vec![Line::Oversized { len: 12 }, Line::Complete(b"ok".to_vec())]
        );
    }

    #[test]
    fn decode_rejects_garbage_and_oversize() {
        assert!(matches!(
            decode::<Request>(b"not json", 100),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(b"{\"id\":1,\"op\":\"nope\"}", 100),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            decode::<Request>(&[b' '; 101], 100),
            Err(DecodeError::TooLarge {
                len: 101,
                limit: 100
            })
        ));
        assert_eq!(salvage_id(b"{\"id\":9,\"op\":\"nope\"}"), Some(9));
    }

    /// Fuzzing the agent's request decoding (the splitter, the decoder, the id salvage): any
    /// bytes, cut anywhere, never panic, and whatever is decoded means the same as sent.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn spec() -> impl Strategy<Value = RunSpec> {
            (
                any::<String>(),
                prop::option::of(any::<Vec<u8>>()),
                prop::collection::btree_map(any::<String>(), any::<String>(), 0..3),
                any::<u32>(),
                any::<bool>(),
            )
                .prop_map(|(script, stdin, env, ms, stream)| RunSpec {
                    program: Program::Script(script),
                    netns: None,
                    stdin,
                    env,
                    timeout: Duration::from_millis(u64::from(ms)),
                    cwd: None,
                    stream,
                    tty: None,
                    window: None,
                })
        }

        proptest! {
            #[test]
            fn any_bytes_decode_or_fail_cleanly(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
                let _ = decode::<Request>(&bytes, 256);
                let _ = decode::<Response>(&bytes, 1024);
                let _ = salvage_id(&bytes);
            }

            #[test]
            fn any_request_is_one_line_and_decodes_to_itself(id in any::<u64>(), spec in spec()) {
                let req = Request { id, op: Op::Run(spec) };
                let line = encode(&req);
                prop_assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
                let back: Request = decode(&line[..line.len() - 1], MAX_REQUEST_BYTES).expect("decodes");
                prop_assert_eq!(back, req);
            }

            #[test]
            fn lines_come_out_the_same_however_the_bytes_are_cut(
                bytes in prop::collection::vec(prop_oneof![4 => any::<u8>(), 1 => Just(b'\n')], 0..400),
                cuts in prop::collection::vec(0usize..400, 0..8),
            ) {
                let limit = 32;
                let whole = LineSplitter::new(limit).push(&bytes);
                let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
                cuts.sort_unstable();
                let mut splitter = LineSplitter::new(limit);
                let mut pieces = Vec::new();
                let mut from = 0;
                for cut in cuts.into_iter().chain([bytes.len()]) {
                    pieces.extend(splitter.push(&bytes[from..cut]));
                    from = cut;
                }
                prop_assert_eq!(&pieces, &whole);
                for (line, want) in whole.iter().zip(bytes.split(|&b| b == b'\n')) {
                    match line {
                        Line::Complete(l) => prop_assert!(l.len() <= limit && l.as_slice() == want),
                        Line::Oversized { len } => prop_assert!(*len > limit && *len == want.len()),
                    }
                }
            }
        }
    }
}
