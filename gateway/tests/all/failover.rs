//! Sluice on a three-server JetStream cluster with every stream and bucket
//! replicated three times (R3): the invocation stream's leader is
//! SIGKILLed and another server stopped and restarted under load, and
//! every accepted invocation still succeeds.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use http::{Method, StatusCode};
use sluice_api::names::INVOCATION_STREAM;
use sluice_nats::layout::{Layout, LayoutConfig};
use sluice_nats::publish::Publisher;
use sluice_testing::NatsCluster;

use crate::distributed::{Process, SLOW, all_succeeded, submit_all_with};
use crate::harness::{TestGateway, eventually, manifest_dir, publish_dir};

/// The longest a sync call may take: its function's timeout (2 s; the
/// gateway's publish patience through a failover ends with it) and room
/// for a loaded machine. Past it, it hung.
const SYNC_HANG: Duration = Duration::from_secs(30);

/// `SLOW`'s timeout: a sync call's deadline. A 504 before it would be the
/// gateway giving up early, not the deadline passing.
const SYNC_DEADLINE: Duration = Duration::from_secs(2);

/// A three-server cluster with an R3 layout and `SLOW` published.
async fn cluster_with_layout() -> (NatsCluster, Layout) {
    let cluster = NatsCluster::start(3);
    let client = sluice_nats::connect(&cluster.url(), "test-owner", &Default::default())
        .await
        .expect("the cluster");
    let config = LayoutConfig {
        replicas: 3,
        ..LayoutConfig::default()
    };
    let layout = Layout::reconcile(client, &config)
        .await
        .expect("the R3 layout")
        .layout;
    publish_dir(&Publisher::new(layout.clone()), manifest_dir(SLOW).path()).await;
    (cluster, layout)
}

/// A gateway's environment here: it owns the layout (the default), so
/// it must want it replicated three times too; with its default of one it
/// would bring every stream down to R1 when it starts.
const R3_OWNER: &[(&str, &str)] = &[("SLUICE_STREAM_REPLICAS", "3")];

/// Fails unless every stream and bucket of the layout is replicated
/// three times, with both followers known to its leader.
async fn assert_replicated(layout: &Layout) {
    // Listed until it answers: right after a failover the JetStream API
    // may time out while the meta leader is elected.
    let streams = eventually(
        "the layout's streams are listed",
        Duration::from_secs(60),
        async || {
            let mut names = layout.js.stream_names();
            let mut streams = Vec::new();
            while let Some(name) = names.next().await {
                streams.push(name.map_err(|e| e.to_string())?);
            }
            if streams.len() >= 5 {
                Ok(streams)
            } else {
                Err(format!("the layout's streams: {streams:?}"))
            }
        },
    )
    .await;
    for name in streams {
        let replicas = eventually(
            &format!("{name} is R3 with its followers"),
            Duration::from_secs(60),
            async || {
                let mut stream = layout
                    .js
                    .get_stream(&name)
                    .await
                    .map_err(|e| e.to_string())?;
                let info = stream.info().await.map_err(|e| e.to_string())?;
                let followers = info.cluster.as_ref().map_or(0, |c| c.replicas.len());
                if followers == 2 {
                    Ok(info.config.num_replicas)
                } else {
                    Err(format!("{} followers: {:?}", followers, info.cluster))
                }
            },
        )
        .await;
        assert_eq!(replicas, 3, "{name}");
    }
}

/// The index of the server leading `stream` (asked until one is known).
async fn leader_of(stream: &str, layout: &Layout) -> usize {
    let js = &layout.js;
    let name = eventually(
        &format!("{stream} has a leader"),
        Duration::from_secs(60),
        async || {
            let mut stream = js.get_stream(stream).await.map_err(|e| e.to_string())?;
            let info = stream.info().await.map_err(|e| e.to_string())?;
            info.cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
                .ok_or_else(|| format!("{:?}", info.cluster))
        },
    )
    .await;
    NatsCluster::index_of(&name).unwrap_or_else(|| panic!("{name} is not one of ours"))
}

/// What the steady stream of sync calls saw.
#[derive(Debug, Default)]
struct SyncTally {
    ok: AtomicUsize,
    unavailable: AtomicUsize,
    timed_out: AtomicUsize,
    other: std::sync::Mutex<Vec<String>>,
}

