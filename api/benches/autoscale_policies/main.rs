//! Policy simulation: Sluice's autoscaling rule (the real
//! [`sluice_api::autoscale::decide`]) beside KEDA-like and Knative-like
//! policies, on the same made-up traffic.
//!
//! `cargo bench -p sluice-api --bench autoscale_policies` prints, for each
//! pod start delay, a table of queue wait (p50, p99, max) and
//! replica-seconds per trace and policy, says whether Sluice met its
//! targets (p99 wait lower than every other policy's, replica-seconds no
//! more than KEDA's), and draws replicas and waiting invocations over time
//! to `docs/autoscale-policies*.png`.
//!
//! The model (deterministic: a fixed seed, and every policy gets the same
//! invocations, arrival and service times alike):
//! - steps of 100 ms, at whose ends the policies look and act; arrivals,
//!   starts and ends are exact times within a step;
//! - Poisson arrivals at the trace's rate; one FIFO queue;
//! - a replica runs up to 64 invocations at once (the Function default
//!   `concurrency`), each for an exponential time of mean 0.5 s, so 128/s;
//! - a new replica serves only after the start delay (2 s and 10 s);
//!   a removed one takes no new work and finishes what it runs;
//! - every policy sizes a replica for a depth of 16 (queued + running: the
//!   default `targetQueueDepth`, used as KEDA's `lagThreshold` and as
//!   Knative's target concurrency), between 0 and 20 replicas;
//! - queue wait: from arrival to the start of service;
//!   replica-seconds: the integral of pods existing, starting and
//!   draining ones included, until the trace is over and the policy is
//!   back at zero (or 900 s after the trace).
//!
//! Sluice uses the Function defaults (`scaleDownDelay` 30 s,
//! `scaleToZeroAfter` 60 s); the other policies are documented in
//! [`policies`].

mod plot;
mod policies;
mod sim;

use std::path::PathBuf;

use sluice_api::Scaling;

use policies::{Keda, Knative, Sluice};
use sim::{Model, Outcome, Policy, Rng, Trace};

/// The seed of every trace's arrivals; any fixed value would do.
const SEED: u64 = 0x51ce_2026;

/// Time after a trace allowed for a policy to return to zero: KEDA's
/// cooldown (300 s) and the HPA's stabilization (300 s) fit in it.
const SETTLE: f64 = 900.0;

fn traces() -> Vec<Trace> {
    // (start, seconds, rate): short bursts 30 s apart (every policy still
    // up), 75 s apart (Sluice at zero, Knative not yet), and 4–5 minutes
    // apart (all but KEDA at zero).
    const BURSTS: [(f64, f64, f64); 6] = [
        (60.0, 10.0, 600.0),
        (100.0, 5.0, 1000.0),
        (180.0, 5.0, 800.0),
        (420.0, 20.0, 400.0),
        (720.0, 3.0, 1500.0),
        (1020.0, 10.0, 600.0),
    ];
    vec![
        Trace {
            name: "step",
            duration: 1200.0,
            peak: 300.0,
            rate: Box::new(|t| {
                if (60.0..660.0).contains(&t) {
                    300.0
                } else {
                    0.0
                }
            }),
        },
        Trace {
            name: "spike",
            duration: 1200.0,
            peak: 1500.0,
            rate: Box::new(|t| {
                BURSTS
                    .iter()
                    .find(|(start, len, _)| (*start..start + len).contains(&t))
                    .map_or(0.0, |(_, _, rate)| *rate)
            }),
        },
        Trace {
            // Two 15-minute "days": a raised cosine cut at 20 % of its
            // height, so each trough has no traffic for about 4.4 minutes.
            name: "diurnal",
            duration: 1800.0,
            peak: 300.0,
            rate: Box::new(|t| {
                let wave = 0.5 - 0.5 * (2.0 * std::f64::consts::PI * t / 900.0).cos();
                300.0 * ((wave - 0.2) / 0.8).max(0.0)
            }),
        },
    ]
}

/// The invocations of the `i`th trace: the same on every call.
fn work(trace: &Trace, i: usize, model: &Model) -> Vec<sim::Invocation> {
    trace.arrivals(&mut Rng::new(SEED ^ i as u64), model.mean_service)
}

fn policies(model: &Model) -> Vec<Box<dyn Policy>> {
    let scaling = Scaling::default();
    assert_eq!(scaling.target_queue_depth, model.target);
    assert_eq!(scaling.max_replicas, model.max_replicas);
    vec![
        Box::new(Sluice::new(scaling)),
        Box::new(Keda::new(model.target, model.max_replicas)),
        Box::new(Knative::new(model.target, model.max_replicas, true)),
        Box::new(Knative::new(model.target, model.max_replicas, false)),
    ]
}

