"""Model-based invariants of the planner: random interleavings of everything that can happen to a
ModelDeployment, checked after every pass.

A hypothesis ``RuleBasedStateMachine`` drives the real pass, ``modelops.reconciler.reconcile``, over
the in-memory cluster of ``tests/unit/test_reconciler.py``, extended here with what the world does
on its own: pods becoming Ready (or not), children deleted or edited by hand, a child losing its
``managed-by`` label (it leaves the label-selected list but still exists under its name), writes
the apiserver refuses (the HTTPRoute CRD missing, the entry Service), a Gateway refusing the route,
and a status the models cannot read. Every pass reads the stored object only, as an operator that
just restarted would.

What must hold after every pass (``PlannerMachine.run_pass`` and ``check_world`` judge each):

1. A version becomes stable only by its first release (no other version ever released here),
   a completed analysis (every step done, each one completed by evidence: every check passed in
   it, or no checks / skipAnalysis), a manual ``promote``, or a monitoring rollback to the
   previous stable; never through a deletion, an unlabelled child, an unreadable status or a
   failed write.
2. A blocked revision gets no traffic (entry Service, route weight, status weight) until retried,
   and it is unblocked only by ``retry`` or by another rollback.
3. ``Ready=True`` only while the stable version has its wanted replicas (fixed count or HPA
   minReplicas, as released) Ready.
4. The weights in status are the split the cluster holds (the last one applied successfully),
   and traffic reaches only the stable version and the live canary.
5. With nothing changing, passes converge, and then a pass writes nothing (also 1 s later, when
   no clock of the planner ticks in that second).
6. A pass with an unreadable status writes no child.

The fake world is simple on purpose: no HPA controller (an autoscaled Deployment stays at
minReplicas), no generations, ``managedFields`` only for Service selectors, and the monitoring
check is a rollback check with verdicts given directly.

Runs are deterministic in CI: ``derandomize=True`` and no example database (hypothesis prints the
failing sequence of rules). ``INVARIANT_EXAMPLES=1000`` (about 2 min) and ``INVARIANT_EXPLORE=1``
(random seeds) search further; the minimal examples at the end are what such searches found.
"""

import copy
import datetime
import os
from collections.abc import Mapping
from typing import Any

from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from modelops.api.v1alpha1 import ModelDeploymentSpec, ModelDeploymentStatus, duration_seconds
from modelops.kube.api import ApiError
from modelops.planning import revisions
from modelops.planning.analysis import Evaluation
from modelops.planning.children import LABEL_DEPLOYMENT, LABEL_MANAGED_BY, LABEL_MODEL_VERSION, MANAGED_BY
from modelops.planning.monitoring import monitoring_due
from modelops.planning.names import child_name
from modelops.planning.rollout import ACTIONS, analysis_due, format_time, parse_time
from modelops.reconciler import Outcome, read_status, reconcile
from tests.unit.planning.helpers import NOW
from tests.unit.test_reconciler import FakeCluster

NAME = "m"
VERSIONS = ("1.0", "2.0", "3.0")
IMAGES = ("registry.example/server:1", "registry.example/server:2")
CHECKS = {
    "latency": {"name": "latency", "type": "latencyP99", "max": 0.5},
    "errors": {"name": "errors", "type": "errorRate", "max": 0.05},
}
STEPS = (
    (),  # blue/green
    ({"setWeight": 50},),
    ({"setWeight": 20}, {"pause": {"duration": "30s"}}, {"setWeight": 60}),
    ({"setWeight": 30}, {"pause": {}}, {"setWeight": 70}),
)
SCALINGS = ({"replicas": 1}, {"replicas": 2}, {"replicas": 0}, {"minReplicas": 2, "maxReplicas": 3})
GATEWAY = {"type": "gatewayAPI", "gatewayAPI": {"parentRefs": [{"name": "public"}]}}
MONITORING = {
    "interval": "30s",
    "rollbackWindow": "2m",
    "checks": [{"name": "drift", "type": "featureDrift", "max": 0.2, "for": "30s", "action": "rollback"}],
}
# Faults a write can meet: (kind, name or None for any name) -> the apiserver's answer.
WRITE_FAULTS: dict[str, tuple[str, str | None, ApiError]] = {
    "deployments": ("Deployment", None, ApiError(403, 'deployments.apps is forbidden: User "x" cannot patch')),
    "entry-service": ("Service", NAME, ApiError(422, "Service m is invalid: spec.selector")),
    "version-services": ("Service", None, ApiError(500, "etcdserver: request timed out")),
    "records": ("ControllerRevision", None, ApiError(403, "controllerrevisions.apps is forbidden")),
    "route": ("HTTPRoute", None, ApiError(409, "Apply failed with 1 conflict: conflict with \"istio\"")),
}
CRD_MISSING = ApiError(404, "the server could not find the requested resource (HTTPRoute)")


def seconds_after(moment: str, seconds: float) -> str:
    return format_time(parse_time(moment) + datetime.timedelta(seconds=seconds))


def document(version: str, steps: tuple[dict[str, Any], ...], checks: tuple[str, ...]) -> dict[str, Any]:
    return {
        "model": {"version": version, "uri": f"s3://models/m/{version}/"},
        "runtime": {"image": IMAGES[0]},
        "scaling": {"replicas": 2},
        "rollout": {
            "steps": list(steps),
            "analysis": {"interval": "30s", "failureLimit": 0, "checks": [CHECKS[name] for name in checks]},
            "progressDeadline": "5m",
            "scaleDownDelay": "30s",
            "abortScaleDownDelay": "30s",
        },
    }


