"""A seeded synthetic stand-in for the MIRE image-scene data: rendered phone screenshots.

The real images cannot be shipped, so the demo draws portrait screenshots carrying the Chinese UI
text of each page type (plus photo-like and miscellaneous pictures), writes them in the MIRE JSON
format, flips a known share of train labels to a confusable class, and keeps the truth in
``truth.csv``, which the workflow reads only to evaluate.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import random
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from vlmflow.data.labels import Label, baseline_prompt, label_names
from vlmflow.runtime.fonts import find_cjk_font

log = logging.getLogger(__name__)
Colour = tuple[int, int, int]



@dataclass(frozen=True)
class Page:
    """How one class's screenshots look: which sections they have and which words fill them."""

    bodies: tuple[str, ...]  # one or two are drawn: rows cards timeline chat reviews coupons chips
    titles: tuple[str, ...] = ("搜索",)  # 搜索 draws a search box instead of a title
    words: tuple[str, ...] = ()
    headline: tuple[str, ...] = ()  # big status text in a card under the title bar
    buttons: tuple[str, ...] = ()
    footer: tuple[str, ...] = ()  # left text of a bottom bar, followed by an amount (cart totals)
    popup: tuple[str, ...] = ()  # title of a modal drawn over the dimmed page
    brands: tuple[str, ...] = ()  # other apps: the title is a brand drawn in the brand's colour
    picture: float = 0.0  # share of the height given to a product picture
    popup_messages: tuple[str, ...] = ("请稍后再试", "商品库存不足", "当前购买人数过多")  # a modal's message
    popup_buttons: tuple[str, ...] = ("确定", "我知道了", "返回购物车")  # ... and its button


def _page(bodies: str, titles: str = "搜索", words: str = "", picture: float = 0.0, **more: str) -> Page:
    """A Page from space-separated word lists, which keep the table below one line per field."""
    fields = {key: tuple(value.split()) for key, value in more.items()}
    return Page(tuple(bodies.split()), tuple(titles.split()), tuple(words.split()), picture=picture, **fields)


# Confusable classes draw from one shared pool, so no single word gives the class away.
AFTER_SALE = (
    "申请售后 退款金额 退货退款 仅退款 商家处理中 售后编号 协商历史 撤销申请 寄回地址 "
    "退款原因 商家已同意 服务单号 "
)
LOGISTICS = (
    "运单号 中通快递 圆通速递 顺丰速运 韵达快递 菜鸟驿站 运输中 已签收 派送中 已揽件 "
    "复制单号 预计明天送达 "
)
SHOP = "店铺 关注 首页 宝贝 上新 满减 优惠券 领取 限时 会员 粉丝 全部商品 "
PRODUCT = "月销1000+ 包邮 颜色分类 规格 加入购物车 立即购买 参数 品牌 宝贝详情 发货地 保障 "
ORDER = "订单编号 实付款 收货地址 下单时间 支付方式 商品总价 运费 支付宝 交易成功 创建时间 "
ACCOUNT = "余额 明细 收入 支出 红包 卡券 转账 提现 交易记录 全部账单 "
ITEMS = tuple(
    "纯棉短袖T恤 无线蓝牙耳机 大容量保温杯 夏季碎花连衣裙 儿童运动鞋 防摔手机壳 洗衣液2kg "
    "零食大礼包 护手霜套装 快充数据线 北欧风台灯 加厚羽绒服 不锈钢炒锅 瑜伽垫".split()
)
CHIPS = tuple("黑色 白色 红色 雾霾蓝 卡其色 S M L XL XXL 标准版 套餐一 36 38 40".split())
CITIES = tuple("杭州市 上海市 广州市 深圳市 北京市 成都市 武汉市 金华市".split())
USERS = tuple("t**5 小***猫 j**y 匿名买家 快乐星球 z**8 爱吃鱼的喵 淘气值888".split())
BRAND_COLOURS = {"京东": (225, 37, 27), "拼多多": (224, 46, 36), "短信": (246, 246, 246),
                 "设置": (242, 242, 247), "抖音商城": (22, 24, 35), "美团": (255, 209, 0),
                 "微信": (237, 237, 237)}
ACCENTS = ((255, 80, 0), (255, 68, 0), (255, 106, 0), (22, 119, 255), (230, 30, 60), (7, 193, 96))

