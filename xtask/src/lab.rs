//! `cargo xtask lab`: experiments in throwaway guests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lab_harness::assets::DIR_IN_GUEST;
use lab_harness::spec::{RawHost, RawLan, RawPort, RawSwitch, Source, Sourced, DEFAULT_SWITCH};
use lab_harness::{Assets, Spec, Topology};

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
    /// Scenarios run at the same time (each boots two or three guests), longest first by the
    /// last run's times; a measurement (`claim/throughput`) runs alone [default: twice the
    /// cores, since scenarios spend much of their time waiting on pings]
    #[arg(long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=256))]
    pub jobs: Option<usize>,
    /// Run only shard K of N (the K-th of every N scenarios in `--list` order), to spread the lab
    /// over CI runners.
    #[arg(long, value_name = "K/N", value_parser = crate::parse_partition)]
    pub partition: Option<(u32, u32)>,
    #[command(flatten)]
    pub provision: crate::provision::ProvisionArgs,
}

#[derive(clap::Subcommand, Debug)]
pub enum LabCommand {
    /// Run a script, or a program from --dir, as root in `host1` (192.168.88.1 on `eth0`) of a
    /// fresh LAN; it can change nothing but the guests. Shows its output (stdout and stderr
    /// apart) while it runs and exits with its exit code (kselftest's 4 is reported as a skip).
    /// A job that prints KTAP (kselftest, KUnit) has each subtest judged in the run's
    /// junit.xml and summary.json; --repeat tells flaky subtests from failing ones.
    ///
    /// Examples:
    ///   cargo xtask lab run examples/seed-containers.sh
    ///   cargo xtask lab run --hosts 2 --package jq,tcpdump my-test.sh
    ///   cargo xtask lab run --dir ./selftests --module bonding -- drivers/net/bonding/bond_macvlan_ipvlan.sh
    ///   cargo xtask lab run --hosts 2 --remote host2 --dir "$(cargo xtask selftests)" -- drivers/net/ping.py
    ///   cargo xtask lab run --repeat 5 my-flaky-test.sh
    #[command(verbatim_doc_comment)]
    Run {
        /// A script file (run by its #! interpreter, else /bin/sh). Leave it out to run a program
        /// given after `--`.
        script: Option<PathBuf>,
        /// Seconds the job may run (at most a week).
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=7 * 24 * 3600))]
        timeout: u64,
        #[command(flatten)]
        lan: LanArgs,
        /// Write the path of this run's directory (captures, consoles, summary.json) to FILE
        /// as soon as it exists: for the GitHub Action, whose `report` output is this run's
        /// and not whichever `runs/latest` names.
        #[arg(long, value_name = "FILE", hide = true)]
        run_dir_to: Option<PathBuf>,
        #[command(flatten)]
        repeats: crate::lab_run::Repeats,
        /// A program and its arguments, started in --dir's copy (/lab) when there is one: a
        /// relative path is taken from there.
        #[arg(last = true, value_name = "PROGRAM")]
        program: Vec<String>,
    },
    /// A root shell (bash, on a real terminal) on `host1` of a fresh LAN; `exit` tears it down.
    ///
    /// Examples:
    ///   cargo xtask lab shell
    ///   cargo xtask lab shell --hosts 2 --hairpin --package tcpdump
    #[command(verbatim_doc_comment)]
    Shell {
        #[command(flatten)]
        lan: LanArgs,
    },
    /// The LAN of a topology file with a root shell on every host: the first host's on this
    /// terminal and, inside tmux, one pane for each other host (elsewhere `lab attach HOST` from
    /// another terminal opens them). `exit` in the first host's shell powers the lab off.
    ///
    /// Examples:
    ///   cargo xtask lab up examples/vlan-trunk.toml
    ///   tmux new-session 'cargo xtask lab up examples/bond.toml'
    #[command(verbatim_doc_comment)]
    Up {
        /// The topology file (see examples/*.toml).
        file: PathBuf,
        /// A directory of this machine, copied to /lab in the first host.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
        /// Do not open tmux panes for the other hosts, even inside tmux.
        #[arg(long)]
        no_panes: bool,
        /// A kernel problem on a guest's console does not fail the run (see `lab run --help`).
        #[arg(long)]
        allow_kernel_splats: bool,
        #[command(flatten)]
        provision: crate::provision::ProvisionArgs,
    },
    /// Boot each topology file's lab, run the checks it carries (`[[check]]`: on a host, a
    /// command's exit status, output or value, or an address reachable or not), print a table
    /// and write JUnit (target/lab/junit-<file>.xml, one test case per check). Fails when any
    /// check does.
    ///
    /// Examples:
    ///   cargo xtask lab test examples/*.toml
    ///   cargo xtask lab test my-routing-lab.toml
    #[command(verbatim_doc_comment)]
    Test {
        /// Topology files, each with at least one [[check]] (see examples/*.toml).
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
        /// A kernel problem on a guest's console does not fail the file (see `lab run --help`).
        #[arg(long)]
        allow_kernel_splats: bool,
        #[command(flatten)]
        provision: crate::provision::ProvisionArgs,
    },
    /// Pull a cable out of the lab a `lab shell` or `lab up` is running, or plug it back in,
    /// from another terminal: the guest sees its carrier go (NO-CARRIER) and frames are dropped
    /// both ways, as when a real cable is cut.
    ///
    /// Examples:
    ///   cargo xtask lab link host2 down
    ///   cargo xtask lab link host1:eth1 up
    #[command(verbatim_doc_comment)]
    Link {
        /// HOST (its eth0) or HOST:NIC, e.g. host2 or host1:eth1.
        target: String,
        /// down pulls the cable, up plugs it in.
        #[arg(value_enum)]
        state: LinkState,
        /// The `lab shell`'s process id, when more than one is running.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Make a cable of the running lab bad, or good again, from another terminal: what is given
    /// replaces the cable's impairment (what is not given is off), both ways; no root, no tc.
    ///
    /// Examples:
    ///   cargo xtask lab set host2 --delay 100ms --jitter 10ms
    ///   cargo xtask lab set host1:eth1 --loss 1% --rate 10mbit
    ///   cargo xtask lab set host2 --clear
    #[command(verbatim_doc_comment)]
    Set {
        /// HOST (its eth0) or HOST:NIC, e.g. host2 or host1:eth1.
        target: String,
        #[command(flatten)]
        cable: crate::steer::CableArgs,
        /// The `lab shell`'s process id, when more than one is running.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// The running lab's ports: each NIC's switch and port, cable up or down, VLANs,
    /// impairment and counters (frames, bytes, drops and why).
    ///
    /// Examples:
    ///   cargo xtask lab show
    ///   cargo xtask lab show host2
    #[command(verbatim_doc_comment)]
    Show {
        /// Only this host.
        host: Option<String>,
        /// The `lab shell`'s process id, when more than one is running.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// The frames of a cable of the lab a `lab shell` or `lab up` is running (or of its whole
    /// first switch, each port an interface), live, as pcapng on stdout, from now on. Several
    /// may run at once; a slow reader loses frames (counted in the stream's statistics block
    /// when the lab ends), never slows the lab.
    ///
    /// Examples:
    ///   cargo xtask lab capture host2 | wireshark -k -i -
    ///   cargo xtask lab capture host2 | tcpdump -n -r - icmp
    ///   cargo xtask lab capture host1:eth1 --vlan 100 > trunk.pcapng
    #[command(verbatim_doc_comment)]
    Capture {
        /// HOST (its eth0) or HOST:NIC; leave it out for every port of the first switch.
        target: Option<String>,
        /// Only frames tagged with this 802.1Q VLAN.
        #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u16).range(1..=4094))]
        vlan: Option<u16>,
        /// The `lab shell`'s process id, when more than one is running.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// What the lab a `lab shell` or `lab up` is running does, from now on, as NDJSON on stdout:
    /// guests up and down, cables pulled and plugged, impairments and policies changed,
    /// addresses learned and forgotten, frames dropped and why, kernel problems, jobs (the
    /// schema: docs/events.md). Every lab also writes them to events.ndjson in its run's
    /// directory.
    ///
    /// Examples:
    ///   cargo xtask lab events
    ///   cargo xtask lab events | jq -c 'select(.event == "dropped")'
    #[command(verbatim_doc_comment)]
    Events {
        /// The `lab shell`'s process id, when more than one is running.
        #[arg(long)]
        pid: Option<u32>,
    },
    /// Another terminal into the lab a `lab shell` is running: a root shell on HOST of it.
    /// `exit` detaches; the lab runs on until its `lab shell` exits.
    ///
    /// Examples:
    ///   cargo xtask lab attach host2
    ///   cargo xtask lab attach host1 --pid 4242
    #[command(verbatim_doc_comment)]
    Attach {
        /// The host to open a shell on: host1..hostN of that lab.
        host: String,
        /// The `lab shell`'s process id, when more than one is running.
        #[arg(long)]
        pid: Option<u32>,
    },
}

/// A cable's state for `lab link`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    Up,
    Down,
}

/// The LAN and what host1 gets beyond the base image; shared by `lab run` and `lab shell`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LanArgs {
    /// Guests on the LAN: host1 runs the job, host2..hostN (192.168.88.2..N) are there to be
    /// reached.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub hosts: u8,
    /// Switch ports reflect frames back out of the port they came in on (VEPA needs this).
    #[arg(long)]
    pub hairpin: bool,
    /// host1 boots the nest image: QEMU at /nest/bin/qemu-system-x86_64, an inner kernel and
    /// image under /nest/inner, KVM loaded where the CPU allows (see examples/seed-vm.sh).
    #[arg(long)]
    pub nest: bool,
    /// Debian 12 packages for host1, with their dependencies (repeat it, or separate names with
    /// commas), e.g. `--package jq,tcpdump`.
    #[arg(long = "package", value_name = "NAME", value_delimiter = ',')]
    pub packages: Vec<String>,
    /// Kernel modules host1 loads at boot, with what they need (repeat it, or use commas), e.g.
    /// `--module bonding`. Every module can also be `modprobe`d from inside.
    #[arg(long = "module", value_name = "NAME", value_delimiter = ',')]
    pub modules: Vec<String>,
    /// A directory with an out-of-tree kernel module's source (a Kbuild saying `obj-m :=
    /// NAME.o`): built on this machine against the guests' kernel (Debian's headers are fetched
    /// on first use; make and gcc are needed) and insmod'ed in host1 after --module. The .ko
    /// files are in /lab-modules too. Repeat it for more.
    #[arg(long = "module-source", value_name = "DIR")]
    pub module_sources: Vec<PathBuf>,
    /// A directory of this machine, copied to /lab in host1 (the job's working directory).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// host1's virtual CPUs (default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=i64::from(lab_harness::config::MAX_CPUS)))]
    pub cpus: Option<u32>,
    /// host1's memory in MiB (default 256; with --nest 1024: 512, and 256 for each of the two
    /// VMs it may run).
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u32).range(i64::from(lab_harness::config::MIN_MEMORY_MIB)..=i64::from(lab_harness::config::MAX_MEMORY_MIB)))]
    pub memory: Option<u32>,
    /// host1's NICs, eth0..eth(N-1), each on its own switch port with its own cable (for a
    /// bond: `--nics 2 --module bonding`). Only eth0 is numbered (192.168.88.1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=lab_harness::assets::MAX_NICS as i64))]
    pub nics: Option<u8>,
    /// A kernel problem on a guest's console (a WARN, a BUG, an Oops, KASAN, UBSAN, an RCU
    /// stall, a hung task) does not fail the run: for a job that provokes one on purpose.
    #[arg(long)]
    pub allow_kernel_splats: bool,
    /// Scan every guest's kernel with kmemleak when the job is done, and fail on a leak. Needs
    /// a kernel built with CONFIG_DEBUG_KMEMLEAK (--kernel-tree; Debian's have none).
    #[arg(long)]
    pub kmemleak: bool,
    /// Every host reaches every other as root over ssh (`ssh host2 ip -br a`, `scp`), with keys
    /// made for this lab and persistent connections.
    #[arg(long)]
    pub ssh: bool,
    /// The host the selftests' drivers/net tests on host1 use as their remote end, over ssh
    /// (implies --ssh): their variables (NETIF=eth0, LOCAL_V4..., REMOTE_TYPE=ssh,
    /// REMOTE_ARGS=HOST) are in the job's environment and in --dir's drivers/net/net.config,
    /// and both hosts get python3, ethtool, socat, iperf3 and jq, e.g.
    /// `--hosts 2 --remote host2 --dir "$(cargo xtask selftests)" -- drivers/net/ping.py`.
    #[arg(long, value_name = "HOST")]
    pub remote: Option<String>,
    /// The kernel host2..hostN boot (an id of kernels/kernels.toml), whatever host1's is: the
    /// kernel under test (--kernel, --kernel-tree) beside a stable peer.
    #[arg(long, value_name = "ID")]
    pub peer_kernel: Option<String>,
    /// The LAN described in FILE (see examples/*.toml): hosts with their size, NICs, packages,
    /// modules and setup commands; each cable's VLANs and impairment (delay, loss...). Instead
    /// of --hosts, --hairpin, --nest and host1's options; the job runs on its first host, and
    /// --dir goes there.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["hosts", "hairpin", "nest", "packages", "modules", "module_sources", "cpus", "memory", "nics", "ssh", "remote", "peer_kernel"])]
    pub topology: Option<PathBuf>,
    #[command(flatten)]
    pub provision: crate::provision::ProvisionArgs,
}

