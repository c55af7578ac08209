"""The reduced demo through a real one-node SLURM cluster (profiles/slurm, sbatch), logging to an MLflow server.

scripts/start_slurm.sh brings up munged, slurmctld and slurmd on this machine; that needs root, which
CI has. The test skips, saying why, only where it cannot start them.
"""

import os
import re
import socket
import subprocess
import time
import urllib.request

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import BIN, REPO, run_snakemake, small_demo_config
from helpers.local_server import stop_process_group

PARTITION = "debug"  # the partition scripts/start_slurm.sh creates


@pytest.fixture
def slurm_cluster():
    """A one-node SLURM cluster; stopped afterwards if this test started it."""
    started = subprocess.run(["bash", REPO / "scripts/start_slurm.sh"], capture_output=True, text=True)
    if started.returncode == 77:  # not root, and no cluster of ours running
        pytest.skip(f"no SLURM cluster: {started.stderr.strip()}")
    assert started.returncode == 0, f"start_slurm.sh failed:\n{started.stdout}\n{started.stderr}"
    yield
    if started.stdout.strip().endswith("started"):
        subprocess.run(["bash", REPO / "scripts/stop_slurm.sh"], check=True)


@pytest.fixture
def mlflow_server(tmp_path):
    """scripts/mlflow_server.sh on 127.0.0.1 and a free port, its SQLite store in tmp_path; yields its URI."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "VLMFLOW_MLFLOW_PORT": str(port)}
    log_path = tmp_path / "mlflow-server.log"
    with log_path.open("w") as log:
        # One worker: this machine has two cores, and the workflow's jobs need them. Own session, so
        # that one signal to the group stops the server and its uvicorn workers.
        server = subprocess.Popen(
            ["bash", REPO / "scripts/mlflow_server.sh", tmp_path / "mlflow-server", "--workers", "1"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=5):
                    break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the MLflow server did not come up:\n{log_path.read_text()[-4000:]}")
                time.sleep(1)
        yield uri
    finally:
        stop_process_group(server, timeout=60)


def profile_for_this_node(folder):
    """profiles/slurm edited as a user would: this cluster's partition and an account, and every job cut
    to one core and 2 GB of this small node (the shipped sizes are for GPU nodes)."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text(encoding="utf-8"))
    profile["default-resources"].update(slurm_partition=PARTITION, slurm_account="vlmflow-test", mem_mb=2000)
    for resources in profile["set-resources"].values():
        resources.update(slurm_partition=PARTITION, cpus_per_task=1, mem_mb=2000)
    profile["set-threads"] = dict.fromkeys(profile["set-threads"], 1)
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    return folder


@pytest.mark.slurm
@pytest.mark.slow
def test_reduced_demo_runs_through_slurm_and_logs_folds_to_an_mlflow_server(
    tmp_path, slurm_cluster, mlflow_server, demo_models
):
    config = small_demo_config(
        tmp_path,
        variants=[{"name": "baseline"}],
        train={"folds": 2, "gpus_per_run": 0},  # the test node has no GPUs for sbatch --gpus
        final={"strategy": "average_folds", "ablation": []},
        mlflow={"tracking_uri": mlflow_server},
    )
    workdir = tmp_path / "run"
    demo_models.into(workdir, config)
    # Up to the submission only: every further rule is one more sbatch job and status poll (~30 s each).
    result = run_snakemake(
        workdir,
        config,
        "--profile",
        str(profile_for_this_node(tmp_path / "profile")),
        # More jobs than the node's two cores: SLURM starts a queued job the moment a core frees, while
        # Snakemake would submit it only at its next status poll.
        "--jobs",
        "4",
        # No accounting daemon here, so no sacct. The plugin checks this many seconds after a submission, then
        # 10 s longer each time it finds nothing finished (6, 22, 48 s): the chain's short jobs take 4 to 6 s here
        # and its fold fine-tunes about 35 s, so 6 sees most of them at the first check (1 took 12 s a short job and
        # 64 s a fine-tune; 5 took 20 s and 45 s).
        "--slurm-status-command",
        "squeue",
        "--slurm-init-seconds-before-status-checks",
        "6",
        "--slurm-keep-successful-logs",
        "results/baseline/submission.csv",  # last: options before it take lists of values
        slurm=True,
    )

    # Every job went through sbatch and ran under slurmd, which wrote its log.
    output = result.stdout + result.stderr
    submitted = re.findall(r"submitted with SLURM jobid (\d+) \(log: (\S+)\)\.", output)
    local = re.findall(r"^localrule (\w+):", output, re.MULTILINE)  # bookkeeping rules run beside Snakemake
    assert len(submitted) + len(local) == int(re.search(r"^total\s+(\d+)$", output, re.MULTILINE)[1])
    rules = [re.search(r"/rule_(\w+)/", log)[1] for _, log in submitted]
    assert "create_mlflow_experiment" in local and not set(local) & set(rules)
    assert rules.count("train_fold") == 2 and "score_final_model" in rules
    for job_id, log in submitted:
        assert log.endswith(f"/{job_id}.log") and os.path.getsize(log) > 0

    submission = pd.read_csv(workdir / "results/baseline/submission.csv", encoding="utf-8-sig")
    assert list(submission.columns) == ["id", "predict"] and len(submission) == 12

    # The server holds the variant's run and its two fold runs, each with its loss curve and the files
    # the job logged (into the experiment's artifact folder under results/, which the server reads).
    client = MlflowClient(mlflow_server)
    experiment = client.get_experiment_by_name("vlmflow")
    assert experiment.artifact_location == (workdir / "results/mlflow-artifacts").resolve().as_uri()
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in runs if run.data.tags.get("level") == "variant"]
    assert parent.data.tags["variant"] == "baseline"
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    folds = [run for run in children if run.data.tags.get("level") == "fold"]
    assert sorted(run.data.tags["fold"] for run in folds) == ["0", "1"]
    for run in folds:
        assert len(client.get_metric_history(run.info.run_id, "loss")) >= 1
        assert "llamafactory.yaml" in {item.path for item in client.list_artifacts(run.info.run_id)}