PAGES: dict[str, Page] = {
    "实物拍摄(含售后)": _page("photo"),
    "商品分类选项": _page("chips", "搜索", PRODUCT + "已选 库存 数量 尺码", 0.18,
                    buttons="确定 加入购物车 立即购买"),
    "商品头图": _page("rows chips", "搜索 宝贝", PRODUCT, 0.55, buttons="加入购物车 立即购买"),
    "商品详情页截图": _page("rows reviews chips", "宝贝详情 商品详情 参数 搜索",
                     PRODUCT + "产品参数 材质 适用人群 尺码表 洗涤说明 上市时间", 0.3),
    "下单过程中出现异常（显示购买失败浮窗）": _page(
        "cards rows", "确认订单 提交订单", ORDER + "提交订单 配送方式 合计", footer="合计:",
        buttons="提交订单", popup="购买失败 下单失败 库存不足 系统繁忙，请稍后再试"),
    "订单详情页面": _page("cards rows", "订单详情", ORDER + "申请售后 查看物流 确认收货",
                    headline="交易成功 卖家已发货 等待买家收货 待发货",
                    buttons="查看物流 确认收货 再买一单"),
    "支付页面": _page("rows", "收银台 确认付款 支付成功 订单详情",
                  "支付宝 花呗 余额宝 银行卡 招商银行储蓄卡 花呗分期 付款方式 实付款 订单编号",
                  headline="支付成功 付款成功 待支付", buttons="确认付款 完成 立即付款"),
    "消费者与客服聊天页面": _page("chat", "官方旗舰店 客服小蜜 店小二 专属客服",
                        "您好 在的亲 请问有什么可以帮您 什么时候发货 亲，已经发货了哦 订单号 "
                        "好的谢谢 麻烦帮我看一下 尺码偏小吗 可以退换吗 稍等，正在为您查询"),
    "评论区截图页面": _page("reviews", "评价 宝贝评价 全部评价 问大家",
                     "好评 追评 有图 很好用 质量不错 物流很快 和描述一致 性价比高 颜色好看 已购"),
    "物流页面-物流列表页面": _page("cards", "我的快递 物流 包裹 查快递 订单详情",
                         LOGISTICS + "待取件 取件码 全部包裹 我收的 我寄的"),
    "物流页面-物流跟踪页面": _page("timeline", "物流详情 查看物流 包裹详情",
                         LOGISTICS + "已到达 转运中心 快递员 已发出 正在派件",
                         headline="运输中 派送中 已签收 已揽件"),
    "物流页面-物流异常页面": _page("timeline rows", "物流详情 物流异常 包裹详情",
                         LOGISTICS + "异常 滞留 退回 派送失败 地址不详 联系快递员 超时未更新",
                         headline="物流异常 包裹滞留 退回中 派送失败"),
    "退款页面": _page("rows cards", "退款详情 售后详情 退款", AFTER_SALE + "退款成功 原路退回 退款进度",
                  headline="退款成功 退款中 等待商家处理 退款关闭",
                  buttons="撤销申请 联系商家 修改申请"),
    "退货页面": _page("rows cards", "退货详情 售后详情 退货退款",
                  AFTER_SALE + "退货地址 寄件 上门取件 退货物流 请退货",
                  headline="请寄回商品 等待商家收货 退货中 商家已同意",
                  buttons="填写单号 联系商家 撤销申请"),
    "换货页面": _page("rows cards", "换货详情 售后详情 换货", AFTER_SALE + "换货 换货商品 重新发货",
                  headline="换货中 商家已发出换货 等待商家处理 商家已同意",
                  buttons="查看物流 联系商家 撤销申请"),
    "购物车页面": _page("cards", "购物车", "全选 管理 领券 满减 降价 x1 颜色分类 失效宝贝",
                   footer="合计: 合计", buttons="结算 结算(2) 去结算"),
    "店铺页面": _page("cards coupons", "搜索", SHOP + "店铺评分 宝贝描述 进店 客服", 0.2,
                  buttons="关注 已关注"),
    "活动页面": _page("cards coupons", "双十一 618 年货节 会场 限时秒杀",
                  SHOP + "活动 秒杀 倒计时 满300减50 跨店满减 爆款", 0.25),
    "优惠券领取页面": _page("coupons", "领券中心 优惠券 搜索", SHOP + "满100减20 无门槛 立即领取 有效期",
                     0.12),
    "账单/账户页面": _page("rows cards", "账单 我的账单 账户明细 我的资产", ACCOUNT + "淘宝购物 退款",
                      headline="本月支出 总资产"),
    "个人信息页面": _page("rows", "个人信息 账号设置 我的资料",
                    "头像 昵称 手机号 收货地址 实名认证 性别 生日 会员名 账号与安全"),
    "投诉举报页面": _page("rows", "投诉 举报 投诉商家 我的投诉",
                    "投诉原因 举报类型 上传凭证 问题描述 虚假发货 售假 服务态度差 投诉进度 已受理",
                    buttons="提交 提交投诉"),
    "平台介入页面": _page("rows timeline", "平台介入 小二介入 售后详情",
                    AFTER_SALE + "平台介入 淘宝小二 客服介入处理中 举证 上传凭证 判定结果",
                    headline="平台已介入 小二处理中 等待举证"),
    "外部APP截图": _page("rows cards chat", "搜索",
                     "无线局域网 蓝牙 通知 京东物流 百亿补贴 验证码 电池 通用 自营 已发货",
                     brands=" ".join(BRAND_COLOURS)),
    "其他类别图片": _page("misc"),
}

