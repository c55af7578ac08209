import pandas as pd
import pytest

from vlmflow.data.folds import assign_folds


def records(counts: dict[str, int]) -> pd.DataFrame:
    labels = [label for label, n in counts.items() for _ in range(n)]
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(labels))], "label": labels})


def test_every_record_is_held_out_once_and_classes_are_stratified():
    folds, report = assign_folds(records({"a": 10, "b": 5}), n_folds=5, seed=1)
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert folds.groupby("fold")["label"].apply(lambda s: (s == "a").sum()).tolist() == [2] * 5
    assert folds.groupby("fold")["label"].apply(lambda s: (s == "b").sum()).tolist() == [1] * 5
    assert report["fold_sizes"] == {0: 3, 1: 3, 2: 3, 3: 3, 4: 3}


def test_same_seed_same_split_other_seed_other_split():
    data = records({"a": 20, "b": 15})
    first, _ = assign_folds(data, 5, seed=7)
    again, _ = assign_folds(data, 5, seed=7)
    other, _ = assign_folds(data, 5, seed=8)
    pd.testing.assert_frame_equal(first, again)
    assert not first["fold"].equals(other["fold"])


def test_classes_smaller_than_k_are_kept_and_reported():
    folds, report = assign_folds(records({"a": 12, "tiny": 2, "single": 1}), n_folds=5, seed=0)
    assert len(folds) == 15
    assert report["classes_smaller_than_n_folds"] == {"single": 1, "tiny": 2}
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3, 4]
    assert folds.loc[folds["label"] == "tiny", "fold"].nunique() == 2


def test_too_few_records_fail_with_the_numbers():
    with pytest.raises(ValueError, match="3 training records cannot be split into 5 folds"):
        assign_folds(records({"a": 3}), n_folds=5, seed=0)


def test_every_class_smaller_than_k_still_splits_and_balances():
    folds, report = assign_folds(records({label: 2 for label in "abcdefghij"}), n_folds=5, seed=0)
    assert report["fold_sizes"] == {0: 4, 1: 4, 2: 4, 3: 4, 4: 4}
    assert (folds.groupby("label")["fold"].nunique() == 2).all()  # a class never held out twice in one fold


def test_training_part_and_held_out_part_partition_the_labelled_records():
    from vlmflow.data.folds import fold_training_part, held_out_part

    data = records({"a": 10, "b": 5})
    folds, _ = assign_folds(data, n_folds=5, seed=1)
    prompts = data.assign(split="train", target=data["label"])
    prompts = pd.concat([prompts, pd.DataFrame({"id": ["t1"], "label": [None], "split": ["test"], "target": [None]})])
    for fold in range(5):
        train, held = fold_training_part(prompts, folds, fold), held_out_part(prompts, folds, fold)
        assert set(train["id"]).isdisjoint(held["id"])
        assert set(train["id"]) | set(held["id"]) == set(data["id"])
        assert set(held["id"]) == set(folds.loc[folds["fold"] == fold, "id"])
