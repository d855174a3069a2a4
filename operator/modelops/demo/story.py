"""`modelops demo`: the whole loop, live, on the devcluster, each stage verified before the next.

1. fraud-detector 1.0.0 is deployed and becomes Healthy.
2. 2.0.0, a good model, goes out as a canary through the Gateway API router, passes analysis
   step by step, and is promoted.
3. 3.0.0, a slow model, goes out as a canary, fails its latency check and is rolled back; the
   blocked revision and the reason show in status.
4. The input data drifts; the drift check fails for its ``for`` duration; one retraining Job
   runs and its candidate appears in status.

The operator runs as a local process under its own ServiceAccount and sees only the Kubernetes
API and Prometheus. The devcluster's dev-only pod runner plays the kubelet for the model-server
pods and the retraining Job, and a traffic generator routes requests by the HTTPRoute's weights.
"""

import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from modelops.api import v1alpha1
from modelops.demo import models, timeline
from modelops.demo.traffic import Gateway
from modelops.devcluster import bootstrap, cluster, processes, toolchain
from modelops.devcluster.cluster import ClusterState
from modelops.devcluster.errors import DevclusterError
from modelops.devcluster.layout import CacheLayout, cache_root, state_layout
from modelops.devcluster.localoperator import Kubectl, LocalOperator, install_manifests, service_account_kubeconfig

NAME = "fraud-detector"
SERVER_IMAGE = "ghcr.io/modelops/model-server:0.1.0"
TRAINER_IMAGE = "ghcr.io/modelops/model-trainer:0.1.0"
LATENCY_LIMIT_SECONDS = 0.05
DRIFT_LIMIT = 0.25
DRIFT_SHIFT = 1.5
TRAFFIC_RATE = 20
STEP_WEIGHTS = (20, 50, 80)
API_TIMEOUT_SECONDS = 10
SAMPLE_SECONDS = 2
Status = dict[str, Any]
MARKER = ".modelops-demo"


class StageFailed(Exception):
    """A stage did not happen as the story says; the message says what was expected and what was seen."""


@dataclass
class Settings:
    state_dir: Path
    output_dir: Path
    namespace: str = "demo"
    keep: bool = False


@dataclass
class StageResult:
    title: str
    seconds: float
    outcome: str


