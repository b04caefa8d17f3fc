//! `cargo xtask bench`: boots guests cold and restores them from a snapshot in the same run, and
//! reports each's time to agent ready (median, p95, worst; one attempt each, so a hang fails
//! the bench rather than being retried away), fallbacks to a cold boot, the image size and QEMU's resident memory, so later changes can be measured against it;
//! also a nest guest's restore and `lab run` end to end, restoring against booting cold. Then
//! the switch's throughput, what `--package` and `--dir` cost (cold cache against warm, and the
//! boot with them against the boot without), and the time of the seed's nested-VM experiment
//! from boot to end.

use std::time::{Duration, Instant};

use lab_harness::host::memory_kib;
use lab_harness::{Assets, Extras, Vm};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// How many guests to boot cold.
    #[arg(long, default_value_t = 5, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub boots: usize,
    /// How many guests to restore from a snapshot (after its first guest took it).
    #[arg(long, default_value_t = 20, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1000))]
    pub restores: usize,
    /// How many guests boot at the same time (the host's cores are shared among them).
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub parallel: usize,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(i64::from(lab_harness::config::MIN_MEMORY_MIB)..=i64::from(lab_harness::config::MAX_MEMORY_MIB)))]
    pub memory: u32,
    /// How many times to run the nested bridge scenario (two hosts, a VM on each), timed from
    /// the lab guests' boot to its end; 0 skips it.
    #[arg(long, default_value_t = 1, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100))]
    pub nested: usize,
    /// Boots with `--package` and `--dir` extras, each paired with a plain boot; 0 skips the
    /// extras' measurements.
    #[arg(long, default_value_t = 3, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=100))]
    pub extras: usize,
    /// Soak: this many guests restored, then this many cold, 8 at a time, each running a
    /// command; counts hangs, fallbacks and leftovers. 0 skips it.
    #[arg(long, default_value_t = 0, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(0..=10000))]
    pub soak: usize,
    /// Measure only this part.
    #[arg(long, value_enum)]
    pub only: Option<Part>,
    /// Every part once with small counts, for a bench that cannot rot: the test suite runs
    /// it, so a part that breaks fails the tests. Its figures are not worth quoting.
    #[arg(long)]
    pub quick: bool,
    #[command(flatten)]
    pub provision: crate::provision::ProvisionArgs,
}

/// A part of the bench that runs alone with `--only`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Part {
    /// The switch: frames per second alone, from one source and from 200k random ones.
    Switch,
    /// `lab run` whose guest writes 1 GiB: byte-exact, its rate, the host's peak memory with
    /// its stdout read at once and through a reader that stalls.
    Output,
    /// A flood over a cable that delays it ten minutes: what the cable holds.
    Flood,
    /// A LAN of 32 hosts: time to ready, the host's memory.
    Lan,
    /// A cold boot against a bare boot of the same kernel (to a static `/init` that powers
    /// off at once), in pairs, and where a cold boot's time goes.
    Boot,
    /// The drivers/net bench: a remote command over ssh's persistent connection, and
    /// `ping.py` across two hosts against a one-host `lab run`.
    Remote,
}

/// How much each part measures: the full bench's counts, or `--quick`'s.
struct Counts {
    boots: usize,
    /// Pairs of a bare boot and a cold boot.
    boot_pairs: usize,
    restores: usize,
    eight: usize,
    inner_vms: usize,
    lab_run_pairs: usize,
    switch_frames: usize,
    pings: usize,
    output_mib: u64,
    flood: u64,
    lan_hosts: usize,
    extras: usize,
    nested: usize,
    remote_commands: usize,
    ping_py_pairs: usize,
}

