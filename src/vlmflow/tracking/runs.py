"""MLflow layout: one experiment, one parent run per prompt variant, one nested child run per fold.

Training jobs run in parallel against one SQLite store; SQLite allows one writer at a time, so
every write of ours goes through ``retry_locked``, and the experiment is created once with an
absolute artifact location (a SQLite store without a server otherwise puts artifacts relative to
whichever process created the experiment).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import subprocess
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import mlflow
import yaml
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from vlmflow.runtime.outputs import write_text_atomically

log = logging.getLogger(__name__)
T = TypeVar("T")
# MLflow 3's UI opens an experiment on its GenAI pages unless the experiment says it trains models.
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}
# Set on any run the trainer opens by itself, naming the run it trains for (see training_environment).
TRAINED_FOR_TAG = "vlmflow.trained_for"


def retry_locked(call: Callable[[], T], attempts: int = 8) -> T:
    """Run an MLflow call, retrying with jittered backoff while SQLite says the database is locked."""
    for attempt in range(attempts):
        try:
            return call()
        except MlflowException as error:
            if "database is locked" not in str(error) or attempt == attempts - 1:
                raise
            delay = 0.2 * 2**attempt * (1 + random.random())
            log.warning("MLflow store is locked, retrying in %.1f s", delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | Path) -> str:
    """Return the experiment's id, creating it if needed, with its runs view saved (``save_runs_view``)."""
    experiment = retry_locked(lambda: client.get_experiment_by_name(name))
    experiment_id = experiment.experiment_id if experiment else create_experiment(client, name, artifact_root)
    save_runs_view(client, experiment_id)
    return experiment_id


def create_experiment(client: MlflowClient, name: str, artifact_root: str | Path) -> str:
    """Create the experiment with an absolute artifact location; return its id."""
    location = Path(artifact_root).resolve().as_uri()
    try:
        return retry_locked(lambda: client.create_experiment(name, artifact_location=location, tags=EXPERIMENT_KIND))
    except MlflowException:  # another job created it between our look-up and our create
        return retry_locked(lambda: client.get_experiment_by_name(name)).experiment_id


def config_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:12]


def git_commit(repo: str | Path = ".") -> str:
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        return result.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def start_variant_run(client: MlflowClient, experiment_id: str, variant: str, settings: dict) -> str:
    """Create the variant's parent run and return its id; its children are the fold fine-tunes."""
    tags = {
        "variant": variant,
        "config_hash": config_hash(settings),
        "git_commit": git_commit(),
        "level": "variant",
    }
    run = retry_locked(lambda: client.create_run(experiment_id, tags=tags, run_name=variant))
    retry_locked(lambda: client.log_batch(run.info.run_id, params=flatten_params(settings, "variant")))
    return run.info.run_id


def start_child_run(
    client: MlflowClient, experiment_id: str, parent_run_id: str, variant: str, name: str, **tags
) -> str:
    """Create a run nested under the variant's parent, named ``<variant>/<name>``; return its id.

    LLaMA-Factory's MLflow callback then logs training into it through MLFLOW_RUN_ID. A run of the same
    name still RUNNING under the same parent belongs to a job that was killed (Snakemake never runs one
    job twice at once): it is marked KILLED, so the UI does not show it as training forever.
    """
    run_name = f"{variant}/{name}"
    leftovers = retry_locked(
        lambda: client.search_runs(
            [experiment_id],
            f"tags.`mlflow.parentRunId` = '{parent_run_id}' and attributes.run_name = '{run_name}' "
            "and attributes.status = 'RUNNING'",
        )
    )
    for leftover in leftovers:
        retry_locked(lambda run_id=leftover.info.run_id: client.set_terminated(run_id, "KILLED"))
    tags = {"mlflow.parentRunId": parent_run_id, "variant": variant, **tags}
    run = retry_locked(lambda: client.create_run(experiment_id, tags=tags, run_name=run_name))
    return run.info.run_id


def start_fold_run(client: MlflowClient, experiment_id: str, parent_run_id: str, variant: str, fold: int) -> str:
    """The child run of one fold's fine-tune."""
    return start_child_run(client, experiment_id, parent_run_id, variant, f"fold{fold}", fold=str(fold), level="fold")


def child_run_id(path: str | Path) -> str:
    """The server run id a fine-tune's run reference names; one whose run still waits to be sent is said."""
    run_id = read_run(path)["run_id"]
    if run_id is None:
        raise ValueError(
            f"{path}: this fine-tune's MLflow run waits in the local store to be sent to the server: "
            "run `make sync-mlflow` once the server answers, then snakemake again"
        )
    return run_id


def training_environment(tracking_uri: str, experiment: str, run_id: str) -> dict[str, str]:
    """Environment for ``llamafactory-cli train`` so that ``report_to: mlflow`` logs into ``run_id``.

    The trainer's callback ends ``run_id`` when training ends; the evaluation LLaMA-Factory runs after
    it then lands in a new, randomly named run. MLFLOW_RUN_CONTEXT tags such a run with ``run_id`` so
    that ``log_training`` can move its metrics home.
    """
    return {
        "MLFLOW_TRACKING_URI": tracking_uri,
        "MLFLOW_EXPERIMENT_NAME": experiment,
        "MLFLOW_RUN_ID": run_id,
        "MLFLOW_RUN_CONTEXT": json.dumps({TRAINED_FOR_TAG: run_id}),
        "HF_MLFLOW_LOG_ARTIFACTS": "0",  # model weights stay in results/, not copied into the store
    }


