#![doc = include_str!("../README.md")]
//!
//! ## One guest
//!
//! Start at [`Vm::boot`]; tests read like the experiment:
//!
//! ```no_run
//! # async fn demo() -> lab_harness::Result<()> {
//! let assets = lab_harness::Assets::from_env()?;
//! let vm = lab_harness::Vm::boot(assets.vm("host1")).await?;
//! vm.succeed("ip link set eth0 promisc on").await?;
//! assert!(vm.qmp().rx_filter().await.map_err(|e| lab_harness::Error::guest("host1", lab_harness::Phase::Qmp, e.to_string()))?.promiscuous);
//! vm.fail("ping -c1 -W1 192.168.88.11").await?;
//! vm.shutdown().await
//! # }
//! ```

pub mod accel;
pub mod agent;
pub mod assets;
pub mod boot;
pub mod check;
mod cmd;
pub mod config;
pub mod console;
pub mod error;
pub mod events;
pub mod flaky;
pub mod guest;
pub mod host;
pub mod job;
pub mod kmemleak;
pub mod ktap;
pub mod lab;
pub mod lan;
pub mod launch;
pub mod link;
mod mac;
pub mod nest;
pub mod private;
pub mod process;
pub mod qemu;
pub mod qmp;
pub mod rundirs;
pub mod session;
pub mod settings;
pub mod snapshot;
pub mod spec;
pub mod ssh;
pub mod text;
pub mod vm;
pub mod wait;

pub use accel::Accel;
pub use assets::{Assets, Extras, Runs, Size};
pub use boot::BootTally;
pub use config::{
    BadMacAddr, Boot, ConfigError, InitrdLayer, Keep, MacAddr, Machine, NetBackend, Policy,
    VmConfig,
};
pub use error::{Error, Phase, Result};
pub use guest::Guest;
pub use job::Job;
pub use lab::{Lab, LabBuilder};
pub use lab_proto::{Reply, RunOutput, Stream, TtySize, Verdict, INPUT_WINDOW};
pub use lan::impair::{Impairment, Loss};
pub use lan::{PortCounters, PortPolicy, PortVlans, VlanSet};
pub use link::{Child, IpvlanMode, MacvlanMode, MacvtapMode};
pub use qmp::{Qmp, QmpError, RxFilter};
pub use session::Session;
pub use settings::Settings;
pub use spec::{RawLan, Source, Spec, SpecError, Topology};
pub use vm::{BootKind, Cmd, Vm};