impl LanArgs {
    /// The lab these flags describe: a topology file's, or `--hosts` guests on one switch,
    /// numbered, host1 with its options. Checked as a file or a builder's would be, each
    /// refusal naming its flag. With it, how many `[[check]]`s its topology file carries.
    fn resolve(&self) -> anyhow::Result<(Spec, usize)> {
        let (spec, checks) = match &self.topology {
            Some(file) => {
                let topology = Topology::load(file)?;
                let spec = topology
                    .spec
                    .named("lab-run")
                    .with_dir_on_first(self.dir.clone());
                (spec, topology.checks.len())
            }
            None => (self.raw().resolve()?, 0),
        };
        Ok((
            spec.with_watch(self.allow_kernel_splats, self.kmemleak),
            checks,
        ))
    }

    /// The flags as a [`RawLan`] (without --topology, which is a file's).
    pub fn raw(&self) -> RawLan {
        let flag = |f: &str| Source::Flag(f.into());
        let mut lab = RawLan::new(flag("--hosts"));
        lab.name = "lab-run".into();
        lab.numbered = true;
        lab.switches.push(RawSwitch {
            name: Sourced::new(DEFAULT_SWITCH.into(), flag("--hosts")),
            port: RawPort {
                hairpin: Some(Sourced::new(self.hairpin, flag("--hairpin"))),
                ..RawPort::default()
            },
        });
        let number = |v: Option<u64>, f: &str| v.map(|v| Sourced::new(v as i64, flag(f)));
        let mut host1 = RawHost::new(Sourced::new("host1".into(), flag("--hosts")));
        host1.nest = self.nest;
        host1.packages.clone_from(&self.packages);
        host1.modules.clone_from(&self.modules);
        host1.module_sources = self
            .module_sources
            .iter()
            .map(|s| Sourced::new(s.clone(), flag("--module-source")))
            .collect();
        host1.dir = self.dir.clone().map(|d| Sourced::new(d, flag("--dir")));
        host1.cpus = number(self.cpus.map(u64::from), "--cpus");
        host1.memory = number(self.memory.map(u64::from), "--memory");
        host1.nics = number(self.nics.map(u64::from), "--nics");
        lab.hosts.push(host1);
        for i in 2..=self.hosts.max(1) {
            let mut peer = RawHost::new(Sourced::new(format!("host{i}"), flag("--hosts")));
            peer.kernel = self
                .peer_kernel
                .clone()
                .map(|k| Sourced::new(k, flag("--peer-kernel")));
            lab.hosts.push(peer);
        }
        lab.ssh = self.ssh.then(|| Sourced::new(true, flag("--ssh")));
        lab.remote = self
            .remote
            .clone()
            .map(|r| Sourced::new(r, flag("--remote")));
        lab
    }

