"""Faults that must not stall or mislead the operator, on the devcluster under its ServiceAccount.

- a ModelDeployment deleted while a foreign finalizer holds it: no longer analysed, nothing kept;
- a notify receiver that drips its answer while another object needs repair: the repair is not
  delayed, the notification is cut at its deadline and its outcome shows in status;
- a template query that hangs while another canary is due: the other canary is analysed on time;
- the apiserver taken away from the operator mid-pass: one log line per failure, no traceback,
  and the object converges once it is back.
"""

import datetime
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelops.devcluster import bootstrap
from tests.cluster.conftest import RESYNC_SECONDS, Operator
from tests.cluster.test_modeldeployment import GROUP, PLURAL, VERSION, Models
from tests.support.dripping_receiver import DrippingReceiver

pytestmark = pytest.mark.cluster

INTERVAL_SECONDS = 10
NOTIFY_DEADLINE_SECONDS = 10  # the operator's default --notify-deadline-seconds
FOREIGN_FINALIZER = "test.modelops.dev/hold"


def modeldeployment(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelDeployment", "metadata": {"name": name, "namespace": namespace},
        "spec": {"model": {"version": "1.0.0", "uri": f"s3://models/{name}/1.0.0/"},
                 "runtime": {"image": "ghcr.io/modelops/model-server:0.1.0"}, "scaling": {"replicas": 1}} | spec,
    }


def analysed(*checks: dict[str, Any]) -> dict[str, Any]:
    """One 20 % step, analysed every 10 s. Without stand-in metrics the checks are NoData: the canary holds."""
    return {"steps": [{"setWeight": 20}], "analysis": {"interval": f"{INTERVAL_SECONDS}s", "checks": list(checks)}}


ERRORS = {"name": "errors", "type": "errorRate", "max": 0.05, "window": "10s", "minSampleCount": 20}


def release(models: Models, name: str, version: str = "2.0.0") -> None:
    models.patch_spec({"model": {"version": version, "uri": f"s3://models/{name}/{version}/"}}, name)


def measurements(models: Models, name: str) -> list[dict[str, Any]]:
    checks = ((models.get(name).get("status") or {}).get("rollout") or {}).get("checks") or []
    return checks[0].get("measurements") or [] if checks else []


def operator_series(operator: Operator, namespace: str) -> list[str]:
    return [line for line in operator.metrics().splitlines() if line.startswith("modelops_") and f'namespace="{namespace}"' in line]


def seconds_between(earlier: str, later: str) -> float:
    def parse(text: str) -> datetime.datetime:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))

    return (parse(later) - parse(earlier)).total_seconds()


@pytest.fixture
def models(operator: Operator, admin_api: client.ApiClient, namespace: str) -> Models:
    return Models(admin_api, namespace)


def test_a_ghost_behind_a_foreign_finalizer_is_no_longer_analysed_or_remembered(
    operator: Operator, models: Models, namespace: str
) -> None:
    assert operator.queries is not None
    models.create(modeldeployment(namespace, "ghost", rollout=analysed(ERRORS)))
    models.wait_ready("ghost")
    release(models, "ghost")
    bootstrap.wait_for("the canary's first analysis", lambda: bool(measurements(models, "ghost")), timeout=60)
    assert operator.queries.asked(namespace) > 0  # its checks are queried, narrowed to its namespace
    assert operator_series(operator, namespace)

    models.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ghost",
                                                 {"metadata": {"finalizers": [FOREIGN_FINALIZER]}},
                                                 _content_type="application/merge-patch+json")
    models.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ghost")
    try:
        assert models.get("ghost")["metadata"]["deletionTimestamp"]  # held by the finalizer: a ghost
        bootstrap.wait_for("its metric series to be removed", lambda: not operator_series(operator, namespace), timeout=30)
        forgotten = time.monotonic()
        time.sleep(2 * INTERVAL_SECONDS + 2)  # two analysis intervals, plus a periodic pass or more
        assert operator.queries.asked(namespace, since=forgotten) == 0
        assert not operator_series(operator, namespace)
        assert measurements(models, "ghost") == measurements(models, "ghost")  # and nothing is written to it
    finally:
        models.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "ghost",
                                                     {"metadata": {"finalizers": None}},
                                                     _content_type="application/merge-patch+json")


