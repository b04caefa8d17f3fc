//! In what order the lab's scenarios start and how many run at once: [`order`] decides (pure,
//! tested), [`run`] carries it out.
//!
//! A measurement (`Scenario::alone`) runs first, with every slot, while nothing else runs; the
//! rest start longest first by their latest times on this kernel, so that the long nested
//! scenarios do not start last and leave the other slots idle while they finish. A scenario
//! with no recorded time counts as the longest.

use std::collections::BTreeMap;
use std::sync::Arc;

use lab_harness::Assets;
use lab_scenarios::ScenarioReport;

/// One scenario's place in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start<'a> {
    /// Where its report goes: the scenarios' order as given.
    pub index: usize,
    pub name: &'a str,
    /// How many of the run's slots it takes: all of them for a measurement.
    pub slots: usize,
}

/// The order to start `names` in, with `jobs` slots; `last` holds each one's latest time in
/// seconds, `alone` says which must run with nothing beside it.
pub fn order<'a>(
    names: &[&'a str],
    jobs: usize,
    last: &BTreeMap<String, f64>,
    alone: impl Fn(&str) -> bool,
) -> Vec<Start<'a>> {
    let took = |n: &str| last.get(n).copied().unwrap_or(f64::INFINITY);
    let mut starts: Vec<Start<'a>> = names
        .iter()
        .enumerate()
        .map(|(index, name)| Start {
            index,
            name,
            slots: if alone(name) { jobs.max(1) } else { 1 },
        })
        .collect();
    starts.sort_by(|a, b| {
        (alone(b.name).cmp(&alone(a.name))).then(took(b.name).total_cmp(&took(a.name)))
    });
    starts
}

/// Runs the scenarios in the order given, `jobs` slots at a time, each on `assets_of` its
/// name; returns their reports in `index` order. Says on stderr as each one ends.
pub async fn run(
    starts: Vec<Start<'_>>,
    jobs: usize,
    assets_of: impl Fn(&str) -> Assets,
) -> Vec<ScenarioReport> {
    let permits = Arc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for start in starts {
        // Taken here, in order, not in the task: tasks start in no particular order.
        let permit = permits
            .clone()
            .acquire_many_owned(u32::try_from(start.slots).unwrap_or(u32::MAX))
            .await;
        if start.slots > 1 {
            crate::ui::status!(
                "lab: {} runs with no other scenario beside it (a measurement)",
                start.name
            );
        }
        let assets = assets_of(start.name);
        let (index, name) = (start.index, start.name.to_string());
        set.spawn(async move {
            let _permit = permit;
            let report = lab_scenarios::run(&name, &assets).await;
            let verdict = if report.passed {
                "as expected"
            } else {
                "NOT as expected"
            };
            crate::ui::status!(
                "lab: {name} behaved {verdict} ({:.1} s)",
                report.took.as_secs_f64()
            );
            (index, report)
        });
    }
    let mut done = set.join_all().await;
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(starts: &[Start<'_>]) -> Vec<String> {
        starts
            .iter()
            .map(|s| format!("{}:{}", s.name, s.slots))
            .collect()
    }

    #[test]
    fn a_measurement_first_with_every_slot_then_longest_first_and_unknown_as_longest() {
        let last: BTreeMap<String, f64> = [("short", 5.0), ("long", 60.0), ("measure", 20.0)]
            .map(|(n, t)| (n.to_string(), t))
            .into();
        let starts = order(&["short", "new", "long", "measure"], 4, &last, |n| {
            n == "measure"
        });
        assert_eq!(names(&starts), ["measure:4", "new:1", "long:1", "short:1"]);
        let indices: Vec<usize> = starts.iter().map(|s| s.index).collect();
        assert_eq!(indices, [3, 1, 2, 0], "each keeps its place for the report");
    }

    #[test]
    fn with_no_times_the_given_order_stands() {
        let starts = order(&["a", "b", "c"], 2, &BTreeMap::new(), |_| false);
        assert_eq!(names(&starts), ["a:1", "b:1", "c:1"]);
    }
}
