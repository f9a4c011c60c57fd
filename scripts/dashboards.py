#!/usr/bin/env python3
"""Writes Sluice's Grafana dashboards (charts/sluice/files/dashboards/*.json)
and the README's description of their panels from the one list below.

    scripts/dashboards.py           write them
    scripts/dashboards.py --check   exit 1 when the committed files differ

The JSON is Grafana's dashboard model (schemaVersion 39), written here, not
produced by Grafana code. Every panel reads a Prometheus data source chosen
by the `datasource` variable; the Function dashboard has a `function`
variable. operator/tests/all/monitoring.rs evaluates every query against a
real Prometheus that scraped a real Sluice run.
"""
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "charts/sluice/files/dashboards"
README = ROOT / "README.md"
BEGIN, END = "<!-- dashboards:begin -->", "<!-- dashboards:end -->"

RATE = "$__rate_interval"
FAILED = 'outcome!~"success|client_error"'


def quantiles(metric, where=""):
    sel = f"{{{where}}}" if where else ""
    return [
        (f"histogram_quantile({q}, sum by (le) (rate({metric}_bucket{sel}[{RATE}])))", f"p{int(q * 100)}")
        for q in (0.5, 0.99)
    ]


# (title, unit, description, [(expr, legend)])
OVERVIEW = [
    ("Invocations/s by outcome", "ops",
     "Attempts finished per second across all functions, by outcome: success, client_error (the function answered 4xx), server_error (5xx), trap, timeout, memory_limit, expired, ...",
     [(f"sum by (outcome) (rate(sluice_invocation_attempts_total[{RATE}]))", "{{outcome}}")]),
    ("Error ratio", "percentunit",
     "Share of attempts that failed on the platform's or the function's side (every outcome but success and client_error). The SluiceErrorRatioHigh alert fires per function above 5%.",
     [(f"sum(rate(sluice_invocation_attempts_total{{{FAILED}}}[{RATE}])) / sum(rate(sluice_invocation_attempts_total[{RATE}]))", "error ratio")]),
    ("Invocation duration p50 / p99", "s",
     "Time from instantiation to the collected response, per attempt, over all functions.",
     quantiles("sluice_invocation_duration_seconds")),
    ("Queue wait p50 / p99", "s",
     "Time from an invocation being stored in the queue to its first delivery to a runtime (NATS mode). A rising p99 means runtimes are too few or too busy.",
     quantiles("sluice_queue_wait_seconds")),
    ("Queue depth by function", "short",
     "Invocations queued or running per function, as the autoscaler reads them from JetStream (the consumer's pending plus ack-pending).",
     [("max by (function) (sluice_queue_depth)", "{{function}}")]),
    ("Dead letters by function", "ops",
     "Invocations dead-lettered per second (retries spent, poison messages, deadlines passed), and NATS trigger events the gateway could not queue; read them with GET /dead-letters/<ns>/<name>.",
     [(f"sum by (function) (rate(sluice_dead_letters_total[{RATE}]) or rate(sluice_events_dead_lettered_total[{RATE}]))", "{{function}}")]),
    ("Replicas desired vs running", "short",
     "Per function, the replicas the autoscaler wants and those running (a dedicated function's Deployment, or the pool's). A lasting gap raises SluiceReplicasBelowDesired.",
     [("max by (function) (sluice_autoscaler_desired_replicas)", "{{function}} desired"),
      ("max by (function) (sluice_autoscaler_replicas)", "{{function}} running")]),
    ("Cold starts/s", "ops",
     "Components loaded by a runtime process because an invocation needed one it did not hold (its first use, or after it was dropped for room), by source: fetched (downloaded and compiled), precompiled (loaded from the on-disk artifact), shared (loaded from the artifact another runtime stored in sluice-artifacts) or ahead (handed over by this process's compile ahead of the first invocation). A component held ahead of its first invocation (compiled or fetched ahead into the component cache's free room) loads nothing then and is not counted.",
     [(f"sum by (source) (rate(sluice_cold_start_seconds_count[{RATE}]))", "{{source}}")]),
    ("Compiles/s by trigger", "ops",
     "Components runtime processes compiled, by trigger: invocation (a load an invocation waited for) or ahead (a registered component compiled before its first invocation and stored in sluice-artifacts). Each takes a CPU for its duration.",
     [(f"sum by (trigger) (rate(sluice_runtime_compiles_total[{RATE}]))", "{{trigger}}")]),
    ("Compiles under way by trigger", "short",
     "Compiles of components in progress in runtime processes, by trigger (invocation or ahead): at most one ahead per process, and as many for invocations as a process has CPUs.",
     [("sum by (trigger) (sluice_runtime_compiles_in_progress)", "{{trigger}}")]),
    ("Auth failures/s", "ops",
     "Requests spec.auth refused, by function and code: unauthenticated (401) or forbidden (403).",
     [(f"sum by (function, code) (rate(sluice_auth_failures_total[{RATE}]))", "{{function}} {{code}}")]),
    ("Accepted invocations/s by route", "ops",
     "Invocations the queue took: HTTP sync (answered by a runtime) and async (answered 202), and NATS trigger events (route event).",
     [(f"sum by (route) (rate(sluice_invocations_accepted_total[{RATE}])) or label_replace(sum(rate(sluice_events_queued_total[{RATE}])), \"route\", \"event\", \"\", \"\")", "{{route}}")]),
    ("Queued bytes by function", "bytes",
     "Bytes of each function's invocations held against --max-queue-bytes (NATS mode: what a gateway queued and no runtime took yet; local mode: queued, waiting for a retry, or running): past it, submits get 429 queue_full with bound bytes.",
     [("max by (function) (sluice_queue_bytes)", "{{function}}")]),
    ("Use by function: time", "s",
     "What each function's attempts used per second, for charging by use: wall-clock time and guest CPU time (epoch ticks, 5 ms resolution), in seconds per second.",
     [(f"sum by (function) (rate(sluice_usage_wall_seconds_total[{RATE}]))", "{{function}} wall"),
      (f"sum by (function) (rate(sluice_usage_guest_cpu_seconds_total[{RATE}]))", "{{function}} guest CPU")]),
    ("Use by function: memory", "bytes",
     "Each attempt's peak linear memory times its wall-clock time, per second: the memory a function held on average (Lambda's GB-seconds, per second).",
     [(f"sum by (function) (rate(sluice_usage_memory_byte_seconds_total[{RATE}]))", "{{function}}")]),
]