class FaultyCluster(FakeCluster):
    """The fake cluster, plus what the world does on its own.

    - Deployments report ``ready[name]`` Ready pods (at most their replicas); a new pod template
      starts with none Ready (a rolling update), until a rule says the pods are Ready.
    - A Service records that ``modelops`` owns its selector (``managedFields``), so a smaller selector
      is written (see ``compare.drops_owned_fields``).
    - Only children labelled for the owner are listed, as the real client selects them; an
      unlabelled child still exists (and still serves, if its pods run).
    - ``faults`` refuse applies of a kind (and name); ``crd_missing`` makes HTTPRoutes unknown.
    - The split it holds (entry Service selector, route weights) is the last one applied successfully:
      nothing edits them by hand here, and a route deleted (or gone with its CRD) splits nothing.
    """

    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body)
        self.ready: dict[str, int] = {}
        self.faults: dict[str, tuple[str, str | None, ApiError]] = {}
        self.crd_missing = False

    def list_children(self, namespace: str, owner: str, owner_uid: str) -> dict[str, list[dict[str, Any]]]:
        self.calls.append("list")
        result: dict[str, list[dict[str, Any]]] = {kind: [] for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "HTTPRoute", "ControllerRevision")}
        for (kind, name), item in self.objects.items():
            labels = item.get("metadata", {}).get("labels") or {}
            if labels.get(LABEL_MANAGED_BY) != MANAGED_BY or labels.get(LABEL_DEPLOYMENT) != NAME:
                continue
            listed = copy.deepcopy(item)
            if kind == "Deployment":
                replicas = listed["spec"].get("replicas", 1)
                listed["status"] = {"replicas": replicas, "updatedReplicas": replicas,
                                    "readyReplicas": min(self.ready.get(name, 0), replicas)}
            result[kind].append(listed)
        return result

    def apply(self, manifest: Mapping[str, Any], field_manager: str = "modelops") -> None:
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        if kind == "HTTPRoute" and self.crd_missing:
            raise CRD_MISSING
        for fault_kind, fault_name, error in self.faults.values():
            if kind == fault_kind and (fault_name is None or fault_name == name):
                raise error
        before = self.objects.get((kind, name))
        old_template = before.get("spec", {}).get("template") if before else None
        super().apply(manifest, field_manager)
        if kind == "Service" and field_manager == "modelops":
            # What the real apiserver records: the manager owns the selector, an atomic map, whole.
            owned = {"manager": field_manager, "operation": "Apply", "fieldsV1": {"f:spec": {"f:selector": {}}}}
            self.objects[(kind, name)]["metadata"]["managedFields"] = [owned]
        if kind == "Deployment" and self.objects[(kind, name)]["spec"].get("template") != old_template:
            self.ready[name] = 0  # a new pod template: new pods, none Ready yet

    def owner_uids(self, namespace: str, kind: str, name: str) -> list[str] | None:
        self.calls.append(f"read {kind} {name}")
        if (kind, name) in self.objects:
            return ["u1"]  # ours, labelled or not
        return self.foreign.get((kind, name))

    def delete(self, namespace: str, kind: str, name: str) -> None:
        super().delete(namespace, kind, name)
        if kind == "Deployment":
            self.ready.pop(name, None)

    def receivers(self) -> dict[str, str]:
        """Version -> how it receives traffic now: selected by the entry Service with Ready pods, or a route weight."""
        found: dict[str, str] = {}
        entry = self.objects.get(("Service", NAME))
        selector = (entry or {}).get("spec", {}).get("selector") or {}
        for (kind, name), item in self.objects.items():
            if kind != "Deployment" or not selector or not self.ready.get(name):
                continue
            pod_labels = item["spec"]["template"]["metadata"]["labels"]
            if all(pod_labels.get(key) == value for key, value in selector.items()):
                found[pod_labels[LABEL_MODEL_VERSION]] = f"entry Service selects {name}"
        route = self.objects.get(("HTTPRoute", NAME))
        for service, weight in route_weights(route).items():
            version = next((v for v in VERSIONS if child_name(NAME, v) == service), service)
            if weight > 0:
                found.setdefault(version, f"route weight {weight} to {service}")
        return found


def route_weights(route: Mapping[str, Any] | None) -> dict[str, int]:
    if not route:
        return {}
    return {ref["name"]: int(ref.get("weight", 1)) for rule in route["spec"]["rules"] for ref in rule["backendRefs"]}


def passed(check: str, rollout: Any, evaluations: Mapping[str, Evaluation] | None) -> bool:
    """Whether ``check`` has evidence of passing in the current step: before this pass, or in it."""
    before = next((c.passed_in_step for c in rollout.checks if c.name == check), False)
    return before or (evaluations is not None and check in evaluations and evaluations[check].verdict == "Pass")


