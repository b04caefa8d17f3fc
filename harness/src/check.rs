//! A topology file's `[[check]]`s, run on its booted lab: each says on which host what is done
//! and what passes ([`Probe`]), and gives what was seen ([`Outcome`]).

use std::time::Duration;

use crate::spec::{Check, Probe};
use crate::{Cmd, Lab};

/// How long a `run` check's command may take.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// Pings a `reachable` check sends, a second apart, before it calls the address unreachable:
/// ARP, neighbour discovery and a router's forwarding take a few seconds on a busy machine.
const TRIES: u32 = 30;

/// What a check saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub passed: bool,
    /// What was expected, in words.
    pub expected: String,
    /// What happened, in words.
    pub observed: String,
}

/// Runs `check` on `lab`; a guest that cannot run it at all is an error, not an outcome.
pub async fn run(check: &Check, lab: &Lab) -> crate::Result<Outcome> {
    let vm = lab.vm(&check.host);
    Ok(match &check.probe {
        Probe::Run {
            command,
            exit,
            output,
            within,
        } => {
            let out = vm
                .run(Cmd::script(command.clone()).timeout(RUN_TIMEOUT))
                .await?;
            let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
            let mut expected = vec![format!("exit {exit}")];
            let mut passed = out.code == Some(*exit) && !out.truncated;
            if let Some(text) = output {
                expected.push(format!("output containing {text:?}"));
                passed &= stdout.contains(text.as_str());
            }
            if let Some((lo, hi)) = within {
                expected.push(format!("a number from {lo} to {hi}"));
                passed &= stdout
                    .parse::<f64>()
                    .is_ok_and(|v| (*lo..=*hi).contains(&v));
            }
            let code = match (out.code, out.signal, out.timed_out) {
                (_, _, true) => format!("timed out after {RUN_TIMEOUT:?}"),
                (Some(c), _, _) => format!("exit {c}"),
                (None, Some(s), _) => format!("killed by signal {s}"),
                (None, None, _) => "no exit status".into(),
            };
            Outcome {
                passed,
                expected: expected.join(", "),
                observed: format!(
                    "{code}, output {:?}",
                    crate::text::printable(&clip(&stdout))
                ),
            }
        }
        Probe::Reachable(address) => {
            let script = format!(
                "for i in $(seq {TRIES}); do ping -c1 -W1 {address} >/dev/null 2>&1 && echo $i && exit 0; sleep 0.2; done; exit 1"
            );
            let out = vm.run(Cmd::script(script).timeout(RUN_TIMEOUT)).await?;
            let tries = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Outcome {
                passed: out.code == Some(0),
                expected: format!("{address} answers a ping"),
                observed: if out.code == Some(0) {
                    format!("answered (ping {tries})")
                } else {
                    format!("no answer to {TRIES} pings")
                },
            }
        }
        Probe::Unreachable(address) => {
            let out = vm
                .run(Cmd::script(format!("ping -c3 -i0.3 -W1 {address}")).timeout(RUN_TIMEOUT))
                .await?;
            Outcome {
                passed: out.code != Some(0),
                expected: format!("{address} answers no ping"),
                observed: if out.code == Some(0) {
                    "answered".into()
                } else {
                    "no answer to 3 pings".into()
                },
            }
        }
    })
}

/// At most 200 characters of a check's output, for a table's cell.
fn clip(text: &str) -> String {
    match text.char_indices().nth(200) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}
