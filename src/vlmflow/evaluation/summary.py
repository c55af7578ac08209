"""The ablation summary: per variant, what each step of the recipe gave, measured.

One row per variant: out-of-fold weighted F1 (the competition metric on the training labels), how well
label correction found the planted flips (demo truth), and the test weighted F1 of every final model
(the fold ensemble, the averaged fold model, and a retrained model per step combination: the mean over its
final.seeds fits, with their range), and each final model's difference from the no-step model with the
marks that say whether it clears the test set's luck (``*``) and the training's too (``gain``, ``loss``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from vlmflow.evaluation.sanity import SEED_RANGE, run_warnings  # noqa: E402
from vlmflow.recipe.steps import (  # noqa: E402
    AVERAGE_FOLDS,
    FOLD_ENSEMBLE,
    NO_STEPS,
    retrained_model_name,
    retrained_steps,
    step_set,
)

TEST_F1 = "test_weighted_f1"
# A final model's test weighted F1 minus the no-step model's, with its paired bootstrap interval
# (vlmflow.evaluation.sanity: evaluate_final_model's for the averaged fold model, evaluate_across_seeds' mean
# over seeds for a retrained one).
VS_NONE = "test_weighted_f1_minus_none"
NO_STEP_MODEL = retrained_model_name(NO_STEPS)
# A final model's exact-match accuracy on the held-out general records (vlmflow.evaluation.general_ability).
GENERAL = "general_accuracy"
TITLES = {
    "variant": "variant",
    "oof_weighted_f1": "out-of-fold weighted F1",
    "noise_flagged": "labels flagged",
    "noise_precision": "label-noise precision",
    "noise_recall": "label-noise recall",
    "submitted": "submission from",
}


def _seed_range_title(name: str) -> str:
    return "seed range (max - min): " + _model_title(name)


def _difference_title(name: str) -> str:
    return "vs no step, 95% interval: " + _model_title(name)


def _final_model_title(name: str) -> str:
    if name == FOLD_ENSEMBLE:
        return "test wF1: fold ensemble"
    if name == AVERAGE_FOLDS:
        return "test wF1: averaged folds"
    return f"test wF1: retrain, {retrained_steps(name).replace('_', ' + ')}"


def _model_title(name: str) -> str:
    """A final model as the notes and column titles name it: ``retrain, correction + pseudo``."""
    return _final_model_title(name).removeprefix("test wF1: ")


def ablation_row(variant: str, metrics: dict, correction: dict, final_models: dict[str, dict], submitted: str) -> dict:
    """One variant's row; ``final_models`` maps final-model names to their test metrics (in column order)."""
    row = {
        "variant": variant,
        "oof_weighted_f1": metrics["oof_weighted_f1"],
        "noise_flagged": correction.get("flagged"),
        "noise_precision": correction.get("precision"),
        "noise_recall": correction.get("recall"),
        f"{TEST_F1}.{FOLD_ENSEMBLE}": metrics.get(TEST_F1),
    }
    row |= {f"{TEST_F1}.{name}": model.get(TEST_F1) for name, model in final_models.items()}
    row |= seed_range_columns(final_models)
    reference = final_models.get(NO_STEP_MODEL, {})
    row |= {
        f"{VS_NONE}.{name}": difference_text(model, reference)
        for name, model in final_models.items()
        if VS_NONE in model
    }
    return row | {"submitted": submitted}


def difference_text(metrics: dict, reference: dict | None = None) -> str:
    """``+0.017 [-0.020, +0.051]``: the difference from the no-step model and its 95% interval over test sets;
    ``*`` marks one whose interval leaves out 0, a difference the test set's luck alone does not explain, and
    ``gain`` (or ``loss``) one that the training's luck does not explain either (``counts_as``)."""
    low, high = metrics[f"{VS_NONE}_low"], metrics[f"{VS_NONE}_high"]
    mark = " *" if low > 0 or high < 0 else ""
    counts = counts_as(metrics, reference or {})
    return f"{metrics[VS_NONE]:+.3f} [{low:+.3f}, {high:+.3f}]{mark}{f' {counts}' if counts else ''}"