    /// The lab to boot, with what can be checked before provisioning (which takes seconds)
    /// checked. A topology file's checks are not run by `lab run`, `shell` or `up`, which use
    /// the rest of the file: it says so, and that `lab test` runs them.
    pub fn checked(&self) -> anyhow::Result<Spec> {
        let (spec, checks) = self.resolve()?;
        anyhow::ensure!(
            self.peer_kernel.is_none() || self.hosts > 1,
            "--peer-kernel: it names the kernel of host2..hostN, and there is only host1: add --hosts 2"
        );
        if let Some(dir) = &self.dir {
            anyhow::ensure!(
                dir.is_dir(),
                "--dir {}: no such directory on this machine",
                dir.display()
            );
        }
        for source in &self.module_sources {
            lab_kernels::kbuild::check_source(source)?;
        }
        if let (Some(file), 1..) = (&self.topology, checks) {
            crate::ui::status!(
                "lab: the {checks} [[check]](s) of {} are not run here: `cargo xtask lab test {}` runs them",
                file.display(),
                file.display()
            );
        }
        Ok(spec)
    }

    /// What a person reads before the guests boot.
    pub fn describe(&self) -> String {
        if let Some(file) = &self.topology {
            return format!("the LAN of {}", file.display());
        }
        let mut parts = vec![
            format!("{} guest(s)", self.hosts),
            format!("hairpin {}", if self.hairpin { "on" } else { "off" }),
        ];
        if self.nest {
            parts.push("host1 with the nest image".into());
        }
        if let Some(kernel) = &self.peer_kernel {
            parts.push(format!("host2.. on {kernel}"));
        }
        match &self.remote {
            Some(remote) => parts.push(format!("ssh, {remote} the drivers/net remote end")),
            None if self.ssh => parts.push("ssh between the hosts".into()),
            None => {}
        }
        if let Some(nics) = self.nics {
            parts.push(format!("host1 with {nics} NICs"));
        }
        if !self.packages.is_empty() {
            parts.push(format!("packages {}", self.packages.join(",")));
        }
        if !self.modules.is_empty() {
            parts.push(format!("modules {}", self.modules.join(",")));
        }
        for source in &self.module_sources {
            parts.push(format!("the module(s) of {}", source.display()));
        }
        if let Some(dir) = &self.dir {
            parts.push(format!("{} at {DIR_IN_GUEST}", dir.display()));
        }
        parts.join(", ")
    }
}

