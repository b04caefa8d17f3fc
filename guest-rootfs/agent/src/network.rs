//! [`lab_proto::Op::Network`]: a host's addresses, routes and forwarding, set with netlink as
//! `ip` would set them, but without starting `ip`: under TCG a restored guest translates every
//! program it starts anew (what the shell and `ip` commands this replaces cost is in
//! docs/measurements.md).

use std::io::Write;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use lab_proto::{Network, NicSetup, RouteSetup};
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressMessage};
use netlink_packet_route::link::{LinkFlags, LinkMessage};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How long a NIC may take to be operational once up: the kernel's linkwatch applies a
/// carrier change up to a second later, and a busy host slows the guest.
const OPERATIONAL_WITHIN: Duration = Duration::from_secs(10);

pub fn apply(network: &Network) -> Result<(), String> {
    let mut rtnl = Rtnl::open().map_err(|e| format!("netlink: {e}"))?;
    let nics = network
        .nics
        .iter()
        .map(|nic| Ok((nic, index_of(&nic.name)?)))
        .collect::<Result<Vec<_>, String>>()?;
    for &(nic, index) in &nics {
        up(&mut rtnl, &nic.name, index, &nic.addresses)?;
    }
    // Frames sent before the kernel calls a NIC operational may be dropped.
    for nic in &network.nics {
        wait_operational(&nic.name)?;
    }
    for &(nic, index) in &nics {
        add_routes(&mut rtnl, nic, index)?;
    }
    if network.forwarding {
        for knob in [
            "/proc/sys/net/ipv4/ip_forward",
            "/proc/sys/net/ipv6/conf/all/forwarding",
        ] {
            std::fs::write(knob, "1").map_err(|e| format!("write {knob}: {e}"))?;
        }
    }
    if !network.hosts.is_empty() {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open("/etc/hosts")
            .and_then(|mut f| f.write_all(network.hosts.as_bytes()))
            .map_err(|e| format!("add to /etc/hosts: {e}"))?;
    }
    Ok(())
}

/// Sets `name` up, with `address` (`ADDR/PREFIX`) first when given: PID 1's `lo` and a nest
/// VM's `lab.eth0`, without the `ip` runs that cost a boot 0.15-0.2 s under TCG.
pub fn bring_up(name: &str, address: Option<&str>) -> Result<(), String> {
    let mut rtnl = Rtnl::open().map_err(|e| format!("netlink: {e}"))?;
    up(&mut rtnl, name, index_of(name)?, address.as_slice())
}

/// Gives NIC `name` (`index`) its `addresses`, then sets it up.
fn up(
    rtnl: &mut Rtnl,
    name: &str,
    index: u32,
    addresses: &[impl AsRef<str>],
) -> Result<(), String> {
    for address in addresses.iter().map(AsRef::as_ref) {
        rtnl.add_address(index, address)
            .map_err(|e| format!("{name}: add address {address}: {e}"))?;
    }
    rtnl.set_up(index)
        .map_err(|e| format!("{name}: set it up: {e}"))
}

fn add_routes(rtnl: &mut Rtnl, nic: &NicSetup, index: u32) -> Result<(), String> {
    for route in &nic.routes {
        rtnl.add_route(index, route).map_err(|e| {
            let to = route.to.as_deref().unwrap_or("default");
            format!("{}: add route {to} via {}: {e}", nic.name, route.via)
        })?;
    }
    Ok(())
}

fn index_of(name: &str) -> Result<u32, String> {
    nix::net::if_::if_nametoindex(name).map_err(|e| format!("{name}: no such NIC ({e})"))
}

