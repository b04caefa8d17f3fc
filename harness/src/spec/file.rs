//! A lab described in a TOML file: its switches, hosts (size, kernel, NICs, addresses, routes,
//! packages, modules, the commands that set them up), cables (a host's NIC to a switch port
//! with its VLANs, or to another host's NIC; either with an impairment), and checks.
//! `lab run --topology FILE`, `lab up FILE` and `lab test FILE` take it; in code,
//! [`Topology::load`] gives its [`Spec`] for [`crate::Lab::boot`].
//!
//! The file is only read here: its tables become a [`RawLan`] whose every part names its line,
//! and [`RawLan::resolve`] checks them as it checks flags and builder calls. So every mistake is
//! named with its line before a guest boots: what the TOML parser finds (an unknown field, a
//! wrong type) in its own words, the rest in the lab's.
//!
//! ```toml
//! [[switch]]
//! name = "left"
//!
//! [[host]]
//! name = "host1"
//! addresses = { eth0 = ["10.0.1.1/24"] }
//! routes = [{ to = "10.0.2.0/24", via = "10.0.1.254" }]
//!
//! [[link]]
//! host = "host1"
//! switch = "left"
//! impair = { delay_ms = 50, loss_percent = 1 }
//!
//! [[check]]
//! host = "host1"
//! reachable = "10.0.2.1"
//! ```

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use super::{RawAt, RawCable, RawEnd, RawHost, RawLan, RawPort, RawRoute, RawSwitch};
use super::{Source, Sourced, Spec, SpecError};
use crate::lan::impair::{Impairment, Loss};

/// A topology file, read and checked: the lab it describes and the checks it carries.
#[derive(Debug, Clone)]
pub struct Topology {
    pub spec: Spec,
    pub checks: Vec<Check>,
}

/// One check of a file's `[[check]]`: on which host, what to do, and what is expected.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    /// As the file names it, else made from what it does.
    pub name: String,
    pub host: String,
    pub probe: Probe,
    /// Where it is written (`file:line`).
    pub source: Source,
}

/// What a check does, and what passes.
#[derive(Debug, Clone, PartialEq)]
pub enum Probe {
    /// `command` (run by the shell) exits with `exit`; with `output`, its stdout contains it;
    /// with `within`, its stdout is a number in that range.
    Run {
        command: String,
        exit: i32,
        output: Option<String>,
        within: Option<(f64, f64)>,
    },
    /// The address answers pings (within a settling time, for ARP and routes).
    Reachable(IpAddr),
    /// The address answers no ping.
    Unreachable(IpAddr),
}