# Label noise lands inside these groups, as annotators' mistakes do; other labels flip anywhere.
CONFUSABLE_GROUPS = (
    ("退款页面", "退货页面", "换货页面"),
    ("物流页面-物流列表页面", "物流页面-物流跟踪页面", "物流页面-物流异常页面"),
    ("店铺页面", "活动页面", "优惠券领取页面"),
    ("商品头图", "商品详情页截图", "商品分类选项"),
    ("订单详情页面", "支付页面"),
)


@dataclass(frozen=True)
class DemoRecord:
    id: str
    split: str  # train or test
    label: str  # the true class
    given_label: str  # what the train file says (maybe flipped); "" for test
    flipped: bool
    seed: int  # seeds this record's picture


def demo_vocabulary() -> list[str]:
    """Every word the demo draws, one page per line: a tokenizer corpus that covers the OCR text."""
    lines = []
    for page in PAGES.values():
        words = [*page.titles, *page.words, *page.headline, *page.buttons, *page.footer, *page.popup, *page.brands]
        lines.append(" ".join(words))
    lines += [" ".join(ITEMS), " ".join(CHIPS), " ".join(CITIES), " ".join(USERS)]
    return lines


def confusable_labels(label: str, names: list[str]) -> list[str]:
    """The other members of the label's confusable group among ``names``; empty if none."""
    group = next((group for group in CONFUSABLE_GROUPS if label in group), ())
    return [name for name in group if name != label and name in names]


def _allocate(n: int, weights: dict[str, float], rng: random.Random) -> list[str]:
    """``n`` labels in proportion to ``weights``, every weighted class at least once when n allows."""
    names = [name for name, weight in weights.items() if weight > 0]
    if n and not names:
        raise ValueError("no class is left to generate records for")
    counts = dict.fromkeys(names, 1 if n >= len(names) else 0)
    spare, total = n - sum(counts.values()), sum(weights[name] for name in names)
    quotas = {name: spare * weights[name] / total for name in names}
    for name in names:
        counts[name] += int(quotas[name])
    by_remainder = sorted(names, key=lambda name: quotas[name] - int(quotas[name]), reverse=True)
    for name in by_remainder[: n - sum(counts.values())]:
        counts[name] += 1
    drawn = [name for name in names for _ in range(counts[name])]
    rng.shuffle(drawn)
    return drawn


def plan_demo_records(
    labels: list[Label], *, n_train: int = 500, n_test: int = 200, flip_fraction: float = 0.05,
    seed: int = 0, absent_from_train: tuple[str, ...] = (),
) -> list[DemoRecord]:
    """Which records exist, their true and given labels and flips: everything but the pixels."""
    names = label_names(labels)
    unknown = [name for name in names if name not in PAGES]
    if unknown:
        raise ValueError(f"the demo cannot draw these labels (it draws {sorted(PAGES)}): {unknown}")
    if stray := sorted(set(absent_from_train) - set(names)):
        raise ValueError(f"absent_from_train names unknown labels: {stray}")
    if n_train < 0 or n_test < 0 or not 0 <= flip_fraction <= 1:
        raise ValueError("n_train and n_test must be >= 0 and flip_fraction within [0, 1]")
    rng = random.Random(seed)
    # Seeded class weights imbalance the classes the way the real 15-to-39-per-class train set is.
    weights = {name: rng.uniform(15, 39) for name in names}
    learnable = [name for name in names if name not in absent_from_train]
    train_labels = _allocate(n_train, {name: weights[name] for name in learnable}, rng)
    test_labels = _allocate(n_test, weights, rng)
    flips = {}
    for index in sorted(rng.sample(range(n_train), round(flip_fraction * n_train))):
        label = train_labels[index]
        others = confusable_labels(label, learnable) or [name for name in learnable if name != label]
        if not others:
            raise ValueError(f"no other learnable label to flip {label!r} to")
        flips[index] = rng.choice(others)

    def record(split: str, index: int, label: str) -> DemoRecord:
        digest = hashlib.sha256(f"vlmflow-demo/{seed}/{split}/{index}".encode()).hexdigest()
        flipped = split == "train" and index in flips
        given = flips.get(index, label) if split == "train" else ""
        return DemoRecord(digest[:30], split, label, given, flipped, int(digest[30:46], 16))

    return [record("train", index, label) for index, label in enumerate(train_labels)] + [
        record("test", index, label) for index, label in enumerate(test_labels)
    ]


