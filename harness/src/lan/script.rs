//! `cargo xtask lab run` and `lab shell`: a user's own script or program, run as root in `host1`
//! of a fresh LAN, its output shown while it runs.

use std::time::Duration;

use crate::assets::DIR_IN_GUEST;
use crate::lan::topology::Topology;
use crate::{Assets, Cmd, Extras, Lab, PortPolicy, Result, RunOutput, Stream};

/// The LAN a job runs on.
#[derive(Debug, Clone)]
pub struct ScriptLan {
    /// Guests host1..hostN, numbered 192.168.88.1..N on `eth0`; the job runs on host1.
    pub hosts: u8,
    /// Every switch port reflects frames back out of the port they came in on.
    pub hairpin: bool,
    /// host1 boots the nest image (QEMU, inner kernel and image, KVM) to start VMs of its own.
    pub nest: bool,
    pub timeout: Duration,
    /// What host1 gets beyond the base image: packages, modules, a directory, its size.
    pub extras: Extras,
    /// A kernel problem on a guest's console does not fail the run
    /// ([`crate::Policy::allow_splats`]).
    pub allow_splats: bool,
    /// Every guest's kernel is scanned with kmemleak when the job is done, and a leak fails
    /// the run ([`crate::Policy::kmemleak`]); a kernel without kmemleak is refused first.
    pub kmemleak: bool,
    /// The LAN from a file instead ([`Topology`]): `hosts`, `hairpin`, `nest` and `extras`
    /// are not used, and the job runs on its first host.
    pub topology: Option<Topology>,
}

impl ScriptLan {
    /// The host the job runs on.
    pub fn first_host(&self) -> String {
        self.topology
            .as_ref()
            .and_then(|t| t.names().first().map(|n| n.to_string()))
            .unwrap_or_else(|| "host1".into())
    }
}

impl Default for ScriptLan {
    fn default() -> Self {
        Self {
            hosts: 1,
            hairpin: false,
            nest: false,
            timeout: Duration::from_secs(300),
            extras: Extras::default(),
            allow_splats: false,
            kmemleak: false,
            topology: None,
        }
    }
}

/// What every guest's kernel is watched for: splats (unless allowed) and, asked for, leaks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelWatch {
    pub allow_splats: bool,
    pub kmemleak: bool,
}

impl KernelWatch {
    fn apply(self, cfg: &mut crate::VmConfig) {
        cfg.policy.allow_splats = self.allow_splats;
        cfg.policy.kmemleak = self.kmemleak;
        if self.kmemleak {
            cfg.boot
                .extra_cmdline
                .push(crate::kmemleak::CMDLINE.to_string());
        }
    }
}

/// What runs on host1.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// A script's text: run through its `#!` interpreter if it has one, else by `/bin/sh`.
    Script(String),
    /// A program and its arguments, started in [`crate::Extras::dir`]'s copy (`/lab`) when
    /// there is one: a relative path is taken from there, and its `#!` line is honoured.
    Program(Vec<String>),
}

/// Where a script is written in host1.
const SCRIPT: &str = "/run/lab-run.sh";

/// Boots the LAN `on` describes, every guest numbered, host1 with its extras. Checks the extras
/// (unknown package or module, missing directory, too little memory) before anything boots.
pub async fn boot(assets: &Assets, run: &str, on: &ScriptLan) -> Result<Lab> {
    if on.kmemleak {
        assets.check_kmemleak()?;
    }
    let watch = KernelWatch {
        allow_splats: on.allow_splats,
        kmemleak: on.kmemleak,
    };
    if let Some(topology) = &on.topology {
        return boot_topology(assets, run, topology, on.extras.dir.as_deref(), watch).await;
    }
    let mut host1 = if on.nest {
        assets.nest_vm("host1", 2)?
    } else {
        assets.vm("host1")
    };
    assets.apply(&mut host1, &on.extras)?;
    watch.apply(&mut host1);
    let builder = Lab::builder(assets, run)
        .ports(PortPolicy {
            hairpin: on.hairpin,
            max_macs: None,
            ..PortPolicy::default()
        })
        .host_config(host1);
    let lab = (2..=on.hosts.max(1))
        .fold(builder, |b, i| {
            b.host_with(&format!("host{i}"), |c| watch.apply(c))
        })
        .boot()
        .await?;
    lab.number_hosts().await?;
    Ok(lab)
}