impl Counts {
    fn of(args: &BenchArgs) -> Self {
        if args.quick {
            return Self {
                boots: 1,
                boot_pairs: 1,
                restores: 2,
                eight: 2,
                inner_vms: 1,
                lab_run_pairs: 1,
                switch_frames: 5_000,
                pings: 100,
                output_mib: 32,
                flood: 50_000,
                lan_hosts: 3,
                extras: 1,
                nested: 0,
                remote_commands: 10,
                ping_py_pairs: 1,
            };
        }
        Self {
            boots: args.boots,
            boot_pairs: 8,
            restores: args.restores,
            eight: 8,
            inner_vms: 3,
            lab_run_pairs: 3,
            switch_frames: 200_000,
            pings: 2000,
            output_mib: 1024,
            flood: 1_170_000,
            lan_hosts: 32,
            extras: args.extras,
            nested: args.nested,
            remote_commands: 100,
            ping_py_pairs: 5,
        }
    }
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    crate::hosttools::ensure(crate::hosttools::Purpose::Lab)?;
    let assets_path = crate::provision::run(&args.provision)?;
    let assets = Assets::load(&assets_path)?;
    let rt = tokio::runtime::Runtime::new()?;
    let counts = Counts::of(args);
    match args.only {
        Some(Part::Switch) => {
            return block(
                &rt,
                crate::bench_switch::alone_and_flooded(counts.switch_frames, counts.switch_frames),
            )?
        }
        Some(Part::Output) => return crate::bench_output::run(&assets_path, counts.output_mib),
        Some(Part::Flood) => return block(&rt, crate::bench_switch::delayed_flood(counts.flood))?,
        Some(Part::Lan) => {
            return block(&rt, crate::bench_switch::big_lan(&assets, counts.lan_hosts))?
        }
        Some(Part::Boot) => {
            crate::bench_boot::cold_boot_breakdown(&rt, &assets)?;
            return crate::bench_boot::against_bare(&rt, &assets, counts.boot_pairs);
        }
        Some(Part::Remote) => {
            block(
                &rt,
                crate::bench_remote::remote_commands(&assets, counts.remote_commands),
            )??;
            return crate::bench_remote::ping_py(&assets_path, counts.ping_py_pairs);
        }
        None => {}
    }
    let accel = lab_harness::Settings::from_env()?.accel();
    let parallel = args.parallel.max(1);
    println!("guests: {accel}, {} MiB, {parallel} at a time; times from before Vm::boot to the agent's answer", args.memory);

