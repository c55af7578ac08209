"""Rule-level and end-to-end runs of the workflow on a reduced demo, plus the lint gates."""

import contextlib
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from vlmflow.data.labels import load_labels
from vlmflow.runtime import plan

from conftest import BIN, REPO, run_snakemake, small_demo_config, without_slurm_controller
from helpers.variants import make_variant
from helpers.weights import changed_tensors, text_layers

LABEL_NAMES = [label.name for label in load_labels(REPO / "config" / "labels.yaml")]


def test_dry_run_of_the_demo_config_plans_every_stage(tmp_path):
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    config["labels"] = str(REPO / config["labels"])  # the scratch folder has no config/
    result = run_snakemake(tmp_path, config, "-n")
    for rule in ("make_demo_dataset", "build_tiny_model", "ingest_records", "find_duplicates", "assign_folds"):
        assert rule in result.stdout


def planned_inputs(dry_run_output: str, rule: str) -> dict[str, str]:
    """The input line of every job of ``rule`` a `snakemake -n` run plans, by its wildcards as printed."""
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", dry_run_output)
    return {
        re.search(r"wildcards: (.*)", block)[1]: re.search(r"input: (.*)", block)[1]
        for block in blocks
        if f"rule {rule}:" in block
    }


def test_every_final_model_is_compared_with_the_no_step_model_on_the_same_test_images(tmp_path):
    """The demo config retrains a no-step model (final.ablation has []) with two seeds: every other
    retrained fit's evaluation reads the no-step model's fit of the same seed, the averaged fold model's the
    first seed's, for the paired interval of their difference."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    config["labels"] = str(REPO / config["labels"])
    first, second = config["final"]["seeds"]
    dry_run = run_snakemake(tmp_path, config, "-n").stdout
    inputs = {
        re.search(r"final_model=([^,\n]+)", wildcards)[1]: listed
        for wildcards, listed in planned_inputs(dry_run, "evaluate_final_model").items()
        if "variant=baseline_ocr," in wildcards  # the variant demo.yaml's final.ablation_variants names
    }
    assert {f"retrain/none/seed{first}/round1", f"retrain/none/seed{second}/round1", "average_folds"} <= set(inputs)
    for final_model, listed in inputs.items():
        if final_model.startswith("retrain/none/"):
            assert listed.count("test_probs.parquet") == 1, listed  # itself only
        else:
            seed = re.search(r"seed(\d+)", final_model)[1] if "seed" in final_model else first
            assert listed.count("test_probs.parquet") == 2 and f"retrain/none/seed{seed}/round1/test_probs" in listed


def test_each_retrained_combination_is_fitted_once_per_seed_its_rounds_chained_within_the_seed(tmp_path):
    """final.seeds [42, 7]: one train_final job per (variant, combination, seed, round), round 2 learning the
    pseudo-labels of its own seed's round 1; one evaluation across seeds per combination pairing seeds with the
    no-step model's; the submission from the first seed's fit."""
    config = small_demo_config(tmp_path)
    config["final"] |= {"ablation": [[], ["correction"]], "seeds": [42, 7]}  # plus final.steps: correction, pseudo
    dry_run = run_snakemake(tmp_path, config, "-n").stdout
    fits = sorted(
        (wildcards["variant"], wildcards["steps"], wildcards["seed"], wildcards["round"])
        for rule, wildcards in planned_jobs(dry_run)
        if rule == "train_final"
    )
    expected = [
        (variant, steps, seed, round_)
        for variant in ("baseline", "baseline_ocr")
        for steps, rounds in (("none", 1), ("correction", 1), ("correction_pseudo", 2))
        for seed in ("42", "7")
        for round_ in map(str, range(1, rounds + 1))
    ]
    assert fits == sorted(expected) and len(fits) == 2 * (1 + 1 + 2) * 2
    training_sets = planned_inputs(dry_run, "build_final_training_set")
    for seed in ("42", "7"):
        second_round = training_sets[f"variant=baseline, steps=correction_pseudo, seed={seed}, round=2"]
        assert f"retrain/correction_pseudo/seed{seed}/round1/pseudo_labels.csv" in second_round
    across = planned_inputs(dry_run, "evaluate_across_seeds")
    assert set(across) == {
        f"variant={variant}, steps={steps}"
        for variant in ("baseline", "baseline_ocr")
        for steps in ("none", "correction", "correction_pseudo")
    }
    pairs = across["variant=baseline, steps=correction_pseudo"]
    for seed in ("42", "7"):
        assert f"correction_pseudo/seed{seed}/round2/test_probs.parquet" in pairs
        assert f"none/seed{seed}/round1/test_probs.parquet" in pairs
    assert across["variant=baseline, steps=none"].count("test_probs.parquet") == 2  # its own seeds only
    submission = planned_inputs(dry_run, "write_submission")["variant=baseline"]
    assert "retrain/correction_pseudo/seed42/round2/test_probs.parquet" in submission


@pytest.mark.parametrize("other_variants", ["fold_ensemble", "retrain"])
def test_a_variant_outside_final_ablation_variants_retrains_its_submission_model_once_or_not_at_all(
    tmp_path, other_variants
):
    """The demo config ablates baseline_ocr only, and the baseline submits its fold ensemble
    (final.other_variants fold_ensemble): it retrains nothing. With `retrain` it retrains final.steps'
    combination with the first seed and nothing else. Neither the summary nor its MLflow logging reads
    another fit of it."""
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    config["labels"] = str(REPO / config["labels"])
    assert config["final"]["ablation_variants"] == ["baseline_ocr"]
    assert config["final"]["other_variants"] == "fold_ensemble"
    config["final"]["other_variants"] = other_variants
    first, second = config["final"]["seeds"]
    dry_run = run_snakemake(tmp_path, config, "-n").stdout
    fits = sorted(
        (wildcards["variant"], wildcards["steps"], wildcards["seed"])
        for rule, wildcards in planned_jobs(dry_run)
        if rule == "train_final"
    )
    ablated = [
        ("baseline_ocr", steps, str(seed)) for steps in ("correction_pseudo", "none") for seed in (first, second)
    ]
    submission = planned_inputs(dry_run, "write_submission")["variant=baseline"]
    logged = planned_inputs(dry_run, "log_variant_to_mlflow")["variant=baseline"]
    if other_variants == "fold_ensemble":
        assert fits == sorted(ablated)
        assert "results/baseline/test_probs.parquet" in submission and "retrain" not in submission
        assert "baseline/retrain" not in logged
    else:
        assert fits == sorted([("baseline", "correction_pseudo", str(first)), *ablated])
        assert f"baseline/retrain/correction_pseudo/seed{first}/round1/test_probs.parquet" in submission
        assert "baseline/retrain/none" not in logged and f"seed{second}" not in logged
        assert "baseline/retrain/correction_pseudo/seed" in logged
    blocks = re.split(r"\n(?=(?:local)?rule \w+:)", dry_run)
    summary = next(block for block in blocks if "rule summarize_ablation:" in block)  # a job without wildcards
    assert "baseline/retrain/none" not in summary and "baseline_ocr/retrain/none" in summary


def test_final_ablation_variants_must_name_variants(tmp_path):
    config = small_demo_config(tmp_path)
    config["final"] |= {"ablation_variants": ["baseline", "typo"]}
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert "final.ablation_variants names ['typo'], which are not variants" in result.stdout + result.stderr


# Jobs about every variant at once, which a change to one variant reruns too.
ACROSS_VARIANTS = {"summarize_ablation", "write_summary_page", "write_run_config"}


@pytest.mark.slow
def test_ingestion_keeps_every_generated_record_with_its_given_label(demo_run):
    """The end-to-end run (tests/conftest.py demo_run) is checked stage by stage below; this is ingestion."""
    workdir = demo_run.workdir
    truth = pd.read_csv(workdir / "resources/demo/truth.csv")
    # Ingestion: every generated record arrives, the labels as given (noisy), none for test.
    for split, size in (("train", 40), ("test", 12)):
        counts = json.loads((workdir / f"results/data/{split}_counts.json").read_text())
        assert counts["records_in"] == size == counts["records_out"] + counts["rejected"]
    train = pd.read_parquet(workdir / "results/data/train.parquet")
    assert list(train["label"]) == list(truth.set_index("id").loc[train["id"], "given_label"])


@pytest.mark.slow
def test_only_the_ocr_variants_prompts_carry_ocr_text(demo_run):
    """Same records in every variant; OCR text only where a variant asks for it."""
    workdir = demo_run.workdir
    # Prompts: the OCR variant carries OCR text, the baseline does not; same records in both.
    baseline = pd.read_parquet(workdir / "results/baseline/prompts.parquet")
    with_ocr = pd.read_parquet(workdir / "results/baseline_ocr/prompts.parquet")
    assert list(baseline["id"]) == list(with_ocr["id"]) and len(baseline) == 52
    assert with_ocr["prompt"].str.contains("图片中的OCR文字:").all()
    assert not baseline["prompt"].str.contains("OCR").any()


@pytest.mark.slow
def test_every_held_out_and_test_record_gets_one_probability_per_label(demo_run):
    """Scoring and the variant metrics."""
    workdir = demo_run.workdir
    train = pd.read_parquet(workdir / "results/data/train.parquet")
    # Scoring: one probability per label per held-out record, summing to 1; every train record once.
    for variant in ("baseline", "baseline_ocr"):
        oof = pd.read_parquet(workdir / f"results/{variant}/oof_probs.parquet")
        probabilities = oof.filter(like="p::")
        assert probabilities.shape[1] == 25 and np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
        assert sorted(oof["id"]) == sorted(train["id"])
        test = pd.read_parquet(workdir / f"results/{variant}/test_probs.parquet")
        assert len(test) == 12
        metrics = json.loads((workdir / f"results/{variant}/metrics.json").read_text())
        assert 0.0 <= metrics["oof_weighted_f1"] <= 1.0 and metrics["test_n"] == 12
        assert (workdir / f"results/{variant}/fold0/model/training_loss.png").exists()


@pytest.mark.slow
def test_a_full_fine_tune_trains_every_decoder_layer_and_the_vision_tower(demo_run):
    """train.finetuning_type full (the default), from the base the fold fine-tune names."""
    fold = demo_run.workdir / "results/baseline/fold0"
    base = Path(yaml.safe_load((fold / "llamafactory.yaml").read_text(encoding="utf-8"))["model_name_or_path"])
    layers = json.loads((base / "config.json").read_text(encoding="utf-8"))["text_config"]["num_hidden_layers"]
    changed = changed_tensors(base, fold / "model")
    assert text_layers(changed) == set(range(layers))
    assert any("visual" in name for name in changed) and any("embed_tokens" in name for name in changed)


@pytest.mark.slow
def test_sharded_test_scores_equal_unsharded_scoring(demo_run):
    """score.shards 2 (.test/config_small.yaml): the merged table is what one job scoring every test
    record gives."""
    from vlmflow.model.encoding import score_table
    from vlmflow.model.scoring import load_scorer

    workdir = demo_run.workdir
    fold = workdir / "results/baseline_ocr/fold1"
    assert len(list((fold / "test_shards").glob("*.parquet"))) == 2
    merged = pd.read_parquet(fold / "test_probs.parquet")
    prompts = pd.read_parquet(workdir / "results/baseline_ocr/prompts.parquet")
    variant = make_variant(**next(v for v in demo_run.config["variants"] if v["name"] == "baseline_ocr"))
    with contextlib.chdir(workdir):  # image paths are relative to the run
        scorer = load_scorer(fold / "model", num_threads=1)
        whole = score_table(scorer, prompts[prompts["split"] == "test"], LABEL_NAMES, variant)
    assert list(merged["id"]) == list(whole["id"]) and len(merged) == 12
    probabilities = merged.filter(like="p::").to_numpy()
    assert np.abs(probabilities - whole.filter(like="p::").to_numpy()).max() < 1e-6
    assert list(merged["predicted"]) == list(whole["predicted"])


@pytest.mark.slow
def test_the_vllm_backend_scores_folds_as_the_transformers_backend_does(demo_run, tmp_path):
    """score.backend vllm through score_fold, in the venv `make install-vllm` makes (.venv-vllm): a label-first
    variant (baseline) and a reason-first one (taught) give the transformers backend's tables."""
    vllm_python = REPO / ".venv-vllm" / "bin" / "python"
    assert vllm_python.is_file(), "no .venv-vllm: run `make install-vllm` (make test does)"
    workdir = tmp_path / "vllm"
    shutil.copytree(demo_run.workdir, workdir, symlinks=True)  # the fold models and Snakemake's records
    config = copy.deepcopy(demo_run.config)
    config["score"] = {**config.get("score", {}), "backend": "vllm"}  # a params change: score_fold reruns
    tables = [f"results/{variant}/fold0/{table}" for variant in ("baseline", "taught") for table in SCORED]
    run_snakemake(workdir, config, "--cores", "2", *tables)
    for table in tables:
        log = (workdir / "logs/score" / Path(table).parts[1] / "fold0.log").read_text(encoding="utf-8")
        assert "vLLM" in log, f"{table} was not scored by vLLM:\n{log[-2000:]}"
        by_vllm, by_transformers = pd.read_parquet(workdir / table), pd.read_parquet(demo_run.workdir / table)
        assert list(by_vllm["id"]) == list(by_transformers["id"])
        difference = by_vllm.filter(like="p::").to_numpy() - by_transformers.filter(like="p::").to_numpy()
        assert np.abs(difference).max() < 1e-4, table
        assert list(by_vllm["predicted"]) == list(by_transformers["predicted"])
        assert list(by_vllm["generated"]) == list(by_transformers["generated"]), "reasons differ"
    reasons = pd.read_parquet(workdir / tables[2])["generated"]
    assert (reasons.str.len() > 0).mean() > 0.5, "the reason-first variant generated reasons to compare"


