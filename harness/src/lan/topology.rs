//! A LAN described in a file: its hosts (size, NICs, packages, modules, the commands that set
//! them up), and each cable's port on the switch (VLANs, hairpin, MAC cap) and impairment.
//! `lab run --topology FILE` and `lab shell --topology FILE` boot it; the library takes the
//! same [`Topology`], read from a file or built in code.
//!
//! Every mistake is found before a guest boots, and named with its line: what the TOML
//! parser finds (an unknown field, a wrong type) in its own words, and what it cannot (a link
//! to a host that is not there, a VLAN out of 1..=4094, a loss over 100%, a negative delay)
//! by [`Topology::check`].
//!
//! ```toml
//! [[host]]
//! name = "host1"
//! modules = ["8021q"]
//! setup = ["ip link add link eth0 name eth0.10 type vlan id 10", "ip addr add 10.0.10.1/24 dev eth0.10", "ip link set eth0.10 up"]
//!
//! [[link]]
//! host = "host1"
//! trunk = [10]
//! impair = { delay_ms = 50, loss_percent = 1 }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::config::{MAX_CPUS, MAX_MEMORY_MIB, MAX_NICS, MIN_MEMORY_MIB};
use crate::lan::impair::{Impairment, Loss, MAX_DELAY, MAX_RATE_BPS};
use crate::lan::switch::{check_vlan, PortPolicy, PortVlans, VlanSet, FDB_MAX};

/// A LAN: hosts on one switch, the first one where a job runs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(rename = "host")]
    pub hosts: Vec<Host>,
    #[serde(rename = "link", default)]
    pub links: Vec<Link>,
    /// The file's text, for line numbers.
    #[serde(skip)]
    text: String,
}

/// One guest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Host {
    pub name: Spanned<String>,
    pub memory: Option<Spanned<u32>>,
    pub cpus: Option<Spanned<u32>>,
    pub nics: Option<Spanned<u8>>,
    #[serde(default)]
    pub packages: Vec<String>,
    #[serde(default)]
    pub modules: Vec<String>,
    /// Directories of out-of-tree modules, built for the guests' kernel and loaded at boot
    /// (`Extras::module_sources`); a relative path is relative to the file.
    #[serde(default)]
    pub module_sources: Vec<Spanned<PathBuf>>,
    /// Boots the nest image, to run VMs of its own.
    #[serde(default)]
    pub nest: bool,
    /// Commands run as root once every host is up and numbered (`192.168.88.N/24` on eth0),
    /// in order: addresses, VLAN interfaces, routes, bonds.
    #[serde(default)]
    pub setup: Vec<String>,
}

/// One cable: a host's NIC, its switch port and how bad the cable is.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    pub host: Spanned<String>,
    #[serde(default)]
    pub nic: u8,
    /// An access port of this VLAN.
    pub access: Option<Spanned<i64>>,
    /// A trunk carrying these VLANs tagged.
    pub trunk: Option<Spanned<Vec<i64>>>,
    /// A trunk's native VLAN (untagged on its cable).
    pub native: Option<Spanned<i64>>,
    #[serde(default)]
    pub hairpin: bool,
    pub max_macs: Option<Spanned<usize>>,
    pub impair: Option<Spanned<Impair>>,
}

/// A cable's impairment as the file gives it: milliseconds and percentages.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Impair {
    pub delay_ms: Option<Spanned<f64>>,
    pub jitter_ms: Option<Spanned<f64>>,
    pub loss_percent: Option<Spanned<f64>>,
    /// Losses in bursts (Gilbert–Elliott) instead of one by one.
    pub bursts: Option<Bursts>,
    pub duplicate_percent: Option<Spanned<f64>>,
    pub reorder_percent: Option<Spanned<f64>>,
    pub rate_kbit: Option<Spanned<u64>>,
    pub seed: Option<u64>,
}

/// Gilbert–Elliott loss, in percent: `p` good → bad, `r` bad → good, and the loss in each.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bursts {
    pub p_percent: Spanned<f64>,
    pub r_percent: Spanned<f64>,
    #[serde(default)]
    pub loss_good_percent: f64,
    #[serde(default = "hundred")]
    pub loss_bad_percent: f64,
}

fn hundred() -> f64 {
    100.0
}

/// A mistake in a topology file, with where it is (`line` 0: the file as a whole).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {message}", at_line(*line))]
pub struct TopologyError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

fn at_line(line: usize) -> String {
    if line == 0 {
        String::new()
    } else {
        format!(":{line}")
    }
}

