//! `cargo xtask`: the project's entry points. `test` provisions everything and runs every test;
//! `lab` runs experiments; `bench` measures boots; `provision` only prepares kernel and image.

mod agent_fresh;
mod attach;
mod bench;
mod bench_boot;
mod bench_output;
mod bench_remote;
mod bench_soak;
mod bench_switch;
mod capture;
mod cpu_by_test;
mod hosttools;
mod interrupt;
mod lab;
mod lab_run;
mod lab_test;
mod leaks;
mod progress;
mod provision;
mod runs;
mod schedule;
mod selftests;
mod shell;
mod steer;
mod tally;
mod terminal;
mod ui;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "macvlan-lab: provision, test, run and measure the lab"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Say only results, warnings and errors.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Also say how each guest came up (boot or restore, with times) and each snapshot taken.
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    verbose: bool,
    /// Fail at once unless guests run on this accelerator (kvm or tcg), rather than fall back
    /// to TCG unnoticed; the same as LAB_REQUIRE_ACCEL. For CI on runners with /dev/kvm.
    #[arg(long, global = true, value_name = "ACCEL", value_parser = ["kvm", "tcg"])]
    require_accel: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Fetch the kernel, build the agent and the guest image, write target/lab/assets.json.
    Provision(provision::ProvisionArgs),
    /// Provision, then boot guests and run every test (unit and integration).
    #[command(after_help = TEST_OUTPUTS)]
    Test {
        #[command(flatten)]
        provision: provision::ProvisionArgs,
        /// Run only shard K of N (`2/3`), for spreading the suite over CI machines: nextest's
        /// `--partition count:K/N`. The doctests run in shard 1.
        #[arg(long, value_name = "K/N", value_parser = parse_partition)]
        partition: Option<(u32, u32)>,
        /// Run as many busy loops as there are cores beside the tests, as a shared CI runner's
        /// neighbours would: the suite must hold on a loaded machine too.
        #[arg(long)]
        busy: bool,
        /// Extra arguments for cargo nextest (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        test_args: Vec<String>,
    },
    /// Measure: cold boots against restores from a snapshot (alone and 8 at once), a nest guest and its inner VMs (booted against restored),
    /// `lab run` end to end, the switch, `--package`/`--dir`, the nested scenario; `--soak N`.
    Bench(bench::BenchArgs),
    /// Run lab experiments in throwaway guests.
    #[command(after_help = LAB_EXAMPLES)]
    Lab(Box<lab::LabArgs>),
    /// Fetch the upstream kernel selftests (Debian's linux-source-6.12) and print their directory,
    /// for `lab run --dir` (see examples/bonding-selftest.sh).
    Selftests,
    /// Print the kernel configuration the lab needs (kernels/lab.config), to merge into the
    /// .config of a tree of your own: `scripts/kconfig/merge_config.sh .config <(cargo xtask
    /// kernel-config)`, then `make olddefconfig`.
    KernelConfig,
    /// Print a completion script for `cargo xtask` in SHELL (bash, zsh, fish, elvish, powershell).
    ///
    /// Example (bash): `cargo xtask completions bash > ~/.local/share/bash-completion/completions/cargo-xtask`
    /// then `source` it from ~/.bashrc after cargo's own completion.
    Completions { shell: clap_complete::Shell },
    /// Empty the cache every clone on this machine shares (`LAB_CACHE`, else
    /// `~/.cache/macvlan-lab`): kernels, packages, images, snapshots. The next run fetches and
    /// builds them again. `--snapshots` removes only the snapshots.
    ///
    /// Example: `cargo xtask clean-cache --snapshots`
    CleanCache {
        /// Remove only the snapshots (`<cache>/snapshots`), which are made again in seconds.
        #[arg(long)]
        snapshots: bool,
    },
    /// Build the static agent of the checkout at WORKSPACE (default: this one) and print its
    /// path. For the test that the agent, and so the image, does not depend on where it was
    /// built.
    #[command(hide = true)]
    BuildAgent {
        #[arg(long)]
        workspace: Option<PathBuf>,
    },
}

const TEST_OUTPUTS: &str = "\
Writes:
  target/nextest/default/junit.xml   every test's result, for CI systems
  target/nextest/cpu-by-test.tsv     the CPU each test used, its QEMUs included (sampled from /proc)
  target/lab/failed/                 consoles of the guests of failed tests

Examples:
  cargo xtask test                          everything
  cargo xtask test -- -E 'binary(lan)'      one test binary (a nextest filter)
  cargo xtask test --partition 1/2          the first of two CI shards";

