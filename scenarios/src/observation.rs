//! What an experiment saw for one check, as a value of its kind: whether a probe was answered,
//! a count, a ratio to a baseline, a MAC, or text. The predicates of
//! [`crate::expectations::Expect`] judge these; the report shows them as text.

use std::fmt;

use lab_harness::MacAddr;

#[derive(Debug, Clone, PartialEq)]
pub enum Observation {
    /// Whether a probe (ping, an ARP request) got an answer: "reachable" or "unreachable".
    Reach(bool),
    /// How many of something.
    Count(u64),
    /// A ratio to a baseline, with the figures it comes from: "1.36x the bridge's (…)".
    Ratio { ratio: f64, of: String },
    /// A ratio to a baseline measured in several paired rounds (both measured together, so
    /// that whatever else the host does slows them alike), one ratio per round: its median
    /// is the figure, its spread says how far a verdict may be trusted
    /// ([`crate::expectations::Expect::inconclusive`]).
    Paired { ratios: Vec<f64>, of: String },
    /// A MAC address, as the kernel prints it.
    Mac(MacAddr),
    /// Anything else: a mode, a listing, a refusal's reason.
    Text(String),
}

pub const REACHABLE: &str = "reachable";
pub const UNREACHABLE: &str = "unreachable";

impl Observation {
    /// The number a ratio or count holds, for [`crate::expectations::Expect::AtLeast`] and the like.
    pub fn number(&self) -> Option<f64> {
        match self {
            Observation::Ratio { ratio, .. } => Some(*ratio),
            Observation::Paired { ratios, .. } => median(ratios),
            // Counts here are far below 2^53: the conversion is exact.
            Observation::Count(n) => Some(*n as f64),
            _ => None,
        }
    }
}

impl fmt::Display for Observation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Observation::Reach(true) => f.write_str(REACHABLE),
            Observation::Reach(false) => f.write_str(UNREACHABLE),
            Observation::Count(n) => write!(f, "{n}"),
            Observation::Ratio { ratio, of } => write!(f, "{ratio:.2}x {of}"),
            Observation::Paired { ratios, of } => {
                let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
                write!(
                    f,
                    "{:.2}x {of}, median of {} paired rounds ({})",
                    median(ratios).unwrap_or(f64::NAN),
                    ratios.len(),
                    rounds.join(", ")
                )
            }
            Observation::Mac(mac) => write!(f, "{mac}"),
            Observation::Text(text) => f.write_str(text),
        }
    }
}

impl From<String> for Observation {
    fn from(text: String) -> Self {
        Observation::Text(text)
    }
}

impl From<&str> for Observation {
    fn from(text: &str) -> Self {
        Observation::Text(text.to_string())
    }
}

/// The middle value (the mean of the middle two for an even count); `None` for none.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        n if n % 2 == 1 => Some(sorted[n / 2]),
        n => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

impl From<MacAddr> for Observation {
    fn from(mac: MacAddr) -> Self {
        Observation::Mac(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_read_as_the_report_shows_them() {
        assert_eq!(Observation::Reach(true).to_string(), "reachable");
        assert_eq!(Observation::Reach(false).to_string(), "unreachable");
        assert_eq!(Observation::Count(12).to_string(), "12");
        let ratio = Observation::Ratio {
            ratio: 1.364,
            of: "the bridge's (1.5 against 1.1 Mbit/s)".into(),
        };
        assert_eq!(
            ratio.to_string(),
            "1.36x the bridge's (1.5 against 1.1 Mbit/s)"
        );
        assert_eq!(ratio.number(), Some(1.364));
        let paired = Observation::Paired {
            ratios: vec![1.5, 1.2, 1.4],
            of: "the bridge's".into(),
        };
        assert_eq!(
            paired.to_string(),
            "1.40x the bridge's, median of 3 paired rounds (1.50, 1.20, 1.40)"
        );
        assert_eq!(median(&[1.0, 3.0]), Some(2.0));
        assert_eq!(median(&[]), None);
        let mac: MacAddr = "52:54:00:AB:00:01".parse().expect("a MAC");
        assert_eq!(Observation::from(mac).to_string(), "52:54:00:ab:00:01");
        assert_eq!(Observation::from("vepa").number(), None);
    }
}
