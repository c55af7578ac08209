"""Screenshots of what people look at after a run: the MLflow experiment and the Snakemake report.

``python -m helpers.screenshots [results]`` (``make screenshots``) takes them of a finished run; the
tests take them of theirs. Each page is opened as a person would, and its text is returned so that a
caller can check what it shows.
"""

from __future__ import annotations

import argparse
import json
import logging
import urllib.parse
from pathlib import Path

from mlflow.tracking import MlflowClient
from selenium.common.exceptions import NoSuchElementException
from selenium.webdriver.common.by import By

from vlmflow.tracking.runs import (
    RANKING_COLUMN,
    RANKING_METRIC,
    VARIANT_RUNS,
    read_run,
    runs_table_url,
    save_runs_view,
)

from helpers.browser import chromium, click, mlflow_ui, screenshot, wait_for_element, wait_for_texts

log = logging.getLogger(__name__)
# MLflow's single-page app takes a while to load on a busy two-core machine; later pages come from cache.
FIRST_PAGE_SECONDS = 240
PAGE_SECONDS = 90
RUN_NAME_COLUMN = "attributes.`Run Name`"  # the runs table's column keys, as its cells' col-id name them


def mlflow_runs(tracking_uri: str, experiment: str) -> tuple[str, list, list]:
    """The experiment's id, its variant runs (best out-of-fold weighted F1 first) and its fold runs."""
    client = MlflowClient(tracking_uri)
    experiment_id = client.get_experiment_by_name(experiment).experiment_id
    variants = client.search_runs([experiment_id], VARIANT_RUNS, order_by=[f"{RANKING_COLUMN} DESC"])
    folds = client.search_runs([experiment_id], "tags.level = 'fold'", order_by=["attributes.run_name"])
    return experiment_id, variants, folds


def close_assistant(driver) -> None:
    """Close MLflow's assistant panel, which otherwise covers a third of every page."""
    try:
        driver.find_element(By.CSS_SELECTOR, "button[aria-label='Close']").click()
    except NoSuchElementException:
        pass


def table_text(driver, columns: list[str]) -> str:
    """MLflow's runs table as it shows ``columns`` (column keys): their headers, then its rows, top first,
    tab-separated; a column the table does not show has an empty header and empty cells."""
    headers = {
        cell.get_attribute("col-id"): cell.text
        for cell in driver.find_elements(By.CSS_SELECTOR, "[role='columnheader'][col-id]")
    }
    rows: dict[int, dict[str, str]] = {}
    for cell in driver.find_elements(By.CSS_SELECTOR, "[role='row'][row-index] [role='gridcell'][col-id]"):
        row = int(cell.find_element(By.XPATH, "./ancestor::*[@role='row'][1]").get_attribute("row-index"))
        # A run name's cell starts with its colour swatch's hidden label: its last line is the name.
        rows.setdefault(row, {})[cell.get_attribute("col-id")] = (cell.text.splitlines() or [""])[-1]
    lines = [[headers.get(column, "") for column in columns]]
    lines += [[rows[row].get(column, "") for column in columns] for row in sorted(rows)]
    return "\n".join("\t".join(line) for line in lines)


def runs_table_page(driver, url: str, experiment_id: str, names: list[str], path: str | Path) -> str:
    """Open the runs table at the address `make demo` prints and screenshot it, clicking nothing, once it shows
    the variant runs ``names`` and the ranking metric's column; return the table's run names and scores
    (``table_text``)."""
    driver.get(runs_table_url(url, experiment_id))
    wait_for_texts(driver, [*names, f"{len(names)} matching runs"], FIRST_PAGE_SECONDS)
    wait_for_element(driver, By.CSS_SELECTOR, f"[role='columnheader'][col-id='{RANKING_COLUMN}']", PAGE_SECONDS)
    close_assistant(driver)
    screenshot(driver, [RANKING_METRIC], path, PAGE_SECONDS)
    return table_text(driver, [RUN_NAME_COLUMN, RANKING_COLUMN])


