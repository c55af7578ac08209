"""One timed fine-tune for train_speed.py: LLaMA-Factory's ``run_exp`` on the workflow's YAML (what
``llamafactory-cli train`` runs under torchrun), with a clock on the steps and, optionally, a profiler.

    python -m torch.distributed.run --nproc_per_node 1 benchmarks/gpu/timed_train.py YAML RESULT_JSON \
        --timed-steps FIRST LAST [--profile] [--image-token-id ID]

The process ends at step LAST, skipping LLaMA-Factory's final save. The clock synchronises the device at the
end of step FIRST and of step LAST and nowhere else, so the run's own host syncs (logging, the NaN filter) are
what is measured, not the measurement's. The dataset's non-padding sample lengths (and visual tokens, counted
by their pad token) are read from the tokenized dataset the trainer holds, for the FLOP count. With
``--profile`` torch.profiler records steps FIRST+1..LAST, and the summary says how long the GPU was busy per
step (the union of its kernels' intervals), how often the host waited for the device, and which host
operations took the most time.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import yaml
from transformers import TrainerCallback

# Host calls that wait for the device: explicit syncs, and the copy behind every .item() on a device tensor.
HOST_WAITS = ("cudaDeviceSynchronize", "cudaStreamSynchronize", "cudaEventSynchronize", "aten::_local_scalar_dense")


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def busy_microseconds(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals: kernels on several streams overlap."""
    busy, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            busy += end - max(start, reach)
            reach = end
    return busy


def profile_summary(profiler, steps: int, top: int = 12) -> dict:
    """GPU-busy time per step, host waits per step, and the host operations with the most self time."""
    from torch.autograd import DeviceType

    device_events = [event for event in profiler.events() if event.device_type == DeviceType.CUDA]
    intervals = [(event.time_range.start, event.time_range.end) for event in device_events]
    averages = [entry for entry in profiler.key_averages() if entry.device_type == DeviceType.CPU]
    host = sorted(averages, key=lambda entry: entry.self_cpu_time_total, reverse=True)[:top]
    return {
        "profiled_steps": steps,
        "gpu_busy_ms_per_step": busy_microseconds(intervals) / 1000 / steps if device_events else None,
        "kernels_per_step": len(device_events) / steps,
        "host_waits_per_step": {
            entry.key: entry.count / steps for entry in averages if entry.key in HOST_WAITS and entry.count
        },
        "top_host_operations": [
            {
                "name": entry.key,
                "calls_per_step": entry.count / steps,
                "self_cpu_ms_per_step": entry.self_cpu_time_total / 1000 / steps,
            }
            for entry in host
        ],
    }


class StepClock(TrainerCallback):
    """Times steps (first, last] and records what the FLOP count needs; see the module docstring."""

    def __init__(self, result_path: Path, first: int, last: int, profile: bool, image_token_id: int | None):
        self.result_path = result_path
        self.first, self.last, self.profile, self.image_token_id = first, last, profile, image_token_id
        self.result: dict = {}
        self.profiler = None
        self.started = 0.0

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        samples = train_dataloader.dataset["input_ids"]
        lengths = [len(ids) for ids in samples]
        visual = [ids.count(self.image_token_id) if self.image_token_id is not None else 0 for ids in samples]
        self.result["dataset"] = {
            "samples": len(lengths),
            "lengths": lengths,
            "visual_tokens": visual,
        }
        self.result["samples_per_step"] = (
            args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
        )

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.first:
            synchronize()
            self.started = time.perf_counter()
            if self.profile:
                activities = [torch.profiler.ProfilerActivity.CPU]
                if torch.cuda.is_available():
                    activities.append(torch.profiler.ProfilerActivity.CUDA)
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.start()
        elif state.global_step == self.last:
            synchronize()
            seconds = time.perf_counter() - self.started
            self.result |= {
                "steps_timed": self.last - self.first,
                "seconds": seconds,
                "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if torch.cuda.is_available() else None,
            }
            if self.profiler is not None:
                self.profiler.stop()
                self.result["profile"] = profile_summary(self.profiler, self.last - self.first)
            if os.environ.get("RANK", "0") == "0":
                self.result_path.write_text(json.dumps(self.result) + "\n", encoding="utf-8")
            # Done: the final save LLaMA-Factory makes next (seconds for 2B, a minute for 7B) times the disk.
            os._exit(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, help="the LLaMA-Factory YAML")
    parser.add_argument("result", type=Path, help="where rank 0 writes the timings (JSON)")
    parser.add_argument("--timed-steps", type=int, nargs=2, metavar=("FIRST", "LAST"), required=True)
    parser.add_argument("--profile", action="store_true", help="record the timed steps with torch.profiler")
    parser.add_argument("--image-token-id", type=int, help="the visual pad token, counted per sample")
    args = parser.parse_args()
    from llamafactory.train.tuner import run_exp

    clock = StepClock(args.result, *args.timed_steps, args.profile, args.image_token_id)
    run_exp(yaml.safe_load(args.config.read_text(encoding="utf-8")), callbacks=[clock])
    raise SystemExit(f"training ended before step {args.timed_steps[1]}: nothing timed")


if __name__ == "__main__":
    main()
