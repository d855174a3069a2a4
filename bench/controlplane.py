"""Benchmarks 1-3: the operator against a real control plane, as the number of ModelDeployments grows.

One operator process (``modelops run --all-namespaces`` under its ServiceAccount, the CLI's
production defaults: 60 s resync, 1 s analysis tick) watches a population of minimal
ModelDeployments (fixed replicas: one Deployment, two Services, one kwok pod each) that grows
0 -> 1 -> 100 -> 500 -> 1000. The population is created by the admin, 8 threads, 4 namespaces.
At each size, once every ModelDeployment is Ready and the operator quiet, as asked:

1. **Reconcile latency** (sizes 1, 100, 500): a probe ModelDeployment is created in the first
   of the population's namespaces (beside a quarter of the others); watches (admin side) timestamp when its last child appears and when it is Ready
   (condition Ready=True for its generation). ``--probes`` probes, one at a time; p50 and p99
   by nearest rank (with 20 probes p99 is the slowest one). The probes are deleted afterwards.
2. **API writes per periodic pass** (size 500): the apiserver's audit log is read for writes by
   ``system:serviceaccount:modelops-system:modelops`` over ``--passes`` complete periodic passes.
   The operator exposes no pass duration; it is taken from its ``modelops_reconcile_total``
   counter, polled every 0.5 s (a pass adds one per object, and nothing else runs then).
3. **Memory** (sizes 0, 100, 500, 1000): VmRSS of the operator process, median of the samples
   over 10 s. One process grows through the sizes, as a long-running operator would.

Also recorded, per growth step: reconcile passes and API writes per new ModelDeployment.

    .venv/bin/python -m bench.controlplane [--state-dir .devcluster] [--probes 20] [--passes 3]

Writes bench/results/controlplane.json and prints the tables. The namespaces it creates are
deleted at the end without waiting for the garbage collector (their names carry a run id, so a
second run never meets a terminating one).
"""

import argparse
import datetime
import statistics
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client

from bench import common
from bench.common import AuditFilter
from modelops.devcluster import bootstrap, cluster
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.localoperator import OPERATOR_USER, LocalOperator
from modelops.planning.children import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, MANAGED_BY

POPULATION_NAMESPACES = 4
CREATE_THREADS = 8
SAMPLE_SECONDS = 0.5
QUIET_SECONDS = 3.0
READY_TIMEOUT_SECONDS = 900
PROBE_TIMEOUT_SECONDS = 120
PROBE_GAP_SECONDS = 0.3
PROBE_LABEL = "modelops.dev/bench-probe"


# --- the operator's counters over time ----------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    monotonic: float
    wall: float
    passes: float  # modelops_reconcile_total, every result
    reconcile_seconds: float  # modelops_reconcile_duration_seconds_sum
    rss_kib: int


@dataclass(frozen=True)
class Burst:
    """A stretch of samples during which the pass counter kept growing."""

    start: Sample  # the last sample before the counter moved
    end: Sample  # the sample at which it stopped moving

    @property
    def passes(self) -> float:
        return self.end.passes - self.start.passes

    @property
    def seconds(self) -> float:
        return self.end.monotonic - self.start.monotonic


def find_bursts(samples: Sequence[Sample], quiet_seconds: float) -> list[Burst]:
    """Splits a counter's samples into bursts of growth separated by at least ``quiet_seconds`` without growth.

    A burst still growing at the last sample is left out (it may not be finished).
    """
    bursts: list[Burst] = []
    start: Sample | None = None
    last_growth: Sample | None = None
    for previous, current in zip(samples, samples[1:]):
        if current.passes > previous.passes:
            if start is None:
                start = previous
            last_growth = current
        elif start is not None and last_growth is not None and current.monotonic - last_growth.monotonic >= quiet_seconds:
            bursts.append(Burst(start, last_growth))
            start = last_growth = None
    return bursts


