"""Loss curves of a variant's fold fine-tunes, read from each fold's LLaMA-Factory trainer log."""

from pathlib import Path

from vlmflow.evaluation.report import plot_loss_curves, read_trainer_log
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
logs = {
    f"fold {fold}": read_trainer_log(Path(model) / "trainer_log.jsonl")
    for fold, model in zip(snakemake.params.folds, snakemake.input.models, strict=True)
}
plot_loss_curves(logs, output.plot, f"{snakemake.wildcards.variant}: loss of each fold's fine-tune")
output.commit()
