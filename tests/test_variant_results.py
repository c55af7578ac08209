import json
import re
from dataclasses import fields
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from vlmflow.tracking.offline import absolute_tracking_uri
from vlmflow.tracking.runs import (
    ensure_experiment,
    read_run,
    start_child_run,
    start_fold_run,
    start_variant_run,
    write_run,
)
from vlmflow.tracking.variant_results import VariantResultFiles, fit_metrics, log_variant_files, variant_metrics


def test_the_parent_gets_each_reports_numbers_under_its_prefix():
    metrics = variant_metrics(
        {"oof_weighted_f1": 0.5},
        {"correction": {"flagged": 3, "per_class": {"a": 1}}, "pseudo": {"kept": 2, "ok": True}},
        [{"distinct_share": 0.9}],
        {"retrain_none": {"test_weighted_f1": 0.6}},
        {"retrain_none": {"accuracy": 0.25}},
    )
    assert metrics == {
        "oof_weighted_f1": 0.5,
        "correction.flagged": 3.0,
        "pseudo.kept": 2.0,
        "reason_diversity.distinct_share": 0.9,
        "final.retrain_none.test_weighted_f1": 0.6,
        "general.retrain_none.accuracy": 0.25,
    }


def test_only_the_first_seeds_fit_gets_its_general_ability():
    assert fit_metrics({"test_weighted_f1": 0.6}, {"pseudo": 4}, {"accuracy": 0.5}) == {
        "final.test_weighted_f1": 0.6,
        "training_set.pseudo": 4.0,
        "general.accuracy": 0.5,
    }
    assert fit_metrics({"test_weighted_f1": 0.6}, {"pseudo": 4}, None) == {
        "final.test_weighted_f1": 0.6,
        "training_set.pseudo": 4.0,
    }


def write(path, contents) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(contents if isinstance(contents, str) else json.dumps(contents), encoding="utf-8")
    return path.as_posix()


def test_a_variant_is_logged_to_its_parent_its_folds_and_its_fits(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # results/... relative, as Snakemake gives the paths
    uri = absolute_tracking_uri("sqlite:///mlflow.db", tmp_path)
    client = MlflowClient(uri)
    experiment_id = ensure_experiment(client, "demo", tmp_path / "artifacts")
    parent = start_variant_run(client, experiment_id, "baseline", {"ocr": False})
    root = Path("results/baseline")
    runs = {}
    for name, run_id in {
        "fold0": start_fold_run(client, experiment_id, parent, "baseline", 0),
        "fold1": start_fold_run(client, experiment_id, parent, "baseline", 1),
        "retrain/none/seed1/round0": start_child_run(client, experiment_id, parent, "baseline", "seed1"),
        "retrain/none/seed2/round0": start_child_run(client, experiment_id, parent, "baseline", "seed2"),
    }.items():
        runs[name] = f"results/baseline/{name}/mlflow_run.json"
        (root / name).mkdir(parents=True)
        write_run(runs[name], uri, "demo", experiment_id, run_id)
    write_run("results/baseline/mlflow_run.json", uri, "demo", experiment_id, parent)
    plain = {name: write(root / name, "x\n") for name in ("report.csv", "matrix.png", "corrections.csv")}
    fits = [f"retrain/none/seed{seed}/round0" for seed in (1, 2)]
    files = VariantResultFiles(
        parent_run="results/baseline/mlflow_run.json",
        fold_runs=[runs["fold0"], runs["fold1"]],
        metrics=write(root / "metrics.json", {"oof_weighted_f1": 0.5}),
        fold_metrics=write(root / "fold_metrics.csv", "fold,weighted_f1\n0,0.4\n1,0.6\n"),
        report=plain["report.csv"],
        confusion_matrix=plain["matrix.png"],
        fold_reports=[plain["report.csv"]] * 2,
        fold_matrices=[plain["matrix.png"]] * 2,
        correction_scores=write(root / "correction_scores.json", {"flagged": 3}),
        corrections=plain["corrections.csv"],
        review=plain["report.csv"],
        pseudo_report=write(root / "pseudo_labels.json", {"kept": 2}),
        pseudo_labels=plain["report.csv"],
        decisions=plain["report.csv"],
        reason_diversity=[],
        submission=plain["report.csv"],
        submission_metrics=write(root / "submission_metrics.json", {"test_weighted_f1": 0.7}),
        final_metrics=[write(root / "retrain/none/test_metrics.json", {"test_weighted_f1": 0.65})],
        fit_metrics=[write(root / fit / "test_metrics.json", {"test_weighted_f1": 0.6}) for fit in fits],
        retrained_runs=[runs[fit] for fit in fits],
        training_sets=[write(root / fit / "training_set.json", {"pseudo": 4}) for fit in fits],
        general_metrics=[write(root / fits[0] / "general_metrics.json", {"accuracy": 0.25})],
    )
    log_variant_files(files, 1, "results/baseline/mlflow_logged.json")

    logged = json.loads((root / "mlflow_logged.json").read_text(encoding="utf-8"))
    assert logged["run_id"] == parent
    assert logged["metrics"]["final.retrain_none.test_weighted_f1"] == 0.65
    assert logged["metrics"]["general.retrain_none.accuracy"] == 0.25
    assert client.get_run(parent).info.status == "FINISHED"
    assert client.get_run(parent).data.metrics["submission.test_weighted_f1"] == 0.7
    fold1 = client.get_run(read_run(runs["fold1"])["run_id"])
    assert fold1.data.metrics == {"heldout_weighted_f1": 0.6} and fold1.data.params == {"variant.ocr": "False"}
    first, second = (client.get_run(read_run(runs[fit])["run_id"]).data.metrics for fit in fits)
    assert first == {"final.test_weighted_f1": 0.6, "training_set.pseudo": 4.0, "general.accuracy": 0.25}
    assert second == {"final.test_weighted_f1": 0.6, "training_set.pseudo": 4.0}


def test_fold_files_that_do_not_pair_up_are_refused():
    files = VariantResultFiles(*[""] * 6, ["a", "b"], ["a"], *[""] * 6, [], "", "", [], [], [], [], [])
    with pytest.raises(ValueError):
        files.fold_artifacts()


def test_the_files_are_named_as_the_rules_inputs():
    """The script hands the rule's inputs over by name: a name the rule adds or drops must change the fields."""
    rules = (Path(__file__).parents[1] / "workflow/rules/evaluate.smk").read_text(encoding="utf-8")
    body = re.search(r"rule log_variant_to_mlflow:\n    input:\n((?:        .*\n)+)", rules)[1]
    assert re.findall(r"^        (\w+)=", body, re.MULTILINE) == [field.name for field in fields(VariantResultFiles)]
    named = {field.name: f"results/baseline/{field.name}" for field in fields(VariantResultFiles)}
    assert VariantResultFiles.named(named).submission == "results/baseline/submission"
    with pytest.raises(TypeError, match="unexpected keyword argument 'renamed'"):
        VariantResultFiles.named(named | {"renamed": "results/baseline/renamed"})
