//! The experiments. Each returns what it observed; none decides whether that is right.

use std::time::Duration;

use lab_harness::lan::capture::{icmp_type, macs, read_frames};
use lab_harness::{Assets, Cmd, Guest, Lab, PortPolicy, Result, Vm};

use crate::expectations::{REACHABLE, UNREACHABLE};
use crate::Observed;

const HOST: &str = "192.168.88.1";
const PEER: &str = "192.168.88.2";
use lab_harness::lan::lab::SETTLE;

pub async fn run(name: &str, assets: &Assets) -> Result<Observed> {
    match name {
        "seed/containers" => containers(assets).await,
        "seed/host-isolation" => host_isolation(assets, false).await,
        "shim" => host_isolation(assets, true).await,
        "mode/bridge" => mode(assets, "bridge").await,
        "mode/private" => mode(assets, "private").await,
        "mode/vepa" => mode(assets, "vepa").await,
        "mode/passthru" => passthru(assets).await,
        "mode/source" => source(assets).await,
        "ipvlan/l2" => ipvlan(assets, "l2").await,
        "ipvlan/l3" => ipvlan(assets, "l3").await,
        "claim/nic-mac-limit" => nic_mac_limit(assets).await,
        "claim/switch-mac-limit" => switch_mac_limit(assets).await,
        "nested/macvtap-bridge" => crate::nested::bridge(assets).await,
        "nested/macvtap-vepa" => crate::nested::vepa(assets).await,
        "nested/cleanup" => crate::nested::cleanup(assets).await,
        "claim/promisc" => promisc(assets).await,
        "cleanup" => cleanup(assets).await,
        other => Err(lab_harness::Error::Missing { what: format!("scenario {other}"), fix: "see `cargo xtask lab --list`".into() }),
    }
}

/// `host1` (192.168.88.1) and `peer` (.2) on one switch, both up and talking.
async fn lan(assets: &Assets, run: &str) -> Result<Lab> {
    lan_of(assets, run, &["host1", "peer"]).await
}

/// Guests `names` on one switch, numbered in order (.1, .2, ...), the LAN settled.
async fn lan_of(assets: &Assets, run: &str, names: &[&str]) -> Result<Lab> {
    let lab = names.iter().fold(Lab::builder(assets, run), |b, n| b.host(n)).boot().await?;
    lab.number_hosts().await?;
    debug_assert_eq!((lab.ip("host1"), lab.ip("peer")), (HOST.to_string(), PEER.to_string()));
    Ok(lab)
}

/// Children `mv1`, `mv2` of eth0 in `mode`, in ns1 (.11) and ns2 (.12), as the seed makes them.
fn children(mode: &str) -> String {
    children_of("macvlan", mode, "mv", 2)
}

/// `count` children `<prefix>1..` of eth0 of link `kind` (macvlan, ipvlan) in `mode`, child i in
/// netns `ns<i>` with 192.168.88.1<i>/24.
fn children_of(kind: &str, mode: &str, prefix: &str, count: u8) -> String {
    let mode = if mode.is_empty() { String::new() } else { format!("mode {mode}") };
    format!(
        "for i in $(seq 1 {count}); do
           ip netns add ns$i
           ip link add link eth0 name {prefix}$i type {kind} {mode}
           ip link set {prefix}$i netns ns$i
           ip -n ns$i addr add 192.168.88.1$i/24 dev {prefix}$i
           ip -n ns$i link set {prefix}$i up
         done"
    )
}

/// The MAC of `dev` (in `netns`, if given).
async fn mac_of(vm: &Vm, netns: Option<&str>, dev: &str) -> Result<String> {
    let mut cmd = Cmd::script(format!("cat /sys/class/net/{dev}/address"));
    if let Some(ns) = netns {
        cmd = cmd.netns(ns);
    }
    Ok(vm.succeed(cmd).await?.trim().to_string())
}