/// Sends sync calls one after another from each of `clients` tasks until
/// `stop`, tallying their answers; a call that takes longer than
/// [`SYNC_HANG`] counts as hung, and a 504 before [`SYNC_DEADLINE`] as
/// premature (`other`).
fn steady_sync_calls(
    gateways: Vec<Arc<TestGateway>>,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> (Arc<SyncTally>, Vec<tokio::task::JoinHandle<()>>) {
    let tally = Arc::new(SyncTally::default());
    let tasks = (0..clients)
        .map(|i| {
            let (gateways, stop, tally) = (gateways.clone(), stop.clone(), tally.clone());
            tokio::spawn(async move {
                let mut n = i;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let gw = &gateways[n % gateways.len()];
                    let call = gw.try_send(Method::GET, "/fn/default/slow/sleep/10", &[], "");
                    let sent = std::time::Instant::now();
                    match tokio::time::timeout(SYNC_HANG, call).await {
                        Ok(Some(reply)) if reply.status == StatusCode::OK => {
                            tally.ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Some(reply)) if reply.status == StatusCode::SERVICE_UNAVAILABLE => {
                            tally.unavailable.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(Some(reply))
                            if reply.status == StatusCode::GATEWAY_TIMEOUT
                                && sent.elapsed() >= SYNC_DEADLINE =>
                        {
                            tally.timed_out.fetch_add(1, Ordering::SeqCst);
                        }
                        // A gateway that was killed refuses connections.
                        Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                        Ok(Some(reply)) => tally.other.lock().unwrap().push(format!(
                            "{} after {:?}: {}",
                            reply.status,
                            sent.elapsed(),
                            reply.text()
                        )),
                        Err(_) => tally
                            .other
                            .lock()
                            .unwrap()
                            .push(format!("hung past {SYNC_HANG:?}")),
                    }
                }
            })
        })
        .collect();
    (tally, tasks)
}

/// Kills the invocation stream's leader (SIGKILL) at 30 % of `total`
/// accepted, starting it again (as its supervisor would) a few seconds
/// later, and stops and restarts another server at 60 %; `extra` is done
/// besides. Returns the ids accepted. (The servers live as long as the
/// caller's `cluster`.)
async fn submit_through_failovers(
    cluster: &Arc<std::sync::Mutex<NatsCluster>>,
    leader: usize,
    gateways: Vec<Arc<TestGateway>>,
    total: usize,
    mut extra: Vec<crate::distributed::During>,
) -> Vec<String> {
    let other = (leader + 1) % 3;
    let (killed, restarted) = (cluster.clone(), cluster.clone());
    extra.push((
        total * 3 / 10,
        Box::new(move || {
            eprintln!("SIGKILL n{leader}, the invocation stream's leader");
            killed.lock().unwrap().servers[leader].kill();
            std::thread::sleep(Duration::from_secs(3));
            let mut cluster = killed.lock().unwrap();
            cluster.servers[leader].restart();
            cluster.wait_healthy();
        }),
    ));
    extra.push((
        total * 6 / 10,
        Box::new(move || {
            eprintln!("stopping and restarting n{other}");
            let mut cluster = restarted.lock().unwrap();
            cluster.servers[other].restart();
            cluster.wait_healthy();
        }),
    ));
    submit_all_with(gateways, "/async/fn/default/slow/sleep/5", total, extra).await
}

/// Prints what happened, for the run's log: how many ran more than once
/// (at-least-once), how the sync calls ended; fails on a sync call that
/// hung or got anything but 200, 503 or 504.
fn report(records: &[serde_json::Value], sync: &SyncTally) {
    let again = records
        .iter()
        .filter(|r| r["attempts"].as_u64() > Some(1))
        .count();
    eprintln!(
        "{} accepted, all succeeded; {again} ran more than once; sync calls: {} ok, {} 503, {} 504",
        records.len(),
        sync.ok.load(Ordering::SeqCst),
        sync.unavailable.load(Ordering::SeqCst),
        sync.timed_out.load(Ordering::SeqCst),
    );
    let other = sync.other.lock().unwrap();
    assert!(other.is_empty(), "sync calls ended otherwise: {other:?}");
    assert!(
        sync.ok.load(Ordering::SeqCst) > 0,
        "no sync call succeeded: the test proved nothing"
    );
}

/// A three-server cluster with an R3 layout and `SLOW` published, a
/// runtime and a gateway (working in `work`) serving it, and a client of
/// that gateway; the layout checked R3. The processes live as long as the
/// vector returned.
async fn one_gateway_one_runtime(
    work: &std::path::Path,
) -> (NatsCluster, Layout, Vec<Process>, Arc<TestGateway>) {
    let (cluster, layout) = cluster_with_layout().await;
    let url = cluster.url();
    let runtime = Process::runtime(&url, work, "runtime-0", &[]);
    let (gateway, addr) = Process::gateway(&url, work, R3_OWNER).await;
    let gw = Arc::new(TestGateway::remote(addr));
    gw.wait_routed("default/slow").await;
    runtime.wait_for_log("\"message\":\"serving\"").await;
    assert_replicated(&layout).await;
    (cluster, layout, vec![runtime, gateway], gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_invocation_is_lost_when_the_stream_leader_dies() {
    let work = tempfile::tempdir().unwrap();
    let (cluster, layout, _parts, gw) = one_gateway_one_runtime(work.path()).await;
    let leader = leader_of(INVOCATION_STREAM, &layout).await;
    let cluster = Arc::new(std::sync::Mutex::new(cluster));

    let stop = Arc::new(AtomicBool::new(false));
    let (sync, callers) = steady_sync_calls(vec![gw.clone()], 2, stop.clone());
    let ids = submit_through_failovers(&cluster, leader, vec![gw.clone()], 1000, vec![]).await;
    assert_eq!(ids.len(), 1000);
    // The sync calls go on until the backlog is done, so that a slow
    // machine's first calls (a cold start, then the failovers) are not
    // all the test sees of them.
    let records = all_succeeded(&gw, &ids).await;
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }
    report(&records, &sync);
}

/// The whole data path fails over together: two gateways and three
/// runtimes, one of each SIGKILLed besides the NATS servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accepted_invocation_is_lost_when_a_leader_a_gateway_and_a_runtime_die() {
    let (cluster, layout) = cluster_with_layout().await;
    let work = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let runtimes: Vec<Process> = (0..3)
        .map(|i| Process::runtime(&url, work.path(), &format!("runtime-{i}"), &[]))
        .collect();
    let mut gateways = Vec::new();
    let mut clients = Vec::new();
    for i in 0..2 {
        let dir = work.path().join(format!("gateway-{i}"));
        std::fs::create_dir(&dir).unwrap();
        let (gateway, addr) = Process::gateway(&url, &dir, R3_OWNER).await;
        let gw = Arc::new(TestGateway::remote(addr));
        gw.wait_routed("default/slow").await;
        gateways.push(gateway);
        clients.push(gw);
    }
    for runtime in &runtimes {
        runtime.wait_for_log("\"message\":\"serving\"").await;
    }
    assert_replicated(&layout).await;
    let leader = leader_of(INVOCATION_STREAM, &layout).await;
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let victims = [gateways[1].pid(), runtimes[2].pid()];
    let kill_others: crate::distributed::During = (
        450,
        Box::new(move || {
            for pid in victims {
                eprintln!("SIGKILL pid {pid} (a gateway, then a runtime)");
                Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status()
                    .unwrap();
            }
        }),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let (sync, callers) = steady_sync_calls(clients.clone(), 2, stop.clone());
    let ids =
        submit_through_failovers(&cluster, leader, clients.clone(), 1000, vec![kill_others]).await;
    assert_eq!(ids.len(), 1000);
    // Read through the gateway that lives; the sync calls go on until
    // the backlog is done.
    let records = all_succeeded(&clients[0], &ids).await;
    stop.store(true, Ordering::SeqCst);
    for caller in callers {
        caller.await.unwrap();
    }
    report(&records, &sync);
}

/// The gateway follows the registry through the loss of its bucket's
/// leader after the two failovers above: a function published after it
/// is routed. (Its watch is an ordered consumer of one replica: when that
/// is lost the watch reopens; see `nats/tests/watches.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_published_after_the_registry_leader_dies_is_routed() {
    let work = tempfile::tempdir().unwrap();
    let (cluster, layout, _parts, gw) = one_gateway_one_runtime(work.path()).await;
    let leader = leader_of(INVOCATION_STREAM, &layout).await;
    let cluster = Arc::new(std::sync::Mutex::new(cluster));
    let ids = submit_through_failovers(&cluster, leader, vec![gw.clone()], 200, vec![]).await;
    all_succeeded(&gw, &ids).await;
    assert_replicated(&layout).await;

    let registry_leader = leader_of("KV_sluice-functions", &layout).await;
    eprintln!("SIGKILL n{registry_leader}, the registry's leader");
    cluster.lock().unwrap().servers[registry_leader].kill();
    let publisher = Publisher::new(layout.clone());
    let hello = manifest_dir(crate::harness::HELLO);
    let functions = sluice_gateway::local::load_dir(hello.path()).expect("the manifests load");
    eventually("hello published", Duration::from_secs(60), async || {
        for f in &functions {
            publisher
                .publish(&f.function, &f.spec, &f.api_keys, &f.wasm)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .await;
    // The gateway's registry watch resumes only once the registry has a
    // new leader and the watch is made again: in one full test run on the
    // loaded 2-core machine that took longer than 30 s. 90 s, as the other
    // waits through a failover here.
    gw.wait_routed_within("default/hello", Duration::from_secs(90))
        .await;
}

/// Sends event `id` on the core subject until the gateway recorded its
/// invocation (core NATS drops what nobody subscribes to), and queues
/// event `id` on the stream-bound subject (through a failover), then
/// waits until both invocations succeeded, 90 s at most each.
async fn events_arrive(gw: &TestGateway, js: &async_nats::jetstream::Context, id: &str) {
    let client = js.client();
    let plain = sluice_gateway::events::event_invocation_id(
        &"default/plain".parse().unwrap(),
        "burst.plain",
        id,
    );
    eventually(
        &format!("core event {id} is recorded"),
        Duration::from_secs(90),
        async || {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", id);
            client
                .publish_with_headers("burst.plain", headers, id.to_owned().into())
                .await
                .map_err(|e| e.to_string())?;
            client.flush().await.map_err(|e| e.to_string())?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            match gw.get(&format!("/invocations/{plain}")).await {
                reply if reply.status == StatusCode::OK => Ok(()),
                reply => Err(format!("{} {}", reply.status, reply.text())),
            }
        },
    )
    .await;
    let message = async_nats::jetstream::message::PublishMessage::build()
        .payload(id.to_owned().into())
        .message_id(id);
    sluice_nats::failover::publish_patiently(
        js,
        "orders.created",
        message,
        tokio::time::Instant::now() + Duration::from_secs(60),
    )
    .await
    .unwrap_or_else(|e| panic!("stream event {id} not stored: {e}"));
    let durable = sluice_gateway::events::event_invocation_id(
        &"default/durable".parse().unwrap(),
        "orders.created",
        id,
    );
    for invocation in [plain, durable] {
        let record = eventually(
            &format!("event {id}'s invocation {invocation} succeeds"),
            Duration::from_secs(90),
            async || {
                let reply = gw.get(&format!("/invocations/{invocation}")).await;
                match reply.json()["state"].as_str() {
                    Some("succeeded") => Ok(reply.json()),
                    _ => Err(format!("{} {}", reply.status, reply.text())),
                }
            },
        )
        .await;
        assert_eq!(record["state"], "succeeded");
    }
}

/// Event triggers follow the cluster: a core subscription and a
/// stream-bound trigger's durable consumer (both R3) keep turning events
/// into invocations after the SIGKILL of the trigger consumer's leader
/// and after two servers restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_triggers_follow_a_leader_loss_and_restarts() {
    let cluster = NatsCluster::start(3);
    let client = sluice_nats::connect(&cluster.url(), "test-owner", &Default::default())
        .await
        .expect("the cluster");
    let layout = Layout::reconcile(
        client.clone(),
        &LayoutConfig {
            replicas: 3,
            ..LayoutConfig::default()
        },
    )
    .await
    .expect("the R3 layout")
    .layout;
    let js = async_nats::jetstream::new(client);
    let orders = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "ORDERS".into(),
            subjects: vec!["orders.>".into()],
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .expect("the ORDERS stream");
    publish_dir(
        &Publisher::new(layout.clone()),
        manifest_dir(crate::event_buffers::TWO_TRIGGERS).path(),
    )
    .await;
    let work = tempfile::tempdir().unwrap();
    let url = cluster.url();
    let runtime = Process::runtime(&url, work.path(), "runtime-0", &[]);
    let (_gateway, addr) = Process::gateway(&url, work.path(), R3_OWNER).await;
    let gw = TestGateway::remote(addr);
    gw.wait_routed("default/plain").await;
    gw.wait_routed("default/durable").await;
    runtime.wait_for_log("\"message\":\"serving\"").await;
    crate::nats_mode::wait_trigger_consumer(&orders).await;
    assert_replicated(&layout).await;
    events_arrive(&gw, &js, "before").await;

    let mut cluster = cluster;
    let name = {
        let mut names = orders.consumer_names();
        names.next().await.expect("a consumer").expect("its name")
    };
    let leader = eventually(
        "the trigger's consumer has a leader",
        Duration::from_secs(60),
        async || {
            let info = orders
                .consumer_info(&name)
                .await
                .map_err(|e| e.to_string())?;
            info.cluster
                .as_ref()
                .and_then(|c| c.leader.clone())
                .ok_or_else(|| format!("{:?}", info.cluster))
        },
    )
    .await;
    let leader = NatsCluster::index_of(&leader).expect("one of ours");
    eprintln!("SIGKILL n{leader}, the trigger consumer's leader");
    cluster.servers[leader].kill();
    events_arrive(&gw, &js, "after-the-leader").await;

    cluster.restart_with_another(leader);
    events_arrive(&gw, &js, "after-the-restarts").await;
}

/// A function whose invocations may run past a failover: `SLOW`'s 2 s
/// timeout ends them before a leader is elected.
const PATIENT: &str = r#"
apiVersion: sluice.dev/v1alpha1
kind: Function
metadata: { name: patient }
spec:
  module: { file: "{misbehave}" }
  timeout: 60s
  concurrency: 4
"#;

/// Publishes `PATIENT`, submits `path` to it through `gw` and waits until
/// the invocation runs; returns its status path (`/invocations/<id>`).
async fn running_on_patient(layout: &Layout, gw: &TestGateway, path: &str) -> String {
    publish_dir(
        &Publisher::new(layout.clone()),
        manifest_dir(PATIENT).path(),
    )
    .await;
    gw.wait_routed("default/patient").await;
    let id = gw.submit(path, &[], "").await;
    let status = format!("/invocations/{id}");
    gw.wait_answer(&status, |r| r.json()["state"] == "running")
        .await;
    status
}

/// SIGKILLs the results bucket's leader.
async fn kill_the_results_leader(cluster: &mut NatsCluster, layout: &Layout) {
    let leader = leader_of("KV_sluice-results", layout).await;
    eprintln!("SIGKILL n{leader}, the results' leader");
    cluster.servers[leader].kill();
}

/// Across a SIGKILL of the results bucket's leader: a result long-poll
/// (`?wait=`) under way still answers with the invocation's final record,
/// and a status read sent during the election (every status request reads
/// its record first) waits it out instead of answering 503. Both reads are
/// placed: the long-poll starts once the record is known to be readable
/// and running, the plain read right after the kill. (A long-poll spawned
/// just before the kill sometimes made its first read during the
/// election, which answered 503 then: one CI failure.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_reads_outlast_the_results_leader_loss() {
    let work = tempfile::tempdir().unwrap();
    let (mut cluster, layout, _parts, gw) = one_gateway_one_runtime(work.path()).await;
    let status = running_on_patient(&layout, &gw, "/async/fn/default/patient/sleep/4000").await;
    let poll = {
        let (gw, status) = (gw.clone(), status.clone());
        tokio::spawn(async move { gw.get(&format!("{status}?wait=60s")).await })
    };
    // Long enough for the long-poll to be following the record.
    tokio::time::sleep(Duration::from_millis(300)).await;
    kill_the_results_leader(&mut cluster, &layout).await;
    let read = gw.get(&status).await;
    assert_eq!(read.status, StatusCode::OK, "{}", read.text());
    assert!(
        ["running", "succeeded"].contains(&read.json()["state"].as_str().unwrap_or("")),
        "{}",
        read.text()
    );
    let reply = poll.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(reply.json()["state"], "succeeded", "{}", reply.text());
}

/// A cancel sent while the results bucket elects a leader (its leader
/// SIGKILLed just before) reads the record once one is elected, and the
/// running invocation ends `cancelled`, instead of a 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_outlasts_the_results_leader_loss() {
    let work = tempfile::tempdir().unwrap();
    let (mut cluster, layout, _parts, gw) = one_gateway_one_runtime(work.path()).await;
    let status = running_on_patient(&layout, &gw, "/async/fn/default/patient/sleep/30000").await;
    kill_the_results_leader(&mut cluster, &layout).await;
    let reply = gw.send(Method::DELETE, &status, &[], "").await;
    assert!(
        [StatusCode::ACCEPTED, StatusCode::OK].contains(&reply.status),
        "{} {}",
        reply.status,
        reply.text()
    );
    let record = gw
        .wait_answer(&format!("{status}?wait=20s"), |r| {
            r.status == StatusCode::OK && r.json()["state"] != "running"
        })
        .await;
    assert_eq!(record.json()["state"], "cancelled", "{}", record.text());
}
