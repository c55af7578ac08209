import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlmflow.model.averaging import ModelMismatchError, average_fold_models

MODEL_FILES = {
    "config.json": '{"model_type": "qwen2_vl", "torch_dtype": "bfloat16"}',
    "tokenizer.json": "{}",
    "tokenizer_config.json": "{}",
    "preprocessor_config.json": "{}",
    "chat_template.json": "{}",
    "generation_config.json": "{}",
}
TRAINING_ARTEFACTS = {
    "trainer_state.json": "{}",
    "training_args.bin": "x",
    "trainer_log.jsonl": "{}",
    "all_results.json": "{}",
    "training_loss.png": "x",
}


def fold_weights(fold: int) -> dict[str, torch.Tensor]:
    """Small integers, so sums are exact and the expected mean is unambiguous."""
    generator = torch.Generator().manual_seed(fold)
    return {
        "model.embed.weight": torch.randint(-8, 8, (2, 3), generator=generator).float(),
        "model.norm.weight": torch.randint(-8, 8, (4,), generator=generator).float(),
        "lm_head.weight": torch.randint(-8, 8, (2, 2), generator=generator).to(torch.bfloat16),
    }


def fake_model(root: Path, fold: int, weights: dict[str, torch.Tensor], sharded: bool = False) -> Path:
    model_dir = root / f"fold{fold}" / "model"
    (model_dir / "checkpoint-10").mkdir(parents=True)
    (model_dir / "checkpoint-10" / "optimizer.pt").write_text("x")
    for name, text in {**MODEL_FILES, **TRAINING_ARTEFACTS}.items():
        (model_dir / name).write_text(text)
    if not sharded:
        save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
        return model_dir
    names = list(weights)
    shards = {"model-00001-of-00002.safetensors": names[:1], "model-00002-of-00002.safetensors": names[1:]}
    for shard, shard_names in shards.items():
        save_file({name: weights[name] for name in shard_names}, model_dir / shard, metadata={"format": "pt"})
    weight_map = {name: shard for shard, shard_names in shards.items() for name in shard_names}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return model_dir


def test_average_is_the_exact_elementwise_mean_in_the_original_dtypes(tmp_path):
    weights = [fold_weights(fold) for fold in range(3)]
    model_dirs = [fake_model(tmp_path, fold, weights[fold], sharded=fold == 1) for fold in range(3)]
    out_dir = average_fold_models(model_dirs, tmp_path / "averaged")
    averaged = load_file(out_dir / "model.safetensors")
    assert set(averaged) == set(weights[0])
    for name, tensor in averaged.items():
        expected = (sum(w[name].float() for w in weights) / 3).to(weights[0][name].dtype)
        assert tensor.dtype == weights[0][name].dtype
        assert torch.equal(tensor, expected), name
    with safe_open(out_dir / "model.safetensors", framework="pt") as saved:
        assert saved.metadata() == {"format": "pt"}


def test_two_models_of_known_values_average_to_their_midpoint(tmp_path):
    first = {"w": torch.tensor([1.0, 2.0]), "h": torch.tensor([0.5, 4.0], dtype=torch.bfloat16)}
    second = {"w": torch.tensor([3.0, -2.0]), "h": torch.tensor([1.5, 8.0], dtype=torch.bfloat16)}
    out_dir = average_fold_models([fake_model(tmp_path, 0, first), fake_model(tmp_path, 1, second)], tmp_path / "m")
    averaged = load_file(out_dir / "model.safetensors")
    assert averaged["w"].tolist() == [2.0, 0.0]
    assert averaged["h"].dtype == torch.bfloat16 and averaged["h"].tolist() == [1.0, 6.0]


def test_model_files_are_copied_and_training_artefacts_and_weights_are_not(tmp_path):
    model_dirs = [fake_model(tmp_path, fold, fold_weights(fold), sharded=True) for fold in range(2)]
    out_dir = average_fold_models(model_dirs, tmp_path / "averaged")
    assert sorted(path.name for path in out_dir.iterdir()) == sorted([*MODEL_FILES, "model.safetensors"])
    assert (out_dir / "config.json").read_text() == MODEL_FILES["config.json"]
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []  # no staging left


def test_a_shape_mismatch_raises_naming_the_tensor_and_the_model_and_writes_nothing(tmp_path):
    odd = fold_weights(1) | {"model.norm.weight": torch.zeros(5)}
    model_dirs = [fake_model(tmp_path, 0, fold_weights(0)), fake_model(tmp_path, 1, odd, sharded=True)]
    message = r"fold1/model: tensor 'model.norm.weight' is F32 \[5\], but F32 \[4\]"
    with pytest.raises(ModelMismatchError, match=message):
        average_fold_models(model_dirs, tmp_path / "averaged")
    assert not (tmp_path / "averaged").exists()


def test_a_dtype_mismatch_or_missing_tensor_raises(tmp_path):
    base = fake_model(tmp_path, 0, fold_weights(0))
    half = fake_model(tmp_path, 1, fold_weights(1) | {"model.embed.weight": torch.zeros(2, 3, dtype=torch.float16)})
    with pytest.raises(ModelMismatchError, match="'model.embed.weight' is F16"):
        average_fold_models([base, half], tmp_path / "averaged")
    fewer = fold_weights(2)
    del fewer["lm_head.weight"]
    with pytest.raises(ModelMismatchError, match="fold2/model lacks tensor 'lm_head.weight'"):
        average_fold_models([base, fake_model(tmp_path, 2, fewer)], tmp_path / "averaged")