# What score_fold writes: the held-out records' table and the first test shard's.
SCORED = ("oof_probs.parquet", "test_shards/0.parquet")


@pytest.mark.slow
def test_the_ablation_summary_compares_every_variant(demo_run):
    """results/summary.{md,csv,png}."""
    workdir = demo_run.workdir
    summary = (workdir / "results/summary.md").read_text(encoding="utf-8")
    assert "baseline_ocr" in summary and "out-of-fold weighted F1" in summary
    assert "test wF1: retrain, correction + pseudo" in summary and "test wF1: averaged folds" in summary
    table = pd.read_csv(workdir / "results/summary.csv").set_index("variant")
    assert list(table.index) == ["baseline", "baseline_ocr", "taught"]
    retrained = demo_run.config["final"]["ablation_variants"]  # the OCR variant submits its fold ensemble
    assert table.loc[retrained, "test_weighted_f1.retrain_correction_pseudo"].between(0, 1).all()
    assert table.loc["baseline_ocr", "submitted"] == "fold_ensemble"
    assert pd.isna(table.loc["baseline_ocr", "test_weighted_f1.retrain_correction_pseudo"])
    assert table["test_weighted_f1.average_folds"].between(0, 1).all()
    # General ability kept: each final model's accuracy on the held-out general records, and what mixed them in.
    assert "general acc: averaged folds" in summary and "the 40 held-out general records" in summary
    assert "trained with general data mixed in (general records in each variant's fit): retrain, correction" in summary
    assert table.loc[retrained, "general_accuracy.retrain_correction_pseudo"].between(0, 1).all()
    assert (workdir / "results/summary.png").stat().st_size > 10_000


