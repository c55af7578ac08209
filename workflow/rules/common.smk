# Helpers and input functions shared by every stage. Logic lives in src/vlmflow; this file only wires.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError

# common.smk imports the library straight from src/; jobs import the installed one (`make install`).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from vlmflow.model.families import base_model as resolve_base_model
from vlmflow.model.families import FAMILIES, demo_family
from vlmflow.data.ingest import missing_data
from vlmflow.data.labels import load_labels
from vlmflow.demo import DEMO_DATA
from vlmflow.data.ocr import ocr_jobs
from vlmflow.prompting.variants import PromptVariant
from vlmflow.runtime.memory import (
    base_model_size,
    declared_machine_problems,
    job_needs,
    rule_memory,
)
from vlmflow.runtime.plan import write_resolved_config
from vlmflow.tracking.offline import pending_notice, unreachable_notice
from vlmflow.recipe.final_models import (
    FINAL_MODEL_WILDCARD,
    final_fit_of,
    final_model_dir,
    final_model_dirs,
    retrained_dir,
    round_dir,
)
from vlmflow.recipe.final_plan import FinalPlan
from vlmflow.recipe.steps import (
    AVERAGE_FOLDS,
    FOLD_ENSEMBLE,
    STEP_SETS,
    retrained_model_name,
    step_set,
    step_set_name,
)

# Where every stage writes (vlmflow.runtime.layout): the rules take their paths from these tables.
from vlmflow.runtime.layout import (
    ACCOUNTING_OUTPUTS,
    DUPLICATES_OUTPUTS,
    EVALUATE_OUTPUTS,
    FINAL_MODEL_DIR,
    FOLDS_OUTPUTS,
    GENERAL_OUTPUTS,
    INGEST_OUTPUTS,
    MACHINE_OUTPUTS,
    OCR_DIR,
    OCR_OUTPUTS,
    PROMPTS_OUTPUTS,
    RECIPE_OUTPUTS,
    REPORT_OUTPUTS,
    RETRAIN_OUTPUTS,
    SCORE_OUTPUTS,
    TEACHER_OUTPUTS,
    TRAIN_OUTPUTS,
    file_in,
    fill,
)

SPLITS = ["train", "test"]
# Each split's ingested records, for the rules that read one split.
RECORDS = {split: INGEST_OUTPUTS["records"].format(split=split) for split in SPLITS}
# No data, no run: said here, before the base model is looked up, with the keys to set.
_no_data = missing_data(config["data"], set(DEMO_DATA.values()))
if _no_data:
    raise WorkflowError(_no_data)
# make plan reads the configuration resolved here (the configfiles, --config, the schema's defaults).
write_resolved_config(config)
# The base model and its family (template, loader, vision modules): an unsupported one fails here, at start.
BASE_MODEL, MODEL_FAMILY = resolve_base_model(
    config["model"]["name_or_path"],
    config["demo"]["model_family"],
    pretrained=config["demo"]["pretrain"]["enabled"],
)
DEEPSPEED_DIR = Path(workflow.basedir) / "config" / "deepspeed"
# Each variant's validated switches (a rule's params: editing them reruns its jobs) and the variant itself,
# which answers what it needs.
VARIANTS = {variant["name"]: variant for variant in config["variants"]}
VARIANT = {name: PromptVariant.from_config(entry) for name, entry in VARIANTS.items()}
FOLDS = list(range(config["train"]["folds"]))

LABELS = load_labels(config["labels"])

# What each kind of GPU job needs (vlmflow.runtime.memory: fine_tune, scoring, general_ability, averaging), from
# the base model's config.json, the method, the DeepSpeed stage and the GPUs: the rules declare it as mem_mb
# (host memory, the whole job) and gpu_mem_mb (each card), so Snakemake runs together only what fits.
MODEL_SIZE = base_model_size(config)
JOB_MEMORY = rule_memory(config, MODEL_SIZE, len(LABELS))


