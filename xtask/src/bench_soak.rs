//! `cargo xtask bench --soak N`: many guests, 8 at a time, each running a command, cold and
//! restored; counts hangs, fallbacks and leftovers.

use std::time::{Duration, Instant};

use lab_harness::{Assets, BootKind, Vm};

/// Guests at once in a soak: more than the 2 cores, as a loaded CI runner has.
const AT_ONCE: usize = 8;

/// What a soak saw.
#[derive(Debug, Default)]
struct Soak {
    guests: usize,
    /// Boots or commands that did not finish (a boot past its deadline, a command that failed).
    failed: Vec<String>,
    fallbacks: usize,
    slowest: Duration,
}

/// `n` guests in rounds of [`AT_ONCE`], each booted (restored, or cold with `store` `None`),
/// asked a command, powered off; then the leak check.
pub fn soak(
    rt: &tokio::runtime::Runtime,
    assets: &Assets,
    n: usize,
    store: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let mode = if store.is_some() { "restored" } else { "cold" };
    let before = crate::leaks::HostFootprint::take();
    let started = Instant::now();
    let mut soak = Soak::default();
    for round in 0..n.div_ceil(AT_ONCE) {
        let results = crate::bench::block(rt, async {
            let mut set = tokio::task::JoinSet::new();
            for i in round * AT_ONCE..((round + 1) * AT_ONCE).min(n) {
                let mut cfg = assets.vm(&format!("soak{i}"));
                cfg.snapshots = store.map(std::path::Path::to_path_buf);
                cfg.policy.boot_attempts = 1;
                set.spawn(one(cfg));
            }
            set.join_all().await
        })?;
        for result in results {
            soak.guests += 1;
            match result {
                Ok((took, kind)) => {
                    soak.slowest = soak.slowest.max(took);
                    soak.fallbacks += usize::from(matches!(kind, BootKind::Fallback(_)));
                }
                Err(e) => soak
                    .failed
                    .push(e.to_string().lines().next().unwrap_or_default().to_string()),
            }
        }
    }
    let leftovers = crate::leaks::HostFootprint::take().leaked_since(&before);
    println!(
        "soak, {mode}: {} guests {AT_ONCE} at a time in {:.0?}, each booted, asked `uname -r; ip -br link` and powered off: \
         {} failed or hung, {} fell back to a cold boot, {} leftovers; slowest boot {:.2?}",
        soak.guests,
        started.elapsed(),
        soak.failed.len(),
        soak.fallbacks,
        leftovers.len(),
        soak.slowest,
    );
    for failure in soak.failed.iter().take(5) {
        println!("  failed: {failure}");
    }
    for leftover in leftovers.iter().take(5) {
        println!("  left behind: {leftover}");
    }
    anyhow::ensure!(
        soak.failed.is_empty() && leftovers.is_empty(),
        "the {mode} soak had failures or leftovers"
    );
    Ok(())
}

async fn one(cfg: lab_harness::VmConfig) -> lab_harness::Result<(Duration, BootKind)> {
    let started = Instant::now();
    let vm = Vm::boot(cfg).await?;
    let took = started.elapsed();
    let kind = vm.boot_kind().clone();
    vm.succeed("uname -r; ip -br link").await?;
    vm.shutdown().await?;
    Ok((took, kind))
}
