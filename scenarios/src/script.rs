//! `cargo xtask lab run FILE.sh`: a user's own script, run as root in `host1` of a fresh LAN, its
//! output shown while it runs.

use std::time::Duration;

use lab_harness::{Assets, Cmd, Lab, PortPolicy, Result, RunOutput, Vm};

/// The LAN a script runs on.
#[derive(Debug, Clone)]
pub struct ScriptLan {
    /// Guests host1..hostN, numbered 192.168.88.1..N on `eth0`; the script runs on host1.
    pub hosts: u8,
    /// Every switch port reflects frames back out of the port they came in on.
    pub hairpin: bool,
    /// host1 boots the nest image (QEMU, inner kernel and image, KVM) to start VMs of its own.
    pub nest: bool,
    pub timeout: Duration,
}

impl Default for ScriptLan {
    fn default() -> Self {
        Self { hosts: 1, hairpin: false, nest: false, timeout: Duration::from_secs(300) }
    }
}

/// Where the script and its output live in host1.
const SCRIPT: &str = "/run/lab-run.sh";
const OUTPUT: &str = "/run/lab-run.out";
/// How often the output is fetched while the script runs.
const POLL: Duration = Duration::from_millis(250);

/// Boots the LAN, runs `script` on host1 and powers everything off; returns the script's result.
/// Its stdout and stderr go to one stream, as on a terminal: `output` is called with each new
/// piece while the script runs, and the returned result carries all of it as stdout.
pub async fn run(assets: &Assets, script: &str, on: &ScriptLan, mut output: impl FnMut(&[u8])) -> Result<RunOutput> {
    let builder = Lab::builder(assets, "lab-run").ports(PortPolicy { hairpin: on.hairpin, max_macs: None });
    let builder = if on.nest { builder.host_config(assets.nest_vm("host1", 2)?) } else { builder.host("host1") };
    let lab = (2..=on.hosts.max(1)).fold(builder, |b, i| b.host(&format!("host{i}"))).boot().await?;
    lab.number_hosts().await?;
    let host1 = lab.vm("host1");
    host1.write_file(SCRIPT, script.as_bytes().to_vec(), 0o755).await?;
    // The agent answers requests concurrently: the run blocks while the output is read beside it.
    let mut shown = Vec::new();
    let result = {
        let running = host1.run(Cmd::script(format!("exec sh {SCRIPT} >{OUTPUT} 2>&1")).timeout(on.timeout));
        tokio::pin!(running);
        loop {
            tokio::select! {
                done = &mut running => break done,
                () = tokio::time::sleep(POLL) => show_new(host1, &mut shown, &mut output).await,
            }
        }
    };
    show_new(host1, &mut shown, &mut output).await;
    lab.shutdown().await?;
    result.map(|out| RunOutput { stdout: shown, stderr: Vec::new(), ..out })
}

/// Passes on what the script printed beyond what was `shown`, and adds it there.
async fn show_new(host: &Vm, shown: &mut Vec<u8>, output: &mut impl FnMut(&[u8])) {
    let all = host.read_file(OUTPUT).await.unwrap_or_default();
    let new = all.get(shown.len()..).unwrap_or_default();
    if !new.is_empty() {
        output(new);
        shown.extend_from_slice(new);
    }
}