def adopt_trainer_runs(client: MlflowClient, run_id: str) -> int:
    """Copy the metrics of runs the trainer opened for ``run_id`` into it and delete them; return how many.

    The UI then shows one run per fine-tune, named after its variant and fold, with the final evaluation.
    """
    found = retry_locked(
        lambda: client.search_runs(
            [client.get_run(run_id).info.experiment_id], filter_string=f"tags.`{TRAINED_FOR_TAG}` = '{run_id}'"
        )
    )
    for stray in found:
        history = [entry for key in stray.data.metrics for entry in client.get_metric_history(stray.info.run_id, key)]
        retry_locked(lambda history=history: client.log_batch(run_id, metrics=history))
        retry_locked(lambda stray=stray: client.delete_run(stray.info.run_id))
    return len(found)


def log_results(client: MlflowClient, run_id: str, metrics: dict[str, float], artifacts: list[str | Path]) -> None:
    """Log final metrics and artifact files to a run, and mark it finished."""
    entries = [mlflow.entities.Metric(key, float(value), int(time.time() * 1000), 0) for key, value in metrics.items()]
    retry_locked(lambda: client.log_batch(run_id, metrics=entries))
    for path in artifacts:
        if Path(path).exists():
            retry_locked(lambda path=path: client.log_artifact(run_id, os.fspath(path)))


def finish_run(client: MlflowClient, run_id: str) -> None:
    retry_locked(lambda: client.set_terminated(run_id, "FINISHED"))


def read_run(path: str | Path) -> dict:
    """A run reference written by ``write_run``: tracking URI, experiment name and id, run id (or null)."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_run(
    path: str | Path, tracking_uri: str, experiment: str, experiment_id: str, run_id: str | None, **extra
) -> None:
    """Write a run reference (``extra`` adds fields, e.g. why the configured server was not used)."""
    reference = {
        "tracking_uri": tracking_uri,
        "experiment": experiment,
        "experiment_id": experiment_id,
        "run_id": run_id,
        **extra,
    }
    write_text_atomically(path, json.dumps(reference, indent=2) + "\n")


def flatten_params(settings: dict, prefix: str) -> list:
    """MLflow params from a (possibly nested) dict, keys joined with dots under ``prefix``."""
    params = []
    for key, value in settings.items():
        if isinstance(value, dict):
            params += flatten_params(value, f"{prefix}.{key}")
        else:
            params.append(mlflow.entities.Param(f"{prefix}.{key}", str(value)[:6000]))
    return params


def log_training(client: MlflowClient, run_id: str, config_path: str | Path, model_dir: str | Path) -> None:
    """Attach a fine-tune's LLaMA-Factory YAML (as params and as a file), loss plot and trainer state."""
    adopt_trainer_runs(client, run_id)
    settings = yaml.safe_load(Path(config_path).read_text(encoding="utf-8"))
    retry_locked(lambda: client.log_batch(run_id, params=flatten_params(settings, "llamafactory")))
    model_dir = Path(model_dir)
    artifacts = [config_path, *sorted(model_dir.glob("training_*loss.png")), model_dir / "trainer_state.json"]
    log_results(client, run_id, {}, artifacts)


def log_variant_results(
    parent: dict,
    fold_runs: list[dict],
    metrics: dict,
    fold_metrics: list[dict],
    artifacts: list[str | Path],
    fold_artifacts: list[list[str | Path]],
) -> None:
    """Log each fold's held-out metrics and plots to its child run, the variant's to the parent; close the parent."""
    client = MlflowClient(parent["tracking_uri"])
    by_fold = {int(row["fold"]): row for row in fold_metrics}
    for fold, (run, files) in enumerate(zip(fold_runs, fold_artifacts, strict=True)):
        row = by_fold[fold]
        log_results(client, run["run_id"], {f"heldout_{k}": v for k, v in row.items() if k != "fold"}, files)
    log_results(client, parent["run_id"], metrics, artifacts)
    finish_run(client, parent["run_id"])


def share_variant_params(client: MlflowClient, parent_run_id: str, run_ids: list[str]) -> None:
    """Give each child run its variant's switches (the parent's ``variant.*`` params).

    Comparing two fold runs in the UI then shows what changed between them: the switches beside the
    LLaMA-Factory YAML. Logging a param again with the same value is allowed, so a rerun is harmless.
    """
    params = retry_locked(lambda: client.get_run(parent_run_id)).data.params
    switches = [mlflow.entities.Param(key, value) for key, value in params.items() if key.startswith("variant.")]
    for run_id in run_ids:
        retry_locked(lambda run_id=run_id: client.log_batch(run_id, params=switches))


