"""The README's map of the failures other gateways' users reported cannot rot: every entry
names at least one test, every test it names exists (a module-level test function of that
file, found by parsing it: no collection, no import), and every entry but the endpoint drift
names the public issue it comes from."""

import ast
import re
from functools import cache

import pytest

from tests.harness import ROOT
from tests.scripts.test_readme import section

TITLE = "Failures users of other gateways report, and the test that holds each"
NODE = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
ISSUE = re.compile(r"(?:CLIProxyAPI|9router|claude-code-router|LiteLLM)(?: PR)? #\d+")


def entries() -> list[str]:
    return [line for line in section(TITLE).splitlines() if line.startswith("- ")]


@cache
def functions_of(path: str) -> frozenset[str]:
    tree = ast.parse((ROOT / path).read_text())
    return frozenset(n.name for n in tree.body
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))


def test_the_map_lists_every_reported_failure():
    assert len(entries()) >= 30


@pytest.mark.parametrize("entry", entries(), ids=lambda e: e[2:40])
def test_each_entry_names_its_tests_and_its_issue(entry):
    nodes = NODE.findall(entry)
    assert nodes, f"no test named: {entry}"
    missing = [f"{path}::{name}" for path, name in nodes
               if not (ROOT / path).is_file() or name not in functions_of(path)]
    assert not missing, f"named in the README but not found: {missing}"
    assert ISSUE.search(entry) or "Claude Code 2.1.220" in entry, f"no issue named: {entry}"


def test_the_checker_sees_a_name_that_is_not_there():
    assert "test_nothing_is_left_behind" in functions_of("tests/e2e/test_soak.py")
    assert "test_no_such_test" not in functions_of("tests/e2e/test_soak.py")
