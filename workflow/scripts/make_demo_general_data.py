"""Write the demo's small general instruction set (alpaca format): the part mixed into final fits, the part
held out to measure general ability, and their counts."""

import json

from vlmflow.prompting.general_data import demo_general_records, split_held_out
from vlmflow.runtime.logfile import log_to
from vlmflow.runtime.outputs import staged


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as file:
        json.dump(value, file, ensure_ascii=False, indent=1)


log_to(snakemake.log[0])
output = staged(snakemake.output)  # renamed into place by commit(): never half-written
records = demo_general_records(snakemake.params.n, snakemake.params.seed)
mixed, held_out = split_held_out(records, snakemake.params.held_out, snakemake.params.seed)
write_json(output.general, mixed)
write_json(output.held_out, held_out)
write_json(output.report, {"records": len(records), "mixed": len(mixed), "held_out": len(held_out)})
output.commit()
