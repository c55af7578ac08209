import json

import pandas as pd
import pytest

from vlmflow.data.labels import Label, baseline_prompt
from vlmflow.prompting.prompts import (
    PromptTooLongError,
    answer_around_label,
    build_prompt,
    build_prompt_table,
    build_target,
    template_cot_reason,
    to_sharegpt,
    write_llamafactory_dataset,
)

from helpers.variants import make_variant

LABELS = [Label("退款页面", "含有退款信息的页面"), Label("支付页面", "包含支付方式选择、支付成功的页面")]


def records():
    return pd.DataFrame(
        {
            "id": ["a", "b"],
            "split": ["train", "test"],
            "image_path": ["/d/a.jpg", "/d/b.jpg"],
            "image_sha256": ["s1", "s2"],
            "label": ["退款页面", None],
        }
    )


def test_baseline_variant_is_the_recipe_prompt_and_the_label_is_the_target():
    variant = make_variant("baseline")
    assert build_prompt(variant, LABELS, "退款成功") == baseline_prompt(LABELS)
    assert build_target(variant, "退款页面", None) == "退款页面"


def test_switches_compose():
    variant = make_variant("all", label_descriptions=True, ocr=True, ocr_max_chars=6, reason=True)
    prompt = build_prompt(variant, LABELS, "退款  成功 金额 ¥12")
    assert '"退款页面":"含有退款信息的页面"' in prompt
    assert prompt.count("图片中的OCR文字:退款 成功 ") == 1 and "金额" not in prompt  # 6-character budget
    assert "依次给出理由、所属类别" in prompt


def test_reason_target_is_json_in_the_configured_order():
    first = json.loads(build_target(make_variant("r", reason=True), "支付页面", "有支付宝"))
    assert list(first) == ["理由", "所属类别"] and first["所属类别"] == "支付页面"
    last = build_target(make_variant("r", reason=True, reason_order="label_first"), "支付页面", "有支付宝")
    assert list(json.loads(last)) == ["所属类别", "理由"]


def test_answer_around_label_rebuilds_the_target_around_any_label():
    for variant in (make_variant("b"), make_variant("r", reason=True)):
        before, after = answer_around_label(variant, "有支付宝")
        assert before + "支付页面" + after == build_target(variant, "支付页面", "有支付宝")
    before, after = answer_around_label(make_variant("r", reason=True, reason_order="label_first"))
    assert (before, after) == ('{"所属类别": "', '"')


def test_prompt_table_uses_ocr_by_sha256_and_leaves_test_targets_empty():
    table = build_prompt_table(
        records(), {"s1": "退款成功", "s2": "支付宝"}, make_variant("with_ocr", ocr=True), LABELS
    )
    assert table["prompt"].str.endswith("图片中的OCR文字:退款成功").tolist() == [True, False]
    assert table["target"].tolist() == ["退款页面", None]
    assert (table["n_chars"] == table["prompt"].str.len()).all()


def test_template_reason_respects_the_length_limit():
    variant = make_variant("r", reason=True, reason_max_chars=10)
    table = build_prompt_table(records(), {"s1": "退款成功 金额"}, variant, LABELS)
    assert len(json.loads(table.loc[0, "target"])["理由"]) <= 10


def test_length_guard_warns_then_fails_naming_the_record(caplog):
    variant = make_variant("with_ocr", ocr=True, ocr_max_chars=5000)
    long_text = {"s1": "字" * 3000, "s2": "短"}
    build_prompt_table(records(), {"s1": "字" * 200}, variant, LABELS, warn_chars=200, max_chars=9000)
    assert "above 200 characters" in caplog.text and "a" in caplog.text
    too_long = r"variant with_ocr: 1 prompt\(s\) above prompt.max_chars = 2000: a \("
    with pytest.raises(PromptTooLongError, match=too_long):
        build_prompt_table(records(), long_text, variant, LABELS, max_chars=2000)


def test_sharegpt_export_carries_labelled_rows_and_the_system_prompt(tmp_path):
    variant = make_variant("sys", system_prompt="你是分类器")
    table = build_prompt_table(records(), {}, variant, LABELS)
    exported = to_sharegpt(table)
    assert len(exported) == 1 and exported[0]["system"] == "你是分类器"
    assert exported[0]["images"] == ["/d/a.jpg"] and exported[0]["messages"][1]["content"] == "退款页面"
    data_file = write_llamafactory_dataset(table, tmp_path, "train_fold0")
    info = json.loads((tmp_path / "dataset_info.json").read_text(encoding="utf-8"))
    assert info["train_fold0"]["file_name"] == data_file.name
    assert info["train_fold0"]["columns"]["system"] == "system"
    assert json.loads(data_file.read_text(encoding="utf-8")) == exported


