//! Fair share in a pool (README, "Fair share in a pool"): one function's
//! flood of thousands does not stand before another function's
//! invocations for the runtime's instances. Local mode is a pool: one
//! runtime serves every function, as a pool runtime does in NATS mode
//! (the same `Runtime::invoke` and its `share`).

use std::time::{Duration, Instant};

use http::{Method, StatusCode};

use crate::harness::TestGateway;

/// `flood` in `team-a` (64 at a time, each 200 ms) and `trickle` in
/// `team-b` (echo).
const FUNCTIONS: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: flood, namespace: team-a }
spec:
  module: { file: "{misbehave}" }
  concurrency: 64
  timeout: 10s
---
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: trickle, namespace: team-b }
spec:
  module: { file: "{echo}" }
"#;

/// Instances the runtime may run at once: far fewer than `flood`'s
/// concurrency, so its invocations queue for them.
const INSTANCES: u32 = 4;
/// Queued for `flood` before the trickle starts.
const FLOOD: usize = 10_000;
/// Calls to `trickle`, one every [`TRICKLE_EVERY`].
const TRICKLES: usize = 20;
const TRICKLE_EVERY: Duration = Duration::from_millis(50);
/// Each `flood` invocation's length.
const FLOOD_SLEEP_MS: u64 = 200;

/// The bound a trickle call's answer stays within: one `flood` attempt
/// (the next instance frees within one, and the trickle's call has the
/// better claim), plus room for a loaded test machine. In first-come
/// order it would wait for the ~60 `flood` invocations queued for an
/// instance ahead of it: `60 / INSTANCES * 200 ms` = 3 s.
const BOUND: Duration = Duration::from_millis(FLOOD_SLEEP_MS * 5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_function_does_not_hold_back_another() {
    let gw = TestGateway::start_with(FUNCTIONS, |c| c.runtime.max_instances = INSTANCES).await;
    let flood = format!("/async/fn/team-a/flood/sleep/{FLOOD_SLEEP_MS}");
    let mut accepted = 0;
    while accepted < FLOOD {
        let batch = (FLOOD - accepted).min(100);
        let replies =
            futures::future::join_all((0..batch).map(|_| gw.send(Method::POST, &flood, &[], "")))
                .await;
        for reply in replies {
            assert_eq!(reply.status, StatusCode::ACCEPTED, "{}", reply.text());
        }
        accepted += batch;
    }
    let mut waits = Vec::new();
    for _ in 0..TRICKLES {
        let started = Instant::now();
        let reply = gw
            .send(Method::POST, "/fn/team-b/trickle/", &[], "hi")
            .await;
        waits.push(started.elapsed());
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        tokio::time::sleep(TRICKLE_EVERY).await;
    }
    waits.sort();
    let p50 = waits[waits.len() / 2];
    let worst = waits[waits.len() - 1];
    eprintln!(
        "trickle answered in p50 {p50:?}, worst {worst:?} (of {TRICKLES}) under a flood of {FLOOD}"
    );
    assert!(
        worst < BOUND,
        "a trickle call waited {worst:?} behind the flood (bound {BOUND:?}); all: {waits:?}"
    );
    // The flood still progresses meanwhile.
    let metrics = gw.admin_get("/metrics").await.text();
    let depth = crate::harness::metric(&metrics, r#"sluice_queue_depth{function="team-a/flood"}"#);
    assert!(
        depth < FLOOD as f64,
        "no flood invocation finished: depth {depth}"
    );
}
