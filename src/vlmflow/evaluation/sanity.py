"""Can a figure be trusted? Whether a run learned anything (the warnings at the end of a run and atop the
summary), and whether one final model's test score differs from another's by more than the test set's luck
(a paired bootstrap over test images) and the training's (the spread over the fits of final.seeds).

A variant learned nothing when its out-of-fold weighted F1 is within its bootstrap interval of what a
predictor that never looks at the image gets: always the majority label, or labels drawn at the training
labels' frequencies ("chance", whose expected weighted F1 is the sum of the squared class shares). An OCR
variant reads no text when OCR found text in only a small share of its images (the record accounting's OCR
stage counts them).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import bootstrap
from sklearn.metrics import f1_score

# A 95% percentile interval from 1,000 paired resamples of the records; seeded, so a rerun says the same.
INTERVAL_LEVEL = 0.95
RESAMPLES = 1000
SEED = 0
WHAT_TO_CHECK = (
    "check that the image paths point at the images, that the demo font draws the text (fonts-wqy-microhei), "
    "that OCR reads it (results/<variant>/accounting/stages.json), and the learning rate and epochs"
)


def weighted_f1(truth, predicted) -> float:
    return float(f1_score(truth, predicted, average="weighted", zero_division=0))


def weighted_f1_interval(truth: pd.Series, predicted: pd.Series) -> tuple[float, float]:
    """The bootstrap interval of the weighted F1 of ``predicted`` against ``truth`` (records resampled in pairs)."""
    if len(truth) < 2:
        value = weighted_f1(truth, predicted)
        return value, value
    return paired_interval((np.asarray(truth), np.asarray(predicted)), weighted_f1)


def paired_interval(columns: tuple, statistic) -> tuple[float, float]:
    """The percentile bootstrap interval of ``statistic`` over the records, every column resampled alike."""
    result = bootstrap(
        columns,
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=RESAMPLES,
        confidence_level=INTERVAL_LEVEL,
        method="percentile",
        random_state=SEED,
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def majority_weighted_f1(truth: pd.Series) -> float:
    """Weighted F1 of always answering the most frequent label."""
    return weighted_f1(truth, [truth.mode().iloc[0]] * len(truth))


def chance_weighted_f1(truth: pd.Series) -> float:
    """Expected weighted F1 of labels drawn at the labels' own frequencies: each class's precision and recall are
    its share p, so its F1 is p, weighted by p."""
    shares = truth.value_counts(normalize=True)
    return float((shares**2).sum())


def no_image_baselines(truth: pd.Series, predicted: pd.Series, prefix: str) -> dict[str, float]:
    """A predictions' interval and the two predictors that ignore the image, as ``<prefix>_*`` metrics."""
    low, high = weighted_f1_interval(truth, predicted)
    return {
        f"{prefix}_weighted_f1_low": low,
        f"{prefix}_weighted_f1_high": high,
        f"{prefix}_majority_weighted_f1": majority_weighted_f1(truth),
        f"{prefix}_chance_weighted_f1": chance_weighted_f1(truth),
    }


def learned_nothing(variant: str, metrics: dict) -> str | None:
    """A warning when the variant's out-of-fold weighted F1 interval reaches a predictor that ignores the image."""
    low, high = metrics["oof_weighted_f1_low"], metrics["oof_weighted_f1_high"]
    blind = {"majority-class": metrics["oof_majority_weighted_f1"], "chance": metrics["oof_chance_weighted_f1"]}
    reached = [f"{name} {value:.3f}" for name, value in blind.items() if value >= low]
    if not reached:
        return None
    return (
        f"variant {variant} learned nothing: its out-of-fold weighted F1 {metrics['oof_weighted_f1']:.3f} "
        f"(95% interval {low:.3f} to {high:.3f}) reaches a predictor that never looks at the image "
        f"({', '.join(reached)}); {WHAT_TO_CHECK}"
    )


def ocr_text_share(stages: list[dict]) -> float | None:
    """The share of records whose image OCR found text in, from the accounting's OCR stage (None: no OCR)."""
    ocr = next((stage for stage in stages if stage["stage"] == "ocr"), None)
    if ocr is None or not ocr["records_in"]:
        return None
    return ocr["with_text"] / ocr["records_in"]


def unreadable_ocr(variant: str, stages: list[dict], min_share: float) -> str | None:
    """A warning when an OCR variant's images gave OCR text in less than ``min_share`` of them."""
    share = ocr_text_share(stages)
    if share is None or share >= min_share:
        return None
    return (
        f"variant {variant} reads OCR text, but OCR found text in only {share:.0%} of its images "
        f"(ocr.min_text_share {min_share:.0%}): its prompts say (无) for the rest; {WHAT_TO_CHECK}"
    )


def run_warnings(metrics: dict[str, dict], stages: dict[str, list[dict]], min_ocr_text_share: float) -> list[str]:
    """Every warning of the run, per variant in order."""
    found = []
    for variant in metrics:
        found.append(learned_nothing(variant, metrics[variant]))
        found.append(unreadable_ocr(variant, stages[variant], min_ocr_text_share))
    return [warning for warning in found if warning]


