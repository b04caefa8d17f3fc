//! `cargo xtask lab capture [HOST[:NIC]]`: the frames of a running lab's cable (or of its whole
//! switch, each port an interface of its own), live, as pcapng on stdout, for `wireshark -k -i -`
//! or `tcpdump -r -`. The running shell taps its switch ([`lab_harness::lan::tap`]) and sends
//! the frames over its control socket; this side writes them.
//!
//! A slow reader never slows the lab: this process blocks on its stdout, stops reading the
//! socket, the shell stops taking from its tap, and the tap drops what does not fit in its
//! budget, counting it. The count reaches the stream's statistics block (pcapng's ISB,
//! `isb_ifdrop`) when the capture ends with the lab.

use std::borrow::Cow;
use std::io::{BufWriter, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use lab_harness::Lab;
use lab_proto::attach::{ToAttach, ToShell};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::blocks::interface_statistics::{
    InterfaceStatisticsBlock, InterfaceStatisticsOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness};

use crate::attach::{Lines, Sender};

/// How often the shell tells the capture how many frames it dropped.
const DROPS_EVERY: Duration = Duration::from_secs(1);

/// The shell's side: taps `target` (`HOST[:NIC]`, or empty for the first switch) and sends
/// its frames until the capture or the lab goes.
pub(crate) async fn serve(
    lab: &Lab,
    target: &str,
    mut from: Lines,
    mut to: Sender,
) -> anyhow::Result<()> {
    let (mut tap, port, interfaces) = match tap(lab, target) {
        Ok(tapped) => tapped,
        Err(reason) => return to.send(&ToAttach::Refused { reason }).await,
    };
    to.send(&ToAttach::Capturing { interfaces }).await?;
    let mut tick = tokio::time::interval(DROPS_EVERY);
    let mut told = 0;
    loop {
        tokio::select! {
            frame = tap.recv() => {
                let Some(frame) = frame else { return Ok(()) };
                let unix_ns = frame
                    .at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                // A port's tap is one interface; the switch's has one per port.
                let interface = if port.is_some() { 0 } else { frame.port };
                to.send(&ToAttach::Frame {
                    interface: u32::try_from(interface).unwrap_or(u32::MAX),
                    unix_ns,
                    data: frame.bytes,
                })
                .await?;
            }
            _ = tick.tick() => {
                let dropped = tap.dropped();
                if dropped != told {
                    to.send(&ToAttach::CaptureDropped { frames: dropped }).await?;
                    told = dropped;
                }
            }
            // Nothing more is expected from the capture: anything else, or its end, ends it.
            _ = from.next::<ToShell>() => return Ok(()),
        }
    }
}

/// The tap `target` asks for, the port it is on (`None`: the whole switch), and its
/// interfaces' names.
fn tap(
    lab: &Lab,
    target: &str,
) -> Result<
    (
        lab_harness::lan::tap::TapReceiver,
        Option<usize>,
        Vec<String>,
    ),
    String,
> {
    if target.is_empty() {
        let spec = lab.spec();
        let segment = &spec.segments()[0];
        let names = segment
            .ports
            .iter()
            .map(|p| format!("{}:eth{}", spec.hosts()[p.host].name, p.nic))
            .collect();
        return Ok((lab.switch().tap(None), None, names));
    }
    let (host, nic) = crate::steer::resolve(lab, target)?;
    let port = lab.nic_port(host, nic);
    let tap = lab.nic_switch(host, nic).tap(Some(port));
    Ok((tap, Some(port), vec![format!("{host}:eth{nic}")]))
}

/// `lab capture`: pcapng on stdout until the lab ends (then the statistics block) or the reader
/// goes (then quietly).
pub fn run(target: Option<&str>, vlan: Option<u16>, pid: Option<u32>) -> anyhow::Result<()> {
    let shell = crate::attach::find(pid)?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let capture = ToShell::Capture {
            target: target.unwrap_or_default().to_string(),
        };
        // `_to` is held: the shell takes its closing for the capture's end.
        let (answer, mut from, _to) = crate::attach::request(&shell, &capture).await?;
        let ToAttach::Capturing { interfaces } = answer else {
            bail!("the lab shell answered {answer:?}");
        };
        let mut stream = Stream::start(&interfaces)?;
        loop {
            match from.next::<ToAttach>().await {
                Ok(Some(ToAttach::Frame {
                    interface,
                    unix_ns,
                    data,
                })) => {
                    if vlan.is_some_and(|v| vlan_of(&data) != Some(v)) {
                        stream.filtered += 1;
                        continue;
                    }
                    if stream.frame(interface, unix_ns, &data).is_err() {
                        // The reader went (a closed pipe): the capture is over.
                        return Ok(());
                    }
                }
                Ok(Some(ToAttach::CaptureDropped { frames })) => stream.dropped = frames,
                Ok(Some(_)) => {}
                // The lab ended.
                Ok(None) | Err(_) => break,
            }
        }
        // Written if the reader is still there; if not, there is no one to tell.
        let _ = stream.finish();
        Ok(())
    })
}