# ------------------------------------------------------------------------------------------------ drawing


@lru_cache(maxsize=64)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
    # Chinese needs no shaping, and the basic layout engine draws text about twice as fast as raqm.
    return ImageFont.truetype(path, max(6, size), layout_engine=ImageFont.Layout.BASIC)


def _colour(rng: random.Random, low: int = 0, high: int = 255) -> Colour:
    return (rng.randint(low, high), rng.randint(low, high), rng.randint(low, high))


class Canvas:
    """A screen drawn top to bottom: ``y`` is the next free row, ``limit`` the last usable one."""

    def __init__(self, size: tuple[int, int], font_path: str, rng: random.Random, page: Page):
        self.rng, self.page, self.font_path = rng, page, font_path
        self.width, self.height = size
        self.unit = self.width / 360 * rng.uniform(0.85, 1.2)  # font size and spacing vary together
        dark = rng.random() < 0.1
        self.bg = (18, 18, 18) if dark else rng.choice([(245, 245, 245), (242, 243, 247), (255, 255, 255)])
        self.card = (30, 30, 30) if dark else (255, 255, 255)
        self.fg, self.muted = ((235, 235, 235), (150, 150, 150)) if dark else ((34, 34, 34), (140, 140, 140))
        self.accent = rng.choice(ACCENTS)
        self.margin = int(rng.uniform(8, 16) * self.width / 360)
        self.image = Image.new("RGB", size, self.bg)
        self.draw = ImageDraw.Draw(self.image)
        self.y, self.limit = 0, self.height
        # What was drawn, for questions about the screen (vlmflow.demo.pretrain_corpus): the title, the
        # header's colour, the items of each body, whether a bottom bar or a dialog is there.
        self.dark = dark
        self.drawn: dict = {"items": {}, "bottom_bar": False, "dialog": False}

    def count(self, body: str) -> None:
        """One more item (row, card, event, message, review, coupon, chip group) of ``body`` drawn."""
        self.drawn["items"][body] = self.drawn["items"].get(body, 0) + 1

    def px(self, value: float) -> int:
        return max(1, int(value * self.unit))

    def text(self, x: float, y: float, text: str, size: float, fill: Colour | None = None, anchor: str = "la",
             room: float | None = None) -> None:
        font = _font(self.font_path, self.px(size))
        room = room or {"l": self.width - x - self.margin, "r": x - self.margin}.get(anchor[0], self.width)
        while text and self.draw.textlength(text, font=font) > max(room, 0):
            text = text[:-1]  # cut what would run off, as a real screenshot crops it
        self.draw.text((x, y), text, font=font, fill=fill or self.fg, anchor=anchor)

    def words(self, k: int) -> str:
        return " ".join(self.rng.sample(self.page.words, min(k, len(self.page.words))))

    def price(self) -> str:
        return f"¥{self.rng.uniform(5, 999):.2f}"

    def when(self) -> str:
        month, day, hour, minute = (self.rng.randint(0, top) for top in (11, 27, 23, 59))
        return f"{month + 1:02d}-{day + 1:02d} {hour:02d}:{minute:02d}"

    def value(self) -> str:
        """The right-hand side of a row: an amount, a time, a number, a product or a word."""
        rng = self.rng
        choices = [self.price(), "2024-" + self.when(), str(rng.randint(10**11, 10**13)), rng.choice(ITEMS)]
        return rng.choice([*choices, f"x{rng.randint(1, 3)}", rng.choice(self.page.words or ITEMS)])


def _grain(image: Image.Image, noise: np.random.Generator, sigma: float) -> Image.Image:
    """Add grey, roughly Gaussian pixel noise of spread ``sigma``, like a camera sensor's."""
    # Two uniform integer draws sum to a triangle, Gaussian enough and twice as fast as normal().
    spread, shape = max(1, round(sigma * 1.22)), (image.height, image.width, 1)
    grain = sum(noise.integers(-spread, spread + 1, shape, np.int16) for _ in range(2))
    return Image.fromarray(np.clip(np.asarray(image, np.int16) + grain, 0, 255).astype(np.uint8))


