"""The label review page with its images inlined: the report embeds each page on its own."""

from pathlib import Path

from vlmflow.evaluation.report import inline_images
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
review = Path(snakemake.input.review)
page = inline_images(review.read_text(encoding="utf-8"), review.parent)
Path(output.page).write_text(page, encoding="utf-8")
output.commit()