    let cold = boots(&rt, &assets, args, "cold", counts.boots, parallel, None)?;
    report("cold boot", &cold);
    crate::bench_boot::cold_boot_breakdown(&rt, &assets)?;
    crate::bench_boot::against_bare(&rt, &assets, counts.boot_pairs)?;
    // A store of this bench's own: its first guest takes the snapshot, the rest restore it.
    let store = tempfile::tempdir()?;
    let first = boots(&rt, &assets, args, "first", 1, 1, Some(store.path()))?;
    let restored = boots(
        &rt,
        &assets,
        args,
        "restore",
        counts.restores,
        parallel,
        Some(store.path()),
    )?;
    report("restore", &restored);
    let eight = boots(
        &rt,
        &assets,
        args,
        "eight",
        counts.eight,
        counts.eight,
        Some(store.path()),
    )?;
    report(&format!("restore, {} at once", counts.eight), &eight);
    // On disk: the memory file's blocks (its zero pages are holes) and the device state.
    let snapshot = std::fs::read_dir(store.path())?
        .flatten()
        .find(|e| e.path().is_dir())
        .map(|e| e.path());
    let on_disk = |file: &str| {
        snapshot
            .as_ref()
            .map_or(0, |s| crate::disk_usage(&s.join(file)))
    };
    let (memory, state) = (on_disk("memory"), on_disk("state"));
    println!(
        "restore vs cold boot: {:.1}x faster (median {:.2?} against {:.2?}); first guest of the shape (boots cold, takes the snapshot: {:.0} MiB of memory, {:.0} KiB of device state): {:.2?}",
        pct(&cold.times, 50).as_secs_f64() / pct(&restored.times, 50).as_secs_f64().max(1e-6),
        pct(&restored.times, 50),
        pct(&cold.times, 50),
        memory as f64 / 1048576.0,
        state as f64 / 1024.0,
        first.times.first().copied().unwrap_or_default(),
    );
    println!(
        "image: {:.1} MiB ({})",
        assets.image.size as f64 / 1048576.0,
        assets.image.path.display()
    );
    if let Ok(nest) = assets.nest_vm("nest", 1) {
        let nest_store = tempfile::tempdir()?;
        let timed_nest = |name: &str| -> anyhow::Result<(Duration, lab_harness::BootKind)> {
            let mut cfg = nest.clone();
            cfg.name = name.into();
            cfg.snapshots = Some(nest_store.path().to_path_buf());
            boot_to_ready(&rt, || Ok(cfg))
        };
        let (cold_nest, _) = timed_nest("nest-cold")?;
        let (restored_nest, kind) = timed_nest("nest-restore")?;
        println!(
            "nest guest ({} MiB): cold {cold_nest:.2?}, restored {restored_nest:.2?} ({kind:?})",
            nest.machine.memory_mib
        );
        let mut cfg = nest.clone();
        cfg.name = "nest-inner".into();
        cfg.snapshots = Some(nest_store.path().to_path_buf());
        block(&rt, inner_vms(cfg, counts.inner_vms))??;
    }
    lab_run(&assets_path, counts.lab_run_pairs)?;
    block(
        &rt,
        crate::bench_switch::alone_and_flooded(counts.switch_frames, counts.switch_frames),
    )??;
    block(
        &rt,
        crate::bench_switch::guest_to_guest(&assets, counts.pings),
    )??;
    block(&rt, crate::bench_switch::delayed_flood(counts.flood))??;
    crate::bench_output::run(&assets_path, counts.output_mib)?;
    block(&rt, crate::bench_switch::big_lan(&assets, counts.lan_hosts))??;
    block(
        &rt,
        crate::bench_remote::remote_commands(&assets, counts.remote_commands),
    )??;
    crate::bench_remote::ping_py(&assets_path, counts.ping_py_pairs)?;
    if counts.extras > 0 {
        extras(&assets, &rt, counts.extras)?;
    }
    for _ in 0..counts.nested {
        block(&rt, nested(&assets))??;
    }
    if args.soak > 0 {
        crate::bench_soak::soak(&rt, &assets, args.soak, Some(store.path()))?;
        crate::bench_soak::soak(&rt, &assets, args.soak, None)?;
    }
    Ok(())
}

/// `rt.block_on(work)`, unless Ctrl-C or SIGTERM comes first: then `work` is dropped (its
/// guests killed, their directories removed) and the bench ends saying so. Every wait of the
/// bench goes through here: once one wait has listened for SIGINT, tokio keeps the signal from
/// ending the process, and a wait that did not listen would not hear Ctrl-C.
pub(crate) fn block<T>(
    rt: &tokio::runtime::Runtime,
    work: impl std::future::Future<Output = T>,
) -> anyhow::Result<T> {
    rt.block_on(crate::interrupt::unless_interrupted(work))
}

/// What a series of boots measured.
struct Boots {
    times: Vec<Duration>,
    rss_kib: Vec<u64>,
    /// Proportional set size: a page shared by n guests counts 1/n in each.
    pss_kib: Vec<u64>,
    /// Boots that failed or hung (one attempt each), with why.
    failed: Vec<String>,
    /// Guests that should have restored and booted cold instead, with why.
    fallbacks: Vec<String>,
}