def _shapes(draw: ImageDraw.ImageDraw, rng: random.Random, size: tuple[int, int], count: int) -> None:
    width, height = size
    for _ in range(count):
        x0, y0 = rng.uniform(-0.2, 0.9) * width, rng.uniform(-0.2, 0.9) * height
        box = (x0, y0, x0 + rng.uniform(0.1, 0.7) * width, y0 + rng.uniform(0.05, 0.5) * height)
        getattr(draw, rng.choice(["ellipse", "rectangle", "rounded_rectangle"]))(box, fill=_colour(rng))


def _photo(size: tuple[int, int], rng: random.Random, noise: np.random.Generator) -> Image.Image:
    """A camera-like picture: a lit gradient, a few blurred objects, sensor noise."""
    width, height = size
    top, bottom = np.array(_colour(rng, 40, 235), float), np.array(_colour(rng, 40, 235), float)
    ramp = np.linspace(0, 1, height)[:, None, None]
    gradient = np.broadcast_to(top * (1 - ramp) + bottom * ramp, (height, width, 3))
    image = Image.fromarray(gradient.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    _shapes(draw, rng, size, rng.randint(2, 6))
    if rng.random() < 0.4:  # a crack or tear, as in after-sales damage photos
        points = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(rng.randint(3, 6))]
        draw.line(points, fill=(20, 20, 20), width=max(1, width // 120))
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 3) * width / 360))
    return _grain(image, noise, rng.uniform(4, 14))


def _misc(size: tuple[int, int], rng: random.Random, font_path: str) -> Image.Image:
    """Miscellany: flat colour, sharp random shapes and a few words from any page."""
    image = Image.new("RGB", size, _colour(rng))
    draw = ImageDraw.Draw(image)
    _shapes(draw, rng, size, rng.randint(3, 12))
    pool = [word for page in PAGES.values() for word in page.words]
    for _ in range(rng.randint(0, 4)):
        font = _font(font_path, int(rng.uniform(12, 40) * size[0] / 360))
        xy = (rng.uniform(0, size[0] * 0.7), rng.uniform(0, size[1] * 0.9))
        draw.text(xy, rng.choice(pool), font=font, fill=_colour(rng))
    return image


def _header(c: Canvas) -> None:
    """Status bar and title bar; other apps get their brand's name and colour."""
    rng = c.rng
    brand = rng.choice(c.page.brands) if c.page.brands else ""
    colour = BRAND_COLOURS.get(brand) or (c.accent if rng.random() < 0.3 else c.card)
    ink = (255, 255, 255) if sum(colour) < 450 else (34, 34, 34)
    c.draw.rectangle((0, 0, c.width, c.px(66)), fill=colour)
    c.drawn["header_colour"] = colour
    c.text(c.margin, c.px(4), f"{rng.randint(0, 23)}:{rng.randint(0, 59):02d}", 12, ink)
    c.draw.rectangle((c.width - c.margin - c.px(22), c.px(7), c.width - c.margin, c.px(16)), outline=ink)
    c.text(c.margin, c.px(32), "<", 20, ink)
    title = brand or rng.choice(c.page.titles)
    c.drawn["title"] = title
    if title == "搜索":  # shop and product pages carry a search box instead of a title
        c.draw.rounded_rectangle((c.px(36), c.px(30), c.width - c.px(40), c.px(58)), c.px(14), fill=c.bg)
        c.text(c.px(48), c.px(36), "搜索 " + rng.choice(ITEMS), 13, c.muted)
    else:
        c.text(c.width / 2, c.px(44), title, 17, ink, anchor="mm")
    c.text(c.width - c.margin, c.px(34), "···", 16, ink, anchor="ra")
    c.y = c.px(72)


def _rows(c: Canvas) -> None:
    step = c.px(c.rng.uniform(34, 46))
    while c.y + step <= c.limit:
        c.draw.rectangle((0, c.y, c.width, c.y + step - 1), fill=c.card)
        c.text(c.margin, c.y + step / 2, c.rng.choice(c.page.words), 14, anchor="lm", room=c.width / 2)
        c.text(c.width - c.margin, c.y + step / 2, c.value(), 13, c.muted, anchor="rm", room=c.width / 2.5)
        c.y += step
        c.count("rows")


