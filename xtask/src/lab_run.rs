//! `cargo xtask lab run`: a job on the first host of a fresh lab, its output shown as it comes,
//! its results read subtest by subtest when it prints KTAP, into `junit.xml` and
//! `summary.json` in the run's directory. With `--repeat`, `--until-fail` or `--reruns` the job
//! runs again, each time in a lab restored from the same snapshots with a seed of its own, and
//! each subtest is judged passed, failed or flaky over all of them ([`lab_harness::flaky`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use lab_harness::events::Event;
use lab_harness::flaky::{self, Attempt, Judgement, Reported, Why};
use lab_harness::ktap::{self, Outcome};
use lab_harness::{Assets, Job, Lab, RunOutput, Spec, Stream, Verdict};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestRerun, TestSuite};
use serde::Serialize;

use crate::lab::LanArgs;

/// How often the job runs.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct Repeats {
    /// Run the job N times, each in a lab restored from the same snapshots with a seed of its
    /// own, and judge each subtest over all of them: passed, failed (in every run) or flaky
    /// (in some, with the seeds it failed with). Exits 1 when one failed; flaky ones are
    /// reported (JUnit's flakyFailure) and do not fail the run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000), conflicts_with = "until_fail")]
    pub repeat: Option<u32>,
    /// Run the job up to N times, stopping at the first failure, then judge it as --repeat does.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub until_fail: Option<u32>,
    /// After a failure, rerun the job K times with the failure's seed (the switch's randomness
    /// and the guests' the same) and K times with new seeds, to tell a flake from a failure
    /// [default: 2 with --repeat or --until-fail, else 0]
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(0..=100))]
    pub reruns: Option<u32>,
    /// The first run's seed (in the job's environment as LAB_SEED): give a seed a report
    /// named to start from the same state [default: a new one]
    #[arg(long, value_name = "SEED")]
    pub seed: Option<u64>,
}

impl Repeats {
    /// Runs before any rerun, whether to stop at the first failure, and reruns per failure.
    fn plan(&self) -> (u32, bool, u32) {
        let judged = self.repeat.is_some() || self.until_fail.is_some();
        let reruns = self.reruns.unwrap_or(if judged { 2 } else { 0 });
        match (self.repeat, self.until_fail) {
            (_, Some(n)) => (n, true, reruns),
            (Some(n), None) => (n, false, reruns),
            (None, None) => (1, false, reruns),
        }
    }

    /// Whether the run is judged over attempts rather than by its one exit code.
    fn judged(&self) -> bool {
        let (runs, _, reruns) = self.plan();
        runs > 1 || reruns > 0
    }
}

/// What `lab run` was asked.
pub struct RunArgs<'a> {
    pub script: Option<&'a Path>,
    pub program: &'a [String],
    pub timeout: Duration,
    pub lan: &'a LanArgs,
    pub run_dir_to: Option<&'a Path>,
    pub repeats: &'a Repeats,
}

/// One attempt as it went: the output's end, what it printed as KTAP, its kernels' problems.
struct Ran {
    out: RunOutput,
    subtests: Option<Vec<ktap::Subtest>>,
    splats: Vec<lab_harness::console::Splat>,
    /// Powering the lab off failed (a kernel problem, when not allowed, among the reasons).
    shutdown: Option<lab_harness::Error>,
}

/// `summary.json` of a run.
#[derive(Serialize)]
struct Summary<'a> {
    version: u32,
    job: &'a str,
    /// Each host and the kernel it booted.
    hosts: Vec<crate::lab::HostKernel>,
    attempts: Vec<AttemptSummary<'a>>,
    /// Each subtest judged over every attempt.
    subtests: &'a [flaky::Finding],
    /// Kernel problems, one per fingerprint.
    kernel_problems: &'a [flaky::SplatFinding],
    passed: bool,
}

#[derive(Serialize)]
struct AttemptSummary<'a> {
    #[serde(flatten)]
    attempt: &'a Attempt,
    exit_code: Option<i32>,
    signal: Option<i32>,
    timed_out: bool,
    seconds: f64,
}

