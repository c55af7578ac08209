"""Reason diversity: the recipe saw reasons too alike make the score collapse."""

import json

import pandas as pd
import pytest

from vlmflow.prompting.diversity import reason_diversity, reasons_from_prompts


def test_diversity_flags_a_class_whose_reasons_are_near_copies(caplog):
    reasons = pd.DataFrame(
        {
            "label": ["退款页面"] * 4 + ["支付页面"] * 4 + ["购物车页面"],
            "reason": [
                "图中显示退款信息,属于退款页面",
                "图中显示退款信息,属于退款页面",
                "图中显示退款信息,属于退款页面。",
                "图中显示退款金额,属于退款页面",
                "顶部是支付宝收银台,下方选择银行卡",
                "付款成功的绿色对勾和金额¥12.50",
                "列出微信、花呗等多种付款方式",
                "订单已支付,显示交易号和完成按钮",
                "只有一条",
            ],
        }
    )
    report = reason_diversity(reasons, threshold=0.8)
    refund, pay = report["per_class"]["退款页面"], report["per_class"]["支付页面"]
    assert refund["over_threshold"] and refund["mean"] > 0.9 and refund["duplicate_share"] == 0.5
    assert not pay["over_threshold"] and pay["mean"] < 0.3 and pay["duplicate_share"] == 0.0
    assert "购物车页面" not in report["per_class"]  # one reason: no pairs
    assert report["over_threshold"] == ["退款页面"] and report["classes_over_threshold"] == 1
    assert report["mean_similarity"] == pytest.approx((refund["mean"] + pay["mean"]) / 2)
    assert "reasons of class 退款页面 are too alike" in caplog.text and "支付页面 are too alike" not in caplog.text
    json.dumps(report)  # the report is written as JSON


def test_diversity_reads_the_reasons_a_variant_trains_on():
    prompts = pd.DataFrame(
        {"target": ['{"理由": "有退款", "所属类别": "退款页面"}', None, '{"所属类别": "支付页面", "理由": "有付款"}']}
    )
    reasons = reasons_from_prompts(prompts)
    assert reasons.to_dict("records") == [
        {"label": "退款页面", "reason": "有退款"},
        {"label": "支付页面", "reason": "有付款"},
    ]
