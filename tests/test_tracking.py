from mlflow.tracking import MlflowClient

from vlmflow.tracking import (
    absolute_tracking_uri,
    ensure_experiment,
    numeric_metrics,
    start_fold_run,
    start_variant_run,
)


def test_relative_sqlite_uri_becomes_absolute_under_the_working_directory(tmp_path):
    uri = absolute_tracking_uri("sqlite:///results/mlflow.db", tmp_path)
    assert uri == f"sqlite:///{tmp_path / 'results' / 'mlflow.db'}"
    assert absolute_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_variant_and_fold_runs_nest_with_an_absolute_artifact_location(tmp_path):
    client = MlflowClient(absolute_tracking_uri("sqlite:///mlflow.db", tmp_path))
    experiment_id = ensure_experiment(client, "demo", tmp_path / "artifacts")
    assert ensure_experiment(client, "demo", tmp_path / "elsewhere") == experiment_id  # created once
    assert client.get_experiment(experiment_id).artifact_location == (tmp_path / "artifacts").as_uri()
    parent = start_variant_run(client, experiment_id, "baseline_ocr", {"ocr": True, "ocr_max_chars": 300})
    child = start_fold_run(client, experiment_id, parent, "baseline_ocr", 3)
    parent_run, child_run = client.get_run(parent), client.get_run(child)
    assert parent_run.data.params["variant.ocr"] == "True" and len(parent_run.data.tags["config_hash"]) == 12
    assert child_run.data.tags["mlflow.parentRunId"] == parent and child_run.info.run_name == "baseline_ocr/fold3"


def test_numeric_metrics_keep_top_level_numbers_only():
    report = {"kept": 4, "tau": 0.9, "method": "x", "ok": True, "kept_per_class": {"实物拍摄(含售后)": 2}}
    assert numeric_metrics(report, "pseudo") == {"pseudo.kept": 4.0, "pseudo.tau": 0.9}
