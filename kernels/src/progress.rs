//! How long work says how far it got: the libraries that fetch and build (this crate,
//! `lab-rootfs`) start a [`Task`] and move it on; the program that uses them decides whether and
//! how that is shown by installing an [`Observer`] once ([`observe`]). With none installed (a
//! test, a library user, CI), a task costs an atomic load.
//!
//! Like `log` and `tracing`, the libraries only report: no terminal code lives here.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// What a task counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes: shown with a binary prefix and a rate.
    Bytes,
    /// Steps of a known or unknown number.
    Steps,
}

/// What a program shows of tasks. Called from any thread.
pub trait Observer: Send + Sync {
    /// A task began: `what` it does, its `total` in `unit`s when known ahead.
    fn start(&self, what: &str, total: Option<u64>, unit: Unit) -> Box<dyn Meter>;
}

/// One running task, as its observer shows it.
pub trait Meter: Send + Sync {
    /// `done` units of the total are done.
    fn set(&self, done: u64);
    /// What the task is on now (a package's name, a step's).
    fn note(&self, text: &str);
    /// The task ended (the task is dropped): its display goes.
    fn finish(&self);
}

static OBSERVER: OnceLock<Box<dyn Observer>> = OnceLock::new();

/// Installs the observer every later task reports to. The first one stays: a second call
/// returns false.
pub fn observe(observer: Box<dyn Observer>) -> bool {
    OBSERVER.set(observer).is_ok()
}

/// Whether an observer shows tasks: what only a display needs (download sizes asked of apt)
/// is not worked out when none does.
pub fn watching() -> bool {
    OBSERVER.get().is_some()
}

/// A piece of long work in progress; its display ends when it is dropped.
pub struct Task {
    meter: Option<Box<dyn Meter>>,
    done: AtomicU64,
    /// Steps begun with [`Task::step`].
    begun: AtomicU64,
}

impl Task {
    /// Starts a task: `what` it does (`"downloading 42 packages"`), `total` units if known.
    pub fn start(what: &str, total: Option<u64>, unit: Unit) -> Task {
        Task {
            meter: OBSERVER.get().map(|o| o.start(what, total, unit)),
            done: Default::default(),
            begun: Default::default(),
        }
    }

    /// A task of `steps` named steps, begun one after the other with [`Task::step`].
    pub fn steps(what: &str, steps: u64) -> Task {
        Task::start(what, Some(steps), Unit::Steps)
    }

    /// The next step begins (the one before it is done): shown by its name.
    pub fn step(&self, name: &str) {
        let before = self.begun.fetch_add(1, Ordering::Relaxed);
        self.set(before);
        self.note(name);
    }

    /// `done` units are done in all.
    pub fn set(&self, done: u64) {
        self.done.store(done, Ordering::Relaxed);
        if let Some(m) = &self.meter {
            m.set(done);
        }
    }

    /// `n` more units are done.
    pub fn add(&self, n: u64) {
        let done = self.done.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(m) = &self.meter {
            m.set(done);
        }
    }

    /// Units done so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// What the task is on now.
    pub fn note(&self, text: &str) {
        if let Some(m) = &self.meter {
            m.note(text);
        }
    }

    /// Whether anyone watches: work that costs something only to be shown (polling a
    /// download's size) is skipped when nobody does.
    pub fn watched(&self) -> bool {
        self.meter.is_some()
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(m) = &self.meter {
            m.finish();
        }
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("watched", &self.watched())
            .field("done", &self.done())
            .finish()
    }
}

/// Runs `cmd` to its end as [`Command::output`] does, meanwhile moving `task` on by the bytes
/// that appear under `dir` (a download's tool writing there). Unwatched, it is `output()`.
pub fn output_watching(cmd: &mut Command, task: &Task, dir: &Path) -> std::io::Result<Output> {
    if !task.watched() {
        return cmd.output();
    }
    let base = task.done();
    let before = bytes_under(dir);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    // Read both pipes while waiting: a child that fills one would otherwise never end.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(child.stdout.take().map(|p| Box::new(p) as _));
    let stderr = drain(child.stderr.take().map(|p| Box::new(p) as _));
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        task.set(base + bytes_under(dir).saturating_sub(before));
        std::thread::sleep(std::time::Duration::from_millis(150));
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// Bytes in files under `dir` (and its subdirectories), for a download whose tool writes into
/// `dir` but does not say how far it got. Unreadable entries count nothing.
pub fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => bytes_under(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unwatched_task_still_counts() {
        let task = Task::start("nothing watches", Some(10), Unit::Steps);
        task.add(3);
        task.add(4);
        assert_eq!(task.done(), 7);
        task.set(2);
        assert_eq!(task.done(), 2);
    }

    #[test]
    fn a_step_marks_the_one_before_it_done() {
        let task = Task::steps("three steps", 3);
        task.step("one");
        assert_eq!(task.done(), 0);
        task.step("two");
        task.step("three");
        assert_eq!(task.done(), 2);
    }

    #[test]
    fn bytes_under_counts_nested_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a"), [0u8; 100]).expect("write");
        std::fs::create_dir(dir.path().join("partial")).expect("mkdir");
        std::fs::write(dir.path().join("partial/b"), [0u8; 23]).expect("write");
        assert_eq!(bytes_under(dir.path()), 123);
        assert_eq!(bytes_under(&dir.path().join("gone")), 0);
    }
}
