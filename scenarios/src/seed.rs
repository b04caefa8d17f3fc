//! The seed's own sections: its simulated containers, the host that cannot reach its children
//! (and the shim that fixes it), and its cleanup.

use std::time::Duration;

use lab_harness::{Assets, MacvlanMode, PortPolicy, Result};

use crate::expectations::{Cleanup, SeedContainers, SeedHostIsolation, Shim};
use crate::probe::{children, lan, none_or, reach, CHILD1_V6, HOST};
use crate::Observed;

pub(crate) async fn containers(assets: &Assets) -> Result<Observed<SeedContainers>> {
    let lab = lan(assets, "seed-containers").await?;
    let host1 = lab.vm("host1");
    host1.succeed("ip link set eth0 promisc on").await?;
    host1.succeed(children(MacvlanMode::Bridge)).await?;
    let o = Observed::from_iter([
        (
            SeedContainers::Ns2ToNs1,
            reach(host1, Some("ns2"), "192.168.88.11").await?,
        ),
        (
            SeedContainers::Ns2ToNs1V6,
            reach(host1, Some("ns2"), CHILD1_V6).await?,
        ),
    ]);
    lab.shutdown().await?;
    Ok(o)
}

pub(crate) async fn host_isolation(assets: &Assets) -> Result<Observed<SeedHostIsolation>> {
    let lab = lan(assets, "seed-host-isolation").await?;
    let (host1, peer) = (lab.vm("host1"), lab.vm("peer"));
    host1.succeed(children(MacvlanMode::Bridge)).await?;
    let mut o = Observed::from_iter([
        (
            SeedHostIsolation::HostToChild,
            reach(host1, None, "192.168.88.11").await?,
        ),
        (
            SeedHostIsolation::ChildToHost,
            reach(host1, Some("ns1"), HOST).await?,
        ),
        (
            SeedHostIsolation::PeerToChild,
            reach(peer, None, "192.168.88.11").await?,
        ),
        (
            SeedHostIsolation::HostToChildV6,
            reach(host1, None, "fd00:88::11").await?,
        ),
        (
            SeedHostIsolation::ChildToHostV6,
            reach(host1, Some("ns1"), &lab.ip6("host1")).await?,
        ),
        (
            SeedHostIsolation::PeerToChildV6,
            reach(peer, None, "fd00:88::11").await?,
        ),
    ]);
    lab.set_policy("host1", PortPolicy::HAIRPIN)?;
    o.insert(
        SeedHostIsolation::HostToChildSwitchHairpinOn,
        reach(host1, None, "192.168.88.11").await?,
    );
    lab.shutdown().await?;
    Ok(o)
}

/// The usual way around the isolation: a bridge-mode macvlan of the host's own, with a route
/// to the children through it.
pub(crate) async fn shim(assets: &Assets) -> Result<Observed<Shim>> {
    let lab = lan(assets, "shim").await?;
    let host1 = lab.vm("host1");
    host1.succeed(children(MacvlanMode::Bridge)).await?;
    host1
        .succeed(
            "ip link add link eth0 name shim type macvlan mode bridge && ip addr add 192.168.88.100/32 dev shim \
             && ip link set shim up && ip route add 192.168.88.11/32 dev shim",
        )
        .await?;
    let o = Observed::from_iter([(
        Shim::HostToChildViaShim,
        reach(host1, None, "192.168.88.11").await?,
    )]);
    lab.shutdown().await?;
    Ok(o)
}

pub(crate) async fn cleanup(assets: &Assets) -> Result<Observed<Cleanup>> {
    let lab = lan(assets, "cleanup").await?;
    let host1 = lab.vm("host1");
    // Link flags, promiscuity counter and IPv4 addresses: IPv6 link-local addresses come and go
    // on their own timetable and say nothing about the cleanup.
    const STATE: &str = "ip -br link show eth0; ip -d -j link show eth0 | grep -o '\"promiscuity\":[0-9]*'; ip -br -4 addr show eth0";
    let before = host1.succeed(STATE).await?;
    host1.succeed("ip link set eth0 promisc on").await?;
    host1
        .succeed(children(MacvlanMode::Bridge).replace("mv$i", "macvlan$i"))
        .await?;
    host1
        .succeed("ip link set eth0 promisc off; ip netns delete ns1; ip netns delete ns2")
        .await?;
    let delete = host1.run("ip link delete macvlan1").await?;
    // `ip netns delete` returns before the kernel has torn the namespace down (a workqueue does
    // that), so give eth0 a few seconds to return to how it was.
    lab_harness::wait::try_until(
        Duration::from_secs(10),
        Duration::from_millis(500),
        || async {
            Ok::<_, lab_harness::Error>((host1.succeed(STATE).await? == before).then_some(()))
        },
    )
    .await?;
    let after = host1.succeed(STATE).await?;
    let o = Observed::from_iter([
        (
            Cleanup::NamespacesLeft,
            none_or(host1.succeed("ip netns list").await?),
        ),
        (
            Cleanup::MacvlanLinksLeft,
            none_or(host1.succeed("ip -br link show type macvlan").await?),
        ),
        (
            Cleanup::IpLinkDeleteMacvlan1AfterDeletingNs1,
            if delete.success() {
                "succeeds".into()
            } else {
                "fails: device gone with its namespace".into()
            },
        ),
        (Cleanup::Eth0Before, one_line(&before)),
        (Cleanup::Eth0After, one_line(&after)),
    ]);
    lab.shutdown().await?;
    Ok(o)
}

/// `ip` output of several lines as one, for the table.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