/// The run's assets (as --kernel, --kernel-tree or `LAB_ASSETS` say), once every other kernel
/// the labs' hosts name is provisioned beside them.
pub fn assets_for(
    specs: &[&Spec],
    provision: &crate::provision::ProvisionArgs,
) -> anyhow::Result<Assets> {
    let assets = Assets::load(&crate::provision::assets_path(provision)?)?;
    let mut kernels: Vec<&lab_harness::spec::Kernel> =
        specs.iter().flat_map(|s| s.kernels()).collect();
    kernels.sort_unstable();
    kernels.dedup();
    for kernel in kernels {
        let args = match kernel {
            lab_harness::spec::Kernel::Id(id) if *id == assets.kernel.id => continue,
            lab_harness::spec::Kernel::Id(id) => crate::provision::ProvisionArgs {
                kernel: Some(id.clone()),
                beside: true,
                ..Default::default()
            },
            lab_harness::spec::Kernel::Tree(dir) => crate::provision::ProvisionArgs {
                kernel_tree: Some(dir.clone()),
                beside: true,
                ..Default::default()
            },
        };
        crate::provision::run(&args)?;
    }
    Ok(assets)
}

/// A host and the kernel it boots, in words (`6.1.0-57-cloud-amd64 (linux-image-…)`).
#[derive(Debug, serde::Serialize)]
pub struct HostKernel {
    pub name: String,
    pub kernel: String,
}