# How training happens to go (final.seeds): a retrained model's columns are the mean over its seeds' fits, and
# its seed range (max - min of their test weighted F1). A difference from the no-step model counts only when it
# clears both sources of noise.
GAIN_RULE = (
    "a difference counts (gain, or loss when negative) only when it clears both sources of noise: its 95% "
    "interval over test images leaves out 0 (*) and its size is larger than the seed range of both models, "
    "the one compared and the no-step model (|difference| > max(range, no-step range)); "
    "a model fitted once (the averaged fold model, or one seed in final.seeds) has no known range and is never marked"
)


def counts_as(metrics: dict, reference: dict) -> str | None:
    """``gain`` or ``loss`` when a final model's difference from the no-step model clears both sources of noise
    (GAIN_RULE): its bootstrap interval leaves out 0, and its absolute value exceeds the seed range of both the
    model (``metrics``) and the no-step model (``reference``); None otherwise, and when either range is unknown
    (one fit)."""
    difference, low, high = metrics[VS_NONE], metrics[f"{VS_NONE}_low"], metrics[f"{VS_NONE}_high"]
    ranges = [metrics.get(SEED_RANGE), reference.get(SEED_RANGE)]
    if any(spread is None for spread in ranges) or not (low > 0 or high < 0):
        return None
    if abs(difference) <= max(ranges):
        return None
    return "gain" if difference > 0 else "loss"


def seed_range_columns(final_models: dict[str, dict]) -> dict[str, float]:
    """The seed range of each retrained model fitted with more than one seed, as table columns."""
    return {
        f"{SEED_RANGE}.{name}": model[SEED_RANGE]
        for name, model in final_models.items()
        if model.get(SEED_RANGE) is not None
    }


def difference_metrics(final_models: dict[str, dict[str, dict]]) -> dict[str, float]:
    """For the MLflow summary run, per variant and final model: the difference from the no-step model, its
    interval's ends, and whether it counts (1 gain, -1 loss, 0 neither), as ``<variant>.<metric>.<model>``."""
    metrics = {}
    for variant, models in final_models.items():
        reference = models.get(NO_STEP_MODEL, {})
        for name, model in models.items():
            if VS_NONE not in model:
                continue
            for key in (VS_NONE, f"{VS_NONE}_low", f"{VS_NONE}_high"):
                metrics[f"{variant}.{key}.{name}"] = float(model[key])
            counts = counts_as(model, reference)
            metrics[f"{variant}.difference_counts.{name}"] = {"gain": 1.0, "loss": -1.0}.get(counts, 0.0)
    return metrics


def seed_points(final_models: dict[str, dict[str, dict]]) -> dict[tuple[str, str], list[float]]:
    """For the chart: per (variant, table column), each seed's test weighted F1 of a retrained model fitted with
    more than one seed."""
    return {
        (variant, f"{TEST_F1}.{name}"): list(model["test_weighted_f1_by_seed"].values())
        for variant, models in final_models.items()
        for name, model in models.items()
        if len(model.get("test_weighted_f1_by_seed", {})) > 1
    }


def seeds_footnote(table: pd.DataFrame) -> str:
    """What the seed columns and the gain mark mean, or that one seed leaves the seed spread unknown."""
    if not any(column.startswith(f"{VS_NONE}.") for column in table):
        return ""
    if any(column.startswith(f"{SEED_RANGE}.") for column in table):
        return (
            "\nretrain: the mean over the final.seeds fits (seed s compared with the no-step model's seed s; the "
            "averaged fold model with the first seed's); seed range: their max - min test weighted F1. "
            f"gain / loss: {GAIN_RULE}.\n"
        )
    return (
        "\nOne seed per retrained model (final.seeds): how much a model's score moves from one training run to "
        "the next is unknown, so no difference is marked as a gain; * says only that the test set's luck does "
        f"not explain it. With 2 or more seeds, {GAIN_RULE}.\n"
    )


