//! Packet capture of the switch: pcap files readable by tcpdump and Wireshark.
//!
//! `switch.pcap` holds every frame the switch received, once. `portN.pcap` holds what crossed the
//! cable of port N in both directions, as `tcpdump` on that cable would: a frame a reflective
//! relay sends back appears there twice.
//!
//! A capture keeps at most [`MAX_BYTES`]: a flood between guests must not fill the disk (often
//! a tmpfs) the run's directory is on. The frame after which it stops is one of our own, of the
//! local experimental ethertype 0x88b5, whose payload says in words that the capture was cut
//! there (Wireshark and `tcpdump -A` show it); [`Capture::cut`] counts what was left out.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapReader};
use pcap_file::{DataLink, Endianness, TsResolution};

const SNAPLEN: u32 = 65535;
/// Bytes a capture file may take: the first frames of the run, then the note that says it was
/// cut.
pub const MAX_BYTES: u64 = 32 << 20;
/// IEEE 802 "local experimental" ethertype: the note's, which no real protocol uses.
pub const NOTE_ETHERTYPE: u16 = 0x88b5;
/// A pcap record's header.
const RECORD_HEADER: u64 = 16;
/// Room kept for the note.
const NOTE_ROOM: u64 = 256;

/// A pcap file being written. `pcap-file` formats the header and records; we keep the buffered
/// file ourselves, because its writer cannot be flushed while tests read the capture mid-run.
#[derive(Debug)]
pub struct Capture {
    path: PathBuf,
    file: BufWriter<File>,
    /// Bytes written so far, the file's header included.
    written: u64,
    limit: u64,
    /// Frames left out once the limit was met.
    cut: u64,
}

impl Capture {
    pub fn create(path: &Path) -> std::io::Result<Self> {
        Self::with_limit(path, MAX_BYTES)
    }

    /// A capture that keeps at most `limit` bytes.
    pub fn with_limit(path: &Path, limit: u64) -> std::io::Result<Self> {
        let mut file = BufWriter::new(crate::private::file(path)?);
        let header = PcapHeader {
            endianness: Endianness::Little,
            snaplen: SNAPLEN,
            datalink: DataLink::ETHERNET,
            ts_resolution: TsResolution::MicroSecond,
            ..PcapHeader::default()
        };
        header.write_to(&mut file).map_err(std::io::Error::other)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
            written: 24,
            limit: limit.max(24 + NOTE_ROOM),
            cut: 0,
        })
    }

    pub fn write(&mut self, frame: &[u8]) {
        if self.cut > 0 {
            self.cut += 1;
            return;
        }
        let size = RECORD_HEADER + frame.len().min(SNAPLEN as usize) as u64;
        if self.written + size + NOTE_ROOM > self.limit {
            self.cut = 1;
            let note = note(self.limit);
            self.record(&note);
            return;
        }
        self.written += size;
        self.record(frame);
    }

    /// Frames left out because the capture reached its limit.
    pub fn cut(&self) -> u64 {
        self.cut
    }

    fn record(&mut self, frame: &[u8]) {
        let ts = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let packet = PcapPacket::new(ts, frame.len() as u32, frame);
        // A failed capture write must not stop forwarding; the file is evidence, not the network.
        let _ = packet.write_to::<_, byteorder::LittleEndian>(
            &mut self.file,
            TsResolution::MicroSecond,
            SNAPLEN,
        );
    }

    pub fn flush(&mut self) {
        let _ = std::io::Write::flush(&mut self.file);
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The frame that ends a capture cut at `limit` bytes: broadcast from a locally administered
/// address, its payload the reason in words.
fn note(limit: u64) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend([0x02, 0x6c, 0x61, 0x62, 0x00, 0x00]);
    frame.extend(NOTE_ETHERTYPE.to_be_bytes());
    frame.extend(
        format!(
            "macvlan-lab: capture cut here at its limit of {} MiB; later frames are not kept",
            limit >> 20
        )
        .bytes(),
    );
    frame
}

/// The words of the note that ends a cut capture, if `frame` is one.
pub fn cut_note(frame: &[u8]) -> Option<String> {
    (ethertype(frame) == Some(NOTE_ETHERTYPE))
        .then(|| String::from_utf8_lossy(&frame[14..]).into_owned())
}

/// All frames of a pcap file.
pub fn read_frames(path: &Path) -> std::io::Result<Vec<Vec<u8>>> {
    let mut reader = PcapReader::new(File::open(path)?).map_err(std::io::Error::other)?;
    let mut frames = Vec::new();
    while let Some(packet) = reader.next_packet() {
        frames.push(packet.map_err(std::io::Error::other)?.data.into_owned());
    }
    Ok(frames)
}

/// The ethertype of a frame (`0x0806` ARP, `0x0800` IPv4).
pub fn ethertype(frame: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]))
}

