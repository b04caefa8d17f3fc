//! MAC addresses: a leaf type that the switch, the captures and the guests all use.

use std::fmt;

/// A MAC address, printed the usual way.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// A locally administered address unique to this process and call: QEMU's 52:54:00 prefix
    /// would collide across parallel test binaries, so we use 02:xx with the pid and a counter.
    pub fn unique() -> Self {
        use std::sync::atomic::{AtomicU16, Ordering};
        static NEXT: AtomicU16 = AtomicU16::new(1);
        let n = NEXT.fetch_add(1, Ordering::Relaxed).to_be_bytes();
        let pid = std::process::id().to_be_bytes();
        MacAddr([0x02, pid[1], pid[2], pid[3], n[0], n[1]])
    }

    /// The address of NIC `nic` (`eth<nic>`) of a guest whose `eth0` has `self`: the first
    /// byte carries the NIC's number above the local and multicast bits, so a guest's NICs
    /// differ from each other and from every [`MacAddr::unique`] (whose first byte is 02).
    pub fn of_nic(self, nic: u8) -> Self {
        if nic == 0 {
            return self;
        }
        let mut bytes = self.0;
        bytes[0] = (bytes[0] & 0x03) | 0x02 | ((bytes[0] >> 2).wrapping_add(nic) << 2);
        MacAddr(bytes)
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// A MAC address written as six hex bytes between colons, as the kernel prints them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (six hex bytes between colons, like 52:54:00:12:34:56)")]
pub struct BadMacAddr(pub String);

impl std::str::FromStr for MacAddr {
    type Err = BadMacAddr;

    fn from_str(text: &str) -> std::result::Result<Self, BadMacAddr> {
        lab_proto::parse_mac(text.trim())
            .map(MacAddr)
            .ok_or_else(|| BadMacAddr(text.to_string()))
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_macs_are_unicast_local_and_distinct() {
        let a = MacAddr::unique();
        let b = MacAddr::unique();
        assert_ne!(a, b);
        assert_eq!(a.0[0] & 0x01, 0, "unicast");
        assert_eq!(a.0[0] & 0x02, 0x02, "locally administered");
        assert_eq!(
            MacAddr([0x52, 0x54, 0, 0xab, 1, 2]).to_string(),
            "52:54:00:ab:01:02"
        );
    }

    #[test]
    fn a_guests_nics_have_their_own_unicast_local_addresses() {
        let eth0 = MacAddr::unique();
        assert_eq!(eth0.of_nic(0), eth0);
        let nics: Vec<MacAddr> = (0..8).map(|i| eth0.of_nic(i)).collect();
        for (i, a) in nics.iter().enumerate() {
            assert_eq!(a.0[0] & 0x03, 0x02, "{a}: unicast, locally administered");
            assert_eq!(a.0[1..], eth0.0[1..]);
            assert!(nics[i + 1..].iter().all(|b| b != a), "{a} twice");
        }
        assert_eq!(eth0.of_nic(1).to_string()[..2], *"06");
    }

    #[test]
    fn macs_parse_as_the_kernel_prints_them_and_nothing_else() {
        let mac: MacAddr = "52:54:00:AB:01:02\n".parse().expect("a MAC");
        assert_eq!(mac.to_string(), "52:54:00:ab:01:02");
        for bad in [
            "",
            "52:54:00:ab:01",
            "52:54:00:ab:01:02:03",
            "52:54:00:ab:1:02",
            "zz:54:00:ab:01:02",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad:?} parsed");
        }
    }
}
