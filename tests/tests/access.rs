//! Who may talk to a guest: whoever connects to its agent socket is root in it, so only the user
//! who started it may. Every state and socket directory is 0700 and the user's; another local
//! user cannot connect to any socket in them; nothing listens on TCP.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use lab_harness::{Lab, Vm};
use lab_tests::{assets, Check};

/// The user's own directory, closed to everyone else.
fn assert_private(dir: &Path) {
    let meta = std::fs::metadata(dir).expect("directory");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o700,
        "{} is {:o}",
        dir.display(),
        meta.permissions().mode() & 0o777
    );
    assert_eq!(
        meta.uid(),
        nix::unistd::getuid().as_raw(),
        "{} is the user's",
        dir.display()
    );
}

/// Whether a process running as `uid` can connect to the unix socket at `path`. The child does
/// nothing but raw system calls between fork and exit, as a forked child of a threaded process
/// must.
fn connects_as(uid: u32, path: &Path, datagram: bool) -> bool {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: sockaddr_un is plain data; all-zero is valid.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(path.as_os_str().as_bytes()) {
        *dst = *src as libc::c_char;
    }
    let kind = if datagram {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    // SAFETY: the child only calls async-signal-safe functions, then _exit.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => unsafe {
            // Root's supplementary groups first: kept, they would let the probe in through
            // a directory's group bits, and a refusal would show less than it says.
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                libc::_exit(2);
            }
            if libc::getgroups(0, std::ptr::null_mut()) != 0 || libc::getegid() != uid {
                libc::_exit(3);
            }
            let fd = libc::socket(libc::AF_UNIX, kind, 0);
            let ok = libc::connect(
                fd,
                std::ptr::addr_of!(addr).cast(),
                std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
            ) == 0;
            libc::_exit(if ok { 0 } else { 1 });
        },
        nix::unistd::ForkResult::Parent { child } => {
            match nix::sys::wait::waitpid(child, None).expect("wait") {
                nix::sys::wait::WaitStatus::Exited(_, 0) => true,
                nix::sys::wait::WaitStatus::Exited(_, 1) => false,
                nix::sys::wait::WaitStatus::Exited(_, 3) => {
                    panic!("the child kept groups of ours: it is not another user")
                }
                other => panic!("the child could not become uid {uid}: {other:?}"),
            }
        }
    }
}

/// TCP sockets in LISTEN state held by process `pid`.
fn tcp_listeners(pid: u32) -> Vec<String> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            target
                .to_string_lossy()
                .strip_prefix("socket:[")
                .map(|s| s.trim_end_matches(']').to_string())
        })
        .collect();
    let mut listening = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(table)
            .unwrap_or_default()
            .lines()
            .skip(1)
        {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A is LISTEN; the inode is the tenth field.
            if fields.get(3) == Some(&"0A")
                && fields
                    .get(9)
                    .is_some_and(|inode| inodes.iter().any(|i| i == inode))
            {
                listening.push(line.trim().to_string());
            }
        }
    }
    listening
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_user_who_started_a_guest_can_reach_it() {
    let assets = assets();
    let lab = Lab::builder(&assets, "access")
        .host("host1")
        .host("host2")
        .boot()
        .await
        .check();
    let vm: &Vm = lab.vm("host1");
    assert_private(vm.state_dir());
    assert_private(lab.sockets_dir());
    // What the run keeps holds every frame of the LAN: the user's alone.
    assert_private(lab.artifacts());
    let captures: Vec<_> = std::fs::read_dir(lab.artifacts())
        .expect("artifacts")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "pcap"))
        .collect();
    assert!(!captures.is_empty(), "the switch captures");
    for pcap in captures {
        let mode = std::fs::metadata(&pcap).expect("pcap").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} is {mode:o}", pcap.display());
    }
    let agent = vm.state_dir().join("agent.sock");
    let qmp = vm.state_dir().join("qmp.sock");
    // Each segment's sockets in a directory of its own, as private as the one above it.
    let segments: Vec<_> = std::fs::read_dir(lab.sockets_dir())
        .expect("sockets")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert!(!segments.is_empty(), "a directory per segment");
    segments.iter().for_each(|d| assert_private(d));
    let port = segments
        .iter()
        .flat_map(|d| std::fs::read_dir(d).expect("a segment's sockets").flatten())
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "sock"))
        .expect("a switch socket");
    assert!(
        tcp_listeners(vm.qemu_pid()).is_empty(),
        "QEMU listens on TCP: {:?}",
        tcp_listeners(vm.qemu_pid())
    );
    assert!(
        tcp_listeners(std::process::id()).is_empty(),
        "the harness listens on TCP"
    );
    if nix::unistd::getuid().is_root() {
        // As root (CI), show it for real: uid 65534 (nobody) is refused at every socket; the
        // harness holds the agent's and QMP's connections, so a refusal is the directory's doing.
        for (socket, datagram) in [(&agent, false), (&qmp, false), (&port, true)] {
            assert!(
                !connects_as(65534, socket, datagram),
                "another user reached {}",
                socket.display()
            );
        }
        // The same probe reaches a socket that is open to all: the refusals above are real.
        let open = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(open.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");
        let path = open.path().join("open.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777))
            .expect("chmod socket");
        assert!(
            connects_as(65534, &path, false),
            "the probe cannot connect even where everyone may"
        );
    }
    lab.shutdown().await.check();
}
