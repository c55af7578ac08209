"""Duplicate images: exact copies (the same sha256) and near-duplicates (a perceptual hash), within the
training records and between them and the test records.

What each kind does downstream:

- exact copies within a split are counted in ``<split>_counts.json`` (``exact_duplicate_counts``);
- exact training copies carrying different labels are label conflicts: one row each, in the label
  correction's issue columns with method ``duplicate_conflict``, for the review page and the overrides;
- a test image that is an exact copy of training images gets their label in the submission when
  ``data.test_duplicates`` is ``predict_from_train`` (``predict_from_train``);
- near-duplicates (``imagehash.phash`` of 256 bits within ``data.near_duplicate_distance`` bits) are
  listed with their distance, for a person to look at;
- every group of training records linked by an exact copy or a near-duplicate stays in one fold
  (``duplicate_groups``, read by ``vlmflow.data.folds``), so that no fold model trains on a copy of an
  image it is scored on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import imagehash
import numpy as np
import pandas as pd
from PIL import Image, ImageStat
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from vlmflow.data.messages import name_ids

log = logging.getLogger(__name__)

CONFLICT_METHOD = "duplicate_conflict"
# The label correction's issue columns (vlmflow.recipe.correction.ISSUE_COLUMNS), kept here so that this
# module, which ingestion imports, does not import the recipe.
CONFLICT_COLUMNS = ["id", "given", "proposed", "confidence", "method"]
EXACT_COLUMNS = ["image_sha256", "split", "id", "label", "image_path", "copies", "label_conflict", "in_test_and_train"]
NEAR_COLUMNS = ["id_a", "split_a", "id_b", "split_b", "distance", "image_a", "image_b"]
GROUP_COLUMNS = ["id", "group", "group_size"]
TEST_COPY_COLUMNS = ["id", "label", "train_ids"]
# A 16x16 grid of DCT signs. phash's default 8x8 (64 bits) puts distinct screenshots of one layout at 0 to 4
# bits, as close as a resized, recompressed copy; at 16x16 the demo's distinct screens are 36 bits or more
# apart and its resized (2/3) JPEG copies at quality 50 within 10.
HASH_SIZE = 16
HASH_BITS = HASH_SIZE * HASH_SIZE
FLAT_STDDEV = 2.0  # grey levels: below it an image is one colour, with nothing for a perceptual hash to see
MAX_NEAR_DISTANCE = 64  # a quarter of the bits: beyond it, unrelated images count as near-duplicates
TEST_DUPLICATE_MODES = ("predict_from_train", "score")


def exact_duplicate_counts(records: pd.DataFrame) -> dict:
    """How many images of one split's records are exact copies (same sha256): the groups, the records past
    the first of each group, and the groups whose labels agree or differ (test labels are null: agree)."""
    shared = records[records["image_sha256"].duplicated(keep=False)]
    labels = shared.groupby("image_sha256")["label"].nunique(dropna=True)
    return {
        "groups": int(len(labels)),
        "extra_copies": int(len(shared) - len(labels)),
        "same_label_groups": int((labels <= 1).sum()),
        "conflicting_label_groups": int((labels > 1).sum()),
    }


def perceptual_hashes(image_paths: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """One row per image of its DCT hash's HASH_BITS bits packed into bytes (resizing and recompression
    barely move it), and whether the image has a hash worth comparing: a flat image (one colour, grey
    levels within FLAT_STDDEV) hashes to noise or to all zeros, so that every flat image, whatever its
    colour, would match every other; only its exact copies link it."""
    rows, comparable = [], []
    for path in image_paths:
        with Image.open(path) as image:
            rows.append(np.packbits(imagehash.phash(image, hash_size=HASH_SIZE).hash.flatten()))
            comparable.append(ImageStat.Stat(image.convert("L")).stddev[0] > FLAT_STDDEV)
    return np.array(rows, dtype=np.uint8).reshape(len(rows), HASH_BITS // 8), np.array(comparable, dtype=bool)


def close_pairs(hashes: np.ndarray, max_distance: int, chunk: int = 256) -> pd.DataFrame:
    """Every pair ``a < b`` whose packed hashes differ in at most ``max_distance`` bits, with that distance.

    Compared a block of rows at a time: all pairs at once would take n x n x 32 bytes.
    """
    found = []
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk]
        distance = np.bitwise_count(block[:, None, :] ^ hashes[None, :, :]).sum(axis=2, dtype=np.int64)
        a, b = np.nonzero(distance <= max_distance)
        keep = start + a < b
        found.append(pd.DataFrame({"a": start + a[keep], "b": b[keep], "distance": distance[a[keep], b[keep]]}))
    return pd.concat(found, ignore_index=True) if found else pd.DataFrame({"a": [], "b": [], "distance": []}, dtype=int)


def majority_label(labels: pd.Series) -> tuple[str, float]:
    """The label most copies carry (a tie goes to the one met first) and the share of copies carrying it."""
    counts = labels.value_counts(sort=False)  # in order of first appearance
    label = counts.index[counts.to_numpy().argmax()]
    return str(label), float(counts[label] / len(labels))


@dataclass(frozen=True)
class Duplicates:
    """What ``find_duplicates`` found; each table's columns are the module's ``*_COLUMNS``."""

    exact: pd.DataFrame  # every record whose image has an exact copy elsewhere, with its group's facts
    near: pd.DataFrame  # pairs of distinct images within the distance, train and test alike
    groups: pd.DataFrame  # every training record's duplicate group (a record alone is its own group)
    conflicts: pd.DataFrame  # label conflicts, one row per copy whose label is not the group's majority
    test_copies: pd.DataFrame  # test records whose image is an exact copy of training images, with their label

    def summary(self) -> dict:
        exact_groups = self.exact.drop_duplicates("image_sha256")
        return {
            "exact_groups": int(len(exact_groups)),
            "exact_groups_with_label_conflict": int(exact_groups["label_conflict"].sum()),
            "exact_groups_in_test_and_train": int(exact_groups["in_test_and_train"].sum()),
            "label_conflicts": int(len(self.conflicts)),
            "test_copies_of_train": int(len(self.test_copies)),
            "near_duplicate_pairs": int(len(self.near)),
            "train_groups": int(self.groups["group"].nunique()),
            "train_groups_of_two_or_more": int(self.groups.loc[self.groups["group_size"] > 1, "group"].nunique()),
        }


def _exact_table(records: pd.DataFrame) -> pd.DataFrame:
    shared = records[records["image_sha256"].duplicated(keep=False)].copy()
    by_image = shared.groupby("image_sha256")
    train_labels = shared["label"].where(shared["split"] == "train")
    shared["copies"] = by_image["id"].transform("size")
    shared["label_conflict"] = train_labels.groupby(shared["image_sha256"]).transform("nunique") > 1
    shared["in_test_and_train"] = by_image["split"].transform("nunique") > 1
    return shared.sort_values(["image_sha256", "split", "id"], kind="stable")[EXACT_COLUMNS].reset_index(drop=True)


def _conflicts(train: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for _, copies in train[train["image_sha256"].duplicated(keep=False)].groupby("image_sha256", sort=False):
        if copies["label"].nunique() < 2:
            continue
        proposed, share = majority_label(copies["label"])
        log.warning(
            "label conflict: records %s are one image (sha256 %s) with labels %s; proposed %s (%.0f%% of copies)",
            name_ids(copies["id"]),
            copies["image_sha256"].iloc[0][:12],
            sorted(copies["label"].unique()),
            proposed,
            100 * share,
        )
        for record in copies[copies["label"] != proposed].itertuples(index=False):
            rows.append([record.id, record.label, proposed, share, CONFLICT_METHOD])
    return pd.DataFrame(rows, columns=CONFLICT_COLUMNS)


def _test_copies(train: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    train_by_image = {sha: copies for sha, copies in train.groupby("image_sha256")}
    rows = []
    for record in test[test["image_sha256"].isin(train_by_image)].itertuples(index=False):
        copies = train_by_image[record.image_sha256]
        rows.append([record.id, majority_label(copies["label"])[0], " ".join(copies["id"])])
    return pd.DataFrame(rows, columns=TEST_COPY_COLUMNS)


def _groups(train: pd.DataFrame, links: pd.DataFrame) -> pd.DataFrame:
    """Connected components of the training records linked by an exact copy or a near-duplicate pair."""
    size = len(train)
    graph = coo_matrix((np.ones(len(links)), (links["a"], links["b"])), shape=(size, size))
    _, component = connected_components(graph, directed=False)
    ids = train["id"].to_numpy()
    first_id = pd.Series(ids).groupby(component).transform("first").to_numpy()  # a group is named by its first id
    groups = pd.DataFrame({"id": ids, "group": first_id})
    groups["group_size"] = groups.groupby("group")["id"].transform("size")
    return groups[GROUP_COLUMNS]


def find_duplicates(train: pd.DataFrame, test: pd.DataFrame, near_duplicate_distance: int) -> Duplicates:
    """Exact copies, near-duplicates, training groups, label conflicts and test copies of training images.

    ``train`` and ``test`` are ingested tables (id, image_path, label, image_sha256). A near-duplicate is a
    pair of different files whose perceptual hashes differ in at most ``near_duplicate_distance`` of
    HASH_BITS bits.
    """
    if not 0 <= near_duplicate_distance <= MAX_NEAR_DISTANCE:
        raise ValueError(
            f"data.near_duplicate_distance must be 0 to {MAX_NEAR_DISTANCE} bits of the {HASH_BITS}-bit "
            f"perceptual hash, got {near_duplicate_distance}"
        )
    records = pd.concat([train.assign(split="train"), test.assign(split="test")], ignore_index=True)
    hashes, comparable = perceptual_hashes(records["image_path"])
    pairs = close_pairs(hashes, near_duplicate_distance)
    sha = records["image_sha256"].to_numpy()
    exact = sha[pairs["a"]] == sha[pairs["b"]]
    linked = exact | (comparable[pairs["a"]] & comparable[pairs["b"]])
    pairs, exact = pairs[linked], exact[linked]
    near_pairs = pairs[~exact]  # exact copies are reported as such
    a, b = records.iloc[near_pairs["a"]].reset_index(drop=True), records.iloc[near_pairs["b"]].reset_index(drop=True)
    near = pd.DataFrame(
        {
            "id_a": a["id"],
            "split_a": a["split"],
            "id_b": b["id"],
            "split_b": b["split"],
            "distance": near_pairs["distance"].to_numpy(),
            "image_a": a["image_path"],
            "image_b": b["image_path"],
        },
        columns=NEAR_COLUMNS,
    )
    in_train = pairs["b"] < len(train)  # a < b, so both records are training records
    duplicates = Duplicates(
        exact=_exact_table(records),
        near=near,
        groups=_groups(train, pairs[in_train]),
        conflicts=_conflicts(train),
        test_copies=_test_copies(train, test),
    )
    log.info("duplicates: %s", duplicates.summary())
    return duplicates


def read_duplicate_table(path: str | Path) -> pd.DataFrame:
    """A table ``find_duplicates`` wrote (groups, label conflicts, test copies), ids and labels as written
    (strings: "007" stays "007", an empty cell stays empty), a conflict's confidence a number."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    return table.astype({"confidence": float}) if "confidence" in table else table


def predict_from_train(predictions: pd.DataFrame, test_copies: pd.DataFrame, mode: str) -> pd.DataFrame:
    """The predictions (``id``, ``predicted``) with each test copy of a training image given that image's
    training label (``predict_from_train``), or unchanged (``score``)."""
    if mode not in TEST_DUPLICATE_MODES:
        raise ValueError(f"data.test_duplicates must be one of {list(TEST_DUPLICATE_MODES)}, not {mode!r}")
    if mode == "score" or test_copies.empty:
        return predictions
    label = predictions["id"].map(test_copies.set_index("id")["label"])
    changed = label.notna() & (label != predictions["predicted"])
    log.info(
        "%d test record(s) are copies of training images and take their training label (%d differ from the model's)",
        int(label.notna().sum()),
        int(changed.sum()),
    )
    return predictions.assign(predicted=label.fillna(predictions["predicted"]))
