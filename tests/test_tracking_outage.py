"""A tracking server lost during a run loses nothing (issue 18, item 3): fine-tunes log to a local store,
send it when they end, or leave it for `python -m vlmflow.tracking.buffer` (make sync-mlflow).

The tests of a real `mlflow server` are slow (`make test`, not `make test-fast`): a start takes about 10 s under the
suite's load. They share one server, each in an experiment of its own, and leave it answering.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient
from test_faults import trainer_processes, wait_for

from vlmflow.tracking.buffer import copy_run
from vlmflow.tracking.fine_tune import tracked_fine_tune
from vlmflow.tracking.offline import choose_store, pending_notice
from vlmflow.tracking.runs import (
    child_run_id,
    ensure_experiment,
    start_variant_run,
    write_run,
)

from conftest import run_snakemake, small_demo_config, snakemake_command
from helpers.local_server import free_port, start_mlflow_server, stop_process_group

# What LLaMA-Factory's trainer does through transformers' MLflowCallback: resume the run MLFLOW_RUN_ID names,
# log losses per step, end it; then the evaluation after training opens a run of its own.
TRAINER = """
import mlflow
mlflow.start_run()
mlflow.log_params({"learning_rate": "0.001", "num_train_epochs": "1"})
for step in range(1, 6):
    mlflow.log_metric("loss", 3.0 - 0.5 * step, step=step)
mlflow.end_run()
mlflow.log_metric("eval_loss", 0.75, step=5)
"""
SYNC = [sys.executable, "-m", "vlmflow.tracking.buffer"]


@dataclass
class TrackingServer:
    """A real `mlflow server` that a test may lose and bring back: the same port and store, so the same server."""

    port: int
    store: Path
    process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answering(self) -> TrackingServer:
        """Started unless it already runs (a test before this one may have failed while it was down)."""
        if self.process is None or self.process.poll() is not None:
            self.process = start_mlflow_server(self.port, self.store)
        return self

    def lose(self) -> None:
        stop_process_group(self.process)


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("server")
    server = TrackingServer(free_port(), folder / "mlflow.db")
    yield server.answering()
    if server.process.poll() is None:
        stop_process_group(server.process)


def history(client: MlflowClient, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric entry of a run, by key, in logged order."""
    metrics = client.get_run(run_id).data.metrics
    return {key: [(entry.step, entry.value) for entry in client.get_metric_history(run_id, key)] for key in metrics}


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for entry in client.list_artifacts(run_id, path):
        found |= artifacts(client, run_id, entry.path) if entry.is_dir else {entry.path}
    return found


def experiment_on(server: str, workdir: Path, experiment: str) -> dict:
    """What rule create_mlflow_experiment and start_variant_run leave: the experiment, the local store, a
    parent run on the server."""
    uri, fallback = choose_store(server, workdir)
    assert uri == server and not fallback
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, experiment, workdir / "results/mlflow-artifacts")
    parent = start_variant_run(client, experiment_id, "baseline", {"ocr": False})
    write_run(workdir / "parent.json", uri, experiment, experiment_id, parent)
    return {"experiment_id": experiment_id, "parent": parent}


def track_fold(workdir: Path, fold: int, train, model_dir: Path) -> None:
    """A fold's fine-tune of variant baseline through the tracked path, its run file fold<k>.json in ``workdir``."""
    tracked_fine_tune(
        parent_run=workdir / "parent.json",
        run_file=workdir / f"fold{fold}.json",
        model_dir=model_dir,
        variant="baseline",
        name=f"fold{fold}",
        gpus=0,
        train=train,
        fold=str(fold),
        level="fold",
    )