pub fn run(args: &RunArgs) -> anyhow::Result<()> {
    let job = job_of(args.script, args.program)?;
    let spec = args.lan.checked()?;
    crate::hosttools::ensure(crate::hosttools::Purpose::Lab)?;
    let mut assets = crate::lab::assets_for(&[&spec], &args.lan.provision)?;
    assets.runs = crate::runs::start("run")?;
    if let Some(file) = args.run_dir_to {
        std::fs::write(file, format!("{}\n", assets.runs.dir.display()))
            .map_err(|e| anyhow::anyhow!("--run-dir-to {}: {e}", file.display()))?;
    }
    let what = match &job {
        Job::Script(_) => args
            .script
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        Job::Program(argv) => argv.join(" "),
    };
    crate::ui::status!(
        "lab: running {what} on {}: {}",
        if args.lan.topology.is_some() {
            spec.first_host().to_string()
        } else {
            "host1 (192.168.88.1)".into()
        },
        args.lan.describe()
    );
    let hosts = crate::lab::host_kernels(&assets, &spec)?;
    if hosts.iter().any(|h| h.kernel != hosts[0].kernel) {
        for h in &hosts {
            crate::ui::status!("lab:   {} boots {}", h.name, h.kernel);
        }
    }
    let before = crate::leaks::HostFootprint::take();
    let rt = tokio::runtime::Runtime::new()?;
    let (runs, until_fail, reruns) = args.repeats.plan();
    let judged = args.repeats.judged();
    let first_seed = args.repeats.seed.unwrap_or_else(|| fastrand::u64(..));
    let context = Attempts {
        assets: &assets,
        spec: &spec,
        job: &job,
        what: &what,
        in_dir: args.lan.dir.is_some(),
        timeout: args.timeout,
        judged,
    };
    // The job's output goes straight to the descriptors ([`show`]): what std holds goes first.
    let _ = std::io::Write::flush(&mut std::io::stdout());
    let attempts = rt.block_on(crate::interrupt::unless_interrupted(async {
        let mut rng = fastrand::Rng::with_seed(first_seed);
        let mut done: Vec<(Attempt, Ran)> = Vec::new();
        for i in 0..runs {
            let seed = if i == 0 { first_seed } else { rng.u64(..) };
            let attempt = context.attempt(seed, Why::Run).await?;
            let failed = failed(&attempt.0);
            done.push(attempt);
            if failed && until_fail {
                break;
            }
        }
        if let Some(seed) = done.iter().find(|(a, _)| failed(a)).map(|(a, _)| a.seed) {
            for (seed, why) in flaky::reruns(seed, reruns, || rng.u64(..)) {
                done.push(context.attempt(seed, why).await?);
            }
        }
        anyhow::Ok(done)
    }));
    drop(rt);
    let attempts = attempts??;
    let leaks = crate::leaks::HostFootprint::take().leaked_since(&before);
    anyhow::ensure!(
        leaks.is_empty(),
        "the run left things behind:\n  {}",
        leaks.join("\n  ")
    );
    let verdicts = Verdicts::of(&attempts);
    let summary_path = write_results(&assets.runs.dir, &what, hosts, &attempts, &verdicts)?;
    crate::ui::status!(
        "lab: captures and consoles of this run are in {} (results: {}, junit.xml beside it)",
        crate::runs::shown(&assets.runs).display(),
        summary_path.display()
    );
    if judged {
        print_judgement(attempts.len(), &verdicts);
        anyhow::ensure!(verdicts.passed, "{what} failed (see the table above)");
        return Ok(());
    }
    let (_, ran) = attempts.into_iter().next().context("no attempt ran")?;
    exit_as_the_job(&what, args.timeout, ran, verdicts.passed)
}

/// The job `lab run` was given: a script file, or a program after `--`.
fn job_of(script: Option<&Path>, program: &[String]) -> anyhow::Result<Job> {
    Ok(match (script, program.is_empty()) {
        (Some(path), true) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            Job::Script(text)
        }
        (None, false) => Job::Program(program.to_vec()),
        (Some(_), false) => anyhow::bail!("give a script or a program after `--`, not both"),
        (None, true) => anyhow::bail!("nothing to run: give a script file, or a program after `--` (see `cargo xtask lab run --help`)"),
    })
}

