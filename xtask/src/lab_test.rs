//! `cargo xtask lab test FILE.toml...`: boots each topology file's lab, runs the checks it
//! carries, prints a table and writes JUnit (`target/lab/junit-<file>.xml`, one test case per
//! check) beside the lab's own.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use lab_harness::{Assets, Lab, Topology};
use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

/// One check's result.
struct Row {
    name: String,
    host: String,
    source: String,
    outcome: Result<lab_harness::check::Outcome, String>,
    took: Duration,
}

/// One file's results; `error` when its lab could not boot or power off cleanly.
struct FileResult {
    file: PathBuf,
    rows: Vec<Row>,
    error: Option<String>,
    took: Duration,
}

pub fn run(
    files: &[PathBuf],
    allow_kernel_splats: bool,
    provision: &crate::provision::ProvisionArgs,
) -> anyhow::Result<()> {
    // Every file read and checked before anything boots: a typo in the third is found now.
    let mut labs = Vec::new();
    for file in files {
        let topology = Topology::load(file)?;
        anyhow::ensure!(
            !topology.checks.is_empty(),
            "{}: no [[check]]: a file `lab test` runs must say what to check (see examples/routed.toml)",
            file.display()
        );
        labs.push((file.clone(), topology));
    }
    crate::hosttools::ensure(crate::hosttools::Purpose::Lab)?;
    let specs: Vec<&lab_harness::Spec> = labs.iter().map(|(_, t)| &t.spec).collect();
    let mut assets = crate::lab::assets_for(&specs, provision)?;
    assets.runs = crate::runs::start("test")?;
    let before = crate::leaks::HostFootprint::take();
    let rt = tokio::runtime::Runtime::new()?;
    let results = rt.block_on(crate::interrupt::unless_interrupted(async {
        let mut results = Vec::new();
        for (file, topology) in labs {
            crate::ui::status!(
                "lab test: {} ({} host(s), {} check(s))",
                file.display(),
                topology.spec.hosts().len(),
                topology.checks.len()
            );
            // Which kernel a host of its own boots, said as `lab run` says it.
            let kernels = crate::lab::host_kernels(&assets, &topology.spec).unwrap_or_default();
            for (host, k) in topology.spec.hosts().iter().zip(kernels) {
                if host.kernel.is_some() {
                    crate::ui::status!("lab test:   {} boots {}", k.name, k.kernel);
                }
            }
            results.push(test_file(&assets, file, topology, allow_kernel_splats).await);
        }
        results
    }))?;
    drop(rt);
    print_table(&results);
    println!("guests: {}", lab_harness::boot::tally());
    for result in &results {
        let path = write_junit(result)?;
        crate::ui::status!(
            "lab test: JUnit of {} in {}",
            result.file.display(),
            path.display()
        );
    }
    let leaks = crate::leaks::HostFootprint::take().leaked_since(&before);
    anyhow::ensure!(
        leaks.is_empty(),
        "lab test left things behind:\n  {}",
        leaks.join("\n  ")
    );
    let failed: Vec<String> = results
        .iter()
        .flat_map(|r| {
            let file = r.file.display().to_string();
            let error = r.error.as_ref().map(|_| format!("{file} (its lab)"));
            let checks = r
                .rows
                .iter()
                .filter(|row| !row.outcome.as_ref().is_ok_and(|o| o.passed))
                .map(move |row| format!("{file}: {}", row.name));
            error.into_iter().chain(checks.collect::<Vec<_>>())
        })
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} check(s) failed:\n  {}\n(captures and consoles are in {})",
        failed.len(),
        failed.join("\n  "),
        crate::runs::shown(&assets.runs).display()
    );
    Ok(())
}

