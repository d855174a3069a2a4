"""The one timestamp format of the API: RFC 3339 in UTC, whole seconds, with ``Z``.

Every time the operator writes to status has the form ``2026-12-01T04:05:06Z``. Times come
in from several places in other spellings: the kubernetes client renders a Job's
``lastTransitionTime`` as ``2026-12-01T04:05:06+00:00``, a human may edit status with an
offset or fractions, an older operator wrote fractions. :func:`parse_timestamp` reads all of
them, :func:`format_timestamp` writes the one form, and :data:`Timestamp` applies both to a
model field, so a time read from status is canonical from the moment it is parsed.

A time stored in another spelling is rewritten in the canonical one with the next status
write that the pass makes for a real change. The pass compares parsed models, so a
spelling alone never causes a write (zero writes in steady state).

**A time without an offset is read as UTC.** Kubernetes writes every time in UTC, and so does
the operator; a time that lost its ``Z`` (a hand edit, a tool that drops it) is far more
likely UTC than local time, and reading it as UTC keeps arithmetic on it from raising every
pass. A text that is not a date and a time at all is unreadable (``ValueError``).

The module sits in ``api`` because the status models use it; planning imports it from here.
It reads no clock: ``now`` always comes from the caller (the handlers' ``_now()``).

>>> canonical_timestamp("2026-12-01T05:05:06.789+01:00")
'2026-12-01T04:05:06Z'
>>> canonical_timestamp("2026-12-01 04:05:06")
'2026-12-01T04:05:06Z'
"""

import datetime
import re
from typing import Annotated

from pydantic import AfterValidator

# A date, a separator and at least hours and minutes: what fromisoformat accepts beyond this
# (a bare date, week dates) is not a point in time anyone meant to write in status.
_DATE_AND_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
_FRACTION = re.compile(r"(:\d{2})\.(\d+)")


def parse_timestamp(text: str) -> datetime.datetime:
    """An aware UTC datetime for an RFC 3339 / ISO 8601 date-time text (no offset: UTC).

    Fractions of any length are accepted (and later dropped by :func:`format_timestamp`).

    >>> parse_timestamp("2026-12-01T04:05:06Z").isoformat()
    '2026-12-01T04:05:06+00:00'
    >>> parse_timestamp("2026-12-01t04:05:06.1234567z").microsecond
    123456
    """
    if not isinstance(text, str) or not _DATE_AND_TIME.match(text.strip()):
        raise ValueError(f"not an RFC 3339 date and time: {str(text)[:64]!r}")
    normal = text.strip().replace("t", "T").replace("z", "Z").replace("Z", "+00:00")
    normal = _FRACTION.sub(lambda match: f"{match.group(1)}.{match.group(2)[:6].ljust(6, '0')}", normal, count=1)
    try:
        moment = datetime.datetime.fromisoformat(normal)
        if moment.tzinfo is None:
            return moment.replace(tzinfo=datetime.UTC)
        return moment.astimezone(datetime.UTC)
    except (ValueError, OverflowError) as error:
        raise ValueError(f"not an RFC 3339 date and time: {text[:64]!r}: {error}") from error


def format_timestamp(moment: datetime.datetime) -> str:
    """The canonical text of ``moment``: UTC, whole seconds (fractions are dropped), ``Z``.

    A naive ``moment`` is taken as UTC, as in :func:`parse_timestamp`.

    >>> format_timestamp(datetime.datetime(2026, 12, 1, 4, 5, 6, 999999, tzinfo=datetime.UTC))
    '2026-12-01T04:05:06Z'
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    utc = moment.astimezone(datetime.UTC)
    return f"{utc:%Y}".zfill(4) + f"-{utc:%m-%dT%H:%M:%S}Z"  # zfill: glibc writes year 1 as "1"


def canonical_timestamp(text: str) -> str:
    """``text`` re-emitted in the canonical form (``ValueError`` when it is not a date and time)."""
    return format_timestamp(parse_timestamp(text))


def canonical_or(text: str | None, fallback: str) -> str:
    """``text`` in the canonical form, or ``fallback`` when it is missing or unreadable.

    For times that come from other objects (a Job's condition), where a bad value must not
    stop the pass: the caller's ``now`` is the truthful fallback.

    >>> canonical_or("2026-12-01T04:05:06+00:00", "2026-12-02T00:00:00Z")
    '2026-12-01T04:05:06Z'
    >>> canonical_or("yesterday", "2026-12-02T00:00:00Z")
    '2026-12-02T00:00:00Z'
    """
    if not text:
        return fallback
    try:
        return canonical_timestamp(text)
    except ValueError:
        return fallback


Timestamp = Annotated[str, AfterValidator(canonical_timestamp)]
"""A status field holding a time: any readable spelling is stored canonically; anything else fails validation."""