@pytest.mark.slow
def test_mlflow_holds_a_run_per_variant_fold_and_final_model(demo_run):
    """The MLflow store of the run."""
    workdir = demo_run.workdir
    # A parent run per variant, a nested run per fold with its loss curve and metrics.
    client = MlflowClient(f"sqlite:///{workdir / 'results/mlflow.db'}")
    experiment = client.get_experiment_by_name("vlmflow")
    runs = client.search_runs([experiment.experiment_id])
    parents = {run.data.tags["variant"]: run for run in runs if run.data.tags.get("level") == "variant"}
    assert set(parents) == {"baseline", "baseline_ocr", "taught"}
    # Every run is one of ours (the trainer's own post-training evaluation runs were merged into theirs),
    # and the UI opens the experiment on its training runs.
    assert {run.data.tags.get("level") for run in runs} == {"variant", "fold", "final", "summary"}
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    for parent in parents.values():
        assert parent.info.status == "FINISHED" and "oof_weighted_f1" in parent.data.metrics
        assert {"correction.flagged", "pseudo.kept", "submission.test_weighted_f1"} <= set(parent.data.metrics)
        children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        folds = [run for run in children if run.data.tags.get("level") == "fold"]
        assert sorted(run.data.tags["fold"] for run in folds) == ["0", "1"]
        for child in folds:
            assert len(client.get_metric_history(child.info.run_id, "loss")) >= 1
            assert "heldout_weighted_f1" in child.data.metrics
            assert child.data.params["llamafactory.template"] == "qwen2_vl"
            assert child.data.params["variant.ocr"] == parent.data.params["variant.ocr"]  # comparable runs
            artifacts = {item.path for item in client.list_artifacts(child.info.run_id)}
            assert {
                "llamafactory.yaml",
                "training_loss.png",
                "confusion_matrix.png",
                "per_class_report.csv",
            } <= artifacts
        assert "general.average_folds.accuracy" in parent.data.metrics
        retrained = {run.info.run_name: run for run in children if run.data.tags.get("level") == "final"}
        variant = parent.data.tags["variant"]
        if variant not in demo_run.config["final"]["ablation_variants"]:  # it submits its fold ensemble
            assert not retrained and not any(name.startswith("final.retrain") for name in parent.data.metrics)
            continue
        assert set(retrained) == {f"{variant}/retrain/correction_pseudo/seed42/round{n}" for n in (1, 2)}
        final_run = retrained[f"{variant}/retrain/correction_pseudo/seed42/round2"]
        assert "final.test_weighted_f1" in final_run.data.metrics and "training_set.pseudo" in final_run.data.metrics
        assert "general.accuracy" in final_run.data.metrics  # on the held-out general records
        assert len(client.get_metric_history(final_run.info.run_id, "loss")) >= 1
        assert "final.retrain_correction_pseudo.test_weighted_f1" in parent.data.metrics


