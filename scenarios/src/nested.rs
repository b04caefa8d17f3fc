//! The seed's second half, one level down: lab guests are the hosts, and each starts VMs of its
//! own on a macvtap of its `eth0`, as `virt-install --network type=direct` does.

use lab_harness::lab::SETTLE;
use lab_harness::nest::{domiflist, InnerSpec, InnerVm, COUNT_QEMU};
use lab_harness::{
    Assets, Child, Cmd, Guest, Lab, MacvlanMode, MacvtapMode, PortPolicy, Result, Vm,
};

use crate::expectations::{
    NestedBond0, NestedCleanup, NestedMacvtapBridge, NestedMacvtapPassthru, NestedMacvtapVepa,
};
use crate::probe::{children_on, json_field, mac_of, none_or, reach, refusal};
use crate::Observed;

/// The seed's addresses for the VMs.
const VM1: &str = "192.168.88.21";
const VM2: &str = "192.168.88.22";

/// Starts an inner VM on `host` with `ip` on its `eth0`, the host's `eth0` promiscuous first as
/// the seed does.
async fn start<'h>(host: &'h Vm, spec: InnerSpec, ip: &str) -> Result<InnerVm<'h>> {
    host.succeed("ip link set eth0 promisc on").await?;
    let vm = InnerVm::start(host, spec).await?;
    vm.succeed(format!(
        "ip addr add {ip}/24 dev eth0 && ip link set eth0 up"
    ))
    .await?;
    Ok(vm)
}

/// A LAN of a nest guest `host1`, sized for `inner_vms` VMs, and a `peer`, numbered.
async fn nest_and_peer(assets: &Assets, name: &str, inner_vms: u32) -> Result<Lab> {
    let lab = Lab::builder(assets, name)
        .host_config(assets.nest_vm("host1", inner_vms)?)
        .host("peer")
        .boot()
        .await?;
    lab.number_hosts().await?;
    Ok(lab)
}

/// vm1 on host1 and vm2 on host2, both macvtap bridge mode; `peer` is the rest of the LAN.
pub async fn bridge(assets: &Assets) -> Result<Observed<NestedMacvtapBridge>> {
    let lab = Lab::builder(assets, "nested-macvtap-bridge")
        .host_config(assets.nest_vm("host1", 1)?)
        .host_config(assets.nest_vm("host2", 1)?)
        .host("peer")
        .boot()
        .await?;
    lab.number_hosts().await?;
    let (host1, host2, peer) = (lab.vm("host1"), lab.vm("host2"), lab.vm("peer"));
    let (vm1, vm2) = tokio::try_join!(
        start(
            host1,
            InnerSpec::new("vm1", "macvtap0").mode(MacvtapMode::Bridge),
            VM1
        ),
        start(
            host2,
            InnerSpec::new("vm2", "macvtap0").mode(MacvtapMode::Bridge),
            VM2
        ),
    )?;
    let rows = domiflist(&[&vm1]).await?;
    let inside = vm1.succeed("cat /sys/class/net/eth0/address").await?;
    let row = &rows[0];
    let listing = format!(
        "{} {} {} {}",
        row.interface, row.kind, row.source, row.model
    );
    let mut o = Observed::from_iter([
        (
            NestedMacvtapBridge::Vm2OnHost2ToVm1OnHost1,
            reach(&vm2, None, VM1).await?,
        ),
        (
            NestedMacvtapBridge::Host1ToItsOwnVm1,
            reach(host1, None, VM1).await?,
        ),
        (
            NestedMacvtapBridge::PeerToVm1,
            reach(peer, None, VM1).await?,
        ),
        (
            NestedMacvtapBridge::PeerToVm2,
            reach(peer, None, VM2).await?,
        ),
        (NestedMacvtapBridge::DomiflistOfVm1, listing.into()),
        (
            NestedMacvtapBridge::DomiflistMacOfVm1,
            row.mac.clone().into(),
        ),
        (
            NestedMacvtapBridge::Vm1sMacFromInside,
            inside.trim().to_string().into(),
        ),
        (
            NestedMacvtapBridge::InnerAccelerator,
            accel_note(&vm1).into(),
        ),
    ]);
    let listings = [
        ("host1", domiflist(&[&vm1]).await?),
        ("host2", domiflist(&[&vm2]).await?),
    ];
    for (host, rows) in listings {
        o.note(
            format!("virsh domiflist on {host}"),
            lab_harness::nest::format_domiflist(&rows),
        );
    }
    vm1.stop().await?;
    vm2.stop().await?;
    lab.shutdown().await?;
    Ok(o)
}

