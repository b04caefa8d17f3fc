//! [`lab_proto::Op::Reach`]: waits until each address answers an ICMP echo, as
//! `until ping -c1 ADDR; do sleep 0.1; done` would, but without starting `ping` (and a shell)
//! in a guest that has just been restored, where every program started is translated anew.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use lab_proto::Reach;
use nix::errno::Errno;
use nix::sys::socket::{
    recvfrom, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, SockFlag, SockProtocol,
    SockType, SockaddrIn,
};
use nix::sys::time::TimeVal;

/// How often the addresses that have not answered are asked again.
const AGAIN: Duration = Duration::from_millis(200);
/// ICMP's echo request and reply types.
const ECHO_REQUEST: u8 = 8;
const ECHO_REPLY: u8 = 0;

pub fn reach(reach: &Reach) -> Result<(), String> {
    let mut waiting = reach
        .addresses
        .iter()
        .map(|a| {
            a.parse::<Ipv4Addr>()
                .map_err(|e| format!("{a:?} is no IPv4 address ({e})"))
        })
        .collect::<Result<BTreeSet<_>, _>>()?;
    let fd = socket(
        AddressFamily::Inet,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Icmp,
    )
    .map_err(|e| format!("an ICMP socket: {e}"))?;
    let tick = TimeVal::new(0, 20_000);
    setsockopt(&fd, sockopt::ReceiveTimeout, &tick).map_err(|e| format!("SO_RCVTIMEO: {e}"))?;
    // Echo replies come to every raw ICMP socket: ours carry this id.
    let id = (std::process::id() as u16) ^ 0x1ab;
    let deadline = Instant::now() + reach.within;
    let mut sequence = 0u16;
    let mut buf = [0u8; 1500];
    while !waiting.is_empty() {
        if Instant::now() > deadline {
            let left: Vec<String> = waiting.iter().map(ToString::to_string).collect();
            return Err(format!(
                "no answer from {} within {:?}",
                left.join(", "),
                reach.within
            ));
        }
        sequence = sequence.wrapping_add(1);
        let request = echo_request(id, sequence);
        for addr in &waiting {
            // An address not yet resolved queues the request; one that cannot be is asked
            // again next round.
            let _ = sendto(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                &request,
                &SockaddrIn::from(SocketAddrV4::new(*addr, 0)),
                MsgFlags::empty(),
            );
        }
        let round = Instant::now() + AGAIN;
        while Instant::now() < round && !waiting.is_empty() {
            match recvfrom::<SockaddrIn>(std::os::fd::AsRawFd::as_raw_fd(&fd), &mut buf) {
                Ok((n, Some(from))) if is_our_reply(&buf[..n], id) => {
                    waiting.remove(&from.ip());
                }
                Ok(_) | Err(Errno::EAGAIN | Errno::EINTR) => {}
                Err(e) => return Err(format!("reading ICMP: {e}")),
            }
        }
    }
    Ok(())
}

/// An echo request of `id` and `sequence`, checksummed, with 8 bytes of data.
fn echo_request(id: u16, sequence: u16) -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[0] = ECHO_REQUEST;
    packet[4..6].copy_from_slice(&id.to_be_bytes());
    packet[6..8].copy_from_slice(&sequence.to_be_bytes());
    packet[8..].copy_from_slice(b"lab-lan!");
    let sum = checksum(&packet);
    packet[2..4].copy_from_slice(&sum.to_be_bytes());
    packet
}

/// The Internet checksum (RFC 1071).
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Whether an IPv4 packet, as a raw socket reads it, is an echo reply of `id`.
fn is_our_reply(packet: &[u8], id: u16) -> bool {
    let Some(&first) = packet.first() else {
        return false;
    };
    let Some(icmp) = packet.get(usize::from(first & 0x0f) * 4..) else {
        return false;
    };
    icmp.first() == Some(&ECHO_REPLY) && icmp.get(4..6) == Some(&id.to_be_bytes()[..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_checksums_to_zero_and_its_reply_is_told_by_its_id() {
        let request = echo_request(0x1234, 7);
        assert_eq!(
            checksum(&request),
            0,
            "a packet with its checksum sums to 0"
        );
        let mut reply = vec![0x45u8];
        reply.extend([0u8; 19]);
        let mut icmp = request;
        icmp[0] = ECHO_REPLY;
        reply.extend(icmp);
        assert!(is_our_reply(&reply, 0x1234));
        assert!(!is_our_reply(&reply, 0x1235));
        reply[20] = ECHO_REQUEST;
        assert!(!is_our_reply(&reply, 0x1234));
        assert!(!is_our_reply(&[], 0x1234));
    }
}
