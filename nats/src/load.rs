//! Load reports of direct calls. A sync invocation a warm runtime takes
//! as a core request (`sluice.call.<ns>.<fn>`) never passes the function's
//! consumer, whose counts are what the autoscaler reads
//! ([`crate::depth`]). So each runtime reports, every
//! [`LOAD_REPORT_EVERY`] while it has had direct calls, the most it ran at
//! once since its last report, on `sluice.load.<ns>.<fn>` (core NATS, a
//! few bytes: `<reporter> <peak>`), and the autoscaler adds the reports it
//! has from each runtime to the function's in-flight count
//! ([`LoadReports`]). An idle runtime reports nothing.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice_api::autoscale::Observation;
use sluice_api::names::FunctionRef;

/// How often a runtime with direct calls reports them.
pub const LOAD_REPORT_EVERY: Duration = Duration::from_secs(1);

/// How long a report counts: a few periods, so that one report arriving
/// late (or one lost) does not make a busy function look idle.
pub const LOAD_REPORT_COUNTS_FOR: Duration = Duration::from_secs(3);

/// The payload of a report: which runtime (any token without spaces,
/// unique per runtime process) and the most direct calls it ran at once.
pub fn encode(reporter: &str, peak: u64) -> Bytes {
    Bytes::from(format!("{reporter} {peak}"))
}

/// A report's reporter and peak; `None` for a payload that is not one.
pub fn decode(payload: &[u8]) -> Option<(&str, u64)> {
    let text = std::str::from_utf8(payload).ok()?;
    let (reporter, peak) = text.split_once(' ')?;
    Some((reporter, peak.parse().ok()?))
}

/// The latest report of every runtime for every function, as the
/// autoscaler has received them.
#[derive(Debug, Default)]
pub struct LoadReports {
    latest: HashMap<(FunctionRef, String), (u64, Instant)>,
}

impl LoadReports {
    /// Keeps `reporter`'s report of `peak` direct calls of `function`,
    /// received `at`.
    pub fn record(&mut self, function: FunctionRef, reporter: &str, peak: u64, at: Instant) {
        self.latest
            .insert((function, reporter.to_owned()), (peak, at));
    }

    /// Adds to each function's in-flight count the reports that still
    /// count at `now` (received within [`LOAD_REPORT_COUNTS_FOR`]),
    /// summed over runtimes, and forgets the older ones.
    pub fn add_to(&mut self, observed: &mut HashMap<FunctionRef, Observation>, now: Instant) {
        self.latest
            .retain(|_, (_, at)| now.saturating_duration_since(*at) < LOAD_REPORT_COUNTS_FOR);
        for ((function, _), (peak, _)) in &self.latest {
            let seen = observed.entry(function.clone()).or_default();
            seen.in_flight = seen.in_flight.saturating_add(*peak);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str) -> FunctionRef {
        FunctionRef::new("default", name).unwrap()
    }

    #[test]
    fn reports_survive_the_wire_and_garbage_is_not_one() {
        assert_eq!(decode(&encode("node-1", 7)), Some(("node-1", 7)));
        for garbage in [&b""[..], b"node", b"node x", b"node -1", b"\xff 1"] {
            assert_eq!(decode(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn reports_add_per_runtime_the_latest_until_they_are_too_old() {
        let start = Instant::now();
        let mut reports = LoadReports::default();
        reports.record(f("a"), "r1", 5, start);
        // A newer report of the same runtime replaces its older one.
        reports.record(f("a"), "r1", 3, start + Duration::from_millis(500));
        reports.record(f("a"), "r2", 4, start);
        reports.record(f("b"), "r1", 2, start);
        let mut observed = HashMap::new();
        observed.insert(
            f("a"),
            Observation {
                pending: 1,
                in_flight: 1,
            },
        );
        reports.add_to(&mut observed, start + Duration::from_secs(1));
        assert_eq!(
            observed[&f("a")],
            Observation {
                pending: 1,
                in_flight: 1 + 3 + 4
            }
        );
        assert_eq!(observed[&f("b")].in_flight, 2);

        // Past LOAD_REPORT_COUNTS_FOR only r1's newer report of `a` counts.
        let mut later = HashMap::new();
        reports.add_to(
            &mut later,
            start + LOAD_REPORT_COUNTS_FOR + Duration::from_millis(100),
        );
        assert_eq!(later.len(), 1);
        assert_eq!(later[&f("a")].in_flight, 3);
        let mut idle = HashMap::new();
        reports.add_to(&mut idle, start + 2 * LOAD_REPORT_COUNTS_FOR);
        assert!(idle.is_empty());
    }
}
