"""The ClusterMetricTemplate rules, as the apiserver evaluates them.

The two RE2 patterns of the CEL rules are simple enough that Python's ``re`` reads them the same
way (no RE2-only syntax), so this evaluates the very strings the CRD carries; the cluster test
``test_templates_with_placeholders_outside_label_values_are_rejected`` runs them in the apiserver.
"""

import re

import pytest

from modelops.api.v1alpha1 import ClusterMetricTemplateSpec

RULES = [entry["rule"] for entry in ClusterMetricTemplateSpec.model_json_schema()["x-kubernetes-validations"]]


def _pattern(rule: str) -> re.Pattern[str]:
    [pattern] = re.findall(r"matches\(r'(.*?)'\)", rule)
    return re.compile(pattern)


[IN_REGEX_RULE] = [r for r in RULES if r.startswith("!self.query.matches")]
[NAMESPACE_RULE] = [r for r in RULES if r.startswith("self.query.matches")]


def in_regex(query: str) -> bool:
    return _pattern(IN_REGEX_RULE).search(query) is not None


def selects_namespace(query: str) -> bool:
    return _pattern(NAMESPACE_RULE).search(query) is not None


NS = 'namespace="{{namespace}}"'


@pytest.mark.parametrize(
    "query",
    [
        f'x{{{NS}, version=~"{{{{version}}}}"}}',
        f'x{{{NS}, version=~ "{{{{version}}}}"}}',
        f'x{{{NS}, version =~  "{{{{version}}}}"}}',
        f'x{{{NS}, version=~\t"{{{{version}}}}"}}',
        f'x{{{NS}, version=~\n"{{{{version}}}}"}}',
        f'x{{{NS}, version!~"{{{{version}}}}"}}',
        f'x{{{NS}, version!~ "{{{{version}}}}"}}',
        f'x{{{NS}, version=~ # a comment\n "{{{{version}}}}"}}',
        '"{{version}}"',
    ],
)
def test_a_placeholder_in_a_regular_expression_is_refused_whatever_the_spacing(query: str) -> None:
    assert in_regex(query)


@pytest.mark.parametrize(
    "query",
    [
        f'sum(rate(x{{{NS}, model="{{{{model}}}}", version="{{{{version}}}}"}}[2m]))',
        f'x{{{NS}, version != "{{{{version}}}}", model = "{{{{model}}}}"}}',
        f'x{{{NS}, version=~"2\\\\..*"}}',  # a regular expression without a placeholder is fine
    ],
)
def test_placeholders_in_equality_matchers_are_accepted(query: str) -> None:
    assert not in_regex(query)
    assert selects_namespace(query)


@pytest.mark.parametrize(
    ("query", "selects"),
    [
        ('x{model="{{model}}"}', False),
        ('x{kube_namespace="{{namespace}}"}', False),
        ('x{namespace!="{{namespace}}"}', False),
        ('x{namespace=~"{{namespace}}"}', False),
        ('x{namespace = "{{namespace}}"}', True),
        ('x{model="{{model}}",namespace="{{namespace}}"}', True),
    ],
)
def test_the_namespace_placeholder_is_required_as_an_equality_on_namespace(query: str, selects: bool) -> None:
    assert selects_namespace(query) is selects
