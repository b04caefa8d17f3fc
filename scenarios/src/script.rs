//! `cargo xtask lab run FILE.sh`: a user's own script, run as root in `host1` of a fresh LAN.

use std::time::Duration;

use lab_harness::{Assets, Cmd, Lab, PortPolicy, Result, RunOutput};

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

/// Boots the LAN, runs `script` on host1 and powers everything off; returns the script's result.
pub async fn run(assets: &Assets, script: &str, on: &ScriptLan) -> Result<RunOutput> {
    let builder = Lab::builder(assets, "lab-run").ports(PortPolicy { hairpin: on.hairpin, max_macs: None });
    let builder = if on.nest { builder.host_config(assets.nest_vm("host1", 2)?) } else { builder.host("host1") };
    let lab = (2..=on.hosts.max(1)).fold(builder, |b, i| b.host(&format!("host{i}"))).boot().await?;
    lab.number_hosts().await?;
    let out = lab.vm("host1").run(Cmd::script(script).timeout(on.timeout)).await;
    lab.shutdown().await?;
    out
}
