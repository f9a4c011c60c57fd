//! The same greeting in three languages through Sluice's runtime: `hello`
//! (Rust), `hello-py` (componentize-py) and `hello-js` (componentize-js).
//! For each:
//! - compile: the component compiled from its bytes (once);
//! - cold: a runtime that has never seen it (a new engine, as after a
//!   restart) loads its precompiled artifact from disk, then serves one
//!   request, each timed, over several fresh runtimes;
//! - warm: new store + instantiate + handle + collect, one at a time, in
//!   blocks that alternate between the languages so machine noise lands on
//!   all three; ratios against `hello` in the same run; and the minor page
//!   faults per invocation, which is where an interpreter's time goes.
//!
//! Needs scripts/polyglot.sh to have built the Python and JavaScript
//! components. Run with `cargo bench -p sluice-runtime --bench languages`;
//! `SLUICE_BENCH_SAMPLES` sets the warm samples per language (default 2,000).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use sluice_api::{FunctionSpec, ModuleDigest, Outcome};
use sluice_runtime::{PreparedFunction, Runtime, RuntimeConfig};

const LANGUAGES: [(&str, &str); 3] = [
    ("hello", "Rust"),
    ("hello-py", "Python"),
    ("hello-js", "JavaScript"),
];
const DEFAULT_SAMPLES: usize = 2_000;
const WARMUP: usize = 50;
const BLOCK: usize = 100;
/// Fresh runtimes per language for the cold numbers.
const COLD_RUNS: usize = 7;

struct Language {
    name: &'static str,
    label: &'static str,
    wasm: Vec<u8>,
    spec: FunctionSpec,
    digest: ModuleDigest,
}

fn main() {
    let samples_wanted = common::samples(DEFAULT_SAMPLES);
    let tokio = common::tokio();
    let artifacts = tempfile::tempdir().unwrap();
    let languages: Vec<Language> = LANGUAGES
        .iter()
        .map(|&(name, label)| {
            let path = if name == "hello" {
                sluice_examples::component(name)
            } else {
                sluice_examples::polyglot_component(name)
            };
            let wasm = std::fs::read(path).unwrap();
            let spec = serde_json::from_value(
                serde_json::json!({ "module": { "file": format!("{name}.wasm") } }),
            )
            .unwrap();
            let digest = ModuleDigest::of(&wasm);
            Language {
                name,
                label,
                wasm,
                spec,
                digest,
            }
        })
        .collect();

    tokio.block_on(async {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let mut prepared = Vec::new();
        println!("component size and compile time (Cranelift, once):");
        for language in &languages {
            let started = Instant::now();
            let function = runtime
                .prepare(function_ref(language), &language.spec, &language.wasm)
                .unwrap();
            println!(
                "  {:<10} {:>6.1} MiB  compiled in {:>7.1} ms",
                language.label,
                language.wasm.len() as f64 / (1 << 20) as f64,
                ms(started.elapsed())
            );
            runtime
                .save_precompiled(&function, artifacts.path())
                .unwrap();
            prepared.push(function);
        }

        println!(
            "cold: a new runtime loads the precompiled artifact, then serves its first request (median of {COLD_RUNS}):"
        );
        let mut cold_first = Vec::new();
        for language in &languages {
            let (load, first) = cold(language, artifacts.path()).await;
            println!(
                "  {:<10} load {:>7.2} ms, first request {:>7.2} ms",
                language.label, load, first
            );
            cold_first.push(first);
        }

        let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); languages.len()];
        let mut faults = vec![0u64; languages.len()];
        for (language, function) in languages.iter().zip(&prepared) {
            for _ in 0..WARMUP {
                invoke(&runtime, function, language).await;
            }
        }
        while samples[0].len() < samples_wanted {
            let block = BLOCK.min(samples_wanted - samples[0].len());
            for (i, (language, function)) in languages.iter().zip(&prepared).enumerate() {
                let faulted = minor_faults();
                for _ in 0..block {
                    let started = Instant::now();
                    invoke(&runtime, function, language).await;
                    samples[i].push(started.elapsed());
                }
                faults[i] += minor_faults() - faulted;
            }
        }
        println!(
            "warm: new store + instantiate + handle + collect, {samples_wanted} samples each:"
        );
        let medians: Vec<f64> = languages
            .iter()
            .zip(&mut samples)
            .map(|(language, taken)| common::report(language.label, 10, taken))
            .collect();
        println!("minor page faults per invocation (the process's, over the warm samples):");
        for (language, faulted) in languages.iter().zip(&faults) {
            println!(
                "  {:<10} {:>8.1}",
                language.label,
                *faulted as f64 / samples_wanted as f64
            );
        }
        for (i, language) in languages.iter().enumerate().skip(1) {
            println!(
                "  {} / Rust: warm median {:.1}x, cold first request {:.1}x",
                language.label,
                medians[i] / medians[0],
                cold_first[i] / cold_first[0]
            );
        }
    });
}

fn function_ref(language: &Language) -> sluice_api::names::FunctionRef {
    format!("default/{}", language.name).parse().unwrap()
}

/// Median load and first-request times, in ms, over [`COLD_RUNS`] fresh
/// runtimes.
async fn cold(language: &Language, artifacts: &Path) -> (f64, f64) {
    let mut loads = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..COLD_RUNS {
        let runtime = Runtime::new(RuntimeConfig::default()).unwrap();
        let started = Instant::now();
        let function = runtime
            .prepare_precompiled(
                function_ref(language),
                &language.spec,
                &language.digest,
                artifacts,
            )
            .unwrap()
            .expect("the artifact saved above");
        loads.push(ms(started.elapsed()));
        let started = Instant::now();
        invoke(&runtime, &function, language).await;
        firsts.push(ms(started.elapsed()));
    }
    (median(&mut loads), median(&mut firsts))
}

async fn invoke(runtime: &Runtime, function: &PreparedFunction, language: &Language) {
    let invocation = common::get_root(&function.function);
    match runtime.invoke(function, &invocation).await {
        Outcome::Responded(r) if r.status == 200 => {}
        other => panic!("{} failed: {other:?}", language.name),
    }
}

fn ms(elapsed: Duration) -> f64 {
    elapsed.as_secs_f64() * 1e3
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// This process's minor page faults so far (`/proc/self/stat`, field 10:
/// proc(5)); a fault is a page touched for the first time since it was
/// mapped or reset, which is most of what a fresh instance's memory costs.
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    // The command name (field 2) may hold spaces; count from after it.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    after_name
        .split(' ')
        .nth(7)
        .and_then(|f| f.parse().ok())
        .unwrap()
}
