//! The experiments. Each returns what it observed; none decides whether that is right.

use std::time::Duration;

use lab_harness::{Assets, Cmd, Lab, PortPolicy, Result, Vm};

use crate::expectations::{REACHABLE, UNREACHABLE};
use crate::Observed;

const HOST: &str = "192.168.88.1";
const PEER: &str = "192.168.88.2";
const SETTLE: Duration = Duration::from_secs(20);

pub async fn run(name: &str, assets: &Assets) -> Result<Observed> {
    match name {
        "seed/containers" => containers(assets).await,
        "seed/host-isolation" => host_isolation(assets, false).await,
        "shim" => host_isolation(assets, true).await,
        "mode/bridge" => mode(assets, "bridge").await,
        "mode/private" => mode(assets, "private").await,
        "mode/vepa" => mode(assets, "vepa").await,
        "claim/promisc" => promisc(assets).await,
        "cleanup" => cleanup(assets).await,
        other => Err(lab_harness::Error::Missing { what: format!("scenario {other}"), fix: "see `cargo xtask lab --list`".into() }),
    }
}

/// `host1` (192.168.88.1) and `peer` (.2) on one switch, both up and talking.
async fn lan(assets: &Assets, run: &str) -> Result<Lab> {
    let lab = Lab::builder(assets, run).host("host1").host("peer").boot().await?;
    lab.vm("host1").succeed(format!("ip addr add {HOST}/24 dev eth0 && ip link set eth0 up")).await?;
    lab.vm("peer").succeed(format!("ip addr add {PEER}/24 dev eth0 && ip link set eth0 up")).await?;
    lab.vm("host1").wait_until_succeeds(format!("ping -c1 -W1 {PEER}"), SETTLE).await?;
    // Carrier comes before operstate: the kernel's linkwatch applies it up to a second later.
    for name in ["host1", "peer"] {
        lab.vm(name).wait_until_succeeds("ip -br link show eth0 | grep -q ' UP '", SETTLE).await?;
    }
    Ok(lab)
}

/// Children `mv1`, `mv2` of eth0 in `mode`, in ns1 (.11) and ns2 (.12), as the seed makes them.
fn children(mode: &str) -> String {
    let mode = if mode.is_empty() { String::new() } else { format!("mode {mode}") };
    format!(
        "for i in 1 2; do
           ip netns add ns$i
           ip link add link eth0 name mv$i type macvlan {mode}
           ip link set mv$i netns ns$i
           ip -n ns$i addr add 192.168.88.1$i/24 dev mv$i
           ip -n ns$i link set mv$i up
         done"
    )
}

/// Can `from` (optionally inside `netns`) ping `ip`? A few probes, any answer counts.
async fn reach(vm: &Vm, netns: Option<&str>, ip: &str) -> Result<String> {
    let mut cmd = Cmd::script(format!("ping -c3 -i0.3 -W1 {ip}"));
    if let Some(ns) = netns {
        cmd = cmd.netns(ns);
    }
    Ok(if vm.run(cmd).await?.success() { REACHABLE } else { UNREACHABLE }.to_string())
}

fn observed(pairs: impl IntoIterator<Item = (&'static str, String)>) -> Observed {
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
    lab.shutdown().await?;
    Ok(o)
}

async fn mode(assets: &Assets, mode: &str) -> Result<Observed> {
    let lab = lan(assets, &format!("mode-{mode}")).await?;
    let host1 = lab.vm("host1");
    host1.succeed(children(mode)).await?;
    let mut o = Observed::new();
    o.insert("child -> peer".into(), reach(host1, Some("ns1"), PEER).await?);
    // ns2 must be known to the switch too before siblings are tried.
    let _ = reach(host1, Some("ns2"), PEER).await?;
    match mode {
        "vepa" => {
            o.insert("sibling, hairpin off".into(), reach(host1, Some("ns2"), "192.168.88.11").await?);
            lab.set_policy("host1", PortPolicy { hairpin: true, max_macs: None });
            o.insert("sibling, hairpin on".into(), reach(host1, Some("ns2"), "192.168.88.11").await?);
            host1.succeed("ip link add link eth0 name plain type macvlan").await?;
            let detail = host1.succeed("ip -d -j link show plain").await?;
            o.insert("default mode".into(), json_field(&detail, "mode").unwrap_or_else(|| "unknown".into()));
        }
        "private" => {
            o.insert("sibling".into(), reach(host1, Some("ns2"), "192.168.88.11").await?);
            lab.set_policy("host1", PortPolicy { hairpin: true, max_macs: None });
            o.insert("sibling, hairpin on".into(), reach(host1, Some("ns2"), "192.168.88.11").await?);
        }
        _ => {
            o.insert("sibling".into(), reach(host1, Some("ns2"), "192.168.88.11").await?);
        }
    }
    if mode != "vepa" {
        o.insert("child -> host".into(), reach(host1, Some("ns1"), HOST).await?);
    }
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
