//! Ordering keys (`Sluice-Ordering-Key`): per key one at a time in
//! accepted order, across runtimes, retries and a killed runtime; keys in
//! parallel; bad keys refused before anything is queued.
//!
//! The function is `misbehave`'s `/call?url=`: it GETs
//! `<sequencer>/run/<key>/<seq>`, and the [`Sequencer`] (a server of the
//! test) notes when each call starts and ends, so it sees what the
//! function runs, in what order, and how much at once.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use sluice_api::ordering::{MAX_ORDERING_KEY_LEN, bucket_of};
use sluice_nats::layout::LayoutConfig;
use tokio::net::TcpListener;

use crate::distributed::Process;
use crate::harness::{
    Backend, ECHO_ON_ORDERS, NatsStack, TestGateway, conformance, eventually, manifest_dir,
    stored_header,
};
use sluice_api::names::FunctionRef;
use sluice_gateway::events::event_invocation_id;

/// Keys, invocations per key, and the function's concurrency.
const KEYS: usize = 20;
const PER_KEY: usize = 50;
const CONCURRENCY: usize = 8;
/// How long each call of the sequencer takes: long enough that calls of
/// different keys overlap.
const CALL: Duration = Duration::from_millis(40);
/// The key whose 10th invocation (sequence 9) fails twice, then succeeds.
const FAILING_KEY: &str = "key-3";
const FAILING_SEQ: usize = 9;
const FAILURES: usize = 2;

/// One call the function made, as the sequencer saw it.
#[derive(Debug, Clone)]
struct Call {
    key: String,
    seq: usize,
    started: Instant,
    ended: Option<Instant>,
}

/// The test's server the function calls at `/run/<key>/<seq>`.
#[derive(Clone, Default)]
struct Sequencer {
    calls: Arc<Mutex<Vec<Call>>>,
    running: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
}

impl Sequencer {
    async fn start() -> (Self, SocketAddr) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let sequencer = Self::default();
        let serving = sequencer.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let sequencer = serving.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: Request<hyper::body::Incoming>| {
                            let sequencer = sequencer.clone();
                            async move { Ok::<_, std::convert::Infallible>(sequencer.call(req).await) }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        (sequencer, addr)
    }

