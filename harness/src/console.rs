//! The guest's serial console: QEMU sends it to a socket, and a thread of ours writes it to
//! `console.log`, keeping that file under [`MAX_BYTES`] whatever the guest prints.
//!
//! A guest that floods its console (`cat /dev/zero > /dev/ttyS0`) must not fill the disk the
//! run's directory is on (often a tmpfs). When the log would pass the limit, it keeps the
//! boot's first [`HEAD`] bytes, a line that says how much was cut, and the latest [`TAIL`]
//! bytes, then goes on: a failure's last lines, the ones an error shows, are always there.
//! Readers of the tail read only the file's end ([`tail`]).

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

/// Bytes a console's log left out, shared by its recorder and the guest's handle.
#[derive(Debug, Clone, Default)]
pub struct Cut(Arc<AtomicU64>);

impl Cut {
    pub fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Writes what comes from `from` (QEMU's console socket) into a new file at `to` until the
/// socket closes, keeping it under `limit` bytes; returns at once, the writing goes on in a
/// thread of its own (independent of any async runtime, so the guest never waits for one).
pub fn record(from: std::os::unix::net::UnixStream, to: &Path, limit: u64) -> std::io::Result<Cut> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .read(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(to)?;
    let cut = Cut::default();
    let mut log = Log {
        file,
        len: 0,
        limit: limit.max(HEAD + TAIL + 4096),
        cut: cut.clone(),
    };
    std::thread::Builder::new()
        .name("console".into())
        .spawn(move || {
            let mut from = from;
            let mut buf = vec![0u8; 64 << 10];
            // Ends when QEMU closes the socket (it quit or was killed).
            while let Ok(n @ 1..) = from.read(&mut buf) {
                if log.append(&buf[..n]).is_err() {
                    break;
                }
            }
        })?;
    Ok(cut)
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
    use std::io::Write;

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
            cut.bytes() >= 20_000_000 - bound,
            "{} bytes cut",
            cut.bytes()
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
