"""What people look at after a run, opened in headless Chromium: the Snakemake report and the MLflow UI.

Both read the reduced demo that the end-to-end test runs (the shared ``demo_run`` fixture); no second
workflow runs. The screenshots land in the repository's results/screenshots/ for a person to look at.
The runs table's address also has a test of its own on a store of a few runs, which needs no workflow.
"""

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from vlmflow.tracking.runs import ensure_experiment, finish_run, log_results, start_fold_run, start_variant_run

from conftest import REPO, run_snakemake
from helpers.browser import chromium, missing_browser, mlflow_ui
from helpers.screenshots import REPORT_CATEGORIES, mlflow_pages, report_pages, runs_table_page

SCREENSHOTS = REPO / "results" / "screenshots"
needs_browser = pytest.mark.skipif(
    bool(missing_browser()),
    reason=f"needs Debian's {' and '.join(missing_browser())} (scripts/install_system_packages.sh, as root)",
)


@pytest.fixture(scope="module")
def demo_report(demo_run):
    run_snakemake(demo_run.workdir, demo_run.config, "--report", "results/report.html")
    return demo_run.workdir / "results" / "report.html"


def shown(value: float) -> str:
    """The leading digits of a metric as the MLflow UI prints it (JavaScript's shortest float text)."""
    return f"{value:.15g}"[:6]


@pytest.mark.slow
def test_report_has_every_result_with_its_caption(demo_report):
    page = demo_report.read_text(encoding="utf-8")
    for category in REPORT_CATEGORIES:
        assert category in page
    for label in ("loss curves, every fold", "pseudo-labels per class and confidence", "flagged labels to review"):
        assert label in page
    # Captions are rendered with the run's values: its number of folds, its pseudo-label tau.
    assert "Training loss (solid) and validation loss (dashed) of the 2 fold" in page
    assert "0.0 to 1). The title counts" in page


@pytest.mark.slow
@needs_browser
def test_report_opens_in_chromium_on_the_summary_and_a_variants_loss_curves(demo_run, demo_report):
    pages = report_pages(demo_report, "baseline_ocr", SCREENSHOTS)
    assert all(category in pages["report"] for category in REPORT_CATEGORIES)
    summary = pd.read_csv(demo_run.workdir / "results/summary.csv")
    for row in summary.itertuples():
        assert f"{row.variant} {row.oof_weighted_f1:.3f}" in pages["report_summary"]  # the table's row
    assert "baseline_ocr loss curves, every fold" in pages["report_loss_curves"]
    for name in pages:
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 20_000


@pytest.mark.slow  # an MLflow UI server and headless Chromium: 45 s of the fast loop
@needs_browser
def test_the_printed_address_shows_the_variants_best_out_of_fold_f1_first_in_its_own_column(tmp_path):
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri)
    experiment_id = ensure_experiment(client, "vlmflow", tmp_path / "artifacts")  # as the workflow's first job
    for variant, score in {"baseline": 0.412, "baseline_ocr": 0.687, "taught": 0.553}.items():
        parent = start_variant_run(client, experiment_id, variant, {"ocr": variant != "baseline"})
        fold = start_fold_run(client, experiment_id, parent, variant, 0)  # not a variant: not in the table
        log_results(client, fold, {"heldout_weighted_f1": score - 0.1}, [])
        finish_run(client, fold)
        log_results(client, parent, {"oof_weighted_f1": score}, [])
        finish_run(client, parent)
    with mlflow_ui(tracking_uri, tmp_path / "mlflow_ui.log") as url, chromium() as driver:
        table = runs_table_page(
            driver, url, experiment_id, ["baseline", "baseline_ocr", "taught"], tmp_path / "runs.png"
        )
    # Nothing was clicked: the address alone filters, sorts and shows the metric's column.
    assert table.splitlines() == [
        "Run Name\toof_weighted_f1",
        "baseline_ocr\t0.687",
        "taught\t0.553",
        "baseline\t0.412",
    ]


@pytest.mark.slow
@needs_browser
def test_mlflow_ui_shows_variants_by_oof_f1_a_folds_loss_and_what_changed(demo_run):
    tracking_uri = f"sqlite:///{demo_run.workdir / 'results/mlflow.db'}"
    pages = mlflow_pages(tracking_uri, "vlmflow", SCREENSHOTS, SCREENSHOTS / "mlflow_ui.log")
    experiment = MlflowClient(tracking_uri).get_experiment_by_name("vlmflow")
    variants = MlflowClient(tracking_uri).search_runs([experiment.experiment_id], "tags.level = 'variant'")
    scores = {run.info.run_name: run.data.metrics["oof_weighted_f1"] for run in variants}
    assert set(scores) == {"baseline", "baseline_ocr", "taught"}

    # Which variant is best: every variant run with its score in the metric's column, the best first.
    header, *rows = [line.split("\t") for line in pages["mlflow_experiment"].splitlines()]
    assert header == ["Run Name", "oof_weighted_f1"]
    assert [name for name, _ in rows] == sorted(scores, key=scores.get, reverse=True)
    for name, score in rows:
        assert score.startswith(shown(scores[name]))
    best = max(scores, key=scores.get)
    # How a fold trained: the best variant's first fold run and its loss curve.
    assert f"{best}/fold0 (loss)" in pages["mlflow_fold_run"]
    # What changed: the switch that differs, beside the score, for every variant run.
    assert all(text in pages["mlflow_compare"] for text in ("variant.ocr", "oof_weighted_f1", *scores))
    for name in pages:
        assert (SCREENSHOTS / f"{name}.png").stat().st_size > 20_000
