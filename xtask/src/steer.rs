//! `cargo xtask lab link`, `lab set` and `lab show`: steer the lab a `lab shell` (or `lab up`)
//! is running, from another terminal: pull and plug cables, make them bad or good again, see
//! the ports. The running shell holds the lab, so these send one request over its control
//! socket (`attach.rs`) and print its answer; the shell does the work ([`apply`]).

use std::time::Duration;

use anyhow::bail;
use lab_harness::lan::impair::{Impairment, Loss};
use lab_harness::lan::{PortVlans, SwitchHandle};
use lab_harness::Lab;
use lab_proto::attach::{Cable, Steer, ToAttach, ToShell};

/// `lab set`'s cable settings.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct CableArgs {
    /// Added to every frame's trip, each way (e.g. 50ms, 1s, 250us).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub delay: Option<Duration>,
    /// Each frame's delay varies by up to this much either way (e.g. 5ms).
    #[arg(long, value_name = "TIME", value_parser = parse_duration)]
    pub jitter: Option<Duration>,
    /// Frames lost at random (e.g. 1%, 0.5%).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub loss: Option<f64>,
    /// Frames sent twice (e.g. 1%).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub duplicate: Option<f64>,
    /// Frames sent at once, overtaking the delayed ones (e.g. 10%).
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub reorder: Option<f64>,
    /// The most the cable carries (e.g. 10mbit, 512kbit, 1gbit, 9600bit).
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub rate: Option<u64>,
    /// A good cable again: no delay, loss or limit.
    #[arg(long, conflicts_with_all = ["delay", "jitter", "loss", "duplicate", "reorder", "rate"])]
    pub clear: bool,
}

impl CableArgs {
    /// The request: what was given, the rest off; nothing given at all is refused.
    pub fn cable(&self) -> anyhow::Result<Cable> {
        let given = self.delay.is_some()
            || self.jitter.is_some()
            || self.loss.is_some()
            || self.duplicate.is_some()
            || self.reorder.is_some()
            || self.rate.is_some();
        if !given && !self.clear {
            bail!("say what the cable does: --delay, --jitter, --loss, --duplicate, --reorder, --rate, or --clear for a good cable (see `cargo xtask lab set --help`)");
        }
        let us =
            |d: Option<Duration>| d.map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        Ok(Cable {
            delay_us: us(self.delay),
            jitter_us: us(self.jitter),
            loss: self.loss.unwrap_or(0.0),
            duplicate: self.duplicate.unwrap_or(0.0),
            reorder: self.reorder.unwrap_or(0.0),
            rate_bps: self.rate,
        })
    }
}

