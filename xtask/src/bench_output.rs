//! What a guest's output costs and whether it all arrives: `lab run` of a job that writes
//! random bytes to a file, prints their sha256 on stderr and then the file on stdout, read as
//! fast as this process can against read by a reader that stalls for seconds mid-stream. Both
//! must arrive byte for byte (the hash of what was read against the guest's); the figures are
//! the rate (from the first byte read to the last) and `lab run`'s peak private memory, which
//! flow control bounds by its window whatever the guest writes.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

/// How long the stalling reader stops, after its first MiB.
const STALL: Duration = Duration::from_secs(5);

/// What one run through `lab run` showed.
struct Through {
    bytes: u64,
    exact: bool,
    /// From the first byte read to the last.
    took: Duration,
    /// `lab run`'s peak private memory (RssAnon, sampled), in KiB.
    rss_kib: u64,
}

/// `mib`: how much the guest writes.
pub fn run(assets_path: &Path, mib: u64) -> anyhow::Result<()> {
    let read = through(assets_path, mib, None)?;
    let stalled = through(assets_path, mib, Some(STALL))?;
    let rate = |t: &Through| t.bytes as f64 / t.took.as_secs_f64().max(1e-9) / 1e6;
    println!(
        "lab run writing {mib} MiB: byte-exact {} read at once and {} through a reader that \
         stalls {STALL:?}; {:.1} MB/s read at once; peak private memory of lab run {:.0} MiB \
         read at once, {:.0} MiB stalled",
        if read.exact { "yes" } else { "NO" },
        if stalled.exact { "yes" } else { "NO" },
        rate(&read),
        read.rss_kib as f64 / 1024.0,
        stalled.rss_kib as f64 / 1024.0,
    );
    anyhow::ensure!(
        read.exact && stalled.exact,
        "output was lost or changed on its way: {} and {} bytes arrived of {mib} MiB",
        read.bytes,
        stalled.bytes
    );
    Ok(())
}

/// Runs the writer through `lab run`, reads its stdout (stopping `stall` after the first
/// MiB), and compares the hash of what came with the one the guest printed.
fn through(assets_path: &Path, mib: u64, stall: Option<Duration>) -> anyhow::Result<Through> {
    let tmp = tempfile::tempdir()?;
    let job = format!(
        "head -c {} /dev/urandom > /tmp/out && sha256sum /tmp/out >&2 && cat /tmp/out && rm /tmp/out",
        mib << 20
    );
    // The file lives in the guest's memory: room for it and what the guest needs besides.
    let memory = (2 * mib + 512).to_string();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["-q", "lab", "run", "--timeout", "3600", "--memory", &memory])
        .args(["--", "sh", "-c", &job])
        .env(lab_harness::assets::ENV_ASSETS, assets_path)
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let mut stdout = child.stdout.take().expect("piped");
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let (mut bytes, mut rss_kib) = (0u64, 0u64);
    let mut first = None;
    let mut stall = stall;
    let private = || lab_harness::host::memory_kib(pid, "status", "RssAnon:");
    loop {
        let n = stdout.read(&mut buf)?;
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        hash.update(&buf[..n]);
        bytes += n as u64;
        rss_kib = rss_kib.max(private());
        if bytes >= 1 << 20 {
            if let Some(pause) = stall.take() {
                let until = Instant::now() + pause;
                while Instant::now() < until {
                    rss_kib = rss_kib.max(private());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }
    let took = first.map_or(Duration::ZERO, |f| f.elapsed());
    let out = child.wait_with_output()?;
    lab_harness::rundirs::sweep_stale_in(tmp.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "lab run of the writer failed: {stderr}"
    );
    let guest = stderr
        .lines()
        .find(|l| l.ends_with("/tmp/out"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_default();
    Ok(Through {
        bytes,
        exact: bytes == mib << 20 && format!("{:x}", hash.finalize()) == guest,
        took,
        rss_kib,
    })
}