/// The file's tables as TOML gives them.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    /// Every host reaches every other as root over ssh.
    ssh: Option<Spanned<bool>>,
    /// The host the first one's drivers/net tests use as their remote end (implies `ssh`).
    remote: Option<Spanned<String>>,
    #[serde(rename = "switch", default)]
    switches: Vec<FileSwitch>,
    #[serde(rename = "host", default)]
    hosts: Vec<FileHost>,
    #[serde(rename = "link", default)]
    links: Vec<FileLink>,
    #[serde(rename = "check", default)]
    checks: Vec<FileCheck>,
    /// Changes to cables in time: `[[at]] after_ms = 5000, host = "a", link = "down"`.
    #[serde(rename = "at", default)]
    timeline: Vec<Spanned<FileAt>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAt {
    after_ms: Spanned<i64>,
    host: Spanned<String>,
    nic: Option<Spanned<i64>>,
    link: Option<Spanned<String>>,
    impair: Option<Spanned<FileImpair>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSwitch {
    name: Spanned<String>,
    // Its ports' settings, unless a cable's say otherwise. (Written out, not a flattened
    // `FilePort`: serde's `flatten` would let unknown fields through.)
    access: Option<Spanned<i64>>,
    trunk: Option<Spanned<Vec<i64>>>,
    native: Option<Spanned<i64>>,
    hairpin: Option<Spanned<bool>>,
    max_macs: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHost {
    name: Spanned<String>,
    kernel: Option<Spanned<String>>,
    /// A built Linux tree whose kernel it boots; a relative path is relative to the file.
    kernel_tree: Option<Spanned<PathBuf>>,
    memory: Option<Spanned<i64>>,
    cpus: Option<Spanned<i64>>,
    nics: Option<Spanned<i64>>,
    #[serde(default)]
    packages: Vec<String>,
    #[serde(default)]
    modules: Vec<String>,
    /// Directories of out-of-tree modules; a relative path is relative to the file.
    #[serde(default)]
    module_sources: Vec<Spanned<PathBuf>>,
    #[serde(default)]
    nest: bool,
    /// `{ eth0 = ["10.0.1.1/24", "fd01::1/64"] }`.
    addresses: Option<Spanned<BTreeMap<String, Vec<String>>>>,
    #[serde(default)]
    routes: Vec<Spanned<FileRoute>>,
    #[serde(default)]
    forwarding: bool,
    #[serde(default)]
    setup: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoute {
    to: String,
    via: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLink {
    host: Spanned<String>,
    nic: Option<Spanned<i64>>,
    /// The switch it goes to (default: the first).
    switch: Option<Spanned<String>>,
    /// Or another host, with no switch between.
    peer: Option<Spanned<String>>,
    peer_nic: Option<Spanned<i64>>,
    access: Option<Spanned<i64>>,
    trunk: Option<Spanned<Vec<i64>>>,
    native: Option<Spanned<i64>>,
    hairpin: Option<Spanned<bool>>,
    max_macs: Option<Spanned<i64>>,
    impair: Option<Spanned<FileImpair>>,
}

/// A cable's impairment as the file gives it: milliseconds and percentages.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileImpair {
    delay_ms: Option<Spanned<f64>>,
    jitter_ms: Option<Spanned<f64>>,
    loss_percent: Option<Spanned<f64>>,
    /// Losses in bursts (Gilbert–Elliott) instead of one by one.
    bursts: Option<FileBursts>,
    duplicate_percent: Option<Spanned<f64>>,
    reorder_percent: Option<Spanned<f64>>,
    rate_kbit: Option<Spanned<u64>>,
    seed: Option<u64>,
}

/// Gilbert–Elliott loss, in percent: `p` good → bad, `r` bad → good, and the loss in each.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBursts {
    p_percent: f64,
    r_percent: f64,
    #[serde(default)]
    loss_good_percent: f64,
    #[serde(default = "hundred")]
    loss_bad_percent: f64,
}

fn hundred() -> f64 {
    100.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCheck {
    name: Option<String>,
    host: Spanned<String>,
    run: Option<Spanned<String>>,
    reachable: Option<Spanned<String>>,
    unreachable: Option<Spanned<String>>,
    exit: Option<Spanned<i32>>,
    output: Option<String>,
    within: Option<Spanned<Vec<f64>>>,
}

/// A switch port's settings of a `[[switch]]` (its ports' defaults) or a `[[link]]`.
macro_rules! port {
    ($table:expr, $lines:expr) => {
        RawPort {
            access: $table.access.as_ref().map(|v| $lines.sourced(v)),
            trunk: $table.trunk.as_ref().map(|v| $lines.sourced(v)),
            native: $table.native.as_ref().map(|v| $lines.sourced(v)),
            hairpin: $table.hairpin.as_ref().map(|v| $lines.sourced(v)),
            max_macs: $table.max_macs.as_ref().map(|v| $lines.sourced(v)),
        }
    };
}

/// Turns byte offsets of one file into [`Source`]s.
struct Lines {
    file: Arc<str>,
    text: String,
}

impl Lines {
    fn at(&self, at: usize) -> Source {
        Source::Line {
            file: Arc::clone(&self.file),
            line: self.text[..at.min(self.text.len())].matches('\n').count() + 1,
        }
    }

    fn of<T>(&self, v: &Spanned<T>) -> Source {
        self.at(v.span().start)
    }

    fn sourced<T: Clone>(&self, v: &Spanned<T>) -> Sourced<T> {
        Sourced::new(v.get_ref().clone(), self.of(v))
    }
}

impl Topology {
    /// Reads and checks the topology in `path`.
    pub fn load(path: &Path) -> Result<Topology, SpecError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            SpecError::new(
                &Source::Line {
                    file: path.display().to_string().into(),
                    line: 0,
                },
                format!(
                    "cannot read it ({e}); examples/*.toml of macvlan-lab are topology files to start from"
                ),
            )
        })?;
        Self::parse_in(&path.display().to_string(), &text, path.parent())
    }

    /// The topology `text` describes (`file` names it in errors), checked; relative paths are
    /// taken from the working directory.
    pub fn parse(file: &str, text: &str) -> Result<Topology, SpecError> {
        Self::parse_in(file, text, None)
    }

    /// The lab the file describes, as written (for [`RawLan::resolve`], or to compare).
    pub fn raw(file: &str, text: &str, base: Option<&Path>) -> Result<RawLan, SpecError> {
        Ok(read(file, text, base)?.2)
    }

    fn parse_in(file: &str, text: &str, base: Option<&Path>) -> Result<Topology, SpecError> {
        let (parsed, lines, raw) = read(file, text, base)?;
        let spec = raw.resolve()?;
        let checks = parsed
            .checks
            .iter()
            .map(|c| check(c, &lines, &spec))
            .collect::<Result<_, _>>()?;
        Ok(Topology { spec, checks })
    }
}

/// The file parsed, its lines, and the lab it describes as written.
fn read(file: &str, text: &str, base: Option<&Path>) -> Result<(File, Lines, RawLan), SpecError> {
    let lines = Lines {
        file: file.into(),
        text: text.to_string(),
    };
    let parsed: File = toml::from_str(text).map_err(|e| {
        SpecError::new(
            &e.span().map_or(
                Source::Line {
                    file: file.into(),
                    line: 0,
                },
                |s| lines.at(s.start),
            ),
            e.message(),
        )
    })?;
    let raw = to_raw(&parsed, &lines, base.unwrap_or(Path::new("")))?;
    Ok((parsed, lines, raw))
}

