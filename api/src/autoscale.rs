//! The autoscaling rule: how many runtime replicas a function wants, from
//! its queue depth. A pure decision, like [`crate::Outcome::settle`]: the
//! operator's loop observes, calls [`decide`], and writes what it returns;
//! the tests below and the policy simulation drive it with made-up time.
//!
//! The rule (Sluice's design, with Knative's scale-to-zero grace and the
//! HPA's scale-down stabilization as its models):
//! - demand is `ceil(depth / targetQueueDepth)` replicas, where depth is
//!   the invocations queued plus those delivered and not yet acknowledged;
//! - up at once: the new demand applies on the decision that sees it;
//! - down only after `scaleDownDelay` of lower demand: the decision holds
//!   the highest demand seen within that window (the HPA's stabilization
//!   window, here the scale-down delay);
//! - to zero only after `scaleToZeroAfter` with nothing queued or running:
//!   until then an idle function keeps one replica warm;
//! - from zero as soon as one invocation waits;
//! - clamped to `minReplicas..=maxReplicas`;
//! - a pin (`spec.replicas`) overrides all of it.

use std::collections::VecDeque;
use std::time::Duration;

use crate::Scaling;

/// What the autoscaler saw of one function's consumer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Observation {
    /// Invocations waiting to be delivered (JetStream `num_pending`).
    pub pending: u64,
    /// Invocations delivered and not yet acknowledged: running, or about to
    /// be redelivered (JetStream `num_ack_pending`).
    pub in_flight: u64,
}

impl Observation {
    /// Queued plus in flight: what the replicas must carry.
    pub fn depth(&self) -> u64 {
        self.pending.saturating_add(self.in_flight)
    }
}

/// Why a decision came out as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// `spec.replicas` is set: autoscaling is off.
    Pinned,
    /// The demand of the queue now, `ceil(depth / targetQueueDepth)`.
    Demand,
    /// Demand fell less than `scaleDownDelay` ago: the window's peak holds.
    ScaleDownDelay,
    /// Nothing queued or running for less than `scaleToZeroAfter`: one
    /// replica stays warm.
    Idle,
    /// Nothing queued or running for `scaleToZeroAfter`.
    IdleTimeout,
    /// Raised to `minReplicas`.
    MinReplicas,
    /// Capped at `maxReplicas`.
    MaxReplicas,
}

impl Reason {
    /// The reason as an identifier for status and Events, e.g. `MaxReplicas`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Pinned => "Pinned",
            Reason::Demand => "Demand",
            Reason::ScaleDownDelay => "ScaleDownDelay",
            Reason::Idle => "Idle",
            Reason::IdleTimeout => "IdleTimeout",
            Reason::MinReplicas => "MinReplicas",
            Reason::MaxReplicas => "MaxReplicas",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way a decision moves the replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Up,
    Down,
}

impl Direction {
    /// `up` or `down`, as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
        }
    }
}

/// The replicas a function wants, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub replicas: u32,
    pub reason: Reason,
    /// The demand of the queue alone, before delays and bounds.
    pub demand: u32,
    /// Replicas wanted before this decision.
    pub previous: u32,
}

impl Decision {
    /// `None` when the replicas stay as they were.
    pub fn direction(&self) -> Option<Direction> {
        match self.replicas.cmp(&self.previous) {
            std::cmp::Ordering::Greater => Some(Direction::Up),
            std::cmp::Ordering::Less => Some(Direction::Down),
            std::cmp::Ordering::Equal => None,
        }
    }

    /// The Kubernetes Event reason of a change: `ScaledFromZero`,
    /// `ScaledUp`, `ScaledDown` or `ScaledToZero`; `None` for no change.
    pub fn event_reason(&self) -> Option<&'static str> {
        Some(match self.direction()? {
            Direction::Up if self.previous == 0 => "ScaledFromZero",
            Direction::Up => "ScaledUp",
            Direction::Down if self.replicas == 0 => "ScaledToZero",
            Direction::Down => "ScaledDown",
        })
    }

    /// One line for a person: the change, its reason and the numbers behind
    /// it, e.g. `0 → 5 replicas (MaxReplicas): 512 queued or running, 10
    /// per replica wants 52, capped at maxReplicas 5`.
    pub fn explain(&self, scaling: &Scaling, observed: Observation) -> String {
        let why = match self.reason {
            Reason::Pinned => "spec.replicas pins it; autoscaling is off".to_owned(),
            Reason::Demand => format!(
                "{} per replica wants {}",
                scaling.target_queue_depth, self.demand
            ),
            Reason::ScaleDownDelay => format!(
                "{} per replica wants {}, lower than within the last scaleDownDelay ({})",
                scaling.target_queue_depth, self.demand, scaling.scale_down_delay
            ),
            Reason::Idle => format!(
                "idle for less than scaleToZeroAfter ({}): one replica stays warm",
                scaling.scale_to_zero_after
            ),
            Reason::IdleTimeout => format!(
                "nothing queued or running for scaleToZeroAfter ({})",
                scaling.scale_to_zero_after
            ),
            Reason::MinReplicas => format!(
                "{} per replica wants {}, raised to minReplicas {}",
                scaling.target_queue_depth, self.demand, scaling.min_replicas
            ),
            Reason::MaxReplicas => format!(
                "{} per replica wants {}, capped at maxReplicas {}",
                scaling.target_queue_depth, self.demand, scaling.max_replicas
            ),
        };
        format!(
            "{} → {} replicas ({}): {} queued or running, {why}",
            self.previous,
            self.replicas,
            self.reason,
            observed.depth()
        )
    }
}