const LAB_EXAMPLES: &str = "Examples:
  cargo xtask lab                          all scenarios: a table, report.html, junit.xml
  cargo xtask lab --only mode/             the five macvlan modes only
  cargo xtask lab run -- ip -d link        one command as root in host1 of a fresh LAN
  cargo xtask lab run --hosts 2 test.sh    your script, host2 beside host1 on the switch
  cargo xtask lab shell --package tcpdump  type the tutorial's commands yourself
  cargo xtask lab attach host2             a second terminal into that shell's lab";

fn main() {
    let cli = Cli::parse();
    // A refusal is a sentence for a person, not a crash: no backtrace unless asked for with
    // LAB_BACKTRACE or -v (RUST_BACKTRACE, which many set for their own programs, is not asking).
    let backtrace = cli.verbose || std::env::var_os("LAB_BACKTRACE").is_some_and(|v| v != "0");
    if backtrace {
        // SAFETY (edition 2021 `set_var`): no other thread exists yet to read the environment.
        std::env::set_var("RUST_LIB_BACKTRACE", "1");
    }
    if let Err(e) = run(cli) {
        eprintln!("Error: {}", report(&e, backtrace));
        std::process::exit(interrupt::exit_code(&e));
    }
}

/// An error as a person reads it: what failed, then each cause; its backtrace only on request.
fn report(e: &anyhow::Error, backtrace: bool) -> String {
    let mut text = e.to_string();
    let causes: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
    if !causes.is_empty() {
        text.push_str("\n\nCaused by:");
        for cause in causes {
            text.push_str(&format!("\n    {cause}"));
        }
    }
    if backtrace {
        text.push_str(&format!("\n\nBacktrace:\n{}", e.backtrace()));
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(accel) = &cli.require_accel {
        // SAFETY (edition 2021 `set_var`): no other thread exists yet to read the environment.
        // Set for the test binaries and QEMU this run starts, which check it too.
        std::env::set_var(lab_harness::settings::ENV_REQUIRE_ACCEL, accel);
    }
    leaks::start_run();
    // The harness's warnings (a snapshot that could not be used, a boot retried) by default;
    // RUST_LOG=lab_harness=debug shows where a guest's start-up time goes.
    ui::set_quiet(cli.quiet);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(ui::log_filter(cli.verbose)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ui::colour(&std::io::stderr()))
        .with_writer(|| ui::LogWriter)
        .with_target(false)
        .init();
    progress::install(cli.quiet);
    // A misspelt LAB_ACCEL (`kvmm`, `hvf`) or LAB_SNAPSHOT is an error everywhere, before
    // anything is built; so is a required accelerator that guests would not get, for every
    // command that boots them.
    let settings = lab_harness::Settings::from_env()?;
    if matches!(
        cli.command,
        Command::Test { .. } | Command::Bench(_) | Command::Lab(_)
    ) {
        let accel = settings.checked_accel()?;
        ui::step_summary(&format!("Guests run on **{accel}**."));
    }
    match cli.command {
        Command::Provision(args) => provision::run(&args).map(drop),
        Command::Test {
            provision,
            partition,
            busy,
            test_args,
        } => test(&provision, partition, busy, &test_args),
        Command::Bench(args) => bench::run(&args),
        Command::Lab(args) => lab::run(&args),
        Command::Selftests => {
            println!("{}", selftests::provide()?.display());
            Ok(())
        }
        Command::KernelConfig => {
            print!("{}", lab_kernels::config::FRAGMENT);
            Ok(())
        }
        Command::CleanCache { snapshots } => clean_cache(snapshots),
        Command::BuildAgent { workspace } => {
            let workspace = workspace.unwrap_or_else(workspace_root);
            println!("{}", provision::build_agent(&workspace)?.display());
            Ok(())
        }
        Command::Completions { shell } => {
            completions(shell);
            Ok(())
        }
    }
}

/// The completion script of `xtask`, and for bash a hook that hands `cargo xtask ...` to it
/// (`cargo xtask` is a cargo alias, and cargo's own completion knows nothing of it).
fn completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "xtask", &mut std::io::stdout());
    if shell == clap_complete::Shell::Bash {
        print!("{BASH_CARGO_HOOK}");
    }
}

