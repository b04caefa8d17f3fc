//! QMP, QEMU's control protocol, through the `qapi` crate.
//!
//! The crate's async driver decodes every message against one QEMU release's schema (0.15: QEMU
//! 9.1), and one message it cannot decode ends its stream and fails every pending command. So we
//! put a pump in front of it: the pump reads QEMU's raw lines, keeps them (for failure reports),
//! takes every *event* out as plain JSON into our own log, and hands only the greeting and
//! command replies to `qapi`. Events therefore never break the stream, whatever QEMU sends.
//! Commands whose reply shape differs across QEMU versions use our own types with tolerant fields.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use qapi::futures::{QapiService, QmpStreamTokio};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, DuplexStream, WriteHalf};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;

/// The `id` of the guest's NIC `nic` (`eth<nic>`; `-device virtio-net-device,id=...`).
pub fn nic_id(nic: u8) -> String {
    format!("nic{nic}")
}
const RAW_LOG_LINES: usize = 200;

type Writer = QmpStreamTokio<OwnedWriteHalf>;

#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("QMP greeting/negotiation failed: {0}")]
    Handshake(std::io::Error),
    #[error("`{command}` got no reply within {within:?}")]
    Timeout {
        command: &'static str,
        within: Duration,
    },
    #[error("`{command}` failed: {message}")]
    Command {
        command: &'static str,
        message: String,
    },
}

/// One QMP event as QEMU sent it.
#[derive(Debug, Clone)]
pub struct QmpEvent {
    pub name: String,
    pub data: serde_json::Value,
    pub received: Instant,
}

/// A guest NIC's receive filter, as `query-rx-filter` reports it: the host's view of whether the
/// guest asked for promiscuous mode and which MAC addresses it filters for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct RxFilter {
    pub name: String,
    pub promiscuous: bool,
    pub main_mac: String,
    #[serde(default)]
    pub unicast_table: Vec<String>,
    #[serde(default)]
    pub unicast_overflow: bool,
    #[serde(default)]
    pub multicast_table: Vec<String>,
    #[serde(default)]
    pub multicast_overflow: bool,
    #[serde(default)]
    pub broadcast_allowed: bool,
}

#[derive(Debug, Serialize)]
struct QueryRxFilter {
    name: String,
}
impl qapi::Command for QueryRxFilter {
    type Ok = Vec<RxFilter>;
    const NAME: &'static str = "query-rx-filter";
    const ALLOW_OOB: bool = false;
}
impl qapi::qmp::QmpCommand for QueryRxFilter {}

#[derive(Debug, Serialize)]
struct QueryMigrate {}
impl qapi::Command for QueryMigrate {
    type Ok = MigrationState;
    const NAME: &'static str = "query-migrate";
    const ALLOW_OOB: bool = false;
}
impl qapi::qmp::QmpCommand for QueryMigrate {}

/// The part of `query-migrate`'s answer the harness reads. Declared here rather than taken from
/// qapi's schema, whose newer statistics fields older QEMUs do not send.
#[derive(Debug, Deserialize)]
struct MigrationState {
    #[serde(default)]
    status: Option<String>,
    #[serde(rename = "error-desc", default)]
    error_desc: Option<String>,
}

/// A QMP connection. Cheap to share by reference; every call has a deadline.
pub struct Qmp {
    service: QapiService<Writer>,
    shared: Arc<Mutex<Logs>>,
    timeout: Duration,
    pump: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
    /// QEMU's version from the greeting (`7.2.22`).
    pub version: String,
}

impl std::fmt::Debug for Qmp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qmp")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Logs {
    raw: VecDeque<String>,
    /// The newest [`EVENTS`]: a guest can make QEMU send events without end (a NIC's filter
    /// changed, say), and the log must not grow with them.
    events: VecDeque<QmpEvent>,
}

/// QMP events kept per guest.
const EVENTS: usize = 1024;

impl Qmp {
    /// Greets and negotiates on a connected QMP socket.
    pub async fn connect(stream: UnixStream, timeout: Duration) -> Result<Self, QmpError> {
        let (read, write) = stream.into_split();
        let (to_qapi, from_pump) = tokio::io::duplex(1 << 20);
        let shared = Arc::new(Mutex::new(Logs::default()));
        let pump = tokio::spawn(pump(read, to_qapi, Arc::clone(&shared)));
        let (qapi_read, _unused_write): (_, WriteHalf<DuplexStream>) = tokio::io::split(from_pump);
        let handshake = async {
            let negotiation = QmpStreamTokio::open_split(qapi_read, write).await?;
            let v = &negotiation.capabilities.QMP.version.qemu;
            let version = format!("{}.{}.{}", v.major, v.minor, v.micro);
            let stream = negotiation.negotiate().await?;
            Ok::<_, std::io::Error>((stream, version))
        };
        let (stream, version) = tokio::time::timeout(timeout, handshake)
            .await
            .map_err(|_| QmpError::Handshake(std::io::Error::other("no greeting")))?
            .map_err(QmpError::Handshake)?;
        let (service, driver) = stream.spawn_tokio();
        Ok(Self {
            service,
            shared,
            timeout,
            pump,
            driver,
            version,
        })
    }