def host_memory(kind):
    """mem_mb of a kind of job: the host memory of the whole job, all ranks together."""
    return JOB_MEMORY[kind].host_mb


def gpu_memory(kind):
    """gpu_mem_mb of a kind of job: the memory it needs on each of its cards (0 on the CPU)."""
    return JOB_MEMORY[kind].gpu_mb


def declared_resource(name):
    """A resource given to Snakemake (--resources, a profile's resources:), None where none was."""
    return workflow.global_resources.get(name).value


def check_declared_machine():
    """Fail at start, before any job, when the machine given to Snakemake cannot run one job (vlmflow.runtime.memory):
    Snakemake itself would cut a job's mem_mb down to the machine's and start it."""
    problems = declared_machine_problems(
        JOB_MEMORY,
        gpus_per_run=config["train"]["gpus_per_run"],
        gpu=declared_resource("gpu"),
        mem_mb=declared_resource("mem_mb"),
        gpu_mem_mb=declared_resource("gpu_mem_mb"),
        alternatives=job_needs(config, MODEL_SIZE, len(LABELS))["alternatives"],
    )
    if problems:
        said = (
            "The machine given to Snakemake cannot run this workflow:\n- "
            + "\n- ".join(problems)
        )
        # A dry run plans: it lists every job with what it needs, and says that the run itself would stop here.
        # (workflow.output_settings.dryrun is set while the Snakefile is read; workflow.dryrun is not yet.)
        if not workflow.output_settings.dryrun:
            raise WorkflowError(said)
        logger.warning(
            f"WARNING: {said}\nThe run itself (without -n) stops here, before its first job. Below, Snakemake "
            "shows a job's mem_mb cut down to the machine's."
        )
    if declared_resource("gpu_mem_mb") is not None:
        # gpu_mem_mb is per card, and a job's cards are its own (the gpu resource leases them whole): a fit,
        # checked above, not a pool. Left to Snakemake, it would add up the jobs' values and run one GPU job at a time.
        workflow.register_resource("gpu_mem_mb", None)


check_declared_machine()

# Which final models each variant fits, with which seeds, and which one submits (vlmflow.recipe.final_plan).
ROUNDS = config["pseudo"]["rounds"]
FINAL = FinalPlan.of(config["final"], list(VARIANTS), config["train"]["seed"])
FIRST_SEED = FINAL.first_seed
retrained_models = FINAL.retrained_models_of
submitted_model = FINAL.submitted_model
final_models = FINAL.final_models
fit_seeds = FINAL.fit_seeds
# Scheduling (Snakemake's priority, higher first; it does not pass to a job's inputs, so every rule on the way
# carries it): OCR, prompts, the fold models and what the recipe's steps read from them, on which every
# step-trained final fit waits; then every final fit, so that the long fine-tunes run while there are
# jobs to pair them with and the run ends on short scoring jobs (on the demo's 2 cores, a no-step fit left to the
# end ran alone for two minutes: docs/benchmarks.md).
FOLD_WORK_PRIORITY = 2
FINAL_FIT_PRIORITY = 1


wildcard_constraints:
    split="|".join(SPLITS),
    variant="|".join(VARIANTS),
    fold=r"\d+",
    shard=r"\d+",
    test_shard=r"[1-9]\d*",  # shard 0 is score_fold's
    steps="|".join(STEP_SETS),
    seed=r"\d+",
    round=r"\d+",
    final_model=FINAL_MODEL_WILDCARD,
    demo_model="|".join(family.demo_name for family in FAMILIES.values()),


def each_fold(pattern):
    """A per-fold pattern for every fold, its other wildcards left to the rule (results/{variant}/fold0/..., ...)."""
    return [fill(pattern, fold=fold) for fold in FOLDS]


def data_file(wildcards):
    """The configured input file of a split (the demo's generated files by default)."""
    return config["data"][wildcards.split]


def base_model():
    """The base model as a file input when the workflow builds it (the demo); a hub id is no input."""
    return [BASE_MODEL] if demo_family(BASE_MODEL) else []


