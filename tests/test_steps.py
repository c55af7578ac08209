"""Names of the recipe's step combinations and their final rounds."""

import pytest

from vlmflow.recipe.steps import final_round, step_set, step_set_name


def test_step_combination_names_are_canonical_and_round_trip():
    assert step_set_name([]) == "none"
    assert step_set_name(["pseudo", "correction"]) == "correction_pseudo"
    assert step_set("correction_pseudo") == ["correction", "pseudo"] and step_set("none") == []
    with pytest.raises(ValueError, match="unknown step"):
        step_set_name(["distillation"])
    assert final_round("correction_pseudo", 3) == 3 and final_round("correction", 3) == 1