@pytest.mark.slow
def test_label_correction_pseudo_labels_and_the_submission_come_from_the_fold_models(demo_run):
    """The second half of the recipe."""
    workdir = demo_run.workdir
    # The second half of the recipe: corrections with a review page, pseudo-labels, a submission.
    corrections = pd.read_csv(workdir / "results/baseline/label_corrections.csv")
    assert list(corrections.columns) == ["id", "given", "proposed", "confidence", "method"]
    assert (corrections["given"] != corrections["proposed"]).all()
    assert len(corrections) == json.loads((workdir / "results/baseline/correction_scores.json").read_text())["flagged"]
    assert (workdir / "results/baseline/label_review.html").read_text(encoding="utf-8").count("<img") == len(
        corrections
    )
    pseudo = json.loads((workdir / "results/baseline/pseudo_labels.json").read_text())
    assert (
        pseudo["candidates"]
        == 12
        == sum(pseudo[key] for key in ("kept", "rejected_by_tau", "rejected_by_agreement", "dropped_by_cap"))
    )
    submission_bytes = (workdir / "results/baseline/submission.csv").read_bytes()
    assert submission_bytes.startswith(b"\xef\xbb\xbf")  # utf-8-sig, as the competition reads it
    final = json.loads((workdir / "results/baseline/submission_metrics.json").read_text())
    assert final["strategy"] == "retrain" and final["n"] == 12 and 0 <= final["test_weighted_f1"] <= 1
    retrained = json.loads(
        (workdir / "results/baseline/retrain/correction_pseudo/seed42/round2/test_metrics.json").read_text()
    )
    assert retrained["test_weighted_f1"] == final["test_weighted_f1"]  # the submission is round 2's model
    assert (workdir / "results/baseline/average_folds/model/model.safetensors").exists()