/// Boots `n` guests, `parallel` at a time, from `store`'s snapshots or (`None`) cold.
fn boots(
    rt: &tokio::runtime::Runtime,
    assets: &Assets,
    args: &BenchArgs,
    label: &str,
    n: usize,
    parallel: usize,
    store: Option<&std::path::Path>,
) -> anyhow::Result<Boots> {
    let mut out = Boots {
        times: Vec::new(),
        rss_kib: Vec::new(),
        pss_kib: Vec::new(),
        failed: Vec::new(),
        fallbacks: Vec::new(),
    };
    for round in 0..n.div_ceil(parallel) {
        let vms = block(rt, async {
            let mut set = tokio::task::JoinSet::new();
            for i in round * parallel..((round + 1) * parallel).min(n) {
                let mut cfg = assets.vm(&format!("{label}{i}"));
                cfg.machine.memory_mib = args.memory;
                cfg.snapshots = store.map(std::path::Path::to_path_buf);
                // One attempt: a hang must show up in the numbers, not be retried away.
                cfg.policy.boot_attempts = 1;
                set.spawn(async move {
                    let started = Instant::now();
                    let vm = Vm::boot(cfg).await;
                    (vm, started.elapsed())
                });
            }
            set.join_all().await
        })?;
        for (vm, took) in vms {
            let vm = match vm {
                Ok(vm) => vm,
                Err(e) => {
                    out.failed.push(e.to_string());
                    continue;
                }
            };
            if let lab_harness::BootKind::Fallback(why) = vm.boot_kind() {
                out.fallbacks.push(why.clone());
            }
            out.times.push(took);
            // Measured while the whole round is up, so shared pages show as shared.
            out.rss_kib
                .push(memory_kib(vm.qemu_pid(), "status", "VmRSS:"));
            out.pss_kib
                .push(memory_kib(vm.qemu_pid(), "smaps_rollup", "Pss:"));
            block(rt, vm.shutdown())??;
        }
    }
    out.times.sort();
    out.rss_kib.sort();
    out.pss_kib.sort();
    Ok(out)
}

fn report(what: &str, b: &Boots) {
    println!(
        "{what}: {} guests, median {:.2?}, p95 {:.2?}, max {:.2?}; QEMU RSS median {} MiB (PSS {} MiB); failed or hung {}{}; fell back to a cold boot {}{}",
        b.times.len(),
        pct(&b.times, 50),
        pct(&b.times, 95),
        pct(&b.times, 100),
        pct(&b.rss_kib, 50) / 1024,
        pct(&b.pss_kib, 50) / 1024,
        b.failed.len(),
        b.failed.first().map(|w| format!(" (first: {w})")).unwrap_or_default(),
        b.fallbacks.len(),
        b.fallbacks.first().map(|w| format!(" (first: {w})")).unwrap_or_default(),
    );
}

/// `cargo xtask -q lab run ARGS` on the assets at `assets_path` with `env`, as a user runs it:
/// how long it took, start to end; a run that fails is an error with its stderr.
pub(crate) fn timed_lab_run(
    assets_path: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let out = std::process::Command::new(std::env::current_exe()?)
        .args(["-q", "lab", "run"])
        .args(args)
        .env(lab_harness::assets::ENV_ASSETS, assets_path)
        .envs(env.iter().copied())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "lab run {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(started.elapsed())
}

/// `cargo xtask lab run` of `uname -r`, end to end as a user runs it, restoring against
/// `LAB_SNAPSHOT=off`, paired.
fn lab_run(assets_path: &std::path::Path, pairs: usize) -> anyhow::Result<()> {
    let script = tempfile::NamedTempFile::new()?;
    std::fs::write(script.path(), "uname -r\n")?;
    let path = script.path().to_string_lossy().into_owned();
    let time = |snapshot: &str| {
        timed_lab_run(
            assets_path,
            &[path.as_str()],
            &[(lab_harness::settings::ENV_SNAPSHOT, snapshot)],
        )
    };
    time("on")?; // the shape's snapshot exists from here on
    let (mut warm, mut cold) = (Vec::new(), Vec::new());
    for _ in 0..pairs {
        warm.push(time("on")?);
        cold.push(time("off")?);
    }
    warm.sort();
    cold.sort();
    let (w, c) = (pct(&warm, 50), pct(&cold, 50));
    println!("lab run of `uname -r`, end to end: median {w:.2?} restoring, {c:.2?} booting cold ({:.1}x), {pairs} pairs", c.as_secs_f64() / w.as_secs_f64());
    Ok(())
}