@dataclass
class Sampler:
    """Polls the operator's /metrics and VmRSS every ``SAMPLE_SECONDS`` in a thread."""

    operator: LocalOperator
    samples: list[Sample] = field(default_factory=list)
    failures: int = 0  # polls that got no answer (the operator's /metrics is slow under load)
    last_failure: str = ""
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        threading.Thread(target=self._run, daemon=True, name="sampler").start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_SECONDS):
            try:
                text = self.operator.metrics()
                sample = Sample(
                    time.monotonic(), time.time(),
                    common.metric_value(text, "modelops_reconcile_total"),
                    common.metric_value(text, "modelops_reconcile_duration_seconds_sum"),
                    common.operator_rss_kib(self.operator),
                )
            except (httpx.HTTPError, OSError, ValueError) as error:
                self.failures += 1  # one missed sample; the next poll is half a second away
                self.last_failure = f"{type(error).__name__}: {error}"[:200]
                continue
            with self._lock:
                self.samples.append(sample)

    def since(self, monotonic: float) -> list[Sample]:
        with self._lock:
            return [s for s in self.samples if s.monotonic >= monotonic]

    def latest(self, timeout: float = 30) -> Sample:
        """The newest sample, waiting for one taken in the last second."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = self.since(time.monotonic() - 1)
            if recent:
                return recent[-1]
            time.sleep(SAMPLE_SECONDS)
        raise TimeoutError(f"no answer from the operator's /metrics for {timeout}s ({self.last_failure})")

    def wait_quiet(self, seconds: float, timeout: float) -> None:
        """Until the pass counter has not moved for ``seconds`` (a periodic pass in progress is waited out)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            recent = self.since(time.monotonic() - seconds)
            # at least two samples a stretch, and none missed at its start: a slow /metrics answer is not quiet
            now = time.monotonic()
            covered = len(recent) >= 2 and recent[0].monotonic - (now - seconds) < 2 * SAMPLE_SECONDS and now - recent[-1].monotonic < 2 * SAMPLE_SECONDS
            if covered and recent[0].passes == recent[-1].passes:
                return
            time.sleep(SAMPLE_SECONDS)
        raise TimeoutError(
            f"the operator did not go quiet for {seconds}s within {timeout}s ({self.failures} failed polls, last: {self.last_failure})"
        )


# --- the population -------------------------------------------------------------------------------


@dataclass
class Population:
    """Background ModelDeployments ``m-0000``... spread over a few namespaces, created by the admin."""

    state: ClusterState
    namespaces: list[str]
    size: int = 0

    def grow_to(self, size: int) -> float:
        """Creates ModelDeployments up to ``size`` (8 threads); returns the seconds the creates took."""
        local = threading.local()

        def create(index: int) -> None:
            if not hasattr(local, "custom"):
                local.custom = client.CustomObjectsApi(bootstrap.api_client(self.state.kubeconfig))
            namespace = self.namespaces[index % len(self.namespaces)]
            manifest = common.minimal_modeldeployment(f"m-{index:04d}", namespace)
            local.custom.create_namespaced_custom_object(
                common.GROUP, common.VERSION, namespace, common.PLURAL, manifest, _request_timeout=common.REQUEST_TIMEOUT_SECONDS
            )

        started = time.monotonic()
        with ThreadPoolExecutor(CREATE_THREADS) as pool:
            list(pool.map(create, range(self.size, size)))
        self.size = size
        return time.monotonic() - started

    def ready_count(self, admin: client.ApiClient) -> int:
        return sum(common.is_ready(body) for namespace in self.namespaces for body in common.list_modeldeployments(admin, namespace))

    def wait_ready(self, admin: client.ApiClient) -> None:
        last = -1

        def everything_ready() -> bool:
            nonlocal last
            ready = self.ready_count(admin)
            if ready != last:
                common.log(f"  {ready}/{self.size} Ready")
                last = ready
            return ready >= self.size

        bootstrap.wait_for(f"{self.size} ModelDeployments to be Ready", everything_ready, timeout=READY_TIMEOUT_SECONDS, interval=3)


# --- benchmark 1: reconcile latency ---------------------------------------------------------------


@dataclass
class ProbeRecord:
    created: float = 0.0  # monotonic, just before the create request
    ready: float | None = None
    children: dict[str, float] = field(default_factory=dict)  # "Kind/name" -> first seen
    done: threading.Event = field(default_factory=threading.Event)


