//! `target/lab/report.html`: the report as one self-contained page, for people. No network, no
//! script: inline CSS and SVG. Per scenario, a drawing of the LAN it built (host1 and what it
//! holds, the switch and its hairpin, the peer), a who-reaches-whom matrix from its
//! reachability checks' data ([`crate::expectations::Reach`]), coloured by whether what was observed is what was expected, and every check with the
//! seed's claim beside it. Links go to the run's captures and consoles.

use std::collections::BTreeSet;
use std::fmt::Write;

use crate::registry::Drawing;
use crate::{Check, Report, ScenarioReport};

/// The page. `runs` is the kept run's directory relative to the page (`runs/<run>`), whose
/// `<scenario>-<id>/` directories hold the pcaps and consoles; `files` lists them per scenario.
pub fn render(report: &Report, runs: &str, files: &dyn Fn(&str) -> Vec<String>) -> String {
    let passed = report.scenarios.iter().filter(|s| s.passed).count();
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>macvlan-lab report</title>\n<style>{CSS}</style></head><body>\n\
         <h1>macvlan-lab</h1>\n<p class=\"meta\">kernel {} · QEMU {} · {} · {}</p>\n\
         <p id=\"summary\" class=\"{}\">{passed} of {} scenarios behaved as the seed says</p>\n",
        esc(&report.kernel),
        esc(&report.qemu),
        esc(&report.accel),
        esc(&report.boots.to_string()),
        if passed == report.scenarios.len() { "pass" } else { "fail" },
        report.scenarios.len()
    );
    for scenario in &report.scenarios {
        section(&mut page, scenario, runs, &files(&scenario.name));
    }
    page.push_str("</body></html>\n");
    page
}

fn section(page: &mut String, s: &ScenarioReport, runs: &str, files: &[String]) {
    let id = s.name.replace('/', "-");
    let _ = writeln!(
        page,
        "<section id=\"{id}\" class=\"scenario {}\"><h2>{} <small>{:.1} s</small></h2>",
        if s.passed { "pass" } else { "fail" },
        esc(&s.name),
        s.took.as_secs_f64()
    );
    page.push_str(&topology(s));
    page.push_str(&matrix(s));
    if let Some(error) = &s.error {
        let _ = writeln!(page, "<pre class=\"error\">{}</pre>", esc(error));
    }
    page.push_str("<table class=\"checks\"><tr><th>check</th><th>expected</th><th>observed</th><th>seed claim</th></tr>\n");
    for c in &s.checks {
        let _ = writeln!(
            page,
            "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td lang=\"zh\">{}</td></tr>",
            match (c.inconclusive, c.pass) {
                (true, _) => "inconclusive",
                (false, true) => "pass",
                (false, false) => "fail",
            },
            esc(&c.name),
            esc(&c.expected),
            esc(&c.observed),
            esc(&c.claim)
        );
    }
    page.push_str("</table>\n");
    if !files.is_empty() {
        page.push_str("<p class=\"files\">");
        for f in files {
            let _ = write!(
                page,
                "<a href=\"{}/{}\">{}</a> ",
                esc(runs),
                esc(f),
                esc(f.rsplit('/').next().unwrap_or(f))
            );
        }
        page.push_str("</p>\n");
    }
    page.push_str("</section>\n");
}

