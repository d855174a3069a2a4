"""The Argo CD health check for ModelDeployment, run by a real Lua interpreter.

Argo CD evaluates health scripts with gopher-lua, a Lua 5.1 implementation: it sets the
global ``obj`` to the live object (JSON objects become tables, arrays 1-based arrays) and
reads ``status`` and ``message`` from the table the script returns. These tests do the same
with lupa's Lua 5.1 runtime. Well-formed statuses are built with the operator's own pydantic
models, so the script is checked against the field names the operator really writes.
"""

import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

from modelops.api.v1alpha1 import Condition, ModelDeploymentStatus, Phase

ARGOCD = Path(__file__).resolve().parents[2] / "manifests" / "argocd"
SCRIPT = ARGOCD / "modeldeployment-health.lua"
CONFIGMAP_PATCH = ARGOCD / "argocd-cm-patch.yaml"
HEALTH_KEY = "resource.customizations.health.modelops.dev_ModelDeployment"
GENERATION = 3
WAITING = f"Waiting for the operator to observe generation {GENERATION}"


def to_lua(runtime: lua51.LuaRuntime, value: Any) -> Any:
    """Python data as Argo CD hands it to Lua: dicts become tables, lists 1-based arrays."""
    if isinstance(value, dict):
        return runtime.table_from({key: to_lua(runtime, item) for key, item in value.items()})
    if isinstance(value, list):
        return runtime.table_from([to_lua(runtime, item) for item in value])
    return value


def run_script(obj: dict[str, Any]) -> tuple[dict[str, Any], lua51.LuaRuntime]:
    """Runs the health script on ``obj`` in a fresh Lua 5.1 state; returns its result and the state."""
    runtime = lua51.LuaRuntime()
    runtime.globals().obj = to_lua(runtime, obj)
    returned = runtime.execute(SCRIPT.read_text())
    assert lua51.lua_type(returned) == "table", f"the script returned {returned!r}, not a table"
    return dict(returned.items()), runtime


def health(obj: dict[str, Any]) -> dict[str, Any]:
    return run_script(obj)[0]


def condition(type_: str, status: str, message: str = "") -> Condition:
    return Condition(
        type=type_, status=status, reason="Testing", message=message,  # type: ignore[arg-type]
        last_transition_time="2025-01-01T00:00:00Z", observed_generation=GENERATION,
    )


def status(
    phase: str | None, message: str | None, *conditions: Condition, observed: int | None = GENERATION
) -> dict[str, Any]:
    """A status as the operator writes it (camelCase, absent fields left out)."""
    model = ModelDeploymentStatus(
        observed_generation=observed, phase=phase, message=message,  # type: ignore[arg-type]
        conditions=list(conditions),
    )
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def model_deployment(current: Any = None, generation: int = GENERATION) -> dict[str, Any]:
    """A live ModelDeployment; ``current`` is its status (left out when None)."""
    obj: dict[str, Any] = {
        "apiVersion": "modelops.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud-detector", "namespace": "ml", "generation": generation},
        "spec": {"model": {"name": "fraud", "version": "v2"}},
    }
    if current is not None:
        obj["status"] = current
    return obj


READY = condition("Ready", "True", "3/3 replicas of fraud-detector-v2 ready")
NOT_READY = condition("Ready", "False", "1/3 replicas of fraud-detector-v2 ready")
NOT_DEGRADED = condition("Degraded", "False", "no problems")
ROLLING_OUT = condition("Progressing", "True", "rolling out v2")
READY_DICT = READY.model_dump(mode="json", by_alias=True)
HEALTHY_STATUS = status("Healthy", "3/3 replicas ready", READY, ROLLING_OUT, NOT_DEGRADED)