class ProbeRecorder:
    """Watch handlers: when each probe's children first appear, and when the probe is first Ready."""

    def __init__(self) -> None:
        self.records: defaultdict[str, ProbeRecord] = defaultdict(ProbeRecord)
        self._lock = threading.Lock()

    def modeldeployment(self, kind: str, body: dict[str, Any], arrived: float) -> None:
        if kind == "DELETED" or not common.is_ready(body):
            return
        with self._lock:
            record = self.records[body["metadata"]["name"]]
            if record.ready is None:
                record.ready = arrived
                record.done.set()

    def expect(self, name: str) -> ProbeRecord:
        """Registers a probe about to be created; children of anything else are ignored."""
        with self._lock:
            return self.records[name]

    def child(self, kind: str, body: dict[str, Any], arrived: float) -> None:
        owner = (body["metadata"].get("labels") or {}).get(LABEL_DEPLOYMENT)
        key = f"{body.get('kind') or '?'}/{body['metadata']['name']}"
        with self._lock:
            if kind != "DELETED" and owner in self.records:
                self.records[owner].children.setdefault(key, arrived)


def probe_watchers(admin: client.ApiClient, namespace: str, recorder: ProbeRecorder) -> list[common.Watcher]:
    managed = f"{LABEL_MANAGED_BY}={MANAGED_BY}"
    return [
        common.Watcher(common.custom_list(admin), namespace, recorder.modeldeployment, f"{PROBE_LABEL}=true"),
        common.Watcher(client.AppsV1Api(admin).list_namespaced_deployment, namespace, recorder.child, managed),
        common.Watcher(client.CoreV1Api(admin).list_namespaced_service, namespace, recorder.child, managed),
        common.Watcher(client.AutoscalingV2Api(admin).list_namespaced_horizontal_pod_autoscaler, namespace, recorder.child, managed),
    ]


def probe_manifest(name: str, namespace: str) -> dict[str, Any]:
    manifest = common.minimal_modeldeployment(name, namespace)
    manifest["metadata"]["labels"][PROBE_LABEL] = "true"
    return manifest


def measure_latency(admin: client.ApiClient, namespace: str, size: int, probes: int) -> dict[str, Any]:
    """``probes`` probes in ``namespace`` (one of the population's), one after the other, each waited to Ready; then deleted."""
    recorder = ProbeRecorder()
    custom = client.CustomObjectsApi(admin)
    names = [f"probe-{size}-{index:02d}" for index in range(probes)]
    with common.watching(probe_watchers(admin, namespace, recorder)) as watchers:
        for name in names:
            record = recorder.expect(name)
            record.created = time.monotonic()
            custom.create_namespaced_custom_object(
                common.GROUP, common.VERSION, namespace, common.PLURAL, probe_manifest(name, namespace),
                _request_timeout=common.REQUEST_TIMEOUT_SECONDS,
            )
            if not record.done.wait(PROBE_TIMEOUT_SECONDS):
                raise TimeoutError(f"probe {name} was not Ready within {PROBE_TIMEOUT_SECONDS}s")
            time.sleep(PROBE_GAP_SECONDS)  # let the probe's last status write land before the next one starts
        time.sleep(1)
        failed = [watcher.error for watcher in watchers if watcher.error]
        if failed:
            raise RuntimeError(f"a watch failed: {failed[0]}")
    delete_probes(admin, namespace)
    return latency_row(size, [recorder.records[name] for name in names])


def latency_row(size: int, records: Sequence[ProbeRecord]) -> dict[str, Any]:
    children_seconds = [max(r.children.values()) - r.created for r in records]
    ready_seconds = [(r.ready or 0.0) - r.created for r in records]
    return {
        "others": size,
        "children_seconds": common.summarize(children_seconds),
        "ready_seconds": common.summarize(ready_seconds),
        "children_per_probe": sorted({len(r.children) for r in records}),
        "child_kinds": sorted({key.split("/")[0] for r in records for key in r.children}),
        "children_after_ready": sum(1 for r in records if max(r.children.values()) > (r.ready or 0)),
        "samples": [{"children": round(c, 3), "ready": round(d, 3)} for c, d in zip(children_seconds, ready_seconds)],
    }


