"""A final model's (or the base model's) exact-match accuracy on the held-out general records, never mixed into
training."""

import json

from vlmflow.evaluation.general_ability import answer_questions, check_never_mixed, general_metrics, held_out_questions
from vlmflow.prompting.general_data import read_general_records
from vlmflow.runtime.gpu_lease import lease_gpus
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
questions = held_out_questions(read_general_records(snakemake.input.held_out[0], snakemake.params.format))
for path in snakemake.input.mixed:  # the general data final fits mix in, when configured
    check_never_mixed(questions, read_general_records(path, snakemake.params.format))
with lease_gpus(snakemake.resources.gpu):  # distinct GPUs per job; CUDA_VISIBLE_DEVICES set before CUDA starts
    answers = answer_questions(
        snakemake.params.model,  # a folder, or the base model's hub id
        questions,
        batch_size=snakemake.params.batch_size,
        device=snakemake.params.device,
        threads=snakemake.threads,
    )
with open(output.metrics, "w", encoding="utf-8") as metrics:
    json.dump(general_metrics(questions, answers), metrics, ensure_ascii=False, indent=2)
output.commit()
