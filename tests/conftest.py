"""Shared test helpers: run the workflow's own Snakemake on a small config in a scratch folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml

from vlmflow.data.labels import baseline_prompt, load_labels

from helpers.budgets import BUDGETS, BudgetPlugin
from helpers.local_server import free_port, stop_process_group
from helpers.scheduling import ModulesTogether

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # the venv running pytest holds snakemake and the CLIs
# Off SLURM, the SLURM executor plugin's import-time `scontrol` probe gives up at once instead of
# waiting 10 s per Snakemake start for a controller that is not there (see the file).
NO_SLURM_CONTROLLER = REPO / "tests" / "slurm_without_controller.conf"
# The tests' teacher server refuses requests without this key; the workflow reads it from KEY_ENV.
KEY_ENV = "VLMFLOW_TEST_TEACHER_KEY"
KEY = "s3cret-test-key"


# The demo's overlay, the reduced demo laid over it (.test/config_small.yaml, which a person can run by hand) and
# its teacher variant.
DEMO_CONFIG = REPO / "config" / "demo.yaml"
SMALL_CONFIG = REPO / ".test" / "config_small.yaml"
TEACHER_CONFIG = REPO / ".test" / "config_teacher.yaml"
# The reduced demo's CPU training settings, cut to a handful of steps.
SMALL_TRAINING = yaml.safe_load(SMALL_CONFIG.read_text(encoding="utf-8"))["train"]["hyperparameters"]


def small_demo_config(workdir: Path, **overrides) -> dict:
    """The reduced demo (config/demo.yaml, then .test/config_small.yaml, merged as Snakemake merges
    configfiles): a few dozen images, 2 folds, the tiny model on the CPU; ``overrides`` replace top-level keys,
    merged one level deep for mappings. The scratch folder has no config/config.yaml, and needs none: the demo's
    overlay sets everything a real run's file does."""
    from snakemake.utils import update_config

    config = yaml.safe_load(DEMO_CONFIG.read_text(encoding="utf-8"))
    update_config(config, yaml.safe_load(SMALL_CONFIG.read_text(encoding="utf-8")))
    config["labels"] = str(REPO / "config" / "labels.yaml")  # the scratch folder has no config/
    for key, value in overrides.items():
        config[key] = {**config.get(key, {}), **value} if isinstance(value, dict) else value
    return config