    async fn execute<C>(&self, command: C) -> Result<C::Ok, QmpError>
    where
        C: qapi::qmp::QmpCommand,
        Writer: futures::Sink<qapi::Execute<C, u32>, Error = std::io::Error> + Unpin,
    {
        let name = C::NAME;
        self.note(format!("-> {name}"));
        match tokio::time::timeout(self.timeout, self.service.execute(command)).await {
            Err(_) => Err(QmpError::Timeout {
                command: name,
                within: self.timeout,
            }),
            Ok(Err(e)) => Err(QmpError::Command {
                command: name,
                message: e.to_string(),
            }),
            Ok(Ok(v)) => Ok(v),
        }
    }

    /// `query-status`: the VM's run state (`running`, `paused`, ...).
    pub async fn status(&self) -> Result<String, QmpError> {
        let s = self.execute(qapi::qmp::query_status {}).await?;
        Ok(format!("{:?}", s.status).to_lowercase())
    }

    /// `query-version`, as `major.minor.micro`.
    pub async fn query_version(&self) -> Result<String, QmpError> {
        let v = self.execute(qapi::qmp::query_version {}).await?;
        Ok(format!(
            "{}.{}.{}",
            v.qemu.major, v.qemu.minor, v.qemu.micro
        ))
    }

    /// `query-rx-filter` of the guest's `eth0`.
    pub async fn rx_filter(&self) -> Result<RxFilter, QmpError> {
        self.rx_filter_of(0).await
    }

    /// `query-rx-filter` of the guest's NIC `nic` (`eth<nic>`).
    pub async fn rx_filter_of(&self, nic: u8) -> Result<RxFilter, QmpError> {
        let mut all = self.execute(QueryRxFilter { name: nic_id(nic) }).await?;
        all.pop().ok_or(QmpError::Command {
            command: "query-rx-filter",
            message: "no NIC in the reply".into(),
        })
    }

    /// `set_link`: plug (`true`) or pull (`false`) the cable of the guest's `eth0`.
    pub async fn set_link(&self, up: bool) -> Result<(), QmpError> {
        self.set_link_of(0, up).await
    }

    /// `set_link` of the guest's NIC `nic` (`eth<nic>`).
    pub async fn set_link_of(&self, nic: u8, up: bool) -> Result<(), QmpError> {
        self.execute(qapi::qmp::set_link {
            name: nic_id(nic),
            up,
        })
        .await
        .map(drop)
    }

    /// `stop`: the guest's CPUs pause.
    pub async fn stop(&self) -> Result<(), QmpError> {
        self.execute(qapi::qmp::stop {}).await.map(drop)
    }

    /// `cont`: the guest runs again (also after its state was saved).
    pub async fn cont(&self) -> Result<(), QmpError> {
        self.execute(qapi::qmp::cont {}).await.map(drop)
    }

    /// Writes the (stopped) guest's state to `path` with `migrate "exec:cat > PATH"` and waits
    /// until QEMU says the migration completed. The guest stays paused afterwards. Memory in a
    /// shared file ([`crate::qemu::Memory::SavedTo`]) is left out (`x-ignore-shared`): the file
    /// already holds it, so the state is device state only, a few dozen KiB.
    pub async fn save_state(
        &self,
        path: &std::path::Path,
        within: Duration,
    ) -> Result<(), QmpError> {
        self.ignore_shared_memory().await?;
        // The default bandwidth cap (32 MiB/s before QEMU 9) is for live migration over a
        // network; a file on this host takes what it can.
        let fast = qapi::qmp::MigrateSetParameters {
            max_bandwidth: Some(u64::MAX >> 2),
            ..Default::default()
        };
        self.execute(qapi::qmp::migrate_set_parameters(fast))
            .await?;
        let uri = format!("exec:cat > {}", shell_quote(&path.display().to_string()));
        self.execute(qapi::qmp::migrate {
            uri: Some(uri),
            channels: None,
            detach: None,
            resume: None,
        })
        .await?;
        self.migration_done("migrate", within, Duration::from_millis(20))
            .await
    }

