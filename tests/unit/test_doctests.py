"""The worked examples in docstrings are tests too."""

import doctest
import importlib

import pytest

MODULES = [
    "modelops.api.v1alpha1",
    "modelops.api.timestamps",
    "modelops.planning.actions",
    "modelops.planning.analysis",
    "modelops.planning.compare",
    "modelops.planning.names",
    "modelops.planning.policy",
    "modelops.planning.routers",
    "modelops.devcluster.targets",
    "modelops.devcluster.toolchain",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name))
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