def training_settings(wildcards):
    """What every fine-tune (fold or final) trains with, as train_model's arguments: the base model (the
    built demo model's folder, or the configured hub id or path), the family's LLaMA-Factory template
    and the fine-tuning method, the hyper-parameters, DeepSpeed ranks and the seed.

    It takes no ``input``: Snakemake leaves a params function of input, output, threads or resources out of
    its params rerun trigger, and an edited hyper-parameter must retrain every fine-tune.
    """
    method = config["train"]["finetuning_type"]
    return {
        "model": BASE_MODEL,
        "fine_tuning": {
            "template": MODEL_FAMILY.template,
            "finetuning_type": method,
            "method": config["train"].get(method, {}),
        },
        "hyperparameters": config["train"]["hyperparameters"],
        # DeepSpeed ranks per fine-tune: train.processes, else one per GPU.
        "processes": config["train"]["processes"]
        or max(1, config["train"]["gpus_per_run"]),
        "seed": config["train"]["seed"],
    }


def fit_seed(wildcards):
    """The seed of one retrained fit (its seed<s> folder): it seeds the fit's training set and its training."""
    return int(wildcards.seed)


def final_training_settings(wildcards):
    """training_settings for a retrained fit: LLaMA-Factory trains with the fit's seed (final.seeds)."""
    return training_settings(wildcards) | {"seed": fit_seed(wildcards)}


def fold_model_folder():
    """A fold's model folder as train_fold's output: temporary unless train.keep_fold_models, so that
    Snakemake removes it once its last reader (scoring, averaging, loss curves) is done.
    """
    folder = directory(TRAIN_OUTPUTS["model"])
    return folder if config["train"]["keep_fold_models"] else temp(folder)


def scoring_settings():
    """How every scoring job scores, as score_tables' arguments: the device, the backend and its batch size,
    the reason budget, and the training's image pixel limits, which scoring resizes by too (None:
    LLaMA-Factory's defaults).
    """
    hyperparameters = config["train"]["hyperparameters"]
    return {
        "device": config["score"]["device"],
        "backend": config["score"]["backend"],
        # From the workflow's folder (where `make install-vllm` puts it), whatever --directory is.
        "vllm_python": str(Path(workflow.basedir) / config["score"]["vllm_python"]),
        "batch_size": config["score"]["batch_size"],
        "reason_max_new_tokens": config["score"]["max_new_tokens"],
        "image_pixels": {
            name: hyperparameters.get(name)
            for name in ("image_max_pixels", "image_min_pixels")
        },
    }


def demo_model_family(wildcards):
    """The family of the demo model folder being built (resources/demo/tiny-<family>, pretrained-<family>)."""
    return demo_family(f"resources/demo/tiny-{wildcards.demo_model}").model_type


def demo_model_template(wildcards):
    """The LLaMA-Factory template of the demo model being pretrained."""
    return FAMILIES[demo_model_family(wildcards)].template


def variant_settings(wildcards):
    return VARIANTS[wildcards.variant]


def ocr_table_if_needed(wildcards):
    """Only variants that read OCR text (prompt, template reasons or descriptions) wait for OCR."""
    if VARIANT[wildcards.variant].reads_ocr(teacher=teacher_configured()):
        return OCR_OUTPUTS["text"]
    return []


def run_cores():
    """The cores this run was given (--cores), or None where it gave none (a cluster executor)."""
    try:
        return workflow.cores
    except WorkflowError:
        return None


# The OCR jobs and each one's threads (vlmflow.data.ocr.ocr_jobs), decided once: the rules and the start message.
OCR_SHARDS, OCR_THREADS = ocr_jobs(
    config["ocr"]["shards"],
    config["ocr"]["threads"],
    run_cores(),
    existing_shards=len(list(Path(OCR_DIR).glob("shard*.parquet"))),
)


def machine_check_settings():
    """config machine_check, off where jobs run on other machines (a cluster executor): this process's machine is
    then the submitting host, which says nothing of the GPU nodes."""
    return {
        **config["machine_check"],
        "enabled": config["machine_check"]["enabled"] and not workflow.non_local_exec,
    }