    /// Loads the state [`Qmp::save_state`] wrote into QEMU started with `-incoming defer`, then
    /// starts the guest: the state was saved from a stopped guest, and QEMU keeps it stopped.
    /// The memory is not in the state: QEMU was started on the snapshot's memory file.
    pub async fn load_state(
        &self,
        path: &std::path::Path,
        within: Duration,
    ) -> Result<(), QmpError> {
        // Both ends must agree: with the capability, the stream carries each memory block's
        // address and none of its pages.
        self.ignore_shared_memory().await?;
        let uri = format!("exec:cat {}", shell_quote(&path.display().to_string()));
        self.execute(qapi::qmp::migrate_incoming {
            uri: Some(uri),
            channels: None,
            exit_on_error: None,
        })
        .await?;
        self.migration_done("migrate-incoming", within, Duration::from_millis(5))
            .await?;
        self.cont().await
    }

    /// Migration capability `x-ignore-shared`: memory the guest shares with a file is not sent.
    async fn ignore_shared_memory(&self) -> Result<(), QmpError> {
        let ignore_shared = qapi::qmp::MigrationCapabilityStatus {
            capability: qapi::qmp::MigrationCapability::x_ignore_shared,
            state: true,
        };
        self.execute(qapi::qmp::migrate_set_capabilities {
            capabilities: vec![ignore_shared],
        })
        .await
        .map(drop)
    }

    /// Polls `query-migrate` every `poll` until the migration (out to a file, or in from one)
    /// completed; a failed or cancelled one is an error with QEMU's reason, named `command`.
    async fn migration_done(
        &self,
        command: &'static str,
        within: Duration,
        poll: Duration,
    ) -> Result<(), QmpError> {
        let done = crate::wait::try_until(within, poll, || async {
            let state = self.execute(QueryMigrate {}).await?;
            match state.status.as_deref() {
                Some("completed") => Ok(Some(())),
                Some(status @ ("failed" | "cancelled")) => {
                    let message = format!(
                        "query-migrate says {status}: {}",
                        state.error_desc.unwrap_or_default()
                    );
                    Err(QmpError::Command { command, message })
                }
                _ => Ok(None),
            }
        })
        .await?;
        done.ok_or(QmpError::Timeout { command, within })
    }

    /// `system_powerdown`: press the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), QmpError> {
        self.execute(qapi::qmp::system_powerdown {}).await.map(drop)
    }

    /// `quit`: QEMU exits at once. The connection closing right after is success, not an error.
    pub async fn quit(&self) -> Result<(), QmpError> {
        match self.execute(qapi::qmp::quit {}).await {
            Ok(_) => Ok(()),
            Err(QmpError::Command { message, .. }) if is_disconnect(&message) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The events received so far (the newest 1024 of them), in order.
    pub fn events(&self) -> Vec<QmpEvent> {
        self.logs().events.iter().cloned().collect()
    }

    /// Waits for an event called `name` (already received ones count).
    pub async fn wait_event(&self, name: &str, within: Duration) -> Option<QmpEvent> {
        crate::wait::until(within, Duration::from_millis(50), || async {
            self.logs().events.iter().find(|e| e.name == name).cloned()
        })
        .await
    }

    /// The last raw lines exchanged (`<-` from QEMU, `->` commands sent), for failure reports.
    pub fn raw_log(&self) -> Vec<String> {
        self.logs().raw.iter().cloned().collect()
    }

    fn note(&self, line: String) {
        push_raw(&mut self.logs(), line);
    }

    fn logs(&self) -> std::sync::MutexGuard<'_, Logs> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Qmp {
    fn drop(&mut self) {
        self.pump.abort();
        self.driver.abort();
    }
}

fn is_disconnect(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("disconnected")
        || m.contains("eof")
        || m.contains("broken pipe")
        || m.contains("reset")
}

fn push_raw(logs: &mut Logs, line: String) {
    if logs.raw.len() == RAW_LOG_LINES {
        logs.raw.pop_front();
    }
    logs.raw.push_back(line);
}

/// Reads QEMU's lines; events go to our log, everything else to `qapi`.
async fn pump(
    read: tokio::net::unix::OwnedReadHalf,
    mut to_qapi: DuplexStream,
    shared: Arc<Mutex<Logs>>,
) {
    let mut lines = BufReader::new(read).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or(serde_json::Value::Null);
        {
            let mut logs = shared.lock().unwrap_or_else(|p| p.into_inner());
            push_raw(&mut logs, format!("<- {line}"));
            if let Some(name) = value.get("event").and_then(|e| e.as_str()) {
                let data = value.get("data").cloned().unwrap_or_default();
                if logs.events.len() == EVENTS {
                    logs.events.pop_front();
                }
                logs.events.push_back(QmpEvent {
                    name: name.to_string(),
                    data,
                    received: Instant::now(),
                });
                continue;
            }
        }
        if to_qapi
            .write_all(format!("{line}\n").as_bytes())
            .await
            .is_err()
        {
            break;
        }
    }
}

/// `path` as one word for `/bin/sh`, which runs QEMU's `exec:` migration commands.
pub(crate) fn shell_quote(path: &str) -> String {
    format!("'{}'", path.replace('\'', "'\\''"))
}
