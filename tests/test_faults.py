"""Faults the workflow must survive: transient job failures, many MLflow writers on one SQLite store, a killed
fine-tune, an unreachable tracking server."""

import contextlib
import copy
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from vlmflow.model.train import last_complete_checkpoint, living_processes
from vlmflow.runtime.outputs import partial_path
from vlmflow.tracking.offline import absolute_tracking_uri
from vlmflow.tracking.runs import (
    ensure_experiment,
    log_results,
    start_child_run,
    start_variant_run,
)

from conftest import (
    BIN,
    REPO,
    SMALL_TRAINING,
    run_snakemake,
    small_demo_config,
    snakemake_command,
    without_slurm_controller,
)
from helpers.local_server import free_port

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
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=without_slurm_controller())
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "done.txt").read_text() == "ok\n"
    assert (tmp_path / "attempts.txt").read_text().count("attempt") == 2


def write_runs(uri: str, experiment_id: str, parent: str, worker: int) -> None:
    client = MlflowClient(uri)
    for fold in range(3):
        run_id = start_child_run(client, experiment_id, parent, "baseline", f"w{worker}f{fold}", level="fold")
        log_results(client, run_id, {f"metric{k}": float(k + worker) for k in range(20)}, [])


@pytest.mark.slow  # six processes writing one store (about 18 s): make test, not the daily loop
def test_parallel_writers_on_one_sqlite_store_lose_no_run(tmp_path):
    uri = absolute_tracking_uri("sqlite:///mlflow.db", tmp_path)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "faults", tmp_path / "artifacts")
    parent = start_variant_run(client, experiment_id, "baseline", {"ocr": False})
    # Fresh processes (no store or engine of this one inherited), forked from a server that imported this module once:
    # six spawned interpreters each importing it took 40 s of the fast loop.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    workers = [context.Process(target=write_runs, args=(uri, experiment_id, parent, w)) for w in range(6)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=300)
    assert [worker.exitcode for worker in workers] == [0] * 6  # no "database is locked" escaped
    children = client.search_runs([experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'", max_results=100)
    assert len(children) == 18
    assert all(len(run.data.metrics) == 20 for run in children)


def wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 900):
    """Poll ``condition`` until it returns something truthy; fail if ``process`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        if process.poll() is not None:
            pytest.fail(f"snakemake ended before {what}:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}")


def trainer_processes(workdir: Path) -> list[int]:
    """The `llamafactory-cli train` processes of a workflow run in ``workdir`` (other tests may train too)."""
    listed = subprocess.run(["pgrep", "-f", "llamafactory-cli train"], capture_output=True, text=True).stdout
    return [int(pid) for pid in listed.split() if Path(f"/proc/{pid}/cwd").resolve() == workdir.resolve()]


def trainer_process_trees(workdir: Path) -> list[int]:
    """The trainer processes of ``trainer_processes`` and all below them: under DeepSpeed, the torchrun launcher
    and its ranks, which would train on as orphans if only `llamafactory-cli` were killed."""
    found, level = [], trainer_processes(workdir)
    while level:
        found += level
        children = (subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout for pid in level)
        level = [int(child) for listed in children for child in listed.split()]
    return found[::-1]  # the ranks first


def the_job_that_trains(workdir: Path) -> list[int]:
    """The job (the rule's script) that runs the trainer of ``trainer_processes``: the trainer's parent."""
    parents = living_processes()
    return [parents[pid] for pid in trainer_processes(workdir) if pid in parents]


FOLD_MODEL = "results/baseline/fold0/model"
DEMO_MODEL = "resources/demo/tiny-qwen2-vl"


def checkpointing_config(workdir: Path) -> dict:
    """One variant whose fold checkpoints every 2 of its 10 steps."""
    hyperparameters = {**SMALL_TRAINING, "num_train_epochs": 2, "per_device_train_batch_size": 4}
    hyperparameters.update(save_strategy="steps", save_steps=2, save_total_limit=2, eval_steps=2)
    config = small_demo_config(workdir, variants=[{"name": "baseline"}])
    config["train"]["hyperparameters"] = hyperparameters
    # Enough test records that scoring a fold's first test shard outlasts the kill test's polling (0.5 s).
    config["demo"]["n_test"] = 40
    return config


@pytest.fixture(scope="module")
def trained_fold(tmp_path_factory, demo_models):
    """One fold fine-tuned without interruption, checkpointing every 2 of its 10 steps: the reference."""
    workdir = tmp_path_factory.mktemp("whole")
    config = checkpointing_config(workdir)
    demo_models.into(workdir, config)
    run_snakemake(workdir, config, "--cores", "2", FOLD_MODEL)
    return workdir, config


# What rule train_fold writes for the fold (outputs, log, benchmark): left out of copy_up_to_the_fold.
FOLD_OUTPUTS = ("results/baseline/fold0", "logs/train/baseline/fold0.log", "benchmarks/train/baseline/fold0.tsv")


def copy_up_to_the_fold(whole: Path, target: Path) -> None:
    """``whole``'s run, with Snakemake's records of it, less the fold's fine-tune: its demo data and model, records,
    prompts, folds and MLflow store, so that a run for FOLD_MODEL in ``target`` starts at the fine-tune (the fold's
    settings, DeepSpeed's included, are no input of the jobs before it). This saves the 7 jobs before it (ingestion,
    duplicates, folds, prompts, the MLflow experiment and the variant's run; `snakemake -n`) on each of the three
    runs that copy."""
    left_out = {whole / path for path in FOLD_OUTPUTS}
    shutil.copytree(
        whole, target, symlinks=True, ignore=lambda folder, names: [n for n in names if Path(folder) / n in left_out]
    )


def kill_after_first_checkpoint(
    whole: Path, killed: Path, config: dict, find_victims=trainer_processes
) -> tuple[Path, int]:
    """Fine-tune the fold in ``killed`` on ``whole``'s demo data, model, prompts and folds, SIGKILL the processes
    ``find_victims`` names once its first checkpoint is complete and check that Snakemake fails and that no process
    of the trainer is left (torchrun and its ranks included); return the checkpoint left and its step."""
    target = FOLD_MODEL
    copy_up_to_the_fold(whole, killed)  # the same inputs of the fine-tune, made once
    # No retry: the profile's retry would resume at once; this checks that a later `snakemake` does.
    command, env = snakemake_command(killed, config, "--cores", "2", "--retries", "0", target)
    snakemake = subprocess.Popen(
        command, cwd=killed, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    checkpoints = killed / "results/baseline/fold0/checkpoints"
    first = wait_for(lambda: last_complete_checkpoint(checkpoints), "the first checkpoint", snakemake)
    trainers, victims = trainer_process_trees(killed), find_victims(killed)
    assert trainers and victims, "the trainer finished before it could be killed"
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):  # a short-lived helper process may have ended
            os.kill(pid, signal.SIGKILL)
    assert snakemake.wait(timeout=300) != 0
    deadline = time.monotonic() + 30
    while set(trainers) & living_processes().keys() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(trainers) & living_processes().keys(), "a process of the killed fine-tune is left behind"
    assert not (killed / target).exists(), "Snakemake removes a failed job's outputs"
    resumed_from = last_complete_checkpoint(checkpoints)
    step = int(resumed_from.name.split("-")[1])
    assert step >= int(first.name.split("-")[1])
    return resumed_from, step


def rerun_resumes(killed: Path, config: dict, resumed_from: Path, step: int) -> None:
    """Run Snakemake again in ``killed``: the fine-tune resumes from ``resumed_from`` at ``step``."""
    target = FOLD_MODEL
    checkpoints = killed / "results/baseline/fold0/checkpoints"
    run_snakemake(killed, config, "--cores", "2", target)
    log = (killed / "logs/train/baseline/fold0.log").read_text(encoding="utf-8")
    assert f"resuming the interrupted training from {resumed_from.relative_to(killed)}" in log
    assert f"global step {step}" in log, "the trainer continued from the checkpoint's step, not from 0"
    assert not checkpoints.exists(), "checkpoints are removed once the model is collected"


def assert_continues_as_uninterrupted(whole: Path, killed: Path, step: int) -> None:
    """The resumed training in ``killed`` ends at the step of the uninterrupted one in ``whole`` and logs the
    same losses after ``step``."""
    target = FOLD_MODEL

    def history(workdir):
        state = json.loads((workdir / target / "trainer_state.json").read_text(encoding="utf-8"))
        return state["global_step"], {
            (entry["step"], key): entry[key]
            for entry in state["log_history"]
            for key in ("loss", "eval_loss")
            if key in entry
        }

    whole_steps, reference = history(whole)
    resumed_steps, resumed = history(killed)
    assert resumed_steps == whole_steps > step
    # Every loss logged after the resume point matches the uninterrupted run's (CPU, same seeds).
    after = {key: value for key, value in resumed.items() if key[0] > step}
    assert after and after.keys() <= reference.keys()
    assert all(abs(value - reference[key]) < 1e-3 for key, value in after.items()), (after, reference)


def assert_same_weights(whole: Path, killed: Path) -> None:
    whole_weights = load_file(whole / FOLD_MODEL / "model.safetensors")
    resumed_weights = load_file(killed / FOLD_MODEL / "model.safetensors")
    assert max((whole_weights[k] - resumed_weights[k]).abs().max().item() for k in whole_weights) < 1e-4


@pytest.mark.slow
def test_a_killed_fine_tune_resumes_from_its_last_checkpoint(tmp_path, trained_fold):
    whole, config = trained_fold
    killed = tmp_path / "killed"
    resumed_from, step = kill_after_first_checkpoint(whole, killed, config)
    rerun_resumes(killed, config, resumed_from, step)
    assert_continues_as_uninterrupted(whole, killed, step)
    assert_same_weights(whole, killed)


@pytest.mark.slow
def test_an_unreachable_tracking_server_does_not_stop_training_and_is_reported_at_the_end(tmp_path, trained_fold):
    server = f"http://127.0.0.1:{free_port()}"  # a port nothing listens on
    config = small_demo_config(tmp_path, variants=[{"name": "baseline"}], mlflow={"tracking_uri": server})
    # trained_fold's tiny model: the same demo seed and model settings (its data has more test records).
    shutil.copytree(trained_fold[0] / DEMO_MODEL, tmp_path / DEMO_MODEL)
    result = run_snakemake(tmp_path, config, "--cores", "2", "results/baseline/fold0/mlflow_run.json")

    assert f"the tracking server {server} could not be reached" in result.stderr
    offline = f"sqlite:///{tmp_path / 'results/mlflow-offline.db'}"
    assert f"mlflow ui --backend-store-uri {offline}" in result.stderr
    client = MlflowClient(offline)
    runs = {
        run.info.run_name: run for run in client.search_runs([client.get_experiment_by_name("vlmflow").experiment_id])
    }
    assert {"baseline", "baseline/fold0"} <= runs.keys()
    assert client.get_metric_history(runs["baseline/fold0"].info.run_id, "loss"), "the trainer logged its losses"


@pytest.mark.slow
def test_a_killed_snakemake_leaves_no_output_of_its_running_job_and_the_next_run_completes(tmp_path, trained_fold):
    whole, config = trained_fold
    workdir = tmp_path / "workdir"
    shutil.copytree(whole, workdir, symlinks=True)  # the trained fold, with Snakemake's records of it
    held_out = workdir / "results/baseline/fold0/oof_probs.parquet"
    first_shard = workdir / "results/baseline/fold0/test_shards/0.parquet"
    test = workdir / "results/baseline/fold0/test_probs.parquet"
    command, env = snakemake_command(workdir, config, "--cores", "2", str(test.relative_to(workdir)))
    # Its own session: the kill takes Snakemake and its jobs at once, as a lost machine would.
    snakemake = subprocess.Popen(
        command,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    # The scoring job writes the held-out table, then scores its test shard: kill it in between.
    wait_for(lambda: held_out.exists() or partial_path(held_out).exists(), "the held-out table", snakemake)
    os.killpg(snakemake.pid, signal.SIGKILL)
    snakemake.wait(timeout=60)
    assert not any(path.exists() for path in (held_out, first_shard, test)), "a killed job's outputs never appear"

    subprocess.run([*command, "--unlock"], cwd=workdir, env=env, check=True, capture_output=True)
    run_snakemake(workdir, config, "--cores", "2", str(test.relative_to(workdir)))
    folds = pd.read_csv(workdir / "results/folds/folds.csv")
    assert len(pd.read_parquet(held_out)) == (folds["fold"] == 0).sum()
    assert len(pd.read_parquet(test)) == config["demo"]["n_test"]
    assert not list(workdir.glob("results/**/.partial.*")), "no temporary file is left behind"


@pytest.mark.slow
def test_a_fine_tune_killed_under_zero3_resumes_from_its_checkpoint_and_continues_its_global_step(
    tmp_path, trained_fold
):
    from transformers import Qwen2VLForConditionalGeneration

    whole = tmp_path / "whole"
    # trained_fold's settings under ZeRO-3: a copy of its config (checkpointing_config with the variant's defaults
    # filled in, as its run wrote them, so that the copied jobs' params match and none of them runs again). Its demo
    # data, model, prompts and folds are made once for the module: only the fine-tune runs here.
    config = copy.deepcopy(trained_fold[1])
    config["train"] |= {"deepspeed": "z3", "processes": 1}
    copy_up_to_the_fold(trained_fold[0], whole)
    run_snakemake(whole, config, "--cores", "2", FOLD_MODEL)  # the uninterrupted reference
    killed = tmp_path / "killed"
    # The job is killed, not the trainer: torchrun and its rank (in a session of its own) must end with it.
    resumed_from, step = kill_after_first_checkpoint(whole, killed, config, the_job_that_trains)
    assert list(resumed_from.glob("global_step*/*optim_states.pt")), "DeepSpeed saved its own states to resume"

    rerun_resumes(killed, config, resumed_from, step)
    settings = (killed / "results/baseline/fold0/llamafactory.yaml").read_text(encoding="utf-8")
    assert "z3.json" in settings and f"resume_from_checkpoint: {resumed_from.relative_to(killed)}" in settings
    assert_continues_as_uninterrupted(whole, killed, step)
    Qwen2VLForConditionalGeneration.from_pretrained(killed / FOLD_MODEL)  # the consolidated 16-bit save loads
    assert_same_weights(whole, killed)
