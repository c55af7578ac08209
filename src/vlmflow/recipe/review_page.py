"""The label review page: one self-contained HTML file in which a person decides the flagged labels.

Each flagged record gets accept, reject and relabel controls (and keyboard shortcuts); filters narrow the
rows by class, confidence and kind (the issue's ``method``); a button downloads the overrides CSV that
``vlmflow.recipe.correction.read_overrides`` reads, merged with the rows the overrides file already has.
Everything runs in the page (inline script and style, no server, nothing fetched), so it works opened from
disk and embedded in the Snakemake report (``workflow/scripts/embed_review_images.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import jinja2
import pandas as pd

TEMPLATE = "label_review.html.jinja"


def script_json(data: object) -> str:
    """``data`` as JSON that is safe inside a ``<script>`` element: no ``</script>`` or ``<!--`` can end it."""
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")


def _shown(row: dict) -> dict:
    """A flag's fields as the page shows them: a missing value is empty (not "nan"), a missing confidence None
    (the page shows it empty and hides the row once a minimum confidence is set)."""
    shown = {key: "" if pd.isna(value) else value for key, value in row.items()}
    return shown | {"confidence": None if pd.isna(row["confidence"]) else float(row["confidence"])}


def review_page(
    issues: pd.DataFrame,
    train: pd.DataFrame,
    ocr_text: dict[str, str],
    out_html: Path,
    overrides_path: str,
    image_root: Path | None = None,
    *,
    labels: list[str],
    overrides: pd.DataFrame,
) -> None:
    """Write the review page of ``issues`` (``ocr_text`` maps record id to text) to ``out_html``.

    ``labels`` is the label set the relabel control offers; ``overrides`` the rows ``overrides_path`` already
    holds, as ``vlmflow.recipe.correction.read_overrides`` returns them (its columns are the file's header),
    which the downloaded file keeps unless the page decides the same id.
    """
    out_html = Path(out_html)
    image_paths = train.set_index("id")["image_path"]
    items = []
    for row in issues.itertuples(index=False):
        image = Path(image_paths[row.id])
        if image_root is not None and not image.is_absolute():
            image = Path(image_root) / image
        # Relative to the page's folder, so the page works wherever the results folder is opened.
        src = Path(os.path.relpath(image, out_html.parent)).as_posix()
        items.append(_shown(row._asdict()) | {"src": src, "ocr": ocr_text.get(row.id, "")})
    data = {
        "overridesPath": overrides_path,
        "downloadName": Path(overrides_path).name,
        "header": list(overrides.columns),
        "overrides": overrides.astype(str).to_dict(orient="records"),
    }
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("vlmflow.recipe", "templates"),
        autoescape=True,  # OCR text and labels are untrusted
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    html = environment.get_template(TEMPLATE).render(
        issues=items,
        n_records=len(train),
        overrides_path=overrides_path,
        download_name=Path(overrides_path).name,
        labels=labels,
        kinds=list(dict.fromkeys(issues["method"].astype(str))),  # every kind the rows have, in their order
        data_json=script_json(data),
    )
    out_html.parent.mkdir(parents=True, exist_ok=True)
    out_html.write_text(html, encoding="utf-8")
