//! The seed's "IEEE 802.11 不喜欢同一个客户端上有多个 MAC 地址 … 使用 Ipvlan" (802.11 does not like
//! several MACs on one client; use ipvlan), on simulated radios: `mac80211_hwsim` makes two in
//! one guest, `hostapd` runs an open access point on the first, and the second, in a namespace
//! of its own, is the station that macvlan and ipvlan children hang off. Debian's cloud kernels
//! leave wireless out, so this runs on the generic kernel ([`KERNEL`]).

use lab_harness::{Assets, Child, Cmd, Extras, IpvlanMode, Lab, MacvlanMode, Result, Size, Vm};

use crate::expectations::ClaimWifi;
use crate::probe::{configs_with, reach, refusal};
use crate::{Observation, Observed};

/// The kernel of `kernels/kernels.toml` this scenario boots: one with wireless.
pub const KERNEL: &str = "debian-6.1-generic";

/// The access point's own address, and the station's.
const AP: &str = "10.0.0.1";
const STATION: &str = "10.0.0.2";

/// Two radios: phy0 (`wlan0`) is the access point's ([`AP`]), phy1 (`wlan1`) moves to netns
/// `sta` and joins it ([`STATION`]). hostapd's open network needs no wpa_supplicant: `iw
/// connect` is enough.
fn radios() -> String {
    format!(
        r#"ip netns add sta && iw phy phy1 set netns name sta
printf 'interface=wlan0\ndriver=nl80211\nssid=lab\nhw_mode=g\nchannel=1\n' > /tmp/hostapd.conf
hostapd -B -P /run/hostapd.pid /tmp/hostapd.conf >/tmp/hostapd.log || {{ cat /tmp/hostapd.log >&2; exit 1; }}
ip addr add {AP}/24 dev wlan0
ip -n sta link set wlan1 up
# Joining takes a scan first: ask again every 2 s until the link says so, for 30 s at most.
for i in $(seq 120); do
  [ $((i % 8)) = 1 ] && ip netns exec sta iw dev wlan1 connect lab 2>/dev/null
  ip netns exec sta iw dev wlan1 link | grep -q '^Connected' && break
  sleep 0.25
done
ip netns exec sta iw dev wlan1 link | grep -q '^Connected' || {{ echo 'wlan1 never joined the access point' >&2; exit 1; }}
ip -n sta addr add {STATION}/24 dev wlan1"#
    )
}

pub(crate) async fn wifi(assets: &Assets) -> Result<Observed<ClaimWifi>> {
    let radio = Extras {
        // hostapd pulls in ~75 MiB of packages; the guest unpacks them into its memory.
        packages: vec!["iw".into(), "hostapd".into()],
        modules: vec!["mac80211_hwsim".into()],
        ..Extras::default()
    };
    let size = Size {
        memory_mib: Some(512),
        ..Size::default()
    };
    let mut configs = configs_with(assets, &["host1"], &radio, size).await?;
    let lab = Lab::builder(assets, "claim-wifi")
        .host_config(configs.remove(0))
        .boot()
        .await?;
    let host1 = lab.vm("host1");
    host1
        .succeed(Cmd::script(radios()).timeout(std::time::Duration::from_secs(90)))
        .await?;
    let link = host1
        .succeed("ip netns exec sta iw dev wlan1 link | head -3")
        .await?;
    let station = reach(host1, Some("sta"), AP).await?;
    let joined = host1
        .succeed("iw dev wlan0 station dump | grep -c '^Station' || true")
        .await?
        .trim()
        .to_string();
    let macvlan = child(host1, Child::Macvlan(MacvlanMode::Bridge), "10.0.0.3").await?;
    let ipvlan = child(host1, Child::Ipvlan(IpvlanMode::L2), "10.0.0.4").await?;
    let mut o = Observed::from_iter([
        (ClaimWifi::StationToAccessPoint, station),
        (ClaimWifi::StationsTheAccessPointKnows, joined.into()),
        (ClaimWifi::AMacvlanChildOnTheStation, macvlan.0.into()),
        (ClaimWifi::MacvlanChildToAccessPoint, macvlan.1),
        (ClaimWifi::AnIpvlanChildOnTheStation, ipvlan.0.into()),
        (ClaimWifi::IpvlanChildToAccessPoint, ipvlan.1),
    ]);
    o.note(
        "kernel",
        format!(
            "{} ({KERNEL}: the cloud kernels have no wireless)\n",
            assets.kernel.release
        ),
    );
    o.note(format!("the station's link ({STATION} on wlan1)"), link);
    lab.shutdown().await?;
    Ok(o)
}

/// Makes a child of `kind` on the station's `wlan1` in netns `c`, with `ip`: whether the kernel
/// accepted it, and whether it reaches the access point. The child is gone afterwards (a macvlan
/// and an ipvlan cannot share a parent).
async fn child(host: &Vm, kind: Child, ip: &str) -> Result<(String, Observation)> {
    let kind = kind.ip_type();
    let made = refusal(
        host,
        &format!(
            "ip netns add c && ip -n sta link add link wlan1 name ch type {kind} && \
             ip -n sta link set ch netns c && ip -n c addr add {ip}/24 dev ch && ip -n c link set ch up"
        ),
    )
    .await?;
    let reached = if made == "accepted" {
        reach(host, Some("c"), AP).await?
    } else {
        "(not made)".into()
    };
    // The link first, by itself: a namespace's devices go in the background once it is
    // deleted, and the next child would find this one still holding `wlan1`.
    host.succeed("ip -n c link delete ch 2>/dev/null; ip netns delete c")
        .await?;
    Ok((made, reached))
}
