"""Prompt variants: switches that compose onto the recipe's baseline prompt, and the training targets.

A variant is a set of switches (label descriptions, OCR text, an image description, reason output, system
prompt). Every record gets one prompt and, when labelled, one target; the tables export to LLaMA-Factory's
sharegpt format. Reasons and descriptions come from a teacher model when one was asked (``vlmflow.prompting.teacher``),
else from deterministic templates.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from vlmflow.data.labels import PROMPT_HEAD, Label, baseline_prompt, described_prompt
from vlmflow.prompting.variants import PromptVariant

log = logging.getLogger(__name__)

REASON_KEY = "理由"
LABEL_KEY = "所属类别"
PROMPT_COLUMNS = ["id", "split", "image_path", "image_sha256", "system", "prompt", "target", "n_chars"]


class PromptTooLongError(ValueError):
    """A prompt is over the hard character limit (the recipe saw long prompts hurt)."""


# A reason source maps (gold label, OCR text, length limit) to a short reason. Teachers plug in here.
ReasonSource = Callable[[Label, str, int], str]


def template_reason(label: Label, ocr_text: str, max_chars: int = 50) -> str:
    """A deterministic reason from the label's description and the OCR evidence (no teacher model)."""
    evidence = " ".join(ocr_text.split()[:3])
    description = label.description or label.name
    reason = f"图中有“{evidence}”,{description}" if evidence else f"图中几乎没有文字,{description}"
    return reason[:max_chars]


def template_cot_reason(label: Label, ocr_text: str, max_chars: int = 80) -> str:
    """A deterministic step-by-step analysis (a cot variant without a teacher): what the image shows, what
    points to the class, the conclusion."""
    evidence = " ".join(ocr_text.split()[:3])
    seen = f"图中可见文字“{evidence}”" if evidence else "图中几乎没有文字"
    basis = label.description or label.name
    return f"第一步,{seen};第二步,{basis};第三步,因此属于{label.name}。"[:max_chars]


def template_description(ocr_text: str, max_chars: int = 150) -> str:
    """A deterministic stand-in for a teacher's description (no teacher configured): what text the image shows."""
    text = " ".join(ocr_text.split())
    return (f"一张含有文字的图片,可见文字:{text}" if text else "一张几乎没有文字的图片")[:max_chars]


def build_prompt(variant: PromptVariant, labels: list[Label], ocr_text: str, description: str = "") -> str:
    prompt = described_prompt(labels) if variant.label_descriptions else baseline_prompt(labels)
    if variant.describe:
        # Describe, then classify: the description sits between the task and the label list, so that the
        # label list stays the last thing read before the answer, as in the baseline.
        text = " ".join(description.split())[: variant.describe_max_chars] or "(无)"
        prompt = f"{PROMPT_HEAD}图片描述:{text}\n{prompt.removeprefix(PROMPT_HEAD)}"
    if variant.ocr:
        text = " ".join(ocr_text.split())[: variant.ocr_max_chars] or "(无)"
        prompt += f"\n图片中的OCR文字:{text}"
    if variant.cot:
        prompt += (
            f"\n请以JSON格式回答,依次给出{REASON_KEY}、{LABEL_KEY}。{REASON_KEY}是一步一步的分析:先写图中看到的内容,"
            f"再写判断依据,最后写结论,不超过{variant.reason_max_chars}字;{LABEL_KEY}必须是分类标签之一。"
        )
    elif variant.reason:
        order = f"{REASON_KEY}、{LABEL_KEY}" if variant.reason_first else f"{LABEL_KEY}、{REASON_KEY}"
        prompt += (
            f"\n请以JSON格式回答,依次给出{order},{REASON_KEY}不超过{variant.reason_max_chars}字,"
            f"{LABEL_KEY}必须是分类标签之一。"
        )
    return prompt


def build_target(variant: PromptVariant, label: str, reason: str | None) -> str:
    if not variant.reason:
        return label
    fields = [(REASON_KEY, reason), (LABEL_KEY, label)]
    return json.dumps(dict(fields if variant.reason_first else fields[::-1]), ensure_ascii=False)


def answer_around_label(variant: PromptVariant, reason: str | None = None) -> tuple[str, str]:
    """The answer text before and after the label slot, so the label can be scored in place.

    Reason-first variants need the (generated) reason, which precedes the label in the answer.
    """
    if not variant.reason:
        return "", ""
    marker = "\ue000"  # a private-use character stands in for the label, to split the target there
    before, after = build_target(variant, marker, reason or "").split(marker)
    if not variant.reason_first:
        after = '"'  # the label slot is scored before any reason is written
    return before, after


def read_prompt_inputs(
    ocr: str | Path | None, teacher_reasons: str | Path | None, teacher_descriptions: str | Path | None
) -> dict:
    """A variant's prompt inputs from the tables its rule reads (None: the variant reads none), as the
    keyword arguments of ``build_prompt_table``: OCR text by image sha256, teacher reasons by (sha256,
    label), teacher descriptions by sha256."""
    inputs = {"ocr_text": {}, "teacher_reasons": None, "teacher_descriptions": None}
    if ocr:
        table = pd.read_parquet(ocr)
        inputs["ocr_text"] = dict(zip(table["image_sha256"], table["text"], strict=True))
    if teacher_reasons:
        table = pd.read_parquet(teacher_reasons)
        rows = zip(table["image_sha256"], table["label"], table["text"], strict=True)
        inputs["teacher_reasons"] = {(sha, label): text for sha, label, text in rows}
    if teacher_descriptions:
        table = pd.read_parquet(teacher_descriptions)
        inputs["teacher_descriptions"] = dict(zip(table["image_sha256"], table["text"], strict=True))
    return inputs