/// Each host of `spec` and the kernel it boots: its own, or the run's (`assets`).
pub fn host_kernels(assets: &Assets, spec: &Spec) -> anyhow::Result<Vec<HostKernel>> {
    spec.hosts()
        .iter()
        .map(|h| {
            let kernel = match &h.kernel {
                Some(k) => assets.for_kernel(k)?.kernel,
                None => assets.kernel.clone(),
            };
            Ok(HostKernel {
                name: h.name.clone(),
                kernel: format!("{} ({})", kernel.release, kernel.origin),
            })
        })
        .collect()
}

pub fn run(args: &LabArgs) -> anyhow::Result<()> {
    match &args.command {
        Some(LabCommand::Run {
            script,
            timeout,
            lan,
            run_dir_to,
            repeats,
            program,
        }) => crate::lab_run::run(&crate::lab_run::RunArgs {
            script: script.as_deref(),
            program,
            timeout: Duration::from_secs(*timeout),
            lan,
            run_dir_to: run_dir_to.as_deref(),
            repeats,
        }),
        Some(LabCommand::Shell { lan }) => crate::shell::run(lan, crate::shell::Panes::None),
        Some(LabCommand::Up {
            file,
            dir,
            no_panes,
            allow_kernel_splats,
            provision,
        }) => {
            let lan = LanArgs {
                topology: Some(file.clone()),
                hosts: 1,
                dir: dir.clone(),
                allow_kernel_splats: *allow_kernel_splats,
                provision: provision.clone(),
                ..LanArgs::default()
            };
            let panes = match std::env::var_os("TMUX") {
                Some(_) if !no_panes => crate::shell::Panes::Tmux,
                _ => crate::shell::Panes::None,
            };
            crate::shell::run(&lan, panes)
        }
        Some(LabCommand::Attach { host, pid }) => crate::attach::run(host, *pid),
        Some(LabCommand::Link { target, state, pid }) => crate::steer::run(
            target,
            lab_proto::attach::Steer::Link {
                up: *state == LinkState::Up,
            },
            *pid,
        ),
        Some(LabCommand::Set { target, cable, pid }) => crate::steer::run(
            target,
            lab_proto::attach::Steer::Impair(cable.cable()?),
            *pid,
        ),
        Some(LabCommand::Capture { target, vlan, pid }) => {
            crate::capture::run(target.as_deref(), *vlan, *pid)
        }
        Some(LabCommand::Events { pid }) => crate::attach::events(*pid),
        Some(LabCommand::Show { host, pid }) => crate::steer::run(
            host.as_deref().unwrap_or_default(),
            lab_proto::attach::Steer::Show,
            *pid,
        ),
        Some(LabCommand::Test {
            files,
            allow_kernel_splats,
            provision,
        }) => crate::lab_test::run(files, *allow_kernel_splats, provision),
        None if args.list => {
            for scenario in lab_scenarios::registry::SCENARIOS {
                if let Some(kernel) = scenario.kernel {
                    println!(
                        "{:<23} (boots {kernel}, whatever --kernel says)",
                        scenario.name
                    );
                }
                for e in (scenario.checks)() {
                    println!(
                        "{:<23} {:<46} expects {:<12} | {}",
                        scenario.name, e.check, e.expected, e.claim
                    );
                }
            }
            Ok(())
        }
        None => run_scenarios(args),
    }
}

/// The captures and consoles a scenario's LAN kept in `run_dir` (`<scenario>-<id>/...`), as
/// paths relative to `run_dir`.
fn scenario_files(run_dir: &Path, scenario: &str) -> Vec<String> {
    let prefix = format!("{}-", scenario.replace('/', "-"));
    let mut files = Vec::new();
    for lan in std::fs::read_dir(run_dir).into_iter().flatten().flatten() {
        let name = lan.file_name().to_string_lossy().into_owned();
        // `mode-bridge-<id>`, not `mode-bridge-extra-<id>`: the rest must be the id.
        if !name
            .strip_prefix(&prefix)
            .is_some_and(|id| id.chars().all(|c| c.is_ascii_digit()))
        {
            continue;
        }
        for file in std::fs::read_dir(lan.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let f = file.file_name().to_string_lossy().into_owned();
            if f.ends_with(".pcap") || f.ends_with(".log") {
                files.push(format!("{name}/{f}"));
            }
        }
    }
    files.sort();
    files
}

