"""The rollout state machine: which version is stable, which is the canary, at what weight.

Pure: it takes the previous status, the spec, whether each version's pods are serving,
the check evaluations of this tick (if analysis ran), the manual actions requested, and
``now``; it returns the next state. Everything it needs later lives in status, so an
operator restart resumes at the same step with the same counters.

A revision's life (``target`` is ``spec.model.version``, ``stable`` is ``status.stable``):

1. **First version**: stable directly (history: Promoted). Only when status names no stable
   version at all: a stable version whose Deployment is gone is recreated from its record
   (``revisions``), never replaced by the spec's version. A version becomes stable only by
   this first release, a completed analysis, a manual ``promote``, ``skipAnalysis``, or a
   monitoring rollback to the previous stable.
2. **New target**: a canary starts at step 0, weight 0. A previous canary of another
   revision is superseded (history: Superseded) and removed.
3. **Steps**: ``setWeight`` sets the weight; ``pause`` waits for its duration (or, without
   one, for ``promote``/``resume``). A step completes only when its pause has elapsed
   **and** every check has passed at least once since the step began. Then the next step
   starts. After the last step the canary is promoted. No checks, or ``skipAnalysis``:
   checks count as passed. Nothing advances until the canary's pods are all Ready, nor while
   the pass reports a ``hold`` it cannot fix by itself (the stable version not serving or
   without a record, traffic that cannot be split as planned).
4. **Analysis** (when this tick ran the checks): Pass marks the check passed in the step.
   Fail adds to ``failures``; ``failures > failureLimit`` rolls back. NoData holds. Error
   holds and counts ``consecutiveErrors``; at ``consecutiveErrorLimit`` the rollout reports
   MetricsUnavailable. A tick without errors resets that count.
5. **Progress deadline**: no step completed for ``progressDeadline`` rolls back, naming
   what it was waiting for. A pause (spec, ``modelops pause``, or a step without
   duration waiting for a human) and a ``hold`` stop the clock: ``heldSince`` is written once
   when the clock stops, and when it restarts ``lastProgressAt`` moves forward by the time
   held, so a held canary costs no status write per pass.
6. **Promotion**: the canary becomes stable at 100 %; the previous stable keeps running
   until ``scaleDownDelay`` has passed (``status.previous``), then is removed.
7. **Rollback**: all traffic to stable at once; ``status.blockedRevision`` records the
   version and reason; the canary keeps running ``abortScaleDownDelay`` then is removed.
   The revision is never retried until the spec names another version or ``retry`` is
   requested.

Manual actions arrive as annotations (``modelops.dev/action.<name>``); an action is carried
out once, and its value is recorded in ``status.handledActions``. When ``pause`` and
``resume`` are both new, the one the apiserver received last wins (``action_order``); without
an order, ``pause`` wins, the safe choice.
"""

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from modelops.api.timestamps import format_timestamp as format_time
from modelops.api.timestamps import parse_timestamp as parse_time
from modelops.api.v1alpha1 import (
    BlockedRevision,
    CheckStatus,
    HandledActions,
    HistoryEntry,
    Measurement,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    Outcome,
    PreviousStable,
    RolloutStatus,
    duration_seconds,
)
from modelops.planning.actions import ACTIONS
from modelops.planning.analysis import Evaluation, threshold_text, value_query

MEASUREMENTS_KEPT = 10


@dataclass(frozen=True)
class Event:
    type: str  # Normal or Warning
    reason: str
    message: str


@dataclass(frozen=True)
class Hold:
    """Why a live canary must not move forward, for a reason outside it (see ``advance``)."""

    reason: str  # CamelCase, for conditions: StableRecordMissing, StableNotServing, TrafficSplitUnavailable
    message: str
    degraded: bool = True  # whether it also sets Degraded (a stable pod restarting does not)


@dataclass(frozen=True)
class RolloutState:
    """The outcome of one step of the state machine."""

    stable: str
    canary: str | None  # a version whose canary children must exist (live, or rolled back and cooling down)
    weight: int  # configured canary weight, percent
    rollout: RolloutStatus | None
    blocked: BlockedRevision | None
    previous: PreviousStable | None
    history: tuple[HistoryEntry, ...]
    handled: HandledActions
    events: tuple[Event, ...] = ()
    first_release: bool = False
    hold_reason: str = ""  # why a live canary is not advancing ("" when it is, or there is none)
    metrics_unavailable: bool = False
    hold: Hold | None = None  # the outside reason given to advance, while it held a live canary