impl Topology {
    /// Reads and checks the topology in `path`.
    pub fn load(path: &Path) -> Result<Topology, TopologyError> {
        let text = std::fs::read_to_string(path).map_err(|e| TopologyError {
            file: path.display().to_string(),
            line: 0,
            message: format!(
                "cannot read it ({e}); examples/*.toml of macvlan-lab are topology files to start from"
            ),
        })?;
        let file = path.display().to_string();
        let mut topology = Self::parse(&file, &text)?;
        let base = path.parent().unwrap_or(Path::new("."));
        topology
            .resolve_module_sources(base)
            .map_err(|(at, message)| TopologyError {
                line: line_of(&text, at),
                file,
                message,
            })?;
        Ok(topology)
    }

    /// Makes the hosts' module sources relative to `base` (the file's directory), and checks
    /// that they are directories.
    fn resolve_module_sources(&mut self, base: &Path) -> Result<(), (usize, String)> {
        for host in &mut self.hosts {
            for source in &mut host.module_sources {
                let at = source.span().start;
                let path = base.join(source.get_ref());
                if !path.is_dir() {
                    return Err((
                        at,
                        format!(
                            "module_sources: {} is not a directory (a path relative to the file \
                             is relative to its directory)",
                            path.display()
                        ),
                    ));
                }
                *source.get_mut() = path;
            }
        }
        Ok(())
    }

    /// The topology `text` describes (`file` names it in errors), checked.
    pub fn parse(file: &str, text: &str) -> Result<Topology, TopologyError> {
        let mut topology: Topology = toml::from_str(text).map_err(|e| TopologyError {
            file: file.into(),
            line: e.span().map_or(0, |s| line_of(text, s.start)),
            message: e.message().to_string(),
        })?;
        topology.text = text.to_string();
        topology.check().map_err(|(at, message)| TopologyError {
            file: file.into(),
            line: line_of(text, at),
            message,
        })?;
        Ok(topology)
    }

    /// The names of the hosts, in order.
    pub fn names(&self) -> Vec<&str> {
        self.hosts
            .iter()
            .map(|h| h.name.get_ref().as_str())
            .collect()
    }

    /// What the file cannot say by its types: each error with the byte offset it is at.
    fn check(&self) -> Result<(), (usize, String)> {
        if self.hosts.is_empty() {
            return Err((0, "no [[host]]: a topology needs at least one".into()));
        }
        if let Some(extra) = self.hosts.get(crate::lan::lab::MAX_HOSTS) {
            return Err((
                extra.name.span().start,
                format!(
                    "{} hosts: a LAN takes at most {}",
                    self.hosts.len(),
                    crate::lan::lab::MAX_HOSTS
                ),
            ));
        }
        let names = self.names();
        for (i, host) in self.hosts.iter().enumerate() {
            let name = host.name.get_ref();
            if names[..i].contains(&name.as_str()) {
                return Err((host.name.span().start, format!("host {name:?} twice")));
            }
            host.check()?;
        }
        for (i, link) in self.links.iter().enumerate() {
            let same_cable =
                |l: &&Link| l.host.get_ref() == link.host.get_ref() && l.nic == link.nic;
            if let Some(first) = self.links[..i].iter().find(same_cable) {
                return Err((
                    link.host.span().start,
                    format!(
                        "a second [[link]] for {}'s eth{} (the first is at line {}): a NIC has one cable; put its settings in one [[link]]",
                        link.host.get_ref(),
                        link.nic,
                        self.line(first.host.span().start)
                    ),
                ));
            }
            let host = link.host.get_ref();
            let Some(h) = self.hosts.iter().find(|h| h.name.get_ref() == host) else {
                return Err((
                    link.host.span().start,
                    format!(
                        "link to host {host:?}, which no [[host]] names (hosts: {})",
                        names.join(", ")
                    ),
                ));
            };
            let nics = h.nics.as_ref().map_or(1, |n| *n.get_ref());
            if link.nic >= nics {
                return Err((
                    link.host.span().start,
                    format!(
                        "link to {host}'s eth{}, but it has {nics} NIC(s): give it `nics`",
                        link.nic,
                    ),
                ));
            }
            link.policy()?;
            if let Some(impair) = &link.impair {
                impair.get_ref().impairment(impair.span().start)?;
            }
        }
        Ok(())
    }

    /// The line of byte `at` of the file (1 for the first).
    pub fn line(&self, at: usize) -> usize {
        line_of(&self.text, at)
    }
}

