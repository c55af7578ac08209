"""The label review page as a person uses it: decide flags in headless Chromium, download the overrides
file, put it in place and rerun the correction rule, which then applies exactly those decisions."""

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from vlmflow.data.duplicates import CONFLICT_COLUMNS
from vlmflow.data.labels import label_names, load_labels
from vlmflow.evaluation.report import inline_images
from vlmflow.recipe.review_page import review_page

from conftest import REPO, run_snakemake, small_demo_config
from helpers.browser import chromium, missing_browser

needs_browser = pytest.mark.skipif(
    bool(missing_browser()),
    reason=f"needs Debian's {' and '.join(missing_browser())} (scripts/install_system_packages.sh, as root)",
)
LABELS = label_names(load_labels(REPO / "config" / "labels.yaml"))
WAIT = 30  # seconds a page or a download may take to appear; never an assertion on time


def images(folder: Path, ids: list[str]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    for index, record in enumerate(ids):
        Image.new("RGB", (24, 40), (10 * index, 120, 200)).save(folder / f"{record}.png")
    return [f"images/{record}.png" for record in ids]


def page_issues() -> pd.DataFrame:
    """Four flags of three kinds, one without a confidence."""
    return pd.DataFrame(
        {
            "id": ["a1", "a2", "a3", "a4"],
            "given": [LABELS[0], LABELS[1], LABELS[2], LABELS[2]],
            "proposed": [LABELS[1], LABELS[0], LABELS[0], LABELS[3]],
            "confidence": [0.95, 0.6, 0.5, np.nan],
            "method": ["disagreement", "confident_learning", "duplicate_conflict", "duplicate_conflict"],
        }
    )


def page_train(tmp_path: Path) -> pd.DataFrame:
    ids = ["a1", "a2", "a3", "a4", "a5"]
    return pd.DataFrame(
        {
            "id": ids,
            "label": [LABELS[0], LABELS[1], LABELS[2], LABELS[2], LABELS[0]],
            "image_path": images(tmp_path / "images", ids),
        }
    )


def embedded_data(html: str) -> dict:
    return json.loads(re.search(r'<script type="application/json" id="review-data">(.*?)</script>', html, re.S)[1])


def test_the_page_escapes_untrusted_text_embeds_the_overrides_and_links_images_relative_to_it(tmp_path):
    train = page_train(tmp_path)
    out = tmp_path / "results" / "review" / "labels.html"
    hostile = "</script><script>alert(2)</script>"
    overrides = pd.DataFrame({"id": ["a5"], "action": ["relabel"], "label": [hostile]})
    ocr = {"a1": "<script>alert(1)</script>"}
    review_page(page_issues(), train, ocr, out, "config/o.csv", image_root=tmp_path, labels=LABELS, overrides=overrides)
    html = out.read_text(encoding="utf-8")
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert html.count("</script>") == 2  # the data and the code: the hostile label ends neither
    assert embedded_data(html)["overrides"] == [{"id": "a5", "action": "relabel", "label": hostile}]
    assert html.count('<tr class="issue"') == 4 and html.count("<img") == 4
    assert 'src="../../images/a1.png"' in html
    assert "config/o.csv" in html and "4 flagged of 5" in html
    assert "nan" not in html  # a4 has no confidence: shown empty
    kinds = re.findall(r'class="filter-kind" value="([^"]+)"', html)
    assert kinds == ["disagreement", "confident_learning", "duplicate_conflict"]  # from the rows, in their order
    assert "http" not in html  # nothing is fetched from anywhere


def test_a_page_with_no_flags_still_carries_the_overrides_file(tmp_path):
    train = page_train(tmp_path)
    out = tmp_path / "labels.html"
    existing = pd.DataFrame({"id": ["a5"], "action": ["reject"], "label": [""]})
    review_page(page_issues().iloc[:0], train, {}, out, "config/o.csv", labels=LABELS, overrides=existing)
    html = out.read_text(encoding="utf-8")
    assert "0 flagged of 5" in html and '<tr class="issue"' not in html and 'class="filter-kind"' not in html
    assert embedded_data(html)["overrides"] == [{"id": "a5", "action": "reject", "label": ""}]


def visible_ids(driver) -> list[str]:
    return [
        row.get_attribute("data-id") for row in driver.find_elements(By.CSS_SELECTOR, "tr.issue") if row.is_displayed()
    ]


def set_value(driver, element_id: str, value: str) -> None:
    """Set a control as a person's drag or choice would, with the input event the page listens to."""
    element = driver.find_element(By.ID, element_id)
    driver.execute_script(
        "arguments[0].value = arguments[1]; arguments[0].dispatchEvent(new Event('input'))", element, value
    )


def keys(driver, *sequence: str) -> None:
    ActionChains(driver).send_keys(*sequence).perform()


def row(driver, record: str):
    return driver.find_element(By.CSS_SELECTOR, f'tr.issue[data-id="{record}"]')


def downloaded(folder: Path, name: str) -> str:
    """The text of a finished download (Chromium writes <name>.crdownload until it is complete)."""
    path = folder / name
    WebDriverWait(None, WAIT).until(lambda _: path.exists() and not (folder / f"{name}.crdownload").exists())
    return path.read_text(encoding="utf-8")


@needs_browser
def test_filters_by_class_confidence_and_kind_and_the_report_copy_downloads_from_its_frame(tmp_path):
    train = page_train(tmp_path)
    page = tmp_path / "results" / "label_review.html"
    existing = pd.DataFrame({"id": ["a5"], "action": ["relabel"], "label": [LABELS[4]]})
    review_page(page_issues(), train, {}, page, "config/o.csv", image_root=tmp_path, labels=LABELS, overrides=existing)
    # The report's copy: images inlined, shown in an iframe from a data: address, as Snakemake's report does.
    embedded = inline_images(page.read_text(encoding="utf-8"), page.parent)
    assert embedded.count('src="data:image/png') == 4
    address = "data:text/html;charset=utf-8;base64," + base64.b64encode(embedded.encode()).decode()
    report = tmp_path / "report.html"
    report.write_text(f'<!doctype html><iframe src="{address}" style="width:1500px;height:900px"></iframe>')
    downloads = tmp_path / "downloads"
    with chromium(download_dir=downloads) as driver:
        driver.get(report.as_uri())
        driver.switch_to.frame(driver.find_element(By.TAG_NAME, "iframe"))
        WebDriverWait(driver, WAIT).until(lambda _: "Showing 4 of 4" in driver.find_element(By.ID, "shown").text)
        Select(driver.find_element(By.ID, "filter-class")).select_by_value(LABELS[0])
        assert visible_ids(driver) == ["a1", "a2", "a3"]  # given or proposed
        Select(driver.find_element(By.ID, "filter-class-role")).select_by_value("proposed")
        assert visible_ids(driver) == ["a2", "a3"]
        Select(driver.find_element(By.ID, "filter-class")).select_by_value("")
        set_value(driver, "filter-min-confidence", "0.55")
        assert visible_ids(driver) == ["a1", "a2"]  # a4 has no confidence to compare
        assert driver.find_element(By.ID, "min-confidence-shown").text == "0.55"
        set_value(driver, "filter-min-confidence", "0")
        driver.find_element(By.CSS_SELECTOR, '.filter-kind[value="duplicate_conflict"]').click()
        assert visible_ids(driver) == ["a1", "a2"]
        driver.find_element(By.CSS_SELECTOR, '.filter-kind[value="duplicate_conflict"]').click()
        # Decide a1 with the keyboard, a4 with the mouse; then only the undecided rows.
        keys(driver, "j", "a")
        row(driver, "a4").find_element(By.CSS_SELECTOR, "button.reject").click()
        Select(driver.find_element(By.ID, "filter-decision")).select_by_value("undecided")
        assert visible_ids(driver) == ["a2", "a3"]
        driver.find_element(By.ID, "download").click()
        text = downloaded(downloads, "o.csv")
        assert text == driver.find_element(By.ID, "csv").get_attribute("value")
    assert text == f"id,action,label\na5,relabel,{LABELS[4]}\na1,accept,\na4,reject,\n"


def correction_inputs(workdir: Path) -> dict:
    """What rule correct_labels reads, written by hand (no fold model trains): ten training records in three
    classes, and out-of-fold probabilities that disagree with r01..r05, most confidently with r01."""
    ids = [f"r{i:02d}" for i in range(10)]
    given = [LABELS[i % 3] for i in range(10)]
    predicted = list(given)
    confidence = np.full(10, 0.9)
    for rank, index in enumerate(range(1, 6)):
        predicted[index] = LABELS[(index + 1) % 3]
        confidence[index] = 0.95 - 0.05 * rank
    probabilities = np.outer((1 - confidence) / (len(LABELS) - 1), np.ones(len(LABELS)))
    for index, label in enumerate(predicted):
        probabilities[index, LABELS.index(label)] = confidence[index]
    (workdir / "results/data").mkdir(parents=True)
    (workdir / "results/baseline").mkdir(parents=True)
    pd.DataFrame({"id": ids, "label": given, "image_path": images(workdir / "images", ids)}).to_parquet(
        workdir / "results/data/train.parquet", index=False
    )
    oof = pd.DataFrame(probabilities, columns=[f"p::{label}" for label in LABELS])
    oof.insert(0, "id", ids)
    oof["given_label"] = given
    oof.to_parquet(workdir / "results/baseline/oof_probs.parquet", index=False)
    # No two training images are copies of each other (rule find_duplicates would write this header only).
    pd.DataFrame(columns=CONFLICT_COLUMNS).to_csv(workdir / "results/data/label_conflicts.csv", index=False)
    return {"given": dict(zip(ids, given, strict=True)), "predicted": dict(zip(ids, predicted, strict=True))}


@needs_browser
def test_decisions_made_in_the_page_are_what_the_rerun_applies(tmp_path):
    workdir = tmp_path / "work"
    records = correction_inputs(workdir)
    given, predicted = records["given"], records["predicted"]
    config = small_demo_config(workdir, data={"truth": None}, correction={"apply": "review"})
    overrides = workdir / "config/label_overrides/baseline.csv"
    overrides.parent.mkdir(parents=True)
    # Already in the file: a reject the page will turn into an accept, a relabel of an unflagged record it keeps.
    overrides.write_text(f"id,action,label\nr02,reject,\nr08,relabel,{LABELS[5]}\n", encoding="utf-8")
    target = "results/baseline/label_decisions.csv"
    run_snakemake(workdir, config, "--cores", "1", target, "--allowed-rules", "correct_labels")
    first = pd.read_csv(workdir / target).set_index("id")["decision"].to_dict()
    assert first == dict.fromkeys(["r01", "r03", "r04", "r05"], "not_reviewed") | {
        "r02": "rejected",
        "r08": "relabelled",
    }

    downloads = tmp_path / "downloads"
    with chromium(download_dir=downloads) as driver:
        driver.get((workdir / "results/baseline/label_review.html").as_uri())
        WebDriverWait(driver, WAIT).until(lambda _: "Showing 5 of 5" in driver.find_element(By.ID, "shown").text)
        assert visible_ids(driver) == ["r01", "r02", "r03", "r04", "r05"]  # most confident first
        assert row(driver, "r02").find_element(By.CLASS_NAME, "status").text == "reject"  # from the file
        keys(driver, "j", "r", "j", "a")  # r01 rejected, r02 accepted, with the keyboard
        Select(row(driver, "r03").find_element(By.CSS_SELECTOR, "select.relabel")).select_by_value(LABELS[4])
        keys(driver, Keys.ESCAPE, "j", "l")  # back to the rows, on to r04, into its relabel choice
        focused = driver.switch_to.active_element
        assert focused.get_attribute("aria-label") == "relabel r04"
        Select(focused).select_by_value(LABELS[6])
        keys(driver, Keys.ESCAPE, "j", "a", "u")  # r05 accepted, then undone: no decision
        assert row(driver, "r05").find_element(By.CLASS_NAME, "status").text == ""
        driver.find_element(By.ID, "download").click()
        text = downloaded(downloads, "baseline.csv")
        driver.refresh()  # the browser keeps the page's decisions until the file changes
        WebDriverWait(driver, WAIT).until(lambda _: "Showing 5 of 5" in driver.find_element(By.ID, "shown").text)
        assert driver.find_element(By.ID, "csv").get_attribute("value") == text
    assert text == (
        f"id,action,label\nr02,accept,\nr08,relabel,{LABELS[5]}\nr01,reject,\nr03,relabel,{LABELS[4]}\n"
        f"r04,relabel,{LABELS[6]}\n"
    )

    shutil.copy(downloads / "baseline.csv", overrides)  # the person puts the download in place and reruns
    run_snakemake(workdir, config, "--cores", "1", target, "--allowed-rules", "correct_labels")
    decisions = pd.read_csv(workdir / target).set_index("id")
    assert decisions["decision"].to_dict() == {
        "r01": "rejected", "r02": "applied", "r03": "relabelled", "r04": "relabelled", "r05": "not_reviewed",
        "r08": "relabelled",
    }  # fmt: skip
    assert (decisions["source"] == "override").sum() == 5
    corrected = pd.read_parquet(workdir / "results/baseline/train_corrected.parquet").set_index("id")["label"]
    changed = {record: label for record, label in corrected.items() if label != given[record]}
    assert changed == {"r02": predicted["r02"], "r03": LABELS[4], "r04": LABELS[6], "r08": LABELS[5]}