def _cards(c: Canvas) -> None:
    rng, raw_step = c.rng, c.rng.uniform(84, 110)
    step = c.px(raw_step)
    while c.y + step <= c.limit:
        x = c.margin
        c.draw.rounded_rectangle((x, c.y + c.px(4), c.width - x, c.y + step - c.px(4)), c.px(8), fill=c.card)
        if c.page.footer:  # selection circles on checkout-like pages
            middle = c.y + step / 2
            circle = (x + c.px(6), middle - c.px(8), x + c.px(22), middle + c.px(8))
            c.draw.ellipse(circle, outline=c.accent, width=2)
            x += c.px(26)
        side = step - c.px(24)
        thumb = (x + c.px(8), c.y + c.px(12), x + c.px(8) + side, c.y + c.px(12) + side)
        c.draw.rectangle(thumb, fill=_colour(rng, 120, 230))
        left = x + side + c.px(18)
        c.text(left, c.y + c.px(14), rng.choice(ITEMS) if rng.random() < 0.6 else c.words(2), 14)
        c.text(left, c.y + c.px(14 + raw_step / 4), c.words(2), 12, c.muted)
        c.text(left, c.y + step - c.px(30), c.price() if rng.random() < 0.6 else c.value(), 14, c.accent)
        c.y += step
        c.count("cards")


def _timeline(c: Canvas) -> None:
    rng, step, x = c.rng, c.px(c.rng.uniform(52, 66)), c.margin + c.px(10)
    first = True
    while c.y + step <= c.limit:
        c.draw.line((x, c.y + c.px(10), x, c.y + step), fill=c.muted, width=max(1, c.px(1.5)))
        dot = (x - c.px(5), c.y + c.px(4), x + c.px(5), c.y + c.px(14))
        c.draw.ellipse(dot, fill=c.accent if first else c.muted)
        event = f"【{rng.choice(CITIES)}】" + "，".join(rng.sample(c.page.words, 2))
        c.text(x + c.px(16), c.y + c.px(1), event, 13, c.fg if first else c.muted)
        c.text(x + c.px(16), c.y + c.px(22), c.value() if rng.random() < 0.2 else c.when(), 11, c.muted)
        c.y, first = c.y + step, False
        c.count("timeline")


def _chat(c: Canvas) -> None:
    avatar, font = c.px(34), _font(c.font_path, c.px(14))
    while c.y + c.px(56) <= c.limit:
        mine, text = c.rng.random() < 0.5, c.words(c.rng.randint(1, 3))
        bubble = min(c.draw.textlength(text, font=font) + c.px(20), c.width * 0.7)
        x0 = c.width - c.margin - avatar - c.px(8) - bubble if mine else c.margin + avatar + c.px(8)
        left = c.width - c.margin - avatar if mine else c.margin
        c.draw.ellipse((left, c.y, left + avatar, c.y + avatar), fill=_colour(c.rng, 90, 220))
        fill = c.rng.choice([(149, 236, 105), (255, 226, 204), (206, 228, 255)]) if mine else c.card
        c.draw.rounded_rectangle((x0, c.y, x0 + bubble, c.y + c.px(36)), c.px(8), fill=fill)
        ink = (34, 34, 34) if mine else c.fg
        c.text(x0 + c.px(10), c.y + c.px(18), text, 14, ink, anchor="lm", room=bubble - c.px(20))
        c.y += c.px(c.rng.uniform(48, 64))
        c.count("chat")


def _reviews(c: Canvas) -> None:
    step = c.px(c.rng.uniform(90, 120))
    while c.y + step <= c.limit:
        c.draw.rectangle((0, c.y, c.width, c.y + step - 2), fill=c.card)
        c.draw.ellipse((c.margin, c.y + c.px(8), c.margin + c.px(28), c.y + c.px(36)), fill=(200, 200, 210))
        c.text(c.margin + c.px(36), c.y + c.px(10), c.rng.choice(USERS), 13)
        score = c.rng.randint(3, 5)
        for star in range(5):  # filled stars are the score, grey ones the rest
            cx, cy = c.margin + c.px(44 + 14 * star), c.y + c.px(34)
            radii = [c.px(6) * (1 if k % 2 == 0 else 0.45) for k in range(10)]
            points = [(cx + r * np.sin(k * np.pi / 5), cy - r * np.cos(k * np.pi / 5))
                      for k, r in enumerate(radii)]
            c.draw.polygon(points, fill=c.accent if star < score else c.muted)
        c.text(c.margin, c.y + c.px(50), c.words(3), 13)
        c.text(c.margin, c.y + c.px(72), c.words(2), 13, c.muted)
        c.y += step
        c.count("reviews")


