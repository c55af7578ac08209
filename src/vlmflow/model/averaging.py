"""Uniform weight averaging of K fine-tuned fold models into one model (a "model soup").

The final-round MIRE winner merged fine-tuned models: one merged model answers each test image in one
call, within the competition's 3-call limit, where a K-fold ensemble would need K calls.

Full and freeze fine-tunes are averaged tensor by tensor from their safetensors (a frozen module is equal
in every fold, so its average is itself). LoRA folds keep only their adapters: each is merged into the
base model first (PEFT's ``merge_and_unload``) and the merged weights are averaged. That is the mean of
the folds' weight updates B·A; averaging the A and B matrices apart would not be, because the mean of
products is not the product of means. The result is a full model.
"""

from __future__ import annotations

import fnmatch
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from vlmflow.model.encoding import ADAPTER_CONFIG, load_model

log = logging.getLogger(__name__)

SINGLE_WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Weights are rewritten, never copied; training artefacts describe one fold's run, not the merged model.
NOT_COPIED = [
    "adapter_config.json",
    "*.safetensors",
    "*.safetensors.index.json",
    "pytorch_model*.bin",
    "pytorch_model*.bin.index.json",
    "trainer_state.json",
    "training_args.bin",
    "trainer_log.jsonl",
    "*_results.json",
    "*.png",
]


class ModelMismatchError(ValueError):
    """The fold models do not share tensor names, shapes and dtypes, so they cannot be averaged."""


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a saved model: the shards its index names, or the single file."""
    index = model_dir / WEIGHTS_INDEX
    if index.exists():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        return [model_dir / name for name in sorted(set(weight_map.values()))]
    if (model_dir / SINGLE_WEIGHTS).exists():
        return [model_dir / SINGLE_WEIGHTS]
    raise FileNotFoundError(f"{model_dir}: neither {SINGLE_WEIGHTS} nor {WEIGHTS_INDEX}")


def _tensor_specs(model_dir: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Name -> (dtype, shape) from the safetensors headers, without loading a single weight."""
    specs = {}
    for path in weight_files(model_dir):
        with safe_open(path, framework="pt") as weights:
            for name in weights.keys():
                tensor = weights.get_slice(name)
                specs[name] = (tensor.get_dtype(), tuple(tensor.get_shape()))
    return specs


def _check_same_tensors(model_dirs: list[Path]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Fail before hours of loading if any model differs from the first in a tensor's name, dtype or shape."""
    reference = _tensor_specs(model_dirs[0])
    for model_dir in model_dirs[1:]:
        specs = _tensor_specs(model_dir)
        for name, (dtype, shape) in reference.items():
            if name not in specs:
                raise ModelMismatchError(f"{model_dir} lacks tensor {name!r} that {model_dirs[0]} has")
            if specs[name] != (dtype, shape):
                other_dtype, other_shape = specs[name]
                raise ModelMismatchError(
                    f"{model_dir}: tensor {name!r} is {other_dtype} {list(other_shape)}, "
                    f"but {dtype} {list(shape)} in {model_dirs[0]}"
                )
        extra = next((name for name in specs if name not in reference), None)
        if extra is not None:
            raise ModelMismatchError(f"{model_dir} has tensor {extra!r} that {model_dirs[0]} lacks")
    return reference


def _copy_model_files(source: Path, target: Path) -> list[str]:
    """Copy config, tokenizer, processor, chat template... from ``source``; skip weights, artefacts, folders."""
    copied = []
    for path in sorted(source.iterdir()):
        if path.is_dir():  # checkpoint-*/, runs/: a saved model is flat
            log.info("not copying folder %s", path.name)
            continue
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in NOT_COPIED):
            continue
        shutil.copy2(path, target / path.name)
        copied.append(path.name)
    return copied


