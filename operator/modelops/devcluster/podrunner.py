"""A dev-only stand-in for the kubelet's job, for model server pods: runs them as local processes.

kwok makes pods Ready without running anything, and pod IPs here are fake. For the demo and
end-to-end tests, this runner watches the cluster's pods and, for every Running pod whose
container runs the reference model server, starts ``modelops serve`` on a loopback port with the
pod's environment. It registers the process with Prometheus under the target labels the
documented PodMonitor would give the pod (``namespace``, ``pod``, and ``model``/``version`` from
its modelops labels: ``targets.pod_target_labels``), and stops it when the pod goes away. The
operator knows nothing of this: it sees only the Kubernetes API and Prometheus, as in production.

Where each pod's server listens is written to ``<state>/pods/<namespace>/<pod>.json``
(``{"port", "model", "version", "ready"}``), so traffic generators can find the versions'
endpoints. ``ready`` turns true once the server's ready endpoint answers 200, as the kubelet's
readiness probe would gate the pod's Service endpoints (kwok marks pods Ready at once, and
``modelops serve`` listens before its artifact is loaded): traffic goes to ready servers only.

It also runs Job pods whose container command is ``modelops ...`` (for example the reference
retraining step ``modelops train``) to completion, once, and writes what the kubelet would: the
container's terminated state, with the termination message the process wrote, and the pod's
phase. kwok marks Job pods Succeeded on its own, without a message; the runner's status
replaces that.

**Never use this outside the devcluster**: it runs whatever the pod's env says, on this machine.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client

from modelops.devcluster import processes, targets
from modelops.devcluster.localoperator import free_port

log = logging.getLogger(__name__)
SERVER_IMAGE_MARKER = "model-server"
REQUEST_TIMEOUT_SECONDS = 10
STOP_GRACE_SECONDS = 10
PROBE_TIMEOUT_SECONDS = 1


@dataclass
class JobRun:
    uid: str
    namespace: str
    name: str
    container: str
    image: str
    process: subprocess.Popen[bytes]
    termination_log: Path


@dataclass
class RunningPod:
    uid: str
    namespace: str
    name: str
    port: int
    process: subprocess.Popen[bytes]
    target: str
    endpoint_file: Path
    endpoint: dict[str, Any]
    ready: bool = False



def serves_models(pod: client.V1Pod) -> bool:
    """A Running pod whose first container is the reference model server."""
    containers = pod.spec.containers if pod.spec else []
    return bool(
        pod.status and pod.status.phase == "Running" and not pod.metadata.deletion_timestamp
        and containers and SERVER_IMAGE_MARKER in (containers[0].image or "")
    )


def runs_modelops_job(pod: client.V1Pod) -> bool:
    """A Job's pod, not yet finished by us, whose first container runs ``modelops ...``."""
    containers = pod.spec.containers if pod.spec else []
    owners = pod.metadata.owner_references or []
    return bool(
        pod.status and pod.status.phase in ("Pending", "Running", "Succeeded") and not pod.metadata.deletion_timestamp
        and pod.spec.node_name and any(owner.kind == "Job" for owner in owners)
        and containers and (containers[0].command or [""])[0] == "modelops"
        and not _has_termination_message(pod)
    )


def _has_termination_message(pod: client.V1Pod) -> bool:
    for status in (pod.status.container_statuses if pod.status else None) or []:
        if status.state and status.state.terminated and status.state.terminated.message:
            return True
    return False


def pod_environment(pod: client.V1Pod) -> dict[str, str]:
    """Literal env values of the first container (valueFrom needs a kubelet; it is skipped with a warning)."""
    environment: dict[str, str] = {}
    for variable in pod.spec.containers[0].env or []:
        if variable.value_from is not None:
            log.warning("%s/%s: env %s comes from a Secret or ConfigMap; not supported here", pod.metadata.namespace, pod.metadata.name, variable.name)
            continue
        environment[variable.name] = variable.value or ""
    return environment