def _after(start: str, seconds: float) -> str:
    return format_time(parse_time(start) + datetime.timedelta(seconds=seconds))


def _elapsed(start: str, now: str) -> float:
    return (parse_time(now) - parse_time(start)).total_seconds()


def _stopped_clock(rollout: RolloutStatus, now: str) -> RolloutStatus:
    """The progress-deadline clock stopped at ``now`` (unchanged when already stopped: no write per pass)."""
    return rollout if rollout.held_since is not None else rollout.model_copy(update={"held_since": now})


def _running_clock(rollout: RolloutStatus, now: str) -> RolloutStatus:
    """The clock running again: ``lastProgressAt`` moves forward by the time it was stopped."""
    if rollout.held_since is None:
        return rollout
    held = max(0.0, _elapsed(rollout.held_since, now))
    return rollout.model_copy(update={"held_since": None, "last_progress_at": _after(rollout.last_progress_at, held)})


def _progressed(rollout: RolloutStatus, now: str, **changes: object) -> RolloutStatus:
    """The rollout moved forward at ``now``: the deadline counts from here, and the clock runs."""
    return rollout.model_copy(update={"last_progress_at": now, "held_since": None, **changes})


def _next_step(rollout: RolloutStatus, now: str) -> RolloutStatus:
    """The next step starts at ``now``: the deadline counts from here, and every check needs new evidence in it."""
    checks = [check.model_copy(update={"passed_in_step": False}) for check in rollout.checks]
    return _progressed(rollout, now, step=rollout.step + 1, step_started_at=now, checks=checks)


@dataclass
class _Run:
    """Mutable working state of one call of :func:`advance`."""

    spec: ModelDeploymentSpec
    now: str
    stable: str
    rollout: RolloutStatus | None
    blocked: BlockedRevision | None
    previous: PreviousStable | None
    history: list[HistoryEntry]
    handled: HandledActions
    events: list[Event] = field(default_factory=list)
    hold_reason: str = ""
    at_manual_gate: bool = False

    def record(self, version: str, outcome: Outcome, reason: str) -> None:
        limit = self.spec.revision_history_limit
        self.history = [*self.history, HistoryEntry(version=version, outcome=outcome, at=self.now, reason=reason[:1024])]
        self.history = self.history[-limit:] if limit else []

    def promote(self, reason: str, previous_deployment: str) -> None:
        assert self.rollout is not None
        version = self.rollout.revision
        delay = duration_seconds(self.spec.rollout.scale_down_delay)
        monitoring = self.spec.monitoring
        if monitoring is not None and any(check.action == "rollback" for check in monitoring.checks):
            delay = max(delay, duration_seconds(monitoring.rollback_window))  # keep it restorable
        self.previous = PreviousStable(version=self.stable, deployment=previous_deployment, scale_down_at=_after(self.now, delay))
        self.record(version, "Promoted", reason)
        self.events.append(Event("Normal", "Promoted", f"{version} is now stable ({reason})"))
        self.stable, self.rollout = version, None

    def roll_back(self, reason: str, outcome: Outcome = "RolledBack") -> None:
        assert self.rollout is not None
        version = self.rollout.revision
        self.blocked = BlockedRevision(version=version, reason=reason[:1024], at=self.now)
        self.record(version, outcome, reason)
        verb = "aborted" if outcome == "Aborted" else "rolled back"
        self.events.append(Event("Warning", "RolledBack", f"{version} {verb}: {reason}; all traffic is on {self.stable}"))
        self.rollout = None


def _new_actions(requested: Mapping[str, str], handled: HandledActions) -> dict[str, str]:
    return {name: at for name, at in requested.items() if name in ACTIONS and at and at != getattr(handled, name)}


def _fresh_checks(spec: ModelDeploymentSpec) -> list[CheckStatus]:
    return [
        CheckStatus(name=check.name, type=check.type, query=value_query(check)[:4096], threshold=threshold_text(check))
        for check in spec.rollout.analysis.checks
    ]


def _start(run: _Run, target: str) -> None:
    if run.rollout is not None:
        old = run.rollout.revision
        run.record(old, "Superseded", f"superseded by {target}")
        run.events.append(Event("Normal", "Superseded", f"{old} superseded by {target}: starting over from the first step"))
    run.rollout = RolloutStatus(
        revision=target,
        step=0,
        step_started_at=run.now,
        weight=0,
        last_progress_at=run.now,
        next_analysis_at=run.now,
        checks=_fresh_checks(run.spec),
    )
    run.events.append(Event("Normal", "CanaryStarted", f"rolling out {target} beside {run.stable}"))


