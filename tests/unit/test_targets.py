"""file_sd target registration: atomic files, loopback only, bounded labels."""

import json
from pathlib import Path

import pytest

from modelops.devcluster import targets


def test_register_writes_one_target_group_with_its_labels(tmp_path: Path) -> None:
    path = targets.register(tmp_path, "model-a", "127.0.0.1:9000", {"namespace": "ml", "pod": "a-0"})
    assert json.loads(path.read_text()) == [{"targets": ["127.0.0.1:9000"], "labels": {"namespace": "ml", "pod": "a-0"}}]
    assert [p.name for p in tmp_path.iterdir()] == ["model-a.json"]  # no temporary file left behind


def test_register_replaces_and_unregister_removes(tmp_path: Path) -> None:
    targets.register(tmp_path, "model-a", "127.0.0.1:9000")
    targets.register(tmp_path, "model-a", "127.0.0.1:9001")
    assert json.loads((tmp_path / "model-a.json").read_text())[0]["targets"] == ["127.0.0.1:9001"]
    targets.unregister(tmp_path, "model-a")
    targets.unregister(tmp_path, "model-a")  # idempotent
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "address", "labels", "message"),
    [
        ("ok", "10.244.0.5:8080", {}, "only loopback"),
        ("ok", "127.0.0.1:0", {}, "must be 127.0.0.1:<port>"),
        ("ok", "127.0.0.1", {}, "must be 127.0.0.1:<port>"),
        ("../escape", "127.0.0.1:80", {}, "target name"),
        ("ok", "127.0.0.1:80", {"bad-label": "x"}, "not a valid Prometheus label name"),
        ("ok", "127.0.0.1:80", {"__address__": "x"}, "not a valid Prometheus label name"),
        ("ok", "127.0.0.1:80", {"long": "x" * 2000}, "longer than"),
        ("ok", "127.0.0.1:80", {f"l{i}": "x" for i in range(40)}, "at most 32 labels"),
    ],
)
def test_bad_registrations_are_refused_with_the_reason(
    tmp_path: Path, name: str, address: str, labels: dict[str, str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        targets.register(tmp_path, name, address, labels)
    assert list(tmp_path.iterdir()) == []
