"""What one job needs of the machine: host memory for the whole job and GPU memory on each card it uses.

Every GPU rule declares these as Snakemake resources (``mem_mb``, ``gpu_mem_mb``; workflow/rules/common.smk), so
that Snakemake never starts jobs that do not fit together, and a machine that cannot run one job fails at start
(``declared_machine_problems``). The machine check (``vlmflow.runtime.machine``) asks ``job_needs`` too.

The numbers come from the model's ``config.json`` (``ModelSize``: parameters counted on PyTorch's meta device, no
weight read), the fine-tuning method (full, freeze, LoRA), what LLaMA-Factory freezes (the vision tower and the
projector, by default) and the DeepSpeed stage. On the cards, the bytes per parameter are those of mixed-precision
Adam as DeepSpeed's ZeRO memory estimators count them (``deepspeed.runtime.zero.stage3.
estimate_zero3_model_states_mem_needs``, ``stage_1_and_2.estimate_zero2_...``; tests/test_memory.py checks them):
bf16 weights 2 B for every parameter, and fp32 gradients 4 B, an fp32 master copy 4 B and Adam's two moments 8 B per
trainable one. In host memory under ``z3_offload``, what DeepSpeed allocates there (``OFFLOADED_GRADIENT_BYTES``),
not its estimator's worst case. Everything beyond the model states (activations, the CUDA context, the process
itself) is a margin, labelled below as measured or estimated.

Units are Snakemake's: MB = 10**6 bytes.

``python -m vlmflow.runtime.memory --profile profiles/gpu`` writes this machine's totals into a profile's
``resources:`` (README, "Your own GPUs").
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

MB = 10**6
MIB = 2**20

# Model states per parameter (DeepSpeed's estimators, the ZeRO paper's mixed-precision Adam).
WEIGHT_BYTES = {True: 2, False: 4}  # bf16, or fp32 when bf16 is off (the CPU demo)
GRADIENT_BYTES = 4  # fp32 gradients the optimizer steps on
MASTER_BYTES = {True: 4, False: 0}  # the fp32 master copy a bf16 run keeps; an fp32 run steps its own weights
ADAM_BYTES = 8  # fp32 first and second moments
# ZeRO-3 with optimizer and parameter offload (config/deepspeed/z3_offload.json) keeps in host memory every
# parameter's 16-bit partition (offload_param) and, for each trainable one, the fp32 master copy and Adam's moments
# (the ZeRO-Offload paper's 12 B: Ren et al. 2021, "ZeRO-Offload", section 4) and its gradient twice: the 16-bit
# partition the micro-steps accumulate into (the paper's 2 B; DeepSpeed 0.19.8, requirements/deepspeed.txt,
# deepspeed/runtime/zero/stage3.py: grad_partitions_flat_buffer, in the model's dtype, on the host under
# offload_optimizer) and the fp32 copy CPU Adam steps on (initialize_optimizer_states' subgroup_gradient_buffer,
# pinned, kept all run; the paper has none): 6 B. Frozen parameters have only their 16-bit partition.
OFFLOADED_GRADIENT_BYTES = 2 + 4
# DeepSpeed's additional_buffer_factor (its estimators' default) on what ZeRO-3 without offload keeps in host
# memory (the live layer each rank gathers, in estimate_zero3_model_states_mem_needs). Its offload estimate
# (estimate_zero3_model_states_mem_needs_all_live: 18 B for every parameter, trainable or not, x 1.5) is the
# documented worst case; tests/test_memory.py shows it beside ours.
HOST_BUFFER_FACTOR = 1.5
# ZeRO-3 gathers one layer at a time onto the card: its 16-bit weights and gradients (the estimators' 4 B).
LIVE_LAYER_BYTES = 4
DEEPSPEED_STAGES = ("none", "z2", "z3", "z3_offload")
METHODS = ("full", "freeze", "lora")
# A full or freeze fine-tune of a vision-language model leaves the vision tower and the projector untouched unless
# train.hyperparameters says otherwise: LLaMA-Factory's defaults (FinetuningArguments in
# llamafactory/hparams/finetuning_args.py; get_forbidden_modules in model/model_utils/visual.py), which the schema
# does not restate. Frozen parameters carry no gradient and no optimizer state.
LLAMAFACTORY_FREEZES = {"freeze_vision_tower": True, "freeze_multi_modal_projector": True}

# Margins beyond the model states, in MB.
# Estimated: activations of one training rank at the recipe's batch (2 x 3,000 tokens) with gradient checkpointing
# (LLaMA-Factory's default), for Qwen2-VL-7B: the loss's fp32 logits (2 x 3,000 x 152,064 x 4 B = 3.6 GB), the
# layers' checkpointed inputs (2 x 3,000 x 3,584 x 2 B x 28 = 1.2 GB) and one layer recomputed. Smaller models
# need less; this reserves the 7B's for them.
TRAINING_ACTIVATIONS_MB = 6_000
# Estimated: the CUDA context, cuBLAS workspaces and the caching allocator's fragmentation on each card.
CUDA_CONTEXT_MB = 1_000
# Measured, rounded up: a tiny fold fine-tune on the CPU peaks at 1,990 MB resident (Python, torch, transformers,
# LLaMA-Factory, the tokenized data; docs/benchmarks.md); a GPU rank also maps the CUDA libraries (estimated).
TRAINING_PROCESS_MB = 3_000
# Measured, rounded up: a tiny model scoring the demo's test set peaks at 1,667 MB resident (docs/benchmarks.md).
SCORING_PROCESS_MB = 2_000
# Estimated: one scoring forward's hidden states and the label continuations' logits (25 rows of a few tokens
# over a 152,064-token vocabulary, bf16 and their fp32 log-softmax, about 0.3 GB an image for the 7B).
SCORING_ACTIVATIONS_MB = 1_000
ADAPTER_BYTES = 4  # PEFT saves LoRA weights in float32
KV_BYTES = 2  # the scorer's KV cache is in the model's bf16 (K and V are the 2 of layers x heads x dim x 2 x 2)
# The measure of a MIRE scoring prompt: about 750 visual tokens, the prompt with 25 labels and the OCR text.
PROMPT_TOKENS = 1_300


@dataclass(frozen=True)
class JobMemory:
    host_mb: int  # host memory of the whole job, all ranks together
    gpu_mb: int  # GPU memory needed on each card it uses (0 for a CPU job)
    gpus: int  # cards it uses


@dataclass(frozen=True)
class ModelSize:
    parameters: int
    language_layers: int
    lora_parameters: int  # of rank 1 on every linear layer of the language model: scale by the rank
    largest_layer_parameters: int = 0  # the largest module's own parameters (ZeRO-3 gathers one at a time)
    kv_bytes_per_token: int = 0  # KV cache of one token in bf16: layers x KV heads x head_dim x 2 (K, V) x 2 B
    vision_tower_parameters: int = 0  # what freeze_vision_tower freezes (the family's vision_tower modules)
    projector_parameters: int = 0  # what freeze_multi_modal_projector freezes (the family's projector)

    @classmethod
    def of(cls, name_or_path: str | Path) -> ModelSize:
        """Parameter counts of the model a ``config.json`` describes, built without weights."""
        import torch
        from transformers import AutoConfig, AutoModelForImageTextToText

        from vlmflow.model.families import family_of, model_config

        config = AutoConfig.for_model(**model_config(name_or_path))
        with torch.device("meta"):
            model = AutoModelForImageTextToText.from_config(config)
        family = family_of(name_or_path)

        def under(keys: tuple[str, ...]) -> int:  # matched as LLaMA-Factory matches its freeze keys: a substring
            return sum(weight.numel() for name, weight in model.named_parameters() if any(key in name for key in keys))

        linear = [
            module
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear) and "visual" not in name and "lm_head" not in name
        ]
        text = config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        return cls(
            parameters=sum(parameter.numel() for parameter in model.parameters()),
            language_layers=text.num_hidden_layers,
            lora_parameters=sum(module.in_features + module.out_features for module in linear),
            # As deepspeed's estimate_zero3_model_states_mem_needs_all_live counts it.
            largest_layer_parameters=max(
                sum(parameter.numel() for parameter in module.parameters(recurse=False)) for module in model.modules()
            ),
            kv_bytes_per_token=text.num_hidden_layers * text.num_key_value_heads * head_dim * 2 * KV_BYTES,
            vision_tower_parameters=under(family.vision_tower),
            projector_parameters=under(family.projector),
        )

    def saved_bytes(self, train: dict) -> float:
        """A fine-tune's saved model: a LoRA adapter, or every weight in bf16."""
        if train["finetuning_type"] == "lora":
            return self.lora_parameters * train["lora"]["rank"] * ADAPTER_BYTES
        return self.parameters * WEIGHT_BYTES[True]

    def trainable(self, train: dict) -> float:
        """Parameters a fine-tune of ``train`` (config train: finetuning_type, freeze, lora, hyperparameters)
        updates."""
        method = train["finetuning_type"]
        return trainable_parameters(
            self,
            method,
            trainable_layers=train.get("freeze", {}).get("trainable_layers") if method == "freeze" else None,
            lora_rank=train.get("lora", {}).get("rank") if method == "lora" else None,
            **frozen_parts(train.get("hyperparameters", {})),
        )


