"""The demo's pure parts: weighted routing, the timeline, the reference trainer, the pod runner's Job selection."""

import collections
import hashlib
import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from kubernetes import client

from modelops.api.v1alpha1 import VERSION_PATTERN, Candidate
from modelops.demo import models, timeline
from modelops.demo.story import Demo, Settings
from modelops.demo.traffic import Backend, pick
from modelops.devcluster.podrunner import runs_modelops_job
from modelops import training


def test_requests_follow_the_route_weights_and_skip_backends_without_weight_or_pods() -> None:
    backends = [Backend("a", "1.0.0", 80, (1, 2)), Backend("b", "2.0.0", 20, (3,)),
                Backend("c", "3.0.0", 0, (4,)), Backend("d", "4.0.0", 50, ())]
    draws = random.Random(1)
    counts = collections.Counter(pick(backends, draws.random()).version for _ in range(20000))  # type: ignore[union-attr]
    assert set(counts) == {"1.0.0", "2.0.0"}
    assert counts["2.0.0"] / 20000 == pytest.approx(0.2, abs=0.01)
    assert pick(backends, 0.0).version == "1.0.0" and pick(backends, 0.999999).version == "2.0.0"  # type: ignore[union-attr]
    assert pick([Backend("c", "3.0.0", 0, (4,))], 0.5) is None and pick([], 0.5) is None


def test_timeline_queries_escape_user_text_and_answers_drop_nan() -> None:
    query = timeline.latency_query('ns"}', "fraud")
    assert 'namespace="ns\\"}"' in query and "sum by (version, le)" in query
    answer = {"data": {"result": [{"metric": {"version": "1.0.0"}, "value": [0, "0.004"]},
                                  {"metric": {"version": "2.0.0"}, "value": [0, "NaN"]}]}}
    assert timeline.by_version(answer) == {"1.0.0": 0.004}


def test_the_timeline_is_drawn_as_a_png_with_every_version(tmp_path: Path) -> None:
    samples = [timeline.Sample(at=float(t), weights={"1.0.0": 100 - 10 * t, "2.0.0": 10 * t}, p99_seconds={"1.0.0": 0.004},
                               drift={"2.0.0": 0.1 * t}) for t in range(10)]
    assert timeline.versions_in(samples) == ["1.0.0", "2.0.0"]
    path = timeline.draw(samples, [timeline.Marker(3.0, "2")], tmp_path / "t.png", title="t", latency_limit=0.05, drift_limit=0.25)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_a_version_that_left_the_route_is_drawn_at_zero_weight_not_at_its_last_weight() -> None:
    samples = [timeline.Sample(0, weights={"1.0.0": 100}), timeline.Sample(1, weights={"1.0.0": 80, "2.0.0": 20}),
               timeline.Sample(2, weights={"2.0.0": 100})]
    assert timeline.weight_series(samples, "1.0.0") == [100.0, 80.0, 0.0]
    series = timeline.weight_series(samples, "2.0.0")
    assert series[0] != series[0] and series[1:] == [20.0, 100.0]  # NaN before it appears


def test_versions_sort_numerically_on_the_timeline() -> None:
    assert sorted(["10.0.0", "2.0.0", "2.0.0-r1"], key=timeline._version_key) == ["2.0.0", "2.0.0-r1", "10.0.0"]


def _csv(path: Path, header: str, rows: list[str]) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    ("header", "rows", "message"),
    [
        ("a,b", ["1,2"] * 20, "no label column 'label'"),
        ("a,label", ["1,1"] * 20, "single class"),
        ("a,label", ["x,1", "1,0"] * 10, "every column must be numeric"),
        ("a,label", ["1,1", "2,0"], "2 labelled rows; need at least 10"),
    ],
)
def test_bad_training_data_is_refused_with_what_to_change(tmp_path: Path, header: str, rows: list[str], message: str) -> None:
    with pytest.raises(training.TrainingError, match=message):
        training.read_dataset(_csv(tmp_path / "d.csv", header, rows), "label")


def test_training_writes_an_artifact_whose_digest_and_candidate_the_operator_accepts(tmp_path: Path) -> None:
    uri = models.write_recent_data(tmp_path / "recent.csv", shift=1.5, count=500)
    dataset = training.read_dataset(training.local_path(uri), "label")
    assert dataset.features == list(models.FEATURES) and dataset.rows.shape == (500, 4)
    assert abs(float(dataset.rows.mean()) - 1.5) < 0.1
    candidate = training.train(dataset, tmp_path / "out", "2.0.0-r20261126120000")
    artifact = training.local_path(str(candidate["uri"]))
    assert candidate["digest"] == "sha256:" + hashlib.sha256(artifact.read_bytes()).hexdigest()
    parsed = Candidate.model_validate(candidate)
    assert parsed.metrics["heldOutAccuracy"] > 0.8 and parsed.metrics["trainingRows"] == 400
    log = tmp_path / "termination-log"
    assert json.loads(training.report(candidate, log)) == candidate == json.loads(log.read_text())


def test_candidate_versions_are_valid_versions_even_from_the_longest_current_version() -> None:
    version = training.candidate_version("v" * 63, 0)
    assert re.match(VERSION_PATTERN, version) and len(version) <= 63
    assert training.candidate_version("2.0.0", 0) == "2.0.0-r19700101000000"


def test_only_file_uris_are_read_by_the_reference_trainer() -> None:
    with pytest.raises(training.TrainingError, match="only file://"):
        training.local_path("s3://bucket/data.csv")