def mlflow_pages(tracking_uri: str, experiment: str, out_dir: str | Path, server_log: str | Path) -> dict[str, str]:
    """Screenshots of the MLflow UI answering three questions; returns each page's text by screenshot name
    (the runs table's is the table's own, ``table_text``).

    Which variant is best: the variant runs, best out-of-fold weighted F1 first, at the address `make demo` prints.
    How a fold trained: the loss curves of the best variant's first fold run.
    What changed between variants: MLflow's comparison of the variant runs (switches and metrics).
    """
    out_dir = Path(out_dir)
    experiment_id, variants, folds = mlflow_runs(tracking_uri, experiment)
    save_runs_view(MlflowClient(tracking_uri), experiment_id)  # as printing the address does, for older stores
    names = [run.info.run_name for run in variants]
    fold = next(run for run in folds if run.data.tags["variant"] == names[0])
    pages = {}
    with mlflow_ui(tracking_uri, server_log) as url, chromium() as driver:
        pages["mlflow_experiment"] = runs_table_page(
            driver, url, experiment_id, names, out_dir / "mlflow_experiment.png"
        )

        driver.get(f"{url}/#/experiments/{experiment_id}/runs/{fold.info.run_id}/model-metrics")
        wait_for_texts(driver, [fold.info.run_name, "Model metrics"], PAGE_SECONDS)
        click(driver, By.CSS_SELECTOR, "input[placeholder='Search metric charts']", PAGE_SECONDS)
        driver.find_element(By.CSS_SELECTOR, "input[placeholder='Search metric charts']").send_keys("loss")
        pages["mlflow_fold_run"] = screenshot(
            driver, [f"{fold.info.run_name} (loss)"], out_dir / "mlflow_fold_run.png", PAGE_SECONDS
        )

        runs = urllib.parse.quote(json.dumps([run.info.run_id for run in variants]))
        driver.get(f"{url}/#/compare-runs?runs={runs}&experiments={urllib.parse.quote(json.dumps([experiment_id]))}")
        pages["mlflow_compare"] = screenshot(
            driver,
            [f"Comparing {len(names)} Runs", RANKING_METRIC, "variant.name"],
            out_dir / "mlflow_compare.png",
            PAGE_SECONDS,
        )
    return pages


REPORT_CATEGORIES = ["Ablation summary", "Training", "Label correction", "Pseudo-labels", "Configuration"]


def open_result(driver, category: str, label: str, subcategory: str | None = None) -> None:
    """Open one result of the report from its menu: category, subcategory, then the result's eye button."""
    click(driver, By.LINK_TEXT, category, PAGE_SECONDS)
    if subcategory:
        click(driver, By.LINK_TEXT, subcategory, PAGE_SECONDS)
    click(driver, By.XPATH, f"//tr[contains(., '{label}')]//a[@iconname='eye']", PAGE_SECONDS)


def frame_text(driver, texts: list[str]) -> str:
    """The text of the page the report shows in its frame, once it shows ``texts``."""
    driver.switch_to.frame(driver.find_element(By.TAG_NAME, "iframe"))
    try:
        return wait_for_texts(driver, texts, PAGE_SECONDS)
    finally:
        driver.switch_to.default_content()


def report_pages(report: str | Path, variant: str, out_dir: str | Path) -> dict[str, str]:
    """Screenshots of the Snakemake report: its start page, the ablation summary table and a variant's loss
    curves; returns each page's text by screenshot name (the summary's is the table's own)."""
    out_dir = Path(out_dir)
    pages = {}
    with chromium() as driver:
        driver.get(Path(report).resolve().as_uri())
        pages["report"] = screenshot(driver, REPORT_CATEGORIES, out_dir / "report.png", PAGE_SECONDS)
        open_result(driver, "Ablation summary", "table: weighted F1")
        pages["report_summary"] = frame_text(driver, ["out-of-fold weighted F1", variant])
        screenshot(driver, [], out_dir / "report_summary.png", PAGE_SECONDS)
        driver.get(Path(report).resolve().as_uri())
        open_result(driver, "Training", "loss curves", subcategory=variant)
        wait_for_element(driver, By.CSS_SELECTOR, "img[src*='filename=loss_curves.png']", PAGE_SECONDS)
        pages["report_loss_curves"] = screenshot(
            driver, ["loss curves, every fold"], out_dir / "report_loss_curves.png", PAGE_SECONDS
        )
    return pages


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Screenshot the MLflow UI and the Snakemake report of a run.")
    parser.add_argument("results", nargs="?", default="results", help="the run's results folder")
    results = Path(parser.parse_args(argv).results)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out_dir = results / "screenshots"
    store = read_run(results / "mlflow_experiment.json")
    pages = mlflow_pages(store["tracking_uri"], store["experiment"], out_dir, out_dir / "mlflow_ui.log")
    best = mlflow_runs(store["tracking_uri"], store["experiment"])[1][0].info.run_name
    pages |= report_pages(results / "report.html", best, out_dir)
    log.info("screenshots: %s", ", ".join(str(out_dir / f"{name}.png") for name in pages))


if __name__ == "__main__":
    main()
