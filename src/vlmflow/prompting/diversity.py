"""How alike the training reasons of each class are: the recipe saw the score collapse when reasons were too
similar to each other.

Similarity of two reasons is the cosine of their character unigram-and-bigram count vectors (Chinese has no
spaces; bigrams are the usual word-like unit): 1.0 for the same characters and bigrams in the same proportions,
0.0 for none shared.
Boilerplate shared by every reason of a class ("这张图片显示...") raises it, which is the point.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.metrics.pairwise import cosine_similarity

from vlmflow.prompting.prompts import LABEL_KEY, REASON_KEY

log = logging.getLogger(__name__)

MAX_PER_CLASS = 2000  # pairs grow with the square of a class's size; a seeded sample of this many suffices


def reasons_from_prompts(prompts: pd.DataFrame) -> pd.DataFrame:
    """The (label, reason) of every labelled row of a reason variant's prompt table, read from its JSON target."""
    targets = [json.loads(target) for target in prompts["target"].dropna()]
    return pd.DataFrame(
        {"label": [target[LABEL_KEY] for target in targets], "reason": [target[REASON_KEY] for target in targets]}
    )


def pairwise_similarities(reasons: list[str]) -> np.ndarray:
    """Similarity of every unordered pair of ``reasons`` (length n * (n - 1) / 2)."""
    if len(reasons) < 2:
        return np.empty(0)
    vectors = CountVectorizer(analyzer="char", ngram_range=(1, 2), lowercase=False).fit_transform(reasons)
    matrix = cosine_similarity(vectors)
    return matrix[np.triu_indices(len(reasons), k=1)]


def reason_diversity(reasons: pd.DataFrame, threshold: float, *, seed: int = 0) -> dict:
    """Pairwise similarity statistics per class and overall; a warning per class whose mean is above ``threshold``.

    ``reasons`` has label and reason. Returns a JSON-able report whose top-level numbers suit MLflow metrics.
    """
    per_class = {}
    for label, group in reasons.groupby("label", sort=True):
        texts = group["reason"].astype(str)
        sampled = len(texts) > MAX_PER_CLASS
        if sampled:
            texts = texts.sample(MAX_PER_CLASS, random_state=seed)
        similarities = pairwise_similarities(texts.tolist())
        if not len(similarities):
            continue  # a class of one has no pairs
        per_class[str(label)] = {
            "n": int(len(group)),
            "sampled": sampled,
            "mean": float(similarities.mean()),
            "median": float(np.median(similarities)),
            "p95": float(np.quantile(similarities, 0.95)),
            "max": float(similarities.max()),
            "duplicate_share": float(texts.duplicated(keep=False).mean()),
            "over_threshold": bool(similarities.mean() > threshold),
        }
    over = [label for label, stats in per_class.items() if stats["over_threshold"]]
    for label in over:
        stats = per_class[label]
        log.warning(
            "reasons of class %s are too alike: mean pairwise similarity %.2f > %.2f (%.0f%% exact duplicates); "
            "the recipe saw the score collapse with reasons too similar to each other",
            label,
            stats["mean"],
            threshold,
            100 * stats["duplicate_share"],
        )
    means = [stats["mean"] for stats in per_class.values()]
    weights = [stats["n"] for stats in per_class.values()]
    report = {
        "threshold": threshold,
        "reasons": int(len(reasons)),
        "distinct_reasons": int(reasons["reason"].nunique()),
        "classes": len(per_class),
        "classes_over_threshold": len(over),
        "mean_similarity": float(np.average(means, weights=weights)) if means else 0.0,
        "max_class_mean_similarity": float(max(means, default=0.0)),
        "over_threshold": over,
        "per_class": per_class,
    }
    log.info(
        "reason diversity: mean pairwise similarity %.2f over %d classes (weighted by size), %d above %.2f",
        report["mean_similarity"],
        report["classes"],
        report["classes_over_threshold"],
        threshold,
    )
    return report