/// The who-reaches-whom matrix of the scenario's reachability checks ([`crate::Check::reach`]):
/// a row per sender, a column per receiver (and condition); each cell says what was observed,
/// green when that is what the seed predicts, red when not. Made from the checks' data: a
/// check's name is only its label in the table below.
fn matrix(s: &ScenarioReport) -> String {
    let edges: Vec<(&str, String, &Check)> = s
        .checks
        .iter()
        .filter_map(|c| c.reach.map(|r| (r.from, r.column(), c)))
        .collect();
    if edges.is_empty() {
        return String::new();
    }
    let rows: BTreeSet<&str> = edges.iter().map(|(f, _, _)| *f).collect();
    let cols: Vec<&str> = edges
        .iter()
        .map(|(_, t, _)| t.as_str())
        .fold(Vec::new(), |mut v, t| {
            if !v.contains(&t) {
                v.push(t);
            }
            v
        });
    let mut out = String::from("<table class=\"matrix\"><tr><th>from \\ to</th>");
    for col in &cols {
        let _ = write!(out, "<th>{}</th>", esc(col));
    }
    out.push_str("</tr>\n");
    for row in rows {
        let _ = write!(out, "<tr><th>{}</th>", esc(row));
        for col in &cols {
            match edges.iter().find(|(f, t, _)| *f == row && t == col) {
                Some((_, _, c)) => {
                    let _ = write!(
                        out,
                        "<td class=\"cell {}\" title=\"expected {}\" data-expected=\"{}\" data-observed=\"{}\">{}</td>",
                        if c.pass { "as-expected" } else { "not-as-expected" },
                        esc(&c.expected),
                        esc(&c.expected),
                        esc(&c.observed),
                        esc(&c.observed)
                    );
                }
                None => out.push_str("<td class=\"cell none\"></td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// The LAN as the scenario builds it: host1 holding its children (or VMs), the switch (hairpin
/// off, and on when the scenario tries it), the peer, and host2 for the nested scenarios.
fn topology(s: &ScenarioReport) -> String {
    let hairpin_on = s
        .checks
        .iter()
        .any(|c| c.reach.is_some_and(|r| r.hairpin == Some(true)));
    let nested = s.drawing == Drawing::Nested;
    let inside = match s.drawing {
        Drawing::Nested => vec!["vm1 (macvtap0)"],
        Drawing::Ipvlan => vec!["ns1: ipvlan child", "ns2: ipvlan child"],
        Drawing::Macvlan => vec!["ns1: mv1", "ns2: mv2"],
    };
    let mut svg = String::from(
        "<svg class=\"topology\" viewBox=\"0 0 640 150\" width=\"640\" height=\"150\" role=\"img\" xmlns=\"http://www.w3.org/2000/svg\">",
    );
    let boxed = |svg: &mut String, x: u32, y: u32, w: u32, h: u32, label: &str, class: &str| {
        let _ = write!(
            svg,
            "<rect x=\"{x}\" y=\"{y}\" width=\"{w}\" height=\"{h}\" rx=\"6\" class=\"{class}\"/><text x=\"{}\" y=\"{}\">{}</text>",
            x + 8,
            y + 18,
            esc(label)
        );
    };
    boxed(&mut svg, 10, 10, 200, 130, "host1 (eth0)", "host");
    for (i, child) in inside.iter().enumerate() {
        boxed(&mut svg, 25, 40 + 45 * i as u32, 170, 35, child, "child");
    }
    let switch = format!(
        "switch, hairpin {}",
        if hairpin_on { "off → on" } else { "off" }
    );
    boxed(&mut svg, 260, 55, 170, 40, &switch, "switch");
    boxed(&mut svg, 480, 10, 150, 50, "peer", "host");
    if nested {
        boxed(&mut svg, 480, 85, 150, 55, "host2: vm2", "host");
    }
    svg.push_str("<line x1=\"210\" y1=\"75\" x2=\"260\" y2=\"75\"/><line x1=\"430\" y1=\"75\" x2=\"480\" y2=\"35\"/>");
    if nested {
        svg.push_str("<line x1=\"430\" y1=\"75\" x2=\"480\" y2=\"112\"/>");
    }
    svg.push_str("</svg>\n");
    svg
}

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page's fonts: the system's, then CJK fonts by name (the seed's claims are quoted in
/// Chinese; a Debian machine's default fonts have no CJK glyphs and show boxes), then any
/// sans-serif. `cargo xtask test` installs one of them (`fonts-wqy-microhei`). A macro, so
/// that the CSS below is one literal with it.
macro_rules! fonts {
    () => {
        "system-ui,\"Noto Sans CJK SC\",\"Source Han Sans SC\",\"WenQuanYi Micro Hei\",\"PingFang SC\",\"Microsoft YaHei\",sans-serif"
    };
}

/// The font stack of the page's text ([`fonts!`]).
pub const FONTS: &str = fonts!();

const CSS: &str = concat!(
    "body{font:14px/1.4 ",
    fonts!(),
    ";margin:2em;color:#222}\
h2 small{color:#777;font-weight:normal}.meta{color:#555}\
#summary.pass{color:#1a7f37}#summary.fail{color:#cf222e}\
section{border-left:6px solid #1a7f37;padding-left:1em;margin:2em 0}section.fail{border-color:#cf222e}\
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}\
.cell.as-expected{background:#dafbe1}.cell.not-as-expected{background:#ffebe9;font-weight:bold}\
.checks tr.fail td{background:#ffebe9}.checks tr.inconclusive td{background:#fff8c5}pre.error{background:#fff8c5;padding:.5em}\
svg rect.host{fill:#f6f8fa;stroke:#57606a}svg rect.child{fill:#ddf4ff;stroke:#0969da}\
svg rect.switch{fill:#fff8c5;stroke:#9a6700}svg line{stroke:#57606a;stroke-width:2}svg text{font-size:12px}"
);

#[cfg(test)]
mod tests {
    use super::*;

    /// A report of `name` from its own table, every check observed as expected.
    fn as_expected(name: &str) -> ScenarioReport {
        let scenario = crate::registry::find(name).expect("a scenario of the lab");
        let checks = (scenario.checks)()
            .into_iter()
            .map(|e| Check {
                name: e.check.into(),
                expected: e.expected.to_string(),
                observed: e.expected.to_string(),
                pass: true,
                inconclusive: false,
                claim: e.claim.into(),
                reach: e.reach,
            })
            .collect();
        ScenarioReport {
            name: name.into(),
            passed: true,
            checks,
            notes: Default::default(),
            error: None,
            took: std::time::Duration::from_secs(1),
            drawing: scenario.drawing,
        }
    }

    #[test]
    fn the_matrix_comes_from_the_checks_data_not_their_names() {
        let report = as_expected("mode/vepa");
        let before = matrix(&report);
        for want in [
            "<th>child</th>",
            "<th>ARP broadcast</th>",
            "<th>sibling (hairpin on)</th>",
            "<th>host (hairpin off)</th>",
        ] {
            assert!(before.contains(want), "{want} in {before}");
        }
        let mut renamed = report.clone();
        for (n, check) in renamed.checks.iter_mut().enumerate() {
            check.name = format!("检查 {n}");
        }
        assert_eq!(matrix(&renamed), before, "names are labels, not structure");
        let mut unmarked = report;
        unmarked.checks.iter_mut().for_each(|c| c.reach = None);
        assert_eq!(matrix(&unmarked), "", "an arrow in a name makes no cell");
    }

    #[test]
    fn the_drawing_is_the_scenarios_own() {
        let nested = topology(&as_expected("nested/macvtap-bridge"));
        assert!(nested.contains("vm1 (macvtap0)") && nested.contains("host2: vm2"));
        let ipvlan = topology(&as_expected("ipvlan/l2"));
        assert!(ipvlan.contains("ipvlan child") && !ipvlan.contains("host2"));
        assert!(topology(&as_expected("mode/vepa")).contains("hairpin off → on"));
        assert!(topology(&as_expected("mode/bridge")).contains("hairpin off<"));
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("<a & \"b\">"), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
