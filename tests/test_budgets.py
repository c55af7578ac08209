"""The suite's time budgets (tests/helpers/budgets.py): a test or shared fixture slower than its budget fails
the run, so that a slow new test is a decision written down in BUDGETS, not drift."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import REPO, TEST_DURATIONS
from helpers.budgets import BUDGETS, Budgets, machine_factor, over_budget


def test_every_test_that_ended_so_far_in_this_run_kept_its_budget():
    """Collected last (tests/conftest.py), so it reads nearly the whole run; the run's end checks the rest."""
    record = json.loads(TEST_DURATIONS.read_text(encoding="utf-8"))
    assert record["machine_factor"] >= 1.0
    assert over_budget(record, BUDGETS) == []


def test_the_check_names_what_is_over_its_budget_stretched_by_the_machine_factor():
    budgets = Budgets(test_default=10, fixture_default=20, tests={"slow": 100}, fixtures={"run": 50})
    record = {
        "machine_factor": 2.0,
        "tests": {"t.py::quick": 19.0, "t.py::late": 21.0, "t.py::slow[a]": 150.0, "t.py::slower[b]": 30.0},
        "fixtures": {"run[1]": (101.0, "t.py::slow[a]"), "other": (39.0, "t.py::quick")},
    }
    assert over_budget(record, budgets) == [
        "fixture run[1] (set up for t.py::slow[a]): 101.0 s, budget 100.0 s",
        "test t.py::slower[b]: 30.0 s, budget 20.0 s",
        "test t.py::late: 21.0 s, budget 20.0 s",
    ]


def test_the_machine_factor_is_at_least_one_and_grows_on_a_slower_machine():
    assert machine_factor() >= 1.0
    assert machine_factor(reference=1e-6) > 100  # a reference a million times faster than any machine


SLOW_TESTS = """
import time

import pytest


@pytest.fixture(scope="module")
def shared_run():
    time.sleep({fixture_sleep})
    return 1


def test_quick(shared_run):
    assert shared_run == 1


def test_made_slower():
    time.sleep({test_sleep})
"""


def run_budgeted_suite(tmp_path, fixture_sleep: float, test_sleep: float) -> tuple[subprocess.CompletedProcess, dict]:
    """A small suite under the real plugin with budgets of 0.5 s on any machine; returns pytest's result and its
    timing file."""
    (tmp_path / "conftest.py").write_text(
        textwrap.dedent(f"""
            import sys
            from pathlib import Path

            sys.path.insert(0, {str(REPO / "tests")!r})
            from helpers.budgets import BudgetPlugin, Budgets


            def pytest_configure(config):
                budgets = Budgets(test_default=0.5, fixture_default=0.5)
                plugin = BudgetPlugin(config, budgets, Path("durations.json"), factor=1.0)
                config.pluginmanager.register(plugin, "budgets")
        """),
        encoding="utf-8",
    )
    (tmp_path / "test_suite.py").write_text(
        SLOW_TESTS.format(fixture_sleep=fixture_sleep, test_sleep=test_sleep), encoding="utf-8"
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "test_suite.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    return result, json.loads((tmp_path / "durations.json").read_text(encoding="utf-8"))


def test_a_run_whose_tests_keep_their_budgets_passes(tmp_path):
    result, record = run_budgeted_suite(tmp_path, fixture_sleep=0.0, test_sleep=0.0)
    assert result.returncode == 0, result.stdout
    assert record["tests"].keys() == {"test_suite.py::test_quick", "test_suite.py::test_made_slower"}


def test_a_test_made_slower_than_its_budget_fails_the_run_and_is_named(tmp_path):
    result, record = run_budgeted_suite(tmp_path, fixture_sleep=1.2, test_sleep=1.2)
    assert result.returncode == 1, result.stdout
    assert "2 passed" in result.stdout  # every test passed: the budget alone fails the run
    assert "over their time budget" in result.stdout
    assert "test test_suite.py::test_made_slower: 1." in result.stdout
    assert "fixture shared_run (set up for test_suite.py::test_quick): 1." in result.stdout
    # The module fixture's sleep is the fixture's, not test_quick's.
    assert record["tests"]["test_suite.py::test_quick"] < 0.5