DIFFERENCE = "test_weighted_f1_minus_none"


def difference_from_reference(test: pd.DataFrame, reference: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    """A final model's test predictions against the no-step model's (both ``id``, ``predicted``), paired by
    record against the truth file: ``test_weighted_f1_minus_none`` and its interval."""
    return mean_difference_from_reference({0: test}, {0: reference}, truth)


def mean_difference_from_reference(
    tests: dict[int, pd.DataFrame], references: dict[int, pd.DataFrame], truth: pd.DataFrame
) -> dict[str, float]:
    """A retrained model's fits against the no-step model's, by seed (seed s's fit minus the no-step model's
    fit of seed s, each ``id``, ``predicted``), paired by record against the truth file: the mean over seeds of
    the weighted F1 differences, ``test_weighted_f1_minus_none``, and its interval over test images."""
    if sorted(tests) != sorted(references):
        raise ValueError(f"seeds {sorted(tests)} are paired with the no-step model's seeds {sorted(references)}")
    seeds = sorted(tests)
    ids = tests[seeds[0]]["id"]
    true = ids.map(truth.set_index("id")["label"])
    predicted = [tests[seed].set_index("id").loc[ids, "predicted"] for seed in seeds]
    paired = [references[seed].set_index("id").loc[ids, "predicted"] for seed in seeds]
    return mean_paired_difference(true, predicted, paired, DIFFERENCE)


def paired_difference(truth: pd.Series, predicted: pd.Series, reference: pd.Series, prefix: str) -> dict[str, float]:
    """``predicted``'s weighted F1 minus ``reference``'s on the same test records, with the bootstrap interval
    of that difference: the records are resampled once for both, so only which images happen to be in the test
    set varies, not the pairing (``<prefix>``, ``<prefix>_low``, ``<prefix>_high``)."""
    return mean_paired_difference(truth, [predicted], [reference], prefix)


def mean_paired_difference(
    truth: pd.Series, predicted: list[pd.Series], reference: list[pd.Series], prefix: str
) -> dict[str, float]:
    """The mean over pairs (seeds) of ``predicted[i]``'s weighted F1 minus ``reference[i]``'s on the same test
    records, with its bootstrap interval: the records are resampled once for every model, so only which images
    happen to be in the test set varies; with one pair it is ``paired_difference``."""
    truth = np.asarray(truth)
    columns = [np.asarray(values) for values in (*predicted, *reference)]
    pairs = len(predicted)

    def mean_difference(true, *resampled):
        return float(
            np.mean(
                [
                    weighted_f1(true, ours) - weighted_f1(true, theirs)
                    for ours, theirs in zip(resampled[:pairs], resampled[pairs:], strict=True)
                ]
            )
        )

    difference = mean_difference(truth, *columns)
    if len(truth) < 2:
        return {prefix: difference, f"{prefix}_low": difference, f"{prefix}_high": difference}
    low, high = paired_interval((truth, *columns), mean_difference)
    return {prefix: difference, f"{prefix}_low": low, f"{prefix}_high": high}


# How training happens to go: a retrained model is fitted once per seed (final.seeds); the spread of its test
# weighted F1 over the seeds is its range, max minus min, unknown (None) with one seed.
SEED_RANGE = "test_weighted_f1_seed_range"


def seed_spread(weighted_f1_by_seed: dict[int, float]) -> dict:
    """The mean test weighted F1 over a model's seeds, its lowest, highest and range (max - min; None with one
    seed: one fit says nothing of how another would go), and each seed's."""
    values = list(weighted_f1_by_seed.values())
    return {
        "test_weighted_f1": float(np.mean(values)),
        "test_weighted_f1_seed_min": min(values),
        "test_weighted_f1_seed_max": max(values),
        SEED_RANGE: max(values) - min(values) if len(values) > 1 else None,
        "test_weighted_f1_by_seed": {str(seed): value for seed, value in weighted_f1_by_seed.items()},
    }


def across_seeds(
    tests: dict[int, pd.DataFrame], references: dict[int, pd.DataFrame], truth: pd.DataFrame | None
) -> dict:
    """A retrained model over its seeds' fits (``tests``, by seed): its seeds, the mean and spread of their test
    weighted F1 and, given the no-step model's fits (``references``, by the same seeds), the mean difference from
    them with its paired bootstrap interval. Without a truth file, only the seeds."""
    metrics: dict = {"seeds": list(tests), "n": int(len(next(iter(tests.values()))))}  # in final.seeds' order
    if truth is None:
        return metrics
    label = truth.set_index("id")["label"]
    metrics |= seed_spread(
        {seed: weighted_f1(test["id"].map(label), test["predicted"]) for seed, test in tests.items()}
    )
    if references:
        metrics |= mean_difference_from_reference(tests, references, truth)
    return metrics
