"""Child names: readable when possible, always DNS-safe, never colliding."""

import itertools
import re

import pytest

from modelops.planning.names import MAX_NAME_LENGTH, child_name, version_slug

DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    ("version", "expected"),
    [("2.1.0", "fraud-detector-2-1-0"), ("v3", "fraud-detector-v3"), ("20261126", "fraud-detector-20261126")],
)
def test_plain_versions_give_readable_names(version: str, expected: str) -> None:
    assert child_name("fraud-detector", version) == expected


@pytest.mark.parametrize("version", ["2.1.0-rc1", "V2", "a_b", "2.1.0.Final", "1-0"])
def test_other_versions_get_a_hash_suffix(version: str) -> None:
    name = child_name("fraud-detector", version)
    assert re.fullmatch(r"fraud-detector-[a-z0-9-]*[0-9a-f]{10}", name), name


def test_versions_that_sanitize_alike_do_not_collide() -> None:
    versions = ["1.0", "1-0", "1_0", "1.0-", "1.O", "1.0.0", "1..0", "V1.0", "v1.0"]
    names = [child_name("m", version) for version in versions if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", version)]
    assert len(set(names)) == len(names)


def test_names_fit_a_service_name_for_the_longest_owner_and_version() -> None:
    owner = "a" * 40
    for version in ("9" * 63, "1." * 31 + "1", "X" * 63, "2.1.0"):
        name = child_name(owner, version)
        assert len(name) <= MAX_NAME_LENGTH
        assert DNS_LABEL.match(name), name


def test_truncated_versions_stay_distinct() -> None:
    owner = "a" * 40
    long_versions = ["1" * 60 + suffix for suffix in ("aa", "ab", "ba")]
    names = {child_name(owner, version) for version in long_versions}
    assert len(names) == 3


def test_every_short_version_of_a_small_alphabet_maps_to_a_unique_dns_label() -> None:
    alphabet = "a1.-_A"
    seen: dict[str, str] = {}
    for length in range(1, 4):
        for letters in itertools.product(alphabet, repeat=length):
            version = "".join(letters)
            if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?", version):
                continue
            name = child_name("m", version)
            assert DNS_LABEL.match(name), (version, name)
            assert seen.setdefault(name, version) == version, f"{version} and {seen[name]} share {name}"


def test_too_little_room_is_an_error() -> None:
    with pytest.raises(ValueError, match="no room"):
        version_slug("1.0", 5)
