"""Drift statistics, without I/O: reference profiles, binning, PSI, KS and Wasserstein.

A **reference profile** is built at training time (``modelops profile build``): per feature,
its kind, and for numeric features the interior bin edges at reference quantiles plus each
bin's share; for categorical features each category's share. Bins are open at both ends
(``(-inf, e1]``, ..., ``(en, +inf)``), so values outside the training range still land in a
bin, and categorical features have an extra bin for categories never seen in training.

**PSI** (Population Stability Index) compares bin shares: ``sum((c - r) * ln(c / r))`` over
bins, where shares are smoothed by ``EPSILON`` so an empty bin does not make it infinite.
Higher always means more drift; 0.1 and 0.25 are the usual "watch" and "act" levels.

>>> psi([0.5, 0.5], [0.5, 0.5])
0.0
>>> round(psi([0.5, 0.5], [0.9, 0.1]), 3)
0.879

Below a minimum sample (default ``max(500, 50 × bins)``) no score is computed: noise on a
quiet canary must never read as drift.

A profile also **declares the values the server tracks** for labels a client chooses: the
groups of each sensitive attribute (``groups``, from ``modelops profile build
--sensitive-attribute``) and the categories of each categorical feature. At most
``MAX_DECLARED_VALUES`` per name, each at most ``MAX_VALUE_BYTES`` bytes; the server counts
every other value in one overflow bucket, so junk sent by a client never displaces them.
"""

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
from scipy import stats

EPSILON = 1e-4
UNSEEN = "__unseen__"
MAX_DECLARED_VALUES = 50  # groups per sensitive attribute, categories per categorical feature
MAX_VALUE_BYTES = 256  # one group or category, UTF-8 encoded (the server's bound on a BYTES value)
REFERENCE_SAMPLE_LIMIT = 2000
Method = Literal["psi", "ks", "wasserstein"]


def psi(reference: Sequence[float], current: Sequence[float]) -> float:
    """PSI between two share vectors over the same bins (each sums to 1)."""
    r = np.clip(np.asarray(reference, dtype=float), EPSILON, None)
    c = np.clip(np.asarray(current, dtype=float), EPSILON, None)
    return float(np.sum((c - r) * np.log(c / r)))


@dataclass(frozen=True)
class FeatureProfile:
    name: str
    kind: Literal["numeric", "categorical"]
    edges: tuple[float, ...] = ()  # numeric: interior bin edges
    categories: tuple[str, ...] = ()  # categorical: known categories
    shares: tuple[float, ...] = ()  # reference share of each bin (numeric: len(edges)+1; categorical: len+1 with unseen)
    sample: tuple[float, ...] = ()  # numeric: a bounded reference sample for KS / Wasserstein

    @property
    def bins(self) -> int:
        return len(self.shares)

    def counts(self, values: Sequence[Any]) -> np.ndarray:
        """Counts of ``values`` per bin (open outer bins; unknown categories in the unseen bin)."""
        if self.kind == "numeric":
            indices = np.searchsorted(np.asarray(self.edges), np.asarray(values, dtype=float), side="left")
            return np.bincount(indices, minlength=len(self.edges) + 1).astype(float)
        positions = {category: index for index, category in enumerate(self.categories)}
        counts = np.zeros(len(self.categories) + 1)
        for value in values:
            counts[positions.get(str(value), len(self.categories))] += 1
        return counts

    def known(self, value: str) -> str:
        """The profile's own copy of a category, or ``UNSEEN``: what a drift window keeps of a client's value.

        Keeping the profile's string (not the client's) bounds a window's memory by the profile.
        """
        index = self._category_index.get(value)
        return UNSEEN if index is None else self.categories[index]

    @cached_property
    def _category_index(self) -> dict[str, int]:
        return {category: position for position, category in enumerate(self.categories)}


def minimum_samples(feature: FeatureProfile, floor: int = 500) -> int:
    """The default minimum window size: max(500, 50 × bins)."""
    return max(floor, 50 * feature.bins)


def score(feature: FeatureProfile, values: Sequence[Any], method: Method = "psi") -> float | None:
    """The drift score of ``values`` against the reference, or None below the minimum sample."""
    if len(values) < minimum_samples(feature):
        return None
    if method == "psi":
        counts = feature.counts(values)
        return psi(feature.shares, counts / counts.sum())
    if feature.kind != "numeric" or not feature.sample:
        raise ValueError(f"{method} needs a numeric feature with a reference sample ({feature.name} is {feature.kind})")
    current = np.asarray(values, dtype=float)
    if method == "ks":
        return float(stats.ks_2samp(np.asarray(feature.sample), current).statistic)
    spread = float(np.std(feature.sample)) or 1.0
    return float(stats.wasserstein_distance(np.asarray(feature.sample), current)) / spread  # normalised