def test_describe_then_classify_puts_the_description_between_the_task_and_the_label_list():
    variant = make_variant("d", describe=True, describe_max_chars=12)
    prompt = build_prompt(variant, LABELS, "", "顶部写着 退款详情,  下方是退款进度和金额")
    head, labels_part = baseline_prompt(LABELS).split("以下是可以参考的分类标签")
    assert prompt == f"{head}图片描述:顶部写着 退款详情, 下\n以下是可以参考的分类标签{labels_part}"


def test_teacher_text_is_used_by_image_and_label_and_the_template_fills_the_gaps(caplog):
    variant = make_variant("rd", reason=True, describe=True)
    table = build_prompt_table(
        records(),
        {"s1": "退款成功", "s2": "支付宝"},
        variant,
        LABELS,
        teacher_reasons={("s1", "退款页面"): "页面标题是退款详情"},
        teacher_descriptions={"s1": "一张退款详情页截图"},
    )
    assert json.loads(table.loc[0, "target"])["理由"] == "页面标题是退款详情"
    assert "图片描述:一张退款详情页截图\n" in table.loc[0, "prompt"]
    assert "图片描述:一张含有文字的图片,可见文字:支付宝\n" in table.loc[1, "prompt"]  # the test image: template
    assert "1 record(s) have no teacher description and use the template's" in caplog.text

    # A label the teacher gave no reason for (a corrected or pseudo label) gets the template's reason.
    relabelled = records().assign(label=["支付页面", None])
    table = build_prompt_table(
        relabelled, {"s1": "退款成功"}, variant, LABELS, teacher_reasons={("s1", "退款页面"): "x"}
    )
    assert json.loads(table.loc[0, "target"])["理由"].startswith("图中有“退款成功”,包含支付方式选择")
    assert "1 record(s) have no teacher reason" in caplog.text


def test_without_a_teacher_describe_variants_state_the_ocr_text():
    table = build_prompt_table(records(), {"s1": "退款 成功"}, make_variant("d", describe=True), LABELS)
    assert "图片描述:一张含有文字的图片,可见文字:退款 成功\n" in table.loc[0, "prompt"]
    assert "图片描述:一张几乎没有文字的图片\n" in table.loc[1, "prompt"]
    assert "OCR" not in table.loc[0, "prompt"]  # OCR text itself only with the ocr switch


def test_a_cot_variant_asks_for_a_step_by_step_analysis_before_the_label():
    variant = make_variant("cot", ocr=True, reason=True, cot=True, reason_max_chars=80)
    prompt = build_prompt(variant, LABELS, "退款成功")
    assert "理由是一步一步的分析:先写图中看到的内容,再写判断依据,最后写结论,不超过80字" in prompt
    assert prompt.count("请以JSON格式回答") == 1  # the analysis replaces the one-line reason's instruction
    table = build_prompt_table(records(), {"s1": "退款成功 金额"}, variant, LABELS)
    target = json.loads(table.loc[0, "target"])
    assert list(target) == ["理由", "所属类别"] and target["所属类别"] == "退款页面"
    # Without a teacher the template writes the three steps, from the OCR text to the label.
    assert target["理由"] == "第一步,图中可见文字“退款成功 金额”;第二步,含有退款信息的页面;第三步,因此属于退款页面。"
    assert len(template_cot_reason(LABELS[0], "退款成功 " * 30, 40)) == 40
    assert variant.generates_reason  # scoring writes the analysis, then scores the label after it


def test_a_cot_variant_trains_on_the_teachers_analysis():
    variant = make_variant("cot", reason=True, cot=True, reason_max_chars=80)
    analysis = "第一步,页面顶部写着退款详情;第二步,有退款金额和进度;第三步,属于退款页面。"
    table = build_prompt_table(records(), {}, variant, LABELS, teacher_reasons={("s1", "退款页面"): analysis})
    assert json.loads(table.loc[0, "target"])["理由"] == analysis


def test_cot_without_a_reason_first_is_refused_naming_the_variant():
    with pytest.raises(ValueError, match="variant c: cot needs reason: true and reason_order: reason_first"):
        make_variant("c", cot=True)
    with pytest.raises(ValueError, match="variant c: cot needs"):
        make_variant("c", cot=True, reason=True, reason_order="label_first")