def numeric_metrics(report: dict, prefix: str) -> dict[str, float]:
    """The top-level numbers of a JSON report as MLflow metrics under ``prefix``.

    Nested tables (per-class counts) stay in the report file, logged as an artifact: MLflow metric
    names refuse characters that labels carry, such as parentheses.
    """
    return {
        f"{prefix}.{key}": float(value)
        for key, value in report.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }


def log_summary_run(experiment: dict, metrics: dict[str, float], artifacts: list[str | Path]) -> str:
    """Log the ablation summary as its own run of the experiment (tagged level=summary); return its id.

    A new run each time the summary is rebuilt, so earlier summaries stay comparable in the UI.
    """
    client = MlflowClient(experiment["tracking_uri"])
    tags = {"level": "summary", "git_commit": git_commit()}
    run = retry_locked(lambda: client.create_run(experiment["experiment_id"], tags=tags, run_name="ablation summary"))
    log_results(client, run.info.run_id, metrics, artifacts)
    finish_run(client, run.info.run_id)
    return run.info.run_id


def record_summary_run(
    experiment_file: str | Path, run_file: str | Path, metrics: dict[str, float], artifacts: list[str | Path]
) -> str:
    """Log the ablation summary's run (``log_summary_run``) in the experiment whose reference ``experiment_file``
    holds, and write the run's reference to ``run_file``; return its id."""
    experiment = read_run(experiment_file)
    run_id = log_summary_run(experiment, metrics, artifacts)
    write_run(run_file, experiment["tracking_uri"], experiment["experiment"], experiment["experiment_id"], run_id)
    return run_id


# The runs table a reader wants first: one run per variant, best out-of-fold weighted F1 on top, its column shown.
VARIANT_RUNS = "tags.level = 'variant'"
RANKING_METRIC = "oof_weighted_f1"
RANKING_COLUMN = f"metrics.`{RANKING_METRIC}`"  # how MLflow's UI names a metric's column and sort key
# MLflow's UI (3.15 and later) keeps a saved view of the runs table in an experiment tag named
# ``mlflow.sharedViewState.<view id>`` and opens it from ``runs?viewStateShareKey=<view id>``; the view
# also appears in the table's Views menu. Its search facets and table state are the UI's own names.
RUNS_VIEW_ID = "vlmflow-variants"
RUNS_VIEW_NAME = "Variants by out-of-fold weighted F1"
RUNS_VIEW_STATE = {
    "searchFilter": VARIANT_RUNS,
    "orderByKey": RANKING_COLUMN,
    "orderByAsc": False,
    "selectedColumns": [RANKING_COLUMN],  # in place of the UI's default Source, Models and Dataset columns
    # Next to the run names, wide enough for its whole name (the UI sizes only columns it is given an order of).
    "columnOrder": [RANKING_COLUMN],
    "columnWidths": {RANKING_COLUMN: 160},
}


def runs_view_tag() -> tuple[str, dict]:
    """The experiment tag's key and the view it holds: the envelope the UI writes when a person clicks
    Views, then Save as new view (name, times in ms, and the view's state as a JSON string)."""
    now = int(time.time() * 1000)
    view = {"name": RUNS_VIEW_NAME, "createdAt": now, "updatedAt": now, "state": json.dumps(RUNS_VIEW_STATE)}
    return f"mlflow.sharedViewState.{RUNS_VIEW_ID}", view


def save_runs_view(client: MlflowClient, experiment_id: str) -> None:
    """Save the view ``runs_table_url`` opens in the experiment, unless it is there already; one changed in
    the UI is put back, so that the address keeps its promise (the UI's Save as new view keeps a person's own)."""
    key, view = runs_view_tag()
    saved = retry_locked(lambda: client.get_experiment(experiment_id)).tags.get(key)
    try:
        if saved is not None and json.loads(saved)["state"] == view["state"]:
            return
    except (ValueError, KeyError, TypeError):
        pass  # not a view we can read: save ours over it
    retry_locked(lambda: client.set_experiment_tag(experiment_id, key, json.dumps(view)))


def runs_table_url(ui: str, experiment_id: str) -> str:
    """The MLflow UI's runs table of the experiment in its saved view (``save_runs_view``): the variant runs,
    best ``RANKING_METRIC`` first, with its column shown. This is the address `make demo` prints (MLflow 3
    otherwise opens an experiment on its overview page, and shows no metric column until one is picked).

    The UI ignores a saved view when the address also carries a filter or sort, so this one carries neither.
    """
    query = urllib.parse.urlencode({"viewStateShareKey": RUNS_VIEW_ID})
    return f"{ui.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


if __name__ == "__main__":  # python -m vlmflow.tracking.runs EXPERIMENT_JSON [UI]: save the view, print its address
    import sys

    ui = sys.argv[2] if len(sys.argv) > 2 else "http://127.0.0.1:5000"
    experiment = read_run(sys.argv[1])
    save_runs_view(MlflowClient(experiment["tracking_uri"]), experiment["experiment_id"])  # stores made before it
    print(runs_table_url(ui, experiment["experiment_id"]))
