"""The config schema: the shipped config validates, defaults fill in, wrong keys fail by name."""

from pathlib import Path

import pytest
import yaml
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

from conftest import REPO, run_snakemake, small_demo_config

SCHEMA = str(REPO / "workflow" / "schemas" / "config.schema.yaml")


def load_shipped_config(name: str = "config.yaml") -> dict:
    return yaml.safe_load((REPO / "config" / name).read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", ["config.yaml", "demo.yaml"])
def test_shipped_configs_validate_and_defaults_fill_in(name):
    config = load_shipped_config(name)
    validate(config, SCHEMA)
    assert config["data"]["max_image_pixels"] == 40_000_000  # a default from the schema
    assert config["demo"]["model"]["text_hidden_size"] == 128  # a nested default


def test_a_short_config_is_enough():
    config = {}
    validate(config, SCHEMA)
    assert config["data"]["train"] is None  # yours to name: a run stops at start without it
    assert config["model"]["name_or_path"] == "Qwen/Qwen2-VL-7B-Instruct"  # the recipe's
    assert config["demo"]["model_family"] == "qwen2_vl"
    assert (config["train"]["finetuning_type"], config["train"]["lora"]["rank"]) == ("full", 8)


def test_schema_describes_every_key():
    def walk(node, path):
        for key, child in node.get("properties", {}).items():
            assert child.get("description"), f"{path}{key} has no description"
            assert "default" in child, f"{path}{key} has no default"
            walk(child, f"{path}{key}.")

    walk(yaml.safe_load(Path(SCHEMA).read_text(encoding="utf-8")), "")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"data": {"on_eror": "skip"}}, "on_eror"),
        ({"data": {"on_error": "ignore"}}, "ignore"),
        ({"demo": {"flip_fraction": 1.5}}, "1.5"),
        ({"trian": {}}, "trian"),
    ],
)
def test_a_wrong_key_or_value_fails_naming_it(change, named):
    with pytest.raises(WorkflowError) as failure:
        validate(change, SCHEMA)
    assert named in str(failure.value)


def test_final_seeds_default_to_one_fit_and_the_demo_fits_two():
    config = {}
    validate(config, SCHEMA)
    assert config["final"]["seeds"] is None  # one fit per combination, seeded by train.seed
    demo = load_shipped_config("demo.yaml")
    validate(demo, SCHEMA)
    assert len(demo["final"]["seeds"]) == 2 == len(set(demo["final"]["seeds"]))


@pytest.mark.parametrize(
    ("seeds", "named"),
    [
        ([], "[] should be non-empty"),
        ([42, 42], "has non-unique elements"),
        ([42, "43"], "'43' is not of type 'integer'"),
        ([1.5], "1.5 is not of type 'integer'"),
        ([-1], "-1 is less than the minimum of 0"),
    ],
)
def test_final_seeds_must_be_distinct_integers_and_at_least_one(seeds, named):
    with pytest.raises(WorkflowError) as failure:
        validate({"final": {"seeds": seeds}}, SCHEMA)
    assert named in str(failure.value)


def test_snakemake_refuses_a_misspelt_key_at_start(tmp_path):
    config = small_demo_config(tmp_path, data={"on_eror": "skip"})
    result = run_snakemake(tmp_path, config, "-n", check=False)
    assert result.returncode != 0
    assert "on_eror" in result.stdout + result.stderr


def test_config_readme_names_every_file_under_config_and_the_catalogue_file_says_how_to_run():
    """The Snakemake workflow catalogue's conventions: config/README.md and .snakemake-workflow-catalog.yml."""
    readme = (REPO / "config" / "README.md").read_text(encoding="utf-8")
    for path in sorted((REPO / "config").iterdir()):
        if path.name != "README.md":
            assert f"`{path.name}" in readme, f"config/README.md does not say what {path.name} is for"
    usage = yaml.safe_load((REPO / ".snakemake-workflow-catalog.yml").read_text(encoding="utf-8"))["usage"]
    assert usage["software-stack-deployment"]["conda"] and usage["report"]
    assert "--resources gpu=" in usage["mandatory-flags"]["flags"]
