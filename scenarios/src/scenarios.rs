//! Which experiment a scenario name runs. Each returns what it observed; none decides whether
//! that is right (that is [`crate::expectations`]).

use lab_harness::{Assets, Result};

use crate::{claims, modes, seed, Observed};

pub(crate) async fn run(name: &str, assets: &Assets) -> Result<Observed> {
    match name {
        "seed/containers" => seed::containers(assets).await,
        "seed/host-isolation" => seed::host_isolation(assets, false).await,
        "shim" => seed::host_isolation(assets, true).await,
        "mode/bridge" => modes::mode(assets, "bridge").await,
        "mode/private" => modes::mode(assets, "private").await,
        "mode/vepa" => modes::mode(assets, "vepa").await,
        "mode/passthru" => modes::passthru(assets).await,
        "mode/source" => modes::source(assets).await,
        "ipvlan/l2" => modes::ipvlan(assets, "l2").await,
        "ipvlan/l3" => modes::ipvlan(assets, "l3").await,
        "claim/nic-mac-limit" => claims::nic_mac_limit(assets).await,
        "claim/switch-mac-limit" => claims::switch_mac_limit(assets).await,
        "nested/macvtap-bridge" => crate::nested::bridge(assets).await,
        "nested/macvtap-vepa" => crate::nested::vepa(assets).await,
        "nested/cleanup" => crate::nested::cleanup(assets).await,
        "nested/macvtap-passthru" => crate::nested::passthru(assets).await,
        "claim/promisc" => claims::promisc(assets).await,
        "cleanup" => seed::cleanup(assets).await,
        other => Err(lab_harness::Error::Missing {
            what: format!("scenario {other}"),
            fix: "see `cargo xtask lab --list`".into(),
        }),
    }
}