/// Two VMs on host1, both on macvtaps in VEPA mode (virt-install's default): their frames to each
/// other leave through eth0, so only a hairpinning switch brings them back.
pub async fn vepa(assets: &Assets) -> Result<Observed<NestedMacvtapVepa>> {
    let lab = nest_and_peer(assets, "nested-macvtap-vepa", 2).await?;
    let host1 = lab.vm("host1");
    let (vm1, vm2) = tokio::try_join!(
        start(
            host1,
            InnerSpec::new("vm1", "macvtap0").mode(MacvtapMode::Vepa),
            VM1
        ),
        start(
            host1,
            InnerSpec::new("vm2", "macvtap1").mode(MacvtapMode::Vepa),
            VM2
        ),
    )?;
    let to_peer = reach(&vm1, None, &lab.ip("peer")).await?;
    let _ = reach(&vm2, None, &lab.ip("peer")).await?;
    let off = reach(&vm2, None, VM1).await?;
    lab.set_policy("host1", PortPolicy::HAIRPIN)?;
    let on = reach(&vm2, None, VM1).await?;
    let o = Observed::from_iter([
        (NestedMacvtapVepa::Vm2ToVm1OnOneHostHairpinOff, off),
        (NestedMacvtapVepa::Vm2ToVm1OnOneHostHairpinOn, on),
        (NestedMacvtapVepa::Vm1ToPeer, to_peer),
    ]);
    vm1.stop().await?;
    vm2.stop().await?;
    lab.shutdown().await?;
    Ok(o)
}

/// `virsh destroy` as stopping the VM: nothing of it stays on its host.
pub async fn cleanup(assets: &Assets) -> Result<Observed<NestedCleanup>> {
    let lab = nest_and_peer(assets, "nested-cleanup", 1).await?;
    let host1 = lab.vm("host1");
    let vm1 = start(host1, InnerSpec::new("vm1", "macvtap0"), VM1).await?;
    let before = reach(&vm1, None, &lab.ip("peer")).await?;
    // The same probes as after the stop, so a probe that can never see anything cannot pass.
    let running = host1.succeed(COUNT_QEMU).await?.trim().to_string();
    let links = host1
        .succeed("ip -br link show type macvtap | cut -d@ -f1")
        .await?
        .trim()
        .to_string();
    let taps = host1
        .succeed("ls /dev/tap* 2>/dev/null | wc -l")
        .await?
        .trim()
        .to_string();
    vm1.stop().await?;
    let none_or = |s: String| {
        if s.trim().is_empty() {
            "none".to_string()
        } else {
            s.trim().replace('\n', "; ")
        }
    };
    let o = Observed::from_iter([
        (NestedCleanup::Vm1ToPeerBefore, before),
        (
            NestedCleanup::QemuProcessesOnHost1WhileVm1Runs,
            running.into(),
        ),
        (NestedCleanup::MacvtapLinksWhileVm1Runs, links.into()),
        (NestedCleanup::TapDevicesWhileVm1Runs, taps.into()),
        (
            NestedCleanup::QemuProcessesLeftOnHost1,
            match host1.succeed(COUNT_QEMU).await?.trim() {
                "0" => "none".to_string().into(),
                n => n.into(),
            },
        ),
        (
            NestedCleanup::MacvtapLinksLeft,
            none_or(host1.succeed("ip -br link show type macvtap").await?).into(),
        ),
        (
            NestedCleanup::TapDevicesLeft,
            none_or(host1.succeed("ls /dev/tap* 2>/dev/null || true").await?).into(),
        ),
    ]);
    lab.shutdown().await?;
    Ok(o)
}