/// The file's tables as a [`RawLan`], each part with its line.
fn to_raw(file: &File, lines: &Lines, base: &Path) -> Result<RawLan, SpecError> {
    let mut lab = RawLan::new(Source::Line {
        file: Arc::clone(&lines.file),
        line: 0,
    });
    if file.hosts.is_empty() {
        lab.source = lines.at(0);
        return Err(SpecError::new(
            &lab.source,
            "no [[host]]: a topology needs at least one",
        ));
    }
    // A file that gives no host an address is a flat LAN, numbered as `lab run --hosts`
    // numbers it.
    lab.numbered = file.hosts.iter().all(|h| h.addresses.is_none());
    lab.ssh = file.ssh.as_ref().map(|s| lines.sourced(s));
    lab.remote = file.remote.as_ref().map(|r| lines.sourced(r));
    for s in &file.switches {
        lab.switches.push(RawSwitch {
            name: lines.sourced(&s.name),
            port: port!(s, lines),
        });
    }
    for h in &file.hosts {
        lab.hosts.push(host(h, lines, base));
    }
    for l in &file.links {
        lab.cables.push(link(l, lines)?);
    }
    for at in &file.timeline {
        let a = at.get_ref();
        lab.timeline.push(RawAt {
            source: lines.of(at),
            after_ms: lines.sourced(&a.after_ms),
            host: lines.sourced(&a.host),
            nic: a
                .nic
                .as_ref()
                .map_or(Sourced::new(0, lines.of(&a.host)), |n| lines.sourced(n)),
            link: a.link.as_ref().map(|l| lines.sourced(l)),
            impair: a
                .impair
                .as_ref()
                .map(|i| impairment(i.get_ref(), lines).map(|v| Sourced::new(v, lines.of(i))))
                .transpose()?,
        });
    }
    Ok(lab)
}

fn host(h: &FileHost, lines: &Lines, base: &Path) -> RawHost {
    let mut raw = RawHost::new(lines.sourced(&h.name));
    raw.kernel = h.kernel.as_ref().map(|k| lines.sourced(k));
    raw.kernel_tree = h
        .kernel_tree
        .as_ref()
        .map(|t| Sourced::new(base.join(t.get_ref()), lines.of(t)));
    raw.memory = h.memory.as_ref().map(|v| lines.sourced(v));
    raw.cpus = h.cpus.as_ref().map(|v| lines.sourced(v));
    raw.nics = h.nics.as_ref().map(|v| lines.sourced(v));
    raw.nest = h.nest;
    raw.packages.clone_from(&h.packages);
    raw.modules.clone_from(&h.modules);
    // A relative path is relative to the file's directory.
    raw.module_sources = h
        .module_sources
        .iter()
        .map(|s| Sourced::new(base.join(s.get_ref()), lines.of(s)))
        .collect();
    if let Some(addresses) = &h.addresses {
        for (nic, list) in addresses.get_ref() {
            for a in list {
                raw.addresses
                    .push(Sourced::new((nic.clone(), a.clone()), lines.of(addresses)));
            }
        }
    }
    raw.routes = h
        .routes
        .iter()
        .map(|r| {
            Sourced::new(
                RawRoute {
                    to: r.get_ref().to.clone(),
                    via: r.get_ref().via.clone(),
                },
                lines.of(r),
            )
        })
        .collect();
    raw.forwarding = h.forwarding;
    raw.setup.clone_from(&h.setup);
    raw
}

fn link(l: &FileLink, lines: &Lines) -> Result<RawCable, SpecError> {
    let source = lines.of(&l.host);
    let nic = |n: &Option<Spanned<i64>>| {
        n.as_ref()
            .map_or(Sourced::new(0, source.clone()), |n| lines.sourced(n))
    };
    let to = match (&l.switch, &l.peer) {
        (Some(s), Some(_)) => {
            return Err(SpecError::new(
                &lines.of(s),
                "a cable goes to a switch or to a peer host, not both",
            ))
        }
        (s, None) => {
            if let Some(n) = &l.peer_nic {
                return Err(SpecError::new(
                    &lines.of(n),
                    "peer_nic without peer: name the host the cable goes to",
                ));
            }
            RawEnd::Switch(s.as_ref().map(|s| lines.sourced(s)))
        }
        (None, Some(peer)) => RawEnd::Host {
            host: lines.sourced(peer),
            nic: nic(&l.peer_nic),
        },
    };
    Ok(RawCable {
        host: lines.sourced(&l.host),
        nic: nic(&l.nic),
        to,
        port: port!(l, lines),
        impair: l
            .impair
            .as_ref()
            .map(|i| impairment(i.get_ref(), lines).map(|v| Sourced::new(v, lines.of(i))))
            .transpose()?,
        source,
    })
}