def delete_probes(admin: client.ApiClient, namespace: str) -> None:
    custom = client.CustomObjectsApi(admin)
    selector = f"{PROBE_LABEL}=true"
    custom.delete_collection_namespaced_custom_object(
        common.GROUP, common.VERSION, namespace, common.PLURAL, label_selector=selector, _request_timeout=common.REQUEST_TIMEOUT_SECONDS
    )
    bootstrap.wait_for("the probes to be deleted", lambda: not common.list_modeldeployments(admin, namespace, selector), timeout=60)


# --- benchmark 2: writes per periodic pass --------------------------------------------------------


def read_audit(path: Path, offset: int) -> list[str]:
    """Audit-log lines from byte ``offset`` on (from the start if the log was rotated since)."""
    with path.open("rb") as handle:
        handle.seek(0, 2)
        if handle.tell() < offset:
            offset = 0
        handle.seek(offset)
        return handle.read().decode(errors="replace").splitlines()


def writes_by_pass(entries: Iterable[dict[str, Any]], bursts: Sequence[Burst], slack_seconds: float = 1.0) -> tuple[list[int], int]:
    """Writes that fall in each pass (by wall time, with ``slack_seconds`` either side), and those outside every pass."""
    per_pass = [0] * len(bursts)
    outside = 0
    for entry in entries:
        at = datetime.datetime.fromisoformat(entry["requestReceivedTimestamp"].replace("Z", "+00:00")).timestamp()
        index = next(
            (i for i, b in enumerate(bursts) if b.start.wall - slack_seconds <= at <= b.end.wall + slack_seconds), None
        )
        if index is None:
            outside += 1
        else:
            per_pass[index] += 1
    return per_pass, outside


def measure_writes(
    state: ClusterState, sampler: Sampler, namespaces: Sequence[str], size: int, passes: int, resync_seconds: float
) -> dict[str, Any]:
    """Audit-log writes by the operator over ``passes`` complete periodic passes, with their durations and RSS."""
    offset = state.layout.audit_log.stat().st_size
    since, started = common.utc_now(), time.monotonic()
    deadline = started + (passes + 1) * (resync_seconds + 300)
    while True:
        bursts = [b for b in find_bursts(sampler.since(started), QUIET_SECONDS) if b.passes >= size]
        if len(bursts) >= passes:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"saw {len(bursts)} of {passes} periodic passes")
        time.sleep(1)
    until = common.utc_now()
    window = sampler.since(started)
    bursts = bursts[:passes]
    lines = read_audit(state.layout.audit_log, offset)
    everywhere = common.audit_writes(lines, AuditFilter(user=OPERATOR_USER, since=since, until=until))
    population = [e for e in everywhere if (e.get("objectRef") or {}).get("namespace") in namespaces]
    per_pass, outside = writes_by_pass(population, bursts)
    return {
        "modeldeployments": size,
        "passes": passes,
        "window_seconds": round(window[-1].monotonic - started, 1),
        "writes_per_pass": per_pass,
        "writes_between_passes": outside,
        "writes_anywhere_in_window": len(everywhere),
        "writes_by_kind": common.describe_writes(everywhere),
        "objects_per_pass": [b.passes for b in bursts],
        "pass_seconds": [round(b.seconds, 1) for b in bursts],
        "reconcile_ms_per_object": [round(1000 * (b.end.reconcile_seconds - b.start.reconcile_seconds) / b.passes, 1) for b in bursts],
        "seconds_between_pass_starts": [round(b.start.monotonic - a.start.monotonic, 1) for a, b in zip(bursts, bursts[1:])],
        "rss_mib_median": round(statistics.median(s.rss_kib for s in window) / 1024, 1),
        "rss_mib_max": round(max(s.rss_kib for s in window) / 1024, 1),
    }


# --- benchmark 3: memory ---------------------------------------------------------------------------


def measure_rss(sampler: Sampler, seconds: float = 10) -> dict[str, Any]:
    """VmRSS over ``seconds`` of a quiet operator (population Ready, no pass running when it starts)."""
    started = time.monotonic()
    time.sleep(seconds)
    values = [s.rss_kib for s in sampler.since(started)]
    return {"rss_mib_median": round(statistics.median(values) / 1024, 1), "rss_mib_max": round(max(values) / 1024, 1), "samples": len(values)}


# --- the run ---------------------------------------------------------------------------------------


