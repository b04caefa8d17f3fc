//! The guest's serial console: QEMU sends it to a socket, and a thread of ours writes it to
//! `console.log`, keeping that file under [`MAX_BYTES`] whatever the guest prints.
//!
//! A guest that floods its console (`cat /dev/zero > /dev/ttyS0`) must not fill the disk the
//! run's directory is on (often a tmpfs). When the log would pass the limit, it keeps the
//! boot's first [`HEAD`] bytes, a line that says how much was cut, and the latest [`TAIL`]
//! bytes, then goes on: a failure's last lines, the ones an error shows, are always there.
//! Readers of the tail read only the file's end ([`tail`]).
//!
//! The recorder also reads every line as it passes for the kernel saying it went wrong (a
//! WARN, a BUG, an Oops, KASAN, UBSAN, an RCU stall, a hung task, a panic): [`Watch::splats`]
//! keeps the first [`MAX_SPLATS`] of them, even when the log itself is later cut.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The most a console log takes on disk.
pub const MAX_BYTES: u64 = 8 << 20;
/// The start of the boot, kept when the log is cut.
pub const HEAD: u64 = 1 << 20;
/// The latest output, kept when the log is cut.
pub const TAIL: u64 = 2 << 20;
/// How many of its last lines a guest's error shows.
pub const ERROR_LINES: usize = 40;
/// How much of the file's end [`tail`] reads: many more lines than an error shows.
const TAIL_READ: u64 = 64 << 10;

/// The kernel problems a console showed that are kept, at most.
pub const MAX_SPLATS: usize = 16;
/// The longest line scanned for a splat; the rest of a longer one is not read.
const MAX_LINE: usize = 4096;

/// Bytes a console's log left out, shared by its recorder and the guest's handle.
#[derive(Debug, Clone, Default)]
pub struct Cut(Arc<AtomicU64>);

impl Cut {
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the guest's handle sees of its console's recorder: how much the log cut, the kernel
/// problems it saw, and whether the console has closed (QEMU gone, every line read).
#[derive(Debug, Clone, Default)]
pub struct Watch {
    pub cut: Cut,
    splats: Arc<std::sync::Mutex<Vec<Splat>>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
    /// The first error writing the log (a full disk): the log stops there, the console is
    /// still read to its end and scanned.
    write_error: Arc<std::sync::OnceLock<String>>,
}

impl Watch {
    /// Why the log stopped being written, if it did.
    pub fn write_error(&self) -> Option<&str> {
        self.write_error.get().map(String::as_str)
    }

    /// The first [`MAX_SPLATS`] kernel problems the console showed, in order.
    pub fn splats(&self) -> Vec<Splat> {
        self.splats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Whether the recorder has read the console to its end.
    pub fn closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn saw(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        if let Some(kind) = splat_kind(&line) {
            if let Ok(mut splats) = self.splats.lock() {
                if splats.len() < MAX_SPLATS {
                    splats.push(Splat {
                        kind,
                        line: crate::text::printable(message_of(&line)),
                        rip: None,
                    });
                }
            }
        } else if let Some(rip) = message_of(&line).trim_start().strip_prefix("RIP: ") {
            // Where the last problem happened, from the register dump that follows it.
            if let Ok(mut splats) = self.splats.lock() {
                if let Some(last) = splats.last_mut().filter(|s| s.rip.is_none()) {
                    last.rip = Some(crate::text::printable(rip));
                }
            }
        }
    }
}

/// What kind of trouble a kernel line reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SplatKind {
    /// `WARNING: CPU: ...` (WARN_ON) and lockdep's `WARNING: possible ... locking ...`.
    Warning,
    /// `BUG: ...` (a bad access, scheduling while atomic, a soft lockup) and `kernel BUG at`.
    Bug,
    /// `Oops: ...`, `general protection fault`.
    Oops,
    Kasan,
    Ubsan,
    /// `rcu: INFO: ... detected stall(s)`.
    RcuStall,
    /// `INFO: task ... blocked for more than N seconds`.
    HungTask,
    /// `Kernel panic - not syncing`.
    Panic,
}

/// One line of a guest's console that says its kernel went wrong.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Splat {
    pub kind: SplatKind,
    /// The line as the kernel printed it, less its timestamp.
    pub line: String,
    /// The `RIP: ` line of its register dump, if one followed (`0010:func+0x12/0x40`).
    pub rip: Option<String>,
}