@dataclass
class Demo:
    settings: Settings
    echo: Callable[[str], None] = print
    started: float = field(default_factory=time.monotonic)
    results: list[StageResult] = field(default_factory=list)
    samples: list[timeline.Sample] = field(default_factory=list)
    markers: list[timeline.Marker] = field(default_factory=list)
    state: ClusterState | None = None
    api: client.ApiClient | None = None
    gateway: Gateway | None = None
    kubectl: Kubectl | None = None
    operator: LocalOperator | None = None
    helpers: list[processes.ProcessRecord] = field(default_factory=list)
    started_cluster: bool = False
    artifacts: dict[str, models.Artifact] = field(default_factory=dict)
    profile_uri: str = ""
    recent_data_uri: str = ""

    # ---- plumbing -------------------------------------------------------------------------

    @property
    def out(self) -> Path:
        return self.settings.output_dir

    @property
    def ns(self) -> str:
        return self.settings.namespace

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, line: str = "") -> None:
        self.echo(line)

    def show(self, *args: str) -> None:
        """Prints a kubectl command and its output, as the user would type and see it."""
        assert self.kubectl is not None
        self.say(f"$ kubectl {' '.join(args)}")
        answer = self.kubectl(*args, check=False)
        for line in (answer.stdout or answer.stderr).rstrip().splitlines():
            self.say(f"  {line}")

    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def read(self) -> dict[str, Any]:
        return self.custom().get_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, self.ns, v1alpha1.PLURAL, NAME, _request_timeout=API_TIMEOUT_SECONDS)

    def status(self) -> dict[str, Any]:
        return self.read().get("status") or {}

    def wait(self, what: str, check: Callable[[Status], bool], timeout: float, *,
             follow: Callable[[Status], str] | None = None) -> None:
        """Reads status once a second and passes it to ``check`` until true; ``follow`` renders a progress
        line, printed whenever it changes. A timeout is a failed stage."""
        deadline, last = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            self.sample()
            status = self.status()
            if follow is not None and (line := follow(status)) != last:
                self.say(f"  +{self.elapsed():5.0f}s  {line}")
                last = line
            if check(status):
                return
            time.sleep(1)
        raise StageFailed(f"{what}: not seen within {timeout:.0f}s")

    # ---- the timeline -----------------------------------------------------------------------

    def sample(self) -> None:
        if self.samples and self.elapsed() - self.samples[-1].at < SAMPLE_SECONDS:
            return
        assert self.gateway is not None and self.state is not None
        point = timeline.Sample(at=round(self.elapsed(), 1))
        try:
            point.weights = {b.version: b.weight for b in self.gateway.backends()}
            point.p99_seconds = timeline.query(self.state.prometheus_url, timeline.latency_query(self.ns, NAME))
            point.drift = timeline.query(self.state.prometheus_url, timeline.drift_query(self.ns, NAME))
        except (client.ApiException, OSError, ValueError) as error:
            self.say(f"  (timeline sample skipped: {error})")
        self.samples.append(point)

    def mark(self, label: str) -> None:
        self.markers.append(timeline.Marker(round(self.elapsed(), 1), label))

    # ---- set-up -----------------------------------------------------------------------------

    def set_up(self) -> None:
        self.say("== Setting up: devcluster, CRDs, RBAC, the operator under its ServiceAccount")
        self.check_output_dir()
        layout = state_layout(self.settings.state_dir)
        existing = cluster.load_state(layout)
        was_running = existing is not None and all(s.healthy for s in cluster.check(existing))
        self.state = cluster.up(self.settings.state_dir, progress=lambda m: self.say(f"  [devcluster] {m}"))
        self.started_cluster = not was_running  # only a cluster this run started is stopped at the end
        self.api = bootstrap.api_client(self.state.kubeconfig)
        self.gateway = Gateway(self.api, self.state.root, self.ns, NAME)
        binaries = toolchain.resolve(CacheLayout(cache_root()), progress=lambda m: self.say(f"  [build] {m}"))
        self.kubectl = Kubectl(binaries.kubectl, self.state.kubeconfig)
        self.stop_previous_run()
        self.fresh_namespace()
        install_manifests(self.kubectl)
        self.artifacts, self.profile_uri = models.build(self.out / "models")
        self.recent_data_uri = (self.out / "data" / "recent.csv").resolve().as_uri()
        self.start_operator()
        self.start_helpers()
        self.say(f"  operator: pid {self.operator.pid if self.operator else '?'}, log {self.out / 'operator.log'}")

    def check_output_dir(self) -> None:
        """Refuses, before any work, a folder that holds files the demo did not write (it is replaced)."""
        if self.out.exists() and (not self.out.is_dir() or (any(self.out.iterdir()) and not (self.out / MARKER).exists())):
            raise StageFailed(f"--output-dir {self.out} holds files that are not the demo's; choose an empty or new folder")

    def stop_previous_run(self) -> None:
        """A previous `--keep` run left processes: stop them (PID and start time must match)."""
        record_file = self.out / "processes.json"
        if record_file.exists():
            for entry in json.loads(record_file.read_text()):
                processes.stop(processes.ProcessRecord.from_json(entry))
            record_file.unlink()
        if self.out.exists():
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True)
        (self.out / MARKER).write_text("written by `modelops demo`; removed by its next run\n")

    def fresh_namespace(self) -> None:
        core = client.CoreV1Api(self.api)
        try:
            core.delete_namespace(self.ns, _request_timeout=API_TIMEOUT_SECONDS)
            self.say(f"  deleting namespace {self.ns} left by an earlier run")
        except client.ApiException as error:
            if error.status != 404:
                raise
        bootstrap.wait_for(f"namespace {self.ns} to be gone", lambda: not self._namespace_exists(core), timeout=120)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=self.ns)), _request_timeout=API_TIMEOUT_SECONDS)
        bootstrap.wait_for(f"the default ServiceAccount of {self.ns}",
                           lambda: bool(core.list_namespaced_service_account(self.ns, _request_timeout=API_TIMEOUT_SECONDS).items),
                           timeout=60)

    def _namespace_exists(self, core: client.CoreV1Api) -> bool:
        try:
            core.read_namespace(self.ns, _request_timeout=API_TIMEOUT_SECONDS)
            return True
        except client.ApiException as error:
            if error.status == 404:
                return False
            raise

    def start_operator(self) -> None:
        assert self.state is not None and self.api is not None
        kubeconfig = service_account_kubeconfig(self.state, self.api, self.out / "operator.kubeconfig")
        self.operator = LocalOperator(kubeconfig=kubeconfig, log=self.out / "operator.log", prometheus_url=self.state.prometheus_url,
                                      resync_seconds=5, analysis_tick_seconds=1, namespaces=(self.ns,))
        self.operator.start()

    def start_helpers(self) -> None:
        assert self.state is not None
        python = sys.executable
        self.set_shift(0.0)
        self.helpers = [
            processes.spawn("pod-runner", [python, "-m", "modelops.cli", "devcluster", "pods", "--state-dir", str(self.state.root),
                                           "--namespace", self.ns], self.out / "pods.log"),
            processes.spawn("traffic", [python, "-m", "modelops.demo.traffic", "--state-dir", str(self.state.root),
                                        "--namespace", self.ns, "--route", NAME, "--model", NAME,
                                        "--features", str(len(models.FEATURES)), "--rate", str(TRAFFIC_RATE),
                                        "--control", str(self.out / "traffic.json")], self.out / "traffic.log"),
        ]

    def set_shift(self, shift: float) -> None:
        (self.out / "traffic.json").write_text(json.dumps({"shift": shift}))

    # ---- the ModelDeployment ------------------------------------------------------------------

    def manifest(self, artifact: models.Artifact) -> dict[str, Any]:
        return {
            "apiVersion": f"{v1alpha1.GROUP}/{v1alpha1.VERSION}", "kind": "ModelDeployment",
            "metadata": {"name": NAME, "namespace": self.ns},
            "spec": {
                "model": artifact.spec_model(),
                "runtime": {"image": SERVER_IMAGE, "env": [
                    {"name": "MODEL_PROFILE_URI", "value": self.profile_uri},
                    {"name": "MODELOPS_DRIFT_INTERVAL_SECONDS", "value": "2"},
                    {"name": "MODELOPS_DRIFT_WINDOW", "value": "1000"},
                ]},
                "scaling": {"replicas": 2},
                "rollout": {
                    "router": {"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "demo-gateway"}]}},
                    "steps": [{"setWeight": STEP_WEIGHTS[0]}, {"setWeight": STEP_WEIGHTS[1]}, {"pause": {"duration": "10s"}},
                              {"setWeight": STEP_WEIGHTS[2]}],
                    "analysis": {"interval": "10s", "failureLimit": 0, "checks": [
                        {"name": "latency", "type": "latencyP99", "max": LATENCY_LIMIT_SECONDS, "window": "20s", "minSampleCount": 20},
                        {"name": "errors", "type": "errorRate", "max": 0.01, "window": "20s", "minSampleCount": 20},
                    ]},
                    "progressDeadline": "3m", "scaleDownDelay": "20s", "abortScaleDownDelay": "10s",
                },
                "monitoring": {"interval": "10s", "checks": [
                    {"name": "drift", "type": "featureDrift", "max": DRIFT_LIMIT, "minSampleCount": 500, "for": "10s", "action": "retrain"},
                ]},
                "retraining": {"cooldown": "1h", "jobTemplate": {"template": {"spec": {"containers": [{
                    "name": "train", "image": TRAINER_IMAGE,
                    "command": ["modelops", "train", "--data", self.recent_data_uri, "--output-dir", str((self.out / "models").resolve())],
                }]}}}},
            },
        }

    def release(self, version: str) -> None:
        """What a user does: change spec.model (here with a server-side apply, as kubectl apply would)."""
        body = self.manifest(self.artifacts[version])
        self.custom().patch_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, self.ns, v1alpha1.PLURAL, NAME, body,
            field_manager="demo-user", force=True, _content_type="application/apply-patch+yaml", _request_timeout=API_TIMEOUT_SECONDS)

    # ---- stages --------------------------------------------------------------------------------

    def stage(self, title: str, marker: str, body: Callable[[], str]) -> None:
        self.say("")
        self.say(f"== Stage {len(self.results) + 1}: {title}")
        self.mark(marker)
        began = time.monotonic()
        outcome = body()
        self.results.append(StageResult(title, time.monotonic() - began, outcome))
        self.say(f"-> {outcome} ({time.monotonic() - began:.0f}s)")

    def deploy_first_version(self) -> str:
        self.release("1.0.0")
        self.wait("1.0.0 Healthy with 2 Ready replicas", lambda status: _stable_is(status, "1.0.0", ready=2), timeout=120)
        self.wait("requests answered by 1.0.0 (the pod runner's servers)", lambda _: self._answered("1.0.0"), timeout=60)
        self.show("get", "mdep", "-n", self.ns)
        self.show("get", "deploy,svc,hpa,httproute", "-n", self.ns)
        return "fraud-detector 1.0.0 is Healthy and serving"

    def promote_good_canary(self) -> str:
        self.release("2.0.0")
        self.wait("2.0.0 promoted to stable", lambda status: _stable_is(status, "2.0.0") and not status.get("canary"),
                  timeout=240, follow=_progress_line)
        history = self.status().get("history") or []
        if not any(h["version"] == "2.0.0" and h["outcome"] == "Promoted" for h in history):
            raise StageFailed(f"2.0.0 is stable but history has no Promoted entry: {history}")
        seen = {s.weights.get("2.0.0") for s in self.samples}
        missing = [w for w in STEP_WEIGHTS if w not in seen]
        if missing:
            raise StageFailed(f"the HTTPRoute never showed canary weight(s) {missing}; weights seen: {sorted(w for w in seen if w is not None)}")
        self.show("get", "mdep", "-n", self.ns)
        self.show_status_lines("stable", "history")
        return f"2.0.0 passed analysis at {', '.join(f'{w}%' for w in STEP_WEIGHTS)} and was promoted"

    def roll_back_slow_canary(self) -> str:
        self.release("3.0.0")
        self.wait("3.0.0 rolled back and blocked", lambda status: (status.get("blockedRevision") or {}).get("version") == "3.0.0",
                  timeout=180, follow=_progress_line)
        status = self.status()
        blocked = status["blockedRevision"]
        if (status.get("stable") or {}).get("version") != "2.0.0":
            raise StageFailed(f"after the rollback the stable version is {status.get('stable')}, not 2.0.0")
        if "latency" not in blocked.get("reason", ""):
            raise StageFailed(f"3.0.0 was blocked, but not for latency: {blocked.get('reason')}")
        self.wait("all traffic back on 2.0.0", lambda _: self._route_weights() == {"2.0.0": 100}, timeout=60)
        self.show("get", "mdep", "-n", self.ns, "-o", "wide")
        self.show_status_lines("blockedRevision")
        self.show("get", "events", "-n", self.ns, f"--field-selector=involvedObject.name={NAME}", "--sort-by=.lastTimestamp")
        return f"3.0.0 rolled back: {blocked['reason']}"

    def retrain_on_drift(self) -> str:
        uri = models.write_recent_data(self.out / "data" / "recent.csv", DRIFT_SHIFT)
        assert uri == self.recent_data_uri
        self.set_shift(DRIFT_SHIFT)
        self.say(f"  the traffic generator now shifts every feature's mean by {DRIFT_SHIFT}")
        self.wait("the drift check failing", lambda status: _monitor_verdict(status, "drift") == "Fail", timeout=120,
                  follow=_monitor_line)
        self.wait("a finished retraining run with a candidate", _candidate_recorded, timeout=180, follow=_monitor_line)
        jobs = client.BatchV1Api(self.api).list_namespaced_job(self.ns, _request_timeout=API_TIMEOUT_SECONDS).items
        if [j.metadata.name for j in jobs] != [f"{NAME}-retrain-1"]:
            raise StageFailed(f"expected exactly one retraining Job, found {[j.metadata.name for j in jobs]}")
        self.show("get", "jobs", "-n", self.ns)
        self.show_status_lines("monitoring", "retraining")
        candidate = self.status()["retraining"]["lastRun"]["candidate"]
        return f"drift tripped one retraining Job; candidate {candidate['version']} is in status.retraining.lastRun"

    # ---- what the stages look at ---------------------------------------------------------------------

    def _answered(self, version: str) -> bool:
        traffic = self.samples[-1].p99_seconds if self.samples else {}
        return version in traffic

    def _route_weights(self) -> dict[str, int]:
        assert self.gateway is not None
        return {b.version: b.weight for b in self.gateway.backends() if b.weight}

    def show_status_lines(self, *fields: str) -> None:
        self.say(f"$ kubectl get mdep {NAME} -n {self.ns} -o jsonpath='{{.status}}'   (selected fields)")
        status = self.status()
        for name in fields:
            rendered = json.dumps(status.get(name), indent=2).splitlines()
            self.say(f"  {name}: " + rendered[0])
            for line in rendered[1:30]:
                self.say(f"  {line}")

    # ---- the end -------------------------------------------------------------------------------------------

    def summarise(self) -> Path:
        picture = timeline.draw(self.samples, self.markers, self.out / "timeline.png",
                                title=f"modelops demo: {NAME} in namespace {self.ns}",
                                latency_limit=LATENCY_LIMIT_SECONDS, drift_limit=DRIFT_LIMIT)
        lines = ["# modelops demo", "", "| stage | took | what happened |", "|---|---|---|"]
        lines += [f"| {i}. {r.title} | {r.seconds:.0f} s | {r.outcome} |" for i, r in enumerate(self.results, 1)]
        lines += ["", f"Total: {self.elapsed():.0f} s. Timeline: {picture.name}."]
        (self.out / "summary.md").write_text("\n".join(lines) + "\n")
        (self.out / "timeline.json").write_text(json.dumps([vars(s) for s in self.samples]))
        self.say("")
        self.say("== Summary")
        for line in lines[2:]:
            self.say(f"  {line}")
        self.say(f"  timeline: {picture}")
        return picture

    def tear_down(self) -> None:
        if self.settings.keep and self.operator is not None:
            self.keep_running()
            return
        for record in self.helpers:
            processes.stop(record)
        if self.operator is not None:
            self.operator.stop()
        if self.api is not None:
            try:
                client.CoreV1Api(self.api).delete_namespace(self.ns, _request_timeout=API_TIMEOUT_SECONDS)
            except client.ApiException:
                pass
            self.api.close()
        if self.started_cluster:
            cluster.down(self.settings.state_dir, progress=lambda m: self.say(f"  [devcluster] {m}"))

    def keep_running(self) -> None:
        records = list(self.helpers)
        if self.operator is not None and self.operator.process is not None:
            ticks = processes.start_ticks(self.operator.pid)
            records.append(processes.ProcessRecord("operator", self.operator.pid, ticks if ticks is not None else -1,
                                                   str(self.operator.log)))
        (self.out / "processes.json").write_text(json.dumps([r.to_json() for r in records]))
        state_dir = self.settings.state_dir
        self.say("")
        self.say("== Still running (--keep): the devcluster, the operator, the pod runner and the traffic generator")
        self.say(f"  eval \"$(modelops devcluster env --state-dir {state_dir})\"")
        self.say(f"  kubectl get mdep -n {self.ns} -w")
        self.say(f"  kubectl describe mdep {NAME} -n {self.ns}")
        self.say(f"  kubectl get deploy,svc,httproute,jobs,pods -n {self.ns}")
        self.say(f"  kubectl modelops retry {NAME} -n {self.ns}      # unblock 3.0.0 and try it again")
        self.say(f"  echo '{{\"shift\": 0}}' > {self.out / 'traffic.json'}   # stop the drift")
        self.say(f"  Prometheus: {self.state.prometheus_url if self.state else '?'}; operator log: {self.out / 'operator.log'}")
        self.say(f"  stop it all: kill {' '.join(str(r.pid) for r in records)}; modelops devcluster down --state-dir {state_dir}")

    def explain_failure(self, error: Exception) -> None:
        self.say("")
        self.say(f"!! The demo failed: {error}")
        if self.api is not None:
            try:
                self.show_status_lines("phase", "message", "conditions", "rollout")
            except client.ApiException:
                pass
        if self.operator is not None:
            self.say("-- the operator's last log lines:")
            for line in self.operator.log_text().splitlines()[-15:]:
                self.say(f"  {line}")
        self.say(f"Logs: {self.out}")

    def run(self) -> int:
        try:
            self.set_up()
            self.stage("fraud-detector 1.0.0 is deployed and becomes Healthy", "1.0.0", self.deploy_first_version)
            self.stage("2.0.0, a good model, goes out as a canary through the Gateway API and is promoted", "canary 2.0.0",
                       self.promote_good_canary)
            self.stage("3.0.0, a slow model, fails its latency check and is rolled back", "canary 3.0.0", self.roll_back_slow_canary)
            self.stage("the input data drifts and one retraining Job runs", "drift", self.retrain_on_drift)
            problems = self.operator.logged_problems() if self.operator else []
            if problems:
                raise StageFailed(f"the operator logged errors: {problems[:3]}")
            self.summarise()
            return 0
        except (StageFailed, DevclusterError, client.ApiException, RuntimeError) as error:
            self.explain_failure(error)
            if self.samples:
                self.summarise()
            return 1
        finally:
            self.tear_down()


