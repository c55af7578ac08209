import numpy as np
import pandas as pd
import pytest

from vlmflow.recipe.ensembles import average_probabilities


def variant_table(rows: dict[str, list[float]], labels=("a", "b", "c")) -> pd.DataFrame:
    """Out-of-fold predictions of one variant: id, p::<label> per label, the arg-max, fold and given label."""
    table = pd.DataFrame([[record, *probabilities] for record, probabilities in rows.items()])
    table.columns = ["id", *[f"p::{label}" for label in labels]]
    table["predicted"] = [labels[code] for code in table.iloc[:, 1:].to_numpy().argmax(axis=1)]
    table["fold"] = range(len(table))
    table["given_label"] = "a"
    return table


OCR = variant_table({"r1": [0.6, 0.3, 0.1], "r2": [0.2, 0.5, 0.3], "r3": [0.1, 0.1, 0.8]})
NO_OCR = variant_table({"r1": [0.2, 0.7, 0.1], "r2": [0.1, 0.2, 0.7], "r3": [0.3, 0.3, 0.4]})


def test_an_ensemble_of_two_copies_of_one_variant_equals_that_variant():
    pd.testing.assert_frame_equal(average_probabilities([OCR, OCR.copy()]), OCR)
    pd.testing.assert_frame_equal(average_probabilities([OCR, OCR.copy()], weights=[3, 1]), OCR)


def test_the_mean_is_weighted_and_matched_by_id_not_by_row():
    shuffled = NO_OCR.iloc[::-1].reset_index(drop=True)
    ensemble = average_probabilities([OCR, shuffled], weights=[1, 3], names=["ocr", "no_ocr"])

    assert ensemble["id"].tolist() == ["r1", "r2", "r3"]  # the first table's order
    assert ensemble.loc[0, ["p::a", "p::b", "p::c"]].tolist() == pytest.approx([0.3, 0.6, 0.1])
    assert ensemble["predicted"].tolist() == ["b", "c", "c"]  # OCR alone says a, b, c
    assert ensemble[["p::a", "p::b", "p::c"]].sum(axis=1).to_numpy() == pytest.approx(np.ones(3))


def test_different_label_sets_fail_naming_the_labels():
    other = variant_table({"r1": [0.6, 0.3, 0.1], "r2": [0.2, 0.5, 0.3], "r3": [0.1, 0.1, 0.8]}, ("a", "b", "d"))
    with pytest.raises(
        ValueError, match=r"no_ocr and ocr have different label sets: only no_ocr has 'd'; only ocr has 'c'"
    ):
        average_probabilities([OCR, other], names=["ocr", "no_ocr"])


def test_different_ids_fail_naming_the_ids():
    other = NO_OCR.replace({"id": {"r3": "r9"}})
    with pytest.raises(
        ValueError, match=r"no_ocr and ocr score different ids: only no_ocr has 'r9'; only ocr has 'r3'"
    ):
        average_probabilities([OCR, other], names=["ocr", "no_ocr"])
    with pytest.raises(ValueError, match=r"table 1 lists ids more than once: 'r1'"):
        average_probabilities([OCR, pd.concat([NO_OCR, NO_OCR.head(1)])])


def test_records_that_differ_in_fold_or_given_label_fail():
    other = NO_OCR.assign(given_label=["a", "b", "a"])
    with pytest.raises(ValueError, match=r"table 1 and table 0 differ in 'given_label', first at id 'r2'"):
        average_probabilities([OCR, other])


def test_bad_weights_fail():
    with pytest.raises(ValueError, match="1 weights for 2 tables"):
        average_probabilities([OCR, NO_OCR], weights=[1])
    with pytest.raises(ValueError, match="positive sum"):
        average_probabilities([OCR, NO_OCR], weights=[1, -1])
    with pytest.raises(ValueError, match="no tables"):
        average_probabilities([])