fn wait_operational(name: &str) -> Result<(), String> {
    let path = format!("/sys/class/net/{name}/operstate");
    let until = Instant::now() + OPERATIONAL_WITHIN;
    loop {
        let state = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
        if state.trim() == "up" {
            return Ok(());
        }
        if Instant::now() > until {
            return Err(format!(
                "{name} never became operational within {OPERATIONAL_WITHIN:?} (operstate {})",
                state.trim()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `10.0.1.1/24` → the address and its prefix length.
fn parse_net(text: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = text
        .split_once('/')
        .ok_or_else(|| format!("{text:?} has no prefix length"))?;
    let addr: IpAddr = addr
        .parse()
        .map_err(|e| format!("{text:?}: {addr:?} is no address ({e})"))?;
    let len: u8 = len
        .parse()
        .ok()
        .filter(|&l| l <= if addr.is_ipv4() { 32 } else { 128 })
        .ok_or_else(|| format!("{text:?}: {len:?} is no prefix length of its family"))?;
    Ok((addr, len))
}

fn family(addr: &IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

/// An rtnetlink socket that sends one request at a time and waits for its acknowledgement.
struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    fn open() -> std::io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Self {
            socket,
            sequence: 0,
        })
    }

    fn add_address(&mut self, index: u32, text: &str) -> Result<(), String> {
        let (addr, len) = parse_net(text)?;
        let mut message = AddressMessage::default();
        message.header.family = family(&addr);
        message.header.prefix_len = len;
        message.header.index = index;
        message.attributes.push(AddressAttribute::Local(addr));
        message.attributes.push(AddressAttribute::Address(addr));
        if addr.is_ipv6() {
            // As `ip -6 addr add .. nodad`: unique by construction, and duplicate detection
            // would hold the address back for a second or more.
            message
                .attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    fn set_up(&mut self, index: u32) -> Result<(), String> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(message), 0)
    }

    fn add_route(&mut self, index: u32, route: &RouteSetup) -> Result<(), String> {
        let via: IpAddr = route
            .via
            .parse()
            .map_err(|e| format!("{:?} is no address ({e})", route.via))?;
        let mut message = RouteMessage::default();
        message.header.address_family = family(&via);
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        if let Some(to) = &route.to {
            let (to, len) = parse_net(to)?;
            if to.is_ipv4() != via.is_ipv4() {
                return Err("the destination and the gateway are of two families".into());
            }
            message.header.destination_prefix_length = len;
            message
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::from(to)));
        }
        message
            .attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(via)));
        message.attributes.push(RouteAttribute::Oif(index));
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
    }

    /// Sends `message` and waits for the kernel's answer to it: an acknowledgement, or the
    /// error it refused it with.
    fn request(&mut self, message: RouteNetlinkMessage, flags: u16) -> Result<(), String> {
        self.sequence += 1;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = self.sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(message));
        packet.finalize();
        let mut buf = vec![0u8; packet.buffer_len()];
        packet.serialize(&mut buf);
        self.socket.send(&buf, 0).map_err(|e| e.to_string())?;
        let mut reply = Vec::with_capacity(8192);
        loop {
            reply.clear();
            self.socket.recv(&mut reply, 0).map_err(|e| e.to_string())?;
            let mut rest = &reply[..];
            while !rest.is_empty() {
                let answer = NetlinkMessage::<RouteNetlinkMessage>::deserialize(rest)
                    .map_err(|e| format!("an answer that is none: {e}"))?;
                let len = (answer.header.length as usize).max(1).min(rest.len());
                rest = &rest[len..];
                if answer.header.sequence_number != self.sequence {
                    continue;
                }
                if let NetlinkPayload::Error(e) = answer.payload {
                    return match e.code {
                        None => Ok(()),
                        Some(_) => Err(e.to_io().to_string()),
                    };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_with_their_prefix_or_are_refused() {
        assert_eq!(
            parse_net("10.0.1.1/24"),
            Ok(("10.0.1.1".parse().expect("ip"), 24))
        );
        assert_eq!(
            parse_net("fd01::1/64"),
            Ok(("fd01::1".parse().expect("ip"), 64))
        );
        for bad in [
            "10.0.1.1",
            "10.0.1.1/33",
            "fd01::1/129",
            "x/24",
            "10.0.1.1/",
        ] {
            assert!(parse_net(bad).is_err(), "{bad}");
        }
    }
}