def check_machine_at_start():
    """The machine check (vlmflow.runtime.machine) as a run with jobs to do starts, before its first job: a machine
    that cannot run the GPU jobs stops the run here, every problem named. Not an input of the GPU rules: Snakemake would redo
    finished fine-tunes whenever the report is remade (a failed check deletes it). Rule check_machine writes the
    same report to results/machine.json and MLflow; a CPU run passes without a probe."""
    from vlmflow.runtime.machine import examine_run, write_report

    found = examine_run(
        config, scoring_settings(), machine_check_settings(), deepspeed_config() or None
    )
    if found.problems:
        write_report("logs/machine/machine.json", found)
        raise WorkflowError(found.message("logs/machine/machine.json"))


def tell_ocr_jobs():
    """Print, as a run starts, how the OCR is split over the cores it was given."""
    print(
        f"OCR: {OCR_SHARDS} jobs of {OCR_THREADS} thread(s) each, for {run_cores() or 'no'} cores given "
        "(config ocr.shards, ocr.threads)",
        file=sys.stderr,
    )


def ocr_engine_options():
    """Options passed to the engine: ocr.options, plus PaddleOCR's local model folders."""
    paddle = config["ocr"]["paddle"] if config["ocr"]["engine"] == "paddleocr" else {}
    return {**config["ocr"]["options"], **paddle}


def deepspeed_config():
    name = config["train"]["deepspeed"]
    return [] if name == "none" else str(DEEPSPEED_DIR / f"{name}.json")


def truth_file():
    """The truth file (evaluation only) when one is configured."""
    return config["data"]["truth"] or []


def override_path(wildcards):
    return str(Path(config["correction"]["overrides_dir"]) / f"{wildcards.variant}.csv")


def override_file(wildcards):
    """The variant's override file as an input once the user has written it: editing it reruns its dependents."""
    path = override_path(wildcards)
    return path if Path(path).exists() else []


NO_STEP_MODEL = retrained_model_name(step_set_name([]))


def no_step_model_test_probs(wildcards):
    """The test predictions of the model retrained with no step, when final.ablation has it: every other final
    fit's test F1 is compared with it on the same images (vlmflow.evaluation.sanity.paired_difference), a
    retrained fit with the no-step model's fit of the same seed, the averaged fold model with the first seed's.
    """
    if NO_STEP_MODEL not in retrained_models(wildcards.variant):
        return []
    _, name, seed = final_fit_of(
        FINAL_MODEL_DIR.format(
            variant=wildcards.variant, final_model=wildcards.final_model
        )
    )
    if name == NO_STEP_MODEL:
        return []
    folder = final_model_dir(
        wildcards.variant, NO_STEP_MODEL, ROUNDS, FIRST_SEED if seed is None else seed
    )
    return file_in(folder, RECIPE_OUTPUTS["final_test"])


def each_seeds_test_probs(variant, name):
    """Test predictions of each seed's fit of a retrained model (the script keys them by final_fit_of)."""
    return [
        file_in(
            final_model_dir(variant, name, ROUNDS, seed), RECIPE_OUTPUTS["final_test"]
        )
        for seed in fit_seeds(variant)
    ]


def seed_test_probs(wildcards):
    return each_seeds_test_probs(
        wildcards.variant, retrained_model_name(wildcards.steps)
    )


def no_step_seed_test_probs(wildcards):
    """Test predictions of each seed's fit of the no-step model, paired with a retrained model's by seed;
    none for the no-step model itself or when final.ablation does not retrain it."""
    name = retrained_model_name(wildcards.steps)
    if (
        NO_STEP_MODEL not in retrained_models(wildcards.variant)
        or name == NO_STEP_MODEL
    ):
        return []
    return each_seeds_test_probs(wildcards.variant, NO_STEP_MODEL)