/// Completes `cargo xtask ...` with `xtask`'s completion, and anything else with cargo's (when
/// it is loaded).
const BASH_CARGO_HOOK: &str = r#"
_cargo_xtask() {
    if [[ ${COMP_WORDS[1]} == xtask ]]; then
        COMP_WORDS=(xtask "${COMP_WORDS[@]:2}")
        COMP_CWORD=$((COMP_CWORD - 1))
        _xtask xtask "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
    elif declare -F _cargo >/dev/null; then
        _cargo "$@"
    fi
}
complete -F _cargo_xtask -o bashdefault -o default cargo
"#;

/// `clean-cache`: removes the shared cache (or its snapshots) and says how much that freed. Only
/// a directory the lab made (our `CACHEDIR.TAG`) is removed: `LAB_CACHE` may name anything.
fn clean_cache(only_snapshots: bool) -> anyhow::Result<()> {
    let (cache, _) = cache_location();
    if cache.is_absolute() && !cache.exists() {
        println!("xtask: {} is not there; nothing to remove", cache.display());
        return Ok(());
    }
    lab_kernels::cache::check(&cache)?;
    let target = if only_snapshots {
        cache.join("snapshots")
    } else {
        cache
    };
    if !target.exists() {
        println!(
            "xtask: {} is not there; nothing to remove",
            target.display()
        );
        return Ok(());
    }
    let size = disk_usage(&target);
    std::fs::remove_dir_all(&target)
        .map_err(|e| anyhow::anyhow!("removing {}: {e}", target.display()))?;
    // The stamps say the assets in the cache are whole: they are not any more. (Other clones'
    // stamps find the files gone, and provision again.)
    for entry in std::fs::read_dir(lab_dir()).into_iter().flatten().flatten() {
        if !only_snapshots && entry.file_name().to_string_lossy().ends_with(".stamp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    println!(
        "xtask: removed {} ({:.0} MiB)",
        target.display(),
        size as f64 / 1048576.0
    );
    Ok(())
}

/// Bytes a file, or a directory tree, takes on disk (holes take none).
pub fn disk_usage(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let own = meta.blocks() * 512;
    if !meta.is_dir() {
        return own;
    }
    own + std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| disk_usage(&e.path()))
        .sum::<u64>()
}

/// `2/3` -> (2, 3), with 1 <= K <= N.
pub(crate) fn parse_partition(text: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{text:?} is not a shard: give K/N with 1 <= K <= N, e.g. 1/2");
    let (k, n) = text.split_once('/').ok_or_else(bad)?;
    let (k, n): (u32, u32) = (
        k.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if k == 0 || k > n {
        return Err(bad());
    }
    Ok((k, n))
}

/// As many threads spinning as there are cores, until dropped: `cargo xtask test --busy`.
/// Threads of this process, so nothing of them can be left behind.
struct BusyLoops {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl BusyLoops {
    fn start() -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let threads = (0..cores())
            .map(|_| {
                let stop = std::sync::Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                })
            })
            .collect();
        eprintln!(
            "xtask: {} busy loops run beside the tests (--busy)",
            cores()
        );
        Self { stop, threads }
    }
}

