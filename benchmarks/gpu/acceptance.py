"""The acceptance of a GPU machine (acceptance.sh runs it): what a real run does, on one card, in minutes.

Each check is one row of a table (what, pass/fail/skipped, seconds, detail), written to ``OUT/acceptance.md``
and ``OUT/acceptance.json`` as it ends, so that a call cut short keeps what ran:

- the tiny model of each family (``vlmflow.demo.tiny_model.build_demo_model``, the demo's size);
- a fold fine-tune of each through ``llamafactory-cli train`` (``vlmflow.model.train.train_model``: the
  workflow's YAML and launch) with the recipe's settings (the config schema's defaults: bf16, fa2) for a few
  steps, under ZeRO-2 and under ZeRO-3 (config/deepspeed/z2.json, z3.json), one process under torchrun;
- flash-attn: the fine-tunes run with ``flash_attn: fa2`` where flash_attn imports, and LLaMA-Factory must say
  it used it; otherwise they run with SDPA and the row says why flash-attn was skipped;
- scoring of each family's fine-tuned model on its held-out fold, on the card with the transformers backend,
  and with vLLM where a Python with vLLM is at hand, the two compared (largest difference of a label
  probability, against ``TOLERANCE``);
- the machine check (``vlmflow.runtime.machine.examine_run``) of the recipe's configuration on this machine's
  cards; its report is ``OUT/machine.json``.

``--smoke`` runs the same path on the CPU (float32, no flash-attn, DeepSpeed's CPU accelerator, vLLM's CPU build
in .venv-vllm), made small for the test suite: each family trains once, the stages alternating (``SMOKE_PLAN``),
for one step, and vLLM scores one family. The process exits 1 when a check fails.

    python benchmarks/gpu/acceptance.py --out DIR [--smoke] [--vllm-python PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import multiprocessing
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # demo_inputs, next to this file
from demo_inputs import (  # noqa: E402
    CPU_TRAINING,
    DEEPSPEED_CONFIGS,
    FIXED_STEPS_RUN,
    LABELS,
    REPO,
    baseline_variant,
    demo_prompts,
    schema_defaults,
)

log = logging.getLogger("acceptance")

FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")
STAGES = ("z2", "z3")
# The smoke's plan: one LLaMA-Factory process per family is its floor (each starts torchrun, DeepSpeed and the
# stack), and alternating the stages still covers both.
SMOKE_PLAN = (("qwen2_vl", "z2"), ("qwen2_5_vl", "z3"), ("qwen3_vl", "z2"))
# The largest |p_vllm - p_transformers| of a label accepted, by the dtype both backends score in. float32: what
# tests/test_vllm_backend.py holds the backends to (1e-4; the smoke's agree to about 1e-7). bfloat16 keeps 8
# significant bits: the backends' different kernels and summation orders moved the demo model's label probabilities
# by up to 5e-3 on the CPU (measured 2026-12-01); twice that leaves room for the GPU's kernels. A tiny model's
# probabilities lie near 1/25, so this is a check of the path (both backends load the fine-tuned model and score
# the same records on the card), not of fine agreement: that is tests/test_vllm_backend.py's, on a peaked model.
TOLERANCE = {"float32": 1e-4, "bfloat16": 1e-2}
FLASH_ATTENTION_USED = "Using FlashAttention-2"  # LLaMA-Factory's log line when it loads the model with FA2
# Records rendered: every other one held out (fold 0), the rest trained on.
IMAGES = {"gpu": 16, "smoke": 4}
STEPS = {"gpu": 4, "smoke": 1}
# The smoke's settings beyond the demo's CPU ones: the smallest step, images at the tiny model's 64 visual tokens.
SMOKE_TRAINING = {
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 1,
    "dataloader_num_workers": 0,
    "image_max_pixels": 64 * 32 * 32,
}


@dataclass
class Check:
    """One row of the table."""

    what: str
    result: str  # pass, fail or skipped
    seconds: float
    detail: str


def timed(what: str, check: Callable[[], tuple[str, str]]) -> Check:
    """Run ``check`` (returning result and detail) as row ``what``; an exception fails the row with its last line,
    and the next checks still run."""
    started = time.perf_counter()
    try:
        result, detail = check()
    except Exception as error:
        log.error("%s failed:\n%s", what, traceback.format_exc())
        result, detail = "fail", f"{type(error).__name__}: {last_line(str(error))}"
    return Check(what, result, time.perf_counter() - started, detail)


class Acceptance:
    """The checks run so far, saved after each."""

    def __init__(self, out: Path, header: dict):
        self.out, self.header, self.checks = out, header, []
        self.started = time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        print(table_row(check), flush=True)
        self.save()
        return check

    @property
    def failed(self) -> bool:
        return any(check.result == "fail" for check in self.checks)

    def save(self) -> None:
        report = {**self.header, "checks": [asdict(check) for check in self.checks]}
        report["total_seconds"] = time.perf_counter() - self.started
        (self.out / "acceptance.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        (self.out / "acceptance.md").write_text(markdown(report) + "\n", encoding="utf-8")


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:400] if lines else ""


TABLE_HEADER = "| check | result | seconds | detail |\n|---|---|---|---|"


def table_row(check: Check) -> str:
    detail = check.detail.replace("|", "\\|").replace("\n", " ")
    return f"| {check.what} | {check.result} | {check.seconds:.1f} | {detail} |"


def markdown(report: dict) -> str:
    checks = [Check(**check) for check in report["checks"]]
    counts = {result: sum(check.result == result for check in checks) for result in ("pass", "fail", "skipped")}
    return "\n".join(
        [
            f"machine: {report['machine']}",
            f"mode: {report['mode']}",
            "",
            TABLE_HEADER,
            *(table_row(check) for check in checks),
            "",
            f"{counts['pass']} passed, {counts['fail']} failed, {counts['skipped']} skipped; end to end "
            f"{report['total_seconds']:.0f} s",
        ]
    )


def machine_line(cuda: bool) -> str:
    import platform

    import torch

    device = torch.cuda.get_device_name(0) if cuda else f"CPU ({os.cpu_count()} cores)"
    return f"{device}; Python {platform.python_version()}, torch {torch.__version__} (CUDA {torch.version.cuda})"


def training_settings(smoke: bool, steps: int, flash_attn: str) -> dict:
    """The recipe's hyper-parameters (schema defaults) for a run of ``steps`` steps; the demo's CPU ones in smoke."""
    settings = {**schema_defaults()["train"]["hyperparameters"], **FIXED_STEPS_RUN, "max_steps": steps}
    if smoke:
        return settings | CPU_TRAINING | SMOKE_TRAINING
    return settings | {"flash_attn": flash_attn, "logging_steps": 1}


@dataclass
class Family:
    """One family's work: its tiny model, its fine-tunes' stages, and what they leave for the checks after them."""

    name: str
    model: Path
    stages: tuple[str, ...]
    compare_with_vllm: bool
    trained: Path | None = None  # the last fine-tune's model: the one scored
    flash_attention_used: int = 0  # fine-tunes whose log says LLaMA-Factory loaded the model with FA2
    scores: object = None  # the transformers backend's table (a DataFrame)


def fine_tune(family: Family, stage: str, train_part, workdir: Path, args) -> tuple[str, str]:
    """One fold fine-tune through ``llamafactory-cli train`` (the workflow's ``train_model``); its loss and dtype."""
    from vlmflow.model.families import family_named
    from vlmflow.model.train import train_model

    run_dir = workdir / f"{family.name}-{stage}"
    log_path = args.out / "logs" / f"{family.name}-{stage}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.unlink(missing_ok=True)
    train_model(
        prompts=train_part,
        dataset="fold0_train",
        workdir=run_dir,
        model=str(family.model),
        fine_tuning={"template": family_named(family.name).template, "finetuning_type": "full"},
        hyperparameters=args.training,
        deepspeed_config=DEEPSPEED_CONFIGS / f"{stage}.json",
        processes=1,
        seed=0,
        log_path=log_path,
        threads=args.threads,
    )
    trained = run_dir / "model"
    loss = json.loads((trained / "train_results.json").read_text(encoding="utf-8"))["train_loss"]
    saved = json.loads((trained / "config.json").read_text(encoding="utf-8")).get("dtype", "?")
    fa2 = FLASH_ATTENTION_USED in log_path.read_text(encoding="utf-8", errors="replace")
    family.trained, family.flash_attention_used = trained, family.flash_attention_used + fa2
    return ("pass" if math.isfinite(loss) else "fail"), (
        f"{args.steps} step(s) on {len(train_part)} records, loss {loss:.3f}, "
        f"{'bf16' if args.training.get('bf16') else 'float32'} training, saved {saved}, "
        f"attention {'fa2' if fa2 else args.training.get('flash_attn')}; log logs/{log_path.name}"
    )


def score(family: Family, held_out, args, backend: str):
    """The held-out fold's score table of the family's last fine-tuned model, by ``backend``."""
    from vlmflow.data.labels import label_names, load_labels
    from vlmflow.model.scoring import score_tables

    pixels = {name: args.training.get(name) for name in ("image_max_pixels", "image_min_pixels")}
    [table] = score_tables(
        family.trained,
        [held_out],
        label_names(load_labels(LABELS)),
        baseline_variant(),
        device=args.device,
        threads=args.threads,
        image_pixels=pixels,
        reason_max_new_tokens=schema_defaults()["score"]["max_new_tokens"],
        batch_size=None,
        backend=backend,
        vllm_python=args.vllm_python or "",
    )
    return table


def probability_columns(table) -> list[str]:
    return [column for column in table.columns if column.startswith("p::")]


def score_with_transformers(family: Family, held_out, args) -> tuple[str, str]:
    table = score(family, held_out, args, "transformers")
    probabilities = table[probability_columns(table)].to_numpy()
    sums = probabilities.sum(axis=1)
    family.scores = table
    ok = len(table) == len(held_out) and bool(((sums > 0.999) & (sums < 1.001)).all())
    return ("pass" if ok else "fail"), (
        f"{len(table)} held-out images x {probabilities.shape[1]} labels on {args.device} ({args.dtype}); "
        f"probabilities sum to {sums.min():.4f}..{sums.max():.4f}"
    )


def compare_with_vllm(family: Family, held_out, args) -> tuple[str, str]:
    import numpy as np

    expected = family.scores
    # vLLM's Python brings its own transformers: the offline stack (offline_stack.sh) must not shadow it there.
    offline_site = os.environ.get("OFFLINE_STACK_SITE")
    if offline_site:
        paths = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        os.environ["PYTHONPATH"] = os.pathsep.join(path for path in paths if path != offline_site)
    table = score(family, held_out, args, "vllm")
    columns = probability_columns(expected)
    difference = float(np.abs(table[columns].to_numpy() - expected[columns].to_numpy()).max())
    same_argmax = int((table["predicted"].to_numpy() == expected["predicted"].to_numpy()).sum())
    tolerance = TOLERANCE[args.dtype]
    return ("pass" if difference < tolerance and list(table["id"]) == list(expected["id"]) else "fail"), (
        f"max |p_vllm - p_transformers| = {difference:.2e} (tolerance {tolerance:g}, {args.dtype}); "
        f"same predicted label on {same_argmax} of {len(table)} images"
    )


def family_checks(family: Family, train_part, workdir: Path, args) -> tuple[list[Check], Family]:
    """The rows of one family's model: its build, then its fine-tunes. Runs in a process of its own where families
    run side by side (``--parallel``)."""
    from vlmflow.demo.tiny_model import build_demo_model

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    size = schema_defaults()["demo"]["model"]

    def build() -> tuple[str, str]:
        build_demo_model(family.model, LABELS, family=family.name, seed=0, size=size)
        return "pass", f"the demo's size: {size}"

    checks = [timed(f"build the tiny {family.name}", build)]
    if checks[0].result == "pass":
        checks += [
            timed(
                f"fine-tune {family.name} under {stage}",
                lambda stage=stage: fine_tune(family, stage, train_part, workdir, args),
            )
            for stage in family.stages
        ]
    return checks, family


def finished(future, family: Family) -> tuple[list[Check], Family]:
    """A family's rows from its process; a process that died is a failed row, not the end of the table."""
    try:
        return future.result()
    except Exception as error:
        return [
            Check(f"fine-tune {family.name}", "fail", 0.0, f"{type(error).__name__}: {last_line(str(error))}")
        ], family


def scoring_checks(families: list[Family], held_out, args) -> list[Check]:
    """Each family's last fine-tuned model scored with the transformers backend, then with vLLM and compared. With
    families side by side (smoke), vLLM's comparison runs beside the transformers scores of the families after it."""
    transformers_rows, compared_rows = [], []
    with ThreadPoolExecutor(1) as vllm_runs:
        for family in families:
            scoring = f"score {family.name} (transformers, {args.device})"
            compared = f"score {family.name} with vLLM, compared"
            if family.trained is None:
                transformers_rows.append(Check(scoring, "fail", 0.0, "no fine-tuned model to score"))
                compared_rows.append(Check(compared, "skipped", 0.0, "no fine-tuned model to score"))
                continue
            transformers_rows.append(
                timed(scoring, lambda family=family: score_with_transformers(family, held_out, args))
            )
            if args.vllm_python is None:
                compared_rows.append(Check(compared, "skipped", 0.0, args.no_vllm))
            elif not family.compare_with_vllm:
                compared_rows.append(Check(compared, "skipped", 0.0, "smoke: vLLM scores the first family only"))
            elif transformers_rows[-1].result != "pass":
                compared_rows.append(
                    Check(compared, "skipped", 0.0, "nothing to compare: the transformers scores failed")
                )
            elif args.smoke:
                compared_rows.append(
                    vllm_runs.submit(timed, compared, lambda family=family: compare_with_vllm(family, held_out, args))
                )
            else:  # on a GPU after the transformers scores: vLLM takes most of the card's free memory
                compared_rows.append(None)
        compared_rows = [
            timed(
                f"score {family.name} with vLLM, compared",
                lambda family=family: compare_with_vllm(family, held_out, args),
            )
            if row is None
            else row
            for family, row in zip(families, compared_rows, strict=True)
        ]
        return transformers_rows + [row if isinstance(row, Check) else row.result() for row in compared_rows]


def vllm_python(args) -> tuple[str | None, str]:
    """The Python that runs the vLLM backend, or None and why there is none."""
    if args.vllm_python:
        path = Path(args.vllm_python)
        return (str(path), "") if path.is_file() else (None, f"--vllm-python {path} does not exist")
    venv = REPO / ".venv-vllm" / "bin" / "python"
    if venv.is_file():
        return str(venv), ""
    if importlib.util.find_spec("vllm") is not None:
        return sys.executable, ""
    return None, "vLLM is not importable here and there is no .venv-vllm (make install-vllm)"


def flash_attention_check(flash, families: list[Family], smoke: bool) -> Check:
    if smoke:
        return Check("flash-attn", "skipped", 0.0, "smoke: flash-attn has no CPU build")
    if not flash.ok:
        return Check("flash-attn", "skipped", 0.0, f"flash_attn does not import ({flash.detail}): trained with SDPA")
    used = sum(family.flash_attention_used for family in families)
    runs = sum(len(family.stages) for family in families)
    return Check(
        "flash-attn",
        "pass" if used == runs else "fail",
        0.0,
        f"{flash.detail}; LLaMA-Factory said '{FLASH_ATTENTION_USED}' in {used} of {runs} fine-tunes",
    )


def machine_check(model_dir: Path, args) -> tuple[str, str]:
    """The machine check of the recipe's configuration with this machine's cards and ``model_dir`` as the model
    (smoke: ZeRO-3 without offload, so that the probe does not compile DeepSpeed's CPU Adam)."""
    import torch

    from vlmflow.runtime.machine import examine_run, write_report

    config = schema_defaults()
    config["labels"] = str(LABELS)
    config["model"]["name_or_path"] = str(model_dir)
    config["train"]["gpus_per_run"] = max(1, torch.cuda.device_count())
    if args.smoke:
        config["train"]["deepspeed"] = "z3"
    stage = config["train"]["deepspeed"]
    deepspeed_file = None if stage == "none" else DEEPSPEED_CONFIGS / f"{stage}.json"
    score_settings = {"backend": config["score"]["backend"], "vllm_python": str(REPO / config["score"]["vllm_python"])}
    report = examine_run(config, score_settings, config["machine_check"], deepspeed_file)
    write_report(args.out / "machine.json", report)
    problems = "; ".join(f"{number}. {problem}" for number, problem in enumerate(report.problems, 1))
    asked = f"the recipe (deepspeed {stage}, flash_attn {config['train']['hyperparameters'].get('flash_attn')})"
    if args.smoke:
        # Without a card the check must find nvidia-smi missing: that it ran through and said so is the pass.
        found_no_gpu = report.status == "problems" and any("nvidia-smi" in problem for problem in report.problems)
        return ("pass" if found_no_gpu else "fail"), (
            f"smoke: {asked} on a CPU machine: status {report.status}, as expected without a GPU: {problems}"
        )
    return ("pass" if report.status == "ok" else "fail"), (
        f"{asked} on {config['train']['gpus_per_run']} GPU(s): status {report.status}"
        + (f": {problems}" if problems else "")
        + " (machine.json)"
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="the same path on the CPU, small (the test)")
    parser.add_argument(
        "--out", type=Path, default=Path(os.environ.get("OUT") or REPO / "benchmarks/results/acceptance")
    )
    parser.add_argument("--workdir", type=Path, help="models, datasets and checkpoints (default: a temp folder)")
    parser.add_argument("--steps", type=int, help=f"optimizer steps a fine-tune (default {STEPS})")
    parser.add_argument("--vllm-python", help="the Python of the vLLM backend (default .venv-vllm's, or this one)")
    parser.add_argument(
        "--threads", type=int, help="CPU threads a job (default: the cores shared by the jobs, at most 8)"
    )
    parser.add_argument(
        "--parallel", type=int, default=len(FAMILIES), help="families fine-tuned side by side (default: all)"
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "gpu"
    args.steps = args.steps or STEPS[mode]
    # The cores shared by the jobs side by side: more threads than cores only contend (on 2 cores, 1 a job).
    args.threads = args.threads or max(1, min(8, (os.cpu_count() or 1) // args.parallel))
    args.out = args.out.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import torch

    from vlmflow.data.labels import load_labels
    from vlmflow.runtime.machine import probe_import

    cuda = torch.cuda.is_available() and not args.smoke
    if not cuda and not args.smoke:
        sys.exit("no CUDA device: run with --smoke for the CPU rehearsal")
    args.device, args.dtype = ("cuda", "bfloat16") if cuda else ("cpu", "float32")
    flash = probe_import("flash_attn") if cuda else None
    args.training = training_settings(args.smoke, args.steps, "fa2" if flash and flash.ok else "sdpa")
    args.vllm_python, args.no_vllm = vllm_python(args)
    header = {
        "command": " ".join(["python", *sys.argv]),
        "machine": machine_line(cuda),
        "mode": "smoke (CPU, float32; each family fine-tuned once, the stages alternating; vLLM on one family)"
        if args.smoke
        else f"GPU (bf16; every family under ZeRO-2 and ZeRO-3, {args.steps} steps each)",
    }
    acceptance = Acceptance(args.out, header)
    print(f"machine: {header['machine']}\nmode: {header['mode']}\n\n{TABLE_HEADER}", flush=True)
    with tempfile.TemporaryDirectory(prefix="vlmflow-acceptance-") as scratch:
        workdir = (args.workdir or Path(scratch)).resolve()
        prompts = demo_prompts(workdir, load_labels(LABELS), IMAGES["smoke" if args.smoke else "gpu"])
        held_out, train_part = prompts.iloc[::2].reset_index(drop=True), prompts.iloc[1::2].reset_index(drop=True)
        plan = dict(SMOKE_PLAN) if args.smoke else None
        families = [
            Family(name, workdir / f"tiny-{name}", (plan[name],) if plan else STAGES, not args.smoke or index == 0)
            for index, name in enumerate(FAMILIES)
        ]
        if args.parallel > 1:
            # Side by side, each family in a process of its own (the trainer's launch handles signals, which only a
            # main thread may): on the CPU most of a fine-tune is its processes importing the stack.
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.parallel, mp_context=context) as pool:
                futures = [pool.submit(family_checks, family, train_part, workdir, args) for family in families]
                import vlmflow.model.scoring  # noqa: F401  (meanwhile: the scoring stack, imported once)

                results = [finished(future, family) for future, family in zip(futures, families, strict=True)]
        else:
            results = [family_checks(family, train_part, workdir, args) for family in families]
        families = [family for _, family in results]
        for checks, _ in results:
            for check in checks:
                acceptance.add(check)
        for check in scoring_checks(families, held_out, args):
            acceptance.add(check)
        acceptance.add(flash_attention_check(flash, families, args.smoke))
        acceptance.add(timed("machine check", lambda: machine_check(families[0].model, args)))
    print(f"\n{args.out / 'acceptance.md'}; end to end {time.perf_counter() - acceptance.started:.0f} s", flush=True)
    return 1 if acceptance.failed else 0


if __name__ == "__main__":
    sys.exit(main())
