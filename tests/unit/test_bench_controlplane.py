"""The pure parts of bench/controlplane.py: finding periodic passes in counter samples, assigning writes to them."""

import json

from bench.controlplane import Burst, ProbeRecord, ProbeRecorder, Sample, find_bursts, latency_row, writes_by_pass

EPOCH = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def samples(counts: list[float], step: float = 0.5) -> list[Sample]:
    return [Sample(monotonic=i * step, wall=EPOCH + i * step, passes=c, reconcile_seconds=c * 0.02, rss_kib=1000) for i, c in enumerate(counts)]


def test_a_quiet_counter_has_no_bursts() -> None:
    assert find_bursts(samples([10] * 20), quiet_seconds=3) == []


def test_bursts_are_split_by_quiet_stretches() -> None:
    counts = [0, 0, 100, 300, 500, 500, 500, 500, 500, 500, 500, 500, 700, 1000, 1000, 1000, 1000, 1000, 1000, 1000, 1000]
    bursts = find_bursts(samples(counts), quiet_seconds=3)
    assert [(b.start.passes, b.end.passes, b.passes) for b in bursts] == [(0, 500, 500), (500, 1000, 500)]
    # from the last sample before the counter moved to the first sample at its final value
    assert [(b.start.monotonic, b.end.monotonic, b.seconds) for b in bursts] == [(0.5, 2.0, 1.5), (5.5, 6.5, 1.0)]


def test_a_pause_shorter_than_quiet_does_not_split_a_burst() -> None:
    counts = [0, 50, 50, 50, 100, 100, 100, 100, 100, 100, 100, 100]  # 1 s without growth inside the pass
    [burst] = find_bursts(samples(counts), quiet_seconds=3)
    assert burst.passes == 100 and burst.seconds == 2.0


def test_a_burst_still_growing_at_the_end_is_left_out() -> None:
    assert find_bursts(samples([0, 0, 10, 20, 30]), quiet_seconds=3) == []


def audit(at: str) -> dict:
    return json.loads(json.dumps({"requestReceivedTimestamp": at, "verb": "patch"}))


def test_writes_are_assigned_to_the_pass_they_fall_in() -> None:
    passes = samples([0, 0, 500, 500] + [500] * 200 + [900, 1000] + [1000] * 10)
    first = Burst(passes[1], passes[2])  # wall EPOCH+0.5 .. EPOCH+1.0
    second = Burst(passes[203], passes[205])  # wall EPOCH+101.5 .. EPOCH+102.5
    entries = [
        audit("2027-01-15T08:00:00.900000Z"),  # in the first pass
        audit("2027-01-15T08:00:01.800000Z"),  # within the 1 s slack after it
        audit("2027-01-15T08:00:50.000000Z"),  # between the passes
        audit("2027-01-15T08:01:42.000000Z"),  # in the second
    ]
    assert writes_by_pass(entries, [first, second]) == ([2, 1], 1)


def test_no_writes_means_zero_in_every_pass() -> None:
    passes = samples([0, 0, 500, 500, 500, 500, 500, 500, 500, 500])
    assert writes_by_pass([], find_bursts(passes, quiet_seconds=3)) == ([0], 0)


def test_the_latency_row_takes_the_last_child_and_the_ready_moment() -> None:
    recorder = ProbeRecorder()
    for index, (children, ready) in enumerate([((0.05, 0.08, 0.09), 0.2), ((0.1, 0.12, 0.3), 0.4)]):
        name = f"probe-{index}"
        recorder.expect(name).created = 10.0
        for offset, child in zip(children, ("Deployment/p-1-0-0", "Service/p", "Service/p-1-0-0")):
            recorder.child("ADDED", {"kind": child.split("/")[0], "metadata": {"name": f"{child}-{index}", "labels": {"modelops.dev/deployment": name}}}, 10.0 + offset)
        ready_body = {"metadata": {"name": name, "generation": 1}, "status": {"observedGeneration": 1, "conditions": [{"type": "Ready", "status": "True"}]}}
        recorder.modeldeployment("MODIFIED", ready_body, 10.0 + ready)
        recorder.modeldeployment("MODIFIED", ready_body, 99.0)  # a later event does not move the first Ready
    row = latency_row(100, [recorder.records["probe-0"], recorder.records["probe-1"]])
    assert row["children_seconds"]["p50"] == 0.09 and row["children_seconds"]["p99"] == 0.3
    assert row["ready_seconds"]["p50"] == 0.2 and row["ready_seconds"]["p99"] == 0.4
    assert row["children_per_probe"] == [3] and row["child_kinds"] == ["Deployment", "Service"]
    assert row["children_after_ready"] == 0


def test_a_child_seen_again_keeps_its_first_time_and_unready_events_are_ignored() -> None:
    recorder = ProbeRecorder()
    recorder.expect("p")
    body = {"kind": "Service", "metadata": {"name": "p", "labels": {"modelops.dev/deployment": "p"}}}
    recorder.child("ADDED", body, 1.0)
    recorder.child("MODIFIED", body, 2.0)
    recorder.modeldeployment("ADDED", {"metadata": {"name": "p", "generation": 1}, "status": {}}, 1.5)
    assert recorder.records["p"].children == {"Service/p": 1.0}
    assert recorder.records["p"].ready is None and not recorder.records["p"].done.is_set()
    assert isinstance(recorder.records["p"], ProbeRecord)


def test_children_of_models_that_are_not_probes_are_ignored() -> None:
    recorder = ProbeRecorder()
    recorder.expect("probe-1-00")
    for owner in ("m-0000", "probe-1-00"):
        recorder.child("ADDED", {"kind": "Service", "metadata": {"name": owner, "labels": {"modelops.dev/deployment": owner}}}, 1.0)
    recorder.child("ADDED", {"kind": "Service", "metadata": {"name": "unlabelled"}}, 1.0)
    assert set(recorder.records) == {"probe-1-00"}
    assert recorder.records["probe-1-00"].children == {"Service/probe-1-00": 1.0}
