"""What one job needs of the machine (vlmflow.runtime.memory), against hand arithmetic on Qwen2-VL-7B's config.json
and DeepSpeed's own estimators; the rules' mem_mb in a dry run; the start-time failures; the profile writer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from vlmflow.runtime import memory
from vlmflow.runtime.memory import (
    DEMO_MODEL_SIZE,
    JobMemory,
    ModelSize,
    averaging_memory,
    declared_machine_problems,
    fine_tune_memory,
    gpu_memory_mb,
    host_memory_total_mb,
    job_needs,
    machine_resources,
    model_size,
    scoring_memory,
    trainable_parameters,
    write_profile_resources,
)

from conftest import REPO, run_snakemake, small_demo_config

QWEN2_VL_7B = REPO / "tests" / "data" / "qwen2_vl_7b_config.json"
P = 8_291_375_616  # its parameters (16,582,751,232 bytes of bf16 weights in its safetensors index)
EMBEDDING = 152_064 * 3_584  # its largest module: the token embedding, 544,997,376 parameters
# Its vision tower (config.json vision_config: 3 x 2 x 14 x 14 patches to 1,280, 32 blocks of width 1,280 and MLP
# 5,120 with biases) and its projector (visual.merger: a LayerNorm, then 4 x 1,280 = 5,120 -> 5,120 -> 3,584).
ATTENTION = (1_280 * 3 * 1_280 + 3 * 1_280) + (1_280 * 1_280 + 1_280)  # qkv and the output projection
BLOCK = 2 * 2 * 1_280 + ATTENTION + (1_280 * 5_120 + 5_120) + (5_120 * 1_280 + 1_280)  # two LayerNorms, the MLP
TOWER = 3 * 2 * 14 * 14 * 1_280 + 32 * BLOCK  # 631,183,360
PROJECTOR = 2 * 1_280 + (5_120 * 5_120 + 5_120) + (5_120 * 3_584 + 3_584)  # 44,575,744
T = P - TOWER - PROJECTOR  # what a full fine-tune trains with LLaMA-Factory's defaults: 7,615,616,512
MB = 10**6


@pytest.fixture(scope="module")
def seven_b(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen2-vl-7b")
    shutil.copy(QWEN2_VL_7B, folder / "config.json")
    return folder


@pytest.fixture(scope="module")
def size(seven_b) -> ModelSize:
    return model_size(seven_b)


def test_the_7b_is_sized_from_its_config(size):
    assert size.parameters == P and size.language_layers == 28
    assert size.largest_layer_parameters == EMBEDDING
    assert size.kv_bytes_per_token == 28 * 4 * 128 * 2 * 2 == 57_344  # layers x KV heads x head_dim x K,V x bf16
    assert (size.vision_tower_parameters, size.projector_parameters) == (TOWER, PROJECTOR) == (631_183_360, 44_575_744)


def test_the_freeze_switches_decide_what_a_full_fine_tune_trains(size):
    # LLaMA-Factory's defaults freeze the tower and the projector: the language model and its head train.
    assert trainable_parameters(size, "full") == T == 7_615_616_512
    assert trainable_parameters(size, "full", freeze_multi_modal_projector=False) == T + PROJECTOR
    assert trainable_parameters(size, "full", freeze_vision_tower=False, freeze_multi_modal_projector=False) == P
    # freeze: the language model's share of 7 of 28 layers, and the projector when its switch is off.
    assert trainable_parameters(size, "freeze", trainable_layers=7) == T / 4
    assert trainable_parameters(size, "freeze", trainable_layers=7, freeze_multi_modal_projector=False) == (
        T / 4 + PROJECTOR
    )


def test_a_full_fine_tune_with_offload_against_hand_arithmetic(size):
    need = fine_tune_memory(size, method="full", deepspeed="z3_offload", gpus=4)
    # Host: every parameter's bf16 partition (2 B); for each trained one the fp32 master 4 B, Adam 8 B, and the
    # gradient as DeepSpeed holds it there, bf16 2 B and fp32 4 B; the 16-bit weights gathered to save them; and
    # 3,000 MB for each of the 4 ranks' processes.
    host = 2 * P + (4 + 8 + 2 + 4) * T + 2 * P + 4 * 3_000 * MB
    assert need.host_mb == -(-host // MB) == 182_247
    # Each card: the live layer's 16-bit weights and gradients (4 B), activations 6,000 MB, CUDA 1,000 MB.
    assert need.gpu_mb == -(-4 * EMBEDDING // MB) + 6_000 + 1_000 == 9_180
    assert need.gpus == 4


def test_zero_3_without_offload_and_zero_2_against_hand_arithmetic(size):
    z3 = fine_tune_memory(size, method="full", deepspeed="z3", gpus=4)
    # Partitioned over 4 cards: bf16 weights of every parameter, 16 B of states for each trained one; the live layer.
    assert z3.gpu_mb == -(-((2 * P + 16 * T) // 4 + 4 * EMBEDDING) // MB) + 7_000 == 43_789
    assert z3.host_mb == -(-int(4 * 4 * EMBEDDING * 1.5 + 2 * P) // MB) + 12_000 == 41_663
    z2 = fine_tune_memory(size, method="full", deepspeed="z2", gpus=4)
    assert z2.gpu_mb == -(-(2 * P + 18 * T // 4) // MB) + 7_000 == 57_854  # weights whole, the rest partitioned
    assert z2.host_mb == -(-(4 * 2 * P) // MB) + 12_000  # each rank loads the bf16 weights


def test_the_cards_agree_with_deepspeeds_estimators_when_every_parameter_trains(size):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    unfrozen = {"freeze_vision_tower": False, "freeze_multi_modal_projector": False}  # the estimators' assumption
    _, card, _ = estimate_zero3_model_states_mem_needs(P, EMBEDDING, num_gpus_per_node=4, cpu_offload=False)
    z3 = fine_tune_memory(size, method="full", deepspeed="z3", gpus=4, **unfrozen)
    assert z3.gpu_mb - 7_000 == pytest.approx(card / MB, abs=1)
    _, card = estimate_zero2_model_states_mem_needs(P, num_gpus_per_node=4, cpu_offload=False)
    z2 = fine_tune_memory(size, method="full", deepspeed="z2", gpus=4, **unfrozen)
    assert z2.gpu_mb - 7_000 == pytest.approx(card / MB, abs=1)


def test_offloaded_host_memory_beside_deepspeeds_worst_case_and_the_papers_count(size):
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    # DeepSpeed's estimate (what estimate_zero3_model_states_mem_needs_all_live prints for the model): 18 B for every
    # parameter, frozen or not, half again as buffers.
    worst, _, _ = estimate_zero3_model_states_mem_needs(P, EMBEDDING, num_gpus_per_node=4)
    assert worst == int(18 * P * 1.5) and worst // MB == 223_867
    # Ours, the model states alone (without the save's gather and the processes): 2 B for every parameter, 18 B more
    # for each trained one.
    need = fine_tune_memory(size, method="full", deepspeed="z3_offload", gpus=4)
    states = need.host_mb - -(-2 * P // MB) - 12_000
    assert states == -(-(2 * P + 18 * T) // MB) == 153_664
    # The ZeRO-Offload paper's count has no fp32 copy of the gradients (14 B a trained parameter): 30 GB less.
    paper = -(-(2 * P + 14 * T) // MB)
    assert paper == 123_202
    # With the save's gather and the processes, either count is above a "120 GB" host, even one of 120 GiB.
    assert need.host_mb > need.host_mb - states + paper == 151_785 > 120 * 2**30 // MB == 128_849


def test_freeze_and_lora_train_fewer_parameters(size):
    freeze = fine_tune_memory(size, method="freeze", deepspeed="z3_offload", gpus=4, trainable_layers=7)
    states = 2 * P + 18 * T / 4  # a quarter of the language model carries gradients and Adam state
    assert freeze.host_mb == -(-int(states + 2 * P + 12_000 * MB) // MB) == 79_436
    lora = fine_tune_memory(size, method="lora", deepspeed="none", gpus=1, lora_rank=8)
    adapters = size.lora_parameters * 8  # about 20 M parameters
    assert lora.gpu_mb == -(-int(2 * P + 16 * adapters) // MB) + 7_000 == 23_906
    with pytest.raises(ValueError, match="lora_rank"):
        fine_tune_memory(size, method="lora", deepspeed="z3", gpus=4)


def test_a_cpu_fine_tune_keeps_everything_in_host_memory():
    unfrozen = {"freeze_vision_tower": False, "freeze_multi_modal_projector": False}  # the demo trains its tower
    need = fine_tune_memory(DEMO_MODEL_SIZE, method="full", deepspeed="none", gpus=0, bf16=False, **unfrozen)
    # fp32 weights 4 B, gradients 4 B, Adam 8 B, no master copy: 16 B a parameter, and the process.
    assert need == JobMemory(host_mb=-(-16 * 1_306_112 // MB) + 3_000, gpu_mb=0, gpus=0) == JobMemory(3_021, 0, 0)


def test_scoring_widens_the_kv_cache_by_the_labels(size):
    one = scoring_memory(size)
    cache = 1 * 26 * 1_300 * 57_344  # the prefix's cache and its copy widened to 25 labels
    assert one.gpu_mb == -(-(2 * P + cache) // MB) + 1_000 + 1_000 == 20_521  # fits a 24 GB card
    eight = scoring_memory(size, batch_size=8)
    assert eight.gpu_mb - one.gpu_mb == pytest.approx(7 * cache / MB, abs=1) and eight.gpu_mb > 24_000  # the issue's
    assert one.host_mb == -(-2 * P // MB) + 2_000 and one.gpus == 1
    assert scoring_memory(size, gpus=0).gpu_mb == 0


def test_averaging_needs_the_float32_sum_and_one_model(size):
    assert averaging_memory(size, 5) == JobMemory(host_mb=-(-6 * P // MB) + 2_000, gpu_mb=0, gpus=0)
    assert averaging_memory(size, 5) == averaging_memory(size, 2)  # the folds are added one at a time


# LLaMA-Factory's defaults, which config/config.yaml's demo block turns off to train its random tower (README, "Your
# own data and model": drop that block for a pretrained model).
RECIPE_FREEZES = {"freeze_vision_tower": True, "freeze_multi_modal_projector": True}


def recipe_config(folder, **train) -> dict:
    """The recipe's training defaults (the schema's: full, z3_offload, 4 GPUs, bf16; the vision tower and the
    projector frozen) on the 7B config."""
    config = small_demo_config(folder, model={"name_or_path": str(folder)})
    hyperparameters = {"bf16": True, **RECIPE_FREEZES}
    config["train"] |= {"gpus_per_run": 4, "deepspeed": "z3_offload", "hyperparameters": hyperparameters, **train}
    return config


def test_job_needs_lists_every_other_method_and_stage_smallest_card_first(seven_b, size):
    from vlmflow.runtime.plan import load_config

    config = load_config([], recipe_config(seven_b, finetuning_type="full"))
    needs = job_needs(config, size, labels=25)
    assert needs["fine_tune"] == {
        "host_mb": 182_247,
        "gpu_mb": 9_180,
        "gpus": 4,
        "method": "full",
        "deepspeed": "z3_offload",
    }
    assert needs["scoring"] == {"host_mb": 18_583, "gpu_mb": 20_521, "gpus": 1}
    options = needs["alternatives"]
    assert len(options) == 3 * 4 - 1 and ("full", "z3_offload") not in {(o["method"], o["deepspeed"]) for o in options}
    assert [option["gpu_mb"] for option in options] == sorted(option["gpu_mb"] for option in options)
    lora_z3 = next(option for option in options if (option["method"], option["deepspeed"]) == ("lora", "z3"))
    assert lora_z3 == {"method": "lora", "deepspeed": "z3", "host_mb": 41_663, "gpu_mb": 13_407, "gpus": 4}


def test_problems_name_the_numbers_and_what_fits():
    needs = {"fine_tune": JobMemory(182_247, 9_180, 4), "scoring": JobMemory(18_583, 30_000, 1)}
    fits = [{"method": "lora", "deepspeed": "z3", "host_mb": 41_663, "gpu_mb": 13_407, "gpus": 4}]
    problems = declared_machine_problems(
        needs, gpus_per_run=8, gpu=4, mem_mb=120_000, gpu_mem_mb=24_000, alternatives=fits
    )
    assert len(problems) == 3
    assert "train.gpus_per_run is 8, but Snakemake was given gpu=4" in problems[0]
    assert "needs 182,247 MB of host memory (mem_mb), but Snakemake was given mem_mb=120,000" in problems[1]
    assert "What fits: lora with z3 (41,663 MB host, 13,407 MB a GPU)" in problems[1]
    assert "scoring job" in problems[2] and "30,000 MB on each of its 1 GPU(s)" in problems[2]
    assert declared_machine_problems(needs, gpus_per_run=4, gpu=None, mem_mb=None, gpu_mem_mb=None) == []


def test_the_profile_gets_this_machines_totals(tmp_path, monkeypatch):
    assert gpu_memory_mb("24576\n24576\n") == [25_769, 25_769]  # MiB to MB
    assert host_memory_total_mb("MemTotal:       131900000 kB\nMemFree: 1 kB\n") == 135_065
    assert machine_resources([25_769, 24_000], 120_000) == ["gpu=2", "mem_mb=120000", "gpu_mem_mb=24000"]
    profile = tmp_path / "gpu"
    profile.mkdir()
    shutil.copy(REPO / "profiles/gpu/config.yaml", profile / "config.yaml")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nvidia-smi").write_text("#!/bin/sh\nprintf '81559\\n81559\\n'\n", encoding="utf-8")
    (fake / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    command = [sys.executable, "-m", "vlmflow.runtime.memory", "--profile", str(profile)]
    subprocess.run(command, check=True, env=env, capture_output=True, text=True)
    text = (profile / "config.yaml").read_text(encoding="utf-8")
    host = host_memory_total_mb(open("/proc/meminfo", encoding="utf-8").read())
    assert f"resources:\n  - gpu=2\n  - mem_mb={host}\n  - gpu_mem_mb=85520\nprintshellcmds: true" in text
    assert text.startswith("# One machine with GPUs") and "keep-going: true" in text  # the rest is kept
    write_profile_resources(tmp_path / "new" / "config.yaml", ["gpu=1"])
    assert (tmp_path / "new" / "config.yaml").read_text(encoding="utf-8") == "resources:\n  - gpu=1\n"


def test_a_model_is_sized_once(seven_b, tmp_path, monkeypatch):
    first = model_size(seven_b, cache=tmp_path)
    monkeypatch.setattr(ModelSize, "of", classmethod(lambda cls, path: pytest.fail("sized again")))
    assert model_size(seven_b, cache=tmp_path) == first
    # A size cached before the counting changed (another MODEL_SIZE_VERSION) is not read: the model is sized again.
    monkeypatch.setattr(memory, "MODEL_SIZE_VERSION", memory.MODEL_SIZE_VERSION - 1)
    monkeypatch.setattr(ModelSize, "of", classmethod(lambda cls, path: DEMO_MODEL_SIZE))
    assert model_size(seven_b, cache=tmp_path) == DEMO_MODEL_SIZE and len(list(tmp_path.glob("*.json"))) == 2


# The recipe's machine as Snakemake is told it.
RECIPE_MACHINE = ("--resources", "gpu=4", "mem_mb=120000", "gpu_mem_mb=24000")


def dry_run(workdir, config, *args):
    workdir.mkdir(exist_ok=True)
    shutil.copytree(REPO / "config", workdir / "config", dirs_exist_ok=True)
    return run_snakemake(workdir, config, "-n", "--cores", "2", *args, check=False)


def gpu_jobs(dry_run_output: str) -> list[str]:
    return [block for block in dry_run_output.split("\nrule ")[1:] if "gpu=" in block]


def test_a_dry_run_of_the_recipes_defaults_on_its_machine_plans_every_gpu_job_and_says_the_run_would_stop(
    tmp_path, seven_b, size
):
    """The shipped config (the recipe's full fine-tune under z3_offload on 4 GPUs) with a user's 7B and data, on
    4 x 24 GB and 120 GB: by DeepSpeed's allocations a fine-tune needs 182,247 MB of host memory. A dry run plans
    every job and says so; the run itself stops at start (the test below)."""
    config = {"data": small_demo_config(tmp_path)["data"], "model": {"name_or_path": str(seven_b)}}
    config["demo"] = {"n_train": 40, "n_test": 12}
    config["labels"] = str(REPO / "config" / "labels.yaml")
    result = dry_run(tmp_path / "recipe", config, *RECIPE_MACHINE)
    said = result.stdout + result.stderr
    assert result.returncode == 0, said[-3000:]
    assert "WARNING: The machine given to Snakemake cannot run this workflow" in said
    assert "needs 182,247 MB of host memory (mem_mb), but Snakemake was given mem_mb=120,000" in said
    assert "The run itself (without -n) stops here, before its first job" in said
    rules = {block.split(":", 1)[0] for block in gpu_jobs(result.stdout)}
    assert rules == {"train_fold", "train_final", "score_fold", "score_final_model"}  # no general data, 1 shard
    folds = [block for block in gpu_jobs(result.stdout) if block.startswith("train_fold")]
    assert len(folds) == 2 * 5 and all("gpu=4, gpu_mem_mb=9180, mem_mb=120000" in block for block in folds)


def test_a_dry_run_on_the_recipes_machine_shows_every_gpu_jobs_memory(tmp_path, seven_b, size):
    # LoRA with ZeRO-3: what the start check names as fitting 4 x 24 GB with 120 GB. The recipe's full fine-tune
    # with offload needs 182,247 MB of host memory by DeepSpeed's allocations (the test above), above that machine.
    result = dry_run(tmp_path / "run", recipe_config(seven_b, finetuning_type="lora", deepspeed="z3"), *RECIPE_MACHINE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = gpu_jobs(result.stdout)
    rules = {block.split(":", 1)[0] for block in jobs}
    assert rules == {
        "train_fold",
        "train_final",
        "score_fold",
        "score_test_shard",
        "score_final_model",
        "evaluate_general_ability",
        "evaluate_base_general_ability",
    }
    assert all("mem_mb=" in block and "gpu_mem_mb=" in block for block in jobs)
    assert "rule train_fold:" in result.stdout
    training = [block for block in jobs if block.startswith(("train_fold", "train_final"))]
    assert all("gpu=4, gpu_mem_mb=13407, mem_mb=41663" in block for block in training)
    scoring = [block for block in jobs if block.startswith("score_")]
    assert all("gpu=1, gpu_mem_mb=20521, mem_mb=18583" in block for block in scoring)
    assert "rule average_fold_models:" in result.stdout and "mem_mb=51749" in result.stdout


def start(workdir, config, *args):
    """The run itself (no -n), which must stop before its first job."""
    workdir.mkdir(exist_ok=True)
    shutil.copytree(REPO / "config", workdir / "config", dirs_exist_ok=True)
    return run_snakemake(workdir, config, "--cores", "2", *args, check=False)


def test_a_machine_that_cannot_run_one_job_fails_at_start(tmp_path, seven_b, size):
    result = start(tmp_path / "run", recipe_config(seven_b, gpus_per_run=8), *RECIPE_MACHINE)
    said = result.stdout + result.stderr
    assert result.returncode != 0
    assert "The machine given to Snakemake cannot run this workflow" in said
    assert "train.gpus_per_run is 8, but Snakemake was given gpu=4" in said
    assert "needs 194,247 MB of host memory (mem_mb), but Snakemake was given mem_mb=120,000" in said
    assert "rule train_fold:" not in said and not (tmp_path / "run/results").exists()  # before any job
    # The recipe's own defaults on its own machine: by DeepSpeed's allocations the 7B's full fine-tune needs more
    # host memory than the 120 GB the recipe's notes report (README, "Your own GPUs").
    result = start(tmp_path / "run", recipe_config(seven_b), *RECIPE_MACHINE)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "needs 182,247 MB of host memory" in said
    assert "What fits: lora with z3_offload (45,529 MB host, 9,180 MB a GPU), lora with z3" in said


def test_the_demo_sizes_its_jobs_without_reading_its_model(monkeypatch):
    monkeypatch.setattr(memory, "model_size", lambda *args: pytest.fail("the demo's model was read"))
    assert memory.base_model_size({"model": {"name_or_path": None}, "demo": {"model_family": "qwen2_vl"}}) == (
        DEMO_MODEL_SIZE
    )


def test_the_demo_models_size_is_what_the_rule_builds(tmp_path):
    """DEMO_MODEL_SIZE stands for the tiny model at parse time, before a rule builds it: it must count the same."""
    from vlmflow.demo.tiny_model import build_demo_model
    from vlmflow.runtime.plan import load_config

    demo = load_config([])["demo"]  # the schema's demo.model, as the shipped config builds it
    model = build_demo_model(
        tmp_path / "tiny", REPO / "config" / "labels.yaml", family="qwen2_vl", seed=demo["seed"], size=demo["model"]
    )
    assert memory.ModelSize.of(model) == DEMO_MODEL_SIZE