impl Drop for BusyLoops {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

fn test(
    args: &provision::ProvisionArgs,
    partition: Option<(u32, u32)>,
    busy: bool,
    test_args: &[String],
) -> anyhow::Result<()> {
    hosttools::ensure(hosttools::Purpose::Tests)?;
    hosttools::ensure_nextest()?;
    hosttools::ensure_cargo_deny()?;
    // Some tests boot every kernel the manifest knows (assets-<id>.json); the one asked for goes
    // last, so assets.json is its.
    let manifest = lab_kernels::Manifest::load(&lab_kernels::Manifest::bundled_path())?;
    let chosen = args
        .kernel
        .clone()
        .unwrap_or_else(|| manifest.default.clone());
    for id in manifest.kernels.keys().filter(|id| **id != chosen) {
        provision::run(&provision::ProvisionArgs {
            kernel: Some(id.clone()),
            ..Default::default()
        })?;
    }
    let assets_path = provision::run(args)?;
    let selftests = selftests::provide()?;
    let before = leaks::HostFootprint::take();
    let with_env = |cmd: &mut std::process::Command| {
        cmd.current_dir(workspace_root())
            .env(lab_harness::assets::ENV_ASSETS, &assets_path)
            .env("LAB_SELFTESTS", &selftests)
            .env("LAB_ARTIFACTS", lab_dir().join("failed"));
    };
    // nextest: every test in a process of its own, across test binaries, the slowest first; a
    // stuck one is killed (`.config/nextest.toml`); JUnit in target/nextest.
    let mut nextest = std::process::Command::new(env!("CARGO"));
    nextest.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    if std::env::var_os("NEXTEST_TEST_THREADS").is_none()
        && !test_args
            .iter()
            .any(|a| a.starts_with("--test-threads") || a == "-j")
    {
        // Twice the cores: most guest tests spend their time waiting on their guests (pings,
        // the selftests' sleeps), so one test per core leaves the cores idle
        // (docs/measurements.md).
        nextest.arg(format!("--test-threads={}", 2 * cores()));
    }
    if let Some((k, n)) = partition {
        nextest.arg("--partition").arg(format!("count:{k}/{n}"));
    }
    nextest.args(test_args);
    with_env(&mut nextest);
    if lab_kernels::progress::watching() {
        // nextest's output reaches the terminal through a pipe (tally), where cargo builds the
        // tests without a word for minutes on a first run: build them first, as progress.
        let mut build = std::process::Command::new(env!("CARGO"));
        build.args(["test", "--workspace", "--no-run", "--quiet"]);
        with_env(&mut build);
        let built = progress::cargo(&mut build, "building the tests")?;
        anyhow::ensure!(
            built.success(),
            "building the tests failed (cargo's errors are above)"
        );
    }
    let sampler = cpu_by_test::Sampler::start(std::process::id());
    let load = busy.then(BusyLoops::start);
    let (status, mut tally) = tally::run(nextest)?;
    drop(load);
    report_cpu_by_test(sampler.finish());
    let mut ok = status.success();
    // The JUnit file is what CI shows: it must say what nextest said.
    let junit = workspace_target().join("nextest/default/junit.xml");
    let (cases, failures) = tally::junit_counts(&junit)?;
    anyhow::ensure!(
        (cases, failures) == (tally.passed + tally.failed, tally.failed),
        "{} holds {cases} test cases ({failures} failed), but nextest reported {} passed and {} failed",
        junit.display(),
        tally.passed,
        tally.failed
    );
    // nextest does not run doctests (the README's examples among them): cargo test does, once.
    if partition.is_none_or(|(k, _)| k == 1) && test_args.is_empty() {
        let mut doc = std::process::Command::new(env!("CARGO"));
        doc.args(["test", "--workspace", "--doc"]);
        with_env(&mut doc);
        let (doc_status, doc_tally) = tally::run(doc)?;
        ok &= doc_status.success();
        tally.passed += doc_tally.passed;
        tally.failed += doc_tally.failed;
    }
    // Check for leftovers whether or not the tests passed: a leak is a bug either way.
    let leaks = leaks::HostFootprint::take().leaked_since(&before);
    if leaks.is_empty() {
        ui::status!(
            "xtask: no QEMU process, no state directory and no host network change left behind"
        );
    } else {
        eprintln!(
            "xtask: the test suite left things behind:\n  {}",
            leaks.join("\n  ")
        );
    }
    println!(
        "xtask: {} passed, {} failed",
        tally.passed,
        tally.failed + usize::from(!leaks.is_empty())
    );
    println!(
        "xtask: JUnit report in {}",
        workspace_target()
            .join("nextest/default/junit.xml")
            .display()
    );
    if !ok {
        anyhow::bail!(
            "tests failed; consoles of failed guests are in {}",
            lab_dir().join("failed").display()
        );
    }
    anyhow::ensure!(leaks.is_empty(), "the test suite left things behind");
    anyhow::ensure!(tally.passed > 0, "no test ran");
    Ok(())
}

/// Writes what each test used of the CPU next to the JUnit file and names the costliest: the
/// suite's length on a small machine is its CPU, which nextest does not report.
fn report_cpu_by_test(cpu: cpu_by_test::CpuByTest) {
    let path = workspace_target().join("nextest/cpu-by-test.tsv");
    match std::fs::write(&path, cpu.tsv()) {
        Ok(()) => ui::status!(
            "xtask: CPU by test (sampled from /proc): {}; all in {}",
            cpu.summary(3),
            path.display()
        ),
        Err(e) => eprintln!("xtask: could not write {}: {e}", path.display()),
    }
}

pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// `target` (or `CARGO_TARGET_DIR`).
pub fn workspace_target() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Where kernels, packages, images, module disks, selftests and snapshots are kept: one cache
/// for every clone on this machine, so a second clone starts warm. Made (0700, tagged) when
/// missing; a directory the lab did not make, or that others can write, is refused
/// ([`lab_kernels::cache::open`]).
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let (dir, adopt) = cache_location();
    let opened = lab_kernels::cache::open(&dir, adopt);
    // A directory the user named: say which setting named it.
    if adopt == lab_kernels::cache::Adopt::Named {
        opened.map_err(|e| anyhow::anyhow!("{ENV_CACHE}: {e}"))?;
    } else {
        opened?;
    }
    // What a killed run left half-made (a fetch, the module disk, the selftests).
    for swept in lab_kernels::cache::sweep_staging(&dir) {
        ui::status!(
            "xtask: removed {}, left half-made by a killed run",
            swept.display()
        );
    }
    Ok(dir)
}

