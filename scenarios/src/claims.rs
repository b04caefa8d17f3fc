//! The seed's claims about promiscuous mode and MAC limits, put to a real kernel and NIC.

use std::time::Duration;

use lab_harness::lab::SETTLE;
use lab_harness::{Assets, Child, Cmd, Error, IpvlanMode, MacvlanMode, PortPolicy, Result, Vm};

use crate::expectations::{ClaimNicMacLimit, ClaimPromisc, ClaimSwitchMacLimit};
use crate::probe::{children, children_of, json_field, lan, reach, refusal, PEER};
use crate::{Observation, Observed};

pub(crate) async fn promisc(assets: &Assets) -> Result<Observed<ClaimPromisc>> {
    let lab = lan(assets, "claim-promisc").await?;
    let host1 = lab.vm("host1");
    host1.succeed("ip link set eth0 promisc off").await?;
    host1.succeed(children(MacvlanMode::Bridge)).await?;
    let reached = reach(host1, Some("ns1"), PEER).await?;
    // The kernel may still raise promiscuity behind the user's back; the counter tells, the flag does not.
    let promiscuity = host1.succeed("ip -d -j link show eth0").await?;
    let promiscuity = json_field(&promiscuity, "promiscuity").unwrap_or_else(|| "?".into());
    let filter = host1
        .qmp()
        .rx_filter()
        .await
        .map_err(|e| Error::qmp("host1", &e))?;
    let mut macs = Vec::new();
    for ns in ["ns1", "ns2"] {
        macs.push(
            host1
                .succeed(Cmd::script("cat /sys/class/net/mv*/address").netns(ns))
                .await?
                .trim()
                .to_string(),
        );
    }
    let present = macs
        .iter()
        .all(|m| filter.unicast_table.iter().any(|u| u == m));
    // What the claim turns on, each seen for itself; the table judges them together.
    let o = Observed::from_iter([
        (ClaimPromisc::BridgeChildrenReachPeerWithPromiscOff, reached),
        (
            ClaimPromisc::ChildrensMacsInTheNicsUnicastFilter,
            if present { "present" } else { "absent" }.into(),
        ),
        (ClaimPromisc::Eth0sPromiscuityCounter, promiscuity.into()),
        (
            ClaimPromisc::PromiscuousModeAsQemusNicSeesIt,
            if filter.promiscuous { "on" } else { "off" }.into(),
        ),
    ]);
    lab.shutdown().await?;
    Ok(o)
}

/// Adds bridge-mode children to eth0 until QEMU reports the NIC's unicast table overflowing
/// (virtio-net holds 64 entries), then checks the child that overflowed it still works.
///
/// Children come in batches of [`BATCH`] (one `ip -batch` each) until a batch overflows the
/// table; that batch is taken away again and its children are added one at a time, so the child
/// that overflows the table is still found exactly. One at a time from the first, the scenario
/// took 10.4 CPU-s (of the lab's ~115); this way 3.2.
pub(crate) async fn nic_mac_limit(assets: &Assets) -> Result<Observed<ClaimNicMacLimit>> {
    const MOST: u32 = 100;
    const BATCH: u32 = 8;
    let lab = lan(assets, "claim-nic-mac-limit").await?;
    let host1 = lab.vm("host1");
    let mut children = 0;
    let mut batch = BATCH;
    let mut overflowed_at = None;
    while children < MOST {
        let last = (children + batch).min(MOST);
        host1.succeed(add_children(children + 1..=last)).await?;
        let filter = rx_filter_showing(host1, last, true).await?;
        if !filter.unicast_overflow {
            children = last;
        } else if last == children + 1 {
            overflowed_at = Some((last, filter));
            break;
        } else {
            // Somewhere in this batch: take it away, and go on one at a time.
            host1
                .succeed(format!(
                    "for i in $(seq {} {last}); do ip link delete c$i; done",
                    children + 1
                ))
                .await?;
            rx_filter_showing(host1, children, false).await?;
            batch = 1;
        }
    }
    let mut o = Observed::new();
    let Some((n, filter)) = overflowed_at else {
        o.insert(
            ClaimNicMacLimit::ChildrenWhenTheUnicastTableOverflows,
            format!("no overflow with {MOST}"),
        );
        lab.shutdown().await?;
        return Ok(o);
    };
    o.insert(
        ClaimNicMacLimit::ChildrenWhenTheUnicastTableOverflows,
        format!("{n} (the table holds {})", n - 1),
    );
    o.insert(
        ClaimNicMacLimit::UnicastFilterAfterTheOverflow,
        if filter.unicast_table.is_empty() {
            "off: every unicast frame is taken".into()
        } else {
            format!("{} entries kept", filter.unicast_table.len())
        },
    );
    host1.succeed(format!("ip netns add ns1 && ip link set c{n} netns ns1 && ip -n ns1 addr add 192.168.88.11/24 dev c{n} && ip -n ns1 link set c{n} up")).await?;
    o.insert(
        ClaimNicMacLimit::TheChildThatOverflowedItToPeer,
        reach(host1, Some("ns1"), PEER).await?,
    );
    lab.shutdown().await?;
    Ok(o)
}