F = 'function="$function"'
FUNCTION = [
    ("Accepted", "ops",
     "Invocations of the function the queue took per second: sync, async, and NATS trigger events (route event).",
     [(f"sum by (route) (rate(sluice_invocations_accepted_total{{{F}}}[{RATE}])) or label_replace(sum(rate(sluice_events_queued_total{{{F}}}[{RATE}])), \"route\", \"event\", \"\", \"\")", "{{route}}")]),
    ("Attempts by outcome", "ops",
     "The function's attempts finished per second, by outcome.",
     [(f"sum by (outcome) (rate(sluice_invocation_attempts_total{{{F}}}[{RATE}]))", "{{outcome}}")]),
    ("Running and queued", "short",
     "Invocations of the function queued or running, as the autoscaler reads them from its JetStream consumer.",
     [(f"max(sluice_queue_depth{{{F}}})", "queued or running")]),
    ("Retries and dead letters", "ops",
     "Attempts scheduled again after a retryable failure, redeliveries (a retry, or a runtime that stopped mid-attempt) and invocations dead-lettered, per second.",
     [(f"sum(rate(sluice_retries_total{{{F}}}[{RATE}]))", "retried"),
      (f"sum(rate(sluice_redeliveries_total{{{F}}}[{RATE}]))", "redelivered"),
      (f"sum(rate(sluice_dead_letters_total{{{F}}}[{RATE}]))", "dead-lettered")]),
    ("Replicas", "short",
     "Replicas the autoscaler wants for the function and replicas running.",
     [(f"max(sluice_autoscaler_desired_replicas{{{F}}})", "desired"),
      (f"max(sluice_autoscaler_replicas{{{F}}})", "running")]),
    ("Scaling decisions", "short",
     "Changes of the desired replicas in the range, by direction and reason (Demand, ScaleDownDelay, Idle, IdleTimeout, MinReplicas, MaxReplicas, Pinned); each is also a Kubernetes Event on the Function.",
     [(f"sum by (direction, reason) (increase(sluice_autoscaler_decisions_total{{{F}}}[{RATE}]))", "{{direction}} {{reason}}")]),
    ("Duration p50 / p99", "s",
     "The function's attempt duration.",
     quantiles("sluice_invocation_duration_seconds", F)),
    ("Queue wait p50 / p99", "s",
     "How long the function's invocations waited in the queue for a runtime.",
     quantiles("sluice_queue_wait_seconds", F)),
    ("Ready", "short",
     "1 while the Function's Ready condition is True; 0 (and the SluiceFunctionNotReady alert) while it is not: kubectl describe fn names the reason.",
     [(f"max(sluice_function_ready{{{F}}})", "ready")]),
]