def _write_staged(out_dir: Path, files_from: Path, write_weights) -> list[str]:
    """Write the weights (``write_weights(folder)``) and ``files_from``'s model files into a temporary folder
    beside ``out_dir``, renamed into place at the end: ``out_dir`` never holds a half-written model."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        write_weights(staging)
        copied = _copy_model_files(files_from, staging)
        staging.chmod(0o755)  # mkdtemp makes it private; the model is shared like any other output
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return copied


def average_fold_models(model_dirs: list[Path], out_dir: Path) -> Path:
    """Average the weights of ``model_dirs`` uniformly into ``out_dir`` and return it.

    Floating-point tensors are summed in float32 one model at a time (peak memory: the float32 sum
    plus one shard) and cast back to their dtype; integer tensors (buffers, counters) must be equal
    across models and are kept as they are. Written to a temporary folder beside ``out_dir`` and
    renamed at the end, so ``out_dir`` never holds a half-written model.
    """
    model_dirs = [Path(model_dir) for model_dir in model_dirs]
    out_dir = Path(out_dir)
    if not model_dirs:
        raise ValueError("no models to average")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} already exists; remove it to write the averaged model again")
    adapters = [(model_dir / ADAPTER_CONFIG).is_file() for model_dir in model_dirs]
    if any(adapters):
        if not all(adapters):
            raise ModelMismatchError(f"some of {[str(d) for d in model_dirs]} are LoRA adapters and some are not")
        return average_lora_folds(model_dirs, out_dir)
    _check_same_tensors(model_dirs)

    total: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    for number, model_dir in enumerate(model_dirs, start=1):
        log.info("adding model %d of %d: %s", number, len(model_dirs), model_dir)
        for path in weight_files(model_dir):
            for name, tensor in load_file(path).items():
                if name not in total:
                    dtypes[name] = tensor.dtype
                    total[name] = tensor.to(torch.float32) if tensor.is_floating_point() else tensor
                elif tensor.is_floating_point():
                    total[name] += tensor.to(torch.float32)
                elif not torch.equal(total[name], tensor):
                    raise ModelMismatchError(f"{model_dir}: integer tensor {name!r} differs from {model_dirs[0]}'s")
    for name in total:  # cast in place, one tensor at a time, so float32 and target copies never all coexist
        if total[name].is_floating_point():
            total[name] = total[name].div_(len(model_dirs)).to(dtypes[name])

    copied = _write_staged(
        out_dir, model_dirs[0], lambda staging: save_file(total, staging / SINGLE_WEIGHTS, metadata={"format": "pt"})
    )
    log.info("averaged %d models (%d tensors) into %s; copied %s", len(model_dirs), len(total), out_dir, copied)
    return out_dir


def average_lora_folds(adapter_dirs: list[Path], out_dir: Path) -> Path:
    """Merge each LoRA adapter into its base model, average the merged weights (float32 sums, one model
    in memory besides the sum) and save the full model, staged and renamed like ``average_fold_models``."""
    bases = {
        json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
        for path in adapter_dirs
    }
    if len(bases) != 1:
        raise ModelMismatchError(f"the adapters were trained on different base models: {sorted(bases)}")
    total: dict[str, torch.Tensor] = {}
    for number, adapter_dir in enumerate(adapter_dirs, start=1):
        log.info("merging and adding adapter %d of %d: %s", number, len(adapter_dirs), adapter_dir)
        model = load_model(adapter_dir, dtype="auto")
        for name, tensor in model.state_dict().items():
            if name not in total:
                total[name] = tensor.to(torch.float32) if tensor.is_floating_point() else tensor.clone()
            elif tensor.is_floating_point():
                total[name] += tensor.to(torch.float32)
    state = model.state_dict()
    with torch.no_grad():
        for name, tensor in state.items():
            if tensor.is_floating_point():
                tensor.copy_(total[name].div_(len(adapter_dirs)))
    copied = _write_staged(out_dir, adapter_dirs[0], model.save_pretrained)
    log.info("averaged %d merged LoRA folds into %s; copied %s", len(adapter_dirs), out_dir, copied)
    return out_dir