def run_snakemake(
    workdir: Path, config: dict, *args: str, check: bool = True, slurm: bool = False, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run `snakemake` on the repository's Snakefile with `config`, outputs under `workdir`; `slurm` keeps
    the machine's SLURM configuration (for runs through a cluster), `env` adds variables."""
    command, full_env = snakemake_command(workdir, config, *args, slurm=slurm)
    env = {**full_env, **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, env=env, cwd=workdir)
    if check and result.returncode != 0:
        pytest.fail(f"snakemake {' '.join(args)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}")
    return result


def snakemake_command(workdir: Path, config: dict, *args: str, slurm: bool = False) -> tuple[list[str], dict]:
    """The command line and environment of `run_snakemake` (for tests that start it in the background)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yaml"
    config_path.write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    command = [
        str(BIN / "snakemake"),
        "--snakefile",
        str(REPO / "Snakefile"),
        "--directory",
        str(workdir),
        "--configfile",
        str(config_path),
        *args,
    ]
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "HF_HUB_OFFLINE": "1"}
    return command, env if slurm else without_slurm_controller(env)


def without_slurm_controller(env: dict | None = None) -> dict:
    """``env`` (default: this process's) for a Snakemake that is not to use SLURM: where SLURM's client is installed
    but no controller answers (this machine between SLURM tests), the SLURM plugin otherwise waits 10 s at start."""
    return {**(os.environ if env is None else env), "SLURM_CONF": str(NO_SLURM_CONTROLLER)}


class DemoModels:
    """The demo's tiny models, built once per worker and copied into a test's working directory, where the run
    finds rule build_tiny_model's output present and starts from it. The end-to-end run and the determinism run
    build theirs through the rule; the runs that test something else save the build (about 15 s a run)."""

    def __init__(self, folder: Path):
        self.folder = folder

    def into(self, workdir: Path, config: dict) -> None:
        """Put the tiny model the run of ``config`` would build into ``workdir`` (nothing for a model of its own)."""
        from vlmflow.demo.tiny_model import build_demo_model
        from vlmflow.model.families import base_model
        from vlmflow.runtime.plan import load_config

        resolved = load_config([], config)
        if resolved["model"]["name_or_path"] is not None:
            return
        target, family = base_model(None, resolved["demo"]["model_family"])
        demo = resolved["demo"]
        key = f"{family.model_type}-{demo['seed']}-" + "-".join(f"{k}{v}" for k, v in sorted(demo["model"].items()))
        built = self.folder / key
        if not built.exists():
            staging = self.folder / f"{key}.partial"
            build_demo_model(
                staging, resolved["labels"], family=family.model_type, seed=demo["seed"], size=demo["model"]
            )
            staging.rename(built)
        shutil.copytree(built, workdir / target)  # copy2 keeps the build's times: newer than the labels file


@pytest.fixture(scope="session")
def demo_models(tmp_path_factory) -> DemoModels:
    return DemoModels(tmp_path_factory.mktemp("demo_models"))


# The modules whose tests share the session's end-to-end run or its teacher server (the fixtures below).
END_TO_END_FIXTURES = {"demo_run", "llamafactory_api"}
END_TO_END_MODULES = {"test_workflow.py", "test_results_pages.py", "test_teacher.py", "test_determinism.py"}
# The modules that take longest after those, longest first (`pytest --durations=0` of the whole suite on two
# workers, 2026-12-07, docs/benchmarks.md): collected first, so that the workers are handed them first and the run
# does not end on one of them alone. A stale list costs only time.
LONGEST_FIRST = [
    "test_faults.py",
    "test_family_method_runs.py",
    "test_tracking_outage.py",
    "test_slurm.py",
    "test_learned_nothing.py",
    "test_deepspeed.py",
    "test_vllm_backend.py",
    "test_gpu_benchmark.py",
    "test_train.py",
    "test_scoring.py",
    "test_general_ability.py",
    "test_pretrain.py",
]


# The timing file every run writes as its tests end (tests/helpers/budgets.py; tests/test_budgets.py reads it).
TEST_DURATIONS = REPO / "logs" / "test-durations.json"


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(BudgetPlugin(config, BUDGETS, TEST_DURATIONS), "vlmflow-budgets")


# Collected last: it reads the timing file of the tests that ended before it.
LAST = "test_budgets.py"


def collection_rank(item: pytest.Item) -> int:
    """0 for the end-to-end modules, then LONGEST_FIRST's order, then every other module, then LAST."""
    name = item.path.name
    if name in END_TO_END_MODULES:
        return 0
    if name == LAST:
        return 2 + len(LONGEST_FIRST)
    return 1 + LONGEST_FIRST.index(name) if name in LONGEST_FIRST else 1 + len(LONGEST_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Orders the modules by collection_rank (a stable sort: a module's own order stays), and keeps
    END_TO_END_MODULES true: a test elsewhere that used the shared run would make a second worker run it
    again (pytest_xdist_make_scheduler)."""
    items.sort(key=collection_rank)
    strays = {
        item.path.name
        for item in items
        if END_TO_END_FIXTURES & set(getattr(item, "fixturenames", ())) and item.path.name not in END_TO_END_MODULES
    }
    if strays:
        raise pytest.UsageError(f"{sorted(strays)} use the end-to-end run: add them to END_TO_END_MODULES")


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs on pytest-xdist workers with `--dist loadscope --no-loadscope-reorder`: each module on
    one worker, so its module-scoped fixtures (a built model, a workflow run) are made once, handed out in
    collection order; here also the END_TO_END_MODULES together, so the end-to-end run and its teacher server
    are made once."""
    if config.getvalue("dist") == "loadscope":
        return ModulesTogether(config, log, together=END_TO_END_MODULES, name="end_to_end")
    return None


@dataclass
class ApiServer:
    url: str
    log: Path

    def completions(self) -> int:
        """Chat requests the server has answered so far, from its access log."""
        return self.log.read_text(encoding="utf-8", errors="replace").count('"POST /v1/chat/completions HTTP/1.1" 200')


@pytest.fixture(scope="session")
def llamafactory_api(tmp_path_factory):
    """`llamafactory-cli api` serving a tiny random-weight Qwen2-VL on 127.0.0.1, behind an API key: the
    teacher of the end-to-end run and of tests/test_teacher.py."""
    from vlmflow.demo.dataset import demo_vocabulary
    from vlmflow.demo.tiny_model import build_tiny_model

    folder = tmp_path_factory.mktemp("teacher_server")
    labels = load_labels(REPO / "config" / "labels.yaml")
    model = build_tiny_model(
        folder / "model", [baseline_prompt(labels), *demo_vocabulary()], seed=0, text_hidden_size=64, text_layers=2
    )
    settings_file = folder / "api.yaml"
    settings_file.write_text(f"model_name_or_path: {model}\ntemplate: qwen2_vl\ninfer_backend: huggingface\n")
    port = free_port()
    env = {**os.environ, "API_HOST": "127.0.0.1", "API_PORT": str(port), "API_KEY": KEY, "HF_HUB_OFFLINE": "1"}
    log_path = folder / "server.log"
    with open(log_path, "w") as log_file:
        server = subprocess.Popen(
            [str(BIN / "llamafactory-cli"), "api", str(settings_file)],
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, stopped as one below
        )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        # Polled with the key: local_server.wait_for_http would take the server's 401 for "not up yet".
        deadline = time.monotonic() + 300
        while True:
            if server.poll() is not None:
                pytest.fail(f"llamafactory-cli api exited:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"llamafactory-cli api did not start in 300 s:\n{log_path.read_text()[-3000:]}")
            time.sleep(1)
        yield ApiServer(url, log_path)
    finally:
        stop_process_group(server, timeout=30)


@dataclass(frozen=True)
class DemoRun:
    workdir: Path
    config: dict
    teacher_requests: int  # chat completions the teacher answered during the run


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory, llamafactory_api) -> DemoRun:
    """The reduced demo, run through every rule once per session and shared by the tests that read it
    (the end-to-end assertions, the report and the MLflow UI): the run is the slowest thing CI does.
    A teacher (LLaMA-Factory's API server) writes the reasons and descriptions of the `taught` variant.

    A test leaves it as it found it: it changes a deep copy of the config and undoes what it writes.
    """
    workdir = tmp_path_factory.mktemp("demo")
    taught = yaml.safe_load(TEACHER_CONFIG.read_text(encoding="utf-8"))  # adds the `taught` variant
    config = small_demo_config(workdir, variants=taught["variants"], teacher=taught["teacher"])
    config["teacher"] |= {"base_url": llamafactory_api.url, "api_key_env": KEY_ENV}
    # The fine-tunes start from the pretrained base, on the least budget, so that its two rules run too.
    config["demo"]["pretrain"] = {"enabled": True, "n_images": 8, "max_steps": 2, "batch_size": 4}
    # As in the shipped demo, a variant fits no final model and submits its fold ensemble (the OCR variant here:
    # the baseline's and the taught variant's final fits are the ones the tests read).
    config["final"] |= {"ablation_variants": ["baseline", "taught"], "other_variants": "fold_ensemble"}
    before = llamafactory_api.completions()
    run_snakemake(workdir, config, "--cores", "2", env={KEY_ENV: KEY})
    return DemoRun(workdir, config, llamafactory_api.completions() - before)