impl Splat {
    /// What stays the same when the same problem happens again: its kind, its line and the
    /// function it happened in, less what changes from one occurrence to the next (CPU and
    /// PID numbers, timestamps, addresses, the code segment). Two splats with one fingerprint
    /// are one finding.
    pub fn fingerprint(&self) -> String {
        let mut text = without_addresses(&without_cpu_and_pid(&self.line));
        if let Some(rip) = &self.rip {
            let at = rip.split_once(':').map_or(rip.as_str(), |(_, f)| f);
            text.push_str(" @ ");
            text.push_str(&without_addresses(at.trim()));
        }
        format!("{:?}: {text}", self.kind)
    }
}

/// `WARNING: CPU: 1 PID: 42 at net/core/dev.c:1 f+0x1/0x2` → `WARNING: at net/core/dev.c:1 ...`;
/// a hung task's `task kworker/0:1:42` → `task kworker/0:1`.
fn without_cpu_and_pid(line: &str) -> String {
    let mut words: Vec<&str> = Vec::new();
    let mut it = line.split_whitespace().peekable();
    while let Some(word) = it.next() {
        if matches!(word, "CPU:" | "PID:") && it.peek().is_some_and(|n| n.parse::<u64>().is_ok()) {
            it.next();
            continue;
        }
        words.push(word);
    }
    let mut text = words.join(" ");
    if let Some(at) = text.find("INFO: task ") {
        // `INFO: task NAME:PID blocked ...`: the PID is the part after the last colon.
        let start = at + "INFO: task ".len();
        if let Some(end) = text[start..].find(' ').map(|e| start + e) {
            if let Some(colon) = text[start..end].rfind(':').map(|c| start + c) {
                if text[colon + 1..end].chars().all(|c| c.is_ascii_digit()) {
                    text.replace_range(colon..end, "");
                }
            }
        }
    }
    text
}

/// Each address-like number (eight or more hex digits, with or without `0x`) as `<addr>`;
/// a function's offset and size (`+0x12/0x40`) stay, they are what names the place.
fn without_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let digits = word.strip_prefix("0x").unwrap_or(word);
        if digits.len() >= 8 && digits.chars().all(|c| c.is_ascii_hexdigit()) {
            out.push_str("<addr>");
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_ascii_alphanumeric() {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// The kind of trouble `line` (a console line, maybe `[   12.345678] `-stamped) reports, if any.
pub fn splat_kind(line: &str) -> Option<SplatKind> {
    let message = message_of(line);
    let kind = if message.starts_with("WARNING: ") {
        SplatKind::Warning
    } else if message.contains("KASAN: ") {
        SplatKind::Kasan
    } else if message.starts_with("UBSAN: ") {
        SplatKind::Ubsan
    } else if message.starts_with("kernel BUG at ") || message.contains("BUG: ") {
        SplatKind::Bug
    } else if message.starts_with("Oops: ") || message.starts_with("general protection fault") {
        SplatKind::Oops
    } else if message.starts_with("rcu: ") && message.contains("detected stall") {
        SplatKind::RcuStall
    } else if message.starts_with("INFO: task ") && message.contains(" blocked for more than ") {
        SplatKind::HungTask
    } else if message.starts_with("Kernel panic - not syncing") {
        SplatKind::Panic
    } else {
        return None;
    };
    Some(kind)
}

/// `line` without the `[    1.234567] ` the kernel stamps it with.
fn message_of(line: &str) -> &str {
    let line = line.trim_end_matches('\r');
    match line
        .strip_prefix('[')
        .and_then(|rest| rest.split_once("] "))
    {
        Some((stamp, message)) if stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.') => {
            message
        }
        _ => line,
    }
}

/// Writes what comes from `from` (QEMU's console socket) into a new file at `to` until the
/// socket closes, keeping it under `limit` bytes, and watches it for kernel problems; returns
/// at once, the work goes on in a thread of its own (independent of any async runtime, so the
/// guest never waits for one).
pub fn record(
    from: std::os::unix::net::UnixStream,
    to: &Path,
    limit: u64,
) -> std::io::Result<Watch> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)?;
    let watch = Watch::default();
    let mut log = Log {
        file,
        len: 0,
        limit: limit.max(HEAD + TAIL + 4096),
        cut: watch.cut.clone(),
    };
    let seen = watch.clone();
    let path = to.to_path_buf();
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let mut from = from;
            let mut buf = vec![0u8; 64 << 10];
            // Split into lines for [`Watch::saw`], however they were cut into reads.
            let mut lines = crate::text::LineCutter::new(MAX_LINE);
            // Ends when QEMU closes the socket (it quit or was killed).
            // A log that cannot be written (a full disk) must not stall the guest, whose
            // console writes wait for us: we read on and scan, and say why the log stops.
            while let Ok(n @ 1..) = from.read(&mut buf) {
                lines.feed(&buf[..n], |line| seen.saw(line));
                if seen.write_error.get().is_none() {
                    if let Err(e) = log.append(&buf[..n]) {
                        tracing::warn!("console log {}: {e}; it stops here", path.display());
                        let _ = seen.write_error.set(e.to_string());
                    }
                }
            }
            seen.closed.store(true, Ordering::Release);
        })?;
    Ok(watch)
}

