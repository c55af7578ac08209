"""How fast this machine runs what the demo spends its time on, so that timings taken on two VMs can be compared.

The demo's jobs are mostly interpreter work (imports, PyTorch's per-operation overhead on a tiny model), not
arithmetic: the same `make demo` took 915 s on one 2-core VM and 1464 s on another (docs/benchmarks.md,
"make demo"). Run it on an idle machine, before or after a timing:

    .venv/bin/python benchmarks/machine_speed.py
"""

import subprocess
import sys
import time

import torch


def seconds(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def python_loop() -> None:
    total = 0
    for number in range(30_000_000):
        total += number


def matmul_one_thread() -> None:
    torch.set_num_threads(1)
    matrix = torch.randn(512, 512)
    for _ in range(200):
        matrix @ matrix


def import_llamafactory_trainer() -> None:
    # A fresh interpreter, as every fine-tune job pays it.
    subprocess.run([sys.executable, "-c", "from llamafactory.train.tuner import run_exp"], check=True)


def main() -> None:
    print("| probe | s |\n|---|---|")
    print(f"| pure-Python loop, 30 million additions | {seconds(python_loop):.2f} |")
    print(f"| 200 products of 512x512 matrices, one thread | {seconds(matmul_one_thread):.2f} |")
    print(f"| a fresh interpreter importing LLaMA-Factory's trainer | {seconds(import_llamafactory_trainer):.2f} |")


if __name__ == "__main__":
    main()