def _value(check: dict[str, Any]) -> str:
    value = check.get("value")
    return f" ({value:.3g})" if isinstance(value, (int, float)) else ""


def _stable_is(status: Status, version: str, ready: int | None = None) -> bool:
    stable = status.get("stable") or {}
    return (status.get("phase") == "Healthy" and stable.get("version") == version
            and (ready is None or stable.get("readyReplicas") == ready))


def _monitor_verdict(status: Status, check: str) -> str | None:
    checks = (status.get("monitoring") or {}).get("checks") or []
    return next((c.get("verdict") for c in checks if c["name"] == check), None)


def _candidate_recorded(status: Status) -> bool:
    run = (status.get("retraining") or {}).get("lastRun") or {}
    if run.get("outcome") == "Failed" or (run.get("outcome") == "Succeeded" and not run.get("candidate")):
        raise StageFailed(f"the retraining run {run.get('job')} ended {run.get('outcome')} without a candidate: {run.get('reason')}")
    return run.get("outcome") == "Succeeded"


def _checks_line(checks: list[dict[str, Any]]) -> str:
    return ", ".join(f"{c['name']} {c.get('verdict') or '-'}{_value(c)}" for c in checks)


def _progress_line(status: Status) -> str:
    """The rollout's step, weight and verdicts (or the phase when no canary is live)."""
    rollout = status.get("rollout") or {}
    if not rollout:
        return f"{status.get('phase')}: {status.get('message') or ''}"
    return (f"step {rollout.get('step', '-')}, canary {rollout.get('revision', '-')} at {rollout.get('weight', 0)}%: "
            f"{_checks_line(rollout.get('checks') or [])}")


def _monitor_line(status: Status) -> str:
    run = (status.get("retraining") or {}).get("lastRun") or {}
    line = f"monitoring: {_checks_line((status.get('monitoring') or {}).get('checks') or [])}"
    return line + (f"; retraining {run.get('job')}: {run.get('outcome')}" if run else "")