/// How long each scenario took when it last ran on this kernel on this machine
/// (`lab-times-<kernel>.json` in the machine's cache, which every lab run of every clone, whole
/// or `--only`, brings up to date): the order to start them in. In the cache rather than the
/// checkout, so that a fresh clone's first run starts the long ones first too (which shortens
/// the lab: docs/measurements.md).
fn times_path(kernel: &str) -> PathBuf {
    crate::cache_location()
        .0
        .join(format!("lab-times-{kernel}.json"))
}

fn last_times(kernel: &str) -> std::collections::BTreeMap<String, f64> {
    std::fs::read(times_path(kernel))
        .ok()
        .and_then(|t| serde_json::from_slice(&t).ok())
        .unwrap_or_default()
}

/// Records this run's times beside the earlier ones of scenarios it did not run.
fn remember_times(kernel: &str, scenarios: &[lab_scenarios::ScenarioReport]) -> anyhow::Result<()> {
    let mut times = last_times(kernel);
    for s in scenarios {
        times.insert(s.name.clone(), (s.took.as_secs_f64() * 10.0).round() / 10.0);
    }
    lab_kernels::write_atomically(&times_path(kernel), &serde_json::to_vec_pretty(&times)?)?;
    Ok(())
}

/// The scenarios of shard `k` of `n`: every n-th, starting at the k-th.
fn shard(names: Vec<&str>, partition: Option<(u32, u32)>) -> Vec<&str> {
    let Some((k, n)) = partition else {
        return names;
    };
    names
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i as u32 % n == k - 1)
        .map(|(_, name)| name)
        .collect()
}

/// Writes the lab's report as `report.json` (and `report-<kernel>.json`), `junit.xml` (a case
/// per check: `lab_scenarios::junit`'s tests hold it to that) and `report.html`, whole files in `target/lab`; returns the path of
/// `report.json`.
fn write_reports(report: &lab_scenarios::Report, assets: &Assets) -> anyhow::Result<PathBuf> {
    // report.json is the latest run; report-<kernel id>.json keeps one per kernel side by side.
    let json = serde_json::to_vec_pretty(report)?;
    let path = crate::lab_dir().join("report.json");
    // Whole files only: another lab run may be writing its report at the same moment.
    lab_kernels::write_atomically(&path, &json)?;
    lab_kernels::write_atomically(
        &crate::lab_dir().join(format!("report-{}.json", assets.kernel.id)),
        &json,
    )?;
    // And with the run's captures and consoles, which are kept after the next run replaces
    // report.json: a kept run says what it found, not only what it saw.
    lab_kernels::write_atomically(&assets.runs.dir.join("report.json"), &json)?;
    // One test case per check, for CI systems to show.
    let junit = lab_scenarios::junit::junit(report);
    let junit_path = crate::lab_dir().join("junit.xml");
    lab_kernels::write_atomically(&junit_path, junit.as_bytes())?;
    // For people: one page, its links relative to it, into this run's directory.
    let run_dir = &assets.runs.dir;
    let relative = run_dir
        .strip_prefix(crate::lab_dir())
        .unwrap_or(run_dir)
        .display()
        .to_string();
    let files = |scenario: &str| scenario_files(run_dir, scenario);
    let html = lab_scenarios::html::render(report, &relative, &files);
    lab_kernels::write_atomically(&crate::lab_dir().join("report.html"), html.as_bytes())?;
    Ok(path)
}

