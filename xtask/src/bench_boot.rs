//! `cargo xtask bench --only boot`: a cold boot against a bare boot of the same kernel on the
//! same machine (to a static `/init` that powers off at once: the least a boot can take), in
//! interleaved pairs; and where a cold boot's time goes.

use std::time::Duration;

use lab_harness::{Assets, Vm};

/// `pairs` pairs of a bare boot and a cold boot, in turn, each pair's ratio taken on its own so
/// that the machine's drift between pairs does not move it.
pub fn against_bare(
    rt: &tokio::runtime::Runtime,
    assets: &Assets,
    pairs: usize,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let image = dir.path().join("bare.cpio");
    let agent = crate::provision::build_agent(&crate::workspace_root())?;
    std::fs::write(&image, lab_rootfs::bare_image(&agent)?)?;
    // One future for all pairs, stopped by Ctrl-C as a whole: its guests go with it.
    let (mut bare, mut cold) = crate::bench::block(rt, pairs_of_boots(assets, &image, pairs))??;
    let mut ratios: Vec<f64> = cold
        .iter()
        .zip(&bare)
        .map(|(c, b)| c.as_secs_f64() / b.as_secs_f64().max(1e-6))
        .collect();
    bare.sort();
    cold.sort();
    ratios.sort_by(f64::total_cmp);
    let median = |v: &[Duration]| crate::bench::pct(v, 50);
    println!(
        "cold boot against a bare boot of the same kernel ({pairs} pairs, interleaved): {:.2?} against {:.2?}, \
         {:.2}x (pairs {:.2}x-{:.2}x)",
        median(&cold),
        median(&bare),
        crate::bench::pct(&ratios, 50),
        ratios.first().copied().unwrap_or_default(),
        ratios.last().copied().unwrap_or_default(),
    );
    Ok(())
}

/// `pairs` bare boots and cold boots, in turn: their times, pair by pair.
async fn pairs_of_boots(
    assets: &Assets,
    image: &std::path::Path,
    pairs: usize,
) -> lab_harness::Result<(Vec<Duration>, Vec<Duration>)> {
    let (mut bare, mut cold) = (Vec::new(), Vec::new());
    for i in 0..pairs {
        let mut cfg = assets.vm(&format!("bare{i}"));
        cfg.snapshots = None;
        cfg.policy.boot_attempts = 1;
        bare.push(lab_harness::launch::bare_boot(&cfg, image).await?);
        cfg.name = format!("cold{i}");
        let vm = Vm::boot(cfg).await?;
        cold.push(vm.boot_time());
        vm.shutdown().await?;
    }
    Ok((bare, cold))
}

/// Where a cold boot's time goes: QEMU's start and the kernel's decompression (until the
/// kernel's clock starts), the kernel's own start-up (until it runs /init), and /init's work
/// (mounts, modules, the module disk) until the agent answers.
pub fn cold_boot_breakdown(rt: &tokio::runtime::Runtime, assets: &Assets) -> anyhow::Result<()> {
    let mut cfg = assets.vm("breakdown");
    cfg.snapshots = None;
    let booted = async {
        let vm = Vm::boot(cfg).await?;
        let (total, ready) = (vm.boot_time().as_secs_f64(), vm.ready_info().clone());
        let dmesg = vm.succeed("dmesg").await?;
        vm.shutdown().await?;
        Ok::<_, lab_harness::Error>((total, ready, dmesg))
    };
    let (total, ready, dmesg) = crate::bench::block(rt, booted)??;
    let (uptime, modules) = (ready.uptime_secs, ready.modules.len());
    let init_at = dmesg
        .lines()
        .find(|l| l.contains("Run /init as init process"))
        .and_then(printk_secs)
        .unwrap_or(uptime);
    println!(
        "cold boot {total:.2} s: QEMU start, firmware and kernel decompression {:.2} s; kernel start-up to /init {init_at:.2} s; \
         /init (mounts, {modules} modules, the module disk) to the agent's answer {:.2} s",
        (total - uptime).max(0.0),
        (uptime - init_at).max(0.0),
    );
    Ok(())
}

/// `[    1.234567] text` -> 1.234567.
fn printk_secs(line: &str) -> Option<f64> {
    line.trim_start()
        .strip_prefix('[')?
        .split(']')
        .next()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn printk_times_parse() {
        assert_eq!(
            super::printk_secs("[    1.250000] Run /init as init process"),
            Some(1.25)
        );
        assert_eq!(super::printk_secs("no time"), None);
    }
}
