//! Shared pieces of the integration tests: every test boots real guests from the assets that
//! `cargo xtask test` provisioned. Without them a test fails and says how to provision; it never
//! skips.

use lab_harness::{Assets, Vm, VmConfig};

/// The seed of a randomized test: `LAB_SEED` when set (to replay a failure), else a new one.
/// Printed either way, so a failure's output says how to replay it.
pub fn seed() -> u64 {
    let seed = std::env::var("LAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("seed {seed} (LAB_SEED={seed} replays this run)");
    seed
}

/// The provisioned kernel and image; panics with the fix when they are missing.
pub fn assets() -> Assets {
    Assets::from_env().unwrap_or_else(|e| panic!("{e}"))
}

/// The assets of kernel `id` of `kernels/kernels.toml`, which `cargo xtask test` provisions for
/// every kernel it knows, beside [`assets`].
pub fn assets_of(id: &str) -> Assets {
    let path = assets().dir.join(format!("assets-{id}.json"));
    Assets::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// The selftests `cargo xtask test` unpacked (Debian's linux-source-6.12, laid out as
/// installed), holding each of `files`; panics with the fix otherwise.
pub fn selftests(files: &[&str]) -> std::path::PathBuf {
    let dir = std::env::var_os("LAB_SELFTESTS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("LAB_SELFTESTS is not set: run the tests with `cargo xtask test`, which fetches the selftests"));
    for file in files {
        assert!(dir.join(file).is_file(), "no {file} in {}", dir.display());
    }
    dir
}

/// A guest configuration named `name` on the provisioned assets.
pub fn config(name: &str) -> VmConfig {
    assets().vm(name)
}

/// Boots `cfg`, panicking with the boot error (phase and console tail) on failure.
pub async fn boot(cfg: VmConfig) -> Vm {
    let name = cfg.name.clone();
    Vm::boot(cfg)
        .await
        .unwrap_or_else(|e| panic!("booting {name}: {e}"))
}

/// Unwraps a harness result with its full message (command, exit code, output, console tail).
pub trait Check<T> {
    fn check(self) -> T;
}

impl<T, E: std::fmt::Display> Check<T> for Result<T, E> {
    #[track_caller]
    fn check(self) -> T {
        self.unwrap_or_else(|e| panic!("{e}"))
    }
}

/// The average RTT in ms (if any reply came) and the loss in % of iputils ping's summary.
pub fn ping_stats(out: &str) -> (Option<f64>, f64) {
    let avg = rtt(out, 1);
    let loss = out
        .lines()
        .find_map(|l| l.split(", ").find(|p| p.ends_with("% packet loss")))
        .and_then(|p| p.trim_end_matches("% packet loss").parse().ok())
        .unwrap_or_else(|| panic!("no loss in ping's summary: {out}"));
    (avg, loss)
}

/// The least RTT in ms of iputils ping's summary, if any reply came: what a cable's delay
/// adds, without what a busy machine adds on top (a guest kept waiting for a core delays some
/// replies, and speeds none up).
pub fn ping_min_rtt(out: &str) -> Option<f64> {
    rtt(out, 0)
}

/// Field `n` (min, avg, max, mdev) of ping's `rtt` line.
fn rtt(out: &str, n: usize) -> Option<f64> {
    out.lines()
        .find_map(|l| l.strip_prefix("rtt min/avg/max/mdev = "))
        .and_then(|v| v.split('/').nth(n))
        .and_then(|v| v.parse().ok())
}

/// What `lab run --hosts N` boots with host1's options `extras`: host1..hostN on one switch,
/// numbered, written as a builder's calls.
pub fn lan(assets: &Assets, hosts: u8, extras: &lab_harness::Extras) -> lab_harness::Spec {
    lan_of(assets, hosts, extras, lab_harness::Size::default())
}

/// [`lan`] with host1 of `size`.
pub fn lan_of(
    assets: &Assets,
    hosts: u8,
    extras: &lab_harness::Extras,
    size: lab_harness::Size,
) -> lab_harness::Spec {
    let builder = (2..=hosts).fold(
        lab_harness::Lab::builder(assets, "lab-run")
            .host("host1")
            .extras(extras.clone())
            .size(size),
        |b, i| b.host(&format!("host{i}")),
    );
    builder.numbered().spec().unwrap_or_else(|e| panic!("{e}"))
}

/// `lab run`'s job on `spec`'s first host, given 5 minutes, with what it printed collected
/// into the result's `stdout` and `stderr` (a streaming run returns them empty: all of it went
/// by as it came).
pub async fn run_job(
    assets: &Assets,
    job: &lab_harness::Job,
    spec: lab_harness::Spec,
) -> lab_harness::Result<lab_harness::RunOutput> {
    run_job_for(assets, job, spec, std::time::Duration::from_secs(300)).await
}

/// [`run_job`] given `timeout`.
pub async fn run_job_for(
    assets: &Assets,
    job: &lab_harness::Job,
    spec: lab_harness::Spec,
    timeout: std::time::Duration,
) -> lab_harness::Result<lab_harness::RunOutput> {
    let in_dir = spec.hosts()[0].extras.dir.is_some();
    let lab = lab_harness::Lab::boot(assets, spec).await?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    let first = lab.spec().first_host().to_string();
    let env = lab.spec().job_env();
    let out = job
        .run_on(
            lab.vm(&first),
            in_dir,
            &env,
            timeout,
            |stream, bytes| match stream {
                lab_harness::Stream::Stdout => stdout.extend_from_slice(bytes),
                lab_harness::Stream::Stderr => stderr.extend_from_slice(bytes),
            },
        )
        .await;
    lab.shutdown().await?;
    Ok(lab_harness::RunOutput {
        stdout,
        stderr,
        ..out?
    })
}