/// Runs the scenarios, prints the table, writes `target/lab/report.json`; fails when any
/// observation differs from its expectation.
fn run_scenarios(args: &LabArgs) -> anyhow::Result<()> {
    // Before provisioning, which takes seconds: a filter that matches nothing is a typo.
    let names = select(args.only.as_deref(), args.partition)?;
    let jobs = args.jobs.unwrap_or(2 * crate::cores()).max(1);
    crate::ui::status!("lab: {} scenario(s), {} at a time", names.len(), jobs);
    crate::hosttools::ensure(crate::hosttools::Purpose::Lab)?;
    let (assets, own_kernel) = provision_for(&names, args)?;
    let before = crate::leaks::HostFootprint::take();
    let alone = |n: &str| lab_scenarios::registry::find(n).is_some_and(|s| s.alone);
    let starts = crate::schedule::order(&names, jobs, &last_times(&assets.kernel.id), alone);
    let assets_of = |name: &str| {
        lab_scenarios::registry::find(name)
            .and_then(|s| s.kernel)
            .and_then(|id| own_kernel.get(id))
            .unwrap_or(&assets)
            .clone()
    };
    let rt = tokio::runtime::Runtime::new()?;
    let scenarios = rt.block_on(crate::interrupt::unless_interrupted(crate::schedule::run(
        starts, jobs, assets_of,
    )));
    // Interrupted: the scenarios' tasks go with the runtime, and their guests with them.
    drop(rt);
    let report = assemble(&assets, scenarios?)?;
    print_table(&report);
    remember_times(&assets.kernel.id, &report.scenarios)?;
    let path = write_reports(&report, &assets)?;
    crate::ui::status!(
        "lab: report written to {} (and report.html, junit.xml beside it)",
        path.display()
    );
    crate::ui::status!(
        "lab: captures, consoles and summaries of each scenario (and the report) are in {}",
        crate::runs::shown(&assets.runs).display()
    );
    let leaks = crate::leaks::HostFootprint::take().leaked_since(&before);
    anyhow::ensure!(
        leaks.is_empty(),
        "the lab left things behind:\n  {}",
        leaks.join("\n  ")
    );
    crate::ui::status!(
        "lab: no QEMU process, no state directory and no host network change left behind"
    );
    let failed = failed(&report);
    anyhow::ensure!(
        failed.is_empty(),
        "observed behaviour differs from expectations in: {}",
        failed.join(", ")
    );
    Ok(())
}

/// The scenarios `--only` and `--partition` pick, in `--list` order; none is an error.
fn select(only: Option<&str>, partition: Option<(u32, u32)>) -> anyhow::Result<Vec<&'static str>> {
    let names: Vec<&str> = lab_scenarios::registry::names()
        .filter(|n| only.is_none_or(|o| n.contains(o)))
        .collect();
    anyhow::ensure!(
        !names.is_empty(),
        "no scenario name contains '{}'; `cargo xtask lab --list` shows them",
        only.unwrap_or_default()
    );
    let count = names.len();
    let names = shard(names, partition);
    anyhow::ensure!(
        !names.is_empty(),
        "shard {:?} of {count} scenarios holds none: use fewer shards",
        partition.unwrap_or_default()
    );
    Ok(names)
}

/// The run's assets, and those of the kernels some scenarios boot whatever the run's is
/// (wireless, say). Those are provisioned first: the run's own goes last, so that
/// `assets.json` is its.
fn provision_for(
    names: &[&str],
    args: &LabArgs,
) -> anyhow::Result<(Assets, BTreeMap<&'static str, Assets>)> {
    let mut own_kernel: BTreeMap<&'static str, Assets> = BTreeMap::new();
    for id in names
        .iter()
        .filter_map(|n| lab_scenarios::registry::find(n)?.kernel)
    {
        if !own_kernel.contains_key(id) {
            let path = crate::provision::run(&crate::provision::ProvisionArgs {
                kernel: Some(id.to_string()),
                ..Default::default()
            })?;
            own_kernel.insert(id, Assets::load(&path)?);
        }
    }
    let mut assets = Assets::load(&crate::provision::run(&args.provision)?)?;
    assets.runs = crate::runs::start("lab")?;
    for other in own_kernel.values_mut() {
        other.runs = assets.runs.clone();
    }
    Ok((assets, own_kernel))
}

/// The lab's report of `scenarios`, with what they ran on.
fn assemble(
    assets: &Assets,
    scenarios: Vec<lab_scenarios::ScenarioReport>,
) -> anyhow::Result<lab_scenarios::Report> {
    let qemu = assets
        .settings
        .qemu_binary()
        .and_then(|q| lab_harness::qemu::version(&q))
        .unwrap_or_default();
    Ok(lab_scenarios::Report {
        kernel: format!("{} ({})", assets.kernel.release, assets.kernel.origin),
        qemu,
        accel: assets.settings.accel().to_string(),
        scenarios,
        boots: lab_harness::boot::tally(),
        image: format!(
            "{} sha256:{}",
            assets.image.path.display(),
            assets.image.sha256
        ),
        packages: assets.image.packages.clone(),
    })
}

/// The table of every check, its pass mark green or red on a terminal, and how guests booted.
fn print_table(report: &lab_scenarios::Report) {
    let colour = crate::ui::colour(&std::io::stdout());
    let mark = |pass: bool| crate::ui::paint(if pass { "yes" } else { "NO" }, pass, colour);
    print!("{}", lab_scenarios::table_marked(report, &mark));
    println!("guests: {}", report.boots);
}

