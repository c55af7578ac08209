"""The vLLM backend (score.backend: vllm) writes the transformers backend's score tables.

Both backends encode through one ``PromptEncoder``, so this checks what vLLM does itself: the forward
passes, M-RoPE positions, the expansion of the image placeholder, the prefix-cached label reads, greedy
reasons and their stop string, a LoRA fold. vLLM runs in its own venv (.venv-vllm, `make install-vllm`),
reached through ``score_tables_in_vllm_venv`` as the workflow reaches it. Without that venv these tests
fail: the backend is part of the workflow, and a skip would hide that it is not installed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from vlmflow.data.labels import baseline_prompt, label_names, load_labels
from vlmflow.model import vllm_backend
from vlmflow.model.encoding import ScoringRequest, extract_reason, longest_sequence_tokens, reason_slot, score_table
from vlmflow.model.scoring import load_scorer
from vlmflow.model.vllm_backend import max_model_len, score_tables_in_vllm_venv, vllm_environment
from vlmflow.prompting.prompts import answer_around_label

from helpers.scoring_models import build_scoring_model
from helpers.variants import make_variant

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
LABELS = load_labels(REPO / "config" / "labels.yaml")
NAMES = label_names(LABELS)
PROMPT = baseline_prompt(LABELS)
PROBABILITIES = [f"p::{name}" for name in NAMES]
SETTINGS = {"reason_max_new_tokens": 12, "batch_size": 3}
VARIANTS = [make_variant("baseline"), make_variant("reason_first", reason=True)]


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    if not VLLM_PYTHON.is_file():
        pytest.fail(f"the vLLM backend's venv is missing ({VLLM_PYTHON}): run `make install-vllm`")
    return VLLM_PYTHON


def peak(model_dir: Path) -> Path:
    """A random model spreads ~1/25 on every label, which hides position and encoding errors; larger output
    weights make its distributions peaked and those errors visible (as tests/test_scoring.py does)."""
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    model.save_pretrained(model_dir)
    return model_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("vllm-qwen2-vl") / "model"
    built = build_scoring_model(folder, "qwen2_vl")
    return peak(built)


@pytest.fixture(scope="module")
def scorer(model_dir: Path):
    return load_scorer(model_dir, num_threads=1)


@pytest.fixture(scope="module")
def prompts(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """Rows of different image sizes (so different visual token counts) and system turns."""
    folder = tmp_path_factory.mktemp("vllm-images")
    rows = []
    for index in range(6):
        path = folder / f"image{index}.png"
        pixels = np.random.default_rng(index).integers(0, 256, (112 - 24 * (index % 2), 64 + 48 * (index % 3), 3))
        Image.fromarray(pixels.astype(np.uint8)).save(path)
        system = None if index % 2 == 0 else "你是电商识图助手。"
        rows.append({"id": f"r{index}", "image_path": str(path), "prompt": PROMPT, "system": system})
    return pd.DataFrame(rows)


def vllm_tables(model_dir: Path, tables: list[pd.DataFrame], variant, python: Path) -> list[pd.DataFrame]:
    return list(
        score_tables_in_vllm_venv(
            model_dir, tables, NAMES, variant, python=python, image_pixels={}, device="cpu", **SETTINGS
        )
    )


def largest_difference(table: pd.DataFrame, other: pd.DataFrame) -> float:
    return float(np.abs(table[PROBABILITIES].to_numpy() - other[PROBABILITIES].to_numpy()).max())


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS, ids=lambda variant: variant.name)
def test_vllm_tables_equal_transformers_tables(model_dir, scorer, prompts, vllm_python, variant, caplog) -> None:
    # Two tables in one call: the model loads once, and the tables come back in order.
    tables = [prompts.iloc[:4], prompts.iloc[4:]]
    with caplog.at_level(logging.INFO, logger="vlmflow.model.vllm_backend"):
        first, second = vllm_tables(model_dir, tables, variant, vllm_python)
    # The engine was made for the longest sequence these tables can make, not the model's 32k tokens.
    length = max_model_len(scorer.encoder, tables, NAMES, variant, SETTINGS["reason_max_new_tokens"])
    assert f"max_seq_len={length}," in caplog.text
    expected = score_table(scorer, prompts, NAMES, variant, **SETTINGS)
    table = pd.concat([first, second], ignore_index=True)
    assert list(table.columns) == list(expected.columns)
    assert list(table.dtypes) == list(expected.dtypes)  # the parquet round trip keeps the table as it was
    assert list(table["id"]) == list(expected["id"])
    difference = largest_difference(table, expected)
    print(f"{variant.name}: largest |p_vllm - p_transformers| = {difference:.2e}")
    assert difference < 1e-4
    assert list(table["predicted"]) == list(expected["predicted"])
    assert list(table["generated"]) == list(expected["generated"])
    if variant.generates_reason:
        assert table["generated"].str.len().min() > 0, "every row generated a reason to compare"


# Runs in the vLLM venv: the reasons of VllmScorer.generate_many for each stop string of a spec.
GENERATE = """
import json, sys
from vlmflow.model.encoding import ScoringRequest
from vlmflow.model.vllm_backend import load_vllm_scorer

