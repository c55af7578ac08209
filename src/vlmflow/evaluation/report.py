"""Plots and pages made for the Snakemake report: loss curves, pseudo-label statistics, readable tables.

The report shows images, HTML and PDF inline and offers any other file only as a download, so tables
and the configuration become small HTML pages, and the label review page gets its images inlined (the
report embeds each page on its own, where the review page's relative image paths lead nowhere).
"""

from __future__ import annotations

import base64
import html
import json
import mimetypes
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402
from pygments import highlight  # noqa: E402
from pygments.formatters import HtmlFormatter  # noqa: E402
from pygments.lexers import YamlLexer  # noqa: E402

from vlmflow.evaluation.metrics import cjk_font  # noqa: E402

PAGE_STYLE = "body{font-family:sans-serif}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px}"


def read_trainer_log(path: str | Path) -> pd.DataFrame:
    """LLaMA-Factory's ``trainer_log.jsonl``: one row per logging or evaluation step."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return pd.DataFrame([json.loads(line) for line in lines if line.strip()])


def plot_loss_curves(logs: dict[str, pd.DataFrame], path: str | Path, title: str) -> None:
    """Training loss (solid) and validation loss (dashed) against the step, one colour per named run."""
    figure, axes = plt.subplots(figsize=(8, 4.5))
    for index, (name, steps) in enumerate(logs.items()):
        colour = f"C{index}"
        for column, style, kind in (("loss", "-", "training"), ("eval_loss", "--", "validation")):
            if column in steps:
                points = steps.dropna(subset=[column])
                axes.plot(points["current_steps"], points[column], style, color=colour, label=f"{name} {kind}")
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def confidence_ranges(tau: float, n_ranges: int = 4) -> list[float]:
    """Equal confidence ranges from ``tau`` (the lowest a kept pseudo-label can have) to 1."""
    return list(np.linspace(tau, 1.0, n_ranges + 1))


def pseudo_label_counts(pseudo_labels: pd.DataFrame, classes: list[str], edges: list[float]) -> pd.DataFrame:
    """Kept pseudo-labels per class (rows, every class) and confidence range (columns)."""
    names = [f"{low:.2f}–{high:.2f}" for low, high in zip(edges[:-1], edges[1:], strict=True)]
    ranges = pd.cut(pseudo_labels["confidence"], edges, labels=names, include_lowest=True)
    counts = pseudo_labels.groupby([pseudo_labels["label"], ranges], observed=True).size().unstack(fill_value=0)
    return counts.reindex(index=classes, columns=names, fill_value=0).rename_axis(index="label", columns=None)


def plot_pseudo_labels(counts: pd.DataFrame, selection: dict, path: str | Path, title: str) -> None:
    """Stacked horizontal bars: how many pseudo-labels each class got, split by confidence range."""
    font = cjk_font()
    if font:
        plt.rcParams["font.family"] = font
    figure, axes = plt.subplots(figsize=(9, 0.28 * len(counts) + 2))
    left = np.zeros(len(counts))
    colours = plt.get_cmap("viridis")(np.linspace(0.15, 0.9, counts.shape[1]))
    for colour, column in zip(colours, counts.columns, strict=True):
        axes.barh(counts.index, counts[column], left=left, color=colour, label=f"confidence {column}")
        left += counts[column].to_numpy()
    axes.invert_yaxis()  # the classes in the order of the label list
    axes.tick_params(axis="y", labelsize=7)
    axes.set_xlabel("pseudo-labels kept")
    axes.set_title(
        f"{title}\n{selection['kept']} of {selection['candidates']} test images kept: "
        f"{selection['rejected_by_tau']} below tau={selection['tau']}, "
        f"{selection['rejected_by_agreement']} without {selection['min_agreeing_folds']} agreeing folds, "
        f"{selection['dropped_by_cap']} over the per-class cap",
        fontsize=9,
    )
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def inline_images(page: str, folder: str | Path) -> str:
    """``page`` with every ``<img src>`` that names a local file (relative to ``folder``) as a data URI."""

    def embed(match: re.Match) -> str:
        image = Path(folder) / html.unescape(match[2])
        if not image.is_file():
            return match[0]
        mime = mimetypes.guess_type(image.name)[0] or "application/octet-stream"
        return f'{match[1]}"data:{mime};base64,{base64.b64encode(image.read_bytes()).decode()}"'

    return re.sub(r'(<img\s[^>]*?src=)"(?!data:)([^"]+)"', embed, page)


def html_page(title: str, body: str, style: str = PAGE_STYLE) -> str:
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{style}</style></head>\n<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


def table_page(table: pd.DataFrame, title: str) -> str:
    """A table as a standalone HTML page, numbers to three decimals."""
    return html_page(title, table.to_html(index=False, float_format="{:.3f}".format, na_rep="", border=0))


def yaml_page(settings: dict, title: str) -> str:
    """Settings as highlighted YAML in a standalone HTML page."""
    formatter = HtmlFormatter()
    text = yaml.safe_dump(settings, allow_unicode=True, sort_keys=False)
    return html_page(title, highlight(text, YamlLexer(), formatter), PAGE_STYLE + formatter.get_style_defs())