def _follow_spec_checks(run: _Run) -> None:
    """The live canary is judged by the checks the spec names now: one added mid-rollout has not
    passed (so it gates the current step, and analysis becomes due), one removed no longer counts."""
    rollout = run.rollout
    assert rollout is not None
    wanted = [check.name for check in run.spec.rollout.analysis.checks]
    if [check.name for check in rollout.checks] == wanted:
        return
    known = {check.name: check for check in rollout.checks}
    fresh = {check.name: check for check in _fresh_checks(run.spec)}
    run.rollout = rollout.model_copy(update={"checks": [known.get(name) or fresh[name] for name in wanted]})


def _apply_evaluations(run: _Run, evaluations: Mapping[str, Evaluation]) -> None:
    """Folds this tick's verdicts into the rollout: counters, per-check status, and maybe a rollback."""
    rollout = run.rollout
    assert rollout is not None
    analysis = run.spec.rollout.analysis
    checks = {check.name: check for check in rollout.checks}
    updated: list[CheckStatus] = []
    failed: list[str] = []
    errored = False
    for spec_check in analysis.checks:
        current = checks.get(spec_check.name) or CheckStatus(name=spec_check.name, type=spec_check.type)
        evaluation = evaluations.get(spec_check.name)
        if evaluation is None:
            updated.append(current)
            continue
        measurement = Measurement(at=run.now, value=evaluation.value, verdict=evaluation.verdict)
        updated.append(
            current.model_copy(
                update={
                    "query": (evaluation.query or value_query(spec_check))[:4096],
                    "threshold": threshold_text(spec_check),
                    "value": evaluation.value,
                    "stable_value": evaluation.stable_value,
                    "verdict": evaluation.verdict,
                    "reason": evaluation.reason[:512],
                    "at": run.now,
                    "passed_in_step": current.passed_in_step or evaluation.verdict == "Pass",
                    "measurements": [*current.measurements, measurement][-MEASUREMENTS_KEPT:],
                }
            )
        )
        if evaluation.verdict == "Fail":
            failed.append(f"{spec_check.name} ({evaluation.reason})")
        errored = errored or evaluation.verdict == "Error"
    interval = duration_seconds(analysis.interval)
    run.rollout = rollout.model_copy(
        update={
            "checks": updated,
            "failures": rollout.failures + len(failed),
            "consecutive_errors": rollout.consecutive_errors + 1 if errored else 0,
            "next_analysis_at": _after(run.now, interval),
        }
    )
    if failed and run.rollout.failures > analysis.failure_limit:
        run.roll_back(f"check {', '.join(failed)} failed ({run.rollout.failures} failures, limit {analysis.failure_limit})")


def _waiting_for(run: _Run) -> str:
    """What the current step waits for, in words (empty when nothing)."""
    rollout = run.rollout
    assert rollout is not None
    if run.spec.rollout.skip_analysis:
        return ""
    pending = [check for check in rollout.checks if not check.passed_in_step]
    if not pending:
        return ""
    first = pending[0]
    if first.verdict == "NoData":
        return f"check {first.name} has no data: {first.reason}"
    if first.verdict == "Error":
        return f"check {first.name} could not be evaluated: {first.reason}"
    if first.verdict == "Fail":
        return f"check {first.name} failed: {first.reason}"
    return f"check {first.name} has not passed yet in step {rollout.step}"


