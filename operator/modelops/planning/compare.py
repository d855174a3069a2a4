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
"""

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