/// Copies the console log `log` of guest `name` into `artifacts`, if there is such a
/// directory; says where when the guest failed.
pub fn keep(name: &str, artifacts: Option<&Path>, log: &Path, failed: bool) {
    let Some(dir) = artifacts else { return };
    if std::fs::create_dir_all(dir).is_ok() {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let dest = dir.join(format!("{name}-{stamp}.console.log"));
        if std::fs::copy(log, &dest).is_ok() && failed {
            eprintln!("{name}: console log kept at {}", dest.display());
        }
    }
}

/// A console log being written.
struct Log {
    file: File,
    len: u64,
    limit: u64,
    cut: Cut,
}

impl Log {
    fn append(&mut self, data: &[u8]) -> std::io::Result<()> {
        if self.len + data.len() as u64 > self.limit {
            self.compact()?;
        }
        self.file.write_all_at(data, self.len)?;
        self.len += data.len() as u64;
        Ok(())
    }

    /// Keeps the head, a line saying how much is gone, and the tail.
    fn compact(&mut self) -> std::io::Result<()> {
        let keep_from = self.len.saturating_sub(TAIL).max(HEAD);
        let mut tail = vec![0u8; (self.len - keep_from) as usize];
        self.file.read_exact_at(&mut tail, keep_from)?;
        // What is dropped now: all between the head and the kept tail, less an earlier note.
        let total = self.cut.0.fetch_add(keep_from - HEAD, Ordering::Relaxed) + keep_from - HEAD;
        let note = format!(
            "\n[lab: console over {} MiB: {total} bytes cut here; the boot's start and the latest output are kept]\n",
            self.limit >> 20
        );
        self.file.set_len(HEAD)?;
        self.file.write_all_at(note.as_bytes(), HEAD)?;
        self.file.write_all_at(&tail, HEAD + note.len() as u64)?;
        self.len = HEAD + note.len() as u64 + tail.len() as u64;
        Ok(())
    }
}

/// The last `lines` lines of the console log (empty if there is none yet), from its end only.
pub fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let from = len.saturating_sub(TAIL_READ);
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(from)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    // Started mid-file: the first line is a piece of one.
    let text = match (from > 0, text.split_once('\n')) {
        (true, Some((_, rest))) => rest,
        _ => &text,
    };
    tail_of(text, lines)
}