@pytest.mark.slow
def test_retraining_uses_corrected_labels_two_pseudo_label_rounds_balancing_and_general_data(demo_run):
    """The retrained final models of the baseline."""
    workdir = demo_run.workdir
    # Retraining: corrected labels, two pseudo-label rounds (round 2 learns round 1's), balanced, general data.
    round_dir = workdir / "results/baseline/retrain/correction_pseudo/seed42"  # .test/config_small.yaml: one seed
    corrected = pd.read_parquet(workdir / "results/baseline/train_corrected.parquet").set_index("id")["label"]
    for round_, pseudo_file in (
        (1, workdir / "results/baseline/pseudo_labels.csv"),
        (2, round_dir / "round1/pseudo_labels.csv"),
    ):
        report = json.loads((round_dir / f"round{round_}/training_set.json").read_text())
        pseudo_ids = set(pd.read_csv(pseudo_file)["id"])
        assert report["given_or_corrected"] == 40 and report["pseudo"] == len(pseudo_ids) > 0
        assert min(report["per_class_after"].values()) >= 3  # class_floor
        assert report["general_records"] == round(0.2 * report["classification_records"]) > 0
        prompts = pd.read_parquet(round_dir / f"round{round_}/train_prompts.parquet")
        assert set(prompts.loc[prompts["source"] == "pseudo", "id"]) == pseudo_ids
        given = prompts[prompts["source"] == "train"].drop_duplicates("id").set_index("id")["target"]
        assert (given == corrected.loc[given.index]).all()  # baseline targets are the corrected labels
        dataset = json.loads(
            (round_dir / f"round{round_}/dataset/correction_pseudo_round{round_}_train.json").read_text()
        )
        assert sum("images" not in record for record in dataset) == report["general_records"]


@pytest.mark.slow
def test_final_fits_train_on_the_prompts_the_scorer_reads(demo_run):
    """The final fit sees the prompts the fold models saw (the teacher's descriptions included)."""
    workdir = demo_run.workdir
    for variant in demo_run.config["final"]["ablation_variants"]:
        final_prompts = pd.read_parquet(
            workdir / f"results/{variant}/retrain/correction_pseudo/seed42/round1/train_prompts.parquet"
        )
        scored = pd.read_parquet(workdir / f"results/{variant}/prompts.parquet").set_index("id")["prompt"]
        assert (final_prompts["prompt"] == final_prompts["id"].map(scored)).all()


@pytest.mark.slow
def test_the_submission_names_every_test_record_with_a_known_label(demo_run):
    """The competition format."""
    workdir = demo_run.workdir
    truth = pd.read_csv(workdir / "resources/demo/truth.csv")
    submission = pd.read_csv(workdir / "results/baseline/submission.csv", encoding="utf-8-sig")
    assert list(submission.columns) == ["id", "predict"]
    assert sorted(submission["id"]) == sorted(truth.loc[truth["split"] == "test", "id"])
    assert submission["predict"].isin([label.name for label in load_labels(REPO / "config/labels.yaml")]).all()


