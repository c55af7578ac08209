"""Check that this machine can run the configured GPU jobs; fail with every problem named, before the first one."""

import logging
import sys

from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.machine import examine_run, log_report_to_mlflow, write_report

log_to(snakemake.log.log)
params = snakemake.params
report = examine_run(snakemake.config, params.score, params.check, snakemake.input.deepspeed or None)
logging.info("machine check: %s (the report: %s)", report.status, snakemake.log.report)
write_report(snakemake.log.report, report)
write_report(snakemake.output.machine, report)
log_report_to_mlflow(snakemake.input.experiment, report)
if report.problems:
    logging.error(report.message(snakemake.log.report))
    sys.exit(1)