def frozen_parts(hyperparameters: dict) -> dict[str, bool]:
    """LLaMA-Factory's two freeze switches as config train.hyperparameters sets them, its defaults otherwise."""
    return {switch: hyperparameters.get(switch, default) for switch, default in LLAMAFACTORY_FREEZES.items()}


# The demo's tiny random-weight model (the schema's demo.model: text width 128, 2 layers, a 4,000-token
# vocabulary) as ModelSize.of counts the built one (tests/test_memory.py builds it and compares). A rule builds it,
# so it does not exist when the workflow is parsed, and reading it would import torch at every parse; its model
# states (16 B x 1.3 M, 21 MB) are lost in the process's own footprint, which is what its jobs need.
DEMO_MODEL_SIZE = ModelSize(
    parameters=1_306_112,
    language_layers=2,
    lora_parameters=5_888,
    largest_layer_parameters=269_696,
    kv_bytes_per_token=1_024,
    vision_tower_parameters=142_208,
    projector_parameters=98_816,
)


# Raise when ModelSize.of counts a field differently: the on-disk cache of sizes is keyed by it. 2: the vision
# tower's and the projector's parameters.
MODEL_SIZE_VERSION = 2


def model_size(name_or_path: str | Path, cache: Path | None = None) -> ModelSize:
    """``ModelSize.of``, remembered by the config's content: building even a meta model takes seconds (about 9 for
    the 7B on 2 cores), and the workflow sizes its jobs at every start. ``cache``: default
    $XDG_CACHE_HOME/vlmflow/model_sizes."""
    from vlmflow.model.families import model_config

    config = json.dumps(model_config(name_or_path), sort_keys=True)
    folder = cache or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vlmflow" / "model_sizes"
    # The fields and MODEL_SIZE_VERSION are part of the key: a cache written before a field was added, or before a
    # field's counting changed, is not read.
    fields = ",".join(ModelSize.__dataclass_fields__)
    key = hashlib.sha256(f"{config}{fields}v{MODEL_SIZE_VERSION}".encode()).hexdigest()[:32]
    path = folder / f"{key}.json"
    if path.is_file():
        return ModelSize(**json.loads(path.read_text(encoding="utf-8")))
    size = ModelSize.of(name_or_path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staged = path.with_suffix(f".{os.getpid()}.partial")
        staged.write_text(json.dumps(asdict(size)), encoding="utf-8")
        staged.replace(path)  # two parses at once both write the same answer
    except OSError:  # a read-only home: sized again next time, nothing lost
        pass
    return size


def trainable_parameters(
    size: ModelSize,
    method: str,
    *,
    trainable_layers: int | None = None,
    lora_rank: int | None = None,
    freeze_vision_tower: bool = LLAMAFACTORY_FREEZES["freeze_vision_tower"],
    freeze_multi_modal_projector: bool = LLAMAFACTORY_FREEZES["freeze_multi_modal_projector"],
) -> float:
    """Parameters a fine-tune updates: the language model, and the vision tower and the projector where their freeze
    switch is off (full); of the language model the last ``trainable_layers`` decoder layers' share (freeze; None:
    every layer), the tower and projector as in full; the adapters of ``lora_rank`` on every linear layer of the
    language model (lora: with the tower unfrozen LLaMA-Factory adds adapters there too, a few M, not counted)."""
    towers = (0 if freeze_vision_tower else size.vision_tower_parameters) + (
        0 if freeze_multi_modal_projector else size.projector_parameters
    )
    language = size.parameters - size.vision_tower_parameters - size.projector_parameters
    if method == "full":
        return language + towers
    if method == "freeze":
        # The embeddings and the head counted in the layers' share: an upper bound (LLaMA-Factory trains the layers
        # alone). An unfrozen tower is counted whole: also an upper bound, since freeze trains its blocks whose index
        # is a trained layer's (".{index}." in the name, llamafactory/model/adapter.py _setup_freeze_tuning).
        layers = min(trainable_layers or size.language_layers, size.language_layers)
        return language * layers / size.language_layers + towers
    if method == "lora":
        if lora_rank is None:
            raise ValueError("method lora needs lora_rank (config train.lora.rank)")
        return size.lora_parameters * lora_rank
    raise ValueError(f"unknown fine-tuning method {method!r}; one of {', '.join(METHODS)}")


def _mb(count: float) -> int:
    return int(-(-count // MB))  # rounded up


def fine_tune_memory(
    size: ModelSize,
    *,
    method: str,
    deepspeed: str | None,
    gpus: int,
    bf16: bool = True,
    trainable_layers: int | None = None,
    lora_rank: int | None = None,
    freeze_vision_tower: bool = LLAMAFACTORY_FREEZES["freeze_vision_tower"],
    freeze_multi_modal_projector: bool = LLAMAFACTORY_FREEZES["freeze_multi_modal_projector"],
) -> JobMemory:
    """Host memory (all ranks) and memory per card of one fine-tune of ``size`` on ``gpus`` cards (one rank each),
    with DeepSpeed ``deepspeed`` (none, z2, z3, z3_offload; None is none). ``gpus`` 0 trains on the CPU: every
    byte is host memory. ``trainable_layers`` and ``lora_rank`` are config train.freeze and train.lora's, the two
    freeze switches train.hyperparameters' (``frozen_parts``)."""
    stage = deepspeed or "none"
    if stage not in DEEPSPEED_STAGES:
        raise ValueError(f"unknown DeepSpeed stage {stage!r}; one of {', '.join(DEEPSPEED_STAGES)}")
    trainable = trainable_parameters(
        size,
        method,
        trainable_layers=trainable_layers,
        lora_rank=lora_rank,
        freeze_vision_tower=freeze_vision_tower,
        freeze_multi_modal_projector=freeze_multi_modal_projector,
    )
    ranks = max(gpus, 1)
    weights = size.parameters * WEIGHT_BYTES[bf16]
    states = trainable * (GRADIENT_BYTES + MASTER_BYTES[bf16] + ADAM_BYTES)  # partitioned by ZeRO
    live_layer = LIVE_LAYER_BYTES * size.largest_layer_parameters
    processes = ranks * TRAINING_PROCESS_MB * MB
    if gpus == 0:
        return JobMemory(host_mb=_mb(weights + states + processes), gpu_mb=0, gpus=0)
    if stage == "none":  # each rank a whole replica (DDP), loaded through host memory
        card, host = weights + states, ranks * weights
    elif stage == "z2":  # weights whole; the 16-bit gradients (reduce-scattered), states partitioned
        card = weights + (trainable * WEIGHT_BYTES[bf16] + states) / ranks
        host = ranks * weights
    elif stage == "z3":  # everything partitioned; weights built in place (zero.Init), a layer at a time
        card = (weights + states) / ranks + live_layer
        host = ranks * live_layer * HOST_BUFFER_FACTOR
    else:  # z3_offload: weights, gradients and optimizer in host memory, the card holds the live layer
        card = live_layer
        host = weights + trainable * (MASTER_BYTES[bf16] + ADAM_BYTES + OFFLOADED_GRADIENT_BYTES)
    if stage in ("z3", "z3_offload"):
        # Counted at the peak: every save (each save_steps checkpoint and the model at the end) gathers the 16-bit
        # weights into rank 0's host memory while the model states stay allocated (stage3_gather_16bit_weights_on_
        # model_save in config/deepspeed/z3*.json; accelerate's get_state_dict -> DeepSpeed's
        # _zero3_consolidated_16bit_state_dict, a CPU copy of each weight). The shard being written is not counted.
        host += weights
    card_mb = _mb(card) + TRAINING_ACTIVATIONS_MB + CUDA_CONTEXT_MB
    return JobMemory(host_mb=_mb(host + processes), gpu_mb=card_mb, gpus=gpus)


def scoring_memory(
    size: ModelSize, *, batch_size: int = 1, prompt_tokens: int = PROMPT_TOKENS, labels: int = 25, gpus: int = 1
) -> JobMemory:
    """One scoring job (one process, one card; ``gpus`` 0 scores on the CPU, all in host memory): the bf16 weights,
    the prompts' KV cache widened to one row per label (``Scorer.score_many``: the prefix's cache plus a copy
    repeated ``labels`` times) and the margins. The weights pass through host memory on their way to the card."""
    weights = size.parameters * WEIGHT_BYTES[True]
    cache = batch_size * (labels + 1) * prompt_tokens * size.kv_bytes_per_token
    device_mb = _mb(weights + cache) + SCORING_ACTIVATIONS_MB
    if gpus == 0:
        return JobMemory(host_mb=device_mb + SCORING_PROCESS_MB, gpu_mb=0, gpus=0)
    return JobMemory(host_mb=_mb(weights) + SCORING_PROCESS_MB, gpu_mb=device_mb + CUDA_CONTEXT_MB, gpus=1)


def averaging_memory(size: ModelSize, folds: int) -> JobMemory:
    """Averaging ``folds`` fold models on the CPU (``vlmflow.model.averaging``): the float32 sum (4 B a parameter)
    and the model being added (bf16; a LoRA fold merged into its base). The folds are added one at a time, so
    the peak does not grow with their number."""
    if folds < 1:
        raise ValueError(f"averaging needs at least one fold model, not {folds}")
    return JobMemory(host_mb=_mb(size.parameters * (4 + WEIGHT_BYTES[True])) + SCORING_PROCESS_MB, gpu_mb=0, gpus=0)


def base_model_size(config: dict) -> ModelSize:
    """The size of the configured base model; the demo's tiny model stands for itself (DEMO_MODEL_SIZE)."""
    from vlmflow.model.families import base_model, demo_family

    name_or_path, _ = base_model(config["model"]["name_or_path"], config["demo"]["model_family"])
    return DEMO_MODEL_SIZE if demo_family(name_or_path) else model_size(name_or_path)


def _fine_tune(size: ModelSize, train: dict, method: str, stage: str) -> JobMemory:
    return fine_tune_memory(
        size,
        method=method,
        deepspeed=stage,
        gpus=train["gpus_per_run"],
        bf16=train["hyperparameters"].get("bf16", True),
        trainable_layers=train["freeze"]["trainable_layers"],
        lora_rank=train["lora"]["rank"],
        **frozen_parts(train["hyperparameters"]),
    )


def rule_memory(config: dict, size: ModelSize, labels: int) -> dict[str, JobMemory]:
    """What each kind of job of ``config`` needs: a fine-tune (fold or final), a scoring job, a general-ability
    job (short greedy answers: the scoring job without the labels' widening) and the averaging of the folds."""
    train, gpus = config["train"], min(1, config["train"]["gpus_per_run"])
    batch = config["score"]["batch_size"] or 1  # null: the scorer fits its batch to the card, at least one image
    return {
        "fine_tune": _fine_tune(size, train, train["finetuning_type"], train["deepspeed"]),
        "scoring": scoring_memory(size, batch_size=batch, labels=labels, gpus=gpus),
        "general_ability": scoring_memory(size, batch_size=batch, labels=1, gpus=gpus),
        "averaging": averaging_memory(size, train["folds"]),
    }


def job_needs(config: dict, size: ModelSize | None = None, labels: int | None = None) -> dict:
    """The configured fine-tune and scoring job's needs (``JobMemory`` fields, the fine-tune with its method and
    stage), and every other method and stage on the same GPUs, smallest ``gpu_mb`` first ("alternatives")."""
    from vlmflow.data.labels import load_labels

    size = size or base_model_size(config)
    labels = labels if labels is not None else len(load_labels(config["labels"]))
    needs = rule_memory(config, size, labels)
    train = config["train"]
    chosen = (train["finetuning_type"], train["deepspeed"])
    alternatives = [
        {"method": method, "deepspeed": stage, **asdict(_fine_tune(size, train, method, stage))}
        for method in METHODS
        for stage in DEEPSPEED_STAGES
        if (method, stage) != chosen
    ]
    return {
        "fine_tune": {**asdict(needs["fine_tune"]), "method": chosen[0], "deepspeed": chosen[1]},
        "scoring": asdict(needs["scoring"]),
        "alternatives": sorted(alternatives, key=lambda option: (option["gpu_mb"], option["host_mb"])),
    }


def declared_machine_problems(
    needs: dict[str, JobMemory],
    *,
    gpus_per_run: int,
    gpu: int | None,
    mem_mb: int | None,
    gpu_mem_mb: int | None,
    alternatives: list[dict] = (),
) -> list[str]:
    """Why the machine given to Snakemake (``--resources gpu= mem_mb= gpu_mem_mb=``, None where not given) cannot run
    one job of ``needs`` (rule_memory's, by kind), each with the numbers and what to do; [] when it can.
    Snakemake itself would cut a job's need down to the machine's and start it anyway."""
    problems = []
    if gpu is not None and gpus_per_run > gpu:
        problems.append(
            f"train.gpus_per_run is {gpus_per_run}, but Snakemake was given gpu={gpu}: no fine-tune could start. "
            f"Set train.gpus_per_run to at most {gpu}, or give --resources gpu={gpus_per_run} on a machine with "
            f"that many GPUs."
        )
    for kind, need in needs.items():
        name = JOB_KINDS[kind]
        if mem_mb is not None and need.host_mb > mem_mb:
            problems.append(
                f"one {name} needs {need.host_mb:,} MB of host memory (mem_mb), but Snakemake was given "
                f"mem_mb={mem_mb:,}. {_what_fits(kind, alternatives, gpu, mem_mb, gpu_mem_mb)}"
            )
        if gpu_mem_mb is not None and need.gpu_mb > gpu_mem_mb:
            problems.append(
                f"one {name} needs {need.gpu_mb:,} MB on each of its {need.gpus} GPU(s) (gpu_mem_mb), but "
                f"Snakemake was given gpu_mem_mb={gpu_mem_mb:,} per card. "
                f"{_what_fits(kind, alternatives, gpu, mem_mb, gpu_mem_mb)}"
            )
    return problems


def fitting(alternatives: list[dict], gpus: int | None, card_mb: int | None, host_mb: int | None) -> list[dict]:
    """The ways of training (job_needs' ``alternatives``) that a machine of ``gpus`` cards of ``card_mb`` and
    ``host_mb`` of host memory runs, in their order (None: not known, no limit). Both the check of the resources
    given to Snakemake (``declared_machine_problems``) and the check of the machine itself
    (``vlmflow.runtime.machine.check_machine``) name these."""
    return [
        option
        for option in alternatives
        if (gpus is None or option["gpus"] <= gpus)
        and (host_mb is None or option["host_mb"] <= host_mb)
        and (card_mb is None or option["gpu_mb"] <= card_mb)
    ]


def _what_fits(kind: str, alternatives: list[dict], gpu: int | None, mem_mb: int | None, gpu_mem_mb: int | None):
    if kind != "fine_tune":
        return "Run it on a machine with more memory (score.batch_size null fits the batch to the card)."
    fits = fitting(alternatives, gpu, gpu_mem_mb, mem_mb)
    if not fits:
        return "No fine-tuning method or DeepSpeed stage fits it on this many GPUs: give the run more memory."
    shown = ", ".join(
        f"{option['method']} with {option['deepspeed']} ({option['host_mb']:,} MB host, {option['gpu_mb']:,} MB a GPU)"
        for option in fits[:3]
    )
    return f"What fits: {shown} (train.finetuning_type, train.deepspeed)."


# How the problems name each kind of job of rule_memory.
JOB_KINDS = {
    "fine_tune": "fine-tune (train_fold, train_final)",
    "scoring": "scoring job (score_fold, score_test_shard, score_final_model)",
    "general_ability": "general-ability job (evaluate_general_ability)",
    "averaging": "fold-averaging job (average_fold_models)",
}


# The machine's totals for a local run.


def mib_as_mb(mib: float) -> int:
    """nvidia-smi's memory figures (MiB, with nounits) in Snakemake's MB, rounded down."""
    return int(mib * MIB / MB)


def gpu_memory_mb(nvidia_smi_output: str) -> list[int]:
    """Each card's memory in MB from `nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits` (MiB)."""
    return [mib_as_mb(float(line)) for line in nvidia_smi_output.split() if line.strip()]


def host_memory_total_mb(meminfo: str) -> int:
    """MemTotal of /proc/meminfo (kB, which the kernel means as KiB) in MB."""
    found = re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.MULTILINE)
    if not found:
        raise ValueError("/proc/meminfo has no MemTotal line")
    return int(found[1]) * 1024 // MB


def machine_resources(cards_mb: list[int], host_mb: int) -> list[str]:
    """Snakemake's ``resources`` for this machine: its cards, its host memory, and the smallest card's memory
    (gpu_mem_mb is per card: a job's cards are its own, so it is a fit checked at start, not a pool)."""
    resources = [f"gpu={len(cards_mb)}", f"mem_mb={host_mb}"]
    return resources + ([f"gpu_mem_mb={min(cards_mb)}"] if cards_mb else [])


def write_profile_resources(profile_config: Path, resources: list[str]) -> None:
    """Replace the ``resources:`` list of a profile's config.yaml (adding it if missing), keeping its comments."""
    text = profile_config.read_text(encoding="utf-8") if profile_config.is_file() else ""
    block = "resources:\n" + "".join(f"  - {item}\n" for item in resources)
    updated, count = re.subn(r"^resources:\n(?:[ \t]+-.*\n?)*", block, text, flags=re.MULTILINE)
    profile_config.parent.mkdir(parents=True, exist_ok=True)
    profile_config.write_text(updated if count else text + block, encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write this machine's GPUs and memory into a Snakemake profile.")
    parser.add_argument("--profile", type=Path, required=True, help="the profile folder, e.g. profiles/gpu")
    args = parser.parse_args(argv)
    query = ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"]
    cards = gpu_memory_mb(subprocess.run(query, capture_output=True, text=True, check=True).stdout)
    host = host_memory_total_mb(Path("/proc/meminfo").read_text(encoding="utf-8"))
    resources = machine_resources(cards, host)
    write_profile_resources(args.profile / "config.yaml", resources)
    print(f"{args.profile / 'config.yaml'}: resources {' '.join(resources)}")


if __name__ == "__main__":
    main()
