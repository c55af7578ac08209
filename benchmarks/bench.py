"""`make bench`: one table of the workflow's costs, measured on this machine after a `make demo`.

- demo wall time per stage, from the Snakemake `benchmark:` files of the last run (benchmarks/<stage>/);
- OCR images per second (first reads) and the cache hit rate, from results/ocr/ocr.parquet and the
  OCR jobs' benchmark files; then a rerun of OCR over cached images, counting engine calls (target 0);
- the time of a no-op `snakemake` (everything up to date; target under 3 s), and the part of it spent
  importing the SLURM executor plugin;
- DAG build time for 5 variants x 5 folds (a dry run from nothing);
- all-label scoring against greedy generation and naive per-label scoring (benchmarks/scoring_speed.py).

    .venv/bin/python benchmarks/bench.py [--images 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile")]


def stage_times(folder: Path) -> pd.DataFrame:
    """Jobs, total and slowest wall seconds, and peak memory per stage (the first folder under benchmarks/)."""
    rows = []
    for path in sorted(folder.rglob("*.tsv")):
        stage = path.relative_to(folder).parts[0]
        if stage in ("gpu", "results"):
            continue
        record = pd.read_csv(path, sep="\t").iloc[-1]
        rows.append({"stage": stage, "seconds": float(record["s"]), "max_rss_mb": float(record["max_rss"])})
    if not rows:
        raise SystemExit(f"no benchmark files under {folder}: run `make demo` first")
    table = pd.DataFrame(rows).groupby("stage", sort=False)
    return table.agg(
        jobs=("seconds", "size"),
        total_s=("seconds", "sum"),
        slowest_s=("seconds", "max"),
        max_rss_mb=("max_rss_mb", "max"),
    ).reset_index()


class CountingEngine:
    """Wraps an OCR engine and counts reads, to show a cached rerun reads nothing."""

    def __init__(self, engine) -> None:
        self.engine, self.name, self.reads = engine, engine.name, 0

    def read(self, image_path):
        self.reads += 1
        return self.engine.read(image_path)


def ocr_figures(config: dict) -> dict:
    from vlmflow.data.ingest import read_split_tables
    from vlmflow.data.ocr import OcrCache, make_ocr_engine, ocr_images

    table = pd.read_parquet(REPO / "results/ocr/ocr.parquet")
    ocr_seconds = sum(float(pd.read_csv(p, sep="\t").iloc[-1]["s"]) for p in (REPO / "benchmarks/ocr").glob("*.tsv"))
    first_reads = int((~table["from_cache"]).sum())
    records = read_split_tables([REPO / "results/data/train.parquet", REPO / "results/data/test.parquet"])
    options = {**config["ocr"].get("options", {})}
    engine = CountingEngine(make_ocr_engine(config["ocr"].get("engine", "rapidocr"), threads=1, **options))
    cache = OcrCache(REPO / config["ocr"].get("cache_dir", "resources/ocr_cache"), engine.name, options)
    start = time.perf_counter()
    rerun = ocr_images(records, engine, cache)
    return {
        "images": len(table),
        "first_reads": first_reads,
        "images_per_s": first_reads / ocr_seconds if first_reads and ocr_seconds else float("nan"),
        "cache_hit_rate_last_run": float(table["from_cache"].mean()),
        "rerun_images": len(rerun),
        "rerun_engine_calls": engine.reads,
        "rerun_s": time.perf_counter() - start,
    }


def timed(command: list[str], cwd: Path, env: dict | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def dag_build_seconds() -> tuple[float, int]:
    """Dry run from nothing with 5 variants x 5 folds; returns seconds and planned jobs."""
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text(encoding="utf-8"))
    config["labels"] = str(REPO / config["labels"])
    config["variants"] = [{"name": f"variant{i}", "ocr": i % 2 == 1} for i in range(5)]
    config["final"]["ablation_variants"] = None  # every variant: the largest DAG of 5 variants
    config["train"]["folds"] = 5
    with tempfile.TemporaryDirectory() as scratch:
        config_path = Path(scratch) / "config.yaml"
        config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
        command = [*SNAKEMAKE, "--directory", scratch, "--configfile", str(config_path), "-n", "--quiet", "rules"]
        start = time.perf_counter()
        result = subprocess.run(command, cwd=scratch, check=True, capture_output=True, text=True)
        seconds = time.perf_counter() - start
    total = next(line.split()[-1] for line in result.stdout.splitlines() if line.startswith("total"))
    return seconds, int(total)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5, help="images timed by the scoring benchmark")
    parser.add_argument(
        "--rerun-triggers",
        nargs="+",
        help="passed to the no-op snakemake runs, e.g. `mtime` when code changed since the demo ran",
    )
    args = parser.parse_args()
    triggers = ["--rerun-triggers", *args.rerun_triggers] if args.rerun_triggers else []
    config = yaml.safe_load((REPO / "config/demo.yaml").read_text(encoding="utf-8"))
    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(f"machine: {platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}\n")

    print("## Demo wall time per stage (Snakemake benchmark files of the last run)\n")
    print(stage_times(REPO / "benchmarks").to_markdown(index=False, floatfmt=".1f"), "\n")

    ocr = ocr_figures(config)
    print("## OCR\n")
    print(pd.DataFrame([ocr]).to_markdown(index=False, floatfmt=".3f"))
    verdict = "met" if ocr["rerun_engine_calls"] == 0 else "MISSED"
    print(
        f"\ntarget: an OCR rerun over cached images does no OCR: {verdict} ({ocr['rerun_engine_calls']} engine calls)\n"
    )

    pending = subprocess.run([*SNAKEMAKE, *triggers, "-n"], cwd=REPO, capture_output=True, text=True, check=True)
    if "Nothing to be done" not in pending.stdout + pending.stderr:
        raise SystemExit("the workflow is not up to date, so a no-op run cannot be timed: run `make demo` first")
    no_op = [timed([*SNAKEMAKE, *triggers, "--cores", "1", "--quiet"], REPO) for _ in range(3)]
    median = statistics.median(no_op)
    dag_seconds, jobs = dag_build_seconds()
    print("## Snakemake\n")
    print("| measure | seconds |\n|---|---|")
    print(f"| no-op `snakemake` (median of 3) | {median:.2f} |")
    # The SLURM executor plugin asks `scontrol` for the cluster's config when imported, at every start;
    # where SLURM's client is installed but no controller answers, that waits out a 10 s timeout.
    plugin = statistics.median(
        timed([sys.executable, "-c", "import snakemake_executor_plugin_slurm"], REPO) for _ in range(3)
    )
    print(f"| of which: importing the SLURM executor plugin (median of 3) | {plugin:.2f} |")
    # What a machine where the probe answers at once sees (no SLURM client, or a live controller): the
    # tests' SLURM_CONF, whose controller is absent and whose MessageTimeout is 1 s, so scontrol gives up.
    quick_probe = {**os.environ, "SLURM_CONF": str(REPO / "tests/slurm_without_controller.conf")}
    no_probe = statistics.median(
        timed([*SNAKEMAKE, *triggers, "--cores", "1", "--quiet"], REPO, quick_probe) for _ in range(3)
    )
    print(f"| no-op `snakemake`, SLURM probe failing at once (median of 3) | {no_probe:.2f} |")
    print(f"| DAG build, 5 variants x 5 folds ({jobs} jobs, dry run) | {dag_seconds:.2f} |")
    print(
        f"\ntarget: no-op `snakemake` under 3 s: {'met' if median < 3 else 'MISSED'} on this machine as it is, "
        f"{'met' if no_probe < 3 else 'MISSED'} where the SLURM probe fails at once\n"
    )

    print("## Scoring\n", flush=True)
    scoring = [
        sys.executable,
        str(REPO / "benchmarks/scoring_speed.py"),
        "--images",
        str(args.images),
        "--threads",
        "1",
    ]
    subprocess.run(scoring, check=True)


if __name__ == "__main__":
    main()