if __name__ == "__main__":  # vLLM's engine may start processes that import this file again
    spec = json.loads(open(sys.argv[1], encoding="utf-8").read())
    scorer = load_vllm_scorer(spec["model_dir"], dtype="float32")
    requests = [ScoringRequest(**request) for request in spec["requests"]]
    texts = [
        scorer.generate_many(requests, answer_prefix=spec["answer_prefix"], stop=stop, max_new_tokens=12)
        for stop in spec["stops"]
    ]
    open(sys.argv[2], "w", encoding="utf-8").write(json.dumps(texts, ensure_ascii=False))
"""


def common_infix(texts: list[str]) -> str:
    """Two characters that the most texts hold past their start: a stop string that cuts several of them.
    Whole printable characters only: a byte-level token's partial character decodes as U+FFFD."""
    counts = Counter(pair for text in texts for pair in {text[i : i + 2] for i in range(2, len(text) - 2)})
    return next(pair for pair, _ in counts.most_common() if pair.isprintable() and "\ufffd" not in pair)


@pytest.mark.slow
def test_reasons_stop_where_transformers_stops(model_dir, scorer, prompts, vllm_python, tmp_path) -> None:
    # The reason-first tail never comes out of a random model, so the stop string here is one it writes.
    head, _ = reason_slot(make_variant("reason_first", reason=True))
    requests = [ScoringRequest(row.image_path, row.prompt, row.system) for row in prompts.itertuples()]
    unstopped = scorer.generate_many(requests, answer_prefix=head, max_new_tokens=12)
    stop = common_infix(unstopped)
    stopped = scorer.generate_many(requests, answer_prefix=head, stop=stop, max_new_tokens=12)
    assert sum(len(cut) < len(whole) for cut, whole in zip(stopped, unstopped, strict=True)) >= 2, stop
    spec = {
        "model_dir": str(model_dir),
        "requests": [{"image": r.image, "prompt": r.prompt, "system": r.system} for r in requests],
        "answer_prefix": head,
        "stops": [None, stop],
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "generate.py").write_text(GENERATE, encoding="utf-8")
    command = [str(vllm_python), str(tmp_path / "generate.py"), str(tmp_path / "spec.json"), str(tmp_path / "out.json")]
    result = subprocess.run(command, env=vllm_environment("cpu"), capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        pytest.fail(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    vllm_unstopped, vllm_stopped = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert vllm_unstopped == unstopped
    assert vllm_stopped == stopped


def lora_fold(base: Path, folder: Path) -> Path:
    """A LoRA adapter on ``base`` as a fine-tune saves one (adapter and processor), on the text attention and
    the vision tower's, with random weights so that it changes the scores."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText, AutoProcessor

    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_pretrained(base)
    adapter = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "qkv"], init_lora_weights=False)
    get_peft_model(model, adapter).save_pretrained(folder)
    AutoProcessor.from_pretrained(base).save_pretrained(folder)
    return folder


@pytest.mark.slow
def test_lora_fold_scores_as_the_transformers_backend_merges_it(model_dir, scorer, prompts, vllm_python, tmp_path):
    fold = lora_fold(model_dir, tmp_path / "lora-fold")
    variant = make_variant("baseline")
    [table] = vllm_tables(fold, [prompts], variant, vllm_python)
    expected = score_table(load_scorer(fold, num_threads=1), prompts, NAMES, variant, **SETTINGS)
    base = score_table(scorer, prompts, NAMES, variant, **SETTINGS)
    assert largest_difference(expected, base) > 1e-3, "the adapter changes the scores"
    difference = largest_difference(table, expected)
    print(f"LoRA fold: largest |p_vllm - p_transformers| = {difference:.2e}")
    assert difference < 1e-4
    assert list(table["predicted"]) == list(expected["predicted"])


def test_a_missing_vllm_venv_says_to_install_it(model_dir, prompts, tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="make install-vllm"):
        vllm_tables(model_dir, [prompts], VARIANTS[0], tmp_path / "no-venv" / "bin" / "python")


@pytest.mark.slow  # a vLLM process that starts and fails (about 14 s): make test, not the daily loop
def test_a_failed_vllm_run_names_its_command_and_last_lines(prompts, vllm_python, tmp_path) -> None:
    missing = tmp_path / "no-model"
    with pytest.raises(RuntimeError) as failure:
        vllm_tables(missing, [prompts], VARIANTS[0], vllm_python)
    message = str(failure.value)
    assert "vlmflow.model.vllm_backend" in message and str(vllm_python) in message
    assert f"{missing}: no config.json there" in message  # the child's own error, from its last lines


def test_max_model_len_holds_every_sequence_scoring_makes(scorer, prompts) -> None:
    # Reasons as a random model writes them: byte fragments and control characters, which take more tokens once
    # decoded, escaped into the JSON answer and encoded again (the reason vLLM's limit counts them 8 times).
    variant, budget = VARIANTS[1], 100
    tables = [prompts.iloc[:4], prompts.iloc[4:]]
    length = max_model_len(scorer.encoder, tables, NAMES, variant, budget)
    growth = budget * vllm_backend.REASON_TOKENS_GROWTH
    assert length == longest_sequence_tokens(scorer.encoder, prompts, NAMES, variant, growth) + 128
    head, tail = reason_slot(variant)
    requests = [ScoringRequest(row.image_path, row.prompt, row.system) for row in prompts.itertuples()]
    generated = scorer.generate_many(requests, answer_prefix=head, stop=tail, max_new_tokens=budget)
    for request, text in zip(requests, generated, strict=True):
        answers = scorer.answer_ids(NAMES, *answer_around_label(variant, extract_reason(text, tail)))
        assert (
            len(scorer.encoder.prompt_ids(request.image, request.prompt, request.system)) + max(map(len, answers))
            <= length
        )


class RecordingLLM:
    """Stands in for ``vllm.LLM``: keeps the engine arguments it was given."""

    made: list[dict] = []

    def __init__(self, model: str, **engine_args) -> None:
        RecordingLLM.made.append({"model": model, **engine_args})

    def get_default_sampling_params(self):
        return types.SimpleNamespace(repetition_penalty=1.0)


@pytest.mark.parametrize("gpu", [False, True], ids=["cpu", "gpu"])
def test_engine_length_and_memory_share_reach_the_llm(model_dir, scorer, prompts, tmp_path, monkeypatch, gpu):
    # The entry point as the vLLM venv runs it, with the engine replaced: what vllm.LLM is asked for.
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=RecordingLLM))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    batch_sizes = []

    def score_table_of(scorer, table, labels, variant, *, reason_max_new_tokens, batch_size):
        batch_sizes.append(batch_size or scorer.automatic_batch_size(table, labels, variant, reason_max_new_tokens))
        return table[["id"]]

    monkeypatch.setattr(vllm_backend, "score_table", score_table_of)
    RecordingLLM.made.clear()
    prompts.to_parquet(tmp_path / "prompts.parquet", index=False)
    variant = VARIANTS[1]
    spec = {
        "model_dir": str(model_dir),
        "tables": [[str(tmp_path / "prompts.parquet"), str(tmp_path / "scores.parquet")]],
        "labels": NAMES,
        "variant": dataclasses.asdict(variant),
        "reason_max_new_tokens": 90,
        "batch_size": None,  # score.batch_size's default: automatic
        "image_pixels": {},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    vllm_backend.main([str(tmp_path / "spec.json")])
    [engine] = RecordingLLM.made
    expected = max_model_len(scorer.encoder, [prompts], NAMES, variant, 90)
    assert expected == longest_sequence_tokens(scorer.encoder, prompts, NAMES, variant, 90 * 8) + 128
    assert engine["max_model_len"] == expected
    assert engine["gpu_memory_utilization"] == 0.9
    assert engine["dtype"] == ("bfloat16" if gpu else "float32")
    assert batch_sizes == [64 if gpu else 8]
    assert list(pd.read_parquet(tmp_path / "scores.parquet")["id"]) == list(prompts["id"])