/// What every attempt shares.
struct Attempts<'a> {
    assets: &'a Assets,
    spec: &'a Spec,
    job: &'a Job,
    what: &'a str,
    in_dir: bool,
    timeout: Duration,
    judged: bool,
}

impl Attempts<'_> {
    /// Boots the lab with `seed`, runs the job with its output shown, powers the lab off.
    async fn attempt(&self, seed: u64, why: Why) -> anyhow::Result<(Attempt, Ran)> {
        if self.judged {
            let why = match why {
                Why::Run => "a run",
                Why::SameSeed => "a rerun with the failure's seed",
                Why::NewSeed => "a rerun with a new seed",
            };
            crate::ui::status!("lab: {why}, seed {seed} (LAB_SEED in the job's environment)");
        }
        let lab = Lab::boot(self.assets, self.spec.clone().with_seed(Some(seed))).await?;
        let mut env = lab.spec().job_env();
        env.push(("LAB_SEED".into(), seed.to_string()));
        let mut collector = ktap::Collector::default();
        let first = lab.spec().first_host().to_string();
        lab.events().emit(Event::JobStarted {
            host: first.clone(),
            job: self.what.to_string(),
            seed: Some(seed),
        });
        let job = self.job.run_on(
            lab.vm(&first),
            self.in_dir,
            &env,
            self.timeout,
            |stream, bytes| {
                if stream == Stream::Stdout {
                    collector.feed(bytes);
                }
                show(stream, bytes);
            },
        );
        // A topology's timeline (a cable cut after 5 s, say) plays while the job runs.
        let out = lab.alongside_timeline(job).await.and_then(|out| out);
        if let Ok(out) = &out {
            lab.events().emit(Event::JobEnded {
                host: first.clone(),
                job: self.what.to_string(),
                exit_code: out.code,
                passed: out.verdict() == Verdict::Pass,
            });
        }
        let splats: Vec<_> = lab.vms().iter().flat_map(|vm| vm.kernel_splats()).collect();
        let allow_splats = lab.spec().hosts().iter().all(|h| h.allow_splats);
        let shutdown = lab.shutdown().await.err();
        let ran = Ran {
            out: out?,
            subtests: collector.finish(),
            splats,
            shutdown,
        };
        // A lab that did not power off for another reason than its kernel's problems (which
        // are results of their own) is broken, not a failing job.
        if let Some(e) = &ran.shutdown {
            if ran.splats.is_empty() || allow_splats {
                anyhow::bail!("the lab did not power off cleanly: {e}");
            }
        }
        let attempt = Attempt {
            seed,
            why,
            results: results(self.what, &ran, allow_splats),
            splats: ran.splats.iter().map(|s| s.fingerprint()).collect(),
        };
        Ok((attempt, ran))
    }
}

/// Straight to the descriptors, past std's buffers (flushed before the first attempt): a
/// write that waits for a reader gives up when the run is interrupted.
fn show(stream: Stream, bytes: &[u8]) {
    use std::os::fd::AsFd;
    match stream {
        Stream::Stdout => {
            crate::interrupt::write_unless_interrupted(std::io::stdout().as_fd(), bytes)
        }
        Stream::Stderr => {
            crate::interrupt::write_unless_interrupted(std::io::stderr().as_fd(), bytes)
        }
    }
}

/// An attempt's results: its subtests when it printed KTAP, else the job's own; and what no
/// subtest says: an exit code that failed while every subtest passed, a timeout, lost output,
/// kernel problems.
fn results(what: &str, ran: &Ran, allow_splats: bool) -> Vec<Reported> {
    let out = &ran.out;
    let own = match out.verdict() {
        Verdict::Pass => Outcome::Pass,
        Verdict::Skip => Outcome::Skip,
        Verdict::Fail => Outcome::Fail,
    };
    let mut results: Vec<Reported> = match &ran.subtests {
        Some(subtests) => {
            let mut r: Vec<Reported> = subtests
                .iter()
                .map(|s| Reported::new(s.name.clone(), s.outcome))
                .collect();
            if own == Outcome::Fail && !r.iter().any(|r| r.outcome.failed()) {
                r.push(Reported::new(
                    format!("{what}: its exit status"),
                    Outcome::Fail,
                ));
            }
            r
        }
        None => vec![Reported::new(what, own)],
    };
    if out.timed_out {
        results.push(Reported::new(
            format!("{what}: within its timeout"),
            Outcome::Error,
        ));
    }
    if out.truncated {
        results.push(Reported::new(
            format!("{what}: its output, whole"),
            Outcome::Error,
        ));
    }
    if !ran.splats.is_empty() && !allow_splats {
        results.push(Reported::new(
            "kernel: no problem on a console",
            Outcome::Fail,
        ));
    }
    results
}

