import numpy as np
import pandas as pd
import pytest

from vlmflow.recipe.thresholds import agreement_evidence, auto_threshold, noise_auc, noise_scores


def known_calibration(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Confidences uniform on [0, 1], each right with probability equal to its confidence: the records at or above
    t are right at (1 + t) / 2, so precision p is first reached at t = 2p - 1."""
    rng = np.random.default_rng(seed)
    confidences = rng.uniform(0, 1, n)
    return confidences, rng.uniform(0, 1, n) < confidences


@pytest.mark.parametrize("target", [0.8, 0.9])
def test_auto_threshold_meets_the_target_on_predictions_of_known_calibration(target):
    confidences, correct = known_calibration(20_000, seed=0)
    choice = auto_threshold(confidences, correct, target)

    assert choice.precision_reached >= target
    assert choice.kept == int((confidences >= choice.threshold).sum())
    assert choice.threshold == pytest.approx(2 * target - 1, abs=0.03)
    # and on new records of the same model, the threshold still keeps them at about the target
    fresh_confidences, fresh_correct = known_calibration(20_000, seed=1)
    assert fresh_correct[fresh_confidences >= choice.threshold].mean() >= target - 0.01


CONFIDENCES = [0.9, 0.8, 0.8, 0.7, 0.6, 0.5]
CORRECT = [True, True, False, True, False, True]  # precision at 0.9: 1, 0.8: 2/3, 0.7: 3/4, 0.6: 3/5, 0.5: 4/6


def test_the_smallest_qualifying_threshold_wins_and_ties_go_together():
    choice = auto_threshold(CONFIDENCES, CORRECT, 0.75)
    assert (choice.threshold, choice.kept, choice.precision_reached) == (0.7, 4, 0.75)
    # 0.6 fails (3/5) but 0.5 qualifies again (4/6): precision is not monotone, the smallest qualifying wins
    assert auto_threshold(CONFIDENCES, CORRECT, 0.65).threshold == 0.5
    # the two records at 0.8 are kept together: 2/3 at 0.8, never 1/1 from one of them
    assert auto_threshold(CONFIDENCES, CORRECT, 0.95).threshold == 0.9
    assert auto_threshold(CONFIDENCES, CORRECT, 0.75).as_metrics("pseudo_tau") == {
        "pseudo_tau_threshold": 0.7,
        "pseudo_tau_precision": 0.75,
        "pseudo_tau_kept": 4,
        "pseudo_tau_target_precision": 0.75,
    }


def test_an_unreachable_target_keeps_nothing_and_says_what_was_reached():
    choice = auto_threshold([0.9, 0.8, 0.7], [False, True, False], 0.6)
    assert (choice.threshold, choice.kept, choice.precision_reached) == (None, 0, 0.5)


def test_bad_input_to_auto_threshold_fails():
    with pytest.raises(ValueError, match=r"target precision must be in \(0, 1\]"):
        auto_threshold(CONFIDENCES, CORRECT, 0.0)
    with pytest.raises(ValueError, match="one of each a record"):
        auto_threshold(CONFIDENCES, CORRECT[:-1], 0.9)
    with pytest.raises(ValueError, match="no records"):
        auto_threshold([], [], 0.9)
    with pytest.raises(ValueError, match="NaN"):
        auto_threshold([0.5, np.nan], [True, False], 0.9)


OUT_OF_FOLD = pd.DataFrame(
    {
        "id": ["r1", "r2", "r3", "r4"],
        "p::a": [0.7, 0.2, 0.5, 0.1],
        "p::b": [0.3, 0.8, 0.5, 0.9],
        "given_label": ["a", "a", "b", "b"],
    }
)


def test_agreement_evidence_is_the_top_probability_and_agreement_with_the_given_label():
    confidences, agrees = agreement_evidence(OUT_OF_FOLD)
    assert confidences.tolist() == [0.7, 0.8, 0.5, 0.9]
    assert agrees.tolist() == [True, False, False, True]  # r3: a tie goes to the first label, a


def test_noise_auc_judges_the_ranking_of_flipped_records():
    scores = noise_scores(OUT_OF_FOLD)
    assert scores == pytest.approx([0.3, 0.8, 0.5, 0.1])
    assert noise_auc(scores, [False, True, True, False]) == 1.0  # both flips above both clean records
    assert noise_auc(scores, [True, False, False, True]) == 0.0
    assert noise_auc(scores, [True, True, False, False]) == 0.75  # 3 of 4 pairs: r1 (0.3) falls below r3 (0.5)
    with pytest.raises(ValueError, match="needs flipped and unflipped records; 0 of 4"):
        noise_auc(scores, [False] * 4)
    with pytest.raises(ValueError, match=r"given labels have no probability column: \['p::z'\]"):
        noise_scores(OUT_OF_FOLD.assign(given_label=["a", "z", "a", "a"]))
