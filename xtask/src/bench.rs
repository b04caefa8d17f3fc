//! `cargo xtask bench`: boots guests one after another and reports boot-to-agent-ready time
//! (median, p95, worst), retried boots, the image size and QEMU's resident memory, so later
//! changes can be measured against it. Then the switch's throughput, what `--package` and
//! `--dir` cost (cold cache against warm, and the boot with them against the boot without), and
//! the time of the seed's nested-VM experiment from boot to end.

use std::time::{Duration, Instant};

use lab_harness::{Assets, Extras, Vm};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// How many guests to boot.
    #[arg(long, default_value_t = 10)]
    pub boots: usize,
    /// How many guests boot at the same time (the host's cores are shared among them).
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    pub memory: u32,
    /// How many times to run the nested bridge scenario (two hosts, a VM on each), timed from
    /// the lab guests' boot to its end; 0 skips it.
    #[arg(long, default_value_t = 1)]
    pub nested: usize,
    /// Boots with `--package` and `--dir` extras, each paired with a plain boot; 0 skips the
    /// extras' measurements.
    #[arg(long, default_value_t = 3)]
    pub extras: usize,
    #[command(flatten)]
    pub provision: crate::provision::ProvisionArgs,
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    crate::hosttools::ensure_qemu()?;
    let assets = Assets::load(&crate::provision::run(&args.provision)?)?;
    let rt = tokio::runtime::Runtime::new()?;
    let mut boots = Vec::new();
    let mut rss_kib = Vec::new();
    let mut retried = 0;
    let parallel = args.parallel.max(1);
    for round in 0..args.boots.div_ceil(parallel) {
        let vms = rt.block_on(async {
            let mut set = tokio::task::JoinSet::new();
            for i in round * parallel..((round + 1) * parallel).min(args.boots) {
                let mut cfg = assets.vm(&format!("bench{i}"));
                cfg.memory_mib = args.memory;
                // One attempt: a hang must show up in the numbers, not be retried away.
                cfg.boot_attempts = 1;
                set.spawn(Vm::boot(cfg));
            }
            set.join_all().await
        });
        for vm in vms {
            let vm = vm?;
            retried += usize::from(vm.boot_attempts() > 1);
            boots.push(vm.boot_time());
            rss_kib.push(rss(vm.qemu_pid()));
            eprintln!("  {}: {:.2?} (guest uptime at ready {:.2}s)", vm.name(), vm.boot_time(), vm.ready_info().uptime_secs);
            rt.block_on(vm.shutdown())?;
        }
    }
    boots.sort();
    rss_kib.sort();
    let accel = lab_harness::Accel::choose()?;
    println!("boots: {} ({accel}, {parallel} at a time), retried after a hang: {retried}", boots.len());
    println!("boot to agent ready: median {:.2?}, p95 {:.2?}, max {:.2?}", pct(&boots, 50), pct(&boots, 95), pct(&boots, 100));
    println!("image: {:.1} MiB ({})", assets.image.size as f64 / 1048576.0, assets.image.path.display());
    println!("QEMU RSS after boot: median {} MiB, max {} MiB ({} MiB guest RAM)", pct(&rss_kib, 50) / 1024, pct(&rss_kib, 100) / 1024, args.memory);
    rt.block_on(crate::bench_switch::alone(200_000))?;
    rt.block_on(crate::bench_switch::guest_to_guest(&assets, 2000))?;
    if args.extras > 0 {
        extras(&assets, &rt, args.extras)?;
    }
    for _ in 0..args.nested {
        rt.block_on(nested(&assets))?;
    }
    Ok(())
}

/// The seed's VM part end to end: three lab guests boot (two with the nest image), each host
/// starts a VM on a macvtap, the VMs ping each other, everything stops.
async fn nested(assets: &Assets) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let report = lab_scenarios::run("nested/macvtap-bridge", assets).await;
    let took = started.elapsed();
    anyhow::ensure!(report.passed, "nested/macvtap-bridge failed: {:?}", report.error.or_else(|| Some(format!("{:?}", report.checks))));
    let accel = report.checks.iter().find(|c| c.name == "inner accelerator").map(|c| c.observed.clone()).unwrap_or_default();
    let nest = assets.nest.as_ref().map(|n| n.size as f64 / 1048576.0).unwrap_or_default();
    println!("nested/macvtap-bridge from boot to end: {took:.1?}; inner VMs: {accel}; nest image {nest:.1} MiB");
    Ok(())
}