/// The last `lines` lines of a console's text (an inner VM's, read through its host).
pub fn tail_of(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn splat(line: &str, rip: Option<&str>) -> Splat {
        Splat {
            kind: splat_kind(line).expect("a splat"),
            line: message_of(line).to_string(),
            rip: rip.map(str::to_string),
        }
    }

    /// The same problem twice is one fingerprint, whatever CPU, PID, time and addresses it
    /// came with; another place or function is another.
    #[test]
    fn the_same_splat_twice_is_one_fingerprint() {
        let first = splat(
            "[   12.345678] WARNING: CPU: 0 PID: 321 at lab_warn.c:9 lab_warn_init+0x15/0x1000 [lab_warn]",
            Some("0010:lab_warn_init+0x15/0x1000 [lab_warn]"),
        );
        let again = splat(
            "[  101.000001] WARNING: CPU: 1 PID: 4242 at lab_warn.c:9 lab_warn_init+0x15/0x1000 [lab_warn]",
            Some("0033:lab_warn_init+0x15/0x1000 [lab_warn]"),
        );
        assert_eq!(first.fingerprint(), again.fingerprint());
        assert_eq!(
            first.fingerprint(),
            "Warning: WARNING: at lab_warn.c:9 lab_warn_init+0x15/0x1000 [lab_warn] @ lab_warn_init+0x15/0x1000 [lab_warn]"
        );
        let elsewhere = splat(
            "WARNING: CPU: 0 PID: 321 at lab_warn.c:12 lab_warn_exit+0x15/0x1000 [lab_warn]",
            None,
        );
        assert_ne!(first.fingerprint(), elsewhere.fingerprint());
        let null = |address: &str, pid: u32| {
            splat(
                &format!("BUG: kernel NULL pointer dereference, address: {address}"),
                Some(&format!("0010:macvlan_broadcast+0x{pid:x}/0x200")),
            )
        };
        assert_eq!(
            null("0000000000000008", 0x2a).fingerprint(),
            null("0000000000000010", 0x2a).fingerprint(),
            "the faulting address differs, the place does not"
        );
        assert_ne!(
            null("0000000000000008", 0x2a).fingerprint(),
            null("0000000000000008", 0x2b).fingerprint(),
            "another offset is another place"
        );
        let hung = |pid: u32| {
            splat(
                &format!("INFO: task kworker/0:1:{pid} blocked for more than 120 seconds."),
                None,
            )
            .fingerprint()
        };
        assert_eq!(hung(17), hung(4711));
    }
    use std::io::Write;

    #[test]
    fn each_kind_of_kernel_problem_is_told_from_ordinary_lines() {
        let cases = [
            (
                "[   12.345678] WARNING: CPU: 0 PID: 1 at net/core/dev.c:10 f+0x1/0x2",
                Some(SplatKind::Warning),
            ),
            (
                "WARNING: possible circular locking dependency detected",
                Some(SplatKind::Warning),
            ),
            (
                "[    3.1] BUG: kernel NULL pointer dereference, address: 0000000000000000",
                Some(SplatKind::Bug),
            ),
            (
                "[    3.1] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [sh:1]",
                Some(SplatKind::Bug),
            ),
            ("kernel BUG at mm/slub.c:123!", Some(SplatKind::Bug)),
            (
                "[    3.1] BUG: KASAN: use-after-free in f+0x1/0x2",
                Some(SplatKind::Kasan),
            ),
            (
                "UBSAN: shift-out-of-bounds in lib/x.c:1:2",
                Some(SplatKind::Ubsan),
            ),
            ("Oops: 0002 [#1] PREEMPT SMP NOPTI", Some(SplatKind::Oops)),
            (
                "general protection fault, probably for non-canonical address",
                Some(SplatKind::Oops),
            ),
            (
                "[   30.0] rcu: INFO: rcu_preempt self-detected stall on CPU",
                Some(SplatKind::RcuStall),
            ),
            (
                "[  243.1] INFO: task sh:99 blocked for more than 1 seconds.",
                Some(SplatKind::HungTask),
            ),
            (
                "Kernel panic - not syncing: Attempted to kill init!",
                Some(SplatKind::Panic),
            ),
            ("[    0.5] Run /init as init process", None),
            ("lab: WARNING in a user's own words, not the kernel's", None),
            ("[    1.0] i8042: PNP: No PS/2 controller found.", None),
        ];
        for (line, want) in cases {
            assert_eq!(splat_kind(line), want, "{line}");
        }
    }

    #[test]
    fn a_log_that_cannot_be_written_is_said_and_the_console_is_still_drained_and_scanned() {
        let (guest, host) = std::os::unix::net::UnixStream::pair().expect("pair");
        // Every write to /dev/full fails as a full disk does.
        let watch = record(host, Path::new("/dev/full"), MAX_BYTES).expect("record");
        let mut guest = guest;
        guest.write_all(b"[    1.0] booting\n").expect("a line");
        // Far more than a socket buffers: a recorder that stopped reading would stall this.
        for _ in 0..64 {
            guest.write_all(&[b'x'; 64 << 10]).expect("drained");
        }
        guest
            .write_all(b"\n[    9.0] BUG: kernel NULL pointer dereference\n")
            .expect("a splat");
        drop(guest);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !watch.closed() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(watch.closed(), "read to its end");
        assert!(
            watch
                .write_error()
                .is_some_and(|e| e.contains("No space left")),
            "{:?}",
            watch.write_error()
        );
        assert_eq!(
            watch.splats().len(),
            1,
            "still scanned: {:?}",
            watch.splats()
        );
    }

    #[tokio::test]
    async fn a_splat_is_kept_whole_however_the_console_cut_it_and_only_the_first_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let (guest, host) = std::os::unix::net::UnixStream::pair().expect("pair");
        let watch = record(host, &path, MAX_BYTES).expect("record");
        let mut guest = guest;
        guest
            .write_all(b"[    1.0] booting\n[    2.0] WARNING: CPU: 0 PID")
            .expect("a piece");
        guest.write_all(b": 1 at x.c:1 f\n").expect("its end");
        for n in 0..(MAX_SPLATS + 5) {
            guest
                .write_all(format!("BUG: number {n}\n").as_bytes())
                .expect("more");
        }
        guest.write_all(&[b'y'; 3 * MAX_LINE]).expect("a long line");
        guest
            .write_all(b" BUG: past the scanned part\n")
            .expect("its end");
        drop(guest);
        let closed = crate::wait::until(
            std::time::Duration::from_secs(10),
            std::time::Duration::from_millis(10),
            || {
                let closed = watch.closed();
                async move { closed.then_some(()) }
            },
        )
        .await;
        assert!(closed.is_some(), "the recorder read to the end");
        let splats = watch.splats();
        assert_eq!(splats.len(), MAX_SPLATS);
        assert_eq!(splats[0].kind, SplatKind::Warning);
        assert_eq!(splats[0].line, "WARNING: CPU: 0 PID: 1 at x.c:1 f");
        assert_eq!(splats[1].line, "BUG: number 0");
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("console.log");
        std::fs::write(&p, "a\nb\nc\nd\n").expect("write");
        assert_eq!(tail(&p, 2), "c\nd");
        assert_eq!(tail(&dir.path().join("none"), 2), "");
    }

    #[test]
    fn tail_reads_only_the_end_of_a_big_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("console.log");
        let mut text = "x".repeat(1 << 20);
        text.push_str("\nsecond to last\nlast\n");
        std::fs::write(&p, &text).expect("write");
        assert_eq!(tail(&p, 2), "second to last\nlast");
        assert_eq!(tail(&p, 5), "second to last\nlast", "no piece of a line");
    }

    #[tokio::test]
    async fn a_flooded_console_stays_under_its_limit_with_its_head_its_tail_and_the_cut_said() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("console.log");
        let (guest, host) = std::os::unix::net::UnixStream::pair().expect("pair");
        let limit = 4 << 20;
        let cut = record(host, &path, limit).expect("record");
        let mut guest = guest;
        guest
            .write_all(b"Linux version 6.1 booting\n")
            .expect("boot line");
        let line = [b"z".repeat(99), b"\n".to_vec()].concat();
        for _ in 0..200_000 {
            guest.write_all(&line).expect("flood");
        }
        guest
            .write_all(b"Kernel panic - the last words\n")
            .expect("last");
        drop(guest);
        let bound = limit.max(HEAD + TAIL + 4096);
        let every = std::time::Duration::from_millis(20);
        let wrote = crate::wait::until(std::time::Duration::from_secs(10), every, || {
            let done = tail(&path, 1).contains("last words");
            async move { done.then_some(()) }
        })
        .await;
        assert!(wrote.is_some(), "the recorder wrote the end");
        let size = std::fs::metadata(&path).expect("meta").len();
        assert!(size <= bound, "{size} bytes on disk, limit {bound}");
        let log = std::fs::read_to_string(&path).expect("read");
        assert!(
            log.starts_with("Linux version 6.1 booting\n"),
            "the head is kept"
        );
        assert!(
            log.contains("bytes cut here"),
            "the cut is said in the file"
        );
        assert!(
            cut.cut.bytes() >= 20_000_000 - bound,
            "{} bytes cut",
            cut.cut.bytes()
        );
    }

    #[test]
    fn a_multibyte_character_at_the_read_edge_does_not_break_the_tail() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("console.log");
        let text = "宏".repeat(100_000) + "\n最后一行\n";
        std::fs::write(&p, &text).expect("write");
        assert_eq!(tail(&p, 1), "最后一行");
    }
}