@dataclass(frozen=True)
class ReferenceProfile:
    features: tuple[FeatureProfile, ...]
    rows: int
    digest: str = field(default="")
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # declared groups per sensitive attribute

    def declared_groups(self, attribute: str) -> tuple[str, ...] | None:
        """The groups tracked for ``attribute``: declared ones, else a categorical feature's categories, else None."""
        if attribute in self.groups:
            return self.groups[attribute]
        feature = next((f for f in self.features if f.name == attribute and f.kind == "categorical"), None)
        return feature.categories if feature is not None else None

    def feature(self, name: str) -> FeatureProfile:
        return next(f for f in self.features if f.name == name)

    def to_json(self) -> dict[str, Any]:
        document = {
            "format": "modelops.dev/profile-v1",
            "rows": self.rows,
            "features": [
                {"name": f.name, "kind": f.kind, "edges": list(f.edges), "categories": list(f.categories),
                 "shares": list(f.shares), "sample": list(f.sample)}
                for f in self.features
            ],
        }
        if self.groups:  # absent when empty, so profiles built before groups existed keep their digest
            document["groups"] = {attribute: list(values) for attribute, values in self.groups.items()}
        document["digest"] = _digest(document)
        return document

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> "ReferenceProfile":
        if document.get("format") != "modelops.dev/profile-v1":
            raise ValueError(f"not a modelops reference profile (format {document.get('format')!r})")
        expected = document.get("digest", "")
        if expected and _digest({k: v for k, v in document.items() if k != "digest"}) != expected:
            raise ValueError("reference profile digest mismatch: the file was modified after it was built")
        features = tuple(
            FeatureProfile(
                name=f["name"], kind=f["kind"], edges=tuple(f.get("edges", ())), categories=tuple(f.get("categories", ())),
                shares=tuple(f["shares"]), sample=tuple(f.get("sample", ())),
            )
            for f in document["features"]
        )
        return cls(features=features, rows=int(document["rows"]), digest=expected, groups=_groups(document.get("groups", {})))


def _groups(document: Any) -> dict[str, tuple[str, ...]]:
    """The ``groups`` section, checked against the bounds the server relies on."""
    if not isinstance(document, dict):
        raise ValueError('"groups" must map each sensitive attribute to a list of its groups')
    groups: dict[str, tuple[str, ...]] = {}
    for attribute, values in document.items():
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ValueError(f'"groups" of {attribute}: a list of strings is needed')
        if len(values) > MAX_DECLARED_VALUES:
            raise ValueError(f'"groups" of {attribute}: {len(values)} groups; at most {MAX_DECLARED_VALUES} can be declared')
        too_long = [v for v in values if len(v.encode("utf-8", "surrogatepass")) > MAX_VALUE_BYTES]
        if too_long:
            raise ValueError(f'"groups" of {attribute}: a group is longer than {MAX_VALUE_BYTES} bytes')
        groups[str(attribute)] = tuple(values)
    return groups


def _digest(document: dict[str, Any]) -> str:
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def numeric_profile(name: str, values: np.ndarray, bins: int, rng: np.random.Generator) -> FeatureProfile:
    """Quantile bins from the reference: each interior edge is a reference quantile (duplicates merged)."""
    values = values[np.isfinite(values)]
    if values.size == 0:
        raise ValueError(f"feature {name} has no finite values")
    edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]))
    counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
    sample = values if values.size <= REFERENCE_SAMPLE_LIMIT else rng.choice(values, REFERENCE_SAMPLE_LIMIT, replace=False)
    return FeatureProfile(name, "numeric", tuple(float(e) for e in edges), (), tuple(float(s) for s in counts / counts.sum()),
                          tuple(float(v) for v in sample))


def categorical_profile(name: str, values: Sequence[str], max_categories: int = MAX_DECLARED_VALUES) -> FeatureProfile:
    """Shares of the most common categories; the rest and unseen ones share the last bin."""
    unique, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_categories]
    categories = tuple(str(unique[i]) for i in order)
    shares = [float(counts[i]) / len(values) for i in order]
    shares.append(max(0.0, 1.0 - sum(shares)))
    return FeatureProfile(name, "categorical", (), categories, tuple(shares))


def declared_groups(name: str, values: Sequence[str]) -> tuple[str, ...]:
    """Every distinct value of a sensitive attribute's column, most frequent first (at most ``MAX_DECLARED_VALUES``)."""
    unique, counts = np.unique(np.asarray(values, dtype=str), return_counts=True)
    if len(unique) > MAX_DECLARED_VALUES:
        raise ValueError(
            f"sensitive attribute {name} has {len(unique)} distinct values; at most {MAX_DECLARED_VALUES} groups can be declared "
            "(bucket the column before profiling)"
        )
    too_long = [str(v) for v in unique if len(str(v).encode("utf-8")) > MAX_VALUE_BYTES]
    if too_long:
        raise ValueError(f"sensitive attribute {name} has a value longer than {MAX_VALUE_BYTES} bytes")
    return tuple(str(unique[i]) for i in np.argsort(-counts, kind="stable"))


def build_profile(
    columns: dict[str, list[str]], bins: int = 10, seed: int = 0, sensitive_attributes: Sequence[str] = ()
) -> ReferenceProfile:
    """A profile of every column: numeric when every value parses as a number, else categorical.

    The columns named in ``sensitive_attributes`` are not profiled for drift: their distinct
    values become the attribute's declared groups.
    """
    missing = [name for name in sensitive_attributes if name not in columns]
    if missing:
        raise ValueError(f"sensitive attribute(s) {', '.join(missing)}: no such column")
    rng = np.random.default_rng(seed)
    features = []
    rows = 0
    for name, raw in columns.items():
        rows = max(rows, len(raw))
        if name in sensitive_attributes:
            continue
        try:
            numbers = np.asarray([float(v) for v in raw], dtype=float)
        except ValueError:
            features.append(categorical_profile(name, raw))
            continue
        if not all(math.isfinite(v) for v in numbers):
            numbers = numbers[np.isfinite(numbers)]
        features.append(numeric_profile(name, numbers, bins, rng))
    groups = {name: declared_groups(name, columns[name]) for name in sensitive_attributes}
    profile = ReferenceProfile(tuple(features), rows, groups=groups)
    return ReferenceProfile(profile.features, rows, profile.to_json()["digest"], groups)