/// What the autoscaler remembers of one function between decisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    /// Demands within the last `scaleDownDelay`, as `(time, replicas)`
    /// with strictly falling replicas: the front is the window's peak.
    /// Bounded by the number of decisions within the delay.
    recent: VecDeque<(Duration, u32)>,
    /// When invocations were last seen queued or running.
    last_busy: Duration,
    /// The replicas of the last decision.
    replicas: u32,
}

impl History {
    /// The history of a function found running `replicas` at `now` (a
    /// function seen for the first time, or every function after the
    /// operator restarts): they count as wanted and busy just now, so
    /// neither a scale-down nor a scale to zero happens before its delay.
    pub fn resume(replicas: u32, now: Duration) -> Self {
        Self {
            recent: VecDeque::from([(now, replicas)]),
            last_busy: now,
            replicas,
        }
    }

    /// The replicas of the last decision.
    pub fn replicas(&self) -> u32 {
        self.replicas
    }
}

/// Replicas the queue alone asks for: `ceil(depth / target)`, saturating.
pub fn demand(depth: u64, target_queue_depth: u32) -> u32 {
    let target = u64::from(target_queue_depth.max(1));
    u32::try_from(depth.div_ceil(target)).unwrap_or(u32::MAX)
}

/// Decides the replicas of one function at `now` (any monotonic clock,
/// the same for every call on one history) from what was `observed`, and
/// records the decision in `history`.
///
/// `pin` is `spec.replicas`. Decisions may come at any pace: every tick,
/// and at once when a first invocation reaches a function at zero.
pub fn decide(
    scaling: &Scaling,
    pin: Option<u32>,
    observed: Observation,
    history: &mut History,
    now: Duration,
) -> Decision {
    let previous = history.replicas;
    let depth = observed.depth();
    let demand = demand(depth, scaling.target_queue_depth);
    if depth > 0 {
        history.last_busy = now;
    }
    if let Some(pin) = pin {
        // A pin's replicas count as the recent peak: unpinned, the function
        // comes down from them only after the delay.
        *history = History {
            last_busy: history.last_busy,
            ..History::resume(pin, now)
        };
        return Decision {
            replicas: pin,
            reason: Reason::Pinned,
            demand,
            previous,
        };
    }
    let delay = scaling.scale_down_delay.0;
    while history
        .recent
        .front()
        .is_some_and(|(at, _)| now.saturating_sub(*at) >= delay)
    {
        history.recent.pop_front();
    }
    while history.recent.back().is_some_and(|(_, r)| *r <= demand) {
        history.recent.pop_back();
    }
    history.recent.push_back((now, demand));
    let peak = history.recent.front().map_or(demand, |(_, r)| *r);
    let (wanted, reason) = if peak > demand {
        (peak, Reason::ScaleDownDelay)
    } else if demand > 0 {
        (demand, Reason::Demand)
    } else if previous > 0 && now.saturating_sub(history.last_busy) < scaling.scale_to_zero_after.0
    {
        (1, Reason::Idle)
    } else if previous > 0 {
        (0, Reason::IdleTimeout)
    } else {
        (0, Reason::Demand)
    };
    let (replicas, reason) = if wanted < scaling.min_replicas {
        (scaling.min_replicas, Reason::MinReplicas)
    } else if wanted > scaling.max_replicas {
        (scaling.max_replicas, Reason::MaxReplicas)
    } else {
        (wanted, reason)
    };
    history.replicas = replicas;
    Decision {
        replicas,
        reason,
        demand,
        previous,
    }
}

