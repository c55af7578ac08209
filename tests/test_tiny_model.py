"""The tiny Qwen2-VL builds, loads like the real one, and fine-tunes through llamafactory-cli."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from vlmflow.demo.tiny_model import build_tiny_model

# Nothing may come from a hub: the model is built here. Set before transformers is first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

logger = logging.getLogger(__name__)

LABELS = ["实物拍摄(含售后)", "物流页面-物流跟踪页面", "物流页面-物流异常页面", "退款页面", "账单/账户页面"]
CORPUS = [
    "<image>\n你是一个电商领域识图专家,请你对消费者上传的图片进行分类。分类标签:"
    + json.dumps(LABELS, ensure_ascii=False),
    *LABELS,
    "呈现出物流运输路径的页面",
    "含有退款信息的页面",
]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", CORPUS, seed=0)


def random_image(path: Path | None = None, *, width: int = 64, height: int = 112, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if path is not None:
        image.save(path)
    return image


def test_model_loads_and_runs_a_forward_pass_on_an_image(tiny_model_dir: Path) -> None:
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(tiny_model_dir)
    model = Qwen2VLForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "这是什么页面？"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[random_image()], text=[text], return_tensors="pt")

    # One visual token per merge_size x merge_size block of 14-pixel patches.
    expected_image_tokens = int(inputs["image_grid_thw"].prod()) // processor.image_processor.merge_size**2
    assert expected_image_tokens > 0
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == expected_image_tokens
    with torch.no_grad():
        logits = model(**inputs).logits  # transformers 5.6 needs the processor's mm_token_type_ids here
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_config_token_ids_match_the_tokenizer(tiny_model_dir: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.image_token_id == tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tokenizer.convert_tokens_to_ids("<|vision_start|>")
    assert config.text_config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert config.text_config.vocab_size == len(tokenizer)
    assert config.vision_config.hidden_size == config.text_config.hidden_size


def test_tokenizer_round_trips_chinese_labels_in_few_tokens(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for label in LABELS:
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == label
        assert len(ids) <= 4, f"{label} takes {len(ids)} tokens"
    # Byte level: text never seen in training still encodes and decodes exactly.
    unseen = "个人信息页面 ✓ émoji 🙂"
    assert tokenizer.decode(tokenizer(unseen, add_special_tokens=False)["input_ids"]) == unseen


def test_build_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    first, again, other = (
        load_file(build_tiny_model(tmp_path / name, CORPUS, seed=seed) / "model.safetensors")
        for name, seed in [("first", 0), ("again", 0), ("other", 1)]
    )
    assert first.keys() == again.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    assert not all(torch.equal(first[name], other[name]) for name in first)
    vocabularies = [(tmp_path / name / "tokenizer.json").read_text() for name in ("first", "again")]
    assert vocabularies[0] == vocabularies[1]


def test_build_refuses_an_empty_corpus(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="corpus is empty"):
        build_tiny_model(tmp_path / "model", [])


@pytest.mark.slow
def test_llamafactory_full_fine_tune_changes_the_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    (data_dir / "images").mkdir(parents=True)
    records = []
    for index in range(8):
        image_path = data_dir / "images" / f"{index}.jpg"
        random_image(image_path, width=64 + 16 * index, height=112, seed=index)
        records.append(
            {
                "messages": [
                    {"role": "user", "content": "<image>请对图片分类"},
                    {"role": "assistant", "content": LABELS[index % len(LABELS)]},
                ],
                "images": [str(image_path.resolve())],
            }
        )
    (data_dir / "train.json").write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    dataset_info = {
        "tiny_scenes": {
            "file_name": "train.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        }
    }
    (data_dir / "dataset_info.json").write_text(json.dumps(dataset_info), encoding="utf-8")

    output_dir = tmp_path / "output"
    train_config = {
        "model_name_or_path": str(tiny_model_dir),
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "full",
        "template": "qwen2_vl",
        # LLaMA-Factory freezes the vision tower and merger by default; a random tower must train.
        "freeze_vision_tower": False,
        "freeze_multi_modal_projector": False,
        "dataset": "tiny_scenes",
        "dataset_dir": str(data_dir),
        "cutoff_len": 512,
        "preprocessing_num_workers": 1,
        "output_dir": str(output_dir),
        "overwrite_output_dir": True,
        "per_device_train_batch_size": 2,
        "num_train_epochs": 1,
        "learning_rate": 1.0e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "use_cpu": True,
        "report_to": "none",
    }
    config_path = tmp_path / "train.yaml"
    config_path.write_text(yaml.safe_dump(train_config, allow_unicode=True), encoding="utf-8")

    cli = Path(sys.executable).parent / "llamafactory-cli"
    started = time.monotonic()
    result = subprocess.run(
        [str(cli), "train", str(config_path)],
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    logger.info("llamafactory-cli train took %.1f s", time.monotonic() - started)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]

    initial = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(output_dir / "model.safetensors")
    assert trained.keys() == initial.keys()
    changed = {name for name in initial if not torch.equal(initial[name], trained[name])}
    # The text layers, the vision blocks and the merger all trained. (Saved names depend on the transformers
    # release: 5.5 writes model.layers.* and model.visual.*, 5.6 visual.* at the top level.)
    assert any(name.startswith("model.layers.") for name in changed)
    assert any(name.startswith(("visual.blocks.", "model.visual.blocks.")) for name in changed)
    assert any(name.startswith(("visual.merger.", "model.visual.merger.")) for name in changed)

    # 8 records, batch 2, logging every step: 4 logged losses (the log's last line is the run summary).
    log_lines = [json.loads(line) for line in (output_dir / "trainer_log.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in log_lines if "loss" in line]
    assert len(losses) == 4 and all(np.isfinite(losses))
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    assert any("loss" in entry for entry in history)
    assert np.isfinite(history[-1]["train_loss"])
