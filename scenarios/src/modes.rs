//! The five macvlan modes, and ipvlan beside them.

use lab_harness::lab::SETTLE;
use lab_harness::lan::capture::{icmp_type, macs, read_frames};
use lab_harness::{Assets, Child, Cmd, IpvlanMode, Lab, MacvlanMode, PortPolicy, Result};

use crate::expectations::{Ipvlan, Mode, ModePassthru, ModeSource};
use crate::probe::{
    arp, children, children_of, json_field, lan, lan_of, mac_of, reach, refusal, CHILD1_V6, HOST,
    HOST_V6, PEER, PEER_V6,
};
use crate::{Observation, Observed};

/// Bridge, private or VEPA children mv1 (ns1, .11) and mv2 (ns2, .12): what reaches what, by
/// unicast (ping) and by broadcast (an ARP request), with the switch's hairpin off and then
/// (not for bridge, whose siblings meet inside the kernel) on.
pub(crate) async fn mode(assets: &Assets, mode: MacvlanMode) -> Result<Observed<Mode>> {
    let lab = lan(assets, &format!("mode-{mode}")).await?;
    let host1 = lab.vm("host1");
    host1.succeed(children(mode)).await?;
    let sibling = || reach(host1, Some("ns2"), "192.168.88.11");
    let arp_sibling = || arp(host1, "ns2", "mv2", "192.168.88.11");
    let mut o = Observed::new();
    o.insert(Mode::ChildToPeer, reach(host1, Some("ns1"), PEER).await?);
    o.insert(Mode::ArpToPeer, arp(host1, "ns1", "mv1", PEER).await?);
    // ns2 must be known to the switch too before siblings are tried.
    let _ = reach(host1, Some("ns2"), PEER).await?;
    o.insert(Mode::ChildToHost, reach(host1, Some("ns1"), HOST).await?);
    o.insert(Mode::Sibling, sibling().await?);
    o.insert(Mode::ArpToSibling, arp_sibling().await?);
    // The modes are macvlan's, below IP: neighbour discovery (multicast) meets what ARP
    // (broadcast) met, and IPv6 reaches what IPv4 reaches.
    let sibling_v6 = || reach(host1, Some("ns2"), CHILD1_V6);
    o.insert(
        Mode::ChildToPeerV6,
        reach(host1, Some("ns1"), PEER_V6).await?,
    );
    let _ = reach(host1, Some("ns2"), PEER_V6).await?;
    o.insert(
        Mode::ChildToHostV6,
        reach(host1, Some("ns1"), HOST_V6).await?,
    );
    o.insert(Mode::SiblingV6, sibling_v6().await?);
    if mode != MacvlanMode::Bridge {
        lab.set_policy("host1", PortPolicy::HAIRPIN)?;
        o.insert(
            Mode::ChildToHostHairpinOn,
            reach(host1, Some("ns1"), HOST).await?,
        );
        o.insert(Mode::SiblingHairpinOn, sibling().await?);
        o.insert(Mode::ArpToSiblingHairpinOn, arp_sibling().await?);
        o.insert(Mode::SiblingHairpinOnV6, sibling_v6().await?);
    }
    match mode {
        MacvlanMode::Vepa => {
            let (through_the_switch, on_the_cable) = crossings(&lab, "host1").await?;
            o.insert(
                Mode::SiblingEchoRequestsAtTheSwitch,
                Observation::Count(through_the_switch),
            );
            o.insert(
                Mode::SiblingEchoRequestsOnTheCable,
                Observation::Count(on_the_cable),
            );
            host1
                .succeed("ip link add link eth0 name plain type macvlan")
                .await?;
            let detail = host1.succeed("ip -d -j link show plain").await?;
            o.insert(
                Mode::DefaultMode,
                json_field(&detail, "mode").unwrap_or_else(|| "unknown".into()),
            );
        }
        MacvlanMode::Private => {
            // Without ARP (whose reflected broadcasts the kernel drops) only unicast is left.
            let (mac1, mac2) = (
                mac_of(host1, Some("ns1"), "mv1").await?,
                mac_of(host1, Some("ns2"), "mv2").await?,
            );
            host1
                .succeed(format!(
                    "ip -n ns2 neigh replace 192.168.88.11 lladdr {mac1} dev mv2 && ip -n ns1 neigh replace 192.168.88.12 lladdr {mac2} dev mv1"
                ))
                .await?;
            o.insert(Mode::SiblingStaticNeighbours, sibling().await?);
        }
        _ => {}
    }
    lab.shutdown().await?;
    Ok(o)
}

/// The echo requests from mv2 (ns2) to mv1 (ns1) as the switch took them in, and as `name`'s
/// cable carried them (both ways): a VEPA child's frame to its sibling goes out to the switch
/// and, with hairpin, comes back.
async fn crossings(lab: &Lab, name: &str) -> Result<(u64, u64)> {
    let host = lab.vm(name);
    let (mv1, mv2) = (
        mac_of(host, Some("ns1"), "mv1").await?,
        mac_of(host, Some("ns2"), "mv2").await?,
    );
    let sibling_requests = |path: &std::path::Path| -> u64 {
        read_frames(path)
            .unwrap_or_default()
            .iter()
            .filter(|f| icmp_type(f) == Some(8))
            .filter(|f| macs(f).is_some_and(|(src, dst)| src == mv2 && dst == mv1))
            .map(|_| 1)
            .sum()
    };
    Ok((
        sibling_requests(&lab.capture()),
        sibling_requests(&lab.port_capture(name)),
    ))
}