/// What a refused command said, as `refused: <reason>` (`accepted` if it was not refused).
async fn refusal(vm: &Vm, cmd: &str) -> Result<String> {
    let out = vm.run(cmd).await?;
    if out.success() {
        return Ok("accepted".into());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let reason = err.lines().last().unwrap_or_default().trim_start_matches("RTNETLINK answers: ").trim();
    Ok(format!("refused: {reason}"))
}

/// Can `from` (optionally inside `netns`) ping `ip`? A few probes, any answer counts.
pub(crate) async fn reach(vm: &(impl Guest + Sync), netns: Option<&str>, ip: &str) -> Result<String> {
    let mut cmd = Cmd::script(format!("ping -c3 -i0.3 -W1 {ip}"));
    if let Some(ns) = netns {
        cmd = cmd.netns(ns);
    }
    Ok(if vm.run(cmd).await?.success() { REACHABLE } else { UNREACHABLE }.to_string())
}

pub(crate) fn observed(pairs: impl IntoIterator<Item = (&'static str, String)>) -> Observed {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

async fn containers(assets: &Assets) -> Result<Observed> {
    let lab = lan(assets, "seed-containers").await?;
    let host1 = lab.vm("host1");
    host1.succeed("ip link set eth0 promisc on").await?;
    host1.succeed(children("bridge")).await?;
    let o = observed([("ns2 -> ns1", reach(host1, Some("ns2"), "192.168.88.11").await?)]);
    lab.shutdown().await?;
    Ok(o)
}

async fn host_isolation(assets: &Assets, shim: bool) -> Result<Observed> {
    let lab = lan(assets, if shim { "shim" } else { "seed-host-isolation" }).await?;
    let (host1, peer) = (lab.vm("host1"), lab.vm("peer"));
    host1.succeed(children("bridge")).await?;
    let o = if shim {
        host1
            .succeed(
                "ip link add link eth0 name shim type macvlan mode bridge && ip addr add 192.168.88.100/32 dev shim \
                 && ip link set shim up && ip route add 192.168.88.11/32 dev shim",
            )
            .await?;
        observed([("host -> child via shim", reach(host1, None, "192.168.88.11").await?)])
    } else {
        observed([
            ("host -> child", reach(host1, None, "192.168.88.11").await?),
            ("child -> host", reach(host1, Some("ns1"), HOST).await?),
            ("peer -> child", reach(peer, None, "192.168.88.11").await?),
        ])
    };
    let mut o = o;
    if !shim {
        lab.set_policy("host1", PortPolicy { hairpin: true, max_macs: None });
        o.insert("host -> child, switch hairpin on".into(), reach(host1, None, "192.168.88.11").await?);
    }
    lab.shutdown().await?;
    Ok(o)
}

/// Bridge, private or VEPA children mv1 (ns1, .11) and mv2 (ns2, .12): what reaches what, by
/// unicast (ping) and by broadcast (an ARP request), with the switch's hairpin off and then on.
async fn mode(assets: &Assets, mode: &str) -> Result<Observed> {
    let lab = lan(assets, &format!("mode-{mode}")).await?;
    let host1 = lab.vm("host1");
    host1.succeed(children(mode)).await?;
    let sibling = || reach(host1, Some("ns2"), "192.168.88.11");
    let arp_sibling = || arp(host1, "ns2", "mv2", "192.168.88.11");
    // Names say "hairpin off" only where the scenario also tries it on.
    let off = if mode == "bridge" { "" } else { ", hairpin off" };
    let mut o = Observed::new();
    o.insert("child -> peer".into(), reach(host1, Some("ns1"), PEER).await?);
    o.insert("ARP broadcast -> peer".into(), arp(host1, "ns1", "mv1", PEER).await?);
    // ns2 must be known to the switch too before siblings are tried.
    let _ = reach(host1, Some("ns2"), PEER).await?;
    o.insert(format!("child -> host{off}"), reach(host1, Some("ns1"), HOST).await?);
    o.insert(format!("sibling{off}"), sibling().await?);
    o.insert(format!("ARP broadcast -> sibling{off}"), arp_sibling().await?);
    if mode != "bridge" {
        lab.set_policy("host1", PortPolicy { hairpin: true, max_macs: None });
        o.insert("child -> host, hairpin on".into(), reach(host1, Some("ns1"), HOST).await?);
        o.insert("sibling, hairpin on".into(), sibling().await?);
        o.insert("ARP broadcast -> sibling, hairpin on".into(), arp_sibling().await?);
    }
    match mode {
        "vepa" => {
            o.insert("sibling echo requests on host1's cable".into(), crossings(&lab, "host1").await?);
            host1.succeed("ip link add link eth0 name plain type macvlan").await?;
            let detail = host1.succeed("ip -d -j link show plain").await?;
            o.insert("default mode".into(), json_field(&detail, "mode").unwrap_or_else(|| "unknown".into()));
        }
        "private" => {
            // Without ARP (whose reflected broadcasts the kernel drops) only unicast is left.
            let (mac1, mac2) = (mac_of(host1, Some("ns1"), "mv1").await?, mac_of(host1, Some("ns2"), "mv2").await?);
            host1
                .succeed(format!(
                    "ip -n ns2 neigh replace 192.168.88.11 lladdr {mac1} dev mv2 && ip -n ns1 neigh replace 192.168.88.12 lladdr {mac2} dev mv1"
                ))
                .await?;
            o.insert("sibling, hairpin on, static neighbours".into(), sibling().await?);
        }
        _ => {}
    }
    lab.shutdown().await?;
    Ok(o)
}

/// Does a broadcast ARP request for `ip`, sent from `dev` in `netns`, get an answer?
async fn arp(vm: &Vm, netns: &str, dev: &str, ip: &str) -> Result<String> {
    let cmd = Cmd::script(format!("arping -c1 -w2 -I {dev} {ip}")).netns(netns);
    Ok(if vm.run(cmd).await?.success() { REACHABLE } else { UNREACHABLE }.to_string())
}

/// How often each echo request from mv2 (ns2) to mv1 (ns1) crossed `name`'s cable: a VEPA
/// child's frame to its sibling goes out to the switch and, with hairpin, comes back.
async fn crossings(lab: &Lab, name: &str) -> Result<String> {
    let host = lab.vm(name);
    let (mv1, mv2) = (mac_of(host, Some("ns1"), "mv1").await?, mac_of(host, Some("ns2"), "mv2").await?);
    let sibling_requests = |path: &std::path::Path| -> usize {
        read_frames(path)
            .unwrap_or_default()
            .iter()
            .filter(|f| icmp_type(f) == Some(8))
            .filter(|f| macs(f).is_some_and(|(src, dst)| src.to_string() == mv2 && dst.to_string() == mv1))
            .count()
    };
    let sent = sibling_requests(&lab.capture());
    let on_cable = sibling_requests(&lab.port_capture(name));
    Ok(if sent > 0 && on_cable == 2 * sent {
        "twice each (out and back)".into()
    } else {
        format!("{on_cable} on the cable for {sent} sent")
    })
}

async fn passthru(assets: &Assets) -> Result<Observed> {
    let lab = lan(assets, "mode-passthru").await?;
    let host1 = lab.vm("host1");
    let mut o = Observed::new();
    host1.succeed("ip link add link eth0 name pt type macvlan mode passthru").await?;
    let same = mac_of(host1, None, "pt").await? == mac_of(host1, None, "eth0").await?;
    o.insert("child's MAC".into(), if same { "eth0's".into() } else { "its own".into() });
    o.insert("a second macvlan beside it".into(), refusal(host1, "ip link add link eth0 name mv9 type macvlan mode bridge").await?);
    host1.succeed("ip netns add ns1 && ip link set pt netns ns1 && ip -n ns1 addr add 192.168.88.11/24 dev pt && ip -n ns1 link set pt up").await?;
    let detail = host1.succeed("ip -d -j link show eth0").await?;
    o.insert("eth0 promiscuity once the child is up".into(), json_field(&detail, "promiscuity").unwrap_or_else(|| "?".into()));
    o.insert("child -> peer".into(), reach(host1, Some("ns1"), PEER).await?);
    // The other order: a child first, then passthru beside it.
    // The kernel destroys a deleted namespace's links from a work item, so `pt` (and the
    // passthru port on eth0 that refuses other children) lingers a moment after this returns.
    host1.succeed("ip netns delete ns1").await?;
    host1.wait_until_succeeds("ip link add link eth0 name mv1 type macvlan mode bridge", SETTLE).await?;
    o.insert("passthru beside an existing child".into(), refusal(host1, "ip link add link eth0 name pt type macvlan mode passthru").await?);
    lab.shutdown().await?;
    Ok(o)
}

/// A source-mode child takes frames by their source MAC: `peer` is listed, `other` is not.
async fn source(assets: &Assets) -> Result<Observed> {
    let lab = lan_of(assets, "mode-source", &["host1", "peer", "other"]).await?;
    let host1 = lab.vm("host1");
    let (peer, other) = (lab.vm("peer").mac().to_string(), lab.ip("other"));
    host1
        .succeed(format!(
            "ip netns add ns1 && ip link add link eth0 name src0 type macvlan mode source \
             && ip link set link dev src0 type macvlan macaddr add {peer} \
             && ip link set src0 netns ns1 && ip -n ns1 addr add 192.168.88.11/24 dev src0 && ip -n ns1 link set src0 up"
        ))
        .await?;
    let macaddr = |op: &str| format!("ip -n ns1 link set dev src0 type macvlan macaddr {op}");
    let mut o = Observed::new();
    o.insert("child <-> peer (MAC listed)".into(), reach(host1, Some("ns1"), PEER).await?);
    o.insert("child <-> other (MAC not listed)".into(), reach(host1, Some("ns1"), &other).await?);
    host1.succeed(macaddr(&format!("del {peer}"))).await?;
    o.insert("child <-> peer after `macaddr del`".into(), reach(host1, Some("ns1"), PEER).await?);
    host1.succeed(macaddr(&format!("add {peer}"))).await?;
    o.insert("child <-> peer after `macaddr add` again".into(), reach(host1, Some("ns1"), PEER).await?);
    host1.succeed(macaddr("flush")).await?;
    o.insert("child <-> peer after `macaddr flush`".into(), reach(host1, Some("ns1"), PEER).await?);
    lab.shutdown().await?;
    Ok(o)
}

async fn ipvlan(assets: &Assets, mode: &str) -> Result<Observed> {
    let lab = lan(assets, &format!("ipvlan-{mode}")).await?;
    let host1 = lab.vm("host1");
    host1.succeed(children_of("ipvlan", mode, "iv", 2)).await?;
    let mut o = Observed::new();
    o.insert("child -> peer".into(), reach(host1, Some("ns1"), PEER).await?);
    o.insert("sibling".into(), reach(host1, Some("ns2"), "192.168.88.11").await?);
    o.insert("child -> host".into(), reach(host1, Some("ns1"), HOST).await?);
    let same = mac_of(host1, Some("ns1"), "iv1").await? == mac_of(host1, None, "eth0").await?;
    o.insert("children's MAC".into(), if same { "eth0's".into() } else { "their own".into() });
    let flags = host1.succeed(Cmd::script("ip -j link show iv1").netns("ns1")).await?;
    let noarp = flags.contains("\"NOARP\"");
    o.insert("child's link flags".into(), if noarp { "NOARP".into() } else { "ARP".into() });
    if mode == "l3" {
        // Nobody answers ARP for an l3 child: the LAN must route to it through its host.
        lab.vm("peer").succeed(format!("ip route add 192.168.88.11/32 via {HOST}")).await?;
        o.insert("child -> peer, peer routing via host1".into(), reach(host1, Some("ns1"), PEER).await?);
    }
    lab.shutdown().await?;
    Ok(o)
}

/// Adds bridge-mode children to eth0 one at a time until QEMU reports the NIC's unicast table
/// overflowing (virtio-net holds 64 entries), then checks the child that overflowed it still works.
async fn nic_mac_limit(assets: &Assets) -> Result<Observed> {
    const MOST: u32 = 100;
    let lab = lan(assets, "claim-nic-mac-limit").await?;
    let host1 = lab.vm("host1");
    let qmp_err = |e: lab_harness::QmpError| lab_harness::Error::guest("host1", lab_harness::Phase::Qmp, e.to_string());
    let mut overflowed_at = None;
    for n in 1..=MOST {
        host1.succeed(format!("ip link add link eth0 name c{n} type macvlan mode bridge && ip link set c{n} up")).await?;
        // Newer kernels program the filter from a work item: wait until it shows this child.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let filter = loop {
            let f = host1.qmp().rx_filter().await.map_err(qmp_err)?;
            if f.unicast_overflow || f.unicast_table.len() >= n as usize || std::time::Instant::now() > deadline {
                break f;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if filter.unicast_overflow {
            overflowed_at = Some((n, filter));
            break;
        }
    }
    let mut o = Observed::new();
    let Some((n, filter)) = overflowed_at else {
        o.insert("children when the unicast table overflows".into(), format!("no overflow with {MOST}"));
        lab.shutdown().await?;
        return Ok(o);
    };
    o.insert("children when the unicast table overflows".into(), format!("{n} (the table holds {})", n - 1));
    o.insert(
        "unicast filter after the overflow".into(),
        if filter.unicast_table.is_empty() { "off: every unicast frame is taken".into() } else { format!("{} entries kept", filter.unicast_table.len()) },
    );
    host1.succeed(format!("ip netns add ns1 && ip link set c{n} netns ns1 && ip -n ns1 addr add 192.168.88.11/24 dev c{n} && ip -n ns1 link set c{n} up")).await?;
    o.insert("the child that overflowed it -> peer".into(), reach(host1, Some("ns1"), PEER).await?);
    lab.shutdown().await?;
    Ok(o)
}

/// With the switch port capped at 2 MACs (eth0's and one more), three macvlan children compete
/// for one slot; three ipvlan children share eth0's MAC and need none.
async fn switch_mac_limit(assets: &Assets) -> Result<Observed> {
    let lab = lan(assets, "claim-switch-mac-limit").await?;
    let host1 = lab.vm("host1");
    lab.set_policy("host1", PortPolicy { hairpin: false, max_macs: Some(2) });
    async fn count_reaching(vm: &Vm) -> Result<usize> {
        let mut n = 0;
        for ns in ["ns1", "ns2", "ns3"] {
            n += usize::from(reach(vm, Some(ns), PEER).await? == REACHABLE);
        }
        Ok(n)
    }
    let mut o = Observed::new();
    host1.succeed(children_of("macvlan", "bridge", "mv", 3)).await?;
    o.insert("macvlan children reaching peer, cap of 2 MACs".into(), format!("{} of 3", count_reaching(host1).await?));
    o.insert("ipvlan beside macvlan on one parent".into(), refusal(host1, "ip link add link eth0 name iv9 type ipvlan mode l2").await?);
    // Once the namespaces' macvlans are really gone (see `passthru`), eth0 takes ipvlans.
    host1.succeed("ip netns delete ns1; ip netns delete ns2; ip netns delete ns3").await?;
    host1.wait_until_succeeds("ip link add link eth0 name probe type ipvlan mode l2 && ip link delete probe", SETTLE).await?;
    host1.succeed(children_of("ipvlan", "l2", "iv", 3)).await?;
    o.insert("ipvlan children reaching peer, same cap".into(), format!("{} of 3", count_reaching(host1).await?));
    lab.shutdown().await?;
    Ok(o)
}

async fn promisc(assets: &Assets) -> Result<Observed> {
    let lab = lan(assets, "claim-promisc").await?;
    let host1 = lab.vm("host1");
    host1.succeed("ip link set eth0 promisc off").await?;
    host1.succeed(children("bridge")).await?;
    let reached = reach(host1, Some("ns1"), PEER).await?;
    // The kernel may still raise promiscuity behind the user's back; the counter tells, the flag does not.
    let promiscuity = host1.succeed("ip -d -j link show eth0").await?;
    let promiscuity = json_field(&promiscuity, "promiscuity").unwrap_or_else(|| "?".into());
    let filter = lab.vm("host1").qmp().rx_filter().await.map_err(|e| lab_harness::Error::guest("host1", lab_harness::Phase::Qmp, e.to_string()))?;
    let mut macs = Vec::new();
    for ns in ["ns1", "ns2"] {
        macs.push(host1.succeed(Cmd::script("cat /sys/class/net/mv*/address").netns(ns)).await?.trim().to_string());
    }
    let present = macs.iter().all(|m| filter.unicast_table.iter().any(|u| u == m));
    let verdict = if reached == REACHABLE && promiscuity == "0" && !filter.promiscuous && present { "refuted" } else { "upheld" };
    let o = observed([
        ("bridge children reach peer with promisc off", reached),
        ("children's MACs in the NIC's unicast filter", if present { "present" } else { "absent" }.to_string()),
        ("verdict for virtio-net", verdict.to_string()),
    ]);
    lab.shutdown().await?;
    Ok(o)
}

async fn cleanup(assets: &Assets) -> Result<Observed> {
    let lab = lan(assets, "cleanup").await?;
    let host1 = lab.vm("host1");
    // Link flags, promiscuity counter and IPv4 addresses: IPv6 link-local addresses come and go
    // on their own timetable and say nothing about the cleanup.
    const STATE: &str = "ip -br link show eth0; ip -d -j link show eth0 | grep -o '\"promiscuity\":[0-9]*'; ip -br -4 addr show eth0";
    let before = host1.succeed(STATE).await?;
    host1.succeed("ip link set eth0 promisc on").await?;
    host1.succeed(children("bridge").replace("mv$i", "macvlan$i")).await?;
    host1.succeed("ip link set eth0 promisc off; ip netns delete ns1; ip netns delete ns2").await?;
    let delete = host1.run("ip link delete macvlan1").await?;
    // `ip netns delete` returns before the kernel has torn the namespace down (a workqueue does
    // that), so give eth0 a few seconds to return to how it was.
    let mut restored = false;
    for _ in 0..20 {
        if host1.succeed(STATE).await? == before {
            restored = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let after = host1.succeed(STATE).await?;
    let o = observed([
        ("namespaces left", none_or(host1.succeed("ip netns list").await?)),
        ("macvlan links left", none_or(host1.succeed("ip -br link show type macvlan").await?)),
        (
            "`ip link delete macvlan1` after deleting ns1",
            if delete.success() { "succeeds".into() } else { "fails: device gone with its namespace".into() },
        ),
        ("eth0 as before", if restored { "yes".to_string() } else { format!("no: {} -> {}", before.trim(), after.trim()) }),
    ]);
    lab.shutdown().await?;
    Ok(o)
}

fn none_or(listing: String) -> String {
    let l = listing.trim();
    if l.is_empty() { "none".into() } else { l.replace('\n', "; ") }
}

/// A field of the first object in `ip -j` output, or of its `linkinfo.info_data`.
fn json_field(json: &str, field: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    let first = v.get(0)?;
    let found = first.get(field).or_else(|| first.get("linkinfo")?.get("info_data")?.get(field))?;
    Some(match found {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}