PLATFORM = [
    ("Gateway requests/s by route and status", "ops",
     "Requests the gateways answered, by route kind (sync, async, status, dead_letters, unrouted) and HTTP status.",
     [(f"sum by (route, status) (rate(sluice_http_requests_total[{RATE}]))", "{{route}} {{status}}")]),
    ("Gateway errors/s by code", "ops",
     "Requests answered with a JSON error, by its stable code (unknown_function, queue_full, body_too_large, ...).",
     [(f"sum by (code) (rate(sluice_http_errors_total[{RATE}]))", "{{code}}")]),
    ("Gateway connections", "short",
     "Connections open per gateway, and those answered 503 and closed at --max-connections (sized from the container's memory).",
     [("sum by (instance) (sluice_connections)", "{{instance}} open"),
      (f"sum by (instance) (rate(sluice_connections_refused_total[{RATE}]))", "{{instance}} refused/s")]),
    ("Gateway buffered bytes", "bytes",
     "Request and synchronous response bodies a gateway holds now, against its --max-buffered: past it, callers get 503 with Retry-After.",
     [("sum by (instance) (sluice_buffered_bytes)", "{{instance}} held"),
      ("max by (instance) (sluice_buffered_limit_bytes)", "{{instance}} limit")]),
    ("Callbacks dropped/s", "ops",
     "Callbacks a runtime did not deliver because too many deliveries were under way (their records stay readable at /invocations/<id>).",
     [(f"sum by (instance) (rate(sluice_callbacks_dropped_total[{RATE}]))", "{{instance}}")]),
    ("Trigger events dropped/s", "ops",
     "Events from core NATS trigger subjects a gateway dropped because the trigger's buffer (--event-buffer) was full; events of subjects a stream holds are never dropped.",
     [(f"sum by (instance) (rate(sluice_events_dropped_total[{RATE}]))", "{{instance}}")]),
    ("Component cache", "bytes",
     "Bytes of compiled components a runtime holds in memory (loaded on a function's first use), at most --component-cache beside the newest.",
     [("sum by (instance) (sluice_runtime_component_bytes)", "{{instance}}")]),
    ("Components in memory", "short",
     "Compiled components a runtime holds, and those dropped for room since it started (reloaded from disk, or from sluice-artifacts, on their next use).",
     [("sum by (instance) (sluice_runtime_components_loaded)", "{{instance}} held"),
      ("sum by (instance) (sluice_runtime_components_evicted)", "{{instance}} evicted")]),
    ("Modules deleted", "short",
     "Modules the operator deleted from the module store in the range because no registry entry had referred to them for --module-gc-after.",
     [(f"sum(increase(sluice_modules_collected_total[{RATE}]))", "deleted")]),
    ("NATS connections", "short",
     "1 per process (gateway, runtime, operator) connected to NATS; a 0 lasting 2 minutes raises SluiceNatsUnreachable.",
     [("sluice_nats_connected", "{{job}} {{instance}}")]),
    ("JetStream storage use", "bytes",
     "Bytes JetStream stores for Sluice's account, against its bound (the account's limit, else the operator's --jetstream-storage-bound).",
     [("max(sluice_jetstream_storage_bytes)", "used"),
      ("max(sluice_jetstream_storage_bound_bytes > 0)", "bound")]),
    ("Runtime instances in use", "short",
     "Component instances alive per runtime against its slots (--max-instances, each reserving memory in the pooling allocator): when equal, invocations wait.",
     [("sum by (instance) (sluice_runtime_instances)", "{{instance}} in use"),
      ("sum by (instance) (sluice_runtime_instance_slots)", "{{instance}} slots")]),
    ("Reconciles/s by result", "ops",
     "Function reconciles, by result: ready, not_ready (the Function has a problem its status names) or error (retried with backoff).",
     [(f"sum by (result) (rate(sluice_operator_reconciles_total[{RATE}]))", "{{result}}")]),
    ("Reconcile failures by reason", "short",
     "Reconciles that left a Function not Ready in the range, by condition reason (ConfigMapNotFound, ModuleInvalid, ...).",
     [(f"sum by (reason) (increase(sluice_operator_reconcile_failures_total[{RATE}]))", "{{reason}}")]),
    ("Reconcile duration p99", "s",
     "Time one reconcile took.",
     [(f"histogram_quantile(0.99, sum by (le) (rate(sluice_operator_reconcile_duration_seconds_bucket[{RATE}])))", "p99")]),
    ("Functions by Ready", "short",
     "Functions the leading operator reconciled, Ready or not.",
     [("max by (ready) (sluice_operator_functions)", "ready={{ready}}")]),
    ("Operator leader", "short",
     "Replicas leading (1) and waiting (0). None leading raises SluiceOperatorNoLeader.",
     [("sluice_operator_leader", "{{instance}}")]),
    ("Autoscaler tick duration p99", "s",
     "Time one autoscaler tick took: reading every queue, deciding, writing.",
     [(f"histogram_quantile(0.99, sum by (le) (rate(sluice_autoscaler_tick_duration_seconds_bucket[{RATE}])))", "p99")]),
    ("Autoscaler failures/s", "ops",
     "Ticks that could not read the queues (NATS unreachable) and scale writes that failed, by Deployment.",
     [(f"sum(rate(sluice_autoscaler_tick_failures_total[{RATE}]))", "ticks failed"),
      (f"sum by (deployment) (rate(sluice_autoscaler_scale_failures_total[{RATE}]))", "{{deployment}} scale failed")]),
    ("Scale latency p99 by trigger", "s",
     "From seeing demand (a queue read: tick, or a first invocation at zero: wake) to the scale written.",
     [(f"histogram_quantile(0.99, sum by (le, trigger) (rate(sluice_autoscaler_decision_latency_seconds_bucket[{RATE}])))", "{{trigger}}")]),
]