def build_prompt_table(
    records: pd.DataFrame,
    ocr_text: dict[str, str],
    variant: PromptVariant,
    labels: list[Label],
    *,
    warn_chars: int = 2500,
    max_chars: int = 6000,
    reason_source: ReasonSource = template_reason,
    teacher_reasons: Mapping[tuple[str, str], str] | None = None,
    teacher_descriptions: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """One row per record: its prompt, its target (null when unlabelled) and the prompt's length.

    ``records`` has id, split, image_path, image_sha256 and label; ``ocr_text`` maps sha256 to text.
    ``teacher_reasons`` maps (sha256, label) and ``teacher_descriptions`` sha256 to a teacher's text; a record
    the teacher has no text for (a corrected or pseudo label, a skipped failure) gets the template's, counted
    in a warning.
    """
    by_name = {label.name: label for label in labels}
    rows, too_long = [], []
    fallbacks = {"reason": 0, "description": 0}
    for record in records.itertuples(index=False):
        text = ocr_text.get(record.image_sha256, "")  # given only to variants that read it (PromptVariant.reads_ocr)
        description = ""
        if variant.describe:
            description = (teacher_descriptions or {}).get(record.image_sha256)
            if description is None:
                fallbacks["description"] += teacher_descriptions is not None
                description = template_description(text, variant.describe_max_chars)
        prompt = build_prompt(variant, labels, text if variant.ocr else "", description)
        target = None
        if isinstance(record.label, str):
            reason = None
            if variant.reason:
                reason = (teacher_reasons or {}).get((record.image_sha256, record.label))
                if reason is None:
                    fallbacks["reason"] += teacher_reasons is not None
                    template = template_cot_reason if variant.cot else reason_source
                    reason = template(by_name[record.label], text, variant.reason_max_chars)
            target = build_target(variant, record.label, reason)
        if len(prompt) > max_chars:
            too_long.append(f"{record.id} ({len(prompt)} characters)")
        rows.append(
            {
                "id": record.id,
                "split": record.split,
                "image_path": record.image_path,
                "image_sha256": record.image_sha256,
                "system": variant.system_prompt,
                "prompt": prompt,
                "target": target,
                "n_chars": len(prompt),
            }
        )
    if too_long:
        raise PromptTooLongError(
            f"variant {variant.name}: {len(too_long)} prompt(s) above prompt.max_chars = {max_chars}: "
            f"{', '.join(too_long[:10])}; lower the variant's ocr_max_chars or describe_max_chars, "
            "or raise prompt.max_chars"
        )
    for kind, count in fallbacks.items():
        if count:
            log.warning("variant %s: %d record(s) have no teacher %s and use the template's", variant.name, count, kind)
    table = pd.DataFrame(rows, columns=PROMPT_COLUMNS)
    over = table[table["n_chars"] > warn_chars]
    if len(over):
        log.warning(
            "variant %s: %d prompt(s) above %d characters (the recipe saw prompts over ~2,500 hurt), longest %d: %s",
            variant.name,
            len(over),
            warn_chars,
            over["n_chars"].max(),
            ", ".join(over["id"].head(5)),
        )
    return table


def to_sharegpt(prompts: pd.DataFrame) -> list[dict]:
    """LLaMA-Factory's multimodal sharegpt records for the labelled rows."""
    records = []
    for row in prompts[prompts["target"].notna()].itertuples(index=False):
        record = {
            "messages": [
                {"role": "user", "content": row.prompt},
                {"role": "assistant", "content": row.target},
            ],
            "images": [row.image_path],
        }
        if row.system:
            record["system"] = row.system
        records.append(record)
    return records


def dataset_info_entry(file_name: str, with_system: bool) -> dict:
    """The dataset_info.json entry LLaMA-Factory needs to read a file written by ``to_sharegpt``.

    The system column is declared only when records carry one: LLaMA-Factory requires a declared
    column in every record.
    """
    columns = {"messages": "messages", "images": "images", **({"system": "system"} if with_system else {})}
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "columns": columns,
        "tags": {
            "role_tag": "role",
            "content_tag": "content",
            "user_tag": "user",
            "assistant_tag": "assistant",
        },
    }


def write_llamafactory_dataset(
    prompts: pd.DataFrame, folder: str | Path, name: str, extra_records: list[dict] = ()
) -> Path:
    """Write ``<folder>/<name>.json`` and ``<folder>/dataset_info.json``; return the data file.

    ``extra_records`` (text-only chat records, e.g. ``vlmflow.prompting.general_data``) are appended as they are.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    data_file = folder / f"{name}.json"
    records = to_sharegpt(prompts) + list(extra_records)
    data_file.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    info = {name: dataset_info_entry(data_file.name, with_system=any("system" in r for r in records))}
    (folder / "dataset_info.json").write_text(json.dumps(info, ensure_ascii=False, indent=2), encoding="utf-8")
    return data_file