def difference_whiskers(final_models: dict[str, dict[str, dict]]) -> dict[tuple[str, str], tuple[float, float]]:
    """For the chart: per (variant, table column), how far below and above a final model's bar its difference
    from the no-step model could lie (the 95% interval, drawn around the bar's top)."""
    return {
        (variant, f"{TEST_F1}.{name}"): (
            model[VS_NONE] - model[f"{VS_NONE}_low"],
            model[f"{VS_NONE}_high"] - model[VS_NONE],
        )
        for variant, models in final_models.items()
        for name, model in models.items()
        if VS_NONE in model
    }


def ablation_table(rows: list[dict]) -> pd.DataFrame:
    """The rows as a table, columns without any value (no truth file) dropped."""
    return pd.DataFrame(rows).dropna(axis=1, how="all")


def summary_metrics(table: pd.DataFrame) -> dict[str, float]:
    """Every number of the table as an MLflow metric named ``<variant>.<column>`` (empty cells skipped)."""
    return {
        f"{row['variant']}.{key}": float(value)
        for row in table.to_dict("records")
        for key, value in row.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not np.isnan(value)
    }


def with_titles(table: pd.DataFrame) -> pd.DataFrame:
    """The table with readable column titles, as the Markdown summary and the report show it."""
    titles = {
        column: TITLES.get(column)
        or (_difference_title(column.removeprefix(f"{VS_NONE}.")) if column.startswith(f"{VS_NONE}.") else None)
        or (_seed_range_title(column.removeprefix(f"{SEED_RANGE}.")) if column.startswith(f"{SEED_RANGE}.") else None)
        or (_general_title(column.removeprefix(f"{GENERAL}.")) if column.startswith(f"{GENERAL}.") else None)
        or _final_model_title(column.removeprefix(f"{TEST_F1}."))
        for column in table
    }
    return table.rename(columns=titles)


def _general_title(name: str) -> str:
    return "general acc: " + _model_title(name)


def with_general_ability(row: dict, general: dict[str, dict]) -> dict:
    """A variant's row with each final model's accuracy on the held-out general records (``general`` maps
    final-model names to their general_metrics.json)."""
    return row | {f"{GENERAL}.{name}": metrics["accuracy"] for name, metrics in general.items()}


def general_ability_note(
    general: dict[str, dict[str, dict]], mixed: dict[str, dict[str, int]], base: dict | None = None
) -> str:
    """The footnote of the general-ability columns: what was measured on how many records, which final models
    trained with general data mixed in, and the untuned base model's accuracy for reference. ``general``:
    variant -> final model -> general metrics; ``mixed``: variant -> retrained model -> general records its fit
    mixed in (training_set.json); ``base``: the base model's general metrics. Empty without any measure."""
    if not any(general.values()):
        return ""
    sizes = sorted({metrics["n"] for models in general.values() for metrics in models.values()})
    with_mixing, without = {}, []
    for variant, models in general.items():
        for name in models:
            if mixed.get(variant, {}).get(name):
                with_mixing.setdefault(name, []).append(f"{variant}: {mixed[variant][name]}")
            elif name not in without:
                without.append(name)

    lines = [
        f"\ngeneral acc: exact-match accuracy (NFKC, stripped, case-folded) of each final model's greedy answers to "
        f"the {' or '.join(map(str, sizes))} held-out general records (final.general_data.held_out), which no fit "
        "trains on; a retrained model's is its first seed's fit, the one submitted.\n"
    ]
    if with_mixing:
        listed = "; ".join(f"{_model_title(name)} ({', '.join(counts)})" for name, counts in with_mixing.items())
        lines.append(f"- trained with general data mixed in (general records in each variant's fit): {listed}\n")
    if without:
        averaged = " (the weight average of the fold models, which train without it)"
        listed = "; ".join(_model_title(name) + (averaged if name == AVERAGE_FOLDS else "") for name in without)
        lines.append(f"- trained without general data: {listed}\n")
    if base:
        score = f"{base['accuracy']:.3f} ({base['correct']} of {base['n']})"
        lines.append(f"- the untuned base model, for reference: {score}\n")
    return "".join(lines)