/// `value` if it lies in `range`, else an error at its place naming the range.
fn within<T: PartialOrd + Copy + std::fmt::Display>(
    field: &str,
    value: &Spanned<T>,
    range: std::ops::RangeInclusive<T>,
    unit: &str,
) -> Result<T, (usize, String)> {
    let v = *value.get_ref();
    if range.contains(&v) {
        Ok(v)
    } else {
        Err((
            value.span().start,
            format!(
                "{field} = {v} is out of range: give {} to {}{unit}",
                range.start(),
                range.end()
            ),
        ))
    }
}

impl Host {
    /// Its size within what a guest can be.
    fn check(&self) -> Result<(), (usize, String)> {
        if let Some(m) = &self.memory {
            within("memory", m, MIN_MEMORY_MIB..=MAX_MEMORY_MIB, " (MiB)")?;
        }
        if let Some(c) = &self.cpus {
            within("cpus", c, 1..=MAX_CPUS, "")?;
        }
        if let Some(n) = &self.nics {
            within("nics", n, 1..=MAX_NICS, "")?;
        }
        Ok(())
    }
}

impl Link {
    /// The switch port this link asks for.
    pub fn policy(&self) -> Result<PortPolicy, (usize, String)> {
        let vlan = |v: &Spanned<i64>| {
            u16::try_from(*v.get_ref())
                .ok()
                .and_then(|id| check_vlan(id).ok())
                .ok_or_else(|| {
                    (
                        v.span().start,
                        format!(
                            "VLAN {} is not a VLAN id: give one from 1 to 4094",
                            v.get_ref()
                        ),
                    )
                })
        };
        if let (Some(native), None) = (&self.native, &self.trunk) {
            return Err((
                native.span().start,
                "native names a trunk's untagged VLAN, but this port is no trunk: give `trunk = [...]`, or use `access` for an untagged port".into(),
            ));
        }
        let vlans = match (&self.access, &self.trunk) {
            (Some(_), Some(t)) => {
                return Err((
                    t.span().start,
                    "a port is an access port or a trunk, not both".into(),
                ))
            }
            (Some(a), None) => PortVlans::Access(vlan(a)?),
            (None, Some(t)) if t.get_ref().is_empty() => {
                return Err((
                    t.span().start,
                    "trunk = [] carries no VLAN: name at least one, or leave `trunk` out for a plain port".into(),
                ))
            }
            (None, Some(t)) => {
                let mut allowed = VlanSet::EMPTY;
                for id in t.get_ref() {
                    let id = vlan(&Spanned::new(t.span(), *id))?;
                    let _ = allowed.insert(id);
                }
                let native = self.native.as_ref().map(vlan).transpose()?;
                PortVlans::Trunk { native, allowed }
            }
            (None, None) => PortVlans::Unaware,
        };
        let max_macs = self
            .max_macs
            .as_ref()
            .map(|m| within("max_macs", m, 1..=FDB_MAX, " addresses"))
            .transpose()?;
        Ok(PortPolicy {
            hairpin: self.hairpin,
            max_macs,
            vlans,
        })
    }

    /// The impairment this link asks for (none without `impair`).
    pub fn impairment(&self) -> Result<Impairment, (usize, String)> {
        self.impair.as_ref().map_or(Ok(Impairment::default()), |i| {
            i.get_ref().impairment(i.span().start)
        })
    }
}

