"""Records in = records out + rejected at every stage a record passes: ingest, OCR, prompts, folds.

Ingestion rejects bad records, each with its reason (``results/data/<split>_rejected.csv``). The later
stages reject none: they keep every record and flag the ones that go on degraded, so that a skip is
never silent: OCR could not read the image or found no text in it (the prompt then says 无), a prompt
is above ``prompt.warn_chars``, a class's only record is held out by the one fold that trains without
it. This module counts each stage, fails naming any record that went missing between stages, and lists
every rejected or flagged record, with its stage and reason, in one table.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

log = logging.getLogger(__name__)

ISSUE_COLUMNS = ["stage", "split", "id", "position", "image", "outcome", "reason"]


class RecordsLostError(RuntimeError):
    """A stage's output lacks records its input had and it did not reject."""


@dataclass(frozen=True)
class IngestedSplit:
    """One split's ingestion outputs: the clean records, the rejected ones and the counts."""

    records: pd.DataFrame
    rejected: pd.DataFrame
    counts: dict

    @classmethod
    def read(cls, records: str | Path, rejected: str | Path, counts: str | Path) -> IngestedSplit:
        return cls(
            pd.read_parquet(records),
            pd.read_csv(rejected, dtype=str, keep_default_na=False),
            json.loads(Path(counts).read_text(encoding="utf-8")),
        )


def read_ingested(records: list[str], rejected: list[str], counts: list[str]) -> dict[str, IngestedSplit]:
    """Each split's ingestion outputs by split, the name of its records file (``results/data/<split>.parquet``);
    the three lists name one split's files at the same place."""
    return {
        Path(split_records).stem: IngestedSplit.read(split_records, split_rejected, split_counts)
        for split_records, split_rejected, split_counts in zip(records, rejected, counts, strict=True)
    }


@dataclass
class StageCount:
    stage: str
    split: str
    records_in: int
    records_out: int
    issues: pd.DataFrame  # ISSUE_COLUMNS, one row per rejected or flagged record
    extra: dict = field(default_factory=dict)  # a stage's own counts (OCR: records whose image had text)

    def summary(self) -> dict:
        outcome = self.issues["outcome"]
        kinds = self.issues["reason"].str.split(":").str[0]
        return {
            "stage": self.stage,
            "split": self.split,
            "records_in": self.records_in,
            "records_out": self.records_out,
            "rejected": int((outcome == "rejected").sum()),
            "flagged": int((outcome == "flagged").sum()),
            "by_reason": {str(kind): int(n) for kind, n in kinds.value_counts().sort_index().items()},
            **self.extra,
        }


def _flagged(stage: str, records: pd.DataFrame, reasons: pd.Series) -> pd.DataFrame:
    """Issue rows flagging ``records`` (id, split, image_path) where ``reasons`` (aligned with them) is set."""
    chosen = records[reasons.notna().to_numpy()]
    return pd.DataFrame(
        {
            "stage": stage,
            "split": chosen["split"].to_numpy(),
            "id": chosen["id"].to_numpy(),
            "position": "",
            "image": chosen["image_path"].to_numpy(),
            "outcome": "flagged",
            "reason": reasons.dropna().to_numpy(),
        },
        columns=ISSUE_COLUMNS,
    )


def _check_none_lost(stage: str, records: pd.DataFrame, out_ids: pd.Series) -> None:
    lost = sorted(set(records["id"]) - set(out_ids))
    if lost:
        shown = ", ".join(lost[:20]) + (f" and {len(lost) - 20} more" if len(lost) > 20 else "")
        raise RecordsLostError(
            f"stage {stage}: {len(lost)} record(s) went in and neither came out nor were rejected: {shown}; "
            "a stage must keep a record or reject it with its reason"
        )


def ingest_count(split: str, ingested: IngestedSplit) -> StageCount:
    """Ingestion's own counts, checked against the tables it wrote."""
    counts, records, rejected = ingested.counts, ingested.records, ingested.rejected
    written = {"records_in": len(records) + len(rejected), "records_out": len(records), "rejected": len(rejected)}
    if any(counts[key] != value for key, value in written.items()):
        raise RecordsLostError(
            f"stage ingest ({split}): the counts {counts} disagree with the tables "
            f"({len(records)} records, {len(rejected)} rejected); rerun ingest_records"
        )
    issues = pd.DataFrame(
        {
            "stage": "ingest",
            "split": split,
            "id": rejected["id"],
            "position": rejected["record"],
            "image": "",
            "outcome": "rejected",
            "reason": rejected["reason"],
        },
        columns=ISSUE_COLUMNS,
    )
    # Kept records ingestion warned about (an unreadable EXIF block: used unrotated).
    flagged = pd.DataFrame(counts.get("flagged", []), columns=["id", "position", "image", "reason"])
    flagged = flagged.assign(stage="ingest", split=split, outcome="flagged")[ISSUE_COLUMNS]
    issues = pd.concat([issues, flagged], ignore_index=True) if len(flagged) else issues
    extra = {"exact_duplicates": counts["exact_duplicates"]} if "exact_duplicates" in counts else {}
    return StageCount("ingest", split, counts["records_in"], len(records), issues, extra)