/// The seed's VM part end to end: three lab guests boot (two with the nest image), each host
/// starts a VM on a macvtap, the VMs ping each other, everything stops.
async fn nested(assets: &Assets) -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    let report = lab_scenarios::run("nested/macvtap-bridge", assets).await;
    let took = started.elapsed();
    anyhow::ensure!(
        report.passed,
        "nested/macvtap-bridge failed: {:?}",
        report
            .error
            .or_else(|| Some(format!("{:?}", report.checks)))
    );
    let accel = report
        .checks
        .iter()
        .find(|c| c.name == "inner accelerator")
        .map(|c| c.observed.clone())
        .unwrap_or_default();
    let nest = assets
        .nest
        .as_ref()
        .map(|n| n.size as f64 / 1048576.0)
        .unwrap_or_default();
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
    // apt on the lab's cache (the package lists stay warm: only layers and .debs go cold).
    let apt = assets.apt()?;
    let cold_cache = tempfile::tempdir()?;
    let layer_in = |cache: &std::path::Path| {
        lab_rootfs::layers::packages(&apt, &packages, &assets.image.path, cache)
    };
    let (layer, cold) = timed(|| layer_in(cold_cache.path()))?;
    let (_, warm) = timed(|| layer_in(cold_cache.path()))?;
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

    let with = Extras {
        packages,
        dir: Some(dir.path().to_path_buf()),
        ..Extras::default()
    };
    let (mut plain, mut extra) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        plain.push(boot_to_ready(rt, || Ok(assets.vm(&format!("plain{i}"))))?.0);
        extra.push(
            boot_to_ready(rt, || {
                Ok(assets.vm_with(&format!("extras{i}"), &with, Default::default())?)
            })?
            .0,
        );
    }
    plain.sort();
    extra.sort();
    let (p, e) = (pct(&plain, 50), pct(&extra, 50));
    println!("boot to agent ready with those extras: median {e:.2?} against {p:.2?} plain ({:.2}x), {pairs} pairs", e.as_secs_f64() / p.as_secs_f64());
    Ok(())
}

/// Inner VMs in a nest guest restored from its snapshot (which holds the saved inner VM):
/// `rounds` booted and `rounds` restored, alternately, each from its macvtap's creation to its
/// agent's answer (and, restored, its resume).
async fn inner_vms(cfg: lab_harness::VmConfig, rounds: usize) -> anyhow::Result<()> {
    use lab_harness::nest::{InnerSpec, InnerVm};
    let host = Vm::boot(cfg).await?;
    let (mut booted, mut restored) = (Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let mut spec = InnerSpec::new(&format!("vm{round}"), "macvtap0");
        spec.restore = round % 2 == 1;
        let vm = InnerVm::start(&host, spec).await?;
        anyhow::ensure!(
            vm.restored() == (round % 2 == 1),
            "inner VM {round}: restored {} ({:?}); the nest guest holds no saved VM?",
            vm.restored(),
            vm.restore_failure()
        );
        if vm.restored() {
            &mut restored
        } else {
            &mut booted
        }
        .push(vm.boot_time());
        vm.stop().await?;
    }
    host.shutdown().await?;
    booted.sort();
    restored.sort();
    let (b, r) = (pct(&booted, 50), pct(&restored, 50));
    println!(
        "inner VM (KVM in the nest guest): booted median {b:.2?}, restored from the nest's saved VM median {r:.2?} ({:.1}x), {rounds} each",
        b.as_secs_f64() / r.as_secs_f64().max(1e-9)
    );
    Ok(())
}

/// Boots the guest `cfg` makes, from before `cfg` runs to the agent's answer, and shuts it
/// down; how long it took and how it came up.
fn boot_to_ready(
    rt: &tokio::runtime::Runtime,
    cfg: impl FnOnce() -> anyhow::Result<lab_harness::VmConfig>,
) -> anyhow::Result<(Duration, lab_harness::BootKind)> {
    let started = Instant::now();
    let mut cfg = cfg()?;
    cfg.policy.boot_attempts = 1;
    let vm = block(rt, Vm::boot(cfg))??;
    let took = started.elapsed();
    let kind = vm.boot_kind().clone();
    block(rt, vm.shutdown())??;
    Ok((took, kind))
}

fn timed<T, E: Into<anyhow::Error>>(
    f: impl FnOnce() -> Result<T, E>,
) -> anyhow::Result<(T, Duration)> {
    let started = Instant::now();
    let out = f().map_err(Into::into)?;
    Ok((out, started.elapsed()))
}

pub(crate) fn pct<T: Copy + Default>(sorted: &[T], p: usize) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() - 1) * p).div_ceil(100)]
}