/// The scenarios that did not behave as the seed says.
fn failed(report: &lab_scenarios::Report) -> Vec<&str> {
    report
        .scenarios
        .iter()
        .filter(|s| !s.passed)
        .map(|s| s.name.as_str())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use lab_harness::{Extras, Lab, PortPolicy};

    /// `lab run`'s LAN flags alone.
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        lan: LanArgs,
    }

    fn flags(argv: &[&str]) -> LanArgs {
        Flags::try_parse_from([&["lab run"], argv].concat())
            .unwrap_or_else(|e| panic!("{e}"))
            .lan
    }

    /// The provisioned assets (`cargo xtask test` provisions before the tests run); the
    /// builder only clones them here, nothing boots.
    fn assets() -> Assets {
        Assets::from_env().unwrap_or_else(|e| panic!("{e}"))
    }

    /// One LAN written three ways, flags, a file and builder calls, is one `Spec`.
    #[test]
    fn the_same_lan_from_flags_a_file_and_the_builder_is_the_same_spec() {
        let from_flags = flags(&[
            "--hosts",
            "3",
            "--hairpin",
            "--memory",
            "512",
            "--nics",
            "2",
            "--package",
            "jq",
            "--module",
            "bonding",
        ])
        .checked()
        .expect("valid");
        let file = r#"
[[switch]]
name = "lan"
hairpin = true

[[host]]
name = "host1"
memory = 512
nics = 2
packages = ["jq"]
modules = ["bonding"]

[[host]]
name = "host2"

[[host]]
name = "host3"
"#;
        let from_file = Topology::parse("lan.toml", file)
            .expect("valid")
            .spec
            .named("lab-run");
        let from_builder = Lab::builder(&assets(), "lab-run")
            .host("host1")
            .extras(Extras {
                packages: vec!["jq".into()],
                modules: vec!["bonding".into()],
                ..Extras::default()
            })
            .size(lab_harness::Size {
                memory_mib: Some(512),
                nics: Some(2),
                ..Default::default()
            })
            .host("host2")
            .host("host3")
            .ports(PortPolicy::HAIRPIN)
            .numbered()
            .spec()
            .expect("valid");
        assert_eq!(from_flags, from_file);
        assert_eq!(from_flags, from_builder);
        // And it says what was asked: three numbered hosts, host1's two NICs, hairpin ports.
        assert_eq!(from_flags.hosts().len(), 3);
        assert_eq!(from_flags.hosts()[0].nics.len(), 2);
        assert!(from_flags.segments()[0]
            .ports
            .iter()
            .all(|p| p.policy.hairpin));
        assert_eq!(
            from_flags.hosts()[2].nics[0].addresses[0].to_string(),
            "192.168.88.3/24"
        );
        // Not a vacuous equality: a change on one side shows.
        assert_ne!(
            from_flags,
            flags(&["--hosts", "3"]).checked().expect("valid")
        );
    }

    /// A mistake is refused before anything boots, naming where it was written: a file's
    /// line, a flag, a builder call.
    #[test]
    fn mistakes_are_refused_with_their_source_from_a_file_the_flags_and_the_builder() {
        let file = Topology::parse(
            "bad.toml",
            "[[host]]\nname = \"a\"\n\n[[host]]\nname = \"a\"\n",
        )
        .expect_err("two hosts called a");
        assert_eq!(
            file.to_string(),
            "bad.toml:5: host \"a\" twice (the first at bad.toml:2)"
        );
        let dir = flags(&["--dir", "/no/such/dir"])
            .checked()
            .expect_err("no such dir");
        assert_eq!(
            dir.to_string(),
            "--dir: /no/such/dir: no such directory on this machine"
        );
        let source = flags(&["--module-source", "/no/such/module"])
            .checked()
            .expect_err("no such dir");
        assert!(
            source.to_string().starts_with("--module-source: "),
            "{source}"
        );
        let builder = Lab::builder(&assets(), "t")
            .host("a")
            .host("a")
            .spec()
            .expect_err("twice");
        assert_eq!(
            builder.to_string(),
            "LabBuilder::host(\"a\"): host \"a\" twice (the first at LabBuilder::host(\"a\"))"
        );
        let vlan = Lab::builder(&assets(), "t")
            .host("a")
            .ports(PortPolicy {
                max_macs: Some(0),
                ..PortPolicy::default()
            })
            .spec()
            .expect_err("a cap of 0");
        assert!(
            vlan.to_string().starts_with("LabBuilder::ports(")
                && vlan.to_string().contains("max_macs = 0 is out of range"),
            "{vlan}"
        );
        let kernel = Lab::builder(&assets(), "t")
            .host("a")
            .with(|h| {
                h.kernel = Some(lab_harness::spec::Sourced::new(
                    "debian-5".into(),
                    Source::Call("with(kernel)".into()),
                ))
            })
            .spec()
            .expect_err("no such kernel");
        assert!(
            kernel
                .to_string()
                .contains("is no kernel of kernels/kernels.toml"),
            "{kernel}"
        );
    }

    #[test]
    fn shards_split_the_scenarios_between_them() {
        let names = vec!["a", "b", "c", "d", "e"];
        assert_eq!(shard(names.clone(), Some((1, 2))), ["a", "c", "e"]);
        assert_eq!(shard(names.clone(), Some((2, 2))), ["b", "d"]);
        assert_eq!(shard(names.clone(), None), names);
    }
}
