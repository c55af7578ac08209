"""Time budgets of the test suite: each test's own time, and each shared fixture's set-up, against a budget.

`make test` is CI's only command and CI gives it 90 minutes, so a test that grows slow must be a visible decision
(a line in BUDGETS, with its measured time) rather than drift. The pytest plugin below records the time of every
test (set-up, call and tear-down, less the module- and session-scoped fixtures it happened to set up) and of every
such fixture, writes them to a timing file as they arrive, and fails the run at its end when one is over budget;
tests/test_budgets.py reads the same file. The budgets and how they were chosen: docs/testing.md.

Budgets are seconds on the reference machine (REFERENCE_PROBE_SECONDS). On a slower machine they stretch by the
ratio of a short pure-Python probe (`machine_factor`), since the suite is mostly interpreter work; they never
shrink.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# The probe's reference time: the 2-core AMD EPYC VM the budgets were measured on took 0.065 to 0.068 s at the start
# of its `make test` runs (machine factor 1.08 to 1.14), 2026-12-07.
REFERENCE_PROBE_SECONDS = 0.060
PROBE_ADDITIONS = 2_000_000


@dataclass(frozen=True)
class Budgets:
    """Seconds allowed on the reference machine. ``tests`` and ``fixtures`` name the exceptions to the defaults:
    a test by its function's name (every parameter of it), a fixture by its name."""

    test_default: float
    fixture_default: float
    tests: dict[str, float] = field(default_factory=dict)
    fixtures: dict[str, float] = field(default_factory=dict)

    def for_test(self, nodeid: str) -> float:
        return self.tests.get(nodeid.split("[", 1)[0].rsplit("::", 1)[-1], self.test_default)

    def for_fixture(self, name: str) -> float:
        return self.fixtures.get(name.split("[", 1)[0], self.fixture_default)


# The suite's budgets (docs/testing.md has them as a table, with the times they were chosen from): a test within
# 45 s, a shared fixture within 60 s, and the exceptions below, each about 1.5 to 2 times its time in `make test`
# on 2026-12-07 (two workers on 2 cores, so each under the other's load).
BUDGETS = Budgets(
    test_default=45,
    fixture_default=60,
    tests={
        "test_a_second_run_of_the_end_to_end_config_agrees_exactly_with_the_first": 300,
        "test_a_fine_tune_killed_under_zero3_resumes_from_its_checkpoint_and_continues_its_global_step": 300,
        "test_a_killed_fine_tune_resumes_from_its_last_checkpoint": 120,
        "test_an_unreachable_tracking_server_does_not_stop_training_and_is_reported_at_the_end": 90,
        "test_a_killed_snakemake_leaves_no_output_of_its_running_job_and_the_next_run_completes": 90,
        "test_reduced_demo_runs_through_slurm_and_logs_folds_to_an_mlflow_server": 300,
        "test_two_rank_zero3_offload_fold_trains_through_the_rule_saves_changed_16bit_weights_and_scores": 200,
        "test_a_real_fine_tune_outlives_its_lost_server_and_sync_sends_every_step_and_file": 180,
        "test_a_server_lost_while_a_fold_trains_gets_every_metric_and_file_once_synced": 120,
        "test_a_fold_starting_while_the_server_is_down_gets_its_run_under_the_parent_once_synced": 100,
        "test_a_fold_whose_server_answers_sends_its_run_at_once": 90,
        "test_the_vllm_backend_scores_folds_as_the_transformers_backend_does": 180,
        "test_smoke_run_prints_the_table_of_every_run_and_the_profile": 150,
        # 81-89 s alone on 2 cores, 121 s beside the smoke above, 182 s at load 5 (three fine-tunes side by side)
        "test_smoke_rehearsal_covers_every_family_both_stages_both_backends_and_the_machine_check": 240,
        # 42-60 s measured (three pip resolutions against PyPI in parallel): network-bound
        "test_pip_resolves_every_gpu_requirement_set_from_pypi": 120,
        "test_mlflow_ui_shows_variants_by_oof_f1_a_folds_loss_and_what_changed": 90,
        "test_the_printed_address_shows_the_variants_best_out_of_fold_f1_first_in_its_own_column": 90,
        "test_reason_and_describe_variants_take_the_teachers_text_through_the_workflow": 90,
    },
    fixtures={
        "demo_run": 1200,  # the end-to-end run: every rule of the workflow
        "method_run": 400,  # a whole-workflow run per (family, method)
        "unreadable_run": 300,  # a whole-workflow run, OCR on blurred images
        "trained_fold": 120,  # one fold fine-tune with checkpoints
        "llamafactory_api": 90,  # LLaMA-Factory's API server, up and answering
    },
)


