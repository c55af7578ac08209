"""General instruction data mixed into the final fit, so the classifier keeps answering ordinary requests.

Reads LLaMA-Factory's two public dataset layouts, alpaca (instruction, input, output, optional system and
history) and sharegpt (``conversations`` with from/value, or ``messages`` with role/content), and turns
every record into the text-only form of ``vlmflow.prompting.prompts.to_sharegpt``: ``{"messages": [...]}`` plus
``system`` when given. A record that cannot be read fails the job, naming its position and the problem.
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

log = logging.getLogger(__name__)

FORMATS = ("alpaca", "sharegpt")
# sharegpt role names as LLaMA-Factory's defaults write them, mapped to chat roles.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class GeneralDataError(ValueError):
    """A general-data record is not in the declared format."""


def _text(record: dict, key: str, position: int, required: bool = True) -> str:
    value = record.get(key, "")
    if not isinstance(value, str) or (required and not value.strip()):
        raise GeneralDataError(f"general data record {position}: {key!r} must be a non-empty string, got {value!r}")
    return value


def _from_alpaca(record: dict, position: int) -> dict:
    instruction, output = _text(record, "instruction", position), _text(record, "output", position)
    extra = _text(record, "input", position, required=False)
    messages = []
    for turn in record.get("history") or []:
        if not (isinstance(turn, list) and len(turn) == 2 and all(isinstance(part, str) for part in turn)):
            raise GeneralDataError(f"general data record {position}: history turns must be [question, answer] pairs")
        messages += [{"role": "user", "content": turn[0]}, {"role": "assistant", "content": turn[1]}]
    messages += [
        {"role": "user", "content": f"{instruction}\n{extra}" if extra.strip() else instruction},
        {"role": "assistant", "content": output},
    ]
    converted = {"messages": messages}
    if record.get("system"):
        converted["system"] = _text(record, "system", position)
    return converted


def _from_sharegpt(record: dict, position: int) -> dict:
    turns, role_key, content_key = record.get("conversations"), "from", "value"
    if turns is None:
        turns, role_key, content_key = record.get("messages"), "role", "content"
    if not isinstance(turns, list) or not turns:
        raise GeneralDataError(f"general data record {position}: needs a non-empty 'conversations' or 'messages' list")
    system, messages = record.get("system"), []
    for turn in turns:
        role = SHAREGPT_ROLES.get(turn.get(role_key)) if isinstance(turn, dict) else None
        content = turn.get(content_key) if isinstance(turn, dict) else None
        if role is None or not isinstance(content, str):
            raise GeneralDataError(f"general data record {position}: unreadable turn {turn!r}")
        if role == "system":
            system = content
        else:
            messages.append({"role": role, "content": content})
    expected = ["user", "assistant"] * (len(messages) // 2)
    if not messages or [message["role"] for message in messages] != expected:
        raise GeneralDataError(
            f"general data record {position}: turns must alternate user, assistant, ending on assistant"
        )
    return {"messages": messages, **({"system": system} if system else {})}


def read_general_records(path: str | Path, data_format: str) -> list[dict]:
    """Every record of a JSON (list) or JSON-lines file in ``data_format``, as text-only chat records."""
    if data_format not in FORMATS:
        raise GeneralDataError(f"general data format must be one of {FORMATS}, got {data_format!r}")
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    try:
        raw = (
            [json.loads(line) for line in text.splitlines() if line.strip()]
            if path.suffix == ".jsonl"
            else json.loads(text)
        )
    except json.JSONDecodeError as error:
        raise GeneralDataError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(raw, list):
        raise GeneralDataError(f"{path}: expected a list of records")
    convert = _from_alpaca if data_format == "alpaca" else _from_sharegpt
    records = []
    for position, record in enumerate(raw):
        if not isinstance(record, dict):
            raise GeneralDataError(f"general data record {position}: expected an object, got {type(record).__name__}")
        records.append(convert(record, position))
    return records


def sample_general_records(records: list[dict], n_classification: int, ratio: float, seed: int) -> list[dict]:
    """``round(ratio * n_classification)`` records, drawn without replacement (all of them when fewer exist)."""
    wanted = round(ratio * n_classification)
    if wanted > len(records):
        log.warning(
            "general data: %d records wanted (ratio %g) but the file has %d; using all", wanted, ratio, len(records)
        )
        wanted = len(records)
    return random.Random(seed).sample(records, wanted)


def demo_general_records(n: int, seed: int) -> list[dict]:
    """A small alpaca-format general set for the demo: arithmetic, counting and ordering, each answer short
    and exactly checkable, every question distinct (so a held-out part shares no question with the rest)."""
    rng = random.Random(seed)
    words = ["订单", "退款", "客服", "商品", "物流", "评价", "优惠券", "地址", "支付", "发票"]
    records, seen = [], set()
    while len(records) < n:
        kind = len(records) % 3
        if kind == 0:
            a, b = rng.randint(1, 99), rng.randint(1, 99)
            record = {"instruction": f"计算 {a} + {b} 等于多少?只回答数字。", "input": "", "output": str(a + b)}
        elif kind == 1:
            text = "".join(rng.choice(words) for _ in range(rng.randint(1, 3)))
            record = {"instruction": "下面这段文字有几个字?只回答数字。", "input": text, "output": str(len(text))}
        else:
            picked = rng.sample(words, 3)
            record = {
                "instruction": "把下面的词按字数从少到多排列,用逗号分隔。",
                "input": ",".join(picked),
                "output": ",".join(sorted(picked, key=lambda word: (len(word), picked.index(word)))),
            }
        if (record["instruction"], record["input"]) not in seen:  # a repeat would leak across the split
            seen.add((record["instruction"], record["input"]))
            records.append(record)
    return records


def split_held_out(records: list, held_out: int, seed: int) -> tuple[list, list]:
    """(mixed, held out): ``held_out`` records drawn by ``seed`` are set aside, never to be mixed into training;
    both parts keep the records' order."""
    if not 0 <= held_out <= len(records):
        raise GeneralDataError(f"cannot hold out {held_out} of {len(records)} general records")
    chosen = set(random.Random(seed).sample(range(len(records)), held_out))
    mixed = [record for position, record in enumerate(records) if position not in chosen]
    log.info("general data: %d records in, %d to mix in, %d held out", len(records), len(mixed), held_out)
    return mixed, [record for position, record in enumerate(records) if position in chosen]