@pytest.fixture
def dripping() -> Iterator[DrippingReceiver]:
    receiver = DrippingReceiver(gap=2.0)
    yield receiver
    receiver.close()


def _complete_the_job_with_a_candidate(core: client.CoreV1Api, namespace: str, job: str, candidate: dict[str, Any]) -> None:
    """kwok runs the Job's pod to Succeeded; write its termination message as the kubelet would."""
    def succeeded_pod() -> client.V1Pod | None:
        found = core.list_namespaced_pod(namespace, label_selector=f"job-name={job}").items
        return found[0] if found and found[0].status.phase == "Succeeded" else None

    bootstrap.wait_for("the retraining Job's pod to complete", lambda: succeeded_pod() is not None, timeout=60)
    pod = succeeded_pod()
    assert pod is not None
    core.patch_namespaced_pod_status(pod.metadata.name, namespace, {"status": {"containerStatuses": [{
        "name": "train", "image": "ghcr.io/modelops/trainer:1", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": json.dumps(candidate)}},
    }]}})


def test_a_dripping_notify_receiver_delays_no_repair_and_is_cut_at_its_deadline(
    operator: Operator, models: Models, namespace: str, dripping: DrippingReceiver
) -> None:
    secret_path = f"/services/T0/B0/{uuid.uuid4().hex}"
    retraining = {
        "jobTemplate": {"template": {"spec": {"containers": [{"name": "train", "image": "ghcr.io/modelops/trainer:1"}]}}},
        "cooldown": "1h",
        "notify": {"url": dripping.url + secret_path},
    }
    models.create(modeldeployment(namespace, "trainer", retraining=retraining))
    models.create(modeldeployment(namespace, "repaired"))
    models.wait_ready("trainer")
    models.wait_ready("repaired")

    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    models.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "trainer",
                                                 {"metadata": {"annotations": {"modelops.dev/action.retrain": now}}},
                                                 _content_type="application/merge-patch+json")
    candidate = {"version": "1.1.0", "uri": "s3://models/trainer/1.1.0/", "digest": "sha256:" + "c" * 64, "metrics": {"auc": 0.93}}
    _complete_the_job_with_a_candidate(models.core, namespace, "trainer-retrain-1", candidate)

    def last_run() -> dict[str, Any]:
        return ((models.get("trainer").get("status") or {}).get("retraining") or {}).get("lastRun") or {}

    bootstrap.wait_for("the candidate in status", lambda: last_run().get("candidate") == candidate, timeout=60)
    bootstrap.wait_for("the outbox to reach the receiver", lambda: dripping.connections >= 1, timeout=10)

    # While the receiver drips, another ModelDeployment needs repair: its Service is deleted.
    models.core.delete_namespaced_service("repaired", namespace)

    def service_back() -> bool:
        try:
            models.core.read_namespaced_service("repaired", namespace)
            return True
        except ApiException as error:
            if error.status == 404:
                return False
            raise

    bootstrap.wait_for("the deleted Service to be recreated within a periodic period and a few seconds",
                       service_back, timeout=RESYNC_SECONDS + 5)
    assert last_run().get("notified") is None  # still being delivered: the repair did not wait for it

    attempts = 3  # notify.DeliverySettings().attempts
    bootstrap.wait_for("the outcome of the notification in status", lambda: last_run().get("notified") is False,
                       timeout=attempts * NOTIFY_DEADLINE_SECONDS + 3 + 15)
    assert dripping.connections == attempts
    # Each attempt was cut by the operator (the receiver notices at its next drip, when the write fails).
    bootstrap.wait_for("the receiver to see every connection closed", lambda: dripping.closed_by_client == attempts,
                       timeout=3 * dripping.gap + 1)
    log = operator.log_text()
    cut = [line for line in log.splitlines() if f"for {namespace}/trainer" in line and "no complete answer within 10s" in line]
    assert len(cut) == attempts
    assert secret_path not in log and "/services/" not in log  # the webhook's path is a credential: never logged


