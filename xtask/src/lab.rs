//! `cargo xtask lab`: experiments in throwaway guests.

use std::path::PathBuf;

use lab_harness::Assets;
use lab_scenarios::script::ScriptLan;

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: Option<LabCommand>,
    /// Only the scenarios whose name contains this (e.g. `mode/`).
    #[arg(long)]
    pub only: Option<String>,
    /// List the scenarios and the seed claims they check, then exit.
    #[arg(long)]
    pub list: bool,
    /// Scenarios run at the same time (each boots two guests).
    #[arg(long, default_value_t = 2)]
    pub jobs: usize,
    #[command(flatten)]
    pub provision: crate::provision::ProvisionArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Run a shell script as root inside a throwaway guest (`host1`, 192.168.88.1 on `eth0`); it
    /// can change nothing but the guests. Prints its output and exits with its status.
    Run {
        script: PathBuf,
        /// Guests on the LAN: host1 runs the script, host2..hostN (192.168.88.2..N) are there to
        /// be reached.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
        hosts: u8,
        /// Switch ports reflect frames back out of the port they came in on (VEPA needs this).
        #[arg(long)]
        hairpin: bool,
        /// host1 boots the nest image: QEMU at /nest/bin/qemu-system-x86_64, an inner kernel and
        /// image under /nest/inner, KVM loaded where the CPU allows (see examples/seed-vm.sh).
        #[arg(long)]
        nest: bool,
        /// Seconds the script may run.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[command(flatten)]
        provision: crate::provision::ProvisionArgs,
    },
}

pub fn run(args: &LabArgs) -> anyhow::Result<()> {
    match &args.command {
        Some(LabCommand::Run { script, hosts, hairpin, nest, timeout, provision }) => {
            let on = ScriptLan { hosts: *hosts, hairpin: *hairpin, nest: *nest, timeout: std::time::Duration::from_secs(*timeout) };
            run_script(script, on, provision)
        }
        None if args.list => {
            for e in lab_scenarios::expectations::EXPECTATIONS {
                println!("{:<22} {:<46} expects {:<12} | {}", e.scenario, e.check, e.expected, e.claim);
            }
            Ok(())
        }
        None => run_scenarios(args),
    }
}

/// Runs the scenarios, prints the table, writes `target/lab/report.json`; fails when any
/// observation differs from its expectation.
fn run_scenarios(args: &LabArgs) -> anyhow::Result<()> {
    crate::hosttools::ensure_qemu()?;
    let assets = Assets::load(&crate::provision::run(&args.provision)?)?;
    let names: Vec<&str> = lab_scenarios::expectations::scenario_names()
        .into_iter()
        .filter(|n| args.only.as_deref().is_none_or(|o| n.contains(o)))
        .collect();
    anyhow::ensure!(!names.is_empty(), "no scenario matches; `cargo xtask lab --list` shows them");
    let before = crate::leaks::Snapshot::take();
    let rt = tokio::runtime::Runtime::new()?;
    let scenarios = rt.block_on(async {
        let permits = std::sync::Arc::new(tokio::sync::Semaphore::new(args.jobs.max(1)));
        let mut set = tokio::task::JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let (name, assets, permits) = (name.to_string(), assets.clone(), permits.clone());
            set.spawn(async move {
                let _permit = permits.acquire().await;
                eprintln!("lab: running {name}");
                (i, lab_scenarios::run(&name, &assets).await)
            });
        }
        let mut done = set.join_all().await;
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, r)| r).collect::<Vec<_>>()
    });
    let qemu = lab_harness::qemu::find_binary().and_then(|q| lab_harness::qemu::version(&q)).unwrap_or_default();
    let report = lab_scenarios::Report {
        kernel: format!("{} ({})", assets.kernel.release, assets.kernel.origin),
        qemu,
        accel: lab_harness::Accel::choose()?.to_string(),
        scenarios,
    };
    print!("{}", lab_scenarios::table(&report));
    // report.json is the latest run; report-<kernel id>.json keeps one per kernel side by side.
    let json = serde_json::to_vec_pretty(&report)?;
    let path = crate::lab_dir().join("report.json");
    std::fs::write(&path, &json)?;
    std::fs::write(crate::lab_dir().join(format!("report-{}.json", assets.kernel.id)), &json)?;
    eprintln!("lab: report written to {}", path.display());
    let leaks = crate::leaks::Snapshot::take().leaked_since(&before);
    anyhow::ensure!(leaks.is_empty(), "the lab left things behind:\n  {}", leaks.join("\n  "));
    eprintln!("lab: no QEMU process, no state directory and no host network change left behind");
    let failed: Vec<&str> = report.scenarios.iter().filter(|s| !s.passed).map(|s| s.name.as_str()).collect();
    anyhow::ensure!(failed.is_empty(), "observed behaviour differs from expectations in: {}", failed.join(", "));
    Ok(())
}

fn run_script(script: &PathBuf, on: ScriptLan, provision: &crate::provision::ProvisionArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(script).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", script.display()))?;
    crate::hosttools::ensure_qemu()?;
    let assets = Assets::load(&crate::provision::run(provision)?)?;
    let rt = tokio::runtime::Runtime::new()?;
    eprintln!(
        "lab: running {} on host1 (192.168.88.1) of {} guest(s), hairpin {}{}",
        script.display(),
        on.hosts,
        if on.hairpin { "on" } else { "off" },
        if on.nest { ", host1 with the nest image" } else { "" }
    );
    let timeout = on.timeout;
    use std::io::Write;
    let show = |bytes: &[u8]| {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(bytes).and_then(|()| stdout.flush());
    };
    let out = rt.block_on(lab_scenarios::script::run(&assets, &text, &on, show))?;
    if out.timed_out {
        anyhow::bail!("the script timed out after {timeout:?}");
    }
    std::process::exit(out.code.unwrap_or(1));
}