@pytest.mark.slow
def test_the_teachers_text_reaches_training(demo_run):
    """The `taught` variant."""
    assert_the_teachers_text_reaches_training(demo_run)


@pytest.mark.slow
def test_everything_the_report_shows_is_made(demo_run):
    """Loss curves, pseudo-labels, the review page, the summary page, the configuration."""
    workdir = demo_run.workdir
    # Made for the report: loss curves, pseudo-labels per class, the review page with its images inlined,
    # the summary as a page, the configuration with its defaults.
    for variant in ("baseline", "baseline_ocr", "taught"):
        assert (workdir / f"results/{variant}/loss_curves.png").stat().st_size > 10_000
        counts = pd.read_csv(workdir / f"results/{variant}/pseudo_label_counts.csv", index_col="label")
        kept = json.loads((workdir / f"results/{variant}/pseudo_labels.json").read_text())["kept_per_class"]
        assert counts.sum(axis=1).to_dict() == kept
        flagged = json.loads((workdir / f"results/{variant}/correction_scores.json").read_text())["flagged"]
        page = (workdir / f"results/{variant}/label_review_embedded.html").read_text(encoding="utf-8")
        assert page.count('src="data:image/') == flagged
    run_config = yaml.safe_load((workdir / "results/run_config.yaml").read_text(encoding="utf-8"))
    assert run_config["train"]["folds"] == 2 and run_config["mlflow"]["experiment"] == "vlmflow"  # a default
    assert "out-of-fold weighted F1" in (workdir / "results/summary.html").read_text(encoding="utf-8")


@pytest.mark.slow
def test_every_rule_of_the_workflow_made_something(demo_run):
    """The target rule `all` makes nothing."""
    workdir = demo_run.workdir
    # Every rule of the workflow made something in this run (the target rule `all` makes nothing).
    defined = {
        name
        for path in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]
        for name in re.findall(r"^rule (\w+):", path.read_text(encoding="utf-8"), re.MULTILINE)
    }
    ran = {json.loads(path.read_text())["rule"] for path in (workdir / ".snakemake/metadata").iterdir()}
    assert defined - ran == {"all"}


@pytest.mark.slow
def test_a_variant_edit_reruns_only_that_variants_jobs_and_no_ocr(demo_run):
    """Nothing left to do, then one switch of one variant changed (in a copy of the config)."""
    workdir, config = demo_run.workdir, copy.deepcopy(demo_run.config)
    # Nothing left to do; a variant's switch reruns only that variant's jobs, and no OCR job.
    rerun = run_snakemake(workdir, config, "--cores", "2", "-n")
    assert "Nothing to be done" in rerun.stdout + rerun.stderr
    # The pretraining's budget is no setting of the dataset or of its corpus: editing it pretrains the base
    # again, and the fine-tunes that start from it, but redraws nothing and reads no image again.
    budget = copy.deepcopy(config)
    budget["demo"]["pretrain"]["max_steps"] = 3
    replanned = {rule for rule, _ in planned_jobs(run_snakemake(workdir, budget, "--cores", "2", "-n").stdout)}
    assert {"pretrain_tiny_model", "train_fold", "write_run_config"} <= replanned
    assert not replanned & {"make_demo_dataset", "make_pretrain_corpus", "ingest_records", "merge_ocr"}
    assert not any(rule.startswith("ocr") for rule in replanned)
    # An edited hyper-parameter retrains every fine-tune of both variants, and draws no prompt again.
    learning_rate = copy.deepcopy(config)
    learning_rate["train"]["hyperparameters"]["learning_rate"] = 5.0e-4
    relearned = planned_jobs(run_snakemake(workdir, learning_rate, "--cores", "2", "-n").stdout)
    variants = {variant["name"] for variant in config["variants"]}
    fitted = {"train_fold": variants, "train_final": set(config["final"]["ablation_variants"])}
    for fit, expected in fitted.items():
        assert {wildcards["variant"] for rule, wildcards in relearned if rule == fit} == expected, fit
    assert not {rule for rule, _ in relearned} & {"build_prompts", "ingest_records", "merge_ocr", "assign_folds"}
    config["variants"][1]["ocr_max_chars"] = 50
    planned = planned_jobs(run_snakemake(workdir, config, "--cores", "2", "-n").stdout)
    assert planned, "changing a variant must rerun something"
    assert {rule for rule, _ in planned} >= {"build_prompts", "train_fold", "score_fold", "evaluate_variant"}
    assert not any(rule.startswith("ocr") or rule in ("merge_ocr", "ingest_records") for rule, _ in planned)
    assert {wildcards.get("variant") for rule, wildcards in planned if rule not in ACROSS_VARIANTS} == {"baseline_ocr"}