/// The 802.1Q VLAN of a tagged frame.
fn vlan_of(frame: &[u8]) -> Option<u16> {
    (frame.get(12..14)? == [0x81, 0x00])
        .then(|| u16::from_be_bytes([frame[14], frame[15]]) & 0x0fff)
}

/// The pcapng stream on stdout, and what its statistics will say.
struct Stream {
    writer: PcapNgWriter<BufWriter<std::io::Stdout>>,
    received: Vec<u64>,
    dropped: u64,
    filtered: u64,
}

impl Stream {
    /// The section header and one interface per name, nanosecond timestamps, Ethernet.
    fn start(interfaces: &[String]) -> anyhow::Result<Self> {
        let mut writer =
            PcapNgWriter::with_endianness(BufWriter::new(std::io::stdout()), Endianness::Little)
                .context("writing the capture's header")?;
        for name in interfaces {
            writer
                .write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: DataLink::ETHERNET,
                    snaplen: 0,
                    options: vec![
                        InterfaceDescriptionOption::IfName(Cow::Owned(name.clone())),
                        InterfaceDescriptionOption::IfTsResol(9),
                    ],
                })
                .context("writing the capture's interfaces")?;
        }
        writer.get_mut().flush()?;
        Ok(Self {
            writer,
            received: vec![0; interfaces.len()],
            dropped: 0,
            filtered: 0,
        })
    }

    /// One frame, flushed at once: a live reader sees it now.
    fn frame(&mut self, interface: u32, unix_ns: u64, data: &[u8]) -> std::io::Result<()> {
        if let Some(n) = self.received.get_mut(interface as usize) {
            *n += 1;
        }
        self.writer
            .write_pcapng_block(EnhancedPacketBlock {
                interface_id: interface,
                timestamp: Duration::from_nanos(unix_ns),
                original_len: u32::try_from(data.len()).unwrap_or(u32::MAX),
                data: Cow::Borrowed(data),
                options: Vec::new(),
            })
            .map_err(std::io::Error::other)?;
        self.writer.get_mut().flush()
    }

    /// The statistics block of each interface: frames received; on the first, the frames the
    /// stream dropped (its reader was behind) and those `--vlan` left out.
    fn finish(mut self) -> std::io::Result<()> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        // pcapng stores a timestamp as its high 32 bits, then its low 32 bits; pcap-file 2.0
        // writes the ISB's as one u64 in the section's (little) endianness, low half first: so
        // the halves go in swapped.
        let timestamp = now.rotate_left(32);
        for (i, received) in self.received.iter().enumerate() {
            let mut options = vec![InterfaceStatisticsOption::IsbIfRecv(*received)];
            if i == 0 {
                options.push(InterfaceStatisticsOption::IsbIfDrop(self.dropped));
                options.push(InterfaceStatisticsOption::Comment(Cow::Owned(format!(
                    "macvlan-lab: {} frame(s) dropped because this stream's reader was behind, {} left out by --vlan",
                    self.dropped, self.filtered
                ))));
            }
            self.writer
                .write_pcapng_block(InterfaceStatisticsBlock {
                    interface_id: u32::try_from(i).unwrap_or(u32::MAX),
                    timestamp,
                    options,
                })
                .map_err(std::io::Error::other)?;
        }
        self.writer.get_mut().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frames_vlan_is_its_8021q_tag() {
        let mut tagged = vec![0xff; 12];
        tagged.extend([0x81, 0x00, 0x00, 0x64, 0x08, 0x00]);
        assert_eq!(vlan_of(&tagged), Some(100));
        let mut untagged = vec![0xff; 12];
        untagged.extend([0x08, 0x00]);
        assert_eq!(vlan_of(&untagged), None);
        assert_eq!(vlan_of(&[0; 4]), None);
    }
}