class PlannerMachine(RuleBasedStateMachine):
    """The world, the operator's passes, and what must hold after each."""

    def __init__(self) -> None:
        super().__init__()
        self.now = NOW
        self.cluster = FaultyCluster({"metadata": {"name": NAME, "namespace": "ns", "uid": "u1", "generation": 1}})
        self.released: set[str] = set()  # every version that was ever stable or canary
        self.route_refused = False
        self.release_replicas: dict[str, int] = {}  # version -> wanted replicas, as the spec last released it
        self.action_count = 0

    # ---- the spec ---------------------------------------------------------------------------

    @property
    def spec_document(self) -> dict[str, Any]:
        return self.cluster.body["spec"]

    @property
    def spec(self) -> ModelDeploymentSpec:
        return ModelDeploymentSpec.model_validate(self.spec_document)

    def edit_spec(self, change: dict[str, Any]) -> None:
        self.cluster.body["spec"] = {**self.spec_document, **change}
        self.cluster.body["metadata"]["generation"] += 1

    def edit_rollout(self, **change: Any) -> None:
        self.edit_spec({"rollout": {**self.spec_document["rollout"], **change}})

    def status(self) -> ModelDeploymentStatus:
        return read_status(self.cluster.body)[0]

    @initialize(version=st.sampled_from(VERSIONS), steps=st.sampled_from(STEPS),
                checks=st.sampled_from(((), ("latency",), ("latency", "errors"))), gateway=st.booleans())
    def create(self, version: str, steps: tuple[dict[str, Any], ...], checks: tuple[str, ...], gateway: bool) -> None:
        self.cluster.body["spec"] = document(version, steps, checks)
        if gateway:
            self.spec_document["rollout"]["router"] = GATEWAY
        self.run_pass()

    @rule(version=st.sampled_from(VERSIONS))
    def set_version(self, version: str) -> None:
        self.edit_spec({"model": {"version": version, "uri": f"s3://models/m/{version}/"}})
        self.run_pass()

    @rule()
    def return_to_stable(self) -> None:
        stable = self.status().stable
        if stable is not None:
            self.edit_spec({"model": {"version": stable.version, "uri": f"s3://models/m/{stable.version}/"}})
        self.run_pass()

    def set_image(self, image: str) -> None:
        self.edit_spec({"runtime": {"image": image}})
        self.run_pass()

    def set_scaling(self, scaling: dict[str, int]) -> None:
        self.edit_spec({"scaling": scaling})
        self.run_pass()

    @rule(steps=st.sampled_from(STEPS), checks=st.sampled_from(((), ("latency",), ("latency", "errors"))),
          skip=st.booleans(), failure_limit=st.sampled_from((0, 1)))
    def set_rollout(self, steps: tuple[dict[str, Any], ...], checks: tuple[str, ...], skip: bool, failure_limit: int) -> None:
        analysis = {**self.spec_document["rollout"]["analysis"], "checks": [CHECKS[n] for n in checks], "failureLimit": failure_limit}
        self.edit_rollout(steps=list(steps), analysis=analysis, skipAnalysis=skip)
        self.run_pass()

    def set_router(self, gateway: bool) -> None:
        self.edit_rollout(router=GATEWAY if gateway else {"type": "replicas"})
        self.run_pass()

    def set_monitoring(self, monitored: bool) -> None:
        self.edit_spec({"monitoring": MONITORING if monitored else None})
        if not monitored:
            self.spec_document.pop("monitoring")
        self.run_pass()

    def set_paused(self, paused: bool) -> None:
        self.edit_rollout(paused=paused)
        self.run_pass()

    @rule(edit=st.one_of(
        st.tuples(st.just("image"), st.sampled_from(IMAGES)),
        st.tuples(st.just("scaling"), st.sampled_from(SCALINGS)),
        st.tuples(st.just("router"), st.booleans()),  # gatewayAPI or replicas
        st.tuples(st.just("monitoring"), st.booleans()),
        st.tuples(st.just("paused"), st.booleans()),
    ))
    def edit_spec_field(self, edit: tuple[str, Any]) -> None:
        """One rule for the spec edits besides version and rollout, so that they do not crowd out the rest."""
        field, value = edit
        getattr(self, f"set_{field}")(value)

    # ---- time, verdicts, actions --------------------------------------------------------------

    @rule(seconds=st.sampled_from((1, 10, 30, 60, 301)))
    def advance_time(self, seconds: int) -> None:
        self.now = seconds_after(self.now, seconds)
        self.run_pass()

    @rule(verdicts=st.lists(st.sampled_from(("Pass", "Pass", "Fail", "NoData", "Error")), min_size=2, max_size=2))
    def analysis_tick(self, verdicts: list[str]) -> None:
        """The analysis loop: when the live canary's checks are due, its verdicts go into a pass."""
        self.now = seconds_after(self.now, 30)
        status = self.status()
        evaluations = None
        if status.rollout is not None and analysis_due(status, self.now):
            names = [check.name for check in self.spec.rollout.analysis.checks]
            evaluations = {name: evaluation(verdict) for name, verdict in zip(names, verdicts, strict=False)}
        self.run_pass(evaluations=evaluations)

    @rule(verdict=st.sampled_from(("Pass", "Pass", "Fail")), ticks=st.integers(1, 4))
    def all_goes_well(self, verdict: str, ticks: int) -> None:
        """``ticks`` times 30 s in which every pod becomes Ready and the checks that are due report
        ``verdict`` (then Pass): without this rule a run rarely gets a canary through its steps."""
        for tick in range(ticks):
            for kind, name in self.cluster.objects:
                if kind == "Deployment":
                    self.cluster.ready[name] = self.cluster.objects[(kind, name)]["spec"].get("replicas", 1)
            self.analysis_tick([verdict if tick == 0 else "Pass", "Pass"])

    @rule(verdict=st.sampled_from(("Pass", "Fail", "NoData")))
    def monitoring_tick(self, verdict: str) -> None:
        self.now = seconds_after(self.now, 30)
        due = "monitoring" in self.spec_document and monitoring_due(self.spec, self.status(), self.now)
        evaluations = {"drift": evaluation(verdict)} if due else None
        self.run_pass(monitoring_evaluations=evaluations)

    @rule(action=st.sampled_from(("promote", "abort", "retry", "pause", "resume")))
    def request_action(self, action: str) -> None:
        self.now = seconds_after(self.now, 1)
        annotations = self.cluster.body["metadata"].setdefault("annotations", {})
        annotations[f"modelops.dev/action.{action}"] = self.now
        self.run_pass()

    # ---- the world ------------------------------------------------------------------------------

    @rule(data=st.data(), how=st.sampled_from(("all", "none", "all but one")))
    def pods_become_ready(self, data: st.DataObject, how: str) -> None:
        deployments = sorted(name for kind, name in self.cluster.objects if kind == "Deployment")
        if deployments:
            name = data.draw(st.sampled_from(deployments))
            replicas = self.cluster.objects[("Deployment", name)]["spec"].get("replicas", 1)
            self.cluster.ready[name] = {"all": replicas, "none": 0, "all but one": max(0, replicas - 1)}[how]
        self.run_pass()

    def delete_child(self, data: st.DataObject) -> None:
        if self.cluster.objects:
            key = data.draw(st.sampled_from(sorted(self.cluster.objects)))
            self.cluster.delete("ns", *key)
        self.run_pass()

    def edit_stable_by_hand(self, edit: str) -> None:
        stable = self.status().stable
        deployment = self.cluster.objects.get(("Deployment", child_name(NAME, stable.version))) if stable else None
        if deployment is not None:
            if edit == "image":
                deployment["spec"]["template"]["spec"]["containers"][0]["image"] = "evil.example/x:1"
                self.cluster.ready[deployment["metadata"]["name"]] = 0
            elif edit == "scale to 0":
                deployment["spec"]["replicas"] = 0
            else:
                deployment["metadata"]["labels"].pop(LABEL_MANAGED_BY, None)
        self.run_pass()

    def set_write_fault(self, fault: str | None) -> None:
        """At most one kind of write fails at a time (None: the faults clear)."""
        self.cluster.faults = {fault: WRITE_FAULTS[fault]} if fault else {}
        self.run_pass()

    def set_route_crd_missing(self, missing: bool) -> None:
        """Without the Gateway API CRD, routes are gone and applying one is a 404."""
        self.cluster.crd_missing = missing
        if missing:
            self.cluster.objects.pop(("HTTPRoute", NAME), None)
        self.run_pass()

    def gateway_judges_route(self, refused: bool) -> None:
        self.route_refused = refused
        route = self.cluster.objects.get(("HTTPRoute", NAME))
        if route is not None:
            condition = {"type": "Accepted", "status": "False" if refused else "True", "reason": "NotAllowedByListeners" if refused else "Accepted"}
            route["status"] = {"parents": [{"parentRef": {"name": "public"}, "conditions": [condition]}]}
        self.run_pass()

    @rule(data=st.data(), edit=st.sampled_from(("delete a child", "image", "scale to 0", "unlabel")))
    def edit_by_hand(self, data: st.DataObject, edit: str) -> None:
        """Someone deletes any child, or edits the stable Deployment: its image, scale to 0, its managed-by label."""
        if edit == "delete a child":
            self.delete_child(data)
        else:
            self.edit_stable_by_hand(edit)

    @rule(fault=st.one_of(
        st.tuples(st.just("write_fault"), st.sampled_from((None, *WRITE_FAULTS))),
        st.tuples(st.just("route_crd_missing"), st.booleans()),
        st.tuples(st.just("gateway_judges_route"), st.booleans()),  # True: Accepted=False
    ))
    def change_faults(self, fault: tuple[str, Any]) -> None:
        """Failed writes, the HTTPRoute CRD, a Gateway's verdict on the route: one rule for them all."""
        which, value = fault
        {"write_fault": self.set_write_fault, "route_crd_missing": self.set_route_crd_missing,
         "gateway_judges_route": self.gateway_judges_route}[which](value)

    @rule(corruption=st.sampled_from(("metrics", "no stable")))
    def unreadable_status(self, corruption: str) -> None:
        """A status the models refuse (or that lost ``stable``): the pass writes no child and holds;
        a human then restores it."""
        saved = copy.deepcopy(self.cluster.body.get("status") or {})
        if corruption == "metrics":
            run = {"job": "m-retrain-1", "trigger": "drift", "startedAt": self.now, "outcome": "Succeeded",
                   "candidate": {"version": "9.0", "uri": "s3://models/m/9.0/", "metrics": {"auc": "high"}}}
            self.cluster.body["status"] = {**saved, "retraining": {"runs": 1, "lastRun": run}}
        else:
            self.cluster.body["status"] = {key: value for key, value in saved.items() if key != "stable"}
        before = copy.deepcopy(self.cluster.body["status"])
        children = copy.deepcopy(self.cluster.objects)
        outcome = reconcile(self.cluster, copy.deepcopy(self.cluster.body), self.now)
        stable_before = (saved.get("stable") or {}).get("version")
        stable_after = ((self.cluster.body.get("status") or {}).get("stable") or {}).get("version")
        if corruption == "no stable" and stable_after is not None:
            # Released again from a status without ``stable``: only safe as the same version (nothing else left a trace).
            assert stable_after == stable_before, f"status without stable released {stable_after} (stable was {stable_before})"
        else:
            assert outcome.applied == [] and outcome.deleted == [], f"an unreadable status wrote children: {outcome}"
            assert self.cluster.objects == children
            after = self.cluster.body["status"]
            assert {k: v for k, v in after.items() if k not in ("phase", "message", "conditions")} == \
                   {k: v for k, v in before.items() if k not in ("phase", "message", "conditions")}
            degraded = next(c for c in after["conditions"] if c["type"] == "Degraded")
            assert (degraded["status"], degraded["reason"]) == ("True", "StatusUnreadable")
            assert next(c for c in after["conditions"] if c["type"] == "Ready")["status"] != "True"
            self.cluster.body["status"] = saved
        self.run_pass()

    @rule()
    def operator_restarts(self) -> None:
        """A new pass from the stored object only (nothing is carried between passes anyway)."""
        self.run_pass()

    # ---- one pass, and what must hold after it --------------------------------------------------

    def run_pass(self, evaluations: Mapping[str, Evaluation] | None = None,
                 monitoring_evaluations: Mapping[str, Evaluation] | None = None) -> Outcome:
        body = copy.deepcopy(self.cluster.body)
        before, unreadable = read_status(body)
        spec = self.spec
        actions = new_actions(body, before)
        route_refused_before = route_is_refused(self.cluster.objects.get(("HTTPRoute", NAME)))
        self.cluster.calls.clear()
        outcome = reconcile(self.cluster, body, self.now, evaluations, monitoring_evaluations)
        after = self.status()
        for happened in outcome.events:
            event(happened.reason)  # shown by --hypothesis-show-statistics: what the runs reached
        if unreadable:
            assert outcome.applied == [] and outcome.deleted == []
            return outcome
        self.check_stable_transition(spec, before, after, evaluations, monitoring_evaluations, actions, route_refused_before)
        self.check_step_transitions(spec, before, after, evaluations, actions, route_refused_before)
        self.check_unblocking(spec, before, after, actions)
        self.check_world()
        self.released |= {v.version for v in (after.stable, after.canary) if v is not None}
        if spec.model.version in self.released:
            self.release_replicas[spec.model.version] = wanted_of(spec)
        return outcome

    def check_stable_transition(self, spec: ModelDeploymentSpec, before: ModelDeploymentStatus, after: ModelDeploymentStatus,
                                evaluations: Mapping[str, Evaluation] | None, monitoring: Mapping[str, Evaluation] | None,
                                actions: set[str], route_refused: bool) -> None:
        old = before.stable.version if before.stable else None
        new = after.stable.version if after.stable else None
        if new == old:
            return
        assert new is not None, f"status lost its stable version {old}"
        if old is None:
            assert self.released <= {new}, f"{new} released as the first version although {sorted(self.released)} were released"
            return
        rollout = before.rollout
        previous = before.previous
        fired = monitoring is not None and any(e.verdict == "Fail" for e in monitoring.values())
        if fired and previous is not None and new == previous.version:
            return  # a monitoring rollback to the previous stable
        assert new == spec.model.version, f"{new} became stable although the spec names {spec.model.version}"
        if "promote" in actions:
            return
        if rollout is None or rollout.revision != new:
            # Started and completed in this one pass (status never showed its start: a traffic write
            # failed until now): only possible with nothing to wait for.
            assert not checks_gate(spec) and all(step.pause is None for step in spec.rollout.steps), \
                f"{new} became stable in the pass that started it, with checks or pauses to wait for"
            return
        assert not route_refused or spec.rollout.router.type != "gatewayAPI", f"{new} promoted while the Gateway refused the route"
        steps = spec.rollout.steps
        if rollout.step >= len(steps) and steps:
            return  # every step completed earlier, each checked by check_step_transitions
        if steps:
            self.assert_steps_complete(spec, rollout, evaluations, actions, len(steps))
        elif checks_gate(spec):
            missing = [c.name for c in spec.rollout.analysis.checks if not passed(c.name, rollout, evaluations)]
            assert not missing, f"{new} promoted blue/green without passing {missing}"

    def check_step_transitions(self, spec: ModelDeploymentSpec, before: ModelDeploymentStatus, after: ModelDeploymentStatus,
                               evaluations: Mapping[str, Evaluation] | None, actions: set[str], route_refused: bool) -> None:
        old, new = before.rollout, after.rollout
        if old is None or new is None or old.revision != new.revision or new.step <= old.step:
            return
        assert not (route_refused and spec.rollout.router.type == "gatewayAPI"), "a step completed while the Gateway refused the route"
        self.assert_steps_complete(spec, old, evaluations, actions, new.step)

    def assert_steps_complete(self, spec: ModelDeploymentSpec, rollout: Any, evaluations: Mapping[str, Evaluation] | None,
                              actions: set[str], end: int) -> None:
        """Steps ``rollout.step`` to ``end`` (exclusive) completed in this pass: the first on the evidence
        gathered in it, each later one with nothing to wait for (its checks and pause start now)."""
        self.assert_step_complete(spec, rollout, evaluations, actions, rollout.step)
        for later in range(rollout.step + 1, end):
            assert not checks_gate(spec), f"step {later} completed in the same pass as step {rollout.step}, without evidence of its own"
            assert spec.rollout.steps[later].pause is None, f"pause step {later} completed in the pass it began"

    def assert_step_complete(self, spec: ModelDeploymentSpec, rollout: Any, evaluations: Mapping[str, Evaluation] | None,
                             actions: set[str], index: int) -> None:
        step = spec.rollout.steps[index]
        if step.pause is not None and step.pause.duration is None and "resume" in actions:
            return
        assert step.pause is None or step.pause.duration is not None, f"a pause without duration (step {index}) ended without resume"
        if step.pause is not None and step.pause.duration is not None:
            waited = (parse_time(self.now) - parse_time(rollout.step_started_at)).total_seconds()
            assert waited >= duration_seconds(step.pause.duration), f"step {index} ended after {waited}s of {step.pause.duration}"
        if checks_gate(spec):
            missing = [c.name for c in spec.rollout.analysis.checks if not passed(c.name, rollout, evaluations)]
            assert not missing, f"step {index} completed without {missing} passing in it"

    def check_unblocking(self, spec: ModelDeploymentSpec, before: ModelDeploymentStatus, after: ModelDeploymentStatus, actions: set[str]) -> None:
        blocked = before.blocked_revision
        if blocked is None or (after.blocked_revision is not None and after.blocked_revision.version == blocked.version):
            return
        if after.blocked_revision is not None:
            return  # another rollback: only the last is recorded
        assert "retry" in actions and spec.model.version == blocked.version, f"{blocked.version} unblocked without retry"

    def check_world(self) -> None:
        """What must hold of status and the cluster after any pass."""
        self.blocked_revision_gets_no_traffic()
        self.traffic_only_to_stable_and_live_canary()
        self.ready_means_the_wanted_replicas_are_ready()
        self.status_weights_are_the_applied_split()

    def blocked_revision_gets_no_traffic(self) -> None:
        status = self.status()
        blocked = status.blocked_revision
        if blocked is None or status.stable is None or blocked.version == status.stable.version:
            return
        receives = self.cluster.receivers().get(blocked.version)
        assert receives is None, f"blocked {blocked.version} receives traffic: {receives}"
        if status.canary is not None and status.canary.version == blocked.version:
            assert not status.canary.weight, f"status gives blocked {blocked.version} weight {status.canary.weight}"

    def traffic_only_to_stable_and_live_canary(self) -> None:
        status = self.status()
        if status.stable is None:
            return
        allowed = {status.stable.version} | ({status.rollout.revision} if status.rollout else set())
        stray = {v: how for v, how in self.cluster.receivers().items() if v not in allowed}
        assert not stray, f"traffic to versions neither stable nor the live canary: {stray}"

    def ready_means_the_wanted_replicas_are_ready(self) -> None:
        status = self.status()
        ready = next((c for c in status.conditions if c.type == "Ready"), None)
        if ready is None or ready.status != "True" or status.stable is None:
            return
        stable = status.stable.version
        wanted = self.wanted_replicas(stable)
        assert wanted is not None, f"Ready=True while the replicas {stable} was released with are unknown (no record)"
        deployment = self.cluster.objects.get(("Deployment", child_name(NAME, stable)))
        labels = (deployment or {}).get("metadata", {}).get("labels", {})
        assert deployment is not None and labels.get(LABEL_MANAGED_BY) == MANAGED_BY, "Ready=True without a managed stable Deployment"
        have = min(self.cluster.ready.get(child_name(NAME, stable), 0), deployment["spec"].get("replicas", 1))
        assert have >= wanted, f"Ready=True with {have}/{wanted} replicas of {stable} Ready"

    def wanted_replicas(self, version: str) -> int | None:
        """What the version was released with: the spec while it names it, else its newest record (or,
        when its record is gone, what the spec said when it last named it)."""
        if self.spec.model.version == version:
            return wanted_of(self.spec)
        found = [revisions.observe_revision(item) for (kind, _), item in self.cluster.objects.items() if kind == revisions.KIND]
        records = [r for r in found if r.record is not None and r.version == version]
        if not records:
            return self.release_replicas.get(version)
        record = max(records, key=lambda r: r.revision).record
        assert record is not None
        return wanted_of(revisions.spec_from_record(self.spec, record))

    def status_weights_are_the_applied_split(self) -> None:
        status = self.status()
        if status.stable is None:
            return
        entry = self.cluster.objects.get(("Service", NAME))
        selector = (entry or {}).get("spec", {}).get("selector") or {}
        canary_weight = (status.canary.weight or 0) if status.canary else 0
        if entry is not None:
            if LABEL_MODEL_VERSION in selector:
                assert selector[LABEL_MODEL_VERSION] == status.stable.version, f"entry Service selects {selector}, status says stable {status.stable.version}"
                if self.spec.rollout.router.type == "replicas":
                    assert canary_weight == 0, f"status gives the canary {canary_weight}% while the entry Service selects stable only"
            else:
                assert self.spec.rollout.router.type == "replicas" and status.rollout is not None and status.canary is not None, \
                    "the entry Service selects every version without a live canary"
        route = self.cluster.objects.get(("HTTPRoute", NAME))
        if self.spec.rollout.router.type == "gatewayAPI" and route is not None:
            applied = route_weights(route)
            assert status.stable.weight == applied.get(child_name(NAME, status.stable.version), 0), \
                f"status gives stable {status.stable.weight}%, the route {applied}"
            if status.canary is not None:
                assert canary_weight == applied.get(child_name(NAME, status.canary.version), 0), \
                    f"status gives canary {canary_weight}%, the route {applied}"

    @invariant()
    def with_nothing_changing_a_pass_writes_nothing(self) -> None:
        if self.cluster.faults or self.cluster.crd_missing or read_status(self.cluster.body)[1]:
            return
        for _ in range(4):  # a pass may need the next one to see what it wrote
            if not self.run_pass().wrote:
                break
        again = self.run_pass()
        assert not again.wrote, f"a second pass with nothing changed wrote: {again.applied} {again.deleted} status={again.status_written}"
        later = seconds_after(self.now, 1)
        if not timer_due(self.status(), self.spec, self.now, later):
            self.now = later
            quiet = self.run_pass()
            assert not quiet.wrote, f"a pass 1 s later with nothing due wrote: {quiet.applied} {quiet.deleted} status={quiet.status_written}"


