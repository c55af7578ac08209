"""profiles/slurm: every rule that declares a GPU has its own entry (partition, one node, cores, minutes), read from
the rule files themselves, so that a new GPU rule without one fails here."""

from __future__ import annotations

import re

import yaml

from conftest import REPO

RULE_FILES = sorted((REPO / "workflow" / "rules").glob("*.smk"))
PROFILE = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text(encoding="utf-8"))


def gpu_rules(texts: list[str]) -> set[str]:
    """Rules whose resources name `gpu=`, a `use rule ... as ... with:` inheriting its parent's unless it says."""
    declares, parents = {}, {}
    for text in texts:
        for block in re.split(r"\n(?=\S)", text):  # top-level statements
            own = bool(re.search(r"^\s+gpu=", block, re.MULTILINE))
            if found := re.match(r"rule (\w+):", block):
                declares[found[1]] = own
            elif found := re.match(r"use rule (\w+) as (\w+)", block):
                declares[found[2]] = own or None  # None: as its parent
                parents[found[2]] = found[1]
    for name, parent in parents.items():
        if declares[name] is None:
            declares[name] = declares[parent]
    return {name for name, gpu in declares.items() if gpu}


def test_the_rule_reader_finds_gpu_rules_and_their_copies():
    text = 'rule train:\n    resources:\n        gpu=2,\n\n\nrule plot:\n    # no gpu= here\n    shell: "x"\n'
    text += "use rule train as train_again with:\n    output:\n        model='m'\n"
    assert gpu_rules([text]) == {"train", "train_again"}


def test_every_gpu_rule_has_its_own_slurm_entry():
    rules = gpu_rules([path.read_text(encoding="utf-8") for path in RULE_FILES])
    assert {"train_fold", "train_final", "score_fold", "score_test_shard", "score_final_model"} <= rules
    assert {"evaluate_general_ability", "evaluate_base_general_ability"} <= rules
    entries = PROFILE["set-resources"]
    missing = sorted(rules - set(entries))
    assert not missing, f"GPU rules without a set-resources entry in profiles/slurm/config.yaml: {missing}"
    for rule in rules:
        entry = entries[rule]
        assert entry["nodes"] == 1, rule  # a job's ranks share one node's GPUs and host memory
        assert {"slurm_partition", "cpus_per_task", "runtime"} <= set(entry), rule
        assert "mem_mb" not in entry, f"{rule}: mem_mb comes from the rule (vlmflow.runtime.memory)"
        assert PROFILE["set-threads"][rule] == entry["cpus_per_task"], rule


def test_every_entry_names_a_rule():
    names = set()
    for path in RULE_FILES:
        text = path.read_text(encoding="utf-8")
        names |= set(re.findall(r"^rule (\w+):", text, re.MULTILINE))
        names |= set(re.findall(r"^use rule \w+ as (\w+)", text, re.MULTILINE))
    assert set(PROFILE["set-resources"]) <= names
    assert set(PROFILE["set-threads"]) <= names