def _coupons(c: Canvas) -> None:
    rng, step = c.rng, c.px(c.rng.uniform(70, 86))
    while c.y + step <= c.limit:
        top, bottom, split = c.y + c.px(6), c.y + step - c.px(6), c.margin + c.px(100)
        middle = (top + bottom) / 2
        right = c.width - c.margin
        c.draw.rounded_rectangle((c.margin, top, right, bottom), c.px(6), fill=c.card, outline=c.accent)
        c.draw.rectangle((c.margin, top, split, bottom), fill=c.accent)
        amount, threshold = rng.choice([5, 10, 20, 30, 50]), rng.choice([49, 99, 100, 199, 300])
        c.text((c.margin + split) / 2, middle, f"¥{amount}", 22, (255, 255, 255), "mm")
        c.text(split + c.px(10), top + c.px(10), f"满{threshold}可用 " + c.words(1), 13)
        c.text(split + c.px(10), bottom - c.px(24), c.words(1), 11, c.muted)
        c.text(right - c.px(10), middle, rng.choice(["领取", "立即领取", "去使用"]), 13, c.accent, "rm")
        c.y += step
        c.count("coupons")


def _chips(c: Canvas) -> None:
    height, gap, font = c.px(30), c.px(10), _font(c.font_path, c.px(13))
    while c.y + c.px(40) + height <= c.limit:
        c.text(c.margin, c.y + c.px(6), c.rng.choice(c.page.words), 14)
        x, c.y = c.margin, c.y + c.px(32)
        c.count("chips")
        for chip in c.rng.sample(CHIPS, c.rng.randint(3, 8)):
            chip_width = c.draw.textlength(chip, font=font) + c.px(24)
            if x + chip_width > c.width - c.margin:  # wrap onto the next line of chips
                x, c.y = c.margin, c.y + height + gap
                if c.y + height > c.limit:
                    return
            chosen = c.rng.random() < 0.15
            box = (x, c.y, x + chip_width, c.y + height)
            c.draw.rounded_rectangle(box, c.px(6), fill=c.bg, outline=c.accent if chosen else c.bg)
            c.text(x + chip_width / 2, c.y + height / 2, chip, 13, c.accent if chosen else c.fg, anchor="mm")
            x += chip_width + gap
        c.y += height + gap * 2


BODIES = {"rows": _rows, "cards": _cards, "timeline": _timeline, "chat": _chat, "reviews": _reviews,
          "coupons": _coupons, "chips": _chips}


def _popup(c: Canvas) -> None:
    """Dim the page and draw a modal over it, as apps do when an order fails."""
    rng = c.rng
    shade = Image.new("RGBA", c.image.size, (0, 0, 0, rng.randint(90, 160)))
    c.image = Image.alpha_composite(c.image.convert("RGBA"), shade).convert("RGB")
    c.draw = ImageDraw.Draw(c.image)
    top, bottom = c.height * rng.uniform(0.3, 0.4), c.height * rng.uniform(0.55, 0.65)
    c.draw.rounded_rectangle((c.width * 0.12, top, c.width * 0.88, bottom), c.px(12), fill=(255, 255, 255))
    c.text(c.width / 2, top + c.px(30), rng.choice(c.page.popup), 18, (34, 34, 34), "mm")
    message = rng.choice(c.page.popup_messages)
    c.text(c.width / 2, (top + bottom) / 2, message, 13, (120, 120, 120), "mm")
    c.text(c.width / 2, bottom - c.px(24), rng.choice(c.page.popup_buttons), 15, c.accent, "mm")
    c.drawn["dialog"] = True