def ocr_count(records: pd.DataFrame, ocr: pd.DataFrame) -> StageCount:
    """Every record goes on; one whose image OCR could not read, or read no text from, is flagged."""
    by_image = ocr.drop_duplicates("image_sha256").set_index("image_sha256")
    _check_none_lost("ocr", records, records.loc[records["image_sha256"].isin(by_image.index), "id"])
    error = records["image_sha256"].map(by_image["error"] if "error" in by_image else {}).fillna("")
    text = records["image_sha256"].map(by_image["text"]).fillna("")
    reasons = pd.Series(None, index=records.index, dtype=object)
    reasons[text.str.strip() == ""] = "no_text: OCR found no text in the image; the prompt says (无)"
    failed = error != ""
    reasons[failed] = "ocr_failed: OCR could not read the image (" + error[failed] + "); the prompt says (无)"
    with_text = int(((text.str.strip() != "") & ~failed).sum())
    flagged = _flagged("ocr", records, reasons)
    return StageCount("ocr", "all", len(records), len(records), flagged, {"with_text": with_text})


def prompt_count(variant: str, records: pd.DataFrame, prompts: pd.DataFrame, warn_chars: int) -> StageCount:
    """Every record gets one prompt (the hard limit fails the prompt rule); long prompts are flagged."""
    stage = f"prompts/{variant}"
    _check_none_lost(stage, records, prompts["id"])
    length = records["id"].map(prompts.drop_duplicates("id").set_index("id")["n_chars"])
    reasons = pd.Series(None, index=records.index, dtype=object)
    long = length > warn_chars
    reasons[long] = (
        "long_prompt: "
        + length[long].astype(str)
        + f" characters, above prompt.warn_chars = {warn_chars} (the recipe saw prompts over ~2,500 hurt)"
    )
    return StageCount(stage, "all", len(records), len(prompts), _flagged(stage, records, reasons))


def folds_count(train: pd.DataFrame, folds: pd.DataFrame, report: dict) -> StageCount:
    """Every training record gets a fold; the only records of a class are flagged (see vlmflow.data.folds)."""
    _check_none_lost("folds", train, folds["id"])
    reasons = pd.Series(None, index=train.index, dtype=object)
    for label, missing in report.get("classes_missing_from_a_training_part", {}).items():
        reasons[train["id"].isin(missing["ids"]).to_numpy()] = (
            f"class_not_trained: fold {missing['fold']} holds out every record of class {label}, so its model "
            "never sees the class and this out-of-fold prediction cannot be it; add records, or merge or drop the class"
        )
    return StageCount("folds", "train", len(train), len(folds), _flagged("folds", train, reasons))


def account_records(
    ingested: dict[str, IngestedSplit],
    ocr: pd.DataFrame | None,
    variant: str,
    prompts: pd.DataFrame,
    folds: pd.DataFrame,
    folds_report: dict,
    warn_chars: int,
) -> tuple[list[dict], pd.DataFrame]:
    """Each stage's counts (``records_in == records_out + rejected``) and every rejected or flagged record.

    ``ingested`` maps each split to its ingestion outputs; ``ocr`` is the OCR table, None when the variant's
    prompts read no OCR text; ``prompts`` is the variant's prompt table.
    """
    records = pd.concat([split.records.assign(split=name) for name, split in ingested.items()], ignore_index=True)
    counts = [ingest_count(name, split) for name, split in ingested.items()]
    if ocr is not None:
        counts.append(ocr_count(records, ocr))
    counts.append(prompt_count(variant, records, prompts, warn_chars))
    counts.append(folds_count(records[records["split"] == "train"], folds, folds_report))
    stages = [count.summary() for count in counts]
    for stage in stages:
        if stage["records_in"] != stage["records_out"] + stage["rejected"]:
            raise RecordsLostError(f"stage {stage['stage']} ({stage['split']}): records in != out + rejected: {stage}")
        log.info(
            "%s (%s): %d in, %d out, %d rejected, %d flagged %s",
            stage["stage"],
            stage["split"],
            stage["records_in"],
            stage["records_out"],
            stage["rejected"],
            stage["flagged"],
            stage["by_reason"] or "",
        )
    issues = pd.concat([count.issues for count in counts if len(count.issues)] or [pd.DataFrame(columns=ISSUE_COLUMNS)])
    return stages, issues.reset_index(drop=True)


def write_accounting(
    stages: list[dict], issues: pd.DataFrame, stages_path: str | Path, issues_path: str | Path
) -> None:
    """``account_records``' result: the stages' counts as JSON (``{"stages": [...]}``), the issues as CSV."""
    Path(stages_path).write_text(json.dumps({"stages": stages}, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    issues.to_csv(issues_path, index=False)