/// True for an IPv4 ICMP frame.
pub fn is_icmp(frame: &[u8]) -> bool {
    ethertype(frame) == Some(0x0800) && frame.get(23) == Some(&1)
}

/// The ICMP type of an IPv4 ICMP frame (8 echo request, 0 echo reply).
pub fn icmp_type(frame: &[u8]) -> Option<u8> {
    if !is_icmp(frame) {
        return None;
    }
    let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
    frame.get(14 + ihl).copied()
}

/// The address a gratuitous ARP announces (its sender's IPv4 address is its target's too): what
/// a host sends when it wants the LAN to relearn where it is, after a failover say.
pub fn gratuitous_arp(frame: &[u8]) -> Option<std::net::Ipv4Addr> {
    if ethertype(frame) != Some(0x0806) {
        return None;
    }
    let sender: [u8; 4] = frame.get(28..32)?.try_into().ok()?;
    let target: [u8; 4] = frame.get(38..42)?.try_into().ok()?;
    (sender == target).then_some(std::net::Ipv4Addr::from(sender))
}

/// Source and destination MAC of a frame.
pub fn macs(frame: &[u8]) -> Option<(crate::mac::MacAddr, crate::mac::MacAddr)> {
    let mac = |at: usize| -> Option<crate::mac::MacAddr> {
        Some(crate::mac::MacAddr(frame.get(at..at + 6)?.try_into().ok()?))
    };
    Some((mac(6)?, mac(0)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An ARP request from `sender` for `target`, as a host sends it.
    fn arp(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend([2, 0, 0, 0, 0, 1, 0x08, 0x06]);
        f.extend([0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend([2, 0, 0, 0, 0, 1]);
        f.extend(sender);
        f.extend([0; 6]);
        f.extend(target);
        f
    }

    #[test]
    fn a_gratuitous_arp_announces_its_sender_and_a_request_does_not() {
        assert_eq!(
            gratuitous_arp(&arp([192, 168, 88, 11], [192, 168, 88, 11])),
            Some(std::net::Ipv4Addr::new(192, 168, 88, 11))
        );
        assert_eq!(
            gratuitous_arp(&arp([192, 168, 88, 11], [192, 168, 88, 2])),
            None
        );
        assert_eq!(gratuitous_arp(&arp([1, 2, 3, 4], [1, 2, 3, 4])[..30]), None);
        let mut ipv4 = arp([1, 2, 3, 4], [1, 2, 3, 4]);
        ipv4[12..14].copy_from_slice(&[0x08, 0x00]);
        assert_eq!(gratuitous_arp(&ipv4), None);
    }

    #[test]
    fn a_flood_is_cut_at_the_limit_and_the_file_says_so() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("flood.pcap");
        let mut cap = Capture::with_limit(&path, 1 << 20).expect("create");
        let frame = vec![0x42u8; 1500];
        for _ in 0..10_000 {
            cap.write(&frame);
        }
        cap.flush();
        let size = std::fs::metadata(&path).expect("meta").len();
        assert!(size <= 1 << 20, "{size} bytes on disk");
        let frames = read_frames(&path).expect("read");
        let note = cut_note(frames.last().expect("frames")).expect("the last frame is the note");
        assert!(note.contains("cut here at its limit of 1 MiB"), "{note}");
        assert_eq!(
            (frames.len() - 1) as u64 + cap.cut(),
            10_000,
            "what was kept and what was cut make up all that was written"
        );
        assert!(frames[..frames.len() - 1].iter().all(|f| f == &frame));
    }

    #[test]
    fn frames_written_read_back_in_order_after_a_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.pcap");
        let mut cap = Capture::create(&path).expect("create");
        let arp = [
            [0xffu8; 6].as_slice(),
            &[2, 0, 0, 0, 0, 1],
            &[0x08, 0x06],
            &[0u8; 28],
        ]
        .concat();
        let mut icmp = [
            [2u8, 0, 0, 0, 0, 2].as_slice(),
            &[2, 0, 0, 0, 0, 1],
            &[0x08, 0x00],
            &[0u8; 28],
        ]
        .concat();
        icmp[14] = 0x45;
        icmp[23] = 1;
        cap.write(&arp);
        cap.write(&icmp);
        cap.flush();
        let frames = read_frames(&path).expect("read");
        assert_eq!(frames, [arp.clone(), icmp.clone()]);
        assert_eq!(ethertype(&frames[0]), Some(0x0806));
        assert!(is_icmp(&frames[1]) && !is_icmp(&frames[0]));
        assert_eq!(icmp_type(&frames[1]), Some(0));
        let (src, dst) = macs(&frames[1]).expect("macs");
        assert_eq!(
            (src.to_string(), dst.to_string()),
            ("02:00:00:00:00:01".into(), "02:00:00:00:00:02".into())
        );
    }
}