def _pod(command: list[str], owner: str = "Job", phase: str = "Succeeded", message: str | None = None) -> client.V1Pod:
    terminated = client.V1ContainerStateTerminated(exit_code=0, message=message)
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name="p", namespace="n", uid="u", owner_references=[
            client.V1OwnerReference(api_version="batch/v1", kind=owner, name="j", uid="j")]),
        spec=client.V1PodSpec(node_name="kwok-node-0", containers=[client.V1Container(name="c", image="trainer", command=command)]),
        status=client.V1PodStatus(phase=phase, container_statuses=[client.V1ContainerStatus(
            name="c", image="trainer", image_id="", ready=False, restart_count=0, state=client.V1ContainerState(terminated=terminated))]),
    )


def test_the_pod_runner_runs_only_unfinished_job_pods_whose_command_is_modelops() -> None:
    assert runs_modelops_job(_pod(["modelops", "train"]))
    assert not runs_modelops_job(_pod(["python", "train.py"]))
    assert not runs_modelops_job(_pod(["modelops", "train"], owner="ReplicaSet"))
    assert not runs_modelops_job(_pod(["modelops", "train"], phase="Failed"))
    assert not runs_modelops_job(_pod(["modelops", "train"], message='{"version": "1"}'))  # already finished by us


def test_the_demo_refuses_an_output_folder_of_someone_elses_before_starting_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "thesis.tex").write_text("do not delete")
    monkeypatch.setattr("modelops.devcluster.cluster.up", lambda *a, **k: pytest.fail("started a cluster"))
    lines: list[str] = []
    code = Demo(Settings(state_dir=tmp_path / "state", output_dir=tmp_path), echo=lines.append).run()
    assert code == 1
    assert any("holds files that are not the demo's" in line for line in lines)
    assert (tmp_path / "thesis.tex").read_text() == "do not delete"


def test_the_demo_models_verify_against_their_digests(tmp_path: Path) -> None:
    from modelops.serving.artifacts import load

    artifacts, profile = models.build(tmp_path)
    assert sorted(artifacts) == ["1.0.0", "2.0.0", "3.0.0"] and Path(profile.removeprefix("file://")).exists()
    rows, labels = models.transactions(np.random.default_rng(3), 400)
    for artifact in artifacts.values():
        predictor, digest = load(artifact.uri, artifact.digest, "sklearn")
        assert digest == artifact.digest
        assert (predictor.predict(rows) == labels).mean() > 0.8


def test_the_pod_runner_stops_servers_a_killed_runner_left_behind(tmp_path: Path) -> None:
    import subprocess
    import sys

    from modelops.devcluster import processes, targets
    from modelops.devcluster.podrunner import PodRunner

    orphan = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    runner = PodRunner(client.ApiClient(), tmp_path, ("demo",))
    targets.register(runner.targets_dir, "pod-demo-p1", "127.0.0.1:9", {"namespace": "demo", "pod": "p1"})
    (runner.endpoints_dir / "demo").mkdir(parents=True)
    (runner.endpoints_dir / "demo" / "p1.json").write_text(json.dumps(
        {"port": 9, "pid": orphan.pid, "startTicks": processes.start_ticks(orphan.pid), "target": "pod-demo-p1"}))
    (runner.endpoints_dir / "other").mkdir()
    (runner.endpoints_dir / "other" / "p2.json").write_text(json.dumps({"port": 10}))  # not in the runner's namespaces
    assert runner.reap_orphans() == 1
    assert orphan.wait(timeout=10) != 0
    assert not (runner.targets_dir / "pod-demo-p1.json").exists() and not (runner.endpoints_dir / "demo" / "p1.json").exists()
    assert (runner.endpoints_dir / "other" / "p2.json").exists()


def test_a_devcluster_that_cannot_start_ends_the_demo_with_its_cause_not_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelops.devcluster.errors import DevclusterError

    def refuse(*args: object, **kwargs: object) -> None:
        raise DevclusterError("Go is not installed (no `go` on PATH)")

    monkeypatch.setattr("modelops.devcluster.cluster.up", refuse)
    monkeypatch.setattr("modelops.devcluster.cluster.down", lambda *a, **k: pytest.fail("stopped a cluster it did not start"))
    lines: list[str] = []
    assert Demo(Settings(state_dir=tmp_path / "state", output_dir=tmp_path / "out"), echo=lines.append).run() == 1
    assert "!! The demo failed: Go is not installed (no `go` on PATH)" in lines


def test_the_pod_runner_publishes_a_server_as_ready_only_once_it_answers_ready(tmp_path: Path) -> None:
    import http.server
    import subprocess
    import threading

    from modelops.devcluster.podrunner import PodRunner, RunningPod

    answers = [503, 200]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            self.send_response(answers.pop(0) if self.path == "/v2/health/ready" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint_file = tmp_path / "pods" / "demo" / "p1.json"
    endpoint_file.parent.mkdir(parents=True)
    endpoint = {"port": server.server_address[1], "model": "m", "version": "1", "ready": False}
    endpoint_file.write_text(json.dumps(endpoint))
    process = subprocess.Popen(["sleep", "60"])
    running = RunningPod("uid", "demo", "p1", server.server_address[1], process, "pod-demo-p1", endpoint_file, endpoint)
    runner = PodRunner(client.ApiClient(), tmp_path, ("demo",))
    try:
        runner._probe(running)
        assert not running.ready and json.loads(endpoint_file.read_text())["ready"] is False  # loading: no traffic yet
        runner._probe(running)
        assert running.ready and json.loads(endpoint_file.read_text())["ready"] is True
    finally:
        process.kill()
        process.wait()
        server.shutdown()
        server.server_close()