def final_model_metrics(variant):
    """Test metrics of every final model of a variant but the fold ensemble: the averaged fold model's, and
    each retrained model's across its seeds (scripts key them by final_model_of)."""
    return [
        file_in(
            final_model_dir(variant, AVERAGE_FOLDS, ROUNDS),
            RECIPE_OUTPUTS["final_metrics"],
        ),
        *(
            file_in(retrained_dir(variant, name), RECIPE_OUTPUTS["across_seeds"])
            for name in retrained_models(variant)
        ),
    ]


def retrained_files(variant, pattern):
    """A file (a layout pattern) of each retrained fit (model and seed) of a variant (scripts key them by
    final_fit_of)."""
    dirs = final_model_dirs(
        variant, retrained_models(variant), ROUNDS, fit_seeds(variant)
    )
    return [file_in(path, pattern) for path in dirs.values()]


def submission_probabilities(wildcards):
    """Test probabilities of the submitted model: retrained (the first seed's fit), weight-averaged folds, or
    the fold ensemble."""
    submitted = submitted_model(wildcards.variant)
    if submitted == FOLD_ENSEMBLE:
        return EVALUATE_OUTPUTS["test"].format(variant=wildcards.variant)
    folder = final_model_dir(wildcards.variant, submitted, ROUNDS, FIRST_SEED)
    return file_in(folder, RECIPE_OUTPUTS["final_test"])


def final_training_labels(wildcards):
    """The training records a final model starts from: corrected when its combination corrects."""
    if "correction" in step_set(wildcards.steps):
        return RECIPE_OUTPUTS["corrected"].format(variant=wildcards.variant)
    return INGEST_OUTPUTS["records"].format(split="train")


def round_pseudo_labels(wildcards):
    """Round 1 learns from the fold models' pseudo-labels, round n from round n-1's retrained model of the
    same seed."""
    if "pseudo" not in step_set(wildcards.steps):
        return []
    round_ = int(wildcards.round)
    if round_ == 1:
        return RECIPE_OUTPUTS["pseudo_labels"].format(variant=wildcards.variant)
    previous = round_dir(
        wildcards.variant, wildcards.steps, fit_seed(wildcards), round_ - 1
    )
    return file_in(previous, RETRAIN_OUTPUTS["pseudo_labels"])


def general_data():
    """The general instruction file mixed into final fits, when one is configured."""
    path = config["final"]["general_data"]["path"]
    return [path] if path else []


def general_held_out():
    """The general records held out of every fit, to measure general ability, when one is configured."""
    path = config["final"]["general_data"]["held_out"]
    return [path] if path else []


def general_ability_metrics(variant):
    """Each final model's accuracy on the held-out general records (none without final.general_data.held_out):
    a retrained model's first seed's fit, the one submitted (scripts key them by final_model_of).
    """
    if not general_held_out():
        return []
    dirs = final_model_dirs(variant, final_models(variant), ROUNDS, [FIRST_SEED])
    return [file_in(path, GENERAL_OUTPUTS["metrics"]) for path in dirs.values()]


def model_to_load(wildcards, input):
    """What a job loads its model from: its input.model folder (one, or none when the base model is a hub id,
    which is then loaded by name)."""
    models = [input.model] if isinstance(input.model, str) else list(input.model)
    return models[0] if models else BASE_MODEL


def base_general_ability_metrics():
    """The untuned base model's accuracy on the same records, the reference (none without held-out records)."""
    return [GENERAL_OUTPUTS["base_metrics"]] if general_held_out() else []


def all_targets():
    return [
        *expand(INGEST_OUTPUTS["records"], split=SPLITS),
        *base_model(),
        *expand(PROMPTS_OUTPUTS["prompts"], variant=VARIANTS),
        FOLDS_OUTPUTS["folds"],
        *expand(ACCOUNTING_OUTPUTS["stages"], variant=VARIANTS),
        EVALUATE_OUTPUTS["summary_markdown"],
        # the machine check's record (it also runs as every run starts)
        MACHINE_OUTPUTS["machine"],
        *(
            path.format(variant=variant)
            for variant in VARIANTS
            for path in (
                RECIPE_OUTPUTS["review"],
                RECIPE_OUTPUTS["pseudo_labels"],
                RECIPE_OUTPUTS["submission"],
            )
        ),
        *teacher_targets(),
        *report_targets(),
    ]


