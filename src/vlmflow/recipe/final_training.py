"""The final model's training set: the recipe's steps combined, then shaped before the fit.

A step combination names what the final model trains on: ``none`` (the labels as given),
``correction`` (the corrected labels), ``pseudo`` (given labels plus confident test pseudo-labels) or
``correction_pseudo``. Pseudo-labels come in rounds (Noisy-Student style): round 1 uses the fold models'
pseudo-labels, round n the pseudo-labels of round n-1's retrained model. Shaping then oversamples
classes below a floor and mixes in a share of general instruction records.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from vlmflow.data.labels import Label, load_labels
from vlmflow.prompting.general_data import read_general_records, sample_general_records
from vlmflow.prompting.prompts import build_prompt_table, read_prompt_inputs
from vlmflow.prompting.variants import PromptVariant
from vlmflow.recipe.pseudo import pseudo_training_records

log = logging.getLogger(__name__)

GIVEN_SOURCE = "train"


def final_training_records(
    train_records: pd.DataFrame, pseudo_selected: pd.DataFrame | None = None, test_records: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The training records (given or corrected labels) plus pseudo-labelled test records, with a ``source``."""
    records = train_records.assign(source=GIVEN_SOURCE)
    if pseudo_selected is not None and len(pseudo_selected):
        pseudo = pseudo_training_records(pseudo_selected, test_records, train_ids=records["id"])
        records = pd.concat([records, pseudo], ignore_index=True)
    return records.assign(split="train")


def balance_classes(prompts: pd.DataFrame, labels: pd.Series, floor: int, seed: int) -> tuple[pd.DataFrame, dict]:
    """Oversample every class with fewer than ``floor`` records up to ``floor``, repeating its records.

    Repeats are drawn with replacement from the class's own records (seeded), so a class of 1 becomes
    ``floor`` copies of it. ``labels`` is aligned with ``prompts``. Returns the table and counts per class.
    """
    before = labels.value_counts()
    extra = []
    for label, count in before.items():
        if count < floor:
            members = prompts[(labels == label).to_numpy()]
            extra.append(members.sample(floor - count, replace=True, random_state=seed))
    balanced = pd.concat([prompts, *extra], ignore_index=True) if extra else prompts.reset_index(drop=True)
    report = {
        "class_floor": floor,
        "oversampled_records": int(sum(len(part) for part in extra)),
        "per_class_before": {str(label): int(count) for label, count in before.items()},
        "per_class_after": {str(label): max(int(count), floor) for label, count in before.items()},
    }
    if extra:
        log.info(
            "class floor %d: %d repeated record(s) added to %d class(es)",
            floor,
            report["oversampled_records"],
            len(extra),
        )
    return balanced, report


def build_final_training_set(
    records: pd.DataFrame,
    ocr_text: dict[str, str],
    variant: PromptVariant,
    labels: list[Label],
    *,
    class_floor: int,
    general_records: list[dict],
    general_ratio: float,
    seed: int,
    **prompt_options,
) -> tuple[pd.DataFrame, list[dict], dict]:
    """Prompts and targets of the final fit (balanced), the sampled general records, and a report.

    Prompts are built as ``build_prompts`` builds them (``ocr_text`` keyed by image sha256;
    ``prompt_options``: length limits, teacher reasons and descriptions), so the final model trains on
    the prompts it is scored with. Targets are rebuilt from the records' (possibly corrected or pseudo)
    labels, so a reason variant's answer agrees with its label.
    """
    prompts = build_prompt_table(records, ocr_text, variant, labels, **prompt_options)
    prompts["source"] = records["source"].to_numpy()
    balanced, balance = balance_classes(prompts, records["label"].reset_index(drop=True), class_floor, seed)
    general = sample_general_records(general_records, len(balanced), general_ratio, seed) if general_records else []
    report = {
        "records": len(records),
        "given_or_corrected": int((records["source"] == GIVEN_SOURCE).sum()),
        "pseudo": int((records["source"] != GIVEN_SOURCE).sum()),
        **balance,
        "classification_records": len(balanced),
        "general_records": len(general),
        "general_ratio": general_ratio,
    }
    log.info(
        "final training set: %d given/corrected + %d pseudo records, %d after balancing, %d general",
        report["given_or_corrected"],
        report["pseudo"],
        len(balanced),
        len(general),
    )
    return balanced, general, report


def final_training_set_from_files(
    *,
    records: str,
    test_records: str,
    pseudo_labels: str | list,
    ocr: str | list,
    teacher_reasons: str | list,
    teacher_descriptions: str | list,
    general: list[str],
    labels: str,
    variant: dict,
    class_floor: int,
    general_format: str,
    general_ratio: float,
    seed: int,
    warn_chars: int,
    max_chars: int,
) -> tuple[pd.DataFrame, list[dict], dict]:
    """``build_final_training_set`` from rule ``build_final_training_set``'s files and params, by their names: the
    training records (given or corrected labels), the round's pseudo-labels (empty: none) with the test records
    they name, the prompt inputs as ``build_prompts`` reads them (empty: the variant reads none), the general data
    (empty: none) in ``general_format``, the labels file and the variant's settings."""
    test = pd.read_parquet(test_records)
    pseudo = pd.read_csv(pseudo_labels) if pseudo_labels else None
    training = final_training_records(pd.read_parquet(records), pseudo, test)
    return build_final_training_set(
        training,
        variant=PromptVariant.from_config(variant),
        labels=load_labels(labels),
        class_floor=class_floor,
        general_records=read_general_records(general[0], general_format) if general else [],
        general_ratio=general_ratio,
        seed=seed,
        warn_chars=warn_chars,
        max_chars=max_chars,
        # as build_prompts reads them, so the final model trains on the prompts it is scored with
        **read_prompt_inputs(ocr, teacher_reasons, teacher_descriptions),
    )


def write_final_training_set(
    prompts: pd.DataFrame,
    general: list[dict],
    report: dict,
    prompts_path: str | Path,
    general_path: str | Path,
    report_path: str | Path,
) -> None:
    """The final fit's prompts (Parquet), its sampled general records and its report (JSON)."""
    prompts.to_parquet(prompts_path, index=False)
    Path(general_path).write_text(json.dumps(general, ensure_ascii=False, indent=1), encoding="utf-8")
    Path(report_path).write_text(json.dumps(report, ensure_ascii=False, indent=2), encoding="utf-8")
