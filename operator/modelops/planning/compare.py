"""Does an observed object already hold everything a desired manifest says? If so, do not write.

Server-side apply of an unchanged manifest is a no-op in etcd, but it is still a PATCH
request: in steady state the operator must send none. ``is_applied`` answers "would
applying ``desired`` change ``observed``?" without asking the apiserver:

- Maps: every key of ``desired`` must be in ``observed`` with an applied value. Extra keys in
  ``observed`` (defaults, status, fields of other managers) are fine, as they are for SSA.
  An empty string matches an absent key: the apiserver omits empty strings (``omitempty``).
- Lists of maps with a ``name`` (containers, env, ports, volumes): matched by name, in
  order; ``observed`` may hold extra named items that another manager added.
- Other lists (args, metrics, ...): atomic, so the same length and each item applied.
- Scalars: equal and of the same type, except that under a ``resources`` key Kubernetes
  quantities compare by value ("1000m" == "1", "1Gi" == "1024Mi"), as the apiserver
  canonicalises them.

>>> is_applied({"spec": {"replicas": 2}}, {"spec": {"replicas": 2, "paused": False}, "status": {}})
True
>>> is_applied({"spec": {"replicas": 2}}, {"spec": {"replicas": 3}})
False

A subset check cannot see a field the operator *stopped* setting (say a selector key): server-side
apply removes it, because the operator's manager owns it. ``drops_owned_fields`` finds those from
the object's ``managedFields``.
"""

import json
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from kubernetes.utils.quantity import parse_quantity


def _quantity(value: Any) -> Decimal | None:
    try:
        return parse_quantity(value)
    except (ValueError, InvalidOperation, TypeError):
        return None


def _scalar_applied(desired: Any, observed: Any, in_resources: bool) -> bool:
    if in_resources and type(desired) in (str, int) and type(observed) in (str, int):
        left, right = _quantity(desired), _quantity(observed)
        return left is not None and left == right
    return type(desired) is type(observed) and desired == observed


def _named(items: Sequence[Any]) -> bool:
    return bool(items) and all(isinstance(item, Mapping) and "name" in item for item in items)


def _list_applied(desired: Sequence[Any], observed: Any, in_resources: bool) -> bool:
    if not isinstance(observed, Sequence) or isinstance(observed, str):
        return False
    if _named(desired) and _named(observed):
        by_name = {item["name"]: item for item in observed}
        observed_order = [item["name"] for item in observed if item["name"] in {d["name"] for d in desired}]
        if observed_order != [item["name"] for item in desired]:
            return False
        return all(_applied(item, by_name[item["name"]], in_resources) for item in desired)
    if len(desired) != len(observed):
        return False
    return all(_applied(left, right, in_resources) for left, right in zip(desired, observed, strict=True))


def _applied(desired: Any, observed: Any, in_resources: bool = False) -> bool:
    if isinstance(desired, Mapping):
        if not isinstance(observed, Mapping):
            return False
        return all(
            _applied(value, observed[key], in_resources or key == "resources") if key in observed else value == ""
            for key, value in desired.items()
        )
    if isinstance(desired, Sequence) and not isinstance(desired, str):
        return _list_applied(desired, observed, in_resources)
    return _scalar_applied(desired, observed, in_resources)


def is_applied(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """True when applying ``desired`` would change nothing in ``observed`` (None: the object is missing)."""
    if observed is None:
        return False
    return _applied(desired, observed)


def _matches_key(item: Any, key: Mapping[str, Any]) -> bool:
    """A desired list item matches a managedFields ``k:{...}`` key; fields the item leaves out are
    taken as defaulted by the apiserver (a Service port's ``protocol``), so they match."""
    return isinstance(item, Mapping) and all(name not in item or item[name] == value for name, value in key.items())


def _dropped(fields: Mapping[str, Any], desired: Any, observed: Any) -> bool:
    for key, child in fields.items():
        if key.startswith("f:"):
            name = key[2:]
            if not isinstance(desired, Mapping) or name not in desired:
                return True
            here = observed.get(name) if isinstance(observed, Mapping) else None
            atomic_map = not child and isinstance(desired[name], Mapping) and bool(desired[name])  # granular maps list their keys
            if atomic_map and isinstance(here, Mapping) and set(here) - set(desired[name]):
                return True  # an atomic map (a Service's selector): applying replaces it whole
            if child and _dropped(child, desired[name], here):
                return True
        elif key.startswith("k:"):
            if not isinstance(desired, Sequence) or isinstance(desired, str):
                return True
            item_key = json.loads(key[2:])
            match = next((item for item in desired if _matches_key(item, item_key)), None)
            here = next((item for item in observed if _matches_key(item, item_key)), None) if isinstance(observed, list) else None
            if match is None or (child and _dropped(child, match, here)):
                return True
        # ".": the item itself; "v:" and "i:": set and atomic lists, which is_applied compares whole.
    return False


def drops_owned_fields(desired: Mapping[str, Any], observed: Mapping[str, Any] | None, manager: str) -> bool:
    """True when ``manager`` owns, by server-side apply, a field of ``observed`` that ``desired`` no longer
    sets: applying ``desired`` would remove it.

    A Service's selector is an atomic map: the manager owns it whole (``f:selector: {}``), and
    applying a smaller one replaces it.

    >>> owned = {"f:spec": {"f:selector": {}}}
    >>> observed = {"metadata": {"managedFields": [{"manager": "m", "operation": "Apply", "fieldsV1": owned}]},
    ...             "spec": {"selector": {"app": "a", "version": "1"}}}
    >>> drops_owned_fields({"spec": {"selector": {"app": "a"}}}, observed, "m")
    True
    >>> drops_owned_fields({"spec": {"selector": {"app": "a", "version": "1"}}}, observed, "m")
    False
    """
    if observed is None:
        return False
    entries = (observed.get("metadata") or {}).get("managedFields") or []
    return any(
        _dropped(entry.get("fieldsV1") or {}, desired, observed)
        for entry in entries
        if entry.get("manager") == manager and entry.get("operation") == "Apply"
    )
