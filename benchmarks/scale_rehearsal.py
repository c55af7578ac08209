"""A scale rehearsal on this machine: the workflow on a generated MIRE-format test set of 10,000 images.

It measures, and prints as Markdown for docs/benchmarks.md:
- the DAG build time (`snakemake -n` from nothing) of the shipped variants and folds over that data;
- the workflow itself generating the data, ingesting it and building the baseline's prompts (the rules'
  own benchmark files);
- OCR images/s with the configured engine and options, on the first ``--ocr-images`` test images;
- scoring images/s of the demo's tiny model for each backend and batch size, on the first
  ``--score-images`` test prompts, for a label-first and a reason-first variant.

    .venv/bin/python benchmarks/scale_rehearsal.py [--workdir DIR] [--n-test 10000] [--backends transformers vllm]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile")]
MODEL = "resources/demo/tiny-qwen2-vl"
# Scored with the baseline's prompts: what differs is the answer, generated reason first or not.
VARIANTS = [{"name": "baseline"}, {"name": "reason_first", "reason": True}]


def snakemake(workdir: Path, *args: str) -> float:
    """Run Snakemake in ``workdir``; its wall seconds."""
    env = {**os.environ, "SLURM_CONF": str(REPO / "tests" / "slurm_without_controller.conf"), "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    result = subprocess.run([*SNAKEMAKE, "--directory", str(workdir), *args], env=env, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def rule_seconds(workdir: Path) -> pd.DataFrame:
    """Wall seconds and peak memory of every job that ran, from the rules' benchmark files."""
    rows = []
    for path in sorted((workdir / "benchmarks").rglob("*.tsv")):
        row = pd.read_csv(path, sep="\t").iloc[0]
        rows.append({"job": str(path.relative_to(workdir / "benchmarks")), "s": row["s"], "max_rss_mb": row["max_rss"]})
    return pd.DataFrame(rows)


def ocr_rate(workdir: Path, images: list[str], config: dict) -> float:
    from vlmflow.data.ocr import make_ocr_engine

    engine = make_ocr_engine(config["ocr"]["engine"], threads=2, **config["ocr"]["options"])
    engine.read(images[0])  # model load and first-call costs are not a rate
    started = time.perf_counter()
    for image in images[1:]:
        engine.read(image)
    return (len(images) - 1) / (time.perf_counter() - started)


def scoring_variants() -> dict:
    """The scored variants with the schema's defaults filled in."""
    from vlmflow.prompting.variants import PromptVariant
    from vlmflow.runtime.plan import load_config

    config = load_config([], {"variants": VARIANTS})
    return {entry["name"]: PromptVariant.from_config(entry) for entry in config["variants"]}


def scoring_rate(workdir: Path, prompts: pd.DataFrame, variant, backend: str, batch_size: int) -> float:
    """Images/s of ``score_tables`` over ``prompts`` after a warm-up table of ``batch_size`` rows (the model
    load and first calls are not counted)."""
    from vlmflow.data.labels import label_names, load_labels
    from vlmflow.model.scoring import score_tables

    labels = label_names(load_labels(REPO / "config" / "labels.yaml"))
    tables = score_tables(
        workdir / MODEL,
        [prompts.iloc[:batch_size], prompts],
        labels,
        variant,
        device="cpu",
        threads=1,
        batch_size=batch_size,
        backend=backend,
        vllm_python=REPO / ".venv-vllm" / "bin" / "python",
        reason_max_new_tokens=90,
    )
    next(tables)
    started = time.perf_counter()
    next(tables)
    return len(prompts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/vlmflow-scale"))
    parser.add_argument("--n-test", type=int, default=10_000)
    parser.add_argument("--ocr-images", type=int, default=40)
    parser.add_argument("--score-images", type=int, default=64)
    parser.add_argument("--reason-images", type=int, default=16)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--backends", nargs="+", default=["transformers", "vllm"])
    parser.add_argument("--full", metavar="BACKEND", help="also score every test image with BACKEND, largest batch")
    args = parser.parse_args()
    workdir = args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    config["labels"] = str(REPO / "config" / "labels.yaml")
    config["demo"]["n_test"] = args.n_test
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    print(f"Command: `{shlex.join([sys.executable, *sys.argv])}`")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    print(f"Machine: {machine}, load average {os.getloadavg()[0]:.1f} at the start")

    configured = ["--configfile", str(workdir / "config.yaml")]
    dag = snakemake(workdir, *configured, "-n", "--quiet", "rules")
    print(f"\nDAG build (`snakemake -n`, nothing made yet, {args.n_test:,} test records): {dag:.2f} s")
    made = snakemake(workdir, *configured, "--cores", "2", "results/baseline/prompts.parquet", MODEL)
    print(f"\nData, ingest and baseline prompts through the workflow: {made:.1f} s wall")
    print(rule_seconds(workdir).to_markdown(index=False))  # the rules with a benchmark file

    prompts = pd.read_parquet(workdir / "results/baseline/prompts.parquet")
    test = prompts[prompts["split"] == "test"]
    print(f"\nTest prompts: {len(test):,}")
    rate = ocr_rate(workdir, list(test["image_path"].iloc[: args.ocr_images]), config)
    print(
        f"OCR ({config['ocr']['engine']}, {config['ocr']['options']}, 2 threads): {rate:.2f} images/s "
        f"over {args.ocr_images - 1} images; {args.n_test / rate / 3600:.1f} h for all {args.n_test:,}"
    )

    print("\n| variant | backend | batch | images | images/s |\n|---|---|---|---|---|")
    variants = scoring_variants()
    for name, count in (("baseline", args.score_images), ("reason_first", args.reason_images)):
        for backend in args.backends:
            for batch in args.batch_sizes:
                rate = scoring_rate(workdir, test.iloc[:count], variants[name], backend, batch)
                print(f"| {name} | {backend} | {batch} | {count} | {rate:.2f} |", flush=True)
    if args.full:
        batch = max(args.batch_sizes)
        rate = scoring_rate(workdir, test, variants["baseline"], args.full, batch)
        print(f"| baseline | {args.full} | {batch} | {len(test):,} (all) | {rate:.2f} |")
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"\nPeak resident memory of this process: {peak:,.0f} MB")


if __name__ == "__main__":
    main()
