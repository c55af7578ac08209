"""The run's configuration as validated (schema defaults filled in): a YAML file and a page for the report."""

import json
from pathlib import Path

import yaml

from vlmflow.evaluation.report import yaml_page
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged

log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
settings = json.loads(json.dumps(snakemake.params.config))  # plain dicts and lists, as YAML writes them
Path(output.config).write_text(yaml.safe_dump(settings, allow_unicode=True, sort_keys=False), encoding="utf-8")
Path(output.page).write_text(yaml_page(settings, "Run configuration"), encoding="utf-8")
output.commit()
