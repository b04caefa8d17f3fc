//! `cargo xtask lab`: experiments in throwaway guests.

use std::path::PathBuf;

use lab_harness::{Assets, Cmd, Vm};

#[derive(clap::Args, Debug)]
pub struct LabArgs {
    #[command(subcommand)]
    pub command: LabCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Run a shell script as root inside a throwaway guest, streaming nothing of yours: the guest
    /// is the only thing it can change. Prints its output and exits with its status.
    Run {
        script: PathBuf,
        /// Seconds the script may run.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        #[command(flatten)]
        provision: crate::provision::ProvisionArgs,
    },
}

pub fn run(args: &LabArgs) -> anyhow::Result<()> {
    match &args.command {
        LabCommand::Run { script, timeout, provision } => run_script(script, *timeout, provision),
    }
}

fn run_script(script: &PathBuf, timeout: u64, provision: &crate::provision::ProvisionArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(script).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", script.display()))?;
    crate::hosttools::ensure_qemu()?;
    let assets = Assets::load(&crate::provision::run(provision)?)?;
    let rt = tokio::runtime::Runtime::new()?;
    let out = rt.block_on(async {
        let vm = Vm::boot(assets.vm("host1")).await?;
        eprintln!("lab: {} booted in {:.2?}; running {}", vm.name(), vm.boot_time(), script.display());
        let out = vm.run(Cmd::script(text).timeout(std::time::Duration::from_secs(timeout))).await;
        let _ = vm.shutdown().await;
        out
    })?;
    use std::io::Write;
    std::io::stdout().write_all(&out.stdout)?;
    std::io::stderr().write_all(&out.stderr)?;
    if out.timed_out {
        anyhow::bail!("the script timed out after {timeout} s");
    }
    std::process::exit(out.code.unwrap_or(1));
}