@dataclass
class Plan:
    latency_sizes: list[int]
    rss_sizes: list[int]
    writes_sizes: list[int]
    probes: int
    passes: int

    def sizes(self) -> list[int]:
        return sorted({*self.latency_sizes, *self.rss_sizes, *self.writes_sizes})


def growth_row(
    state: ClusterState, sampler: Sampler, namespaces: Sequence[str], before: int, after: int, started: Sample, since: str, offset: int
) -> dict[str, Any]:
    """What adding ``after - before`` ModelDeployments cost the operator: passes and writes per new one."""
    now = sampler.latest()
    writes = common.audit_writes(read_audit(state.layout.audit_log, offset), AuditFilter(user=OPERATOR_USER, since=since, namespaces=frozenset(namespaces)))
    added = after - before
    return {
        "from": before,
        "to": after,
        "seconds_to_all_ready_and_quiet": round(now.monotonic - started.monotonic, 1),
        "passes_per_new_modeldeployment": round((now.passes - started.passes) / added, 1),
        "writes_per_new_modeldeployment": round(len(writes) / added, 1),
        "writes_by_kind": common.describe_writes(writes),
    }


def grow(plan_size: int, state: ClusterState, admin: client.ApiClient, sampler: Sampler, population: Population, timeout: float) -> dict[str, Any]:
    common.log(f"growing the population from {population.size} to {plan_size}")
    before, started, since = population.size, sampler.latest(), common.utc_now()
    offset = state.layout.audit_log.stat().st_size
    population.grow_to(plan_size)
    population.wait_ready(admin)
    sampler.wait_quiet(QUIET_SECONDS, timeout=timeout)
    return growth_row(state, sampler, population.namespaces, before, plan_size, started, since, offset)


def run_sizes(
    results: dict[str, list[dict[str, Any]]], plan: Plan, state: ClusterState, admin: client.ApiClient, sampler: Sampler,
    population: Population, probe_namespace: str, settings: common.OperatorSettings,
) -> None:
    """Grows the population through the plan's sizes; at each, memory first, then probes, then writes.

    Right after the operator goes quiet a periodic pass has usually just ended, so the probes and
    the memory samples fit in the gap before the next one and the writes window starts after them.
    """
    quiet_timeout = settings.resync_seconds + 300
    sampler.wait_quiet(QUIET_SECONDS, timeout=quiet_timeout)
    for size in plan.sizes():
        if size > population.size:
            results["growth"].append(grow(size, state, admin, sampler, population, quiet_timeout))
            common.log(f"  {results['growth'][-1]}")
        if size in plan.rss_sizes:
            results["rss"].append({"modeldeployments": size, **measure_rss(sampler)})
            common.log(f"  {results['rss'][-1]}")
        if size in plan.latency_sizes:
            common.log(f"{size}: {plan.probes} probes")
            results["latency"].append(measure_latency(admin, probe_namespace, size, plan.probes))
            common.log(f"  children {results['latency'][-1]['children_seconds']} ready {results['latency'][-1]['ready_seconds']}")
        if size in plan.writes_sizes:
            sampler.wait_quiet(QUIET_SECONDS, timeout=quiet_timeout)
            common.log(f"{size}: counting writes over {plan.passes} periodic passes (resync {settings.resync_seconds:g}s)")
            results["writes"].append(measure_writes(state, sampler, population.namespaces, size, plan.passes, settings.resync_seconds))
            common.log(f"  {results['writes'][-1]}")