def evaluation(verdict: str) -> Evaluation:
    value = {"Pass": 0.01, "Fail": 9.0}.get(verdict)
    return Evaluation(verdict, value, None, f"{verdict} (test)")  # type: ignore[arg-type]


def wanted_of(spec: ModelDeploymentSpec) -> int:
    """The replicas a version rendered from ``spec`` must have Ready: the fixed count, or minReplicas."""
    scaling = spec.scaling
    if scaling.replicas is not None:
        return scaling.replicas
    return 1 if scaling.max_replicas is None else (scaling.min_replicas or 1)


def checks_gate(spec: ModelDeploymentSpec) -> bool:
    """Whether checks must pass for a step to complete."""
    return bool(spec.rollout.analysis.checks) and not spec.rollout.skip_analysis


def new_actions(body: Mapping[str, Any], status: ModelDeploymentStatus) -> set[str]:
    annotations = body["metadata"].get("annotations") or {}
    requested = {key.removeprefix("modelops.dev/action."): value for key, value in annotations.items()}
    return {name for name, value in requested.items() if name in ACTIONS and value != getattr(status.handled_actions, name)}


def route_is_refused(route: Mapping[str, Any] | None) -> bool:
    parents = ((route or {}).get("status") or {}).get("parents") or []
    return any(c.get("status") == "False" for parent in parents for c in parent.get("conditions") or [])


