import codecs

import pandas as pd
import pytest

from vlmflow.recipe.submission import SubmissionError, read_submission, write_submission

LABELS = ["物流页面-物流列表页面", "支付页面", "账单/账户页面"]
TEST_IDS = ["c3", "0a1", "b2"]  # not sorted: the file keeps this order


def predictions(ids, labels) -> pd.DataFrame:
    return pd.DataFrame({"id": ids, "predicted": labels, "generated": labels})


def test_submission_is_utf8_sig_with_one_valid_label_per_test_id_in_order(tmp_path):
    path = tmp_path / "submit.csv"
    rows = predictions(["b2", "c3", "0a1"], ["账单/账户页面", "物流页面-物流列表页面", "支付页面"])
    write_submission(rows, TEST_IDS, LABELS, path)
    raw = path.read_bytes()
    assert raw.startswith(codecs.BOM_UTF8)
    assert raw[len(codecs.BOM_UTF8) :].decode("utf-8").splitlines()[0] == "id,predict"
    submission = read_submission(path)
    assert list(submission.columns) == ["id", "predict"]
    assert submission["id"].tolist() == TEST_IDS  # "0a1" keeps its leading zero
    assert submission["predict"].tolist() == ["物流页面-物流列表页面", "支付页面", "账单/账户页面"]
    assert submission["predict"].isin(LABELS).all()


@pytest.mark.parametrize(
    ("ids", "labels", "message"),
    [
        (["c3", "0a1"], ["支付页面", "支付页面"], r"1 test id\(s\) without a prediction: 'b2'"),
        (["c3", "0a1", "b2", "b2"], ["支付页面"] * 4, r"1 id\(s\) predicted more than once: 'b2'"),
        (["c3", "0a1", "b2", "zz"], ["支付页面"] * 4, r"1 predicted id\(s\) are not test ids: 'zz'"),
        (["c3", "0a1", "b2"], ["支付页面", "物流页面", "支付页面"], r"not labels of the label set: '0a1': '物流页面'"),
    ],
    ids=["missing", "duplicated", "extra", "invalid-label"],
)
def test_bad_predictions_raise_naming_the_ids_and_write_nothing(tmp_path, ids, labels, message):
    path = tmp_path / "submit.csv"
    with pytest.raises(SubmissionError, match=message):
        write_submission(predictions(ids, labels), TEST_IDS, LABELS, path)
    assert not path.exists()


def test_every_problem_is_reported_at_once(tmp_path):
    rows = predictions(["c3", "zz"], ["支付页面", "其他"])
    with pytest.raises(SubmissionError) as error:
        write_submission(rows, TEST_IDS, LABELS, tmp_path / "submit.csv")
    message = str(error.value)
    assert "without a prediction: '0a1', 'b2'" in message
    assert "not test ids: 'zz'" in message and "'zz': '其他'" in message


def test_reading_a_file_with_other_columns_raises(tmp_path):
    path = tmp_path / "submit.csv"
    path.write_text("id,label\nc3,支付页面\n", encoding="utf-8-sig")
    with pytest.raises(SubmissionError, match=r"expected \['id', 'predict'\]"):
        read_submission(path)
