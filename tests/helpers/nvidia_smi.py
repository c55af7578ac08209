"""Recorded GPU machines and a fake ``nvidia-smi`` that prints one of them, for tests that read the driver and cards.

The machine check (tests/test_machine.py) and the GPU installer (tests/test_install_gpu.py) both read
``nvidia-smi --query-gpu=driver_version,name,memory.total,memory.free --format=csv,noheader,nounits``; the fake
prints the recorded lines for any arguments but ``-L``, for which it prints the card listing.
"""

from __future__ import annotations

from pathlib import Path

# What the query prints on each machine: 4 x A30 with the recipe machine's 535 driver (CUDA 12.x), 8 x H100 with a
# 580 driver (CUDA 13.x), and an old driver (CUDA 11.x only).
A30_MACHINE = "535.104.05, NVIDIA A30, 24576, 24060\n" * 4
H100_MACHINE = "580.95.05, NVIDIA H100 80GB HBM3, 81559, 81008\n" * 8
OLD_DRIVER_MACHINE = "470.199.02, NVIDIA A100-SXM4-80GB, 81920, 81038\n" * 8


def write_fake_nvidia_smi(folder: Path, recorded: str) -> Path:
    """Write an executable ``nvidia-smi`` into ``folder`` that prints ``recorded``; return ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "recorded.csv").write_text(recorded, encoding="utf-8")
    listing = "".join(
        f"GPU {index}: {line.split(', ')[1]} (UUID: GPU-{index})\n" for index, line in enumerate(recorded.splitlines())
    )
    (folder / "listing.txt").write_text(listing, encoding="utf-8")
    script = folder / "nvidia-smi"
    script.write_text(
        f'#!/bin/sh\nif [ "$1" = "-L" ]; then cat {folder}/listing.txt; else cat {folder}/recorded.csv; fi\n',
        encoding="utf-8",
    )
    script.chmod(0o755)
    return folder
