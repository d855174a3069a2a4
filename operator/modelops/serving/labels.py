"""Label values a client chooses, bounded: a label never takes more than a fixed number of values.

A fairness group (and a predicted class) becomes a Prometheus label value, and every distinct
value is a new series kept for the life of the process. So the values a label may take are
fixed in advance:

- **declared** (the reference profile lists an attribute's groups): exactly those values, and
  nothing a client sends can displace them;
- **undeclared**: the first ``capacity`` distinct values seen, in arrival order. A client
  that sends junk first takes those places, which is why declaring the groups is recommended.

Every other value is counted under the one overflow value ``__other__``, which checks and
dashboards see like any group.

>>> sexes = TrackedValues.of(declared=("f", "m"), capacity=20)
>>> [sexes.label(v) for v in ("f", "junk", "m", "x" * 200)]
['f', '__other__', 'm', '__other__']
>>> first_come = TrackedValues.of(declared=None, capacity=2)
>>> [first_come.label(v) for v in ("a", "b", "c", "a")]
['a', 'b', '__other__', 'a']
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

OVERFLOW = "__other__"


@dataclass
class TrackedValues:
    declared: frozenset[str] | None
    capacity: int
    seen: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, declared: Iterable[str] | None, capacity: int) -> "TrackedValues":
        return cls(frozenset(declared) if declared is not None else None, capacity)

    def label(self, value: str) -> str:
        """The label value that counts ``value``: itself when tracked, else ``__other__``."""
        if self.declared is not None:
            return value if value in self.declared else OVERFLOW
        if value in self.seen:
            return value
        if len(self.seen) < self.capacity:
            self.seen.add(value)
            return value
        return OVERFLOW
