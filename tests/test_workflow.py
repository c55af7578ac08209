"""Rule-level and end-to-end runs of the workflow on a reduced demo, plus the lint gates."""

import json
import subprocess

import pandas as pd
import pytest
import yaml
from conftest import BIN, REPO, run_snakemake, small_demo_config


def test_dry_run_of_the_shipped_config_plans_every_stage(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config["labels"] = str(REPO / config["labels"])  # the scratch folder has no config/
    result = run_snakemake(tmp_path, config, "-n")
    for rule in ("make_demo_dataset", "build_tiny_model", "ingest_records"):
        assert rule in result.stdout


@pytest.mark.slow
def test_demo_runs_end_to_end_through_every_rule(tmp_path):
    config = small_demo_config(tmp_path)
    run_snakemake(tmp_path, config, "--cores", "2")

    truth = pd.read_csv(tmp_path / "resources/demo/truth.csv")
    for split, size in (("train", 40), ("test", 12)):
        records = pd.read_parquet(tmp_path / f"results/data/{split}.parquet")
        counts = json.loads((tmp_path / f"results/data/{split}_counts.json").read_text())
        assert counts["records_in"] == size == counts["records_out"] + counts["rejected"]
        assert len(records) == size and counts["rejected"] == 0
        assert set(records["id"]) == set(truth.loc[truth["split"] == split, "id"])
    train = pd.read_parquet(tmp_path / "results/data/train.parquet")
    given = truth.set_index("id").loc[train["id"], "given_label"]
    assert list(train["label"]) == list(given)  # the workflow trains on the given (noisy) labels
    assert pd.read_parquet(tmp_path / "results/data/test.parquet")["label"].isna().all()
    assert (tmp_path / "resources/demo/tiny-qwen2-vl/config.json").exists()

    rerun = run_snakemake(tmp_path, config, "--cores", "2", "-n")
    assert "Nothing to be done" in rerun.stdout + rerun.stderr


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
        ["snakefmt", "--check", "Snakefile", "workflow"],
        ["snakemake", "--lint"],
    ],
    ids=["ruff", "snakefmt", "snakemake-lint"],
)
def test_lint_gate_is_clean(command):
    result = subprocess.run([str(BIN / command[0]), *command[1:]], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