@pytest.mark.slow
def test_a_server_lost_while_a_fold_trains_gets_every_metric_and_file_once_synced(
    tmp_path, monkeypatch, tracking_server
):
    monkeypatch.chdir(tmp_path)  # jobs run in the workflow's working directory: results/ is there
    server_uri = tracking_server.answering().uri
    experiment = experiment_on(server_uri, tmp_path, "lost_while_training")
    model_dir = tmp_path / "model"

    def train(environment: dict[str, str]) -> Path:
        tracking_server.lose()  # the server is lost while the fold trains
        subprocess.run([sys.executable, "-c", TRAINER], env={**os.environ, **environment}, check=True)
        model_dir.mkdir()
        (model_dir / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
        (model_dir / "training_loss.png").write_bytes(b"png")
        config = tmp_path / "llamafactory.yaml"
        config.write_text(yaml.safe_dump({"stage": "sft", "learning_rate": 0.001}))
        return config

    track_fold(tmp_path, 0, train, model_dir)
    # The job finished; its run is named and waiting.
    run_id = json.loads((tmp_path / "fold0.json").read_text())["run_id"]
    (marker,) = (tmp_path / "results/mlflow-pending").glob("*.json")
    pending = json.loads(marker.read_text())
    assert pending["server_run_id"] == run_id and "HTTPConnectionPool" in pending["error"]
    notice = pending_notice()
    assert "baseline/fold0" in notice and "make sync-mlflow" in notice
    assert f"baseline/fold0: mlflow ui --backend-store-uri {pending['buffer']}" in notice
    assert pending["buffer"] == f"sqlite:///{tmp_path / 'results/mlflow-buffer/baseline/fold0/mlflow.db'}"
    buffer = MlflowClient(pending["buffer"])
    local_run = pending["buffer_run_id"]
    assert history(buffer, local_run) == {
        "loss": [(step, 3.0 - 0.5 * step) for step in range(1, 6)],
        "eval_loss": [(5, 0.75)],
    }

    # (bad input) a sync while the server is still down: said, non-zero, nothing lost.
    refused = subprocess.run(SYNC, capture_output=True, text=True)
    assert refused.returncode != 0
    assert f"the tracking server {server_uri} is unreachable" in refused.stderr
    assert "nothing is lost" in refused.stderr and "baseline/fold0" in refused.stderr
    assert json.loads(marker.read_text()) == pending

    tracking_server.answering()  # the same server back
    synced = subprocess.run(SYNC, capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr
    assert not marker.exists()
    client = MlflowClient(server_uri)
    run = client.get_run(run_id)
    assert history(client, run_id) == history(buffer, local_run)
    assert {"llamafactory.yaml", "trainer_state.json", "training_loss.png"} == artifacts(client, run_id)
    assert run.data.params["learning_rate"] == "0.001" and run.data.params["llamafactory.stage"] == "sft"
    assert run.data.tags["mlflow.parentRunId"] == experiment["parent"] and run.info.run_name == "baseline/fold0"
    assert run.data.tags["fold"] == "0" and run.info.status == "FINISHED"
    runs = client.search_runs([experiment["experiment_id"]])
    assert sorted(run.info.run_name for run in runs) == ["baseline", "baseline/fold0"]  # no stray trainer run

    # A second sync (nothing pending) and a second copy (an interrupted sync rerun) duplicate nothing.
    again = subprocess.run(SYNC, capture_output=True, text=True)
    assert again.returncode == 0 and "nothing to send" in again.stdout
    copy_run(buffer, local_run, client, run_id)
    assert history(client, run_id) == history(buffer, local_run)


@pytest.mark.slow
def test_a_fold_whose_server_answers_sends_its_run_at_once(tmp_path, monkeypatch, tracking_server):
    monkeypatch.chdir(tmp_path)
    server_uri = tracking_server.answering().uri
    experiment_on(server_uri, tmp_path, "answering")

    def train(environment: dict[str, str]) -> Path:
        # The trainer logs into the job's own local store.
        store = tmp_path / "results/mlflow-buffer/baseline/fold0/mlflow.db"
        assert environment["MLFLOW_TRACKING_URI"] == f"sqlite:///{store}"
        subprocess.run([sys.executable, "-c", TRAINER], env={**os.environ, **environment}, check=True)
        config = tmp_path / "llamafactory.yaml"
        config.write_text(yaml.safe_dump({"stage": "sft"}))
        return config

    tracked_fine_tune(
        parent_run=tmp_path / "parent.json",
        run_file=tmp_path / "fold0.json",
        model_dir=tmp_path / "model",
        variant="baseline",
        name="fold0",
        gpus=0,
        train=train,
    )
    run_id = json.loads((tmp_path / "fold0.json").read_text())["run_id"]
    client = MlflowClient(server_uri)
    assert [step for step, _ in history(client, run_id)["loss"]] == [1, 2, 3, 4, 5]
    assert artifacts(client, run_id) == {"llamafactory.yaml"}
    assert pending_notice() is None and not (tmp_path / "results/mlflow-pending").exists()


@pytest.mark.slow
def test_a_fold_starting_while_the_server_is_down_gets_its_run_under_the_parent_once_synced(
    tmp_path, monkeypatch, tracking_server
):
    monkeypatch.chdir(tmp_path)
    server_uri = tracking_server.answering().uri
    experiment = experiment_on(server_uri, tmp_path, "down_at_start")
    tracking_server.lose()  # lost before the fold's job starts

    def train(environment: dict[str, str]) -> Path:
        subprocess.run([sys.executable, "-c", TRAINER], env={**os.environ, **environment}, check=True)
        config = tmp_path / "llamafactory.yaml"
        config.write_text(yaml.safe_dump({"stage": "sft"}))
        return config

    run_file = tmp_path / "fold1.json"
    track_fold(tmp_path, 1, train, tmp_path / "model")
    assert json.loads(run_file.read_text())["run_id"] is None  # no server run yet
    with pytest.raises(ValueError, match="fold1.json: this fine-tune's MLflow run waits in the local store"):
        child_run_id(run_file)
    (marker,) = (tmp_path / "results/mlflow-pending").glob("*.json")
    local_run = json.loads(marker.read_text())["buffer_run_id"]

    tracking_server.answering()
    synced = subprocess.run(SYNC, capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr
    run_id = child_run_id(run_file)  # the sync gave the job's reference its server run
    client, buffer = (
        MlflowClient(server_uri),
        MlflowClient(f"sqlite:///{tmp_path / 'results/mlflow-buffer/baseline/fold1/mlflow.db'}"),
    )
    run = client.get_run(run_id)
    assert run.data.tags["mlflow.parentRunId"] == experiment["parent"] and run.info.run_name == "baseline/fold1"
    assert run.data.tags["fold"] == "1" and run.info.status == "FINISHED"
    assert history(client, run_id) == history(buffer, local_run)
    assert buffer.get_run(local_run).data.tags["vlmflow.server_run_id"] == run_id
    assert not marker.exists()
    assert subprocess.run(SYNC, capture_output=True, text=True).returncode == 0
    children = client.search_runs([experiment["experiment_id"]], "attributes.run_name = 'baseline/fold1'")
    assert [child.info.run_id for child in children] == [run_id]  # opened once


def test_a_sync_with_nothing_pending_says_so(tmp_path):
    result = subprocess.run([*SYNC, str(tmp_path / "mlflow-pending")], capture_output=True, text=True)
    assert result.returncode == 0 and "nothing to send" in result.stdout


@pytest.mark.slow
def test_a_real_fine_tune_outlives_its_lost_server_and_sync_sends_every_step_and_file(
    tmp_path, tracking_server, demo_models
):
    server_uri = tracking_server.answering().uri
    workdir = tmp_path / "workdir"
    mlflow = {"tracking_uri": server_uri, "experiment": "real_fine_tune"}
    config = small_demo_config(workdir, variants=[{"name": "baseline"}], mlflow=mlflow)
    target = "results/baseline/fold0/mlflow_run.json"
    demo_models.into(workdir, config)
    command, env = snakemake_command(workdir, config, "--cores", "2", "--retries", "0", target)
    snakemake = subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wait_for(lambda: trainer_processes(workdir), "the fold's trainer", snakemake)
    tracking_server.lose()  # lost while the fold trains
    output, _ = snakemake.communicate(timeout=1800)
    assert snakemake.returncode == 0, output[-6000:]
    assert "stopped answering during the run" in output and "make sync-mlflow" in output

    tracking_server.answering()
    synced = subprocess.run(SYNC, cwd=workdir, capture_output=True, text=True)
    assert synced.returncode == 0, synced.stderr
    run_id = json.loads((workdir / target).read_text())["run_id"]
    client = MlflowClient(server_uri)
    buffer = MlflowClient(f"sqlite:///{workdir / 'results/mlflow-buffer/baseline/fold0/mlflow.db'}")
    (local,) = buffer.search_runs(
        [buffer.get_experiment_by_name("real_fine_tune").experiment_id], f"tags.`vlmflow.server_run_id` = '{run_id}'"
    )
    sent = history(client, run_id)
    assert sent == history(buffer, local.info.run_id)
    # Every step the trainer logged a loss at (its own record) is on the server.
    state = json.loads((workdir / "results/baseline/fold0/model/trainer_state.json").read_text())
    logged = [(entry["step"], entry["loss"]) for entry in state["log_history"] if "loss" in entry]
    assert logged and [step for step, _ in sent["loss"]] == [step for step, _ in logged]
    assert [value for _, value in sent["loss"]] == pytest.approx([loss for _, loss in logged])
    assert {"llamafactory.yaml", "trainer_state.json", "training_loss.png"} <= artifacts(client, run_id)
    assert artifacts(client, run_id) == artifacts(buffer, local.info.run_id)
    assert (
        client.get_run(run_id).data.tags["mlflow.parentRunId"]
        == json.loads((workdir / "results/baseline/mlflow_run.json").read_text())["run_id"]
    )
    # Run again, the workflow has nothing to do and nothing waits.
    rerun = run_snakemake(workdir, config, "--cores", "2", target)
    assert "stopped answering" not in rerun.stderr
