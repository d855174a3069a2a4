"""Manual actions apply in the order the apiserver received them, not by client clocks."""

import copy
from typing import Any

import pytest

from modelops.planning.actions import (
    MANAGED_FIELDS_LIMIT,
    last_received,
    received_at,
    requested_actions,
    server_order,
)

# Metadata of a ModelDeployment after `modelops pause`, then (two seconds later) the resume the CLI sends
# but with an old annotation value, as from a client whose clock is behind: dumped from the devcluster
# (kube-apiserver v1.36.3, `kubectl get mdep -o json --show-managed-fields`; uid and resourceVersion left out).
PAUSED_THEN_RESUMED: dict[str, Any] = {
    "annotations": {
        "modelops.dev/action.pause": "2026-12-01T03:48:22.699946Z",
        "modelops.dev/action.resume": "2020-01-01T00:00:00.000001Z",
    },
    "creationTimestamp": "2026-12-01T03:48:21Z",
    "generation": 1,
    "managedFields": [
        {
            "apiVersion": "modelops.dev/v1alpha1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:spec": {".": {}, "f:model": {".": {}, "f:format": {}, "f:uri": {}, "f:version": {}},
                                    "f:revisionHistoryLimit": {},
                                    "f:runtime": {".": {}, "f:image": {}, "f:imagePolicy": {}, "f:imagePullPolicy": {}, "f:port": {}}}},
            "manager": "kubectl-create",
            "operation": "Update",
            "time": "2026-12-01T03:48:21Z",
        },
        {
            "apiVersion": "modelops.dev/v1alpha1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:modelops.dev/action.pause": {}}}},
            "manager": "modelops-action-pause",
            "operation": "Update",
            "time": "2026-12-01T03:48:22Z",
        },
        {
            "apiVersion": "modelops.dev/v1alpha1",
            "fieldsType": "FieldsV1",
            "fieldsV1": {"f:metadata": {"f:annotations": {"f:modelops.dev/action.resume": {}}}},
            "manager": "modelops-action-resume",
            "operation": "Update",
            "time": "2026-12-01T03:48:24Z",
        },
    ],
    "name": "fraud",
    "namespace": "mfdemo",
}

# The same object after `kubectl annotate --overwrite ... modelops.dev/action.pause=by-hand` five seconds later
# (dumped too): the field moved to kubectl's manager, and the CLI's pause entry owns no annotation any more.
PAUSE_TAKEN_OVER_BY_KUBECTL: list[dict[str, Any]] = [
    PAUSED_THEN_RESUMED["managedFields"][0],
    {**PAUSED_THEN_RESUMED["managedFields"][1], "fieldsV1": {"f:metadata": {"f:annotations": {}}}},
    PAUSED_THEN_RESUMED["managedFields"][2],
    {
        "apiVersion": "modelops.dev/v1alpha1",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": {"f:modelops.dev/action.pause": {}}}},
        "manager": "kubectl-annotate",
        "operation": "Update",
        "time": "2026-12-01T03:48:29Z",
    },
]