    async fn call(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let mut parts = req.uri().path().trim_start_matches("/run/").split('/');
        let key = parts.next().unwrap_or_default().to_owned();
        let seq: usize = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(usize::MAX);
        let (index, tried) = {
            let mut calls = self.calls.lock().unwrap();
            let tried = calls
                .iter()
                .filter(|c| c.key == key && c.seq == seq)
                .count();
            calls.push(Call {
                key: key.clone(),
                seq,
                started: Instant::now(),
                ended: None,
            });
            (calls.len() - 1, tried)
        };
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        // Ends when the call ends, or when its caller goes (a killed
        // runtime's connection closes and drops this future).
        let _ending = Ending {
            sequencer: self.clone(),
            index,
        };
        tokio::time::sleep(CALL).await;
        let status = if key == FAILING_KEY && seq == FAILING_SEQ && tried < FAILURES {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        let mut response = Response::new(Full::new(Bytes::from_static(b"ok")));
        *response.status_mut() = status;
        response
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// Checks every key's calls: they never overlap, and their sequence
    /// numbers go 0, 1, 2, ... in the order they started, each repeated
    /// only by a retry or a redelivery (a runtime killed mid-call).
    fn check_order(&self) {
        let mut by_key: HashMap<String, Vec<Call>> = HashMap::new();
        for call in self.calls() {
            by_key.entry(call.key.clone()).or_default().push(call);
        }
        assert_eq!(by_key.len(), KEYS, "every key ran");
        for (key, mut calls) in by_key {
            calls.sort_by_key(|c| c.started);
            let seqs: Vec<usize> = calls.iter().map(|c| c.seq).collect();
            let mut distinct = seqs.clone();
            distinct.dedup();
            assert_eq!(
                distinct,
                (0..PER_KEY).collect::<Vec<_>>(),
                "{key}: calls out of order: {seqs:?}"
            );
            for pair in calls.windows(2) {
                let ended = pair[0].ended.expect("every call ends");
                assert!(
                    pair[1].started >= ended,
                    "{key}: {} started before {} ended",
                    pair[1].seq,
                    pair[0].seq
                );
            }
        }
    }

    /// While the failing key held its failing invocation (from its first
    /// attempt's start to its last attempt's end), the key ran nothing
    /// else and other keys ran.
    fn check_failure_held_only_its_key(&self) {
        let calls = self.calls();
        let attempts: Vec<&Call> = calls
            .iter()
            .filter(|c| c.key == FAILING_KEY && c.seq == FAILING_SEQ)
            .collect();
        assert!(
            attempts.len() > FAILURES,
            "the failing invocation was tried {} times",
            attempts.len()
        );
        let from = attempts.iter().map(|c| c.started).min().unwrap();
        let to = attempts.iter().filter_map(|c| c.ended).max().unwrap();
        let meanwhile = |c: &&Call| c.started > from && c.started < to;
        let own: Vec<usize> = calls
            .iter()
            .filter(meanwhile)
            .filter(|c| c.key == FAILING_KEY && c.seq != FAILING_SEQ)
            .map(|c| c.seq)
            .collect();
        assert!(
            own.is_empty(),
            "{FAILING_KEY} ran {own:?} while {FAILING_SEQ} was retried"
        );
        let others = calls
            .iter()
            .filter(meanwhile)
            .filter(|c| c.key != FAILING_KEY)
            .count();
        assert!(others > 0, "no other key ran while {FAILING_KEY} was held");
    }
}

/// Marks a call ended when dropped.
struct Ending {
    sequencer: Sequencer,
    index: usize,
}

impl Drop for Ending {
    fn drop(&mut self) {
        self.sequencer.running.fetch_sub(1, Ordering::SeqCst);
        self.sequencer.calls.lock().unwrap()[self.index].ended = Some(Instant::now());
    }
}

fn manifest(sequencer: SocketAddr) -> String {
    format!(
        r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: {{ name: ordered }}
spec:
  module: {{ file: "{{misbehave}}" }}
  timeout: 5s
  concurrency: {CONCURRENCY}
  retry: {{ maxAttempts: 3, backoff: {{ initial: 500ms, max: 1s }} }}
  allowedOutboundHosts: [ "http://{sequencer}" ]
"#
    )
}

fn key(i: usize) -> String {
    format!("key-{i}")
}

/// Submits every key's invocations, each key's in sequence (the next
/// once the last was accepted), the keys side by side; returns the ids.
async fn submit_keyed(gw: Arc<TestGateway>, sequencer: SocketAddr) -> Vec<String> {
    let tasks: Vec<_> = (0..KEYS)
        .map(|k| {
            let gw = gw.clone();
            tokio::spawn(async move {
                let key = key(k);
                let mut ids = Vec::with_capacity(PER_KEY);
                for seq in 0..PER_KEY {
                    let path = format!(
                        "/async/fn/default/ordered/call?url=http://{sequencer}/run/{key}/{seq}"
                    );
                    ids.push(gw.submit(&path, &[("sluice-ordering-key", &key)], "").await);
                }
                ids
            })
        })
        .collect();
    let mut ids = Vec::new();
    for task in tasks {
        ids.extend(task.await.unwrap());
    }
    ids
}

/// Waits for every invocation to end and checks that all succeeded;
/// returns how many took more than one attempt.
async fn all_succeeded(gw: &TestGateway, ids: &[String]) -> usize {
    let mut retried = 0;
    for id in ids {
        let record = gw.wait_record(id).await;
        assert_eq!(record["state"], "succeeded", "{record}");
        if record["attempts"].as_u64() > Some(1) {
            retried += 1;
        }
    }
    retried
}

/// At least [`CONCURRENCY`] keys can run at once only if they fall in
/// that many buckets: the test's keys do.
fn keys_spread_over_buckets() {
    let buckets: BTreeSet<u16> = (0..KEYS).map(|k| bucket_of(&key(k))).collect();
    assert!(buckets.len() >= CONCURRENCY, "{buckets:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_run_in_order_across_three_runtimes_a_retried_failure_and_a_killed_runtime() {
    keys_spread_over_buckets();
    let (sequencer, addr) = Sequencer::start().await;
    let stack = NatsStack::without_runtime(LayoutConfig::default()).await;
    let work = tempfile::tempdir().unwrap();
    stack
        .publish_dir(manifest_dir(&manifest(addr)).path())
        .await;
    let runtimes: Vec<Process> = (0..3)
        .map(|i| Process::runtime(&stack.server.url, work.path(), &format!("runtime-{i}"), &[]))
        .collect();
    let (_gateway, gateway_addr) = Process::gateway(&stack.server.url, work.path(), &[]).await;
    let gw = Arc::new(TestGateway::remote(gateway_addr));
    gw.wait_routed("default/ordered").await;
    for runtime in &runtimes {
        runtime.wait_for_log("\"message\":\"serving\"").await;
    }

    // One runtime is killed once a third of the calls have started.
    let victim = runtimes[0].pid().to_string();
    let watching = sequencer.clone();
    let killer = tokio::spawn(async move {
        let started = Instant::now();
        while watching.calls().len() < KEYS * PER_KEY / 3 {
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "a third of the calls did not start within 2 minutes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Command::new("kill")
            .args(["-KILL", &victim])
            .status()
            .unwrap();
    });
    let ids = submit_keyed(gw.clone(), addr).await;
    assert_eq!(ids.len(), KEYS * PER_KEY);
    let retried = all_succeeded(&gw, &ids).await;
    killer.await.unwrap();

    sequencer.check_order();
    sequencer.check_failure_held_only_its_key();
    let most = sequencer.most_at_once.load(Ordering::SeqCst);
    assert!(most >= CONCURRENCY, "at most {most} keys ran at once");
    // Besides the injected failure, what the killed runtime held came back.
    assert!(
        retried > 1,
        "the killed runtime held nothing; the test proved nothing"
    );
    drop(runtimes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_mode_runs_keys_in_order_and_a_failure_holds_only_its_key() {
    let (sequencer, addr) = Sequencer::start().await;
    let gw = Arc::new(TestGateway::start(Backend::Local, &manifest(addr)).await);
    let ids = submit_keyed(gw.clone(), addr).await;
    let retried = all_succeeded(&gw, &ids).await;
    assert_eq!(retried, 1, "only the injected failure was retried");
    sequencer.check_order();
    sequencer.check_failure_held_only_its_key();
    let most = sequencer.most_at_once.load(Ordering::SeqCst);
    assert_eq!(
        most, CONCURRENCY,
        "keys run side by side, up to the concurrency"
    );
}

async fn a_bad_ordering_key_is_refused_naming_the_header_and_nothing_runs(backend: Backend) {
    let (sequencer, addr) = Sequencer::start().await;
    let gw = TestGateway::start(backend, &manifest(addr)).await;
    let long = "k".repeat(MAX_ORDERING_KEY_LEN + 1);
    for (path, key) in [
        ("/async/fn/default/ordered/call", long.as_str()),
        ("/fn/default/ordered/call", long.as_str()),
        ("/async/fn/default/ordered/call", "tab\there"),
        ("/fn/default/ordered/call", ""),
    ] {
        let path = format!("{path}?url=http://{addr}/run/bad/0");
        let reply = gw
            .send(Method::POST, &path, &[("sluice-ordering-key", key)], "")
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{key:?}: {}",
            reply.text()
        );
        assert!(
            reply.text().contains("Sluice-Ordering-Key"),
            "{}",
            reply.text()
        );
    }
    // A good key after them runs; the bad ones never did.
    let good = format!("/fn/default/ordered/call?url=http://{addr}/run/good/0");
    let reply = gw
        .send(
            Method::POST,
            &good,
            &[("sluice-ordering-key", "fine key")],
            "",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let keys: Vec<String> = sequencer.calls().into_iter().map(|c| c.key).collect();
    assert_eq!(keys, ["good"]);
}

conformance!(a_bad_ordering_key_is_refused_naming_the_header_and_nothing_runs);

/// An event's CloudEvents `partitionkey` is its ordering key: it queues on
/// the key's bucket (whose consumer the runtime then makes) and the
/// function sees it as `sluice-ordering-key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_events_partitionkey_orders_it_on_its_keys_bucket() {
    let gw = TestGateway::start(Backend::Nats, ECHO_ON_ORDERS).await;
    let stack = gw.nats.as_ref().unwrap();
    let client = async_nats::connect(&stack.server.url).await.unwrap();
    let function: FunctionRef = "default/echo".parse().unwrap();
    let id = event_invocation_id(&function, "orders.created", "order-7");
    // Sent until it is taken: a plain subject drops what arrives before
    // the gateway subscribes (the same event id runs once).
    let record = eventually("the event runs", Duration::from_secs(30), async || {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("ce-id", "order-7");
        headers.insert("ce-partitionkey", "customer-17");
        client
            .publish_with_headers("orders.created", headers, "seven".into())
            .await
            .unwrap();
        client.flush().await.unwrap();
        let reply = gw.get(&format!("/invocations/{id}?wait=2s")).await;
        match reply.json()["state"].as_str() {
            Some("succeeded") => Ok(reply.json()),
            _ => Err(reply.text()),
        }
    })
    .await;
    assert_eq!(
        stored_header(&record, "x-echo-h-sluice-ordering-key"),
        "customer-17"
    );
    let bucket = function.keyed_consumer_name(bucket_of("customer-17"));
    stack
        .layout
        .invocations
        .get_consumer::<async_nats::jetstream::consumer::pull::Config>(&bucket)
        .await
        .unwrap_or_else(|e| panic!("no consumer {bucket}: {e}"));
}
