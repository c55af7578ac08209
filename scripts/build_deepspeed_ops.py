"""Build DeepSpeed's CPU operations once, at install, instead of at a fine-tune's first step.

DeepSpeed compiles its CPU Adam (used by ZeRO offload, `train.deepspeed: z3_offload`) and its shared-memory
collectives (every DeepSpeed run on the CPU accelerator) just in time, into torch's extension cache
(~/.cache/torch_extensions, or $TORCH_EXTENSIONS_DIR), the first time a process needs them: about 100 s and
50 s on 2 cores, during the first such fine-tune on a machine. `make install` runs this so that the time is
paid there, once; a later call finds them built and returns at once.

    .venv/bin/python scripts/build_deepspeed_ops.py
"""

import time

from deepspeed.accelerator import get_accelerator

# DeepSpeed's names of the builders, as its CPU accelerator knows them.
BUILDERS = ("CPUAdamBuilder", "ShareMemCommBuilder")

if __name__ == "__main__":
    for name in BUILDERS:
        started = time.monotonic()
        builder = get_accelerator().create_op_builder(name)
        if builder is None or not builder.is_compatible():
            print(f"DeepSpeed {name}: not available for this accelerator, skipped")
            continue
        builder.load(verbose=False)
        print(f"DeepSpeed {builder.NAME}: ready ({time.monotonic() - started:.0f} s)")
