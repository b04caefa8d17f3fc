//! What the scenarios share: the LAN they start from, the seed's way of making children, and
//! the probes that turn "can A talk to B" into an observation.

use lab_harness::{
    Assets, Child, Cmd, Error, Extras, Guest, Lab, MacAddr, MacvlanMode, Phase, Result, Size, Vm,
    VmConfig,
};

use crate::Observation;

/// host1's address on the LAN, and peer's.
pub(crate) const HOST: &str = "192.168.88.1";
pub(crate) const PEER: &str = "192.168.88.2";
/// The same on the LAN's IPv6 prefix (`fd00:88::N`), and child ns1's there.
pub(crate) const HOST_V6: &str = "fd00:88::1";
pub(crate) const PEER_V6: &str = "fd00:88::2";
pub(crate) const CHILD1_V6: &str = "fd00:88::11";

/// `host1` (192.168.88.1) and `peer` (.2) on one switch, both up and talking.
pub(crate) async fn lan(assets: &Assets, run: &str) -> Result<Lab> {
    lan_of(assets, run, &["host1", "peer"]).await
}

/// Guests `names` on one switch, numbered in order (.1, .2, ...), the LAN settled.
pub(crate) async fn lan_of(assets: &Assets, run: &str, names: &[&str]) -> Result<Lab> {
    let lab = names
        .iter()
        .fold(Lab::builder(assets, run), |b, n| b.host(n))
        .boot()
        .await?;
    lab.number_hosts().await?;
    debug_assert_eq!(
        (lab.ip("host1"), lab.ip("peer")),
        (HOST.to_string(), PEER.to_string())
    );
    Ok(lab)
}

/// Configurations of guests `names`, each with `extras` (packages, modules, memory...). apt may
/// work for seconds on a cold cache: not on the runtime's threads.
pub(crate) async fn configs_with(
    assets: &Assets,
    names: &[&str],
    extras: &Extras,
    size: Size,
) -> Result<Vec<VmConfig>> {
    let what = format!("provisioning {}", extras.packages.join(","));
    let (assets, extras) = (assets.clone(), extras.clone());
    let names: Vec<String> = names.iter().map(ToString::to_string).collect();
    tokio::task::spawn_blocking(move || {
        names
            .iter()
            .map(|name| assets.vm_with(name, &extras, size))
            .collect()
    })
    .await
    .map_err(|e| Error::invalid(format!("{what}: {e}"), "run it again"))?
}

/// Children `mv1`, `mv2` of eth0 in `mode`, in ns1 (.11) and ns2 (.12), as the seed makes them.
pub(crate) fn children(mode: MacvlanMode) -> String {
    children_of(Child::Macvlan(mode), "mv", 2)
}

/// `count` children `<prefix>1..` of eth0 of link `kind` (a macvlan or an ipvlan, in its mode),
/// child i in netns `ns<i>` with 192.168.88.1<i>/24 and fd00:88::1<i>/64.
pub(crate) fn children_of(kind: Child, prefix: &str, count: u8) -> String {
    children_on("eth0", kind, prefix, count)
}

/// [`children_of`] on `parent` instead of eth0 (a bond, say).
pub(crate) fn children_on(parent: &str, kind: Child, prefix: &str, count: u8) -> String {
    let kind = kind.ip_type();
    format!(
        "for i in $(seq 1 {count}); do
           ip netns add ns$i
           ip link add link {parent} name {prefix}$i type {kind}
           ip link set {prefix}$i netns ns$i
           ip -n ns$i addr add 192.168.88.1$i/24 dev {prefix}$i
           ip -n ns$i -6 addr add fd00:88::1$i/64 dev {prefix}$i nodad
           ip -n ns$i link set {prefix}$i up
         done"
    )
}

/// The MAC of `dev` (in `netns`, if given).
pub(crate) async fn mac_of(vm: &Vm, netns: Option<&str>, dev: &str) -> Result<MacAddr> {
    let text = vm
        .succeed(in_netns(format!("cat /sys/class/net/{dev}/address"), netns))
        .await?;
    text.parse()
        .map_err(|e| Error::guest(vm.name(), Phase::Command, format!("{dev}'s address: {e}")))
}

/// `script`, run inside `netns` if one is given.
fn in_netns(script: String, netns: Option<&str>) -> Cmd {
    let cmd = Cmd::script(script);
    match netns {
        Some(ns) => cmd.netns(ns),
        None => cmd,
    }
}

/// What a refused command said, as `refused: <reason>` (`accepted` if it was not refused).
pub(crate) async fn refusal(vm: &Vm, cmd: &str) -> Result<String> {
    let out = vm.run(cmd).await?;
    if out.success() {
        return Ok("accepted".into());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let reason = err
        .lines()
        .last()
        .unwrap_or_default()
        .trim_start_matches("RTNETLINK answers: ")
        .trim();
    Ok(format!("refused: {reason}"))
}

/// Can `from` (optionally inside `netns`) ping `ip`? A few probes, any answer counts.
pub(crate) async fn reach(
    vm: &(impl Guest + Sync),
    netns: Option<&str>,
    ip: &str,
) -> Result<Observation> {
    let cmd = in_netns(format!("ping -c3 -i0.3 -W1 {ip}"), netns);
    Ok(Observation::Reach(vm.run(cmd).await?.success()))
}

/// Does a broadcast ARP request for `ip`, sent from `dev` in `netns`, get an answer?
pub(crate) async fn arp(vm: &Vm, netns: &str, dev: &str, ip: &str) -> Result<Observation> {
    let cmd = Cmd::script(format!("arping -c1 -w2 -I {dev} {ip}")).netns(netns);
    Ok(Observation::Reach(vm.run(cmd).await?.success()))
}

pub(crate) fn none_or(listing: String) -> String {
    let l = listing.trim();
    if l.is_empty() {
        "none".into()
    } else {
        l.replace('\n', "; ")
    }
}

/// A field of the first object in `ip -j` output, or of its `linkinfo.info_data`.
pub(crate) fn json_field(json: &str, field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let first = v.get(0)?;
    let found = first
        .get(field)
        .or_else(|| first.get("linkinfo")?.get("info_data")?.get(field))?;
    Some(match found {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}