fn failed(attempt: &Attempt) -> bool {
    attempt.results.iter().any(|r| r.outcome.failed())
}

/// Every subtest judged over the attempts, and their kernel problems: worked out once, for
/// the files and the table.
struct Verdicts {
    findings: Vec<flaky::Finding>,
    splats: Vec<flaky::SplatFinding>,
    /// No subtest failed in every attempt (a kernel problem is one).
    passed: bool,
}

impl Verdicts {
    fn of(attempts: &[(Attempt, Ran)]) -> Self {
        let only: Vec<Attempt> = attempts.iter().map(|(a, _)| a.clone()).collect();
        let findings = flaky::judge(&only);
        let passed = !findings.iter().any(|f| f.judgement == Judgement::Failed);
        Self {
            findings,
            splats: flaky::splats(&only),
            passed,
        }
    }
}

/// Writes `summary.json` and `junit.xml` into the run's directory; returns the summary's path.
fn write_results(
    dir: &Path,
    what: &str,
    hosts: Vec<crate::lab::HostKernel>,
    attempts: &[(Attempt, Ran)],
    verdicts: &Verdicts,
) -> anyhow::Result<PathBuf> {
    let summary = Summary {
        version: 1,
        job: what,
        hosts,
        attempts: attempts
            .iter()
            .map(|(a, r)| AttemptSummary {
                attempt: a,
                exit_code: r.out.code,
                signal: r.out.signal,
                timed_out: r.out.timed_out,
                seconds: (r.out.duration.as_secs_f64() * 1000.0).round() / 1000.0,
            })
            .collect(),
        subtests: &verdicts.findings,
        kernel_problems: &verdicts.splats,
        passed: verdicts.passed,
    };
    let path = dir.join("summary.json");
    lab_kernels::write_atomically(&path, &serde_json::to_vec_pretty(&summary)?)?;
    let junit = junit(what, &verdicts.findings, attempts)?;
    lab_kernels::write_atomically(&dir.join("junit.xml"), junit.as_bytes())?;
    Ok(path)
}

/// JUnit: a case per subtest; a flaky one passes with its failed runs as `flakyFailure`, a
/// failed one carries the reason and diagnostics of its last failure.
fn junit(
    what: &str,
    findings: &[flaky::Finding],
    attempts: &[(Attempt, Ran)],
) -> anyhow::Result<String> {
    let mut suite = TestSuite::new(format!("lab run {what}"));
    for finding in findings {
        let failures: Vec<(u64, Option<&ktap::Subtest>)> = attempts
            .iter()
            .filter(|(a, _)| {
                a.results
                    .iter()
                    .any(|r| r.name == finding.name && r.outcome.failed())
            })
            .map(|(a, r)| {
                let subtest = r.subtests.iter().flatten().find(|s| s.name == finding.name);
                (a.seed, subtest)
            })
            .collect();
        let describe = |seed: u64, subtest: Option<&ktap::Subtest>| {
            let mut text = format!("seed {seed}");
            if let Some(s) = subtest {
                if let Some(reason) = &s.reason {
                    text.push_str(&format!(": {reason}"));
                }
                for d in &s.diagnostics {
                    text.push_str(&format!("\n# {d}"));
                }
            }
            text
        };
        let status = match &finding.judgement {
            Judgement::Passed => TestCaseStatus::success(),
            Judgement::Skipped => {
                let mut s = TestCaseStatus::skipped();
                let last = attempts
                    .iter()
                    .rev()
                    .filter_map(|(_, r)| r.subtests.as_ref())
                    .flatten()
                    .find(|s| s.name == finding.name);
                if let Some(subtest) = last {
                    let word = if subtest.outcome == Outcome::Xfail {
                        "XFAIL"
                    } else {
                        "SKIP"
                    };
                    s.set_message(format!(
                        "{word} {}",
                        subtest.reason.as_deref().unwrap_or_default()
                    ));
                }
                s
            }
            Judgement::Failed => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!(
                    "failed in {} of {} run(s)",
                    finding.failures, finding.runs
                ));
                if let Some((seed, subtest)) = failures.last() {
                    s.set_description(describe(*seed, *subtest));
                }
                s
            }
            Judgement::Flaky { seed_decides, .. } => {
                let mut s = TestCaseStatus::success();
                for (seed, subtest) in &failures {
                    let mut rerun = TestRerun::new(NonSuccessKind::Failure);
                    rerun.set_message(format!(
                        "flaky: failed in {} of {} run(s) ({})",
                        finding.failures,
                        finding.runs,
                        if *seed_decides {
                            "the seed decides"
                        } else {
                            "the same seed passed and failed"
                        }
                    ));
                    rerun.set_description(describe(*seed, *subtest));
                    s.add_rerun(rerun);
                }
                s
            }
        };
        let mut case = TestCase::new(finding.name.clone(), status);
        case.set_classname(what.to_string());
        suite.add_test_case(case);
    }
    let mut report = Report::new("macvlan-lab run");
    report.add_test_suite(suite);
    report.to_string().context("writing JUnit")
}