def timer_due(status: ModelDeploymentStatus, spec: ModelDeploymentSpec, start: str, end: str) -> bool:
    """Whether any of the planner's clocks (steps, deadlines, delays, analysis) may tick in (start, end]."""
    moments = [status.previous.scale_down_at if status.previous else None]
    durations = [0.0, duration_seconds(spec.rollout.progress_deadline), duration_seconds(spec.rollout.abort_scale_down_delay)]
    durations += [duration_seconds(s.pause.duration) for s in spec.rollout.steps if s.pause and s.pause.duration]
    if status.rollout is not None:
        moments += [status.rollout.step_started_at, status.rollout.last_progress_at, status.rollout.held_since, status.rollout.next_analysis_at]
    if status.blocked_revision is not None:
        moments.append(status.blocked_revision.at)
    if status.monitoring is not None:
        moments.append(status.monitoring.next_evaluation_at)
    low, high = parse_time(start), parse_time(end)
    for moment in filter(None, moments):
        for seconds in durations:
            if low < parse_time(moment) + datetime.timedelta(seconds=seconds) <= high:
                return True
    return False


PlannerMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("INVARIANT_EXAMPLES", "60")),
    report_multiple_bugs=False,
    phases=[Phase.explicit, Phase.generate, Phase.shrink],  # no "explain": it traces every line, far too slow here
    stateful_step_count=30,
    deadline=None,
    derandomize=not os.environ.get("INVARIANT_EXPLORE"),  # set it (and INVARIANT_EXAMPLES) to search beyond CI's fixed runs
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestPlanner = PlannerMachine.TestCase