/// `50ms`, `1s`, `250us`, `1.5s`: a duration with its unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, scale) = [("us", 1e-6), ("ms", 1e-3), ("s", 1.0)]
        .iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, *scale)))
        .ok_or_else(|| format!("{text:?} has no unit: give e.g. 50ms, 1s or 250us"))?;
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a time: give e.g. 50ms, 1s or 250us"))?;
    let secs = value * scale;
    if !(0.0..=3600.0).contains(&secs) {
        return Err(format!("{text} is out of range: give 0 to 1 hour"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `1%`, `0.5%`: a share from 0 to 100 per cent, as a fraction.
pub fn parse_percent(text: &str) -> Result<f64, String> {
    let number = text
        .strip_suffix('%')
        .ok_or_else(|| format!("{text:?} is not a percentage: give e.g. 1% or 0.5%"))?;
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage: give e.g. 1% or 0.5%"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("{text} is out of range: give 0% to 100%"));
    }
    Ok(value / 100.0)
}

/// `10mbit`, `512kbit`, `1gbit`, `9600bit`: bits per second, as tc spells them.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let lower = text.to_ascii_lowercase();
    let (number, scale) = [("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3), ("bit", 1.0)]
        .iter()
        .find_map(|(unit, scale)| lower.strip_suffix(unit).map(|n| (n.to_string(), *scale)))
        .ok_or_else(|| format!("{text:?} has no unit: give e.g. 10mbit, 512kbit or 1gbit"))?;
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a rate: give e.g. 10mbit, 512kbit or 1gbit"))?;
    let bps = value * scale;
    let max = lab_harness::lan::impair::MAX_RATE_BPS as f64;
    if !(1.0..=max).contains(&bps) {
        return Err(format!("{text} is out of range: give 1bit to 100gbit"));
    }
    Ok(bps.round() as u64)
}

/// Sends `action` on `target` to the running lab shell and prints what it did.
pub fn run(target: &str, action: Steer, pid: Option<u32>) -> anyhow::Result<()> {
    let shell = crate::attach::find(pid)?;
    let rt = tokio::runtime::Runtime::new()?;
    let steer = ToShell::Steer {
        target: target.to_string(),
        action,
    };
    let (answer, _, _) = rt.block_on(crate::attach::request(&shell, &steer))?;
    let ToAttach::Steered { text } = answer else {
        bail!("the lab shell answered {answer:?}");
    };
    print!("{text}");
    Ok(())
}

/// Does `action` on the running `lab`: the shell's side of [`run`]. A refusal names what
/// there is.
pub(crate) async fn apply(lab: &Lab, target: &str, action: &Steer) -> Result<String, String> {
    if *action == Steer::Show {
        let hosts: Vec<&str> = match target {
            "" => lab.vms().iter().map(|vm| vm.name()).collect(),
            one => vec![resolve(lab, one)?.0],
        };
        return Ok(show(lab, &hosts));
    }
    let (host, nic) = resolve(lab, target)?;
    match action {
        Steer::Link { up } => {
            lab.nic_cable(host, nic, *up)
                .await
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "{host}:eth{nic}: cable {} ({})\n",
                if *up { "plugged in" } else { "pulled out" },
                if *up {
                    "carrier on, frames pass"
                } else {
                    "the guest sees NO-CARRIER, frames are dropped both ways"
                }
            ))
        }
        Steer::Impair(cable) => {
            let impairment = impairment(cable);
            lab.set_nic_impairment(host, nic, impairment)
                .map_err(|e| e.to_string())?;
            Ok(format!("{host}:eth{nic}: {}\n", impairment))
        }
        Steer::Show => unreachable!("answered above"),
    }
}

/// `host2` or `host2:eth1` of `lab`: the host's name as the lab has it, and the NIC's index.
pub(crate) fn resolve<'l>(lab: &'l Lab, target: &str) -> Result<(&'l str, u8), String> {
    let (name, nic) = match target.split_once(':') {
        Some((name, nic)) => (name, Some(nic)),
        None => (target, None),
    };
    let Some(host) = lab.spec().host(name) else {
        let names: Vec<&str> = lab.vms().iter().map(|vm| vm.name()).collect();
        return Err(format!(
            "this lab has no {name:?}; its hosts are {}",
            names.join(", ")
        ));
    };
    let nics = host.nics.len();
    let index = match nic {
        None => 0,
        Some(nic) => nic
            .strip_prefix("eth")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|n| *n < nics)
            .ok_or_else(|| {
                format!(
                    "{name} has no {nic:?}; its NICs are {}",
                    (0..nics)
                        .map(|n| format!("eth{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?,
    };
    Ok((host.name.as_str(), u8::try_from(index).unwrap_or(u8::MAX)))
}

fn impairment(cable: &Cable) -> Impairment {
    Impairment {
        delay: Duration::from_micros(cable.delay_us),
        jitter: Duration::from_micros(cable.jitter_us),
        loss: if cable.loss > 0.0 {
            Loss::Random(cable.loss)
        } else {
            Loss::None
        },
        duplicate: cable.duplicate,
        reorder: cable.reorder,
        rate_bps: cable.rate_bps,
        seed: None,
    }
}

/// Each NIC of `hosts`: where it is plugged, its cable, its VLANs, its impairment, its counters.
fn show(lab: &Lab, hosts: &[&str]) -> String {
    let mut text = String::new();
    for name in hosts {
        let Some(host) = lab.spec().host(name) else {
            continue;
        };
        for (n, nic) in host.nics.iter().enumerate() {
            let nic_u8 = u8::try_from(n).unwrap_or(u8::MAX);
            let switch: &SwitchHandle = lab.nic_switch(name, nic_u8);
            let port = lab.nic_port(name, nic_u8);
            let segment = &lab.spec().segments()[nic.segment].name;
            let addresses: Vec<String> = nic.addresses.iter().map(ToString::to_string).collect();
            let c = switch.counters(port);
            text.push_str(&format!(
                "{name}:eth{n}  {segment} port {port}  cable {}  {}  {}{}\n    {}\n    rx {} frames {} bytes, tx {} frames {} bytes; dropped: link down {}, lost on the cable {}, over its limit {}, VLAN {}, MAC cap {}, not delivered {}\n",
                if switch.is_up(port) { "up" } else { "DOWN" },
                vlans(&switch.policy(port).vlans),
                if switch.policy(port).hairpin { "hairpin" } else { "no hairpin" },
                if addresses.is_empty() { String::new() } else { format!("  {}", addresses.join(" ")) },
                switch.impairment(port),
                c.rx_frames,
                c.rx_bytes,
                c.tx_frames,
                c.tx_bytes,
                c.drop_link_down,
                c.impaired_lost,
                c.impaired_overflow,
                c.drop_vlan,
                c.drop_mac_limit,
                c.drop_tx_error,
            ));
        }
    }
    text
}

fn vlans(v: &PortVlans) -> String {
    match v {
        PortVlans::Unaware => "VLAN-unaware".into(),
        PortVlans::Access(id) => format!("access VLAN {id}"),
        PortVlans::Trunk { native, allowed } => {
            let ids: Vec<String> = allowed.ids().map(|i| i.to_string()).collect();
            match native {
                Some(n) => format!("trunk {} (native {n})", ids.join(",")),
                None => format!("trunk {}", ids.join(",")),
            }
        }
    }
}

/// The answer the shell sends for a steer request.
pub(crate) fn answer(result: Result<String, String>) -> ToAttach {
    match result {
        Ok(text) => ToAttach::Steered { text },
        Err(reason) => ToAttach::Refused { reason },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_read_as_tc_writes_them_and_mistakes_named() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert!(parse_duration("50")
            .expect_err("refused")
            .contains("no unit"));
        assert!(parse_duration("2h")
            .expect_err("refused")
            .contains("no unit"));
        assert!(parse_duration("7200s")
            .expect_err("refused")
            .contains("out of range"));
        assert_eq!(parse_percent("1%"), Ok(0.01));
        assert!(parse_percent("1")
            .expect_err("refused")
            .contains("not a percentage"));
        assert!(parse_percent("101%")
            .expect_err("refused")
            .contains("out of range"));
        assert_eq!(parse_rate("10mbit"), Ok(10_000_000));
        assert_eq!(parse_rate("512kbit"), Ok(512_000));
        assert_eq!(parse_rate("1Gbit"), Ok(1_000_000_000));
        assert!(parse_rate("10mb").expect_err("refused").contains("no unit"));
        assert!(parse_rate("0bit")
            .expect_err("refused")
            .contains("out of range"));
        assert!(
            CableArgs::default().cable().is_err(),
            "nothing said is refused"
        );
        let cable = CableArgs {
            delay: Some(Duration::from_millis(100)),
            ..CableArgs::default()
        }
        .cable()
        .expect("a delay");
        assert_eq!(
            impairment(&cable).to_string(),
            "delay 100ms",
            "what is not given is off"
        );
    }
}
