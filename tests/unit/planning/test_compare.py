"""is_applied: would a server-side apply of the desired manifest change the observed object?"""

from typing import Any

import pytest

from modelops.planning.compare import drops_owned_fields, is_applied

DEPLOYMENT: dict[str, Any] = {
    "metadata": {"name": "m-1", "labels": {"a": "1"}},
    "spec": {
        "replicas": 2,
        "template": {
            "spec": {
                "containers": [
                    {
                        "name": "model-server",
                        "image": "img:1",
                        "args": ["--x", "--y"],
                        "env": [{"name": "A", "value": "1"}, {"name": "B"}],
                        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                    }
                ]
            }
        },
    },
}


def observed(**changes: Any) -> dict[str, Any]:
    """The deployment as the apiserver returns it: defaults added, plus the given changes."""
    import copy

    result = copy.deepcopy(DEPLOYMENT)
    result["metadata"] |= {"uid": "u", "resourceVersion": "7", "labels": {"a": "1", "other": "x"}}
    container = result["spec"]["template"]["spec"]["containers"][0]
    container |= {"terminationMessagePath": "/dev/termination-log", "imagePullPolicy": "IfNotPresent"}
    result["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"
    result["status"] = {"readyReplicas": 2}
    for path, value in changes.items():
        target = result
        *parents, last = path.split("__")
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value
    return result


def test_defaults_and_extra_fields_do_not_count_as_changes() -> None:
    assert is_applied(DEPLOYMENT, observed())


def test_missing_object_needs_a_write() -> None:
    assert not is_applied(DEPLOYMENT, None)


@pytest.mark.parametrize(
    "change",
    [
        {"spec__replicas": 3},
        {"metadata__labels": {"a": "2"}},
        {"spec__template__spec__containers__0__image": "img:2"},
        {"spec__template__spec__containers__0__args": ["--x"]},
        {"spec__template__spec__containers__0__args": ["--y", "--x"]},
        {"spec__template__spec__containers__0__env": [{"name": "A", "value": "2"}, {"name": "B"}]},
        {"spec__template__spec__containers__0__env": [{"name": "B"}, {"name": "A", "value": "1"}]},
        {"spec__template__spec__containers__0__resources": {"requests": {"cpu": "1", "memory": "1Gi"}}},
    ],
)
def test_changed_owned_fields_need_a_write(change: dict[str, Any]) -> None:
    assert not is_applied(DEPLOYMENT, observed(**change))


def test_quantities_compare_by_value_under_resources() -> None:
    canonical = observed(spec__template__spec__containers__0__resources={"requests": {"cpu": "0.5", "memory": "1024Mi"}})
    assert is_applied(DEPLOYMENT, canonical)


def test_quantities_outside_resources_compare_as_text() -> None:
    assert not is_applied({"metadata": {"labels": {"a": "1000m"}}}, {"metadata": {"labels": {"a": "1"}}})


def test_types_must_match() -> None:
    assert not is_applied({"spec": {"port": 80}}, {"spec": {"port": "80"}})
    assert not is_applied({"spec": {"flag": True}}, {"spec": {"flag": 1}})


def test_named_items_added_by_others_are_tolerated() -> None:
    sidecar = {"name": "istio-proxy", "image": "proxy"}
    containers = observed()["spec"]["template"]["spec"]["containers"] + [sidecar]
    assert is_applied(DEPLOYMENT, observed(spec__template__spec__containers=containers))


def test_an_owned_named_item_removed_needs_a_write() -> None:
    assert not is_applied(DEPLOYMENT, observed(spec__template__spec__containers=[{"name": "other"}]))


def test_empty_string_matches_an_absent_key() -> None:
    assert is_applied({"env": [{"name": "D", "value": ""}]}, {"env": [{"name": "D"}]})
    assert not is_applied({"env": [{"name": "D", "value": "x"}]}, {"env": [{"name": "D"}]})


def test_atomic_lists_of_maps_compare_item_by_item_with_defaults() -> None:
    desired = {"metrics": [{"type": "Resource", "resource": {"name": "cpu"}}]}
    assert is_applied(desired, {"metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {}}}]})
    assert not is_applied(desired, {"metrics": []})


SERVICE_FIELDS = {  # as the apiserver records a server-side apply of a Service by "modelops"
    "f:metadata": {"f:labels": {"f:app": {}}},
    "f:spec": {"f:ports": {'k:{"port":80,"protocol":"TCP"}': {".": {}, "f:name": {}, "f:port": {}, "f:targetPort": {}}},
               "f:selector": {}},
}


def _service(selector: dict[str, str], manager: str = "modelops") -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": "m"}, "annotations": {"other-controller": "x"},
                     "managedFields": [{"manager": manager, "operation": "Apply", "fieldsV1": SERVICE_FIELDS}]},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}],
                 "clusterIP": "10.96.0.1"},
    }


def _desired(selector: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"labels": {"app": "m"}}, "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}


def test_a_selector_key_the_operator_stopped_setting_is_a_change() -> None:
    observed = _service({"deployment": "m", "version": "1.0"})
    smaller = _desired({"deployment": "m"})
    assert is_applied(smaller, observed)  # a subset check alone misses it
    assert drops_owned_fields(smaller, observed, "modelops")
    assert not drops_owned_fields(_desired({"deployment": "m", "version": "1.0"}), observed, "modelops")


def test_defaulted_key_fields_and_other_managers_fields_are_not_drops() -> None:
    observed = _service({"deployment": "m"})
    assert not drops_owned_fields(_desired({"deployment": "m"}), observed, "modelops")  # protocol: TCP is a default
    assert not drops_owned_fields(_desired({"deployment": "m"}), _service({"deployment": "m", "x": "y"}, manager="kubectl"), "modelops")


def test_a_port_or_label_the_operator_stopped_setting_is_a_change() -> None:
    observed = _service({"deployment": "m"})
    no_port = _desired({"deployment": "m"})
    no_port["spec"]["ports"] = [{"name": "grpc", "port": 9000, "targetPort": 9000}]
    assert drops_owned_fields(no_port, observed, "modelops")
    no_label = _desired({"deployment": "m"})
    no_label["metadata"]["labels"] = {}
    assert drops_owned_fields(no_label, observed, "modelops")
