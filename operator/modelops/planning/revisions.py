"""Revision records: what a released version was, kept apart from what the spec says now.

The spec describes one version, the one it names. While a canary of a new version runs, the
stable version is no longer in the spec, yet its children must still be kept exactly as they
were released: an edited image reverted, a deleted Deployment recreated, a scale to 0 undone.
So every version that is released (becomes the canary, or stable) gets a **record** of the
inputs its children are rendered from: ``model`` (URI, digest, format), ``runtime`` and
``scaling``. The record is stored as an ``apps/v1`` ControllerRevision owned by the
ModelDeployment, as StatefulSets and DaemonSets store theirs: immutable, named after the
version and a hash of its content, so the same inputs always give the same name and a change
of inputs gives a new record (the older one of that version is then deleted).

Rules, applied by ``reconcile.plan``:

1. While the spec names a version, the spec is its truth, and its record follows the spec.
2. The stable version's children are always rendered from its record, whatever the spec
   names now.
3. A stable version without a record (written by an older operator mid-canary) is left as it
   is and reported; the rollout holds until it has one (``StableRecordMissing``).
"""

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from modelops.api.v1alpha1 import ApiModel, ModelDeploymentSpec, ModelSpec, RuntimeSpec, ScalingSpec
from modelops.planning import children
from modelops.planning.children import Owner
from modelops.planning.names import child_name

KIND = "ControllerRevision"
API_VERSION = "apps/v1"
HASH_LENGTH = 10


class RevisionRecord(ApiModel):
    """The inputs a version's children are rendered from."""

    model: ModelSpec
    runtime: RuntimeSpec
    scaling: ScalingSpec


@dataclass(frozen=True)
class ObservedRevision:
    """A ControllerRevision of the ModelDeployment, as read back (``record`` None when unreadable)."""

    name: str
    version: str
    revision: int
    record: RevisionRecord | None


def record_of(spec: ModelDeploymentSpec) -> RevisionRecord:
    """The record of the version the spec names."""
    return RevisionRecord(model=spec.model, runtime=spec.runtime, scaling=spec.scaling)


def _content(record: RevisionRecord) -> dict[str, Any]:
    return record.model_dump(mode="json", by_alias=True, exclude_none=True)


def record_hash(record: RevisionRecord) -> str:
    """A short, stable hash of the record's content (canonical JSON, sorted keys).

    >>> from modelops.api.v1alpha1 import ModelSpec, RuntimeSpec, ScalingSpec
    >>> record = RevisionRecord(model=ModelSpec(version="1", uri="s3://m/1"), runtime=RuntimeSpec(image="r/s:1"), scaling=ScalingSpec())
    >>> len(record_hash(record)), record_hash(record) == record_hash(record.model_copy())
    (10, True)
    """
    canonical = json.dumps(_content(record), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]


def record_name(owner: Owner, record: RevisionRecord) -> str:
    """``<child name of the version>-<hash>``: at most 63 + 11 characters, a valid object name."""
    return f"{child_name(owner.name, record.model.version)}-{record_hash(record)}"


def revision_manifest(owner: Owner, record: RevisionRecord, number: int) -> dict[str, Any]:
    """The ControllerRevision holding ``record``; ``number`` orders the records of one ModelDeployment."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": record_name(owner, record),
            "namespace": owner.namespace,
            "labels": children.common_labels(owner, record.model.version),
            "ownerReferences": [owner.reference()],
        },
        "data": _content(record),
        "revision": number,
    }


def observe_revision(item: Mapping[str, Any]) -> ObservedRevision:
    """Reads one ControllerRevision; content the models refuse gives ``record=None`` (never a guess)."""
    metadata = item.get("metadata") or {}
    try:
        record: RevisionRecord | None = RevisionRecord.model_validate(item.get("data") or {})
    except ValidationError:
        record = None
    return ObservedRevision(
        name=str(metadata.get("name", "")),
        version=str((metadata.get("labels") or {}).get(children.LABEL_MODEL_VERSION, "")),
        revision=int(item.get("revision") or 0),
        record=record,
    )


def latest_records(revisions: Mapping[str, ObservedRevision]) -> dict[str, RevisionRecord]:
    """Version -> its newest readable record."""
    newest: dict[str, ObservedRevision] = {}
    for found in revisions.values():
        if found.record is None or found.record.model.version != found.version:
            continue  # unreadable, or relabelled by hand: not evidence of anything
        if found.version not in newest or found.revision > newest[found.version].revision:
            newest[found.version] = found
    return {version: found.record for version, found in newest.items() if found.record is not None}


def spec_from_record(spec: ModelDeploymentSpec, record: RevisionRecord) -> ModelDeploymentSpec:
    """The spec with the record's model, runtime and scaling: what renders that version's children."""
    return spec.model_copy(update={"model": record.model, "runtime": record.runtime, "scaling": record.scaling})


def next_number(revisions: Mapping[str, ObservedRevision]) -> int:
    return max((found.revision for found in revisions.values()), default=0) + 1