fn main() {
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let font = plot::load_font();
    if !font {
        eprintln!("no DejaVu Sans found: printing the tables only, no PNG");
    }
    let traces = traces();
    for start_delay in [2.0, 10.0] {
        let model = Model {
            step_ms: 100,
            concurrency: 64,
            mean_service: 0.5,
            start_delay,
            target: 16,
            max_replicas: 20,
        };
        println!("\n### Pod start delay {start_delay} s\n");
        let counts: Vec<String> = traces
            .iter()
            .enumerate()
            .map(|(i, t)| format!("{} {}", t.name, work(t, i, &model).len()))
            .collect();
        println!("Invocations: {}.\n", counts.join(", "));
        println!("| trace | policy | mean wait | p50 | p99 | p99.9 | max | replica-seconds |");
        println!("|---|---|---:|---:|---:|---:|---:|---:|");
        let mut verdicts = Vec::new();
        let mut runs: Vec<(&str, Vec<(&'static str, Outcome)>)> = Vec::new();
        for (i, trace) in traces.iter().enumerate() {
            let work = work(trace, i, &model);
            let mut outcomes = Vec::new();
            for mut policy in policies(&model) {
                let outcome = sim::run(&model, trace.duration, SETTLE, &work, policy.as_mut());
                println!(
                    "| {} | {} | {:.3} s | {:.2} s | {:.2} s | {:.2} s | {:.2} s | {:.0} |",
                    trace.name,
                    policy.name(),
                    outcome.mean_wait(),
                    outcome.quantile(0.50),
                    outcome.quantile(0.99),
                    outcome.quantile(0.999),
                    outcome.max_wait(),
                    outcome.replica_seconds,
                );
                outcomes.push((policy.name(), outcome));
            }
            verdicts.push((trace.name, verdict(&outcomes)));
            runs.push((trace.name, outcomes));
        }
        println!();
        for (trace, verdict) in &verdicts {
            println!("- {trace}: {verdict}");
        }
        if font {
            let name = if start_delay == 2.0 {
                "autoscale-policies.png".to_owned()
            } else {
                format!("autoscale-policies-{start_delay}s.png")
            };
            let rows: Vec<plot::Row> = runs
                .iter()
                .map(|(trace, outcomes)| plot::Row {
                    trace,
                    // The three policies of the comparison; Knative without
                    // its poke stays in the table only.
                    policies: outcomes
                        .iter()
                        .take(3)
                        .map(|(name, o)| (*name, o.samples.as_slice()))
                        .collect(),
                })
                .collect();
            let title = format!("Replicas and queue per policy, pod start delay {start_delay} s");
            let path = docs.join(&name);
            plot::draw(&path, &title, &rows).expect("drawing the PNG");
            println!("\nwrote docs/{name}");
        }
    }
}

/// Whether Sluice (the first outcome) met the targets on one trace: a
/// p99 wait lower than every other policy's (a tie, often at zero when
/// fewer than 1 % of invocations wait at all, is not lower), and no more
/// replica-seconds than KEDA-like.
fn verdict(outcomes: &[(&str, Outcome)]) -> String {
    let (_, sluice) = &outcomes[0];
    let p99 = sluice.quantile(0.99);
    let by = |pick: fn(f64, f64) -> bool| -> Vec<String> {
        outcomes[1..]
            .iter()
            .filter(|(_, o)| pick(o.quantile(0.99), p99))
            .map(|(name, o)| format!("{name} ({:.2} s)", o.quantile(0.99)))
            .collect()
    };
    let tied = by(|other, ours| other == ours);
    let lower = by(|other, ours| other < ours);
    let wait = match (lower.is_empty(), tied.is_empty()) {
        (true, true) => format!("p99 wait {p99:.2} s, lower than every other policy: **met**"),
        (true, false) => format!(
            "p99 wait {p99:.2} s, tied with {}: **not met** (not lower)",
            tied.join(", ")
        ),
        (false, _) => format!(
            "p99 wait {p99:.2} s, higher than {}: **missed**",
            lower.join(", ")
        ),
    };
    let keda = outcomes
        .iter()
        .find(|(name, _)| *name == "KEDA-like")
        .map(|(_, o)| o.replica_seconds)
        .expect("KEDA-like runs");
    let ratio = sluice.replica_seconds / keda;
    let met = if ratio <= 1.0 { "met" } else { "missed" };
    format!("{wait}; replica-seconds {ratio:.2}× KEDA-like's: **{met}**")
}