/// Where the cache is, and whether an untagged directory there may be adopted: `LAB_CACHE` when
/// set (only a new, empty or tagged directory), else `$XDG_CACHE_HOME/macvlan-lab`, else
/// `~/.cache/macvlan-lab` (named by us: adopted), `target/lab/cache` only when there is no home.
pub fn cache_location() -> (PathBuf, lab_kernels::cache::Adopt) {
    use lab_kernels::cache::Adopt;
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var(ENV_CACHE) {
        return (dir, Adopt::Named);
    }
    let dir = var("XDG_CACHE_HOME")
        .map(|d| d.join("macvlan-lab"))
        .or_else(|| var("HOME").map(|h| h.join(".cache").join("macvlan-lab")))
        .unwrap_or_else(|| lab_dir().join("cache"));
    (dir, Adopt::Default)
}

pub const ENV_CACHE: &str = "LAB_CACHE";

/// `target/lab`: assets, reports, artifacts.
pub fn lab_dir() -> PathBuf {
    match std::env::var_os(ENV_LAB_DIR) {
        Some(dir) if !dir.is_empty() => std::path::absolute(&dir).unwrap_or_else(|_| dir.into()),
        _ => workspace_target().join("lab"),
    }
}

/// Names xtask's own state directory (assets files, runs, reports) instead of `target/lab`:
/// a second cache (`LAB_CACHE`) beside the first needs assets files of its own.
pub const ENV_LAB_DIR: &str = "LAB_DIR";

/// The cores this process may use.
pub(crate) fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Every number the command line takes, in the commands that take it.
    const NUMBERS: &[(&[&str], &str)] = &[
        (&["lab", "run"], "--timeout"),
        (&["lab", "run"], "--hosts"),
        (&["lab", "run"], "--cpus"),
        (&["lab", "run"], "--memory"),
        (&["lab", "run"], "--nics"),
        (&["lab", "shell"], "--memory"),
        (&["lab"], "--jobs"),
        (&["lab"], "--partition"),
        (&["lab", "attach", "host2"], "--pid"),
        (&["test"], "--partition"),
        (&["bench"], "--boots"),
        (&["bench"], "--restores"),
        (&["bench"], "--parallel"),
        (&["bench"], "--memory"),
        (&["bench"], "--nested"),
        (&["bench"], "--extras"),
        (&["bench"], "--soak"),
    ];

    /// Numbers as a person or a script might type them: small, huge, negative, fractional,
    /// exponents, two joined by a slash.
    fn number() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            any::<i128>().prop_map(|n| n.to_string()),
            any::<f64>().prop_map(|n| n.to_string()),
            (0u32..10, 0u32..10).prop_map(|(k, n)| format!("{k}/{n}")),
            "[0-9eE.+-]{1,30}",
        ]
    }

    #[test]
    fn an_error_is_its_causes_without_a_backtrace_unless_asked() {
        let e = anyhow::anyhow!("disk full").context("cannot write the image");
        assert_eq!(
            report(&e, false),
            "cannot write the image\n\nCaused by:\n    disk full"
        );
        assert!(report(&e, true).contains("Backtrace:"));
    }

    proptest! {
        /// A number out of range is an error naming the range, never a panic; one accepted
        /// goes through the checks that run before provisioning without a panic either.
        #[test]
        fn every_command_line_number_is_taken_or_refused_without_a_panic(
            which in 0..NUMBERS.len(),
            value in number(),
        ) {
            let (command, flag) = NUMBERS[which];
            let mut argv = vec!["cargo xtask"];
            argv.extend_from_slice(command);
            argv.extend([flag, value.as_str()]);
            if command == ["lab", "run"] {
                argv.extend(["--", "true"]);
            }
            match Cli::try_parse_from(&argv) {
                Err(e) => prop_assert!(!e.to_string().is_empty()),
                Ok(cli) => {
                    if let Command::Lab(lab) = cli.command {
                        if let Some(lab::LabCommand::Run { timeout, lan, .. }) = &lab.command {
                            let _ = (timeout, lan.checked());
                        }
                    }
                }
            }
        }
    }
}