/// The judgement of every subtest, and the kernel problems, for a person.
fn print_judgement(runs: usize, verdicts: &Verdicts) {
    let colour = crate::ui::colour(&std::io::stdout());
    println!("lab: {runs} run(s) of the job:");
    for f in &verdicts.findings {
        let (word, good, more) = match &f.judgement {
            Judgement::Passed => ("passed", true, String::new()),
            Judgement::Skipped => ("skipped", true, String::new()),
            Judgement::Failed => ("failed", false, String::new()),
            Judgement::Flaky {
                failing_seeds,
                seed_decides,
            } => (
                "flaky",
                false,
                format!(
                    ", with seed(s) {} ({})",
                    failing_seeds
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                    if *seed_decides {
                        "each failed every time: the seed decides"
                    } else {
                        "the same seed passed and failed: timing"
                    }
                ),
            ),
        };
        let mark = crate::ui::paint(word, good, colour);
        println!(
            "  {mark:<7} {}: failed {} of {}{more}",
            f.name, f.failures, f.runs
        );
    }
    for s in &verdicts.splats {
        println!(
            "  kernel problem {} time(s) (seeds {:?}): {}",
            s.count, s.seeds, s.fingerprint
        );
    }
}

/// A single run ends as its job did: its exit code, or why there is none; a job that exits 0
/// while its KTAP reports a failed subtest (`passed` false) fails.
fn exit_as_the_job(what: &str, timeout: Duration, ran: Ran, passed: bool) -> anyhow::Result<()> {
    if let Some(e) = ran.shutdown {
        return Err(e.into());
    }
    let out = ran.out;
    if out.timed_out {
        anyhow::bail!("{what} timed out after {timeout:?} (give more with --timeout SECONDS)");
    }
    // Whatever its exit code: a run whose output did not all arrive did not pass.
    anyhow::ensure!(
        !out.truncated,
        "some of {what}'s output was lost on the way (the guest sent more than the host let it); its exit code was {:?}",
        out.code
    );
    let code = match (out.code, out.signal) {
        (Some(code), _) => code,
        (None, Some(signal)) => {
            eprintln!("lab: {what} was killed by signal {signal}");
            128 + signal
        }
        (None, None) => 1,
    };
    if code == 0 && !passed {
        anyhow::bail!(
            "{what} exited with 0, but its KTAP output reports failed subtests (junit.xml and summary.json name them)"
        );
    }
    match out.verdict() {
        Verdict::Skip => eprintln!(
            "lab: {what} skipped (exit 4, kselftest's KSFT_SKIP): not a pass, not a failure"
        ),
        Verdict::Fail if out.signal.is_none() => eprintln!("lab: {what} exited with {code}"),
        _ => {}
    }
    std::process::exit(code);
}