# ---- minimal examples of what the machine found ------------------------------------------------


def converge(cluster: FaultyCluster, now: str) -> Outcome:
    outcome = Outcome()
    for _ in range(4):
        outcome = reconcile(cluster, copy.deepcopy(cluster.body), now)
    return outcome


def canary_beside_ready_stable() -> FaultyCluster:
    """1.0 stable with its 2 replicas Ready; the spec names 2.0, a canary holding on its checks."""
    cluster = FaultyCluster({"metadata": {"name": NAME, "namespace": "ns", "uid": "u1", "generation": 1},
                             "spec": document("1.0", ({"setWeight": 50},), ("latency",))})
    converge(cluster, NOW)
    cluster.ready["m-1-0"] = 2
    cluster.body["spec"] = document("2.0", ({"setWeight": 50},), ("latency",))
    converge(cluster, NOW)
    return cluster


def test_a_stable_without_its_record_scaled_to_0_is_not_ready() -> None:
    cluster = canary_beside_ready_stable()
    record = next(key for key in cluster.objects if key[0] == revisions.KIND and key[1].startswith("m-1-0-"))
    cluster.delete("ns", *record)
    cluster.objects[("Deployment", "m-1-0")]["spec"]["replicas"] = 0
    converge(cluster, seconds_after(NOW, 10))
    ready = next(c for c in cluster.body["status"]["conditions"] if c["type"] == "Ready")
    assert ready["status"] != "True", f"0 replicas of the stable reported as {ready}"