def machine_factor(reference: float = REFERENCE_PROBE_SECONDS) -> float:
    """How much slower than the reference machine this one runs a pure-Python loop (best of five), at least 1."""

    def probe() -> float:
        started = time.perf_counter()
        total = 0
        for number in range(PROBE_ADDITIONS):
            total += number
        return time.perf_counter() - started

    return max(1.0, min(probe() for _ in range(5)) / reference)


def over_budget(record: dict, budgets: Budgets) -> list[str]:
    """One line per test or fixture of ``record`` (the timing file's contents) over its budget, slowest first."""
    factor = record["machine_factor"]
    found = [
        (seconds, f"test {nodeid}: {seconds:.1f} s, budget {budget:.1f} s")
        for nodeid, seconds in record["tests"].items()
        if seconds > (budget := budgets.for_test(nodeid) * factor)
    ]
    found += [
        (seconds, f"fixture {name} (set up for {first}): {seconds:.1f} s, budget {budget:.1f} s")
        for name, (seconds, first) in record["fixtures"].items()
        if seconds > (budget := budgets.for_fixture(name) * factor)
    ]
    return [line for _, line in sorted(found, reverse=True)]


FIXTURE_TIMES = "budgets.fixture_seconds"  # the user property that carries a set-up's fixture times to the controller


class BudgetPlugin:
    """Records the timings (on the worker that runs a test: its shared fixtures' set-up; on the controller, or
    the one process without xdist: every report) and checks them at the end of the run."""

    def __init__(self, config: pytest.Config, budgets: Budgets, record_path: Path, factor: float | None = None) -> None:
        """``factor`` fixes the machine factor instead of measuring it (the plugin's own tests)."""
        self.budgets, self.record_path = budgets, record_path
        self.is_controller = not hasattr(config, "workerinput")
        self.record = {"machine_factor": None, "tests": {}, "fixtures": {}}  # the factor: the controller's
        self.setting_up: list[list[float]] = []  # scoped fixtures being set up: [started, seconds nested in it]
        self.fixture_seconds: dict[str, float] = {}  # of the test being set up: own seconds per scoped fixture
        self.over: list[str] = []
        if self.is_controller:
            self.record["machine_factor"] = factor or round(machine_factor(), 2)
            self.record_path.parent.mkdir(parents=True, exist_ok=True)
            self.write()

    # On the process that runs the tests.
    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_setup(self, item: pytest.Item):
        self.fixture_seconds = {}
        yield
        item.user_properties.append((FIXTURE_TIMES, json.dumps(self.fixture_seconds)))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_fixture_setup(self, fixturedef, request):
        if fixturedef.scope == "function":
            yield
            return
        self.setting_up.append([time.perf_counter(), 0.0])
        try:
            yield
        finally:
            started, nested = self.setting_up.pop()
            seconds = time.perf_counter() - started
            if self.setting_up:  # a fixture this one's set-up asked for: the outer one's time excludes it
                self.setting_up[-1][1] += seconds
            # A parametrised fixture is timed per parameter: name[index].
            name = fixturedef.argname + (f"[{request.param_index}]" if hasattr(request, "param") else "")
            self.fixture_seconds[name] = self.fixture_seconds.get(name, 0.0) + seconds - nested

    # On the controller.
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if not self.is_controller:
            return
        seconds = report.duration
        if report.when == "setup":
            shared = json.loads(dict(report.user_properties).get(FIXTURE_TIMES, "{}"))
            for name, own in shared.items():
                self.record["fixtures"][name] = (round(own, 2), report.nodeid)
            seconds -= sum(shared.values())
        tests = self.record["tests"]
        tests[report.nodeid] = round(tests.get(report.nodeid, 0.0) + max(seconds, 0.0), 2)
        if report.when == "teardown":
            self.write()

    def write(self) -> None:
        partial = self.record_path.with_suffix(".partial")
        partial.write_text(json.dumps(self.record, indent=1), encoding="utf-8")
        os.replace(partial, self.record_path)

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if not self.is_controller:
            return
        self.write()
        self.over = over_budget(self.record, self.budgets)
        if self.over and session.exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if not self.is_controller or not self.over:
            return
        terminalreporter.section("over their time budget (tests/helpers/budgets.py, docs/testing.md)", red=True)
        terminalreporter.line(f"machine factor {self.record['machine_factor']}: the budgets below are stretched by it")
        for line in self.over:
            terminalreporter.line(line, red=True)
