from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from mlflow.tracking import MlflowClient

from vlmflow.tracking.fine_tune import fine_tune_job
from vlmflow.tracking.offline import absolute_tracking_uri
from vlmflow.tracking.runs import ensure_experiment, read_run, start_variant_run, write_run


def job_of(tmp_path: Path, deepspeed: list | str) -> SimpleNamespace:
    """What a fine-tune rule gives its script as ``snakemake``, for one fold of a variant in a sqlite store."""
    uri = absolute_tracking_uri("sqlite:///mlflow.db", tmp_path)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "demo", tmp_path / "artifacts")
    parent = start_variant_run(client, experiment_id, "baseline", {"ocr": False})
    write_run(tmp_path / "parent.json", uri, "demo", experiment_id, parent)
    fold = tmp_path / "results/baseline/fold0"
    return SimpleNamespace(
        input=SimpleNamespace(parent_run=str(tmp_path / "parent.json"), deepspeed=deepspeed),
        output=SimpleNamespace(
            run=str(fold / "mlflow_run.json"), model=str(fold / "model"), config=str(fold / "c.yaml")
        ),
        log=[str(tmp_path / "fold0.log")],
        threads=3,
        resources=SimpleNamespace(gpu=0),
        params=SimpleNamespace(training={"model": "tiny", "seed": 7}),
        wildcards=SimpleNamespace(variant="baseline"),
    )


def test_a_fine_tune_job_trains_with_the_rules_settings_in_a_child_run(tmp_path):
    job = job_of(tmp_path, [])
    given = {}

    def train(**settings) -> Path:
        given.update(settings)
        config = Path(settings["workdir"]) / "c.yaml"
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(yaml.safe_dump({"stage": "sft"}), encoding="utf-8")
        return config

    fine_tune_job(job, name="fold0", train=train, fold="0", level="fold")
    environment = given.pop("extra_env")
    assert given == {
        "workdir": tmp_path / "results/baseline/fold0",
        "deepspeed_config": None,  # the rule's empty input
        "log_path": str(tmp_path / "fold0.log"),
        "threads": 3,
        "model": "tiny",
        "seed": 7,
    }
    reference = read_run(job.output.run)
    assert environment["MLFLOW_RUN_ID"] == reference["run_id"]
    run = MlflowClient(reference["tracking_uri"]).get_run(reference["run_id"])
    assert run.info.run_name == "baseline/fold0" and run.data.tags["level"] == "fold"
    assert run.data.params["llamafactory.stage"] == "sft"


def test_a_fine_tune_job_that_fails_to_train_writes_no_run_reference(tmp_path):
    job = job_of(tmp_path, "deepspeed.json")

    def train(**settings) -> Path:
        assert settings["deepspeed_config"] == "deepspeed.json"
        raise RuntimeError("llamafactory-cli failed")

    with pytest.raises(RuntimeError, match="llamafactory-cli failed"):
        fine_tune_job(job, name="fold0", train=train, fold="0", level="fold")
    assert not Path(job.output.run).exists()
