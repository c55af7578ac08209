import numpy as np
import pandas as pd
import pytest

from vlmflow.data.ingest import RECORD_COLUMNS
from vlmflow.recipe.pseudo import pseudo_training_records, select_pseudo_labels

LABELS = ["退款页面", "退货页面", "支付页面"]
REFUND, RETURN, PAYMENT = LABELS

# Per test id, the three folds' probabilities over LABELS. With tau = 0.625, m = 2, cap = 2:
FOLD_PROBABILITIES = {
    "t1": [[0.9, 0.05, 0.05]] * 3,  # refund 0.9, 3 agree: kept
    "t2": [[0.8, 0.1, 0.1], [0.7, 0.2, 0.1], [0.75, 0.15, 0.1]],  # refund 0.75, 3 agree: kept
    "t3": [[0.65, 0.25, 0.1]] * 3,  # refund 0.65, 3 agree: third refund, dropped by the cap
    "t4": [[1.0, 0.0, 0.0], [0.45, 0.55, 0.0], [0.45, 0.55, 0.0]],  # refund 0.633 >= tau, 1 agrees: rejected
    "t5": [[0.5, 0.3, 0.2]] * 3,  # refund 0.5 < tau though all 3 agree: rejected
    "t6": [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1]],  # return 0.667, exactly 2 agree: kept
    "t8": [[0.125, 0.25, 0.625]] * 3,  # payment exactly tau (kept by tau), tied with t7: cap drops the larger id
    "t7": [[0.125, 0.25, 0.625]] * 3,  # payment exactly tau, tied with t8: kept
    "t9": [[0.1, 0.1, 0.8]] * 3,  # payment 0.8: kept
}


def fold_table(fold: int, ids: list[str]) -> pd.DataFrame:
    probabilities = np.array([FOLD_PROBABILITIES[i][fold] for i in ids])
    table = pd.DataFrame(probabilities, columns=[f"p::{label}" for label in LABELS])
    table.insert(0, "id", ids)
    table["predicted"] = [LABELS[k] for k in probabilities.argmax(axis=1)]
    table["generated"] = table["predicted"]
    return table


def fold_tables() -> list[pd.DataFrame]:
    ids = list(FOLD_PROBABILITIES)
    # fold 1 lists the ids in another order: tables are matched by id, not by row
    return [fold_table(0, ids), fold_table(1, ids[::-1]), fold_table(2, ids)]


def test_selection_follows_tau_agreement_and_cap_exactly():
    selected, report = select_pseudo_labels(fold_tables(), tau=0.625, min_agreeing_folds=2, per_class_cap=2)
    assert list(selected.columns) == ["id", "label", "confidence", "agreeing_folds"]
    assert selected["id"].tolist() == ["t1", "t2", "t6", "t9", "t7"]  # label order, then most confident
    assert selected["label"].tolist() == [REFUND, REFUND, RETURN, PAYMENT, PAYMENT]
    assert selected["agreeing_folds"].tolist() == [3, 3, 2, 3, 3]
    assert selected["confidence"].tolist() == pytest.approx([0.9, 0.75, 2 / 3, 0.8, 0.625])
    assert {key: report[key] for key in ["candidates", "kept", "rejected_by_tau", "rejected_by_agreement"]} == {
        "candidates": 9,
        "kept": 5,
        "rejected_by_tau": 1,  # t5
        "rejected_by_agreement": 1,  # t4
    }
    assert report["dropped_by_cap"] == 2  # t3 (least confident refund) and t8 (tie with t7, larger id)
    assert report["kept_per_class"] == {REFUND: 2, RETURN: 1, PAYMENT: 2}


def test_without_a_cap_every_passing_id_is_kept_and_m_moves_the_agreement_cut():
    uncapped, report = select_pseudo_labels(fold_tables(), tau=0.625, min_agreeing_folds=2)
    assert uncapped["id"].tolist() == ["t1", "t2", "t3", "t6", "t9", "t7", "t8"]
    assert report["dropped_by_cap"] == 0
    strict, report = select_pseudo_labels(fold_tables(), tau=0.625, min_agreeing_folds=3)
    assert "t6" not in strict["id"].tolist() and report["rejected_by_agreement"] == 2
    lenient, _ = select_pseudo_labels(fold_tables(), tau=0.625, min_agreeing_folds=1)
    assert lenient.set_index("id").loc["t4", "label"] == REFUND


def test_fold_tables_that_differ_raise_naming_the_first_mismatch():
    tables = fold_tables()
    with pytest.raises(ValueError, match="fold 2 lacks test id 't9'"):
        select_pseudo_labels([tables[0], tables[1], tables[2][tables[2]["id"] != "t9"]], tau=0.5, min_agreeing_folds=2)
    renamed = tables[1].rename(columns={"p::支付页面": "p::其他类别图片"})
    with pytest.raises(ValueError, match="fold 1 lacks probability column 'p::支付页面'"):
        select_pseudo_labels([tables[0], renamed, tables[2]], tau=0.5, min_agreeing_folds=2)


@pytest.mark.parametrize(
    ("tau", "m", "message"),
    [(0.5, 0, r"min_agreeing_folds must be in 1\.\.3"), (0.5, 4, r"in 1\.\.3"), (1.5, 2, r"tau must be in \[0, 1\]")],
)
def test_out_of_range_thresholds_raise(tau, m, message):
    with pytest.raises(ValueError, match=message):
        select_pseudo_labels(fold_tables(), tau=tau, min_agreeing_folds=m)


def unlabelled_test_records():
    return pd.DataFrame(
        {
            "id": ["t1", "t2", "t7"],
            "image_path": ["/data/t1.jpg", "/data/t2.jpg", "/data/t7.jpg"],
            "label": pd.array([None, None, None], dtype="string"),
            "image_sha256": ["a1", "a2", "a7"],
            "width": [100, 200, 300],
            "height": [10, 20, 30],
        }
    )


def test_pseudo_records_have_the_train_table_columns_and_the_pseudo_labels():
    selected = pd.DataFrame(
        {"id": ["t7", "t1"], "label": [PAYMENT, REFUND], "confidence": [0.7, 0.9], "agreeing_folds": [3, 3]}
    )
    records = pseudo_training_records(selected, unlabelled_test_records(), train_ids=["r1", "r2"])
    assert list(records.columns) == RECORD_COLUMNS + ["source"]
    assert records["id"].tolist() == ["t7", "t1"]
    assert records["label"].tolist() == [PAYMENT, REFUND]
    assert records["image_path"].tolist() == ["/data/t7.jpg", "/data/t1.jpg"]
    assert records["width"].tolist() == [300, 100] and set(records["source"]) == {"pseudo"}


def test_pseudo_ids_that_collide_with_training_ids_raise_naming_them():
    selected = pd.DataFrame({"id": ["t1", "t2"], "label": [REFUND, RETURN], "confidence": 0.9, "agreeing_folds": 3})
    with pytest.raises(ValueError, match="collide with training ids: 't2'"):
        pseudo_training_records(selected, unlabelled_test_records(), train_ids=["r1", "t2"])