@pytest.mark.slow
def test_writing_an_override_file_reruns_only_that_variants_correction_and_what_reads_it(demo_run):
    """The user's label decisions for one variant."""
    workdir, config = demo_run.workdir, copy.deepcopy(demo_run.config)
    train = pd.read_parquet(workdir / "results/data/train.parquet")
    # Writing the baseline's override file reruns exactly the baseline's correction and what reads it.
    overrides = workdir / "config/label_overrides/baseline.csv"
    overrides.parent.mkdir(parents=True)
    try:
        overrides.write_text(f"id,action,label\n{train['id'][0]},relabel,退款页面\n", encoding="utf-8")
        planned = planned_jobs(run_snakemake(workdir, config, "--cores", "2", "-n").stdout)
        assert {rule for rule, _ in planned} == {
            "correct_labels",
            "build_final_training_set",
            "train_final",
            "score_final_model",
            "evaluate_final_model",
            "evaluate_across_seeds",
            "evaluate_general_ability",
            "select_round_pseudo_labels",
            "write_submission",
            "evaluate_submission",
            "log_variant_to_mlflow",
            "summarize_ablation",
            "embed_review_images",
            "write_summary_page",
        }
        assert {wildcards.get("variant") for rule, wildcards in planned if rule not in ACROSS_VARIANTS} == {"baseline"}
        assert sum(rule == "train_final" for rule, _ in planned) == 2  # both rounds; no fold model retrains
    finally:
        overrides.unlink()  # the run is shared: the report and MLflow UI tests read it as it was


def assert_the_teachers_text_reaches_training(demo_run) -> None:
    """The `taught` variant: the teacher answered once per image and question, and its reasons and
    descriptions are what the fold models and the final models train on."""
    workdir = demo_run.workdir
    reasons = pd.read_parquet(workdir / "results/taught/teacher/reasons.parquet")
    descriptions = pd.read_parquet(workdir / "results/taught/teacher/descriptions.parquet")
    train = pd.read_parquet(workdir / "results/data/train.parquet")
    everything = pd.concat([train, pd.read_parquet(workdir / "results/data/test.parquet")])
    assert len(reasons) == train[["image_sha256", "label"]].drop_duplicates().shape[0]
    assert len(descriptions) == everything["image_sha256"].nunique()
    assert demo_run.teacher_requests == len(reasons) + len(descriptions)
    assert not reasons["from_cache"].any() and (reasons["text"].str.len().between(1, 50)).all()
    assert pd.read_csv(workdir / "results/taught/teacher/reasons_failed.csv").empty

    reason_of = dict(zip(zip(reasons["image_sha256"], reasons["label"], strict=True), reasons["text"], strict=True))
    description_of = dict(zip(descriptions["image_sha256"], descriptions["text"], strict=True))
    prompts = pd.read_parquet(workdir / "results/taught/prompts.parquet")
    for prompt in prompts.itertuples():
        assert f"图片描述:{' '.join(description_of[prompt.image_sha256].split())}\n" in prompt.prompt
        if prompt.split == "train":
            label = json.loads(prompt.target)["所属类别"]
            assert json.loads(prompt.target)["理由"] == reason_of[(prompt.image_sha256, label)]
    # The final fit: a kept label keeps the teacher's reason; a corrected or pseudo label gets the template's.
    final = pd.read_parquet(workdir / "results/taught/retrain/correction_pseudo/seed42/round1/train_prompts.parquet")
    kept = final[final["source"] == "train"].merge(train[["id", "label"]], on="id")
    targets = kept["target"].map(json.loads)
    same_label = targets.map(lambda target: target["所属类别"]) == kept["label"]
    assert same_label.any()
    expected = [reason_of[(sha, label)] for sha, label in zip(kept["image_sha256"], kept["label"], strict=True)]
    assert (targets.map(lambda target: target["理由"])[same_label] == pd.Series(expected)[same_label]).all()
    diversity = json.loads((workdir / "results/taught/reason_diversity.json").read_text(encoding="utf-8"))
    assert diversity["source"] == "teacher" and diversity["reasons"] == len(train)
    # ... and reaches the variant's MLflow run, as numbers to compare and as the file.
    client = MlflowClient(f"sqlite:///{workdir / 'results/mlflow.db'}")
    logged = json.loads((workdir / "results/taught/mlflow_logged.json").read_text(encoding="utf-8"))
    run = client.get_run(logged["run_id"])
    assert run.data.metrics["reason_diversity.mean_similarity"] == pytest.approx(diversity["mean_similarity"])
    assert "reason_diversity.json" in {item.path for item in client.list_artifacts(logged["run_id"])}