def test_a_hanging_template_query_does_not_delay_another_canarys_analysis(
    operator: Operator, models: Models, namespace: str, admin_api: client.ApiClient
) -> None:
    assert operator.queries is not None
    marker = f"modelops_test_slow_{uuid.uuid4().hex[:8]}"
    template = f"slow-{namespace}"
    query = f'sum({marker}{{namespace="{{{{namespace}}}}", model="{{{{model}}}}", version="{{{{version}}}}"}})'
    custom = client.CustomObjectsApi(admin_api)
    custom.create_cluster_custom_object(GROUP, VERSION, "clustermetrictemplates", {
        "apiVersion": f"{GROUP}/{VERSION}", "kind": "ClusterMetricTemplate", "metadata": {"name": template},
        "spec": {"query": query},
    })
    operator.queries.hold(marker)  # every query of this template hangs past the operator's timeout
    try:
        models.create(modeldeployment(namespace, "slow", rollout=analysed({"name": "slow", "type": "template", "template": template, "max": 1})))
        models.create(modeldeployment(namespace, "prompt", rollout=analysed(ERRORS)))
        models.wait_ready("slow")
        models.wait_ready("prompt")
        release(models, "slow")
        release(models, "prompt")
        bootstrap.wait_for("five analyses of the prompt canary", lambda: len(measurements(models, "prompt")) >= 5,
                           timeout=6 * INTERVAL_SECONDS + 20)
        assert operator.queries.asked(marker) >= 2  # the slow canary was analysed alongside
        slow = measurements(models, "slow")
        assert slow and {m["verdict"] for m in slow} == {"Error"}  # a query past the budget is an Error, never a Pass
        times = [m["at"] for m in measurements(models, "prompt")]
        gaps = [seconds_between(a, b) for a, b in zip(times, times[1:])]
        # Timestamps have whole seconds: due at +10 s, found by the next 0.5 s tick, so 10 or 11 s.
        assert all(gap <= INTERVAL_SECONDS + 1 for gap in gaps), f"analysis gaps of the prompt canary: {gaps}"
    finally:
        custom.delete_cluster_custom_object(GROUP, VERSION, "clustermetrictemplates", template)


def test_the_apiserver_taken_away_mid_pass_is_one_log_line_per_failure_and_the_object_converges(
    operator: Operator, models: Models, namespace: str
) -> None:
    assert operator.apiserver is not None
    models.create(modeldeployment(namespace, "steady"))
    models.wait_ready("steady")
    log_before = len(operator.log_text().splitlines())

    models.patch_spec({"scaling": {"replicas": 2}}, "steady")
    operator.apiserver.stop()  # the operator's connections are reset; new ones are refused
    try:
        time.sleep(3 * RESYNC_SECONDS + 1)  # periodic passes and retries meet a missing apiserver
    finally:
        operator.apiserver.start()

    def converged() -> bool:
        body = models.get("steady")
        deployment = models.apps.read_namespaced_deployment("steady-1-0-0", namespace)
        return deployment.spec.replicas == 2 and (body.get("status") or {}).get("observedGeneration") == body["metadata"]["generation"]

    bootstrap.wait_for("the change made during the outage to be applied", converged, timeout=60)
    models.wait_ready("steady")
    lines = operator.log_text().splitlines()[log_before:]
    failures = [line for line in lines if f"pass of {namespace}/steady failed: apiserver unreachable" in line]
    assert failures, "no pass of the object failed while the apiserver was away"
    assert all("retrying in" in line or "periodic pass retries it" in line for line in failures)
    assert not [line for line in lines if "Traceback" in line or line.startswith(("  File ", "urllib3.", "ConnectionRefusedError"))]
