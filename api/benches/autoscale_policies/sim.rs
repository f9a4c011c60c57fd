//! The queue model: invocations arrive (a Poisson process at a trace's
//! rate), wait in one FIFO queue (the stream), and run on the slots of
//! ready replicas; a policy decides how many replicas exist.
//!
//! Time advances in steps of [`Model::step_ms`]; within a step, arrival,
//! start and end times are exact (continuous), so a wait is not rounded to
//! the step. Policies see the system and act only at step boundaries.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// The numbers shared by every policy and trace.
#[derive(Clone, Copy, Debug)]
pub struct Model {
    /// Simulation step: when policies look and pods appear or go.
    pub step_ms: u64,
    /// Invocations one replica runs at once (the Function's `concurrency`).
    pub concurrency: usize,
    /// Mean of the exponential service time, seconds.
    pub mean_service: f64,
    /// From a replica's creation to its first invocation, seconds.
    pub start_delay: f64,
    /// Depth one replica is sized for: Sluice's `targetQueueDepth`, KEDA's
    /// `lagThreshold`, Knative's target concurrency.
    pub target: u32,
    /// Most replicas, for every policy; the fewest is 0 for all.
    pub max_replicas: u32,
}

/// One invocation's work, the same for every policy.
#[derive(Clone, Copy, Debug)]
pub struct Invocation {
    /// Seconds from the start of the trace.
    pub arrival: f64,
    /// Seconds it runs once started.
    pub service: f64,
}

/// A small deterministic PRNG (SplitMix64): enough for arrival and
/// service times, and no dependency whose stream could change under us.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Exponential with the given mean.
    pub fn exponential(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.uniform()).ln()
    }
}

/// A load shape: its rate at each instant and how long it lasts.
pub struct Trace {
    pub name: &'static str,
    /// Seconds of traffic; the simulation runs on until every policy has
    /// drained and settled (see [`run`]).
    pub duration: f64,
    /// The highest rate `rate` returns, for thinning.
    pub peak: f64,
    /// Invocations per second at time `t`.
    pub rate: Box<dyn Fn(f64) -> f64>,
}

impl Trace {
    /// A non-homogeneous Poisson process by thinning (Lewis–Shedler):
    /// candidates at the peak rate, each kept with probability
    /// `rate(t) / peak`.
    pub fn arrivals(&self, rng: &mut Rng, mean_service: f64) -> Vec<Invocation> {
        let mut out = Vec::new();
        let mut t = 0.0;
        loop {
            t += rng.exponential(1.0 / self.peak);
            if t >= self.duration {
                return out;
            }
            let keep = rng.uniform() * self.peak < (self.rate)(t);
            // Drawn for every candidate so that the service times do not
            // depend on which candidates the rate keeps.
            let service = rng.exponential(mean_service);
            if keep {
                out.push(Invocation {
                    arrival: t,
                    service,
                });
            }
        }
    }
}

/// What a policy sees at a step boundary.
#[derive(Clone, Copy, Debug)]
pub struct View {
    /// Milliseconds since the start: policies tick on multiples of it.
    pub now_ms: u64,
    /// Arrived and not started (JetStream `num_pending`).
    pub pending: u64,
    /// Running (JetStream `num_ack_pending`).
    pub in_flight: u64,
    /// Replicas requested and not being removed, starting ones included.
    pub replicas: u32,
    /// Of those, replicas that have started.
    pub ready: u32,
}

impl View {
    pub fn depth(&self) -> u64 {
        self.pending + self.in_flight
    }
}

/// A scaling policy: looks at every step, changes the replicas when it
/// acts. Each policy keeps its own clock of ticks and polls.
pub trait Policy {
    fn name(&self) -> &'static str;
    /// The replicas wanted from now on, or `None` to leave them.
    fn observe(&mut self, view: &View) -> Option<u32>;
}

struct Pod {
    ready_at: f64,
    /// When each slot finishes its current invocation.
    busy_until: Vec<f64>,
    /// Removed by the policy: takes no new work, and goes when idle.
    draining: bool,
}

impl Pod {
    fn busy(&self, t: f64) -> usize {
        self.busy_until.iter().filter(|&&b| b > t).count()
    }
}

/// One point of the plotted time series, every second.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    pub t: f64,
    /// Replicas requested (starting and ready).
    pub replicas: u32,
    /// Invocations waiting.
    pub pending: u64,
}

/// The outcome of one policy on one trace.
pub struct Outcome {
    /// Queue wait of every invocation, seconds, sorted.
    pub waits: Vec<f64>,
    /// The integral of pods existing: starting, ready and draining.
    pub replica_seconds: f64,
    pub samples: Vec<Sample>,
}