def _advance_steps(run: _Run, stable_deployment: str, full_size: bool) -> None:
    """Completes as many steps as their conditions allow, then promotes after the last.

    After the last step the canary is first brought to full size (the replicas router runs
    it small), and only promoted once every one of those replicas is Ready.
    """
    steps = run.spec.rollout.steps
    while run.rollout is not None:
        rollout = run.rollout
        if rollout.step >= len(steps):
            if not full_size:
                run.hold_reason = f"scaling {rollout.revision} to full size before promotion"
                return
            if not steps and (waiting := _waiting_for(run)):
                # Blue/green: the checks judge the new version (through its own Service) before any traffic moves.
                run.hold_reason = f"before promotion: {waiting}"
                return
            run.promote("all steps completed" if steps else ("all replicas Ready and every check passed" if rollout.checks
                                                             else "all replicas Ready"), stable_deployment)
            return
        step = steps[rollout.step]
        if step.set_weight is not None and rollout.weight != step.set_weight:
            run.rollout = rollout = rollout.model_copy(update={"weight": step.set_weight})
        waiting = _waiting_for(run)
        if not waiting and step.pause is not None:
            if step.pause.duration is None:
                waiting = f"paused at step {rollout.step} until `modelops promote` or `modelops resume`"
                # A manual gate is a pause: the progress deadline does not run while a human decides.
                run.rollout = rollout = _stopped_clock(rollout, run.now)
                run.at_manual_gate = True
            elif _elapsed(rollout.step_started_at, run.now) < duration_seconds(step.pause.duration):
                waiting = f"pausing {step.pause.duration} at step {rollout.step}"
        if waiting:
            run.hold_reason = waiting
            return
        run.rollout = _next_step(rollout, run.now)
        run.events.append(Event("Normal", "StepCompleted", f"{rollout.revision}: step {rollout.step} completed at weight {run.rollout.weight}%"))


def paused_after(actions: Mapping[str, str], order: Sequence[str]) -> bool:
    """Whether new ``pause``/``resume`` actions leave the rollout paused: the later one in ``order``
    (the order the apiserver received them) wins; without a usable order, pause wins.

    >>> paused_after({"pause": "a"}, []), paused_after({"resume": "a"}, [])
    (True, False)
    >>> paused_after({"pause": "a", "resume": "b"}, ["pause", "resume"]), paused_after({"pause": "a", "resume": "b"}, [])
    (False, True)
    """
    if "pause" not in actions or "resume" not in actions:
        return "pause" in actions
    known = [name for name in order if name in ("pause", "resume")]
    return len(known) != 2 or known[-1] == "pause"


def _handle_pause_actions(run: _Run, actions: Mapping[str, str], order: Sequence[str]) -> None:
    assert run.rollout is not None
    if "pause" in actions or "resume" in actions:
        paused = paused_after(actions, order)
        run.rollout = run.rollout.model_copy(update={"paused_by_user": paused})
        run.events.append(Event("Normal", "Paused" if paused else "Resumed", f"{run.rollout.revision} {'paused' if paused else 'resumed'} by a user"))


def _resume_indefinite_pause(run: _Run, actions: Mapping[str, str]) -> None:
    """`resume` also ends a pause step without duration."""
    rollout = run.rollout
    assert rollout is not None
    steps = run.spec.rollout.steps
    if "resume" in actions and rollout.step < len(steps):
        step = steps[rollout.step]
        if step.pause is not None and step.pause.duration is None:
            run.rollout = _next_step(rollout, run.now)  # like any completed step