pub(crate) async fn passthru(assets: &Assets) -> Result<Observed<ModePassthru>> {
    let lab = lan(assets, "mode-passthru").await?;
    let host1 = lab.vm("host1");
    let mut o = Observed::new();
    host1
        .succeed("ip link add link eth0 name pt type macvlan mode passthru")
        .await?;
    o.insert(ModePassthru::ChildsMac, mac_of(host1, None, "pt").await?);
    o.insert(ModePassthru::Eth0sMac, mac_of(host1, None, "eth0").await?);
    o.insert(
        ModePassthru::ASecondMacvlanBesideIt,
        refusal(
            host1,
            "ip link add link eth0 name mv9 type macvlan mode bridge",
        )
        .await?,
    );
    host1.succeed("ip netns add ns1 && ip link set pt netns ns1 && ip -n ns1 addr add 192.168.88.11/24 dev pt && ip -n ns1 link set pt up").await?;
    let detail = host1.succeed("ip -d -j link show eth0").await?;
    o.insert(
        ModePassthru::Eth0PromiscuityOnceTheChildIsUp,
        json_field(&detail, "promiscuity").unwrap_or_else(|| "?".into()),
    );
    o.insert(
        ModePassthru::ChildToPeer,
        reach(host1, Some("ns1"), PEER).await?,
    );
    // The other order: a child first, then passthru beside it.
    // The kernel destroys a deleted namespace's links from a work item, so `pt` (and the
    // passthru port on eth0 that refuses other children) lingers a moment after this returns.
    host1.succeed("ip netns delete ns1").await?;
    host1
        .wait_until_succeeds(
            "ip link add link eth0 name mv1 type macvlan mode bridge",
            SETTLE,
        )
        .await?;
    o.insert(
        ModePassthru::PassthruBesideAnExistingChild,
        refusal(
            host1,
            "ip link add link eth0 name pt type macvlan mode passthru",
        )
        .await?,
    );
    lab.shutdown().await?;
    Ok(o)
}

/// A source-mode child takes frames by their source MAC: `peer` is listed, `other` is not.
pub(crate) async fn source(assets: &Assets) -> Result<Observed<ModeSource>> {
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
    o.insert(
        ModeSource::ChildAndPeerMacListed,
        reach(host1, Some("ns1"), PEER).await?,
    );
    o.insert(
        ModeSource::ChildAndOtherMacNotListed,
        reach(host1, Some("ns1"), &other).await?,
    );
    host1.succeed(macaddr(&format!("del {peer}"))).await?;
    o.insert(
        ModeSource::ChildAndPeerAfterMacaddrDel,
        reach(host1, Some("ns1"), PEER).await?,
    );
    host1.succeed(macaddr(&format!("add {peer}"))).await?;
    o.insert(
        ModeSource::ChildAndPeerAfterMacaddrAddAgain,
        reach(host1, Some("ns1"), PEER).await?,
    );
    host1.succeed(macaddr("flush")).await?;
    o.insert(
        ModeSource::ChildAndPeerAfterMacaddrFlush,
        reach(host1, Some("ns1"), PEER).await?,
    );
    lab.shutdown().await?;
    Ok(o)
}

pub(crate) async fn ipvlan(assets: &Assets, mode: IpvlanMode) -> Result<Observed<Ipvlan>> {
    let lab = lan(assets, &format!("ipvlan-{mode}")).await?;
    let host1 = lab.vm("host1");
    host1
        .succeed(children_of(Child::Ipvlan(mode), "iv", 2))
        .await?;
    let mut o = Observed::new();
    o.insert(Ipvlan::ChildToPeer, reach(host1, Some("ns1"), PEER).await?);
    o.insert(
        Ipvlan::Sibling,
        reach(host1, Some("ns2"), "192.168.88.11").await?,
    );
    o.insert(Ipvlan::ChildToHost, reach(host1, Some("ns1"), HOST).await?);
    o.insert(
        Ipvlan::SiblingV6,
        reach(host1, Some("ns2"), CHILD1_V6).await?,
    );
    if mode == IpvlanMode::L2 {
        o.insert(
            Ipvlan::ChildToPeerV6,
            reach(host1, Some("ns1"), PEER_V6).await?,
        );
        o.insert(
            Ipvlan::ChildToHostV6,
            reach(host1, Some("ns1"), HOST_V6).await?,
        );
    }
    o.insert(
        Ipvlan::ChildrensMac,
        mac_of(host1, Some("ns1"), "iv1").await?,
    );
    o.insert(Ipvlan::Eth0sMac, mac_of(host1, None, "eth0").await?);
    let flags = host1
        .succeed(Cmd::script("ip -j link show iv1").netns("ns1"))
        .await?;
    let noarp = flags.contains("\"NOARP\"");
    o.insert(Ipvlan::ChildsLinkFlags, if noarp { "NOARP" } else { "ARP" });
    if mode == IpvlanMode::L3 {
        // Nobody answers ARP for an l3 child: the LAN must route to it through its host.
        lab.vm("peer")
            .succeed(format!("ip route add 192.168.88.11/32 via {HOST}"))
            .await?;
        o.insert(
            Ipvlan::ChildToPeerRoutedViaHost1,
            reach(host1, Some("ns1"), PEER).await?,
        );
    }
    lab.shutdown().await?;
    Ok(o)
}