impl Outcome {
    /// The `q` quantile (nearest rank) of the waits.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.waits.is_empty() {
            return 0.0;
        }
        let rank = (q * self.waits.len() as f64).ceil() as usize;
        self.waits[rank.clamp(1, self.waits.len()) - 1]
    }

    pub fn mean_wait(&self) -> f64 {
        self.waits.iter().sum::<f64>() / self.waits.len().max(1) as f64
    }

    pub fn max_wait(&self) -> f64 {
        self.waits.last().copied().unwrap_or(0.0)
    }
}

/// Non-negative floats order like their bits: a heap key without a
/// float-ordering wrapper.
fn key(t: f64) -> u64 {
    debug_assert!(t >= 0.0);
    t.to_bits()
}

/// Runs `policy` on `work` (sorted by arrival) until the trace is over,
/// every invocation has run, and the policy is back at zero replicas — or
/// `settle` seconds after the trace, so that a slow scale-to-zero is paid
/// for in replica-seconds rather than cut off.
pub fn run(
    model: &Model,
    duration: f64,
    settle: f64,
    work: &[Invocation],
    policy: &mut dyn Policy,
) -> Outcome {
    let dt = model.step_ms as f64 / 1000.0;
    let mut pods: Vec<Pod> = Vec::new();
    let mut queue: VecDeque<Invocation> = VecDeque::new();
    let mut next = 0;
    let mut waits = Vec::with_capacity(work.len());
    let mut replica_seconds = 0.0;
    let mut samples = Vec::new();
    let mut step: u64 = 0;
    loop {
        let t1 = (step + 1) as f64 * dt;
        while next < work.len() && work[next].arrival < t1 {
            queue.push_back(work[next]);
            next += 1;
        }
        // FIFO onto the slot that frees first: exact multi-server queueing
        // within the step, with the pods fixed for its length.
        if !queue.is_empty() {
            let mut slots: BinaryHeap<Reverse<(u64, usize, usize)>> = pods
                .iter()
                .enumerate()
                .filter(|(_, p)| !p.draining)
                .flat_map(|(i, p)| {
                    p.busy_until
                        .iter()
                        .enumerate()
                        .map(move |(s, &b)| Reverse((key(b.max(p.ready_at)), i, s)))
                })
                .collect();
            while let (Some(head), Some(&Reverse((free, i, s)))) = (queue.front(), slots.peek()) {
                let start = f64::from_bits(free).max(head.arrival);
                if start >= t1 {
                    break;
                }
                let inv = queue.pop_front().expect("peeked");
                slots.pop();
                waits.push(start - inv.arrival);
                let end = start + inv.service;
                pods[i].busy_until[s] = end;
                slots.push(Reverse((key(end), i, s)));
            }
        }
        replica_seconds += pods.len() as f64 * dt;
        pods.retain(|p| !(p.draining && p.busy(t1) == 0));

        let live: Vec<usize> = (0..pods.len()).filter(|&i| !pods[i].draining).collect();
        let view = View {
            now_ms: (step + 1) * model.step_ms,
            pending: queue.len() as u64,
            in_flight: pods.iter().map(|p| p.busy(t1) as u64).sum(),
            replicas: live.len() as u32,
            ready: live.iter().filter(|&&i| pods[i].ready_at <= t1).count() as u32,
        };
        if let Some(wanted) = policy.observe(&view) {
            let wanted = wanted.min(model.max_replicas) as usize;
            if wanted > live.len() {
                for _ in live.len()..wanted {
                    pods.push(Pod {
                        ready_at: t1 + model.start_delay,
                        busy_until: vec![0.0; model.concurrency],
                        draining: false,
                    });
                }
            } else if wanted < live.len() {
                // A ReplicaSet deletes pods not yet ready first, then the
                // ready ones; among those we take the least busy, which
                // drain their invocations before going.
                let mut order = live.clone();
                order.sort_by_key(|&i| (pods[i].ready_at <= t1, pods[i].busy(t1)));
                for &i in order.iter().take(live.len() - wanted) {
                    pods[i].draining = true;
                }
                pods.retain(|p| !(p.draining && (p.ready_at > t1 || p.busy(t1) == 0)));
            }
        }
        if (step + 1).is_multiple_of(1000 / model.step_ms) {
            samples.push(Sample {
                t: t1,
                replicas: pods.iter().filter(|p| !p.draining).count() as u32,
                pending: queue.len() as u64,
            });
        }
        step += 1;
        let done = next == work.len() && queue.is_empty();
        if t1 >= duration && done && (pods.is_empty() || t1 >= duration + settle) {
            break;
        }
        assert!(
            t1 < duration + 4.0 * settle,
            "{}: invocations still queued long after the trace",
            policy.name()
        );
    }
    waits.sort_by(f64::total_cmp);
    Outcome {
        waits,
        replica_seconds,
        samples,
    }
}
