//! Nothing lost: what a `lab run` job prints arrives whole, in order, however slowly it is read,
//! and costs the host a bounded amount of memory; a daemon a topology's setup line starts lives.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use sha2::Digest;

mod support;
use support::xtask;

/// The private resident memory of process `pid` now (RssAnon), in bytes: what buffering output
/// costs. Not VmHWM: while xtask takes a guest's first snapshot it maps the guest's memory (a
/// memfd QEMU shares), which is the guest's, not the output path's.
fn private_rss(pid: u32) -> Option<u64> {
    Some(lab_harness::host::memory_kib(pid, "status", "RssAnon:") * 1024).filter(|b| *b > 0)
}

#[test]
fn a_quarter_gibibyte_arrives_byte_exact_through_a_reader_that_stalls_and_memory_stays_bounded() {
    let size = 256 << 20;
    let job = format!(
        "head -c {size} /dev/urandom > /tmp/x && sha256sum /tmp/x >&2 && cat /tmp/x && rm /tmp/x"
    );
    let mut run = xtask()
        .args([
            "lab", "run", "-q", "--memory", "1024", "--", "sh", "-c", &job,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("xtask runs");
    let pid = run.id();
    let mut stdout = run.stdout.take().expect("stdout");
    let mut hash = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut read = 0usize;
    let mut stalled = false;
    let mut peak = 0u64;
    loop {
        let n = stdout.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        read += n;
        peak = peak.max(private_rss(pid).unwrap_or(0));
        if read >= 1 << 20 && !stalled {
            // A reader that stops for seconds mid-stream (a pipe whose other end is busy): the
            // guest's writes wait for it, and nothing is dropped.
            stalled = true;
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until {
                peak = peak.max(private_rss(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let out = run.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}\n{stderr}", out.status);
    assert_eq!(read, size, "every byte arrived\n{stderr}");
    let host = format!("{:x}", hash.finalize());
    let guest = stderr
        .lines()
        .find(|l| l.ends_with("/tmp/x"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("the guest's hash on stderr:\n{stderr}"));
    assert_eq!(host, guest, "the host read what the guest wrote");
    assert!(
        peak > 0 && peak < 100 << 20,
        "xtask's private memory peaked at {} MiB for {} MiB of output",
        peak >> 20,
        size >> 20
    );
}

#[test]
fn a_daemon_started_by_a_setup_line_lives_on_beside_the_job() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let file = tmp.path().join("daemon.toml");
    std::fs::write(
        &file,
        r#"[[host]]
name = "host1"
setup = ["setsid sh -c 'while :; do date >> /tmp/beat; sleep 0.2; done' &"]
"#,
    )
    .expect("topology");
    // Started seconds after the setup line ended, the job sees the file grow.
    let job = "sleep 2; a=$(wc -l < /tmp/beat); sleep 2; b=$(wc -l < /tmp/beat); \
               echo \"$a $b\"; [ \"$b\" -gt \"$a\" ]";
    let out = xtask()
        .args(["lab", "run", "-q", "--topology"])
        .arg(&file)
        .args(["--", "sh", "-c", job])
        .output()
        .expect("xtask runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "the heartbeat stopped: {stdout}\n{stderr}"
    );
}
