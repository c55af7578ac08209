"""One fine-tune's MLflow run: straight into the store, or through a local buffer when the store is a server.

The two paths meet here and nowhere else: vlmflow.tracking.runs knows runs and stores, vlmflow.tracking.buffer the
local store a fine-tune logs to while a server may be lost, and neither imports this module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mlflow.tracking import MlflowClient

from vlmflow.runtime.gpu_lease import lease_gpus
from vlmflow.tracking.buffer import buffered_fine_tune
from vlmflow.tracking.offline import is_server
from vlmflow.tracking.runs import log_training, read_run, start_child_run, training_environment, write_run


def tracked_fine_tune(
    *,
    parent_run: str | Path,
    run_file: str | Path,
    model_dir: str | Path,
    variant: str,
    name: str,
    gpus: int,
    train: Callable[[dict[str, str]], Path],
    **tags: str,
) -> None:
    """One fine-tune in a child run of its variant's MLflow run, for fold and final fits alike.

    Starts the run ``<variant>/<name>`` with ``tags``, leases ``gpus`` distinct devices (Snakemake only
    counts them), calls ``train(environment)``, which passes MLflow's variables to the trainer and returns
    its YAML's path, then attaches the YAML, loss plot and trainer state and writes the run reference.

    With a tracking server, the trainer and the attachments go to a local run first, which is sent to the
    server run when training ends, or kept for ``make sync-mlflow`` when the server is lost: see
    vlmflow.tracking.buffer. One that starts while the server is down has no server run yet: its run
    reference names none (``run_id`` null, see ``child_run_id``) until the run is sent.
    """
    parent = read_run(parent_run)
    server = parent["tracking_uri"]

    def fine_tune(store: str, run_id: str) -> None:
        with lease_gpus(gpus):  # CUDA_VISIBLE_DEVICES reaches the trainer
            config_path = train(training_environment(store, parent["experiment"], run_id))
        log_training(MlflowClient(store), run_id, config_path, model_dir)

    if is_server(server):
        run_id = buffered_fine_tune(parent, run_file, variant, name, tags, fine_tune)
    else:
        run_id = start_child_run(MlflowClient(server), parent["experiment_id"], parent["run_id"], variant, name, **tags)
        fine_tune(server, run_id)
    write_run(run_file, server, parent["experiment"], parent["experiment_id"], run_id)


def fine_tune_job(job, *, name: str, train: Callable[..., Path], **tags: str) -> None:
    """A fine-tune rule's job (``train_fold``, ``train_final``): ``tracked_fine_tune`` with what both rules give
    the same way, taken from ``job``, the script's ``snakemake`` object: ``input.parent_run`` (the variant's run
    reference), ``input.deepspeed`` (its config, empty without), ``output.run`` (the run reference to write),
    ``output.model``, ``output.config`` (the trainer's YAML, whose folder is the fine-tune's work folder),
    ``log[0]``, ``threads``, ``resources.gpu``, ``params.training`` (base model, template, method,
    hyper-parameters, ranks, seed) and ``wildcards.variant``.

    ``train`` is ``vlmflow.model.train.train_fold`` or ``train_model`` with what differs bound; it is called with
    the rest: ``workdir``, ``deepspeed_config``, ``log_path``, ``threads``, the ``training`` params and
    ``extra_env`` (MLflow's variables for the trainer)."""
    tracked_fine_tune(
        parent_run=job.input.parent_run,
        run_file=job.output.run,
        model_dir=job.output.model,
        variant=job.wildcards.variant,
        name=name,
        gpus=job.resources.gpu,
        train=lambda mlflow_environment: train(
            workdir=Path(job.output.config).parent,
            deepspeed_config=job.input.deepspeed or None,
            log_path=job.log[0],
            threads=job.threads,
            **job.params.training,
            extra_env=mlflow_environment,
        ),
        **tags,
    )