/// Packages the upstream bonding selftest needs beyond the base image.
const BENCH_PACKAGES: [&str; 2] = ["jq", "tcpdump"];
/// The measured directory: files of a typical test tree's sizes.
const DIR_FILES: usize = 400;
const DIR_FILE_BYTES: usize = 16 << 10;

/// What `--package` and `--dir` cost. Packages: their layer built on a cold cache (apt resolves
/// the closure, downloads and unpacks every .deb, the archive is written) against a warm one (a
/// file lookup). A directory: archived anew on every run. Then boots with both against plain
/// boots, paired and timed from before the layers are looked up to the agent's answer.
fn extras(assets: &Assets, rt: &tokio::runtime::Runtime, pairs: usize) -> anyhow::Result<()> {
    let packages: Vec<String> = BENCH_PACKAGES.map(String::from).to_vec();
    // Sets apt up on the lab's cache (the package lists stay warm: only layers and .debs go cold).
    assets.package_layer(&packages)?;
    let cold_cache = tempfile::tempdir()?;
    let (layer, cold) = timed(|| lab_rootfs::layers::packages(&packages, &assets.image.path, cold_cache.path()))?;
    let (_, warm) = timed(|| lab_rootfs::layers::packages(&packages, &assets.image.path, cold_cache.path()))?;
    println!(
        "--package {} ({} packages, {:.1} MiB layer): cold cache {cold:.2?}, warm {warm:.2?} ({:.0}x faster warm)",
        packages.join(","),
        layer.contents.len(),
        layer.size as f64 / 1048576.0,
        cold.as_secs_f64() / warm.as_secs_f64().max(1e-6)
    );

    let dir = tempfile::tempdir()?;
    for i in 0..DIR_FILES {
        let sub = dir.path().join(format!("d{}", i % 20));
        std::fs::create_dir_all(&sub)?;
        std::fs::write(sub.join(format!("f{i}.sh")), vec![b'#'; DIR_FILE_BYTES])?;
    }
    let (cpio, took) = timed(|| lab_rootfs::layers::directory(dir.path()))?;
    println!("--dir of {DIR_FILES} files ({:.1} MiB archived): {took:.2?} per run (not cached: archiving is the lookup)", cpio.len() as f64 / 1048576.0);

    let with = Extras { packages, dir: Some(dir.path().to_path_buf()), ..Extras::default() };
    let (mut plain, mut extra) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        plain.push(boot_to_ready(rt, || Ok(assets.vm(&format!("plain{i}"))))?);
        extra.push(boot_to_ready(rt, || Ok(assets.vm_with(&format!("extras{i}"), &with)?))?);
    }
    plain.sort();
    extra.sort();
    let (p, e) = (pct(&plain, 50), pct(&extra, 50));
    println!("boot to agent ready with those extras: median {e:.2?} against {p:.2?} plain ({:.2}x), {pairs} pairs", e.as_secs_f64() / p.as_secs_f64());
    Ok(())
}

/// Boots the guest `cfg` makes, from before `cfg` runs to the agent's answer, and shuts it down.
fn boot_to_ready(rt: &tokio::runtime::Runtime, cfg: impl FnOnce() -> anyhow::Result<lab_harness::VmConfig>) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let mut cfg = cfg()?;
    cfg.boot_attempts = 1;
    let vm = rt.block_on(Vm::boot(cfg))?;
    let took = started.elapsed();
    rt.block_on(vm.shutdown())?;
    Ok(took)
}

fn timed<T, E: Into<anyhow::Error>>(f: impl FnOnce() -> Result<T, E>) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    let out = f().map_err(Into::into)?;
    Ok((out, started.elapsed()))
}

fn pct<T: Copy + Default>(sorted: &[T], p: usize) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() - 1) * p).div_ceil(100)]
}

fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

