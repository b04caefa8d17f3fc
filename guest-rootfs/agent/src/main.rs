//! The `lab` agent. As PID 1 it sets the guest up ([`init`]) and then supervises itself running as
//! the server ([`serve`]) that executes the host's requests.

mod call;
mod exec;
mod init;
mod limits;
mod network;
mod qmp;
mod reach;
mod resume;
mod serve;
mod spawn;
mod unpack;
mod window;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() == 1 {
        // `-- bare` on the kernel command line: power off at once, so that a boot of a kernel
        // to this /init alone measures the least a guest's boot can take (`cargo xtask bench`).
        if args.get(1).is_some_and(|a| a == "bare") {
            init::power_off();
        }
        init::run();
    }
    match args.get(1).map(String::as_str) {
        Some("serve") => {
            let Some(port) = args.get(2) else { usage() };
            if let Err(e) = serve::run(port) {
                eprintln!("lab: serve {port}: {e}");
                std::process::exit(1);
            }
        }
        Some("call") => {
            let Some(socket) = args.get(2) else { usage() };
            let seconds = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(600);
            std::process::exit(call::run(socket, std::time::Duration::from_secs(seconds)));
        }
        Some("qmp") => {
            let (Some(socket), Some(command)) = (args.get(2), args.get(3)) else {
                usage()
            };
            let seconds = args.get(5).and_then(|s| s.parse().ok()).unwrap_or(60);
            std::process::exit(qmp::run(
                socket,
                command,
                args.get(4).map(String::as_str).filter(|a| !a.is_empty()),
                std::time::Duration::from_secs(seconds),
            ));
        }
        Some("--version") => println!("lab {}", env!("CARGO_PKG_VERSION")),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: lab serve /dev/vportNpM        (as PID 1 it sets the guest up and serves by itself)\n       \
         lab call SOCKET [SECONDS] <request  (one request to the agent behind SOCKET, e.g. an inner VM's)\n       \
         lab qmp SOCKET COMMAND [ARGUMENTS-JSON] [SECONDS]  (one QMP command to the QEMU behind SOCKET)"
    );
    std::process::exit(2)
}