def print_tables(report: dict[str, Any]) -> None:
    print()
    print(common.markdown_table(
        ["other ModelDeployments", "to all children, p50", "p99", "to Ready, p50", "p99", "probes"],
        [
            [r["others"], f"{r['children_seconds']['p50'] * 1000:.0f} ms", f"{r['children_seconds']['p99'] * 1000:.0f} ms",
             f"{r['ready_seconds']['p50'] * 1000:.0f} ms", f"{r['ready_seconds']['p99'] * 1000:.0f} ms", r["ready_seconds"]["n"]]
            for r in report["latency"]
        ],
    ))
    print()
    print(common.markdown_table(
        ["ModelDeployments", "writes per pass", "pass duration", "reconcile per object", "between pass starts"],
        [
            [w["modeldeployments"], ", ".join(map(str, w["writes_per_pass"])), ", ".join(f"{s} s" for s in w["pass_seconds"]),
             ", ".join(f"{m} ms" for m in w["reconcile_ms_per_object"]), ", ".join(f"{s} s" for s in w["seconds_between_pass_starts"])]
            for w in report["writes"]
        ],
    ))
    print()
    print(common.markdown_table(["ModelDeployments", "operator RSS (median)"], [[r["modeldeployments"], f"{r['rss_mib_median']} MiB"] for r in report["rss"]]))
    print()
    print(common.markdown_table(
        ["growth", "to Ready and quiet", "passes per new ModelDeployment", "writes per new ModelDeployment"],
        [[f"{g['from']} to {g['to']}", f"{g['seconds_to_all_ready_and_quiet']} s", g["passes_per_new_modeldeployment"], g["writes_per_new_modeldeployment"]]
         for g in report["growth"]],
    ))


def series(samples: Sequence[Sample], start: float) -> list[list[float]]:
    """The sampler's series, one row a second: [seconds, passes, reconcile seconds, RSS MiB]."""
    rows, last = [], -1.0
    for sample in samples:
        if sample.monotonic - last >= 1:
            rows.append([round(sample.monotonic - start, 1), sample.passes, round(sample.reconcile_seconds, 2), round(sample.rss_kib / 1024, 1)])
            last = sample.monotonic
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", default=".devcluster")
    parser.add_argument("--latency-sizes", type=int, nargs="+", default=[1, 100, 500])
    parser.add_argument("--rss-sizes", type=int, nargs="+", default=[0, 100, 500, 1000])
    parser.add_argument("--writes-sizes", type=int, nargs="+", default=[500])
    parser.add_argument("--probes", type=int, default=20)
    parser.add_argument("--passes", type=int, default=3, help="periodic passes to count writes over (each costs resync + pass time)")
    parser.add_argument("--resync-seconds", type=float, default=60, help="the operator's --resync-seconds (60: the CLI default)")
    arguments = parser.parse_args()
    plan = Plan(arguments.latency_sizes, arguments.rss_sizes, arguments.writes_sizes, arguments.probes, arguments.passes)
    settings = common.OperatorSettings(resync_seconds=arguments.resync_seconds)

    began = time.monotonic()
    report: dict[str, Any] = {"benchmark": "controlplane", "date": time.strftime("%Y-%m-%d %H:%M"), "machine": common.machine(), "source": common.source()}
    state = cluster.up(arguments.state_dir, progress=lambda message: common.log(f"[devcluster] {message}"))
    run_id = time.strftime("%H%M%S")
    namespaces = [f"bench-cp-{run_id}-{index}" for index in range(POPULATION_NAMESPACES)]
    probe_namespace = namespaces[0]  # a new model lands among others: its passes list children in a populated namespace
    with bootstrap.api_client(state.kubeconfig) as admin:
        for namespace in namespaces:
            common.ensure_namespace(admin, namespace)
        operator = common.start_operator(state, admin, settings, common.RESULTS / "controlplane-operator.log")
        sampler = Sampler(operator)
        results: dict[str, list[dict[str, Any]]] = {"latency": [], "writes": [], "rss": [], "growth": []}
        report |= results
        report["operator"] = {"resync_seconds": settings.resync_seconds, "analysis_tick_seconds": settings.analysis_tick_seconds, "scope": "--all-namespaces"}
        try:
            sampler.start()
            run_sizes(results, plan, state, admin, sampler, Population(state, namespaces), probe_namespace, settings)
        except BaseException as error:
            report["error"] = f"{type(error).__name__}: {error}"  # what was measured before it is still written
            raise
        finally:
            sampler.stop()
            report["operator_problems"] = operator.logged_problems()[:20]
            operator.stop()
            # Not waited for: the garbage collector takes about a minute for 1000 ModelDeployments
            # and their children, and nothing after this needs it done.
            common.delete_namespaces(admin, namespaces, timeout=0)
            report |= {"metrics_polls_failed": sampler.failures, "samples": series(sampler.samples, began), "wall_seconds": round(time.monotonic() - began, 1)}
            common.write_report("controlplane", report)
    print_tables(report)
    print(f"\nwall time {report['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