impl Impair {
    fn impairment(&self, at: usize) -> Result<Impairment, (usize, String)> {
        let ms = |field: &str, v: &Option<Spanned<f64>>| -> Result<Duration, (usize, String)> {
            match v {
                None => Ok(Duration::ZERO),
                Some(v) if (0.0..=MAX_DELAY.as_secs_f64() * 1000.0).contains(v.get_ref()) => {
                    Ok(Duration::from_secs_f64(v.get_ref() / 1000.0))
                }
                Some(v) => Err((
                    v.span().start,
                    format!(
                        "{field} = {} is not a delay: give 0 to {} milliseconds",
                        v.get_ref(),
                        MAX_DELAY.as_millis()
                    ),
                )),
            }
        };
        let share = |field: &str, v: f64, at: usize| -> Result<f64, (usize, String)> {
            if (0.0..=100.0).contains(&v) {
                Ok(v / 100.0)
            } else {
                Err((
                    at,
                    format!("{field} = {v} is not a share: give 0 to 100 (percent)"),
                ))
            }
        };
        let percent = |field: &str, v: &Option<Spanned<f64>>| match v {
            None => Ok(0.0),
            Some(v) => share(field, *v.get_ref(), v.span().start),
        };
        let loss = match (&self.bursts, &self.loss_percent) {
            (Some(b), _) => Loss::GilbertElliott {
                p: share(
                    "bursts.p_percent",
                    *b.p_percent.get_ref(),
                    b.p_percent.span().start,
                )?,
                r: share(
                    "bursts.r_percent",
                    *b.r_percent.get_ref(),
                    b.r_percent.span().start,
                )?,
                loss_good: share("bursts.loss_good_percent", b.loss_good_percent, at)?,
                loss_bad: share("bursts.loss_bad_percent", b.loss_bad_percent, at)?,
            },
            (None, Some(_)) => Loss::Random(percent("loss_percent", &self.loss_percent)?),
            (None, None) => Loss::None,
        };
        if let Some(rate) = &self.rate_kbit {
            if *rate.get_ref() == 0 {
                return Err((
                    rate.span().start,
                    "rate_kbit = 0 carries nothing: give a rate above 0".into(),
                ));
            }
            within("rate_kbit", rate, 1..=MAX_RATE_BPS / 1000, " (kbit/s)")?;
        }
        Ok(Impairment {
            delay: ms("delay_ms", &self.delay_ms)?,
            jitter: ms("jitter_ms", &self.jitter_ms)?,
            loss,
            duplicate: percent("duplicate_percent", &self.duplicate_percent)?,
            reorder: percent("reorder_percent", &self.reorder_percent)?,
            rate_bps: self.rate_kbit.as_ref().map(|r| r.get_ref() * 1000),
            seed: self.seed,
        })
    }
}

fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

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

    fn error(text: &str) -> TopologyError {
        Topology::parse("t.toml", text).expect_err("refused")
    }

    #[test]
    fn a_good_file_gives_hosts_ports_and_impairments() {
        let t = Topology::parse("t.toml", GOOD).expect("good");
        assert_eq!(t.names(), ["host1", "host2"]);
        let trunk = t.links[0].policy().expect("valid");
        assert_eq!(
            trunk.vlans,
            PortVlans::Trunk {
                native: Some(1),
                allowed: VlanSet::of(&[10, 20]).expect("ids")
            }
        );
        let imp = t.links[0].impairment().expect("valid");
        assert_eq!(imp.delay, Duration::from_millis(50));
        assert_eq!(imp.loss, Loss::Random(0.01));
        assert_eq!(
            t.links[1].policy().expect("valid").vlans,
            PortVlans::Access(10)
        );
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
                "no [[host]] names",
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
                "loss_percent = 101 is not a share",
            ),
            (
                GOOD.replace("delay_ms = 50", "delay_ms = -5"),
                15,
                "delay_ms = -5 is not a delay",
            ),
            (GOOD.replace("nic = 1", "nic = 2"), 18, "has 2 NIC(s)"),
            (
                GOOD.replace("access = 10", "access = 10\ntrunk = [10]"),
                21,
                "not both",
            ),
        ];
        for (text, line, says) in cases {
            let e = error(&text);
            assert_eq!(e.line, line, "{e}");
            assert!(e.to_string().contains(says), "{e}");
            assert!(
                e.to_string().starts_with(&format!("t.toml:{line}: ")),
                "{e}"
            );
        }
        assert!(error("").to_string().contains("missing field `host`"));
    }

    #[test]
    fn mistakes_once_taken_silently_are_refused_naming_their_line() {
        let cases = [
            // The same NIC linked twice: the later link would have won.
            (
                format!("{GOOD}\n[[link]]\nhost = \"host1\"\naccess = 5\n"),
                23,
                "a second [[link]] for host1's eth0 (the first is at line 12)",
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
                (0..65)
                    .map(|i| format!("[[host]]\nname = \"h{i}\"\n"))
                    .collect(),
                130,
                "65 hosts: a LAN takes at most 64",
            ),
        ];
        for (text, line, says) in cases {
            let e = error(&text);
            assert!(e.to_string().contains(says), "{e}");
            assert_eq!(e.line, line, "{e}");
        }
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
            /// Any value in any number field is refused (with a line) or gives a LAN whose
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
                    Err(e) => prop_assert!(e.line > 0, "{e} has no line"),
                    Ok(t) => {
                        for link in &t.links {
                            prop_assert!(link.policy().is_ok());
                            let imp = link.impairment().expect("checked");
                            prop_assert!(imp.validate().is_ok(), "{imp:?}");
                            let mut cable = crate::lan::impair::Link::new(imp);
                            let _ = cable.admit(1500, std::time::Instant::now());
                        }
                    }
                }
            }
        }
    }
}