/// Boots the LAN `topology` describes: its hosts (the first with `dir`), each numbered on eth0
/// once the LAN has settled, then each link's port and impairment, then each host's `setup`
/// commands in order. Sizes, packages and modules are checked before anything boots.
pub async fn boot_topology(
    assets: &Assets,
    run: &str,
    topology: &Topology,
    dir: Option<&std::path::Path>,
    watch: KernelWatch,
) -> Result<Lab> {
    let mut builder = Lab::builder(assets, run);
    for (i, host) in topology.hosts.iter().enumerate() {
        let name = host.name.get_ref();
        let mut cfg = if host.nest {
            assets.nest_vm(name, 2)?
        } else {
            assets.vm(name)
        };
        let extras = Extras {
            packages: host.packages.clone(),
            modules: host.modules.clone(),
            module_sources: host
                .module_sources
                .iter()
                .map(|s| s.get_ref().clone())
                .collect(),
            // The user's directory goes where the job runs: the first host.
            dir: dir.filter(|_| i == 0).map(std::path::Path::to_path_buf),
            cpus: host.cpus.as_ref().map(|c| *c.get_ref()),
            memory_mib: host.memory.as_ref().map(|m| *m.get_ref()),
            nics: host.nics.as_ref().map(|n| *n.get_ref()),
        };
        assets.apply(&mut cfg, &extras)?;
        watch.apply(&mut cfg);
        builder = builder.host_config(cfg);
    }
    let lab = builder.boot().await?;
    lab.number_hosts().await?;
    for link in &topology.links {
        let bad = |(at, why): (usize, String)| {
            crate::Error::invalid(
                format!("line {}: {why}", topology.line(at)),
                "fix the topology file",
            )
        };
        let host = link.host.get_ref();
        lab.set_nic_policy(host, link.nic, link.policy().map_err(bad)?)?;
        lab.set_nic_impairment(host, link.nic, link.impairment().map_err(bad)?)?;
    }
    for host in &topology.hosts {
        let vm = lab.vm(host.name.get_ref());
        for command in &host.setup {
            vm.succeed(Cmd::script(command.clone())).await?;
        }
    }
    Ok(lab)
}

/// Boots the LAN, runs `job` on host1 and powers everything off; returns the job's result.
/// `output` is called with each piece of output, stdout and stderr apart, while the job runs:
/// all of it, in order (a slow `output` slows the job), and the result's `stdout` and `stderr`
/// are empty ([`crate::Vm::run_streaming`]).
pub async fn run(
    assets: &Assets,
    job: &Job,
    on: &ScriptLan,
    output: impl FnMut(Stream, &[u8]),
) -> Result<RunOutput> {
    let lab = boot(assets, "lab-run", on).await?;
    let host1 = lab.vm(&on.first_host());
    let cmd = match job {
        Job::Script(text) => {
            host1
                .write_file(SCRIPT, text.as_bytes().to_vec(), 0o755)
                .await?;
            // The kernel honours a `#!` line; a script without one is the shell's.
            if text.starts_with("#!") {
                Cmd::argv([SCRIPT])
            } else {
                Cmd::argv(["/bin/sh", SCRIPT])
            }
        }
        Job::Program(argv) => Cmd::argv(argv.clone()),
    };
    let cwd = if on.extras.dir.is_some() {
        DIR_IN_GUEST
    } else {
        "/root"
    };
    let result = host1
        .run_streaming(cmd.cwd(cwd).timeout(on.timeout), output)
        .await;
    lab.shutdown().await?;
    result
}
