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
import yaml
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


VOCABULARY_FILE = Path(__file__).with_name("vocabulary.yaml")


def _vocabulary(path: Path = VOCABULARY_FILE) -> dict:
    """The demo's UI words (vocabulary.yaml beside this module), with each {POOL} of a page's fields filled in."""
    vocabulary = yaml.safe_load(path.read_text(encoding="utf-8"))
    pools = {**vocabulary["pools"], "BRANDS": " ".join(vocabulary["brand_colours"])}
    pages = {
        label: _page(**{key: value.format(**pools) if isinstance(value, str) else value for key, value in page.items()})
        for label, page in vocabulary["pages"].items()
    }
    return {**vocabulary, "pages": pages}


VOCABULARY = _vocabulary()
ITEMS = tuple(VOCABULARY["items"].split())
CHIPS = tuple(VOCABULARY["chips"].split())
CITIES = tuple(VOCABULARY["cities"].split())
USERS = tuple(VOCABULARY["users"].split())
BRAND_COLOURS: dict[str, Colour] = {brand: tuple(rgb) for brand, rgb in VOCABULARY["brand_colours"].items()}
ACCENTS: tuple[Colour, ...] = tuple(tuple(rgb) for rgb in VOCABULARY["accents"])
PAGES: dict[str, Page] = VOCABULARY["pages"]

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
    labels: list[Label],
    *,
    n_train: int = 500,
    n_test: int = 200,
    flip_fraction: float = 0.05,
    seed: int = 0,
    absent_from_train: tuple[str, ...] = (),
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

    def text(
        self,
        x: float,
        y: float,
        text: str,
        size: float,
        fill: Colour | None = None,
        anchor: str = "la",
        room: float | None = None,
    ) -> None:
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
            points = [(cx + r * np.sin(k * np.pi / 5), cy - r * np.cos(k * np.pi / 5)) for k, r in enumerate(radii)]
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


BODIES = {
    "rows": _rows,
    "cards": _cards,
    "timeline": _timeline,
    "chat": _chat,
    "reviews": _reviews,
    "coupons": _coupons,
    "chips": _chips,
}


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


def draw_screen(
    size: tuple[int, int], page: Page, rng: random.Random, noise: np.random.Generator, font_path: str
) -> Canvas:
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


def render_demo_image(label: str, record_seed: int, image_size: tuple[int, int], font_path: str | Path) -> Image.Image:
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
    out_dir: str | Path,
    labels: list[Label],
    *,
    n_train: int = 500,
    n_test: int = 200,
    flip_fraction: float = 0.05,
    seed: int = 0,
    image_size: tuple[int, int] = (360, 640),
    absent_from_train: tuple[str, ...] = (),
    font_path: str | Path | None = None,
) -> dict[str, int]:
    """Write train.json and test.json (MIRE JSON), images/ and truth.csv under ``out_dir``.

    Returns the counts: {"train": ..., "test": ..., "flipped": ...}.
    """
    font = find_cjk_font(font_path)
    records = plan_demo_records(
        labels,
        n_train=n_train,
        n_test=n_test,
        flip_fraction=flip_fraction,
        seed=seed,
        absent_from_train=tuple(absent_from_train),
    )
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    instruction = "Picture 1: " + baseline_prompt(labels)
    documents: dict[str, list[dict]] = {"train": [], "test": []}
    for number, record in enumerate(records, start=1):
        image_path = f"images/{record.id}-0.jpg"
        image = render_demo_image(record.label, record.seed, tuple(image_size), font)
        image.save(out_dir / image_path, "JPEG", quality=55 + record.seed % 41)  # quality 55-95 varies too
        documents[record.split].append(
            {
                "id": record.id,
                "instruction": instruction,
                "input": "",
                "output": record.given_label,
                "image": [image_path],
            }
        )
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