# Teacher (workflow/rules/teacher.smk): reasons and descriptions written by a stronger model, when one is
# configured; reason and describe variants fall back to template text otherwise.
TEACHER = config["teacher"]


def teacher_configured():
    return TEACHER["base_url"] is not None


def teacher_answer_settings():
    """What decides a teacher's answers: a change reruns the teacher rules.

    Transport settings (URL, key variable, concurrency, rate, timeout, retries) change no answer, so the
    scripts read them from config.
    """
    return {
        "model": TEACHER["model"],
        "max_tokens": TEACHER["max_tokens"],
        "temperature": TEACHER["temperature"],
    }


# Functions, not strings: Snakemake would read the prompts' {label} and {max_chars} as wildcards.
def teacher_reason_prompt(wildcards):
    return TEACHER["cot_prompt" if VARIANT[wildcards.variant].cot else "reason_prompt"]


def teacher_describe_prompt(wildcards):
    return TEACHER["describe_prompt"]


def reason_max_chars(wildcards):
    return VARIANT[wildcards.variant].reason_max_chars


def describe_max_chars(wildcards):
    return VARIANT[wildcards.variant].describe_max_chars


def teacher_reasons_if_needed(wildcards):
    """A reason variant's teacher reasons, when a teacher is configured."""
    if VARIANT[wildcards.variant].reads_teacher_reasons(teacher=teacher_configured()):
        return TEACHER_OUTPUTS["reasons"].format(variant=wildcards.variant)
    return []


def teacher_descriptions_if_needed(wildcards):
    """A describe variant's teacher descriptions, when a teacher is configured."""
    if VARIANT[wildcards.variant].reads_teacher_descriptions(
        teacher=teacher_configured()
    ):
        return TEACHER_OUTPUTS["descriptions"].format(variant=wildcards.variant)
    return []


def reason_variants():
    return [name for name, variant in VARIANT.items() if variant.reason]


def reason_diversity_if_needed(wildcards):
    """The variant's reason diversity report, e.g. for its MLflow logging: a list, empty unless the
    variant has reasons (a script iterates it; a bare path would be iterated character by character).
    """
    if VARIANT[wildcards.variant].reason:
        return [TEACHER_OUTPUTS["reason_diversity"].format(variant=wildcards.variant)]
    return []


def teacher_targets():
    """Reason diversity reports of every reason variant (teacher tables are inputs of the prompts)."""
    return expand(TEACHER_OUTPUTS["reason_diversity"], variant=reason_variants())


def report_targets():
    """Every output made for the report, so that `snakemake` (rule all) leaves the report complete."""
    return [
        REPORT_OUTPUTS["summary_page"],
        REPORT_OUTPUTS["run_config_page"],
        *(
            path.format(variant=variant)
            for variant in VARIANTS
            for path in (
                REPORT_OUTPUTS["loss_curves"],
                REPORT_OUTPUTS["pseudo_labels_plot"],
                REPORT_OUTPUTS["review_page"],
            )
        ),
    ]


def tell_if_mlflow_was_offline():
    """Print, at the end of a run, that the MLflow server was unreachable or lost, and where the runs went."""
    for notice in (
        unreachable_notice(TRAIN_OUTPUTS["experiment"]),
        pending_notice(),
    ):
        if notice:
            print(f"\n{notice}\n", file=sys.stderr)


def tell_warnings():
    """Print, at the end of a run, the summary's warnings (a run that learned nothing, OCR that read nothing)."""
    warnings = Path(EVALUATE_OUTPUTS["warnings"])
    if warnings.is_file() and warnings.read_text(encoding="utf-8").strip():
        print(f"\n{warnings.read_text(encoding='utf-8')}", file=sys.stderr)