def _with(metadata: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """A copy with ``name=(entry time, annotation value)`` changes for the action entries."""
    copied = copy.deepcopy(metadata)
    for name, (time, value) in changes.items():
        for entry in copied["managedFields"]:
            if entry["manager"] == f"modelops-action-{name}":
                entry["time"] = time
        copied["annotations"][f"modelops.dev/action.{name}"] = value
    return copied


def test_requested_actions_keeps_known_names_and_bounds_values() -> None:
    metadata = {"annotations": {"modelops.dev/action.pause": "x" * 500, "modelops.dev/action.explode": "now",
                                "modelops.dev/action.": "t", "kubectl.kubernetes.io/last-applied-configuration": "{}"}}
    assert requested_actions(metadata) == {"pause": "x" * 64}
    assert requested_actions({}) == {} and requested_actions({"annotations": None}) == {}
    assert requested_actions({"annotations": ["not", "a", "map"]}) == {}


def test_the_reconciler_still_exports_requested_actions() -> None:
    from modelops import reconciler

    assert reconciler.requested_actions is requested_actions


def test_the_apiserver_order_wins_over_a_skewed_client_clock() -> None:
    assert server_order(PAUSED_THEN_RESUMED, ["pause", "resume"]) == ["pause", "resume"]
    assert last_received(PAUSED_THEN_RESUMED, ["resume", "pause"]) == "resume"
    reversed_order = _with(PAUSED_THEN_RESUMED, pause=("2026-12-01T03:48:30Z", "2020-01-01T00:00:00.000001Z"))
    assert last_received(reversed_order, ["pause", "resume"]) == "pause"


def test_the_entry_owning_the_annotation_counts_whoever_its_manager_is() -> None:
    """`kubectl annotate --overwrite` takes the field over: its entry's time is the one that counts."""
    metadata = copy.deepcopy(PAUSED_THEN_RESUMED) | {"managedFields": copy.deepcopy(PAUSE_TAKEN_OVER_BY_KUBECTL)}
    metadata["annotations"]["modelops.dev/action.pause"] = "by-hand"
    assert last_received(metadata, ["pause", "resume"]) == "pause"
    received = received_at(metadata, "pause")
    assert received is not None and received.isoformat() == "2026-12-01T03:48:29+00:00"


def test_within_one_second_the_clients_microseconds_order_the_actions() -> None:
    same_second = _with(PAUSED_THEN_RESUMED, pause=("2026-12-01T03:48:24Z", "2026-12-01T03:48:24.100000Z"),
                        resume=("2026-12-01T03:48:24Z", "2026-12-01T03:48:24.900000Z"))
    assert server_order(same_second, ["resume", "pause"]) == ["pause", "resume"]
    swapped = _with(same_second, resume=("2026-12-01T03:48:24Z", "2026-12-01T03:48:24.000001Z"))
    assert server_order(swapped, ["resume", "pause"]) == ["resume", "pause"]


@pytest.mark.parametrize(
    ("pause_value", "resume_value"),
    [
        ("2026-12-01T03:48:24Z", "2026-12-01T03:48:24.9Z"),  # one value without fractions: not the CLI's
        ("token-1", "token-2"),  # not times at all
    ],
)
def test_a_tie_the_values_cannot_break_goes_to_the_cautious_action(pause_value: str, resume_value: str) -> None:
    tie = _with(PAUSED_THEN_RESUMED, pause=("2026-12-01T03:48:24Z", pause_value), resume=("2026-12-01T03:48:24Z", resume_value))
    assert last_received(tie, ["pause", "resume"]) == "pause"


@pytest.mark.parametrize(
    "break_it",
    [
        lambda m: m.pop("managedFields"),
        lambda m: m["managedFields"].pop(2),  # resume's entry is gone (managedFields were reset)
        lambda m: m["managedFields"][2].update(time="soon"),
        lambda m: m["managedFields"][2].pop("time"),
        lambda m: m["managedFields"][2].update(fieldsV1="garbage"),
        lambda m: m.update(managedFields="garbage"),
    ],
)
def test_an_unknown_server_time_falls_back_to_the_safe_order_for_all(break_it: Any) -> None:
    metadata = copy.deepcopy(PAUSED_THEN_RESUMED)
    break_it(metadata)
    assert server_order(metadata, ["pause", "resume"]) == ["resume", "pause"]  # pause wins
    assert server_order(metadata, ["promote", "abort"]) == ["promote", "abort"]  # abort wins
    assert server_order(metadata, ["abort", "retry"]) == ["retry", "abort"]


def test_names_are_deduplicated_and_an_empty_request_has_no_winner() -> None:
    assert server_order(PAUSED_THEN_RESUMED, ["pause", "pause", "resume"]) == ["pause", "resume"]
    assert last_received(PAUSED_THEN_RESUMED, []) is None


def test_only_a_bounded_number_of_managed_fields_entries_is_read() -> None:
    metadata = copy.deepcopy(PAUSED_THEN_RESUMED)
    filler = {"manager": "noise", "operation": "Update", "time": "2026-12-01T03:00:00Z", "fieldsV1": {"f:spec": {}}}
    metadata["managedFields"] = [filler] * MANAGED_FIELDS_LIMIT + metadata["managedFields"]
    assert received_at(metadata, "pause") is None  # beyond the limit: unknown, so the safe order applies
    assert last_received(metadata, ["pause", "resume"]) == "pause"
