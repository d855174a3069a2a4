"""One timestamp format: whatever spelling comes in, status holds RFC 3339 UTC seconds with ``Z``."""

import datetime
import random
import re

import pytest
from pydantic import ValidationError

from modelops.api import v1alpha1
from modelops.api.timestamps import canonical_or, canonical_timestamp, format_timestamp, parse_timestamp

CANONICAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
EARLIEST = datetime.datetime(2, 1, 1, tzinfo=datetime.UTC)  # a day inside the range, so any offset stays representable
LATEST = datetime.datetime(9998, 12, 31, tzinfo=datetime.UTC)


def _spellings(moment: datetime.datetime, offset: datetime.timedelta, digits: int) -> list[str]:
    """``moment`` written the ways it reaches the operator: in an offset, with fractions, lower case, naive."""
    local = moment.astimezone(datetime.timezone(offset))
    fraction = f".{local.microsecond:06d}"[: digits + 1] if digits else ""
    base = local.strftime("%Y-%m-%dT%H:%M:%S").zfill(19) + fraction
    sign, minutes = ("-" if offset < datetime.timedelta(0) else "+"), int(abs(offset).total_seconds()) // 60
    written = [base + f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"]
    if not offset:
        written += [base + "Z", base.replace("T", "t") + "z", base]  # a naive text is read as UTC
    return written


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("2026-12-01T04:05:06Z", "2026-12-01T04:05:06Z"),
        ("2026-12-01T04:05:06+00:00", "2026-12-01T04:05:06Z"),  # how the kubernetes client renders a Job's times
        ("2026-12-01T04:05:06.999999Z", "2026-12-01T04:05:06Z"),  # fractions are dropped, never rounded up
        ("2026-12-01T04:05:06.123456789Z", "2026-12-01T04:05:06Z"),  # nanoseconds (Go's RFC3339Nano)
        ("2026-12-01T00:30:00+01:00", "2026-11-30T23:30:00Z"),
        ("2026-12-01T23:30:00-05:30", "2026-12-02T05:00:00Z"),
        ("2026-12-01T04:05:06", "2026-12-01T04:05:06Z"),  # naive: UTC
        ("2026-12-01 04:05:06", "2026-12-01T04:05:06Z"),
        (" 2026-12-01T04:05:06Z ", "2026-12-01T04:05:06Z"),
    ],
)
def test_readable_times_are_re_emitted_canonically(text: str, canonical: str) -> None:
    assert canonical_timestamp(text) == canonical


@pytest.mark.parametrize("text", ["", "t", "yesterday", "2026-12-01", "2026-13-01T00:00:00Z", "2026-12-01T25:00:00Z",
                                  "0001-01-01T00:00:00+01:00", "12/01/2026 04:05"])
def test_unreadable_times_raise_value_error(text: str) -> None:
    with pytest.raises(ValueError, match="not an RFC 3339 date and time"):
        parse_timestamp(text)


def test_canonical_form_is_idempotent_and_keeps_the_instant_for_many_generated_times() -> None:
    """A property checked over 3000 seeded random instants, offsets and fraction lengths (hypothesis is not installed)."""
    rng = random.Random(20261201)
    span = int((LATEST - EARLIEST).total_seconds())
    for _ in range(3000):
        moment = EARLIEST + datetime.timedelta(seconds=rng.randrange(span), microseconds=rng.randrange(1_000_000))
        offset = datetime.timedelta(minutes=rng.choice([0, 0, rng.randrange(-23 * 60 - 59, 23 * 60 + 60)]))
        for text in _spellings(moment, offset, rng.randrange(0, 10)):
            canonical = canonical_timestamp(text)
            assert CANONICAL.match(canonical), (text, canonical)
            assert canonical_timestamp(canonical) == canonical  # idempotent
            assert parse_timestamp(canonical) == moment.replace(microsecond=0), text  # the same instant, whole seconds
            assert format_timestamp(parse_timestamp(text)) == canonical


def test_hypothesis_property_when_installed() -> None:
    hypothesis = pytest.importorskip("hypothesis")
    strategies = hypothesis.strategies

    @hypothesis.given(
        strategies.datetimes(min_value=EARLIEST.replace(tzinfo=None), max_value=LATEST.replace(tzinfo=None)),
        strategies.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59),
        strategies.integers(min_value=0, max_value=9),
    )
    def check(naive: datetime.datetime, minutes: int, digits: int) -> None:
        moment = naive.replace(tzinfo=datetime.UTC)
        for text in _spellings(moment, datetime.timedelta(minutes=minutes), digits):
            canonical = canonical_timestamp(text)
            assert CANONICAL.match(canonical) and canonical_timestamp(canonical) == canonical
            assert parse_timestamp(canonical) == moment.replace(microsecond=0)

    check()


def test_a_foreign_time_falls_back_to_now_rather_than_stopping_the_pass() -> None:
    now = "2026-12-01T04:05:06Z"
    assert canonical_or(None, now) == now
    assert canonical_or("not a time", now) == now
    assert canonical_or("2026-12-01T04:00:00.5+00:00", now) == "2026-12-01T04:00:00Z"


def test_status_read_in_other_spellings_is_canonical_once_parsed() -> None:
    status = v1alpha1.ModelDeploymentStatus.model_validate({
        "conditions": [{"type": "Ready", "status": "True", "reason": "AllReplicasReady",
                        "lastTransitionTime": "2026-12-01T05:00:00.25+01:00"}],
        "retraining": {"runs": 1, "cooldownUntil": "2026-12-01T06:00:00",
                       "lastRun": {"job": "m-retrain-1", "trigger": "drift", "startedAt": "2026-12-01T04:00:00Z",
                                   "finishedAt": "2026-12-01T04:10:00+00:00", "outcome": "Failed"}},
    })
    assert status.conditions[0].last_transition_time == "2026-12-01T04:00:00Z"
    assert status.retraining is not None and status.retraining.cooldown_until == "2026-12-01T06:00:00Z"
    assert status.retraining.last_run is not None and status.retraining.last_run.finished_at == "2026-12-01T04:10:00Z"


def test_an_unreadable_time_in_status_is_a_validation_error_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="cooldownUntil|cooldown_until"):
        v1alpha1.ModelDeploymentStatus.model_validate({"retraining": {"runs": 1, "cooldownUntil": "soon"}})
