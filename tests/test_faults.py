"""Faults the workflow must survive: transient job failures, and many MLflow writers on one SQLite store."""

import multiprocessing
import subprocess

from mlflow.tracking import MlflowClient

from vlmflow.tracking import absolute_tracking_uri, ensure_experiment, log_results, start_child_run, start_variant_run

from conftest import BIN, REPO

FAILS_ONCE = """
rule flaky:
    output: "done.txt"
    run:
        # Each attempt leaves a mark; the first one fails as a transient fault would.
        with open("attempts.txt", "a") as attempts:
            attempts.write("attempt\\n")
        if open("attempts.txt").read().count("attempt") == 1:
            raise RuntimeError("transient failure")
        open(output[0], "w").write("ok\\n")
"""


def test_a_transiently_failing_job_is_retried_by_the_default_profile(tmp_path):
    (tmp_path / "Snakefile").write_text(FAILS_ONCE, encoding="utf-8")
    command = [str(BIN / "snakemake"), "--profile", str(REPO / "profiles/default"), "--cores", "1"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "done.txt").read_text() == "ok\n"
    assert (tmp_path / "attempts.txt").read_text().count("attempt") == 2


def write_runs(uri: str, experiment_id: str, parent: str, worker: int) -> None:
    client = MlflowClient(uri)
    for fold in range(3):
        run_id = start_child_run(client, experiment_id, parent, "baseline", f"w{worker}f{fold}", level="fold")
        log_results(client, run_id, {f"metric{k}": float(k + worker) for k in range(20)}, [])


def test_parallel_writers_on_one_sqlite_store_lose_no_run(tmp_path):
    uri = absolute_tracking_uri("sqlite:///mlflow.db", tmp_path)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "faults", tmp_path / "artifacts")
    parent = start_variant_run(client, experiment_id, "baseline", {"ocr": False})
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=write_runs, args=(uri, experiment_id, parent, w)) for w in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0] * 6  # no "database is locked" escaped
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=100)
    assert len(children) == 18
    assert all(len(run.data.metrics) == 20 for run in children)