DASHBOARDS = [
    ("overview", "Sluice / Overview", "Every function at a glance: traffic, errors, latency, queues, dead letters and scaling.", OVERVIEW, False),
    ("function", "Sluice / Function", "One function's whole life: accepted, running, retried, dead-lettered, its replicas and scaling decisions, its latency.", FUNCTION, True),
    ("platform", "Sluice / Platform", "The parts' health: gateway, runtimes, operator, autoscaler and NATS JetStream.", PLATFORM, False),
]

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def dashboard(slug, title, description, panels, per_function):
    variables = [{
        "name": "datasource", "label": "Data source", "type": "datasource",
        "query": "prometheus", "current": {}, "hide": 0, "refresh": 1,
    }]
    if per_function:
        query = "label_values(sluice_invocation_attempts_total, function)"
        variables.append({
            "name": "function", "label": "Function", "type": "query",
            "datasource": DATASOURCE, "definition": query,
            "query": {"query": query, "refId": "function"},
            "current": {}, "hide": 0, "refresh": 2, "sort": 1,
            "includeAll": False, "multi": False,
        })
    out = []
    for i, (ptitle, unit, pdesc, targets) in enumerate(panels):
        out.append({
            "id": i + 1, "type": "timeseries", "title": ptitle, "description": pdesc,
            "datasource": DATASOURCE,
            "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i // 2) * 8},
            "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
            "options": {"legend": {"displayMode": "list", "placement": "bottom"},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": [
                {"refId": chr(ord("A") + j), "datasource": DATASOURCE, "expr": expr,
                 "legendFormat": legend, "range": True}
                for j, (expr, legend) in enumerate(targets)
            ],
        })
    return {
        "uid": f"sluice-{slug}", "title": title, "description": description,
        "tags": ["sluice"], "editable": True, "graphTooltip": 1,
        "schemaVersion": 39, "version": 1, "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"}, "timezone": "",
        "templating": {"list": variables}, "annotations": {"list": []},
        "links": [], "panels": out,
    }


def files():
    written = {}
    for slug, title, description, panels, per_function in DASHBOARDS:
        body = json.dumps(dashboard(slug, title, description, panels, per_function), indent=2) + "\n"
        written[OUT / f"{slug}.json"] = body
    return written


def readme_section():
    lines = [BEGIN]
    for slug, title, description, panels, _ in DASHBOARDS:
        lines += ["", f"**{title}** (`{slug}.json`): {description}", ""]
        lines += [f"- *{p[0]}*: {p[2]}" for p in panels]
    lines += ["", END]
    return "\n".join(lines)


def readme(text):
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + readme_section() + text[end:]


def main():
    check = sys.argv[1:] == ["--check"]
    wanted = files()
    text = README.read_text()
    wanted[README] = readme(text)
    stale = [p for p, body in wanted.items() if not p.exists() or p.read_text() != body]
    if check:
        for p in stale:
            print(f"{p.relative_to(ROOT)} differs from scripts/dashboards.py's output; run scripts/dashboards.py", file=sys.stderr)
        sys.exit(1 if stale else 0)
    for p in stale:
        p.write_text(wanted[p])
        print(f"wrote {p.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
