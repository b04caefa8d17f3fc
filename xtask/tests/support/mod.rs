//! What the xtask tests share: running xtask, finding what runs left behind, and the lock that
//! keeps the tests that run `cargo xtask test` from writing one JUnit file at once.

#![allow(dead_code)] // each test binary uses its own part of this

pub mod terminal;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// xtask, as `cargo xtask` runs it, with short errors.
pub fn xtask() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.env("RUST_BACKTRACE", "0");
    cmd
}

/// What a finished xtask said, for assertions and their messages: its exit code, stdout and
/// stderr, each labelled.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `target/lab` of this checkout.
pub fn lab_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("lab")
}

/// This user's lab directories in `tmp`, and the QEMUs whose command line names `tmp`.
pub fn leftovers(tmp: &Path) -> (Vec<String>, Vec<String>) {
    let dirs = std::fs::read_dir(tmp)
        .expect("tmp")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("macvlan-lab-"))
        .collect();
    let qemus = lab_harness::host::qemus_in(tmp);
    (dirs, qemus)
}

/// [`leftovers`] once no QEMU is left (and, with `dirs_too`, no directory), or after 5 s.
pub fn wait_for_leftovers_to_clear(tmp: &Path, dirs_too: bool) -> (Vec<String>, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (dirs, qemus) = leftovers(tmp);
        if (qemus.is_empty() && (dirs.is_empty() || !dirs_too)) || Instant::now() > deadline {
            return (dirs, qemus);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Held while a test runs `cargo xtask test`: nextest writes its JUnit file at one path per
/// checkout, which that test then reads.
pub fn test_run_lock() -> nix::fcntl::Flock<std::fs::File> {
    let dir = lab_dir();
    std::fs::create_dir_all(&dir).expect("target/lab");
    let file = std::fs::File::create(dir.join("xtask-test-in-a-test.lock")).expect("lock file");
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .unwrap_or_else(|(_, e)| panic!("lock: {e}"))
}