class PodRunner:
    """Keeps one ``modelops serve`` process per Running model-server pod."""

    def __init__(self, api: client.ApiClient, state_dir: Path, namespaces: tuple[str, ...] = ()) -> None:
        self.core = client.CoreV1Api(api)
        self.targets_dir = state_dir / "prometheus" / "targets"
        self.endpoints_dir = state_dir / "pods"
        self.logs_dir = state_dir / "logs" / "pods"
        self.namespaces = namespaces
        self.running: dict[str, RunningPod] = {}
        self.jobs: dict[str, JobRun] = {}
        self.finished_jobs: set[str] = set()

    def _pods(self) -> list[client.V1Pod]:
        if self.namespaces:
            return [pod for ns in self.namespaces for pod in self.core.list_namespaced_pod(ns, _request_timeout=REQUEST_TIMEOUT_SECONDS).items]
        return list(self.core.list_pod_for_all_namespaces(_request_timeout=REQUEST_TIMEOUT_SECONDS).items)

    def reap_orphans(self) -> int:
        """Stops servers a killed runner left behind (their endpoint files say which) and unregisters them."""
        reaped = 0
        for endpoint_file in sorted(self.endpoints_dir.glob("*/*.json")):
            if self.namespaces and endpoint_file.parent.name not in self.namespaces:
                continue
            try:
                endpoint = json.loads(endpoint_file.read_text())
            except (OSError, ValueError):
                endpoint = {}
            if endpoint.get("pid") and endpoint.get("startTicks") is not None:
                processes.stop(processes.ProcessRecord("orphan", int(endpoint["pid"]), int(endpoint["startTicks"]), ""))
            targets.unregister(self.targets_dir, str(endpoint.get("target") or f"pod-{endpoint_file.parent.name}-{endpoint_file.stem}"))
            endpoint_file.unlink(missing_ok=True)
            reaped += 1
        return reaped

    def sync(self) -> None:
        """Starts servers for new model pods and stops those whose pod is gone; runs and finishes Job pods."""
        pods = self._pods()
        self._sync_servers(pods)
        self._sync_jobs(pods)

    def _sync_servers(self, pods: list[client.V1Pod]) -> None:
        wanted = {pod.metadata.uid: pod for pod in pods if serves_models(pod)}
        for uid in [uid for uid in self.running if uid not in wanted]:
            self._stop(self.running.pop(uid))
        for uid, pod in wanted.items():
            current = self.running.get(uid)
            if current is not None and current.process.poll() is None:
                if not current.ready:
                    self._probe(current)
                continue
            if current is not None:
                log.warning("server for %s/%s exited with %s; restarting it", current.namespace, current.name, current.process.returncode)
                self._stop(current)
            self.running[uid] = self._start(pod)

    def _sync_jobs(self, pods: list[client.V1Pod]) -> None:
        present = {pod.metadata.uid for pod in pods}
        for uid in [uid for uid in self.jobs if uid not in present]:
            run = self.jobs.pop(uid)
            run.process.kill()
            run.process.wait()
        for pod in pods:
            uid = pod.metadata.uid
            if uid not in self.jobs and uid not in self.finished_jobs and runs_modelops_job(pod):
                self.jobs[uid] = self._start_job(pod)
        for uid, run in list(self.jobs.items()):
            if run.process.poll() is not None:
                self._finish_job(self.jobs.pop(uid))
                self.finished_jobs.add(uid)

    def _start_job(self, pod: client.V1Pod) -> JobRun:
        namespace, name = pod.metadata.namespace, pod.metadata.name
        container = pod.spec.containers[0]
        termination_log = self.logs_dir / f"{namespace}_{name}.termination-log"
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        termination_log.unlink(missing_ok=True)
        environment = ({k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "KUBE"))}
                       | pod_environment(pod) | {"MODELOPS_TERMINATION_LOG": str(termination_log)})
        arguments = [*(container.command or [])[1:], *(container.args or [])]
        with (self.logs_dir / f"{namespace}_{name}.log").open("ab") as output:
            process = subprocess.Popen([sys.executable, "-m", "modelops.cli", *arguments], env=environment,
                                       stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        log.info("running Job pod %s/%s: modelops %s", namespace, name, " ".join(arguments))
        return JobRun(pod.metadata.uid, namespace, name, container.name, container.image or "", process, termination_log)

    def _finish_job(self, run: JobRun) -> None:
        """Writes the container's terminated state and the pod's phase, as the kubelet would."""
        code = run.process.returncode
        message = run.termination_log.read_text(errors="replace")[-4096:] if run.termination_log.exists() else ""
        if code != 0 and not message:
            message = f"modelops exited with {code}; see {self.logs_dir / f'{run.namespace}_{run.name}.log'}"
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "message": message,
                      "startedAt": now, "finishedAt": now}
        status = {"phase": "Succeeded" if code == 0 else "Failed", "containerStatuses": [{
            "name": run.container, "image": run.image, "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": terminated},
        }]}
        try:
            self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": status}, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        except client.ApiException as error:
            if error.status != 422:
                raise
            # kwok already made the pod Succeeded, and a terminal phase cannot change: keep the message.
            del status["phase"]
            self.core.patch_namespaced_pod_status(run.name, run.namespace, {"status": status}, _request_timeout=REQUEST_TIMEOUT_SECONDS)
        log.info("Job pod %s/%s finished with %d", run.namespace, run.name, code)

    def _start(self, pod: client.V1Pod) -> RunningPod:
        namespace, name = pod.metadata.namespace, pod.metadata.name
        port = free_port()
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "KUBE"))} | pod_environment(pod)
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        with (self.logs_dir / f"{namespace}_{name}.log").open("ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-m", "modelops.cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                env=environment, stdout=output, stderr=subprocess.STDOUT, start_new_session=True,
            )
        target = f"pod-{namespace}-{name}"[:63].rstrip("-.").lower()
        scrape_labels = targets.pod_target_labels(namespace, name, pod.metadata.labels or {}, pod.spec.containers[0].name)
        targets.register(self.targets_dir, target, f"127.0.0.1:{port}", scrape_labels)
        endpoint_file = self.endpoints_dir / namespace / f"{name}.json"
        endpoint_file.parent.mkdir(parents=True, exist_ok=True)
        endpoint = {"port": port, "model": environment.get("MODEL_NAME", ""), "version": environment.get("MODEL_VERSION", ""),
                    "pid": process.pid, "startTicks": processes.start_ticks(process.pid), "target": target, "ready": False}
        endpoint_file.write_text(json.dumps(endpoint))
        log.info("started modelops serve for %s/%s on 127.0.0.1:%d", namespace, name, port)
        return RunningPod(pod.metadata.uid, namespace, name, port, process, target, endpoint_file, endpoint)

    def _probe(self, running: RunningPod) -> None:
        """The readiness probe: once the server answers ready, its endpoint file says so (once; never reverted)."""
        url = f"http://127.0.0.1:{running.port}/v2/health/ready"
        try:
            running.ready = httpx.get(url, timeout=PROBE_TIMEOUT_SECONDS).status_code == 200
        except httpx.HTTPError:
            return
        if running.ready:
            running.endpoint_file.write_text(json.dumps(running.endpoint | {"ready": True}))

    def _stop(self, running: RunningPod) -> None:
        targets.unregister(self.targets_dir, running.target)
        running.endpoint_file.unlink(missing_ok=True)
        if running.process.poll() is None:
            running.process.terminate()
            try:
                running.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
        log.info("stopped the server of %s/%s", running.namespace, running.name)

    def close(self) -> None:
        for running in list(self.running.values()):
            self._stop(running)
        self.running.clear()
        for run in self.jobs.values():
            run.process.kill()
            run.process.wait()
        self.jobs.clear()

    def run_forever(self, interval: float = 1.0) -> None:
        """Syncs every ``interval`` until SIGTERM or Ctrl-C, then stops every server it started."""
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # SystemExit runs the finally below
        if reaped := self.reap_orphans():
            log.info("stopped %d server(s) left by a runner that did not shut down", reaped)
        try:
            while True:
                try:
                    self.sync()
                except client.ApiException as error:
                    log.warning("cannot list pods: %s", error.reason)
                time.sleep(interval)
        finally:
            self.close()


def endpoints(state_dir: Path, namespace: str) -> list[dict[str, Any]]:
    """The endpoints the runner has published for a namespace (for traffic generators)."""
    folder = state_dir / "pods" / namespace
    return [json.loads(path.read_text()) | {"pod": path.stem} for path in sorted(folder.glob("*.json"))] if folder.exists() else []