/// macvtap's modes as libvirt uses them: a macvtap made without `mode` (what `virt-install`
/// makes without `source.mode`), and passthru, where one VM takes the whole NIC.
pub async fn passthru(assets: &Assets) -> Result<Observed<NestedMacvtapPassthru>> {
    let lab = nest_and_peer(assets, "nested-macvtap-passthru", 1).await?;
    let host1 = lab.vm("host1");
    host1
        .succeed("ip link add link eth0 name macvtap9 type macvtap")
        .await?;
    let detail = host1.succeed("ip -d -j link show macvtap9").await?;
    let default_mode = json_field(&detail, "mode").unwrap_or_else(|| "unknown".into());
    host1.succeed("ip link delete macvtap9").await?;
    // Passthru: the macvtap takes eth0's MAC whatever it is given, so the VM's NIC must carry
    // it too (libvirt does the same); eth0 itself then hands every frame to the VM.
    let eth0_mac = mac_of(host1, None, "eth0").await?;
    let mut spec = InnerSpec::new("vm1", "macvtap0").mode(MacvtapMode::Passthru);
    spec.mac = eth0_mac;
    let vm1 = start(host1, spec, VM1).await?;
    let inside = vm1.succeed("cat /sys/class/net/eth0/address").await?;
    let tap = host1.succeed("cat /sys/class/net/macvtap0/address").await?;
    let o = Observed::from_iter([
        (
            NestedMacvtapPassthru::ModeOfAMacvtapMadeWithoutMode,
            default_mode.into(),
        ),
        (
            NestedMacvtapPassthru::PassthruMacvtapsMac,
            tap.trim().into(),
        ),
        (NestedMacvtapPassthru::Vm1sMac, inside.trim().into()),
        (NestedMacvtapPassthru::Eth0sMac, eth0_mac.into()),
        (
            NestedMacvtapPassthru::Vm1ToPeer,
            reach(&vm1, None, &lab.ip("peer")).await?,
        ),
        (
            NestedMacvtapPassthru::ASecondMacvtapBesideIt,
            refusal(
                host1,
                "ip link add link eth0 name macvtap1 type macvtap mode bridge",
            )
            .await?
            .into(),
        ),
    ]);
    vm1.stop().await?;
    lab.shutdown().await?;
    Ok(o)
}

/// The seed's `virsh attach-interface --type direct --source bond0`: host1 has two NICs, each
/// its own switch port and cable, bonded active-backup as `bond0`. Two macvlan children (ns1,
/// ns2) and a VM's macvtap sit on the bond; then the active NIC's cable is pulled.
pub async fn bond0(assets: &Assets) -> Result<Observed<NestedBond0>> {
    let mut nest = assets.nest_vm("host1", 1)?;
    nest.machine.nics = 2;
    let lab = Lab::builder(assets, "nested-bond0")
        .host_config(nest)
        .host("peer")
        .boot()
        .await?;
    let (host1, peer) = (lab.vm("host1"), lab.vm("peer"));
    let (host_ip, peer_ip) = (lab.ip("host1"), lab.ip("peer"));
    // miimon: the bond looks at its NICs' carrier every 100 ms. A NIC is enslaved while down.
    let bond = format!(
        "modprobe bonding max_bonds=0
         ip link add bond0 type bond mode active-backup miimon 100
         for nic in eth0 eth1; do ip link set $nic down && ip link set $nic master bond0; done
         ip link set bond0 up && ip addr add {host_ip}/24 dev bond0
         {children}",
        children = children_on("bond0", Child::Macvlan(MacvlanMode::Bridge), "mv", 2)
    );
    tokio::try_join!(
        host1.succeed(bond),
        peer.succeed(format!(
            "ip addr add {peer_ip}/24 dev eth0 && ip link set eth0 up"
        ))
    )?;
    peer.wait_until_succeeds(format!("ping -c1 -W1 {host_ip}"), SETTLE)
        .await?;
    let vm1 = InnerVm::start(host1, InnerSpec::new("vm1", "macvtap0").source("bond0")).await?;
    vm1.succeed(format!(
        "ip addr add {VM1}/24 dev eth0 && ip link set eth0 up"
    ))
    .await?;
    let active = || async {
        Ok::<_, lab_harness::Error>(
            host1
                .succeed("cat /sys/class/net/bond0/bonding/active_slave")
                .await?
                .trim()
                .to_string(),
        )
    };
    let before = (
        active().await?,
        reach(peer, None, CHILD1).await?,
        reach(&vm1, None, &peer_ip).await?,
    );
    let source = domiflist(&[&vm1]).await?[0].source.clone();

    // The peer pings child 1 every 50 ms; a second in, eth0's cable goes.
    let pings = peer.succeed(
        Cmd::script(format!("ping -D -n -i0.05 -c{PINGS} -W1 {CHILD1} || true"))
            .timeout(std::time::Duration::from_secs(60)),
    );
    let pull = async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        lab.nic_cable("host1", 0, false).await
    };
    let (pings, ()) = tokio::try_join!(pings, pull)?;
    let outage = failover_outage(&pings);
    // What told the switch that the children had moved to eth1's cable.
    let eth1 = lab.switch().port_capture(lab.nic_port("host1", 1));
    let frames = lab_harness::lan::capture::read_frames(&eth1)
        .map_err(|e| lab_harness::Error::io(&eth1, e))?;
    let mut announced: Vec<String> = frames
        .iter()
        .filter_map(|f| lab_harness::lan::capture::gratuitous_arp(f))
        .map(|ip| ip.to_string())
        .filter(|ip| [CHILD1, CHILD2].contains(&ip.as_str()))
        .collect();
    announced.sort();
    announced.dedup();
    let after = (
        active().await?,
        reach(peer, None, CHILD1).await?,
        reach(peer, None, CHILD2).await?,
        reach(&vm1, None, &peer_ip).await?,
    );
    let o = Observed::from_iter([
        (NestedBond0::ActiveNic, before.0.into()),
        (NestedBond0::PeerToChildOnBond0, before.1),
        (NestedBond0::Vm1MacvtapOnBond0ToPeer, before.2),
        (NestedBond0::DomiflistSourceOfVm1, source.into()),
        (NestedBond0::ActiveNicAfterItsCableIsPulled, after.0.into()),
        (NestedBond0::PeerToChild1AfterFailover, after.1),
        (NestedBond0::PeerToChild2AfterFailover, after.2),
        (NestedBond0::Vm1ToPeerAfterFailover, after.3),
        (NestedBond0::FailoverAsThePeersPingsSawIt, outage.into()),
        (
            NestedBond0::ChildrensGratuitousArpsOnEth1sCable,
            none_or(announced.join(", ")).into(),
        ),
    ]);
    vm1.stop().await?;
    lab.shutdown().await?;
    Ok(o)
}