/// Boots `topology`, runs its checks in order, powers it off.
async fn test_file(
    assets: &Assets,
    file: PathBuf,
    topology: Topology,
    allow_kernel_splats: bool,
) -> FileResult {
    let started = Instant::now();
    let stem = file
        .file_stem()
        .map_or("lab".into(), |s| s.to_string_lossy().into_owned());
    let spec = topology
        .spec
        .named(&format!("test-{stem}"))
        .with_watch(allow_kernel_splats, false);
    let mut result = FileResult {
        file,
        rows: Vec::new(),
        error: None,
        took: Duration::ZERO,
    };
    match Lab::boot(assets, spec).await {
        Err(e) => result.error = Some(format!("the lab did not boot: {e}")),
        Ok(lab) => {
            // The checks, in order, while the file's timeline plays (a cable cut after 5 s).
            let checks = async {
                let mut rows = Vec::new();
                for check in &topology.checks {
                    let began = Instant::now();
                    let outcome = lab_harness::check::run(check, &lab)
                        .await
                        .map_err(|e| e.to_string());
                    rows.push(Row {
                        name: check.name.clone(),
                        host: check.host.clone(),
                        source: check.source.to_string(),
                        outcome,
                        took: began.elapsed(),
                    });
                }
                rows
            };
            match lab.alongside_timeline(checks).await {
                Ok(rows) => result.rows = rows,
                Err(e) => result.error = Some(format!("the timeline broke: {e}")),
            }
            if let Err(e) = lab.shutdown().await {
                result.error = Some(format!("the lab did not power off cleanly: {e}"));
            }
        }
    }
    result.took = started.elapsed();
    result
}

fn print_table(results: &[FileResult]) {
    let colour = crate::ui::colour(&std::io::stdout());
    for result in results {
        println!("{}", result.file.display());
        for row in &result.rows {
            let (pass, expected, observed) = match &row.outcome {
                Ok(o) => (o.passed, o.expected.as_str(), o.observed.clone()),
                Err(e) => (false, "", format!("could not run: {e}")),
            };
            let mark = crate::ui::paint(if pass { "yes" } else { "NO" }, pass, colour);
            println!(
                "  {mark:<3} {:<40} on {:<10} expects {expected} | saw {observed}",
                row.name, row.host
            );
        }
        if let Some(error) = &result.error {
            let mark = crate::ui::paint("NO", false, colour);
            println!("  {mark:<3} {error}");
        }
    }
}

/// `target/lab/junit-<stem>.xml`: a suite for the file, a case per check (and one erroring
/// case when its lab broke).
fn write_junit(result: &FileResult) -> anyhow::Result<PathBuf> {
    let stem = result
        .file
        .file_stem()
        .map_or("lab".into(), |s| s.to_string_lossy().into_owned());
    let mut report = Report::new("macvlan-lab test");
    let mut suite = TestSuite::new(result.file.display().to_string());
    suite.set_time(result.took);
    for row in &result.rows {
        let status = match &row.outcome {
            Ok(o) if o.passed => TestCaseStatus::success(),
            Ok(o) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(format!("expected {}, saw {}", o.expected, o.observed))
                    .set_description(format!("{} on {}", row.source, row.host));
                s
            }
            Err(e) => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
                s.set_message("the check could not run")
                    .set_description(e.clone());
                s
            }
        };
        let mut case = TestCase::new(row.name.clone(), status);
        case.set_classname(stem.clone()).set_time(row.took);
        suite.add_test_case(case);
    }
    if let Some(error) = &result.error {
        let mut s = TestCaseStatus::non_success(NonSuccessKind::Error);
        s.set_message("the lab broke")
            .set_description(error.clone());
        let mut case = TestCase::new("lab", s);
        case.set_classname(stem.clone());
        suite.add_test_case(case);
    }
    report.add_test_suite(suite);
    let path = crate::lab_dir().join(format!("junit-{stem}.xml"));
    let xml = report.to_string().context("writing JUnit")?;
    lab_kernels::write_atomically(&path, xml.as_bytes())?;
    Ok(path)
}
