"""The label set: names, descriptions and the recipe's verbatim baseline prompt."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import yaml


@dataclass(frozen=True)
class Label:
    name: str
    description: str


class LabelFileError(ValueError):
    """The labels file is missing, malformed, or names a label twice."""


def load_labels(path: str | Path) -> list[Label]:
    """Read the labels file (``labels: [{name, description}]``), keeping its order."""
    path = Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise LabelFileError(f"labels file {path} does not exist") from error
    except UnicodeDecodeError as error:
        bad = error.object[error.start : error.start + 4]
        raise LabelFileError(
            f"labels file {path} is not UTF-8 text (byte {error.start}: {bad!r}); re-encode it as UTF-8"
        ) from error
    entries = (document or {}).get("labels") if isinstance(document, dict) else None
    if not entries:
        raise LabelFileError(f"labels file {path} has no 'labels:' list")
    labels = [Label(str(entry["name"]), str(entry.get("description") or "")) for entry in entries]
    names = [label.name for label in labels]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise LabelFileError(f"labels file {path} names these labels twice: {repeated}")
    return labels


def label_names(labels: list[Label]) -> list[str]:
    return [label.name for label in labels]


# Verbatim from the recipe (docs/mire.md): the head, then the label list as compact JSON.
PROMPT_HEAD = (
    "<image>\n你是一个电商领域识图专家,可以理解消费者上传的软件截图或实物拍摄图。"
    "现在,请你对消费者上传的图片进行分类。你只需要回答图片分类结果,不需要其他多余的话。"
)


def compact_json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def baseline_prompt(labels: list[Label]) -> str:
    """The recipe's baseline prompt, ``<image>`` placeholder first."""
    return f"{PROMPT_HEAD}以下是可以参考的分类标签,分类标签:{compact_json(label_names(labels))}。"


def described_prompt(labels: list[Label]) -> str:
    """The baseline with each label's description, labels and descriptions as one JSON object."""
    described = {label.name: label.description or label.name for label in labels}
    return f"{PROMPT_HEAD}以下是可以参考的分类标签及其描述(JSON):{compact_json(described)}。"
