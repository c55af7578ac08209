"""The MIRE submission file (utf-8-sig, id, predict) from the fold models' averaged test probabilities;
test copies of training images take their training label when data.test_duplicates is predict_from_train."""

import pandas as pd

from vlmflow.data.duplicates import predict_from_train, read_duplicate_table
from vlmflow.data.labels import label_names, load_labels
from vlmflow.recipe.submission import write_submission
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
write_submission(
    predict_from_train(
        pd.read_parquet(snakemake.input.test),
        read_duplicate_table(snakemake.input.test_copies),
        snakemake.params.test_duplicates,
    ),
    list(pd.read_parquet(snakemake.input.test_records)["id"]),
    label_names(load_labels(snakemake.input.labels)),
    output.submission,
)
output.commit()
