//! The three policies: Sluice's real [`decide`], and models of KEDA (with
//! the HPA it drives) and of Knative's KPA, each with its defaults.

use std::collections::VecDeque;
use std::time::Duration;

use sluice_api::Scaling;
use sluice_api::autoscale::{History, Observation, decide};

use crate::sim::{Policy, View};

/// Sluice: `decide` on every 1 s tick, and at once when work reaches a
/// function at zero (the operator's core subscription; here at the end of
/// the 100 ms step the first message arrived in).
pub struct Sluice {
    scaling: Scaling,
    history: History,
    tick_ms: u64,
}

impl Sluice {
    pub fn new(scaling: Scaling) -> Self {
        Self {
            scaling,
            history: History::resume(0, Duration::ZERO),
            tick_ms: 1000,
        }
    }
}

impl Policy for Sluice {
    fn name(&self) -> &'static str {
        "Sluice"
    }

    fn observe(&mut self, view: &View) -> Option<u32> {
        let tick = view.now_ms.is_multiple_of(self.tick_ms);
        let first_message = self.history.replicas() == 0 && view.pending > 0;
        if !tick && !first_message {
            return None;
        }
        let observed = Observation {
            pending: view.pending,
            in_flight: view.in_flight,
        };
        let now = Duration::from_millis(view.now_ms);
        Some(decide(&self.scaling, None, observed, &mut self.history, now).replicas)
    }
}

/// KEDA with a queue-lag scaler and the HPA it creates, at their defaults.
///
/// - The KEDA operator polls every 30 s (`pollingInterval`). At zero, a
///   poll that sees depth > 0 (`activationLagThreshold` 0) scales to 1;
///   above zero, a poll that sees nothing for `cooldownPeriod` (300 s)
///   since the last active one scales to 0.
/// - Above zero the HPA (`minReplicas` 1) runs every 15 s: it asks the
///   metrics adapter, which asks the scaler, so the metric is the depth at
///   that instant (no staleness beyond the loop's period; KEDA's optional
///   metrics cache is off by default). Desired = ceil(depth / target)
///   unless within the 10 % tolerance; up at most max(+4 pods, +100 %) per
///   15 s period; down to the highest recommendation of the last 300 s.
/// - The HPA's loop runs at 7.5 s + 15 s·k and the poll at 15 s + 30 s·k:
///   the traces start their load on whole minutes, so a burst waits the
///   mean of a poll period (15 s) for activation, not its worst (30 s).
pub struct Keda {
    target: u32,
    max: u32,
    replicas: u32,
    last_active_ms: u64,
    /// The HPA's recommendations within the stabilization window.
    recommendations: VecDeque<(u64, u32)>,
}

impl Keda {
    const POLL_MS: u64 = 30_000;
    const POLL_PHASE_MS: u64 = 15_000;
    const HPA_MS: u64 = 15_000;
    const HPA_PHASE_MS: u64 = 7_500;
    const COOLDOWN_MS: u64 = 300_000;
    const STABILIZATION_MS: u64 = 300_000;
    const TOLERANCE: f64 = 0.1;

    pub fn new(target: u32, max: u32) -> Self {
        Self {
            target,
            max,
            replicas: 0,
            last_active_ms: 0,
            recommendations: VecDeque::new(),
        }
    }

    fn hpa(&mut self, now_ms: u64, depth: u64) -> u32 {
        let current = self.replicas;
        let ratio = depth as f64 / (f64::from(self.target) * f64::from(current));
        let raw = if (ratio - 1.0).abs() <= Self::TOLERANCE {
            current
        } else {
            sluice_api::autoscale::demand(depth, self.target)
        }
        .clamp(1, self.max);
        while self
            .recommendations
            .front()
            .is_some_and(|(at, _)| now_ms - at >= Self::STABILIZATION_MS)
        {
            self.recommendations.pop_front();
        }
        self.recommendations.push_back((now_ms, raw));
        if raw > current {
            // The loop period equals the policies' period (15 s), so the
            // replicas at the period's start are the current ones.
            let limit = (current + 4).max(current * 2);
            raw.min(limit)
        } else {
            let held = self.recommendations.iter().map(|(_, r)| *r).max();
            held.unwrap_or(raw).min(current)
        }
    }
}

impl Policy for Keda {
    fn name(&self) -> &'static str {
        "KEDA-like"
    }

    fn observe(&mut self, view: &View) -> Option<u32> {
        let now = view.now_ms;
        let before = self.replicas;
        if now % Self::POLL_MS == Self::POLL_PHASE_MS {
            if view.depth() > 0 {
                self.last_active_ms = now;
                if self.replicas == 0 {
                    self.replicas = 1;
                }
            } else if self.replicas > 0 && now - self.last_active_ms >= Self::COOLDOWN_MS {
                self.replicas = 0;
                self.recommendations.clear();
            }
        }
        // The HPA leaves a target at zero alone.
        if now % Self::HPA_MS == Self::HPA_PHASE_MS && self.replicas > 0 {
            self.replicas = self.hpa(now, view.depth());
        }
        (self.replicas != before).then_some(self.replicas)
    }
}