def test_a_failed_entry_service_write_puts_the_route_back_to_the_split_status_shows() -> None:
    gateway_rollout = {**document("2.0", (), ())["rollout"], "router": GATEWAY}
    cluster = FaultyCluster({"metadata": {"name": NAME, "namespace": "ns", "uid": "u1", "generation": 1},
                             "spec": {**document("2.0", (), ()), "rollout": gateway_rollout}})
    converge(cluster, NOW)
    cluster.body["spec"] = {**document("1.0", (), ()), "rollout": gateway_rollout}
    converge(cluster, NOW)
    cluster.faults = {"entry-service": WRITE_FAULTS["entry-service"]}
    cluster.body["metadata"]["annotations"] = {"modelops.dev/action.promote": seconds_after(NOW, 1)}
    outcome = reconcile(cluster, copy.deepcopy(cluster.body), seconds_after(NOW, 1))
    assert "Service m: Service m is invalid: spec.selector" in outcome.errors
    assert outcome.applied[-1] == "HTTPRoute m (restored)"  # it had moved to 1.0 first
    assert cluster.body["status"]["stable"]["version"] == "2.0"
    assert route_weights(cluster.objects[("HTTPRoute", NAME)]) == {"m-2-0": 100, "m-1-0": 0}


def test_a_status_without_stable_does_not_release_the_canary_when_the_stable_deployment_and_record_are_gone() -> None:
    cluster = canary_beside_ready_stable()
    for key in [key for key in cluster.objects if key[0] in ("Deployment", revisions.KIND) and key[1].startswith("m-1-0")]:
        cluster.delete("ns", *key)
    del cluster.body["status"]["stable"]
    outcome = reconcile(cluster, copy.deepcopy(cluster.body), seconds_after(NOW, 10))
    assert outcome.applied == [] and outcome.deleted == []
    assert "stable" not in cluster.body["status"]
    degraded = next(c for c in cluster.body["status"]["conditions"] if c["type"] == "Degraded")
    assert (degraded["reason"], degraded["message"].split(",")[0]) == ("StatusUnreadable", "status.stable is missing")


