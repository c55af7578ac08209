import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

from vlmflow.tracking.offline import absolute_tracking_uri
from vlmflow.tracking.runs import (
    adopt_trainer_runs,
    ensure_experiment,
    numeric_metrics,
    share_variant_params,
    start_fold_run,
    start_variant_run,
    training_environment,
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
    # MLflow 3's UI opens it on its training runs, not on its GenAI pages.
    assert client.get_experiment(experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    parent = start_variant_run(client, experiment_id, "baseline_ocr", {"ocr": True, "ocr_max_chars": 300})
    child = start_fold_run(client, experiment_id, parent, "baseline_ocr", 3)
    parent_run, child_run = client.get_run(parent), client.get_run(child)
    assert parent_run.data.params["variant.ocr"] == "True" and len(parent_run.data.tags["config_hash"]) == 12
    assert child_run.data.tags["mlflow.parentRunId"] == parent and child_run.info.run_name == "baseline_ocr/fold3"


def test_a_killed_jobs_run_left_running_is_marked_killed_when_the_job_runs_again(tmp_path):
    client = MlflowClient(absolute_tracking_uri("sqlite:///mlflow.db", tmp_path))
    experiment_id = ensure_experiment(client, "demo", tmp_path / "artifacts")
    parent = start_variant_run(client, experiment_id, "baseline", {})
    other_parent = start_variant_run(client, experiment_id, "baseline", {})  # another run of the workflow
    killed = start_fold_run(client, experiment_id, parent, "baseline", 0)
    other_fold = start_fold_run(client, experiment_id, parent, "baseline", 1)
    elsewhere = start_fold_run(client, experiment_id, other_parent, "baseline", 0)
    rerun = start_fold_run(client, experiment_id, parent, "baseline", 0)
    assert client.get_run(killed).info.status == "KILLED"
    assert {client.get_run(run).info.status for run in (other_fold, elsewhere, rerun)} == {"RUNNING"}


def test_numeric_metrics_keep_top_level_numbers_only():
    report = {"kept": 4, "tau": 0.9, "method": "x", "ok": True, "kept_per_class": {"实物拍摄(含售后)": 2}}
    assert numeric_metrics(report, "pseudo") == {"pseudo.kept": 4.0, "pseudo.tau": 0.9}


# What the trainer's MLflow callback does: resume the fold run from MLFLOW_RUN_ID, end it when training ends,
# then log the evaluation that follows training, which opens a new run.
TRAINER = """
import mlflow
mlflow.start_run()
mlflow.log_metric("loss", 2.0, step=1)
mlflow.end_run()
mlflow.log_metric("eval_loss", 0.5, step=4)
"""


def test_runs_the_trainer_opens_after_training_are_merged_into_the_fold_run(tmp_path):
    uri = absolute_tracking_uri("sqlite:///mlflow.db", tmp_path)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "demo", tmp_path / "artifacts")
    parent = start_variant_run(client, experiment_id, "baseline", {"ocr": False})
    fold = start_fold_run(client, experiment_id, parent, "baseline", 0)
    environment = {**os.environ, **training_environment(uri, "demo", fold)}
    subprocess.run([sys.executable, "-c", TRAINER], env=environment, check=True, capture_output=True)
    assert len(client.search_runs([experiment_id])) == 3  # the trainer's own run, randomly named

    assert adopt_trainer_runs(client, fold) == 1
    runs = client.search_runs([experiment_id])
    assert sorted(run.info.run_name for run in runs) == ["baseline", "baseline/fold0"]
    assert [(m.step, m.value) for m in client.get_metric_history(fold, "eval_loss")] == [(4, 0.5)]
    assert [(m.step, m.value) for m in client.get_metric_history(fold, "loss")] == [(1, 2.0)]
    assert adopt_trainer_runs(client, fold) == 0


def test_child_runs_get_their_variants_switches_and_a_rerun_is_harmless(tmp_path):
    client = MlflowClient(absolute_tracking_uri("sqlite:///mlflow.db", tmp_path))
    experiment_id = ensure_experiment(client, "demo", tmp_path / "artifacts")
    parent = start_variant_run(client, experiment_id, "baseline_ocr", {"ocr": True, "ocr_max_chars": 300})
    folds = [start_fold_run(client, experiment_id, parent, "baseline_ocr", fold) for fold in (0, 1)]
    share_variant_params(client, parent, folds)
    share_variant_params(client, parent, folds)
    for fold in folds:
        assert client.get_run(fold).data.params == {"variant.ocr": "True", "variant.ocr_max_chars": "300"}


def test_the_experiment_saves_the_runs_view_that_the_printed_address_opens(tmp_path):
    import json
    import time
    import urllib.parse

    from vlmflow.tracking.runs import runs_table_url

    client = MlflowClient(absolute_tracking_uri("sqlite:///mlflow.db", tmp_path))
    experiment_id = ensure_experiment(client, "demo", tmp_path / "artifacts")
    url = runs_table_url("http://127.0.0.1:5000/", experiment_id)
    base, query = url.split("?")
    assert base == f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs"
    # The address names a view saved in the experiment, as MLflow's UI saves one (Views, Save as new view).
    assert urllib.parse.parse_qs(query) == {"viewStateShareKey": ["vlmflow-variants"]}
    saved = client.get_experiment(experiment_id).tags["mlflow.sharedViewState.vlmflow-variants"]
    view = json.loads(saved)
    assert view["name"] == "Variants by out-of-fold weighted F1" and view["createdAt"] == view["updatedAt"] > 0
    state = json.loads(view["state"])
    assert state["searchFilter"] == "tags.level = 'variant'"
    assert (state["orderByKey"], state["orderByAsc"]) == ("metrics.`oof_weighted_f1`", False)
    assert state["selectedColumns"] == ["metrics.`oof_weighted_f1`"]  # the metric's column, shown
    time.sleep(0.01)  # a view saved again would have a later time
    ensure_experiment(client, "demo", tmp_path / "artifacts")
    assert client.get_experiment(experiment_id).tags["mlflow.sharedViewState.vlmflow-variants"] == saved


def test_printing_the_address_saves_the_view_in_a_store_made_before_it(tmp_path):
    from vlmflow.tracking.runs import runs_table_url, write_run

    uri = absolute_tracking_uri("sqlite:///mlflow.db", tmp_path)
    experiment_id = MlflowClient(uri).create_experiment("vlmflow")  # an older run's experiment: no view
    experiment = tmp_path / "mlflow_experiment.json"  # what make demo reads the experiment from
    write_run(experiment, uri, "vlmflow", experiment_id, None)
    printed = subprocess.run(
        [sys.executable, "-m", "vlmflow.tracking.runs", str(experiment)], capture_output=True, text=True, check=True
    )
    assert printed.stdout.strip() == runs_table_url("http://127.0.0.1:5000", experiment_id)  # the default UI
    assert "mlflow.sharedViewState.vlmflow-variants" in MlflowClient(uri).get_experiment(experiment_id).tags