/// How many pings the bond scenario sends across the failover (50 ms apart).
const PINGS: u32 = 100;
/// The bond's children, as [`children_on`] numbers them.
const CHILD1: &str = "192.168.88.11";
const CHILD2: &str = "192.168.88.12";

/// The longest silence between two answers in `ping -D` output, and the answers counted: how
/// long the children were cut off while the bond failed over.
fn failover_outage(ping: &str) -> String {
    let stamps: Vec<f64> = ping
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let longest = stamps
        .windows(2)
        .map(|w| w[1] - w[0])
        .fold(0.0_f64, f64::max);
    format!(
        "{} of {PINGS} answered, the longest silence {:.0} ms",
        stamps.len(),
        longest * 1000.0
    )
}

/// Which accelerator ran the VM, whether it was restored or booted, and how long it took.
fn accel_note(vm: &InnerVm<'_>) -> String {
    let why = vm.fallback().map(|f| format!(", {f}")).unwrap_or_default();
    let how = if vm.restored() {
        "restored from the nest's saved VM"
    } else {
        "booted"
    };
    let failed = vm
        .restore_failure()
        .map(|f| format!("; its restore failed: {f}"))
        .unwrap_or_default();
    format!(
        "{} ({} {how}, ready {:.1?} after its macvtap was made{why}{failed})",
        vm.accel(),
        lab_harness::Guest::name(vm),
        vm.boot_time()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_outage_is_the_longest_silence_between_answers() {
        let ping = "PING 192.168.88.11 (192.168.88.11) 56(84) bytes of data.
[1700000000.000000] 64 bytes from 192.168.88.11: icmp_seq=1 ttl=64 time=1.2 ms
[1700000000.050000] 64 bytes from 192.168.88.11: icmp_seq=2 ttl=64 time=1.1 ms
[1700000000.950000] 64 bytes from 192.168.88.11: icmp_seq=20 ttl=64 time=1.0 ms
[1700000001.000000] 64 bytes from 192.168.88.11: icmp_seq=21 ttl=64 time=1.0 ms
--- 192.168.88.11 ping statistics ---";
        assert_eq!(
            failover_outage(ping),
            format!("4 of {PINGS} answered, the longest silence 900 ms")
        );
        assert_eq!(
            failover_outage(""),
            format!("0 of {PINGS} answered, the longest silence 0 ms")
        );
    }
}