CASES = {
    "no status yet": (model_deployment(), "Progressing", WAITING),
    "empty status": (model_deployment({}), "Progressing", WAITING),
    "stale observedGeneration": (
        model_deployment(status("Healthy", "3/3 replicas ready", READY, NOT_DEGRADED, observed=GENERATION - 1)),
        "Progressing", WAITING,
    ),
    "observedGeneration missing": (
        model_deployment(status("Healthy", "3/3 replicas ready", READY, observed=None)), "Progressing", WAITING,
    ),
    "stale status that is Degraded waits too": (
        model_deployment(status("Degraded", "bad image", condition("Degraded", "True", "bad image"),
                                observed=GENERATION - 1)),
        "Progressing", WAITING,
    ),
    "healthy": (model_deployment(HEALTHY_STATUS), "Healthy", "3/3 replicas ready"),
    "healthy without a message": (
        model_deployment(status("Healthy", None, READY)), "Healthy", "ModelDeployment is healthy",
    ),
    "Degraded condition wins over Ready and phase Healthy": (
        model_deployment(status("Healthy", "3/3 replicas ready", condition("Degraded", "True", "quota exceeded"),
                                READY)),
        "Degraded", "quota exceeded",
    ),
    "Degraded condition without a message uses status.message": (
        model_deployment(status("Degraded", "spec.model.uri: invalid", READY, condition("Degraded", "True"))),
        "Degraded", "spec.model.uri: invalid",
    ),
    "phase Degraded without a Degraded condition": (
        model_deployment(status("Degraded", "ProgressDeadlineExceeded", READY)), "Degraded", "ProgressDeadlineExceeded",
    ),
    "phase Degraded with no message at all": (
        model_deployment(status("Degraded", None)), "Degraded", "ModelDeployment is degraded",
    ),
    "Degraded wins over Paused": (
        model_deployment(status("Paused", "paused by user", condition("Degraded", "True", "apply failed"))),
        "Degraded", "apply failed",
    ),
    "paused": (
        model_deployment(status("Paused", "paused by user", READY, NOT_DEGRADED)), "Suspended", "paused by user",
    ),
    "pending": (
        model_deployment(status("Pending", "waiting for fraud-detector-v2 to be created", NOT_READY)),
        "Progressing", "waiting for fraud-detector-v2 to be created",
    ),
    "progressing": (
        model_deployment(status("Progressing", "rolling out v2", READY, ROLLING_OUT, NOT_DEGRADED)),
        "Progressing", "rolling out v2",
    ),
    "phase Healthy but Ready False": (
        model_deployment(status("Healthy", "1/3 replicas ready", NOT_READY)), "Progressing", "1/3 replicas ready",
    ),
    "phase Healthy but Ready Unknown": (
        model_deployment(status("Healthy", "checking", condition("Ready", "Unknown"))), "Progressing", "checking",
    ),
    "phase Healthy but no conditions": (
        model_deployment(status("Healthy", "3/3 replicas ready")), "Progressing", "3/3 replicas ready",
    ),
    "Ready True but phase Pending": (
        model_deployment(status("Pending", "starting", READY)), "Progressing", "starting",
    ),
    "phase missing": (
        model_deployment(status(None, None)), "Progressing", "Waiting for the ModelDeployment to become healthy",
    ),
    "unknown phase": (
        model_deployment({**HEALTHY_STATUS, "phase": "Exploding", "message": "something new"}),
        "Progressing", "something new",
    ),
    "observedGeneration ahead of generation": (
        model_deployment(HEALTHY_STATUS, generation=GENERATION - 1), "Healthy", "3/3 replicas ready",
    ),
    "metadata missing": (
        {"kind": "ModelDeployment", "status": HEALTHY_STATUS}, "Healthy", "3/3 replicas ready",
    ),
    "empty object": ({}, "Progressing", "Waiting for the operator to observe the latest generation"),
    "status not an object": (model_deployment("broken"), "Progressing", WAITING),
    "conditions not a list": (
        model_deployment({**HEALTHY_STATUS, "conditions": "broken"}), "Progressing", "3/3 replicas ready",
    ),
    "malformed conditions are skipped": (
        model_deployment({**HEALTHY_STATUS, "conditions": ["junk", 7, {"status": "True"}, READY_DICT]}),
        "Healthy", "3/3 replicas ready",
    ),
    "Ready condition without a status": (
        model_deployment({**HEALTHY_STATUS, "conditions": [{"type": "Ready"}]}), "Progressing", "3/3 replicas ready",
    ),
    "message and phase of the wrong type": (
        model_deployment({"observedGeneration": GENERATION, "phase": ["Healthy"], "message": 42}),
        "Progressing", "Waiting for the ModelDeployment to become healthy",
    ),
    "observedGeneration of the wrong type": (
        model_deployment({"observedGeneration": "soon", "phase": ["Healthy"], "message": 42}), "Progressing", WAITING,
    ),
}


@pytest.mark.parametrize(("obj", "expected_status", "expected_message"), CASES.values(), ids=CASES.keys())
def test_health(obj: dict[str, Any], expected_status: str, expected_message: str) -> None:
    assert health(obj) == {"status": expected_status, "message": expected_message}


def test_the_first_condition_is_found() -> None:
    """Lists reach Lua 1-based (as in Argo CD): a Degraded condition in first place must count."""
    first = model_deployment(status("Healthy", "ok", condition("Degraded", "True", "first"), READY))
    assert health(first) == {"status": "Degraded", "message": "first"}


def test_every_phase_has_a_deliberate_outcome() -> None:
    """Adding a phase to the API fails here until the health check is taught what it means."""
    outcomes = {"Pending": "Progressing", "Progressing": "Progressing", "Healthy": "Healthy",
                "Degraded": "Degraded", "Paused": "Suspended"}
    assert set(typing.get_args(Phase)) == set(outcomes)
    for phase, outcome in outcomes.items():
        assert health(model_deployment(status(phase, "m", READY)))["status"] == outcome, phase


def test_the_script_leaves_no_globals_behind() -> None:
    runtime = lua51.LuaRuntime()
    before = set(runtime.globals().keys())
    _, after_run = run_script(model_deployment(HEALTHY_STATUS))
    assert set(after_run.globals().keys()) - before == {"obj"}


def test_the_configmap_patch_carries_the_script_byte_for_byte() -> None:
    patch = yaml.safe_load(CONFIGMAP_PATCH.read_bytes().decode("utf-8"))
    assert patch["data"][HEALTH_KEY] == SCRIPT.read_bytes().decode("utf-8")


def test_the_configmap_patch_targets_argocd_cm() -> None:
    patch = yaml.safe_load(CONFIGMAP_PATCH.read_text())
    assert (patch["apiVersion"], patch["kind"]) == ("v1", "ConfigMap")
    assert patch["metadata"] == {"name": "argocd-cm", "namespace": "argocd"}
    assert list(patch["data"]) == [HEALTH_KEY]