/// The file's milliseconds and percentages as an [`Impairment`]; its ranges are checked with
/// everyone's, by [`Impairment::validate`].
fn impairment(i: &FileImpair, lines: &Lines) -> Result<Impairment, SpecError> {
    let ms = |field: &str, v: &Option<Spanned<f64>>| match v {
        None => Ok(Duration::ZERO),
        Some(v) => Duration::try_from_secs_f64(v.get_ref() / 1000.0).map_err(|_| {
            SpecError::new(
                &lines.of(v),
                format!(
                    "{field} = {} is not a delay: give 0 to {} milliseconds",
                    v.get_ref(),
                    crate::lan::impair::MAX_DELAY.as_millis()
                ),
            )
        }),
    };
    let share = |v: &Option<Spanned<f64>>| v.as_ref().map_or(0.0, |v| v.get_ref() / 100.0);
    let loss = match (&i.bursts, &i.loss_percent) {
        (Some(b), _) => Loss::GilbertElliott {
            p: b.p_percent / 100.0,
            r: b.r_percent / 100.0,
            loss_good: b.loss_good_percent / 100.0,
            loss_bad: b.loss_bad_percent / 100.0,
        },
        (None, Some(_)) => Loss::Random(share(&i.loss_percent)),
        (None, None) => Loss::None,
    };
    let rate_bps = match &i.rate_kbit {
        None => None,
        Some(r) => Some(r.get_ref().checked_mul(1000).ok_or_else(|| {
            SpecError::new(
                &lines.of(r),
                format!(
                    "rate_kbit = {} is out of range: give 1 to {} (kbit/s)",
                    r.get_ref(),
                    crate::lan::impair::MAX_RATE_BPS / 1000
                ),
            )
        })?),
    };
    Ok(Impairment {
        delay: ms("delay_ms", &i.delay_ms)?,
        jitter: ms("jitter_ms", &i.jitter_ms)?,
        loss,
        duplicate: share(&i.duplicate_percent),
        reorder: share(&i.reorder_percent),
        rate_bps,
        seed: i.seed,
    })
}