# What a step that changed no record did (idle_steps_note).
IDLE_STEP = {"correction": "correction applied no label", "pseudo": "no pseudo-label was kept"}


def idle_steps_note(corrections: dict[str, dict], fits: dict[str, dict[str, dict]]) -> str:
    """Retrained models whose steps changed no record: correction applied no label and no pseudo-label was kept,
    so they trained on the no-step model's records and their difference from it is the training's luck alone.
    ``corrections``: variant -> correction_scores.json; ``fits``: variant -> retrained model -> training_set.json
    of its first seed's fit. Empty when every step changed something."""
    idle = []
    for variant, models in fits.items():
        applied = corrections.get(variant, {}).get("applied") or 0
        for name, training_set in models.items():
            steps = step_set(retrained_steps(name))
            if not steps or ("correction" in steps and applied) or ("pseudo" in steps and training_set["pseudo"]):
                continue
            idle.append(f"{_model_title(name)} ({variant}: {' and '.join(IDLE_STEP[step] for step in steps)})")
    if not idle:
        return ""
    return (
        f"\nSteps that changed nothing: {'; '.join(idle)}. These fits trained on the no-step model's records, so "
        "a difference from it is the training's luck alone. The fold models were not sure enough: "
        "results/<variant>/label_corrections.csv and pseudo_labels.json show what they proposed; "
        "correction.min_confidence and pseudo.tau set the bar.\n"
    )


def warnings_markdown(warnings: list[str]) -> str:
    """The run's warnings (vlmflow.evaluation.sanity) as a block to put above the table; empty without any."""
    if not warnings:
        return ""
    return "## Warnings\n\n" + "".join(f"- **WARNING**: {warning}\n" for warning in warnings) + "\n"


def to_markdown(table: pd.DataFrame) -> str:
    markdown = with_titles(table).to_markdown(index=False, floatfmt=".3f") + "\n"
    if any(column.startswith(f"{VS_NONE}.") for column in table):
        markdown += (
            "\nvs no step: test weighted F1 minus the model retrained with no step, on the same test images; "
            "in brackets its 95% paired bootstrap interval over test sets; * where that interval leaves out 0.\n"
        )
    return markdown + seeds_footnote(table)


def plot_ablation(
    table: pd.DataFrame,
    path: str | Path,
    whiskers: dict[tuple[str, str], tuple[float, float]] | None = None,
    points: dict[tuple[str, str], list[float]] | None = None,
) -> None:
    """Grouped bars per variant: out-of-fold weighted F1, then each final model's test weighted F1 (a retrained
    model's mean over its seeds), with the 95% interval of its difference from the no-step model as whiskers
    where there is one, and each seed's fit as a dot (``points``)."""
    columns = ["oof_weighted_f1", *[column for column in table if column.startswith(f"{TEST_F1}.")]]
    names = ["out-of-fold"] + [_model_title(column.removeprefix(f"{TEST_F1}.")) for column in columns[1:]]
    width = 0.8 / len(columns)
    positions = np.arange(len(table))
    figure, axes = plt.subplots(figsize=(max(6, 2.2 * len(table) * len(columns) / 3), 4.5))
    for index, (column, name) in enumerate(zip(columns, names, strict=True)):
        values = table[column].astype(float).fillna(0).to_numpy()
        bars = axes.bar(positions + index * width, values, width, label=name)
        axes.bar_label(bars, fmt="%.2f", fontsize=7)
        spans = [(whiskers or {}).get((variant, column)) for variant in table["variant"]]
        if any(spans):
            errors = np.array([span or (0.0, 0.0) for span in spans]).T
            axes.errorbar(positions + index * width, values, yerr=errors, fmt="none", ecolor="black", capsize=3)
        seeds = [(points or {}).get((variant, column)) for variant in table["variant"]]
        plot_seed_points(axes, positions + index * width, seeds)
    axes.set_xticks(positions + width * (len(columns) - 1) / 2, table["variant"])
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("weighted F1")
    title = "Ablation: out-of-fold and test weighted F1 per variant and final model"
    if whiskers:
        title += "\nwhiskers: 95% interval of the difference from the no-step model"
    if points:
        title += "\ndots: each seed's fit of a retrained model (its bar: their mean)"
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_seed_points(axes, positions: np.ndarray, values: list[list[float] | None]) -> None:
    """Each seed's test weighted F1 as a dot over its model's bar (the bar is their mean)."""
    for position, seeds in zip(positions, values, strict=True):
        if seeds:
            axes.scatter([position] * len(seeds), seeds, s=12, color="black", zorder=3)