def draw_screen(size: tuple[int, int], page: Page, rng: random.Random, noise: np.random.Generator,
                font_path: str) -> Canvas:
    """A screenshot of ``page``: header, picture, headline, one or two bodies, bottom bar, dialog.

    The canvas returned holds the image and what was drawn on it (``Canvas.drawn``).
    """
    c = Canvas(size, font_path, rng, page)
    _header(c)
    if page.picture:
        side = max(1, int(c.height * page.picture * rng.uniform(0.8, 1.2)))
        c.image.paste(_photo((c.width, side), rng, noise), (0, c.y))
        c.y += side + c.px(6)
        c.text(c.margin, c.y, c.price(), 20, c.accent)
        c.text(c.margin, c.y + c.px(30), rng.choice(ITEMS) + " " + c.words(2), 15)
        c.y += c.px(58)
    if page.headline:
        c.draw.rectangle((0, c.y, c.width, c.y + c.px(70)), fill=c.card)
        c.text(c.margin, c.y + c.px(10), rng.choice(page.headline), 20, c.accent)
        c.text(c.margin, c.y + c.px(42), c.words(1) + " " + c.value(), 12, c.muted)
        c.y += c.px(78)
    bar = c.px(54) if (page.footer or page.buttons) and rng.random() < 0.85 else 0
    c.limit = c.height - bar
    bodies = rng.sample(page.bodies, min(len(page.bodies), rng.randint(1, 2)))
    for number, body in enumerate(bodies):
        end = c.limit
        if number < len(bodies) - 1:  # the first of two bodies leaves room for the second
            c.limit = int(c.y + (end - c.y) * rng.uniform(0.35, 0.65))
        BODIES[body](c)
        c.y, c.limit = c.y + c.px(8), end
    if bar:  # bottom bar: a total on checkout pages, and an action button
        c.drawn["bottom_bar"] = True
        top, right = c.height - bar, c.width - c.margin
        c.draw.rectangle((0, top, c.width, c.height), fill=c.card)
        if page.footer:
            c.text(c.margin, top + bar / 2, f"{rng.choice(page.footer)} {c.price()}", 15, anchor="lm")
        left = right - c.px(110)
        c.draw.rounded_rectangle((left, top + c.px(8), right, c.height - c.px(8)), c.px(20), fill=c.accent)
        button = rng.choice(page.buttons or ("确定",))
        c.text((left + right) / 2, top + bar / 2, button, 15, (255, 255, 255), "mm")
    if page.popup:
        _popup(c)
    return c


def render_demo_image(
    label: str, record_seed: int, image_size: tuple[int, int], font_path: str | Path
) -> Image.Image:
    """One picture of class ``label``; the same seed always gives the same pixels."""
    rng, noise = random.Random(record_seed), np.random.default_rng(record_seed)
    page = PAGES[label]
    if page.bodies == ("photo",):
        image = _photo(image_size, rng, noise)
    elif page.bodies == ("misc",):
        image = _misc(image_size, rng, str(font_path))
    else:
        image = draw_screen(image_size, page, rng, noise, str(font_path)).image
    return worn(image, rng, noise)


def worn(image: Image.Image, rng: random.Random, noise: np.random.Generator) -> Image.Image:
    """What the way from phone to dataset does to a picture: some lose sharpness, all gain a little noise."""
    if rng.random() < 0.3:  # screenshots resized on the way lose sharpness; do that to some
        factor = rng.uniform(0.5, 0.9)
        small = (max(1, int(image.width * factor)), max(1, int(image.height * factor)))
        image = image.resize(small, Image.BILINEAR).resize(image.size, Image.BILINEAR)
    return _grain(image, noise, rng.uniform(0, 5))


def generate_demo_dataset(
    out_dir: str | Path, labels: list[Label], *, n_train: int = 500, n_test: int = 200,
    flip_fraction: float = 0.05, seed: int = 0, image_size: tuple[int, int] = (360, 640),
    absent_from_train: tuple[str, ...] = (), font_path: str | Path | None = None,
) -> dict[str, int]:
    """Write train.json and test.json (MIRE JSON), images/ and truth.csv under ``out_dir``.

    Returns the counts: {"train": ..., "test": ..., "flipped": ...}.
    """
    font = find_cjk_font(font_path)
    records = plan_demo_records(labels, n_train=n_train, n_test=n_test, flip_fraction=flip_fraction,
                                seed=seed, absent_from_train=tuple(absent_from_train))
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    instruction = "Picture 1: " + baseline_prompt(labels)
    documents: dict[str, list[dict]] = {"train": [], "test": []}
    for number, record in enumerate(records, start=1):
        image_path = f"images/{record.id}-0.jpg"
        image = render_demo_image(record.label, record.seed, tuple(image_size), font)
        image.save(out_dir / image_path, "JPEG", quality=55 + record.seed % 41)  # quality 55-95 varies too
        documents[record.split].append({"id": record.id, "instruction": instruction, "input": "",
                                        "output": record.given_label, "image": [image_path]})
        if number % 100 == 0 or number == len(records):
            log.info("rendered %d of %d demo images", number, len(records))
    for split, document in documents.items():
        text = json.dumps(document, ensure_ascii=False, indent=1)
        (out_dir / f"{split}.json").write_text(text + "\n", encoding="utf-8")
    with open(out_dir / "truth.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["id", "split", "label", "given_label", "flipped"])
        writer.writerows([r.id, r.split, r.label, r.given_label, r.flipped] for r in records)
    counts = {split: len(document) for split, document in documents.items()}
    counts["flipped"] = sum(record.flipped for record in records)
    log.info("demo dataset in %s: %s", out_dir, counts)
    return counts