def planned_jobs(dry_run_output: str) -> list[tuple[str, dict]]:
    """(rule, wildcards) of every job a `snakemake -n` run plans, except the target rule `all`."""
    return [(job.rule, job.wildcards) for job in plan.planned_jobs(dry_run_output)]


def test_bad_records_stop_the_run_naming_them_and_skip_mode_keeps_count(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (30, 30)).save(data / "images" / "ok.jpg")
    records = [
        {"id": "good", "image": "images/ok.jpg", "label": "退款页面"},
        {"id": "lost", "image": "images/lost.jpg", "label": "退款页面"},
    ]
    (data / "train.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records))
    config = small_demo_config(tmp_path, data={"train": str(data / "train.jsonl")})

    failed = run_snakemake(tmp_path, config, "--cores", "1", "results/data/train.parquet", check=False)
    assert failed.returncode != 0
    log = (tmp_path / "logs/ingest/train.log").read_text(encoding="utf-8")
    assert "train.jsonl line 2 (id lost): image 'images/lost.jpg' not found" in log

    config["data"]["on_error"] = "skip"
    run_snakemake(tmp_path, config, "--cores", "1", "results/data/train.parquet")
    rejected = pd.read_csv(tmp_path / "results/data/train_rejected.csv")
    assert list(rejected["id"]) == ["lost"]
    assert list(pd.read_parquet(tmp_path / "results/data/train.parquet")["id"]) == ["good"]


@pytest.mark.parametrize(
    "command",
    [
        ["ruff", "check", "."],
        ["ruff", "format", "--check", "."],
        ["snakefmt", "--check", "Snakefile", "workflow"],
        ["snakemake", "--lint", "--configfile", "config/demo.yaml"],  # the shipped config names data to bring
    ],
    ids=["ruff", "ruff-format", "snakefmt", "snakemake-lint"],
)
def test_lint_gate_is_clean(command):
    result = subprocess.run(
        [str(BIN / command[0]), *command[1:]], cwd=REPO, capture_output=True, text=True, env=without_slurm_controller()
    )
    assert result.returncode == 0, result.stdout + result.stderr


def declared_names(rule_body: str, section: str) -> set[str]:
    """Names given in one section (input, output, params) of a rule's text."""
    found = re.search(rf"\n    {section}:\n((?:        .*\n|\s*\n)+)", rule_body)
    return set(re.findall(r"^        (\w+)=", found[1], re.MULTILINE)) if found else set()


def test_every_name_a_script_reads_is_declared_by_each_rule_that_runs_it():
    rules: dict[str, list[tuple[str, str]]] = {}  # script -> (rule name, rule text) of every rule running it
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        for body in re.split(r"\n(?=rule \w+:)", path.read_text(encoding="utf-8")):
            script = re.search(r'script:\n\s+"\.\./scripts/(\w+\.py)"', body)
            if script:
                rules.setdefault(script[1], []).append((re.match(r"rule (\w+):", body)[1], body))
    scripts = sorted((REPO / "workflow" / "scripts").glob("*.py"))
    assert {path.name for path in scripts} == set(rules), "every script has a rule"
    assert len(rules["select_pseudo_labels.py"]) == 2  # fold models' and each round's pseudo-labels
    for path in scripts:
        # `output.<name>` is the staged form of `snakemake.output.<name>` (vlmflow.runtime.outputs);
        # commit() is its method.
        text = path.read_text(encoding="utf-8")
        used = re.findall(r"snakemake\.(input|output|params)\.(\w+)", text)
        used += [("output", name) for name in re.findall(r"(?<![\w.])output\.(\w+)", text) if name != "commit"]
        for rule, body in rules[path.name]:
            for section, name in used:
                assert name in declared_names(body + "\n", section), f"{path.name} in rule {rule}: {section}.{name}"


@pytest.mark.slow
def test_the_tests_prebuilt_demo_model_is_the_rules_build(demo_run, demo_models, tmp_path):
    """The runs that copy in a prebuilt tiny model (conftest.DemoModels) start from what rule build_tiny_model
    builds for their config: file for file, byte for byte."""
    demo_models.into(tmp_path, demo_run.config)
    built = demo_run.workdir / "resources/demo/tiny-qwen2-vl"
    copied = tmp_path / "resources/demo/tiny-qwen2-vl"
    names = sorted(path.name for path in built.iterdir() if not path.name.startswith("."))  # .snakemake_timestamp
    assert names == sorted(path.name for path in copied.iterdir()) and "model.safetensors" in names
    assert all((built / name).read_bytes() == (copied / name).read_bytes() for name in names)
