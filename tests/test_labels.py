import pytest

from vlmflow.data.labels import LabelFileError, baseline_prompt, described_prompt, label_names, load_labels

from conftest import REPO

# The recipe's baseline prompt, verbatim from docs/mire.md.
RECIPE_BASELINE = (
    "<image>\n你是一个电商领域识图专家,可以理解消费者上传的软件截图或实物拍摄图。现在,请你对消费者上传的图片进行分类。"
    '你只需要回答图片分类结果,不需要其他多余的话。以下是可以参考的分类标签,分类标签:["实物拍摄(含售后)","商品分类选项",'
    '"商品头图","商品详情页截图","下单过程中出现异常（显示购买失败浮窗）","订单详情页面","支付页面","消费者与客服聊天页面",'
    '"评论区截图页面","物流页面-物流列表页面","物流页面-物流跟踪页面","物流页面-物流异常页面","退款页面","退货页面","换货页面",'
    '"购物车页面","店铺页面","活动页面","优惠券领取页面","账单/账户页面","个人信息页面","投诉举报页面","平台介入页面",'
    '"外部APP截图","其他类别图片"]。'
)


def test_shipped_labels_give_the_recipe_baseline_prompt_verbatim():
    labels = load_labels(REPO / "config" / "labels.yaml")
    assert len(labels) == 25
    assert baseline_prompt(labels) == RECIPE_BASELINE


def test_described_prompt_carries_every_description_as_json():
    labels = load_labels(REPO / "config" / "labels.yaml")
    prompt = described_prompt(labels)
    assert '"商品分类选项":"商品颜色、规格选项"' in prompt
    assert '"个人信息页面":"个人信息页面"' in prompt  # no public description: the name stands in


def test_a_label_named_twice_is_refused(tmp_path):
    path = tmp_path / "labels.yaml"
    path.write_text("labels:\n  - name: a\n  - name: b\n  - name: a\n", encoding="utf-8")
    with pytest.raises(LabelFileError, match=r"names these labels twice: \['a'\]"):
        load_labels(path)


def test_label_order_is_kept(tmp_path):
    path = tmp_path / "labels.yaml"
    path.write_text("labels:\n  - name: z\n  - name: a\n", encoding="utf-8")
    assert label_names(load_labels(path)) == ["z", "a"]