/// A `[[check]]`, on a host the lab has.
fn check(c: &FileCheck, lines: &Lines, spec: &Spec) -> Result<Check, SpecError> {
    let source = lines.of(&c.host);
    let host = c.host.get_ref();
    if spec.host(host).is_none() {
        let names: Vec<&str> = spec.hosts().iter().map(|h| h.name.as_str()).collect();
        return Err(SpecError::new(
            &source,
            format!(
                "a check on host {host:?}, which no [[host]] names (hosts: {})",
                names.join(", ")
            ),
        ));
    }
    let address = |v: &Spanned<String>| {
        v.get_ref().parse::<IpAddr>().map_err(|_| {
            SpecError::new(
                &lines.of(v),
                format!("{:?} is not an address: give e.g. 10.0.2.1", v.get_ref()),
            )
        })
    };
    let only_run = |what: &str| {
        let extra = [
            c.exit.as_ref().map(|e| lines.of(e)),
            c.within.as_ref().map(|w| lines.of(w)),
            c.output.as_ref().map(|_| source.clone()),
        ];
        match extra.into_iter().flatten().next() {
            Some(at) => Err(SpecError::new(
                &at,
                format!("exit, output and within judge a `run`; a `{what}` check has none"),
            )),
            None => Ok(()),
        }
    };
    let probe = match (&c.run, &c.reachable, &c.unreachable) {
        (Some(run), None, None) => {
            let within = match &c.within {
                None => None,
                Some(w) => match w.get_ref().as_slice() {
                    [lo, hi] if lo <= hi => Some((*lo, *hi)),
                    _ => {
                        return Err(SpecError::new(
                            &lines.of(w),
                            "within = [low, high]: give two numbers, the low one first",
                        ))
                    }
                },
            };
            Probe::Run {
                command: run.get_ref().clone(),
                exit: c.exit.as_ref().map_or(0, |e| *e.get_ref()),
                output: c.output.clone(),
                within,
            }
        }
        (None, Some(to), None) => {
            only_run("reachable")?;
            Probe::Reachable(address(to)?)
        }
        (None, None, Some(to)) => {
            only_run("unreachable")?;
            Probe::Unreachable(address(to)?)
        }
        _ => {
            return Err(SpecError::new(
                &source,
                "a check does one thing: give exactly one of run, reachable and unreachable",
            ))
        }
    };
    let name = c.name.clone().unwrap_or_else(|| match &probe {
        Probe::Run { command, .. } => format!("{host}: {command}"),
        Probe::Reachable(a) => format!("{host} reaches {a}"),
        Probe::Unreachable(a) => format!("{host} does not reach {a}"),
    });
    Ok(Check {
        name,
        host: host.clone(),
        probe,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lan::switch::{PortVlans, VlanSet};

    const GOOD: &str = r#"
[[host]]
name = "host1"
modules = ["8021q"]
setup = ["ip link add link eth0 name eth0.10 type vlan id 10"]

[[host]]
name = "host2"
nics = 2

[[link]]
host = "host1"
trunk = [10, 20]
native = 1
impair = { delay_ms = 50, loss_percent = 1, seed = 7 }

[[link]]
host = "host2"
nic = 1
access = 10
"#;

    /// Two segments and a router between them, each end host on its own.
    const ROUTED: &str = r#"
[[switch]]
name = "left"

[[switch]]
name = "right"

[[host]]
name = "a"
addresses = { eth0 = ["10.0.1.1/24", "fd01::1/64"] }
routes = [{ to = "10.0.2.0/24", via = "10.0.1.254" }, { to = "fd02::/64", via = "fd01::fe" }]

[[host]]
name = "router"
nics = 2
forwarding = true
addresses = { eth0 = ["10.0.1.254/24", "fd01::fe/64"], eth1 = ["10.0.2.254/24", "fd02::fe/64"] }

[[host]]
name = "b"
addresses = { eth0 = ["10.0.2.1/24"] }
routes = [{ to = "default", via = "10.0.2.254" }]

[[link]]
host = "a"
switch = "left"

[[link]]
host = "router"
switch = "left"

[[link]]
host = "router"
nic = 1
switch = "right"

[[link]]
host = "b"
switch = "right"
impair = { delay_ms = 10 }

[[check]]
host = "a"
reachable = "10.0.2.1"
"#;

    fn error(text: &str) -> SpecError {
        Topology::parse("t.toml", text).expect_err("refused")
    }

    fn port_of<'s>(spec: &'s Spec, host: &str, nic: usize) -> &'s super::super::Port {
        let n = &spec.host(host).expect("host").nics[nic];
        &spec.segments()[n.segment].ports[n.port]
    }

    #[test]
    fn a_good_file_gives_hosts_ports_and_impairments() {
        let t = Topology::parse("t.toml", GOOD).expect("good");
        let spec = &t.spec;
        let names: Vec<&str> = spec.hosts().iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["host1", "host2"]);
        let trunk = port_of(spec, "host1", 0);
        assert_eq!(
            trunk.policy.vlans,
            PortVlans::Trunk {
                native: Some(1),
                allowed: VlanSet::of(&[10, 20]).expect("ids")
            }
        );
        assert_eq!(trunk.impairment.delay, Duration::from_millis(50));
        assert_eq!(trunk.impairment.loss, Loss::Random(0.01));
        assert_eq!(
            port_of(spec, "host2", 1).policy.vlans,
            PortVlans::Access(10)
        );
        assert_eq!(port_of(spec, "host2", 0).policy, Default::default());
        // One flat segment, numbered: no host gives an address.
        assert_eq!(spec.segments().len(), 1);
        assert!(spec.numbered());
        assert_eq!(
            spec.host("host2").expect("host2").nics[0].addresses[0].to_string(),
            "192.168.88.2/24"
        );
    }

    #[test]
    fn a_routed_file_gives_segments_addresses_routes_and_checks() {
        let t = Topology::parse("t.toml", ROUTED).expect("good");
        let spec = &t.spec;
        let names: Vec<&str> = spec.segments().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["left", "right"]);
        assert!(!spec.numbered());
        let router = spec.host("router").expect("router");
        assert!(router.forwarding);
        assert_eq!((router.nics[0].segment, router.nics[1].segment), (0, 1));
        let a = spec.host("a").expect("a");
        assert_eq!(a.nics[0].routes.len(), 2);
        assert_eq!(
            a.nics[0].routes[0].to_string(),
            "10.0.2.0/24 via 10.0.1.254"
        );
        let b = spec.host("b").expect("b");
        assert_eq!(b.nics[0].routes[0].to_string(), "default via 10.0.2.254");
        assert_eq!(
            port_of(spec, "b", 0).impairment.delay,
            Duration::from_millis(10)
        );
        assert_eq!(t.checks.len(), 1);
        assert_eq!(t.checks[0].name, "a reaches 10.0.2.1");
        assert_eq!(
            t.checks[0].probe,
            Probe::Reachable("10.0.2.1".parse().expect("ip"))
        );
    }

    #[test]
    fn a_cable_between_two_hosts_is_a_segment_of_two_ports_impaired_once() {
        let text = r#"
[[host]]
name = "a"
nics = 2
[[host]]
name = "b"
[[link]]
host = "a"
nic = 1
peer = "b"
impair = { delay_ms = 5 }
"#;
        let spec = Topology::parse("t.toml", text).expect("good").spec;
        let names: Vec<&str> = spec.segments().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["lan", "a.eth1-b.eth0"]);
        let ports = &spec.segments()[1].ports;
        assert_eq!(ports.len(), 2);
        let delayed = ports.iter().filter(|p| !p.impairment.is_none()).count();
        assert_eq!(
            delayed, 1,
            "each frame crosses the delayed port once: {ports:?}"
        );
        // a's eth0 on the flat LAN is numbered; b's only NIC is on the cable: not numbered.
        assert!(spec.host("b").expect("b").nics[0].addresses.is_empty());
    }

    #[test]
    fn each_mistake_is_refused_naming_its_line() {
        let cases = [
            (
                GOOD.replace("nics = 2", "nicks = 2"),
                9,
                "unknown field `nicks`",
            ),
            (
                GOOD.replace("host = \"host2\"", "host = \"host9\""),
                18,
                "no host is called \"host9\"",
            ),
            (
                GOOD.replace("access = 10", "access = 4095"),
                20,
                "VLAN 4095 is not a VLAN id",
            ),
            (
                GOOD.replace("trunk = [10, 20]", "trunk = [0]"),
                13,
                "VLAN 0 is not a VLAN id",
            ),
            (
                GOOD.replace("loss_percent = 1", "loss_percent = 101"),
                15,
                "loss = 101% is not a share",
            ),
            (
                GOOD.replace("delay_ms = 50", "delay_ms = -5"),
                15,
                "delay_ms = -5 is not a delay",
            ),
            (GOOD.replace("nic = 1", "nic = 2"), 19, "has 2 NIC(s)"),
            (
                GOOD.replace("access = 10", "access = 10\ntrunk = [10]"),
                21,
                "not both",
            ),
            // The same NIC linked twice: the later link would have won.
            (
                format!("{GOOD}\n[[link]]\nhost = \"host1\"\naccess = 5\n"),
                23,
                "a second cable for host1's eth0 (the first is at t.toml:12)",
            ),
            (
                GOOD.replace("access = 10", "access = 10\nnative = 10"),
                21,
                "this port is no trunk",
            ),
            (
                GOOD.replace("trunk = [10, 20]", "trunk = []"),
                13,
                "trunk = [] carries no VLAN",
            ),
            (
                GOOD.replace("delay_ms = 50", "delay_ms = 1e30"),
                15,
                "give 0 to 3600000 milliseconds",
            ),
            (
                GOOD.replace("delay_ms = 50", "delay_ms = 1e10"),
                15,
                "not a delay of at most an hour",
            ),
            (
                GOOD.replace("seed = 7", "rate_kbit = 9223372036854775807"),
                15,
                "rate_kbit = 9223372036854775807 is out of range",
            ),
            (
                GOOD.replace("nics = 2", "nics = 2\nmemory = 4294967295"),
                10,
                "memory = 4294967295 is out of range: give 64 to 65536 (MiB)",
            ),
            (
                GOOD.replace("nics = 2", "nics = 0"),
                9,
                "nics = 0 is out of range",
            ),
            (
                GOOD.replace("access = 10", "access = 10\nmax_macs = 0"),
                21,
                "max_macs = 0 is out of range",
            ),
            (
                GOOD.replace("name = \"host2\"", "name = \"host1\""),
                8,
                "host \"host1\" twice (the first at t.toml:3)",
            ),
            (
                GOOD.replace(
                    "name = \"host2\"",
                    "name = \"host2\"\nkernel = \"debian-9\"",
                ),
                9,
                "kernel = \"debian-9\" is no kernel of kernels/kernels.toml",
            ),
            (
                (0..65)
                    .map(|i| format!("[[host]]\nname = \"h{i}\"\n"))
                    .collect(),
                130,
                "65 hosts: a lab takes at most 64",
            ),
        ];
        for (text, line, says) in cases {
            let e = error(&text);
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(e.line(), Some(line), "{e}");
            assert!(
                e.to_string().starts_with(&format!("t.toml:{line}: ")),
                "{e}"
            );
        }
        assert!(error("").to_string().contains("no [[host]]"));
    }

    #[test]
    fn a_remote_end_gives_the_tests_their_variables_and_both_hosts_their_tools() {
        let spec = Topology::parse(
            "t.toml",
            "remote = \"b\"\n[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\n[[host]]\nname = \"c\"\n",
        )
        .expect("valid")
        .spec;
        assert!(spec.ssh(), "a remote end is reached over ssh");
        assert_eq!(
            spec.net_config().expect("a remote end"),
            "# Written by macvlan-lab: this lab's remote end, over ssh\n\
             NETIF=eth0\nLOCAL_V4=192.168.88.1\nREMOTE_V4=192.168.88.2\n\
             LOCAL_V6=fd00:88::1\nREMOTE_V6=fd00:88::2\nREMOTE_TYPE=ssh\nREMOTE_ARGS=b\n"
        );
        let packages = |h: &str| spec.host(h).expect("host").extras.packages.clone();
        for h in ["a", "b"] {
            assert!(packages(h).contains(&"python3".to_string()), "{h}");
            assert!(packages(h).contains(&"openssh-server".to_string()), "{h}");
        }
        assert!(!packages("c").contains(&"python3".to_string()));
        assert!(packages("c").contains(&"openssh-client".to_string()));
        let ssh = Topology::parse(
            "t.toml",
            "ssh = true\n[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\n",
        )
        .expect("valid")
        .spec;
        assert!(ssh.ssh() && ssh.net_config().is_none());
        for host in ssh.hosts() {
            assert_eq!(host.extras.packages, ["openssh-server", "openssh-client"]);
        }
        let plain = Topology::parse("t.toml", "[[host]]\nname = \"a\"\n")
            .expect("valid")
            .spec;
        assert!(!plain.ssh() && plain.net_config().is_none() && plain.job_env().is_empty());
        assert!(plain.hosts()[0].extras.packages.is_empty());
    }

    #[test]
    fn a_remote_end_that_cannot_be_one_is_refused_naming_its_line() {
        let two = "[[host]]\nname = \"a\"\n[[host]]\nname = \"b\"\n";
        let cases = [
            (format!("remote = \"a\"\n{two}"), "\"a\" is the host the tests run on"),
            (format!("remote = \"z\"\n{two}"), "no host is called \"z\""),
            (
                format!("remote = \"b\"\n{two}addresses = {{ eth0 = [\"10.0.0.2/24\"] }}\n"),
                "share no segment where both have an address",
            ),
            (
                "remote = \"b\"\n[[host]]\nname = \"a\"\naddresses = { eth0 = [\"10.0.0.1/24\"] }\n\
                 [[host]]\nname = \"b\"\naddresses = { eth0 = [\"fd00::2/64\"] }\n"
                    .to_string(),
                "no address family in common",
            ),
        ];
        for (text, words) in cases {
            let e = error(&text);
            assert_eq!(e.line(), Some(1), "{e}");
            assert!(e.to_string().contains(words), "{e}");
        }
    }

    #[test]
    fn a_timeline_is_resolved_in_order_and_its_mistakes_named() {
        let two = "[[host]]\nname = \"a\"\nnics = 2\n[[host]]\nname = \"b\"\n";
        let spec = Topology::parse(
            "t.toml",
            &format!(
                "{two}[[at]]\nafter_ms = 5000\nhost = \"a\"\nnic = 1\nlink = \"down\"\n\
                 [[at]]\nafter_ms = 1000\nhost = \"b\"\nimpair = {{ delay_ms = 100 }}\n"
            ),
        )
        .expect("valid")
        .spec;
        let timeline = spec.timeline();
        assert_eq!(timeline.len(), 2);
        assert_eq!(
            timeline[0].after,
            Duration::from_secs(1),
            "in order of time"
        );
        assert_eq!(timeline[0].host, 1);
        assert!(
            matches!(timeline[0].change, crate::spec::Change::Impair(i) if i.delay == Duration::from_millis(100))
        );
        assert_eq!((timeline[1].host, timeline[1].nic), (0, 1));
        assert_eq!(timeline[1].change, crate::spec::Change::Link(false));
        let at = |body: &str| format!("{two}[[at]]\n{body}\n");
        let cases = [
            (
                at("after_ms = 1\nhost = \"a\"\nlink = \"sideways\""),
                9,
                "link = \"sideways\": give \"down\" or \"up\"",
            ),
            (at("after_ms = 1\nhost = \"a\""), 6, "say one change"),
            (
                at("after_ms = 1\nhost = \"a\"\nlink = \"up\"\nimpair = {}"),
                6,
                "say one change",
            ),
            (
                at("after_ms = -1\nhost = \"a\"\nlink = \"up\""),
                7,
                "after_ms = -1 is out of range",
            ),
            (
                at("after_ms = 1\nhost = \"c\"\nlink = \"up\""),
                8,
                "no host is called \"c\"",
            ),
            (
                at("after_ms = 1\nhost = \"b\"\nnic = 3\nlink = \"up\""),
                9,
                "b's eth3, but it has 1 NIC(s)",
            ),
            (
                at("after_ms = 1\nhost = \"b\"\nimpair = { loss_percent = 150 }"),
                9,
                "loss",
            ),
        ];
        for (text, line, words) in cases {
            let e = error(&text);
            assert_eq!(e.line(), Some(line), "{e}");
            assert!(e.to_string().contains(words), "{words:?} in {e}");
        }
    }

    #[test]
    fn network_mistakes_are_refused_naming_their_line() {
        let cases = [
            (
                ROUTED.replace("switch = \"right\"\nimpair", "switch = \"rigth\"\nimpair"),
                39,
                "no switch is called \"rigth\" (switches: left, right)",
            ),
            (
                ROUTED.replace("via = \"10.0.1.254\"", "via = \"10.0.3.254\""),
                11,
                "via = 10.0.3.254 is on none of a's subnets (10.0.1.0/24, fd01::/64)",
            ),
            (
                ROUTED.replace("via = \"10.0.2.254\"", "via = \"10.0.2.1\""),
                22,
                "is b's own address",
            ),
            (
                ROUTED.replace("10.0.2.1/24", "10.0.1.1/24"),
                21,
                "10.0.1.1 is a's eth0's already",
            ),
            (
                ROUTED.replace("eth1 = [", "eth2 = ["),
                17,
                "router has no NIC \"eth2\"",
            ),
            (
                ROUTED.replace("10.0.2.1/24", "10.0.2.1"),
                21,
                "\"10.0.2.1\" is not an address with its prefix",
            ),
            (
                ROUTED.replace(
                    "reachable = \"10.0.2.1\"",
                    "reachable = \"10.0.2.1\"\nexit = 1",
                ),
                45,
                "exit, output and within judge a `run`",
            ),
            (
                ROUTED.replace("host = \"a\"\nreachable", "host = \"z\"\nreachable"),
                43,
                "a check on host \"z\"",
            ),
            (
                ROUTED.replace(
                    "switch = \"left\"\n\n[[link]]\nhost = \"router\"\nswitch",
                    "peer = \"b\"\naccess = 3\n\n[[link]]\nhost = \"router\"\nswitch",
                ),
                25,
                "a cable between two hosts has no switch port",
            ),
            (
                ROUTED.replace(
                    "[[switch]]\nname = \"right\"",
                    "[[switch]]\nname = \"left\"",
                ),
                6,
                "switch \"left\" twice",
            ),
        ];
        let wrong: Vec<String> = cases
            .iter()
            .map(|(text, line, says)| (error(text), line, says))
            .filter(|(e, line, says)| !e.to_string().contains(*says) || e.line() != Some(**line))
            .map(|(e, line, says)| format!("expected line {line} saying {says:?}, got {e}"))
            .collect();
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn a_kernel_tree_must_be_built_and_the_only_kernel_of_its_host() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = format!(
            "[[host]]\nname = \"a\"\nkernel_tree = \"{}\"\n",
            dir.path().display()
        );
        let e = error(&text);
        assert_eq!(e.line(), Some(3), "{e}");
        assert!(e.to_string().contains("not a built kernel tree"), "{e}");
        std::fs::create_dir_all(dir.path().join("arch/x86/boot")).expect("mkdir");
        std::fs::write(dir.path().join("arch/x86/boot/bzImage"), "").expect("write");
        let spec = Topology::parse("t.toml", &text).expect("built").spec;
        let tree = dir.path().canonicalize().expect("canonical");
        assert_eq!(
            spec.hosts()[0].kernel,
            Some(super::super::Kernel::Tree(tree))
        );
        let both = error(&format!("{text}kernel = \"debian-6.1\"\n"));
        assert!(
            both.to_string().contains("a host boots one kernel"),
            "{both}"
        );
    }

    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        /// TOML values of every kind a number field might be given.
        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|n| n.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                Just("inf".to_string()),
                Just("-inf".to_string()),
                Just("nan".to_string()),
                (1u32..40).prop_map(|e| format!("1e{e}")),
                any::<u64>().prop_map(|n| format!("[{n}]")),
                Just("[]".to_string()),
                Just("\"x\"".to_string()),
            ]
        }

        const FIELDS: &[&str] = &[
            "memory", "cpus", "nics", "nic", "access", "native", "max_macs", "trunk",
        ];
        const IMPAIR: &[&str] = &[
            "delay_ms",
            "jitter_ms",
            "loss_percent",
            "duplicate_percent",
            "reorder_percent",
            "rate_kbit",
            "seed",
        ];

        proptest! {
            /// Any value in any number field is refused (with a line) or gives a lab whose
            /// ports and impairments are valid: no value makes the parser or the switch panic.
            #[test]
            fn any_number_anywhere_is_refused_or_valid(
                host_field in 0..3usize,
                link_field in 3..FIELDS.len(),
                impair_field in 0..IMPAIR.len(),
                a in value(), b in value(), c in value(),
            ) {
                let text = format!(
                    "[[host]]\nname = \"h\"\n{} = {a}\n\n[[link]]\nhost = \"h\"\n{} = {b}\nimpair = {{ {} = {c} }}\n",
                    FIELDS[host_field], FIELDS[link_field], IMPAIR[impair_field]
                );
                match Topology::parse("t.toml", &text) {
                    Err(e) => prop_assert!(e.line().is_some_and(|l| l > 0), "{e} has no line"),
                    Ok(t) => {
                        for port in t.spec.segments().iter().flat_map(|s| &s.ports) {
                            prop_assert!(port.policy.validate().is_ok());
                            prop_assert!(port.impairment.validate().is_ok(), "{:?}", port.impairment);
                            let mut cable = crate::lan::impair::Link::new(port.impairment);
                            let _ = cable.admit(1500, std::time::Instant::now());
                        }
                    }
                }
            }

            /// The same of a timeline's numbers: its time, its NIC, its impairment's.
            #[test]
            fn any_number_in_a_timeline_is_refused_or_valid(
                impair_field in 0..IMPAIR.len(),
                a in value(), b in value(), c in value(),
            ) {
                let text = format!(
                    "[[host]]\nname = \"h\"\n\n[[at]]\nafter_ms = {a}\nhost = \"h\"\nnic = {b}\nimpair = {{ {} = {c} }}\n",
                    IMPAIR[impair_field]
                );
                match Topology::parse("t.toml", &text) {
                    Err(e) => prop_assert!(e.line().is_some_and(|l| l > 0), "{e} has no line"),
                    Ok(t) => {
                        for at in t.spec.timeline() {
                            prop_assert!(at.after <= std::time::Duration::from_secs(24 * 3600));
                            prop_assert_eq!((at.host, at.nic), (0, 0));
                            if let crate::spec::Change::Impair(i) = at.change {
                                prop_assert!(i.validate().is_ok(), "{:?}", i);
                            }
                        }
                    }
                }
            }
        }
    }
}