def advance(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    *,
    serving: Mapping[str, bool],
    deployments: Mapping[str, str],
    now: str,
    full_size: Mapping[str, bool] | None = None,
    evaluations: Mapping[str, Evaluation] | None = None,
    requested_actions: Mapping[str, str] | None = None,
    action_order: Sequence[str] = (),
    hold: Hold | None = None,
) -> RolloutState:
    """One step of the state machine. ``serving[version]``: every replica its Deployment asks for is Ready;
    ``full_size[version]``: and it asks for the full production count (default: same as serving);
    ``deployments[version]``: the versioned Deployment's name (for every version that has one);
    ``action_order``: action names in the order the apiserver received them;
    ``hold``: why the canary must not move forward whatever its checks say (the stable version not
    serving, traffic that cannot be split): steps neither complete nor promote, the deadline clock
    stops, but a failing check still rolls back and manual actions still apply."""
    target = spec.model.version
    actions = _new_actions(requested_actions or {}, status.handled_actions)
    run = _Run(
        spec=spec,
        now=now,
        stable=status.stable.version if status.stable else "",
        rollout=status.rollout,
        blocked=status.blocked_revision,
        previous=status.previous,
        history=list(status.history),
        handled=status.handled_actions.model_copy(update=actions),
    )
    if run.previous is not None and _elapsed(run.previous.scale_down_at, now) >= 0:
        run.previous = None
    if "retry" in actions and run.blocked is not None and run.blocked.version == target:
        run.events.append(Event("Normal", "Retry", f"retrying {target} after: {run.blocked.reason}"))
        run.blocked = None

    if not run.stable:
        run.record(target, "Promoted", "first version: stable directly")
        run.events.append(Event("Normal", "Released", f"{target} is the first version: stable directly"))
        run.stable, run.rollout = target, None
        return _state(run, canary=None, first_release=True)

    if target == run.stable:
        if run.rollout is not None:
            run.record(run.rollout.revision, "Superseded", f"spec returned to the stable version {target}")
            run.events.append(Event("Normal", "Superseded", f"{run.rollout.revision} abandoned: spec returned to {target}"))
            run.rollout = None
        return _state(run, canary=_cooling_canary(run))

    if run.blocked is not None and run.blocked.version == target:
        if run.rollout is not None and run.rollout.revision != target:
            _start(run, target)  # defensive: should not happen
        run.rollout = None
        run.hold_reason = f"{target} was rolled back ({run.blocked.reason}); set another model.version or run `modelops retry`"
        return _state(run, canary=_cooling_canary(run))

    if run.rollout is None or run.rollout.revision != target:
        _start(run, target)
    _follow_spec_checks(run)
    _handle_pause_actions(run, actions, action_order)
    stable_deployment = deployments.get(run.stable, "")
    if "abort" in actions:
        run.roll_back("aborted by a user", outcome="Aborted")
        return _state(run, canary=_cooling_canary(run))
    if "promote" in actions:
        run.promote("promoted by a user", stable_deployment)
        return _state(run, canary=None)
    _resume_indefinite_pause(run, actions)

    assert run.rollout is not None
    paused = spec.rollout.paused or run.rollout.paused_by_user
    canary_ready = serving.get(target, False)
    if evaluations is not None and canary_ready and not paused:
        _apply_evaluations(run, evaluations)
        if run.rollout is None:
            return _state(run, canary=_cooling_canary(run))
    assert run.rollout is not None
    if paused or hold is not None:
        run.hold_reason = hold.message if hold is not None else ("paused by a user" if run.rollout.paused_by_user else "spec.rollout.paused is true")
        # A pause, or a hold that is not the canary's doing, stops the progress-deadline clock.
        run.rollout = _stopped_clock(run.rollout, now)
        return _state(run, canary=target, hold=hold)
    if canary_ready:
        _advance_steps(run, stable_deployment, (full_size or serving).get(target, False))
        if run.rollout is None:
            return _state(run, canary=None)
    else:
        run.hold_reason = f"waiting for every replica of {target} to be Ready"
    if not run.at_manual_gate:
        run.rollout = _running_clock(run.rollout, now)
    if run.rollout is not None and run.rollout.held_since is None and _elapsed(run.rollout.last_progress_at, now) > duration_seconds(spec.rollout.progress_deadline):
        run.roll_back(f"no progress for {spec.rollout.progress_deadline}: {run.hold_reason or 'stalled'}")
        return _state(run, canary=_cooling_canary(run))
    return _state(run, canary=target)


def _cooling_canary(run: _Run) -> str | None:
    """A rolled-back canary keeps running for abortScaleDownDelay (at weight 0)."""
    if run.blocked is None or run.blocked.version == run.stable:
        return None
    delay = duration_seconds(run.spec.rollout.abort_scale_down_delay)
    return run.blocked.version if _elapsed(run.blocked.at, run.now) < delay else None


def _state(run: _Run, *, canary: str | None, first_release: bool = False, hold: Hold | None = None) -> RolloutState:
    rollout = run.rollout
    errors_limit = run.spec.rollout.analysis.consecutive_error_limit
    metrics_unavailable = rollout is not None and rollout.consecutive_errors >= errors_limit
    if metrics_unavailable and rollout is not None:
        run.hold_reason = f"metrics unavailable: {rollout.consecutive_errors} consecutive query errors; " + (run.hold_reason or "")
    return RolloutState(
        stable=run.stable,
        canary=canary,
        weight=rollout.weight if rollout is not None and canary == rollout.revision else 0,
        rollout=rollout,
        blocked=run.blocked,
        previous=run.previous,
        history=tuple(run.history),
        handled=run.handled,
        events=tuple(run.events),
        first_release=first_release,
        hold_reason=run.hold_reason.strip().rstrip(";"),
        metrics_unavailable=metrics_unavailable,
        hold=hold,
    )


def analysis_due(status: ModelDeploymentStatus, now: str) -> bool:
    """Whether the checks of a live canary should run at ``now``."""
    rollout = status.rollout
    if rollout is None or not rollout.checks:
        return False
    return rollout.next_analysis_at is None or _elapsed(rollout.next_analysis_at, now) >= 0

