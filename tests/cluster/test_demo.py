"""`modelops demo --keep` on the devcluster: every stage happens as told, and --keep leaves it running.

The demo starts its own operator (watching only its namespace), so this runs in a pytest
session of its own (`make test` runs `-m demo` separately), never beside the `operator` fixture.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from kubernetes import client

from modelops.api import v1alpha1
from modelops.devcluster import processes
from modelops.devcluster.cluster import ClusterState

pytestmark = [pytest.mark.cluster, pytest.mark.demo]
NAMESPACE = "demo-test"


@pytest.mark.timeout(600)
def test_the_demo_tells_its_story_and_keep_leaves_it_running(devcluster: ClusterState, admin_api: client.ApiClient, tmp_path: Path) -> None:
    output = tmp_path / "demo-output"
    finished = subprocess.run(
        [sys.executable, "-m", "modelops.cli", "demo", "--state-dir", str(devcluster.root), "--output-dir", str(output),
         "--namespace", NAMESPACE, "--keep"],
        capture_output=True, text=True, timeout=540,
    )
    records = [processes.ProcessRecord.from_json(e) for e in json.loads((output / "processes.json").read_text())] \
        if (output / "processes.json").exists() else []
    try:
        assert finished.returncode == 0, finished.stdout[-6000:] + finished.stderr[-3000:]
        said = finished.stdout
        assert "-> fraud-detector 1.0.0 is Healthy and serving" in said
        assert "-> 2.0.0 passed analysis at 20%, 50%, 80% and was promoted" in said
        assert "-> 3.0.0 rolled back: check latency (" in said
        assert "-> drift tripped one retraining Job; candidate 2.0.0-r" in said  # trained from the version in production
        assert "$ kubectl get mdep -n demo-test" in said and "RolledBack" in said

        summary = (output / "summary.md").read_text()
        assert summary.count("\n| ") == 5  # the header and four stages
        assert (output / "timeline.png").read_bytes()[:4] == b"\x89PNG"
        samples = json.loads((output / "timeline.json").read_text())
        assert {20, 50, 80} <= {s["weights"].get("2.0.0") for s in samples}
        assert max(s["p99_seconds"].get("3.0.0", 0) for s in samples) > 0.05
        assert max(s["drift"].get("2.0.0", 0) for s in samples) > 0.25

        status = client.CustomObjectsApi(admin_api).get_namespaced_custom_object(
            v1alpha1.GROUP, v1alpha1.VERSION, NAMESPACE, v1alpha1.PLURAL, "fraud-detector")["status"]
        assert status["stable"]["version"] == "2.0.0" and status["blockedRevision"]["version"] == "3.0.0"
        run = status["retraining"]["lastRun"]
        candidate = Path(run["candidate"]["uri"].removeprefix("file://"))
        assert run["outcome"] == "Succeeded" and candidate.exists() and candidate.is_relative_to(output.resolve())

        # --keep: the operator, the pod runner and the traffic generator still run, and the output says how to stop them.
        assert {r.name for r in records} == {"operator", "pod-runner", "traffic"}
        assert all(processes.is_running(r) for r in records)
        assert "stop it all: kill " in said
    finally:
        for record in records:
            processes.stop(record)
        try:
            client.CoreV1Api(admin_api).delete_namespace(NAMESPACE)
        except client.ApiException:
            pass
