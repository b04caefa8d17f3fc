//! The `lab` agent. As PID 1 it sets the guest up ([`init`]) and then supervises itself running as
//! the server ([`serve`]) that executes the host's requests.

mod exec;
mod init;
mod serve;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() == 1 {
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
        Some("--version") => println!("lab {}", env!("CARGO_PKG_VERSION")),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: lab serve /dev/vportNpM   (as PID 1 it sets the guest up and serves by itself)");
    std::process::exit(2)
}
