//! [`lab_proto::Op::Resume`]: a guest restored from a shared snapshot makes itself its own:
//! fresh kernel randomness, the host's time, its own hostname and MAC.

use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd};

use lab_proto::Resume;

/// `RNDADDENTROPY`: `_IOW('R', 0x03, int[2])`.
const RNDADDENTROPY: libc::c_ulong = 0x4008_5203;
/// `RNDRESEEDCRNG`: `_IO('R', 0x07)`.
const RNDRESEEDCRNG: libc::c_ulong = 0x5207;

pub fn resume(r: &Resume) -> Result<(), String> {
    // Randomness first: anything later (a MAC, a temp name) may already draw on it.
    reseed(&r.entropy)?;
    set_clock(r.unix_nanos)?;
    nix::unistd::sethostname(&r.hostname)
        .map_err(|e| format!("sethostname {}: {e}", r.hostname))?;
    for (nic, mac) in r.macs.iter().enumerate() {
        set_mac(&format!("eth{nic}"), mac)?;
    }
    Ok(())
}

/// Credits `entropy` to the input pool and makes the kernel's generator reseed from it now,
/// rather than at its next scheduled reseed (up to a minute away).
fn reseed(entropy: &[u8]) -> Result<(), String> {
    if entropy.len() < 32 {
        return Err(format!(
            "{} bytes of entropy are too few to reseed from (32 at least)",
            entropy.len()
        ));
    }
    let urandom = OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| format!("open /dev/urandom: {e}"))?;
    // struct rand_pool_info { int entropy_count; int buf_size; __u32 buf[]; }
    let bits = i32::try_from(entropy.len() * 8).map_err(|_| "too much entropy".to_string())?;
    let mut info = Vec::with_capacity(8 + entropy.len());
    info.extend_from_slice(&bits.to_ne_bytes());
    info.extend_from_slice(&(bits / 8).to_ne_bytes());
    info.extend_from_slice(entropy);
    // SAFETY: the kernel reads a rand_pool_info header and buf_size bytes after it, all in `info`.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDADDENTROPY, info.as_ptr()) } != 0 {
        return Err(format!(
            "RNDADDENTROPY: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: RNDRESEEDCRNG takes no argument.
    if unsafe { libc::ioctl(urandom.as_raw_fd(), RNDRESEEDCRNG) } != 0 {
        return Err(format!(
            "RNDRESEEDCRNG: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn set_clock(unix_nanos: u64) -> Result<(), String> {
    let ts = libc::timespec {
        tv_sec: (unix_nanos / 1_000_000_000) as libc::time_t,
        tv_nsec: (unix_nanos % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: clock_settime reads one timespec from the pointer, which lives across the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        return Err(format!(
            "clock_settime: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Gives `iface` the address `mac` with `SIOCSIFHWADDR` (what `ip link set eth0 address` does,
/// without starting a program: that alone costs ~0.1 s under TCG). virtio-net passes the change
/// to QEMU (VIRTIO_NET_CTRL_MAC), so `query-rx-filter` shows it too.
fn set_mac(iface: &str, mac: &str) -> Result<(), String> {
    let bytes = lab_proto::parse_mac(mac).ok_or_else(|| format!("{mac:?} is not a MAC address"))?;
    // SAFETY: all-zero ifreq and sockaddr are valid values; the fields set below are plain data.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // The last byte stays 0: the name's terminator.
    for (dst, src) in req
        .ifr_name
        .iter_mut()
        .take(libc::IFNAMSIZ - 1)
        .zip(iface.bytes())
    {
        *dst = src as libc::c_char;
    }
    let mut hwaddr: libc::sockaddr = unsafe { std::mem::zeroed() };
    hwaddr.sa_family = libc::ARPHRD_ETHER;
    for (dst, src) in hwaddr.sa_data.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_hwaddr = hwaddr;
    // SAFETY: a plain datagram socket, closed by OwnedFd; the ioctl reads one ifreq from `req`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
        if libc::ioctl(fd.as_raw_fd(), libc::SIOCSIFHWADDR, &req) != 0 {
            return Err(format!(
                "set {iface}'s address to {mac}: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    Ok(())
}