@dataclass(frozen=True)
class AblationSummary:
    """The summary of the whole run: its table, its Markdown (warnings, table and notes), its warnings, and the
    final models' metrics (variant -> final model -> metrics) its chart and MLflow metrics draw on."""

    table: pd.DataFrame
    markdown: str
    warnings: list[str]
    final_models: dict[str, dict[str, dict]]

    def metrics(self) -> dict[str, float]:
        """The MLflow metrics of the summary run: the table's numbers and each final model's difference."""
        return summary_metrics(self.table) | difference_metrics(self.final_models)

    def write(self, table: str | Path, markdown: str | Path, warnings: str | Path, chart: str | Path) -> None:
        """The table as CSV, the Markdown, the warnings one a line (the Snakefile's onsuccess prints them last)
        and the bar chart."""
        self.table.to_csv(table, index=False)
        Path(markdown).write_text(self.markdown, encoding="utf-8")
        with open(warnings, "w", encoding="utf-8") as listed:
            listed.writelines(f"WARNING: {warning}\n" for warning in self.warnings)
        plot_ablation(self.table, chart, difference_whiskers(self.final_models), seed_points(self.final_models))


def summarize_ablation(
    variants: list[str],
    metrics: dict[str, dict],
    accounting: dict[str, dict],
    corrections: dict[str, dict],
    final_models: dict[str, dict[str, dict]],
    submitted: dict[str, str],
    general: dict[str, dict[str, dict]],
    first_fits: dict[str, dict[str, dict]],
    base_general: dict | None,
    min_ocr_text_share: float,
) -> AblationSummary:
    """The ablation summary from the run's results (``vlmflow.evaluation.results`` reads them), each keyed by
    variant: ``metrics``, ``accounting`` (stages.json), ``corrections`` (correction_scores.json); variant ->
    final model -> ``final_models`` (test metrics, a retrained model's across its seeds), ``general`` (general
    ability), ``first_fits`` (training_set.json of a retrained model's first seed's fit); ``submitted``: the
    final model each variant submits; ``base_general``: the untuned base model's general ability, or None."""
    stages = {variant: report["stages"] for variant, report in accounting.items()}
    warnings = run_warnings(metrics, stages, min_ocr_text_share)
    rows = [
        ablation_row(variant, metrics[variant], corrections[variant], final_models[variant], submitted[variant])
        for variant in variants
    ]
    table = ablation_table([with_general_ability(row, general[row["variant"]]) for row in rows])
    # variant -> retrained model -> general records its first seed's fit mixed in
    mixed = {
        variant: {name: fit["general_records"] for name, fit in fits.items()} for variant, fits in first_fits.items()
    }
    markdown = (
        warnings_markdown(warnings)
        + to_markdown(table)
        + idle_steps_note(corrections, first_fits)
        + general_ability_note(general, mixed, base_general)
    )
    return AblationSummary(table, markdown, warnings, final_models)
