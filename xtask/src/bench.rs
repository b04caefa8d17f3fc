//! `cargo xtask bench`: boots guests one after another and reports boot-to-agent-ready time
//! (median, p95, worst), retried boots, the image size and QEMU's resident memory, so later
//! changes can be measured against it. Then the switch's throughput, and the time of the
//! seed's nested-VM experiment from boot to end.

use lab_harness::{Assets, Vm};

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

