//! `report.html` as a browser shows it: headless Chromium (Debian's `chromium`, or Google Chrome)
//! opens the page from disk, and the DOM it built and a screenshot are checked. Without a
//! browser the test fails and says which package to install.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lab_scenarios::{Check, Report, ScenarioReport};

fn browser() -> PathBuf {
    if let Some(path) = std::env::var_os("LAB_CHROMIUM") {
        return path.into();
    }
    ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
        .iter()
        .find_map(|b| which::which(b).ok())
        .unwrap_or_else(|| panic!("no headless browser for the report test: install Debian's `chromium` (`sudo apt-get install chromium`), or set LAB_CHROMIUM to a Chrome or Chromium binary"))
}

/// A check of the lab's own tables, observed as `observed`.
fn check(name: &str, expected: &str, observed: &str) -> Check {
    let reach = lab_scenarios::registry::SCENARIOS
        .iter()
        .flat_map(|s| (s.checks)())
        .find(|e| e.check == name)
        .and_then(|e| e.reach);
    Check {
        name: name.into(),
        expected: expected.into(),
        observed: observed.into(),
        pass: expected == observed,
        inconclusive: false,
        claim: "宿主机无法直接访问 macvlan 子接口".into(),
        reach,
    }
}

fn report() -> Report {
    let scenario = |name: &str, checks: Vec<Check>| ScenarioReport {
        name: name.into(),
        passed: checks.iter().all(|c| c.pass),
        checks,
        notes: BTreeMap::new(),
        error: None,
        took: Duration::from_secs(7),
        drawing: Default::default(),
    };
    Report {
        kernel: "6.1.0-56-cloud-amd64".into(),
        qemu: "7.2.22".into(),
        accel: "tcg".into(),
        boots: Default::default(),
        image: String::new(),
        packages: Vec::new(),
        scenarios: vec![
            scenario(
                "mode/vepa",
                vec![
                    check("child -> peer", "reachable", "reachable"),
                    check("sibling, hairpin off", "unreachable", "unreachable"),
                    check("sibling, hairpin on", "reachable", "unreachable"),
                    check("default mode", "vepa", "vepa"),
                ],
            ),
            scenario(
                "seed/host-isolation",
                vec![check("host -> child", "unreachable", "unreachable")],
            ),
        ],
    }
}

fn chromium(args: &[&str], page: &std::path::Path) -> String {
    let out = Command::new(browser())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-dev-shm-usage",
        ])
        .args(args)
        .arg(format!("file://{}", page.display()))
        .output()
        .expect("the browser runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_browser_shows_each_scenario_its_matrix_and_the_claims() {
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("report.html");
    let files = |name: &str| {
        if name == "mode/vepa" {
            vec!["mode-vepa-1/switch.pcap".to_string()]
        } else {
            Vec::new()
        }
    };
    std::fs::write(
        &page,
        lab_scenarios::html::render(&report(), "runs/r", &files),
    )
    .expect("write");

    let dom = chromium(&["--dump-dom"], &page);
    // Chromium's serialized DOM: what it parsed and built, attributes as it normalized them.
    assert!(
        dom.contains("1 of 2 scenarios behaved as the seed says"),
        "{dom}"
    );
    let cells: Vec<&str> = dom
        .match_indices("class=\"cell ")
        .map(|(i, _)| &dom[i + 12..i + 12 + dom[i + 12..].find('"').unwrap_or(0)])
        .collect();
    assert_eq!(
        cells.iter().filter(|c| **c == "as-expected").count(),
        3,
        "three cells as expected: {cells:?}"
    );
    assert_eq!(
        cells.iter().filter(|c| **c == "not-as-expected").count(),
        1,
        "one not: {cells:?}"
    );
    assert!(
        dom.contains("data-expected=\"reachable\" data-observed=\"unreachable\""),
        "the failing cell says both: {dom}"
    );
    assert!(
        dom.contains("宿主机无法直接访问 macvlan 子接口"),
        "the claim beside the checks"
    );
    assert!(
        dom.contains("href=\"runs/r/mode-vepa-1/switch.pcap\""),
        "a link to the capture"
    );
    assert!(
        dom.contains("switch, hairpin off → on"),
        "the topology shows the hairpin change"
    );

    let shot = dir.path().join("report.png");
    chromium(
        &[
            "--window-size=900,1400",
            &format!("--screenshot={}", shot.display()),
        ],
        &page,
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "a real picture: {} bytes",
        png.len()
    );
    if let Some(keep) = std::env::var_os("LAB_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).expect("keep the screenshot");
    }
}

/// The report quotes the seed in Chinese: in the page's fonts (`html::FONTS`) each character of
/// a quote is drawn as its own glyph, not the one box a font without CJK gives them all. The
/// browser draws each on a canvas; two different characters drawn alike are boxes.
#[test]
fn the_seeds_chinese_quotes_render_as_glyphs_not_boxes() {
    let quote = "宿主机无法直接访问";
    let dir = tempfile::tempdir().expect("tempdir");
    let page = dir.path().join("glyphs.html");
    let script = format!(
        "<!doctype html><meta charset=\"utf-8\"><body><pre id=\"out\"></pre><script>\
         function px(ch){{const c=document.createElement('canvas');c.width=64;c.height=64;\
         const x=c.getContext('2d');x.font='48px {fonts}';x.fillText(ch,4,52);\
         return Array.from(x.getImageData(0,0,64,64).data).join(',');}}\
         const chars=Array.from('{quote}');const drawn=new Set(chars.map(px));\
         document.getElementById('out').textContent='distinct '+drawn.size+' of '+new Set(chars).size;\
         </script>",
        fonts = lab_scenarios::html::FONTS.replace('\'', "\\'"),
    );
    std::fs::write(&page, script).expect("write");
    let dom = chromium(&["--dump-dom"], &page);
    let distinct = quote
        .chars()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert!(
        dom.contains(&format!("distinct {distinct} of {distinct}")),
        "the quote's characters are drawn as boxes (no CJK font: `sudo apt-get install fonts-wqy-microhei`):\n{dom}"
    );
    let html = lab_scenarios::html::render(&report(), "runs/r", &|_| Vec::new());
    assert!(
        html.contains(lab_scenarios::html::FONTS),
        "the report names the same fonts"
    );
}
