"""Manual actions (``modelops promote|abort|retry|pause|resume|retrain``) and the order they arrived in.

**How an action arrives.** The CLI sets the annotation ``modelops.dev/action.<name>`` to a
fresh token (its own clock's time, used only to tell one request from the next: an action is
carried out once per distinct value, recorded in ``status.handledActions``). Each action is
written under a field manager of its own, ``modelops-action-<name>``, so the apiserver records,
in ``metadata.managedFields[].time``, when *it* last changed that annotation.

**Which came last.** When two actions that contradict each other are pending at once
(``pause`` and ``resume``; ``abort`` and ``promote``), the one the apiserver received last
wins: :func:`server_order` sorts them by the ``time`` of the managedFields entry owning each
annotation. Whoever owns the field counts, so ``kubectl annotate`` works as well (its manager
is ``kubectl-annotate``). Client clocks never decide across seconds.

**When the apiserver does not say.** Its times have whole seconds, and an entry can be missing
(managedFields cleared) or unreadable. The rules, in this order:

1. If any of the actions has no readable server time, the server order is unknown for all
   of them: they are ordered by ``SAFE_ORDER`` alone.
2. Actions with different server times are in server order.
3. Actions within the same second are ordered by their annotation values when every one of
   them is a readable time with fractions (the CLI writes microseconds; a second of the
   apiserver's is too coarse for a ``pause`` then ``resume`` typed in quick succession, and
   one client's clock orders its own requests correctly). Otherwise by ``SAFE_ORDER``.

``SAFE_ORDER`` puts the cautious action last, so that it wins a tie: ``pause`` after
``resume``, ``abort`` after ``promote`` and ``retry``.
"""

import datetime
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from modelops.api.timestamps import parse_timestamp

ACTION_ANNOTATION_PREFIX = "modelops.dev/action."
ACTIONS = ("promote", "abort", "retry", "pause", "resume", "retrain")
VALUE_LIMIT = 64  # characters of an annotation value kept (status.handledActions holds 64)
MANAGED_FIELDS_LIMIT = 256  # managedFields entries read; an object has a handful, one per writer
SAFE_ORDER = ("resume", "promote", "retry", "retrain", "pause", "abort")  # on a tie, later wins


def field_manager(name: str) -> str:
    """The field manager the CLI writes action ``name`` under.

    >>> field_manager("pause")
    'modelops-action-pause'
    """
    return f"modelops-action-{name}"


def annotation(name: str) -> str:
    """The annotation that requests action ``name``.

    >>> annotation("resume")
    'modelops.dev/action.resume'
    """
    return f"{ACTION_ANNOTATION_PREFIX}{name}"


def requested_actions(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Manual actions from annotations ``modelops.dev/action.<name>: <token>``, known names only, values cut to 64.

    >>> requested_actions({"annotations": {"modelops.dev/action.pause": "2026-12-01T04:05:06.123456Z",
    ...                                    "modelops.dev/action.launch": "now", "other": "x"}})
    {'pause': '2026-12-01T04:05:06.123456Z'}
    """
    annotations = metadata.get("annotations") or {}
    if not isinstance(annotations, Mapping):
        return {}
    return {name: str(annotations[annotation(name)])[:VALUE_LIMIT] for name in ACTIONS if annotation(name) in annotations}


def _owns(fields: Any, key: str) -> bool:
    """Whether a managedFields ``fieldsV1`` document contains ``f:metadata/f:annotations/f:<key>``."""
    if not isinstance(fields, Mapping):
        return False
    metadata = fields.get("f:metadata")
    annotations = metadata.get("f:annotations") if isinstance(metadata, Mapping) else None
    return isinstance(annotations, Mapping) and f"f:{key}" in annotations


def _readable(text: Any) -> datetime.datetime | None:
    try:
        return parse_timestamp(text)
    except ValueError:
        return None


def received_at(metadata: Mapping[str, Any], name: str) -> datetime.datetime | None:
    """When the apiserver last changed action ``name``'s annotation: the newest time of an entry owning it (None: unknown)."""
    entries = metadata.get("managedFields") or []
    if not isinstance(entries, Sequence):
        return None
    times = [
        _readable(entry.get("time"))
        for entry in list(entries)[:MANAGED_FIELDS_LIMIT]
        if isinstance(entry, Mapping) and _owns(entry.get("fieldsV1"), annotation(name))
    ]
    known = [moment for moment in times if moment is not None]
    return max(known) if known and len(known) == len(times) else None


def _client_time(metadata: Mapping[str, Any], name: str) -> datetime.datetime | None:
    """The annotation value as a time, only when it carries fractions of a second (the CLI's format)."""
    value = requested_actions(metadata).get(name, "")
    return _readable(value) if "." in value else None


def _safety_rank(name: str) -> int:
    return SAFE_ORDER.index(name) if name in SAFE_ORDER else -1


def _within_one_second(metadata: Mapping[str, Any], names: list[str]) -> list[str]:
    client_times = {name: _client_time(metadata, name) for name in names}
    if all(moment is not None for moment in client_times.values()):
        return sorted(names, key=lambda name: (client_times[name], _safety_rank(name)))
    return sorted(names, key=_safety_rank)


def server_order(metadata: Mapping[str, Any], names: Iterable[str]) -> list[str]:
    """``names`` from the earliest to the latest received by the apiserver (the rules in the module docstring).

    With ``metadata`` from the object the pass reads; the last of the result is the one that wins.

    >>> def entry(manager, second, name):
    ...     return {"manager": manager, "operation": "Update", "time": f"2026-12-01T04:05:{second:02d}Z",
    ...             "fieldsV1": {"f:metadata": {"f:annotations": {f"f:modelops.dev/action.{name}": {}}}}}
    >>> metadata = {"annotations": {"modelops.dev/action.pause": "2030-01-01T00:00:00.000001Z",
    ...                             "modelops.dev/action.resume": "2020-01-01T00:00:00.000001Z"},
    ...             "managedFields": [entry("modelops-action-pause", 5, "pause"), entry("modelops-action-resume", 7, "resume")]}
    >>> server_order(metadata, ["resume", "pause"])  # the apiserver's order, whatever the client clocks said
    ['pause', 'resume']
    >>> server_order({"annotations": metadata["annotations"]}, ["resume", "pause"])  # no managedFields: pause wins
    ['resume', 'pause']
    """
    wanted = list(dict.fromkeys(names))
    times = {name: received_at(metadata, name) for name in wanted}
    if any(moment is None for moment in times.values()):
        return sorted(wanted, key=_safety_rank)
    ordered: list[str] = []
    for moment in sorted(set(times.values()), key=lambda value: value or datetime.datetime.min):
        ordered += _within_one_second(metadata, [name for name in wanted if times[name] == moment])
    return ordered


def last_received(metadata: Mapping[str, Any], names: Iterable[str]) -> str | None:
    """The action among ``names`` that the apiserver received last (None for no names).

    >>> last_received({}, ["pause", "resume"])
    'pause'
    """
    ordered = server_order(metadata, names)
    return ordered[-1] if ordered else None