/// One `ip -batch` that adds bridge-mode children `c<i>` of eth0 and sets them up.
fn add_children(range: std::ops::RangeInclusive<u32>) -> String {
    let lines: String = range
        .map(|i| {
            format!("link add link eth0 name c{i} type macvlan mode bridge\nlink set c{i} up\n")
        })
        .collect();
    format!("ip -batch - <<'EOF'\n{lines}EOF")
}

/// QEMU's view of host1's NIC filter once it shows `children` children (or, with
/// `or_overflow`, has overflowed): newer kernels program the filter from a work item, so it may
/// lag the last `ip` command. Not shown within 5 s, what the filter says then.
async fn rx_filter_showing(
    host1: &Vm,
    children: u32,
    or_overflow: bool,
) -> Result<lab_harness::RxFilter> {
    let shows = |f: &lab_harness::RxFilter| {
        (or_overflow && f.unicast_overflow)
            || (!f.unicast_overflow && f.unicast_table.len() == children as usize)
    };
    let rx_filter = || async {
        host1
            .qmp()
            .rx_filter()
            .await
            .map_err(|e| Error::qmp("host1", &e))
    };
    let waited = lab_harness::wait::try_until(
        Duration::from_secs(5),
        Duration::from_millis(50),
        || async { Ok::<_, Error>(Some(rx_filter().await?).filter(|f| shows(f))) },
    )
    .await?;
    match waited {
        Some(f) => Ok(f),
        None => rx_filter().await,
    }
}

/// With the switch port capped at 2 MACs (eth0's and one more), three macvlan children compete
/// for one slot; three ipvlan children share eth0's MAC and need none.
pub(crate) async fn switch_mac_limit(assets: &Assets) -> Result<Observed<ClaimSwitchMacLimit>> {
    let lab = lan(assets, "claim-switch-mac-limit").await?;
    let host1 = lab.vm("host1");
    lab.set_policy(
        "host1",
        PortPolicy {
            hairpin: false,
            max_macs: Some(2),
            ..PortPolicy::default()
        },
    )?;
    async fn count_reaching(vm: &Vm) -> Result<usize> {
        let mut n = 0;
        for ns in ["ns1", "ns2", "ns3"] {
            n += usize::from(reach(vm, Some(ns), PEER).await? == Observation::Reach(true));
        }
        Ok(n)
    }
    let mut o = Observed::new();
    host1
        .succeed(children_of(Child::Macvlan(MacvlanMode::Bridge), "mv", 3))
        .await?;
    o.insert(
        ClaimSwitchMacLimit::MacvlanChildrenReachingPeerCapOf2Macs,
        format!("{} of 3", count_reaching(host1).await?),
    );
    o.insert(
        ClaimSwitchMacLimit::IpvlanBesideMacvlanOnOneParent,
        refusal(host1, "ip link add link eth0 name iv9 type ipvlan mode l2").await?,
    );
    // Once the namespaces' macvlans are really gone (see `passthru`), eth0 takes ipvlans.
    host1
        .succeed("ip netns delete ns1; ip netns delete ns2; ip netns delete ns3")
        .await?;
    host1
        .wait_until_succeeds(
            "ip link add link eth0 name probe type ipvlan mode l2 && ip link delete probe",
            SETTLE,
        )
        .await?;
    host1
        .succeed(children_of(Child::Ipvlan(IpvlanMode::L2), "iv", 3))
        .await?;
    o.insert(
        ClaimSwitchMacLimit::IpvlanChildrenReachingPeerSameCap,
        format!("{} of 3", count_reaching(host1).await?),
    );
    lab.shutdown().await?;
    Ok(o)
}
