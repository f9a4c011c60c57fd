//! What the runtime's benches share.

use std::time::Duration;

/// Sorts `samples`, prints their median, p90 and p99 in µs after `name`
/// (padded to `width`), and returns the median in µs.
pub fn report(name: &str, width: usize, samples: &mut [Duration]) -> f64 {
    samples.sort();
    let at = |q: f64| {
        samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)].as_secs_f64() * 1e6
    };
    println!(
        "  {name:<width$} median {:>8.1} µs, p90 {:>8.1} µs, p99 {:>8.1} µs",
        at(0.5),
        at(0.9),
        at(0.99)
    );
    at(0.5)
}