/// Replicas of a runtime pool that serves several functions: the sum of
/// what each wants (each decided by [`decide`] with its own spec and
/// history, so delays and pins apply per function), clamped to the pool's
/// `min..=max`.
pub fn pool_replicas(wanted: impl IntoIterator<Item = u32>, min: u32, max: u32) -> u32 {
    let sum = wanted.into_iter().fold(0u32, u32::saturating_add);
    sum.clamp(min, max.max(min))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// target 10 per replica, 0..=5 replicas, down after 30 s, zero after 60 s.
    fn scaling() -> Scaling {
        Scaling {
            min_replicas: 0,
            max_replicas: 5,
            target_queue_depth: 10,
            scale_down_delay: crate::Duration(secs(30)),
            scale_to_zero_after: crate::Duration(secs(60)),
            ..Scaling::default()
        }
    }

    fn depth(pending: u64) -> Observation {
        Observation {
            pending,
            in_flight: 0,
        }
    }

    /// One case: a spec, a starting history, and observations at times
    /// (seconds) each with the replicas and reason it must decide.
    struct Case {
        name: &'static str,
        scaling: Scaling,
        pin: Option<u32>,
        start: u32,
        steps: Vec<(u64, Observation, u32, Reason)>,
    }

    fn run(case: &Case) {
        let mut history = History::resume(case.start, Duration::ZERO);
        for (i, (at, observed, replicas, reason)) in case.steps.iter().enumerate() {
            let decision = decide(&case.scaling, case.pin, *observed, &mut history, secs(*at));
            assert_eq!(
                (decision.replicas, decision.reason),
                (*replicas, *reason),
                "{}: step {i} (t={at}s, depth {})",
                case.name,
                observed.depth()
            );
            assert_eq!(history.replicas(), decision.replicas);
        }
    }

    #[test]
    fn decisions() {
        use Reason::*;
        let with = |f: fn(&mut Scaling)| {
            let mut s = scaling();
            f(&mut s);
            s
        };
        let cases = [
            Case {
                name: "surge: up at once, capped at maxReplicas",
                scaling: scaling(),
                pin: None,
                start: 1,
                steps: vec![
                    (1, depth(25), 3, Demand),
                    (2, depth(500), 5, MaxReplicas),
                    (3, depth(49), 5, MaxReplicas),
                ],
            },
            Case {
                name: "drain: down only after scaleDownDelay of lower demand",
                scaling: scaling(),
                pin: None,
                start: 0,
                steps: vec![
                    (0, depth(40), 4, Demand),
                    (10, depth(10), 4, ScaleDownDelay),
                    (29, depth(10), 4, ScaleDownDelay),
                    (30, depth(10), 1, Demand),
                    (31, depth(0), 1, ScaleDownDelay),
                ],
            },
            Case {
                name: "in flight counts as depth",
                scaling: scaling(),
                pin: None,
                start: 0,
                steps: vec![(
                    0,
                    Observation {
                        pending: 5,
                        in_flight: 16,
                    },
                    3,
                    Demand,
                )],
            },
            Case {
                name: "flapping load holds the peak instead of following it",
                scaling: scaling(),
                pin: None,
                start: 0,
                steps: vec![
                    (0, depth(30), 3, Demand),
                    (5, depth(5), 3, ScaleDownDelay),
                    (10, depth(30), 3, Demand),
                    (15, depth(5), 3, ScaleDownDelay),
                    (20, depth(30), 3, Demand),
                    (49, depth(5), 3, ScaleDownDelay),
                    // 30 s after the last peak.
                    (50, depth(5), 1, Demand),
                ],
            },
            Case {
                name: "a later, lower peak is what the window falls back to",
                scaling: scaling(),
                pin: None,
                start: 0,
                steps: vec![
                    (0, depth(50), 5, Demand),
                    (20, depth(30), 5, ScaleDownDelay),
                    (30, depth(0), 3, ScaleDownDelay),
                    (50, depth(0), 1, Idle),
                ],
            },
            Case {
                name: "zero after scaleToZeroAfter idle, counted from the last work",
                scaling: scaling(),
                pin: None,
                start: 1,
                steps: vec![
                    (10, depth(3), 1, Demand),
                    (40, depth(0), 1, Idle),
                    (69, depth(0), 1, Idle),
                    (70, depth(0), 0, IdleTimeout),
                    (71, depth(0), 0, Demand),
                ],
            },
            Case {
                name: "from zero on the first message",
                scaling: scaling(),
                pin: None,
                start: 0,
                steps: vec![
                    (0, depth(0), 0, Demand),
                    (1, depth(1), 1, Demand),
                    (2, depth(200), 5, MaxReplicas),
                ],
            },
            Case {
                name: "a resumed history neither scales down nor to zero at once",
                scaling: scaling(),
                pin: None,
                start: 4,
                steps: vec![
                    (1, depth(0), 4, ScaleDownDelay),
                    (30, depth(0), 1, Idle),
                    (60, depth(0), 0, IdleTimeout),
                ],
            },
            Case {
                name: "minReplicas holds a floor, and the function never idles to zero",
                scaling: with(|s| s.min_replicas = 2),
                pin: None,
                start: 0,
                steps: vec![
                    (0, depth(0), 2, MinReplicas),
                    (1, depth(35), 4, Demand),
                    (100, depth(0), 2, MinReplicas),
                    (1000, depth(0), 2, MinReplicas),
                ],
            },
            Case {
                name: "maxReplicas caps a resumed history above it",
                scaling: scaling(),
                pin: None,
                start: 9,
                steps: vec![(0, depth(0), 5, MaxReplicas)],
            },
            Case {
                name: "a pin holds under any load",
                scaling: scaling(),
                pin: Some(2),
                start: 0,
                steps: vec![(0, depth(500), 2, Pinned), (100, depth(0), 2, Pinned)],
            },
            Case {
                name: "a pin of zero holds work queued",
                scaling: scaling(),
                pin: Some(0),
                start: 3,
                steps: vec![(0, depth(500), 0, Pinned)],
            },
            Case {
                name: "zero delays: down and to zero at once",
                scaling: with(|s| {
                    s.scale_down_delay = crate::Duration(Duration::ZERO);
                    s.scale_to_zero_after = crate::Duration(Duration::ZERO);
                }),
                pin: None,
                start: 0,
                steps: vec![
                    (0, depth(45), 5, Demand),
                    (1, depth(12), 2, Demand),
                    (2, depth(0), 0, IdleTimeout),
                ],
            },
        ];
        for case in &cases {
            run(case);
        }
    }

    #[test]
    fn unpinned_comes_down_from_the_pin_only_after_the_delay() {
        let scaling = scaling();
        let mut history = History::resume(0, Duration::ZERO);
        decide(&scaling, Some(5), depth(0), &mut history, secs(0));
        let held = decide(&scaling, None, depth(0), &mut history, secs(10));
        assert_eq!((held.replicas, held.reason), (5, Reason::ScaleDownDelay));
        let down = decide(&scaling, None, depth(0), &mut history, secs(30));
        assert_eq!((down.replicas, down.reason), (1, Reason::Idle));
    }

    #[test]
    fn pools_sum_their_functions_within_bounds() {
        let cases: [(&[u32], u32, u32, u32); 6] = [
            (&[3, 2], 0, 10, 5),
            (&[], 0, 10, 0),
            (&[0, 0], 1, 10, 1),
            (&[8, 8], 0, 10, 10),
            (&[u32::MAX, 1], 0, 20, 20),
            // A max below the min is read as the min.
            (&[4], 3, 2, 3),
        ];
        for (wanted, min, max, replicas) in cases {
            assert_eq!(
                pool_replicas(wanted.iter().copied(), min, max),
                replicas,
                "{wanted:?} in {min}..={max}"
            );
        }
    }

    #[test]
    fn demand_rounds_up_and_saturates() {
        assert_eq!(demand(0, 10), 0);
        assert_eq!(demand(1, 10), 1);
        assert_eq!(demand(10, 10), 1);
        assert_eq!(demand(11, 10), 2);
        assert_eq!(demand(u64::MAX, 1), u32::MAX);
        // A zero target (refused by validation) is read as one.
        assert_eq!(demand(3, 0), 3);
    }

    #[test]
    fn history_stays_bounded_under_falling_demand_only_within_the_delay() {
        let scaling = scaling();
        let mut history = History::resume(0, Duration::ZERO);
        // A strictly falling demand each second keeps every sample; the
        // window still drops those older than the delay.
        for t in 0..200u64 {
            let pending = (200 - t) * 10;
            decide(&scaling, None, depth(pending), &mut history, secs(t));
        }
        assert!(history.recent.len() <= 30, "{}", history.recent.len());
    }

    #[test]
    fn events_and_directions() {
        let d = |previous, replicas| Decision {
            replicas,
            previous,
            reason: Reason::Demand,
            demand: replicas,
        };
        assert_eq!(d(0, 3).event_reason(), Some("ScaledFromZero"));
        assert_eq!(d(1, 3).event_reason(), Some("ScaledUp"));
        assert_eq!(d(3, 1).event_reason(), Some("ScaledDown"));
        assert_eq!(d(1, 0).event_reason(), Some("ScaledToZero"));
        assert_eq!(d(2, 2).event_reason(), None);
        assert_eq!(d(0, 3).direction(), Some(Direction::Up));
        let explained = Decision {
            replicas: 5,
            previous: 0,
            reason: Reason::MaxReplicas,
            demand: 52,
        }
        .explain(&scaling(), depth(512));
        assert_eq!(
            explained,
            "0 → 5 replicas (MaxReplicas): 512 queued or running, 10 per replica wants 52, capped at maxReplicas 5"
        );
    }
}