/// Knative's KPA at its defaults, on depth (queued in the activator or the
/// stream, plus running) as its concurrency.
///
/// - Concurrency is sampled every second; the stable (60 s) and panic
///   (6 s) windows average the samples since the first one after a gap of
///   a window without data (Knative's bucketed window average).
/// - Every 2 s: desired = ceil(average / target) for both windows, each
///   clamped to [ready / 2, 1000 × ready] (max scale-down rate 2, max
///   scale-up rate 1000; ready counted as at least 1). Panic starts when the
///   panic window wants ≥ 2× the ready pods and ends a stable window after
///   it last did; in panic the larger of the two applies and never drops.
/// - To zero only once the stable window wants zero and a further 30 s
///   (`scale-to-zero-grace-period`) has passed.
/// - From zero: the activator holds the requests and, with `poke`, its first
///   stat runs the scaler at once (Knative's `MultiScaler::Poke` when the
///   latest scale is 0); without it, on the next 2 s tick.
pub struct Knative {
    target: u32,
    max: u32,
    poke: bool,
    replicas: u32,
    samples: VecDeque<(u64, u64)>,
    first_sample_ms: u64,
    panic_since_ms: Option<u64>,
    max_panic_pods: u32,
    zero_since_ms: Option<u64>,
}

impl Knative {
    const TICK_MS: u64 = 2_000;
    const SAMPLE_MS: u64 = 1_000;
    const STABLE_MS: u64 = 60_000;
    const PANIC_MS: u64 = 6_000;
    const PANIC_THRESHOLD: f64 = 2.0;
    const MAX_SCALE_UP_RATE: f64 = 1000.0;
    const MAX_SCALE_DOWN_RATE: f64 = 2.0;
    const GRACE_MS: u64 = 30_000;

    pub fn new(target: u32, max: u32, poke: bool) -> Self {
        Self {
            target,
            max,
            poke,
            replicas: 0,
            samples: VecDeque::new(),
            first_sample_ms: 0,
            panic_since_ms: None,
            max_panic_pods: 0,
            zero_since_ms: None,
        }
    }

    fn record(&mut self, now_ms: u64, depth: u64) {
        let gap = self
            .samples
            .back()
            .is_none_or(|(at, _)| now_ms - at >= Self::STABLE_MS);
        if gap {
            self.samples.clear();
            // Knative's buckets are whole seconds.
            self.first_sample_ms = now_ms - now_ms % Self::SAMPLE_MS;
        }
        self.samples.push_back((now_ms, depth));
        while self
            .samples
            .front()
            .is_some_and(|(at, _)| now_ms - at >= Self::STABLE_MS)
        {
            self.samples.pop_front();
        }
    }

    fn average(&self, now_ms: u64, window_ms: u64) -> f64 {
        let Some((last, _)) = self.samples.back() else {
            return 0.0;
        };
        if now_ms - last >= window_ms {
            return 0.0;
        }
        let sum: u64 = self
            .samples
            .iter()
            .filter(|(at, _)| now_ms - at < window_ms)
            .map(|(_, d)| d)
            .sum();
        let covered = (now_ms - self.first_sample_ms) / Self::SAMPLE_MS + 1;
        sum as f64 / covered.min(window_ms / Self::SAMPLE_MS) as f64
    }

    fn scale(&mut self, now_ms: u64, ready: u32) -> u32 {
        let ready = f64::from(ready.max(1));
        let max_up = (Self::MAX_SCALE_UP_RATE * ready).ceil();
        let max_down = (ready / Self::MAX_SCALE_DOWN_RATE).floor();
        let target = f64::from(self.target);
        let stable = (self.average(now_ms, Self::STABLE_MS) / target).ceil();
        let panic = (self.average(now_ms, Self::PANIC_MS) / target).ceil();
        let stable_pods = stable.clamp(max_down, max_up) as u32;
        let panic_pods = panic.clamp(max_down, max_up) as u32;
        if panic / ready >= Self::PANIC_THRESHOLD {
            self.panic_since_ms = Some(now_ms);
        } else if self
            .panic_since_ms
            .is_some_and(|at| now_ms - at > Self::STABLE_MS)
        {
            self.panic_since_ms = None;
            self.max_panic_pods = 0;
        }
        let mut desired = stable_pods;
        if self.panic_since_ms.is_some() {
            desired = desired.max(panic_pods);
            if desired > self.max_panic_pods {
                self.max_panic_pods = desired;
            } else {
                desired = self.max_panic_pods;
            }
        }
        if desired == 0 && self.replicas > 0 {
            let since = *self.zero_since_ms.get_or_insert(now_ms);
            if now_ms - since < Self::GRACE_MS {
                desired = 1;
            }
        } else {
            self.zero_since_ms = None;
        }
        desired.min(self.max)
    }
}

impl Policy for Knative {
    fn name(&self) -> &'static str {
        if self.poke {
            "Knative-like"
        } else {
            "Knative-like, no poke"
        }
    }

    fn observe(&mut self, view: &View) -> Option<u32> {
        let now = view.now_ms;
        // The activator reports while the revision is at zero, the pods
        // while there are any: nothing is recorded for an idle zero.
        let reporting = view.replicas > 0 || view.depth() > 0;
        if now.is_multiple_of(Self::SAMPLE_MS) && reporting {
            self.record(now, view.depth());
        }
        let tick = now.is_multiple_of(Self::TICK_MS);
        let poked = self.poke && self.replicas == 0 && view.depth() > 0;
        if !tick && !poked {
            return None;
        }
        if poked && !now.is_multiple_of(Self::SAMPLE_MS) {
            // The activator's first stat, sent at once.
            self.record(now, view.depth());
        }
        let before = self.replicas;
        self.replicas = self.scale(now, view.ready);
        (self.replicas != before).then_some(self.replicas)
    }
}