def test_a_promotion_the_route_cannot_follow_leaves_the_entry_service_on_the_stable_status_shows() -> None:
    gateway = {**document("1.0", (), ()), "rollout": {**document("1.0", (), ())["rollout"], "router": GATEWAY}}
    cluster = FaultyCluster({"metadata": {"name": NAME, "namespace": "ns", "uid": "u1", "generation": 1}, "spec": gateway})
    cluster.crd_missing = True
    converge(cluster, NOW)
    cluster.body["spec"] = {**gateway, "model": {"version": "2.0", "uri": "s3://models/m/2.0/"}}
    converge(cluster, NOW)
    cluster.ready.update({"m-1-0": 2, "m-2-0": 2})  # blue/green without checks: 2.0 is promoted once Ready
    outcome = reconcile(cluster, copy.deepcopy(cluster.body), seconds_after(NOW, 10))
    assert any(error.startswith("HTTPRoute m: the server could not find") for error in outcome.errors)
    assert "Service m: not updated, because HTTPRoute m could not be applied" in outcome.errors
    assert "Service m" not in outcome.applied and "Service m (restored)" not in outcome.applied  # not moved: nothing to restore
    assert cluster.body["status"]["stable"]["version"] == "1.0"
    assert cluster.objects[("Service", NAME)]["spec"]["selector"][LABEL_MODEL_VERSION] == "1.0"


def test_a_check_added_while_a_canary_runs_gates_it() -> None:
    cluster = FaultyCluster({"metadata": {"name": NAME, "namespace": "ns", "uid": "u1", "generation": 1},
                             "spec": document("1.0", (), ())})
    converge(cluster, NOW)
    cluster.body["spec"] = document("2.0", (), ())  # blue/green without checks
    converge(cluster, NOW)
    cluster.body["spec"] = document("2.0", (), ("latency",))  # a check is added before 2.0 is Ready
    converge(cluster, NOW)
    cluster.ready.update({"m-1-0": 2, "m-2-0": 2})
    converge(cluster, seconds_after(NOW, 30))
    status = read_status(cluster.body)[0]
    assert status.stable is not None and status.stable.version == "1.0", "promoted without the latency check"
    assert status.rollout is not None and [check.name for check in status.rollout.checks] == ["latency"]
    assert analysis_due(status, seconds_after(NOW, 30))


def test_resume_at_a_manual_gate_does_not_carry_its_passed_checks_into_the_next_step() -> None:
    gated = ({"setWeight": 30}, {"pause": {}}, {"setWeight": 70})
    cluster = FaultyCluster({"metadata": {"name": NAME, "namespace": "ns", "uid": "u1", "generation": 1},
                             "spec": document("1.0", gated, ("latency",))})
    converge(cluster, NOW)
    cluster.body["spec"] = document("2.0", gated, ("latency",))
    converge(cluster, NOW)
    cluster.ready.update({"m-1-0": 2, "m-2-0": 2})
    for tick in (30, 60):  # a Pass completes step 0; another passes the check at the manual gate (step 1)
        cluster.ready["m-2-0"] = cluster.objects[("Deployment", "m-2-0")]["spec"]["replicas"]
        reconcile(cluster, copy.deepcopy(cluster.body), seconds_after(NOW, tick), {"latency": evaluation("Pass")})
        converge(cluster, seconds_after(NOW, tick))
    status = read_status(cluster.body)[0]
    assert status.rollout is not None and status.rollout.step == 1 and status.rollout.checks[0].passed_in_step
    cluster.body["metadata"]["annotations"] = {"modelops.dev/action.resume": seconds_after(NOW, 61)}
    converge(cluster, seconds_after(NOW, 61))
    status = read_status(cluster.body)[0]
    assert status.rollout is not None and status.rollout.step == 2, "step 2 (70 %) completed without a check passing in it"
    assert not status.rollout.checks[0].passed_in_step
