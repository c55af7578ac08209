"""Names of the recipe's stage combinations and their final rounds."""

import pytest

from vlmflow.recipe.stages import final_round, stage_set, stage_set_name


def test_stage_combination_names_are_canonical_and_round_trip():
    assert stage_set_name([]) == "none"
    assert stage_set_name(["pseudo", "correction"]) == "correction_pseudo"
    assert stage_set("correction_pseudo") == ["correction", "pseudo"] and stage_set("none") == []
    with pytest.raises(ValueError, match="unknown stage"):
        stage_set_name(["distillation"])
    assert final_round("correction_pseudo", 3) == 3 and final_round("correction", 3) == 1
