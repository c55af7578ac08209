"""A demo base that has learned to see: the random-weight tiny model trained on generic screen reading.

Fine-tunes of a random-weight model share no pretrained basin: a no-OCR variant has only pixels it was
never taught to read, and weight-averaged fold models land between unrelated minima. Real bases arrive
pretrained; this module gives the demo's tiny one a small, bounded taste of that. It draws generic
phone screens with the demo dataset's own machinery (``vlmflow.demo.dataset.draw_screen``) and asks
about what any screen has: its title, the colour of its header bar, how its list is laid out and how
many items it has, whether a dialog, a bottom button, a picture or dark mode is there. The screens use
their own titles and words (``GENERIC_*``), never a task label or the words of a task page, and their
own seed namespace, so the corpus teaches reading screens, never the task's answers.

The training is one ``llamafactory-cli train`` run (``vlmflow.model.train.train_model``), full
fine-tuning with the vision tower unfrozen, bounded by ``max_steps`` (config demo.pretrain).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from vlmflow.demo.dataset import BODIES, Page, draw_screen, worn
from vlmflow.runtime.fonts import find_cjk_font

log = logging.getLogger(__name__)

# The generic screens' own text: settings- and tool-like apps, none a word of a task page (a test checks).
GENERIC_TITLES = tuple(
    "主页 消息 发现 相册 日历 天气 音乐 地图 视频 文件 备忘录 时钟 相机 新闻 读书 笔记 健康 联系人".split()
)
GENERIC_WORDS = tuple(
    "音量 亮度 字体大小 存储空间 语言 版本号 自动更新 夜间模式 定位服务 屏幕时间 备份 壁纸 铃声 震动 "
    "勿扰模式 键盘 日期与时间 辅助功能 隐私 下载 桌面 锁屏 声音 显示 网络 热点 同步 清理".split()
)
GENERIC_BUTTONS = tuple("确认 下一步 保存 继续 开始 好的".split())
DIALOG_TITLES = tuple("提示 温馨提示 确认删除 是否继续 更新提醒 权限请求".split())
DIALOG_MESSAGES = ("确定要继续吗", "发现新版本", "需要访问相册", "更改将被保存")
DIALOG_BUTTONS = ("好的", "取消", "允许", "稍后")

# Header colours by name: the demo's accents and a plain (white, or dark in dark mode) bar.
HEADER_COLOURS = {
    "白色": (255, 255, 255),
    "黑色": (30, 30, 30),
    "橙色": (255, 80, 0),
    "蓝色": (22, 119, 255),
    "红色": (230, 30, 60),
    "绿色": (7, 193, 96),
}
# How each body of the demo dataset lays out its list.
LAYOUTS = {
    "rows": "行列表",
    "cards": "卡片",
    "timeline": "时间线",
    "chat": "聊天气泡",
    "reviews": "星级条目",
    "coupons": "票券",
    "chips": "选项块",
}
YES, NO = "是", "否"
# Question, and the key its answer line starts with.
QUESTIONS = {
    "title": ("标题是什么?", "标题"),
    "header_colour": ("顶栏是什么颜色?", "顶栏"),
    "layout": ("列表是什么样式?", "样式"),
    "items": ("列表有几项?", "项数"),
    "dialog": ("有弹窗吗?", "弹窗"),
    "bottom_bar": ("底部有按钮吗?", "按钮"),
    "picture": ("有大图吗?", "大图"),
    "dark": ("是深色模式吗?", "深色"),
}


def colour_name(colour: tuple[int, int, int]) -> str:
    """The name in ``HEADER_COLOURS`` nearest to an RGB colour."""

    def distance(name: str) -> int:
        return sum((a - b) ** 2 for a, b in zip(HEADER_COLOURS[name], colour, strict=True))

    return min(HEADER_COLOURS, key=distance)


@dataclass(frozen=True)
class ScreenFacts:
    """What one generic screen shows: the answers to ``QUESTIONS``."""

    title: str
    header_colour: str
    layout: str
    items: int
    dialog: bool
    bottom_bar: bool
    picture: bool
    dark: bool

    def answer(self, key: str) -> str:
        value = getattr(self, key)
        return (YES if value else NO) if isinstance(value, bool) else str(value)


def generic_page(rng: random.Random) -> Page:
    """A screen of no task class: one body of any layout, generic words, maybe a picture, buttons, a dialog."""
    dialog = rng.random() < 0.3
    return Page(
        bodies=(rng.choice(sorted(BODIES)),),
        titles=(rng.choice(GENERIC_TITLES),),
        words=GENERIC_WORDS,
        buttons=GENERIC_BUTTONS if rng.random() < 0.5 else (),
        popup=DIALOG_TITLES if dialog else (),
        popup_messages=DIALOG_MESSAGES,
        popup_buttons=DIALOG_BUTTONS,
        picture=rng.choice((0.0, 0.0, 0.2, 0.35)),
    )


def render_generic_screen(
    record_seed: int, image_size: tuple[int, int], font_path: str | Path
) -> tuple[np.ndarray, ScreenFacts]:
    """One generic screen and what it shows; the same seed always gives the same pixels and facts."""
    rng, noise = random.Random(record_seed), np.random.default_rng(record_seed)
    page = generic_page(rng)
    canvas = draw_screen(tuple(image_size), page, rng, noise, str(font_path))
    (layout,) = page.bodies
    drawn = canvas.drawn
    facts = ScreenFacts(
        title=drawn["title"],
        header_colour=colour_name(drawn["header_colour"]),
        layout=LAYOUTS[layout],
        items=drawn["items"].get(layout, 0),
        dialog=drawn["dialog"],
        bottom_bar=drawn["bottom_bar"],
        picture=page.picture > 0,
        dark=canvas.dark,
    )
    return worn(canvas.image, rng, noise), facts


# Every screen is asked every question in this order. A shuffled order was tried first: within the
# demo's budget the tiny model learnt only the answers' marginal tokens ("样式:否" on every line), never
# which line answers which question, so a fixed order leaves it the image to learn (docs/benchmarks.md).
PROMPT = "<image>\n请回答关于这张截图的问题,每行一个答案。\n" + "\n".join(
    question for question, _ in QUESTIONS.values()
)


def answer_lines(facts: ScreenFacts) -> list[str]:
    """The answers to ``PROMPT``, one ``key:answer`` line per question, in the order asked."""
    return [f"{answer_key}:{facts.answer(key)}" for key, (_, answer_key) in QUESTIONS.items()]


def generate_pretrain_corpus(
    out_dir: str | Path,
    *,
    n_images: int,
    seed: int,
    image_size: tuple[int, int],
    font_path: str | Path | None = None,
) -> pd.DataFrame:
    """Draw ``n_images`` generic screens into ``out_dir/images`` and write ``out_dir/corpus.json``: one
    record per screen (id, image, prompt, answer, facts). Returns the records as a table."""
    if n_images < 1:
        raise ValueError(f"n_images must be at least 1, got {n_images}")
    font = find_cjk_font(font_path)
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n_images):
        # Its own namespace: no screen shares a seed with a task image (vlmflow-demo/...).
        digest = hashlib.sha256(f"vlmflow-pretrain/{seed}/{index}".encode()).hexdigest()
        record_seed = int(digest[30:46], 16)
        image, facts = render_generic_screen(record_seed, image_size, font)
        image_path = f"images/{digest[:30]}.jpg"
        image.save(out_dir / image_path, "JPEG", quality=55 + record_seed % 41)
        answer = "\n".join(answer_lines(facts))
        records.append(
            {"id": digest[:30], "image": image_path, "prompt": PROMPT, "answer": answer, "facts": facts.__dict__}
        )
    text = json.dumps(records, ensure_ascii=False, indent=1)
    (out_dir / "corpus.json").write_text(text + "\n", encoding="utf-8")
    log.info("pretraining corpus: %d generic screens in %s", len(records), out_dir)
    return pd.DataFrame(records)


def corpus_prompts(corpus_file: str | Path) -> pd.DataFrame:
    """The corpus as the prompt table ``vlmflow.model.train.train_model`` trains on (absolute image paths)."""
    corpus_file = Path(corpus_file).resolve()
    records = json.loads(corpus_file.read_text(encoding="utf-8"))
    return pd.DataFrame(
        {
            "id": [record["id"] for record in records],
            "image_path": [str(corpus_file.parent / record["image"]) for record in records],
            "system": "",
            "prompt": [record["prompt"] for record in records],
            "target": [record["answer"] for record in records],
        }
    )


def pretraining_hyperparameters(training: dict, budget: dict) -> dict:
    """The fold fine-tunes' hyper-parameters (train.hyperparameters: CPU, precision, vision tower unfrozen)
    with the pretraining's own budget: ``budget["max_steps"]`` steps of ``batch_size`` screens at
    ``learning_rate``, no model selection and no checkpoints (the run is minutes long)."""
    if budget["max_steps"] < 1:
        raise ValueError(f"demo.pretrain.max_steps must be at least 1, got {budget['max_steps']}")
    dropped = {"val_size", "eval_steps", "save_steps", "save_total_limit", "metric_for_best_model"}
    settings = {key: value for key, value in training.items() if key not in dropped}
    return settings | {
        "max_steps": budget["max_steps"],
        "num_train_epochs": 1.0,  # max_steps wins; epochs repeat the corpus as needed
        "per_device_train_batch_size": budget["batch_size"],
        "gradient_accumulation_steps": 1,
        "learning_rate": budget["learning_rate"],
        "eval_strategy": "no",
        "save_strategy": "no",
        "load_best_model_at_end": False,
        "freeze_vision_tower": False,
        "freeze_multi_modal_projector": False,
    }


def training_losses(model_dir: str | Path) -> list[float]:
    """The training loss at each logged step (LLaMA-Factory's trainer_log.jsonl in the model folder)."""
    path = Path(model_dir) / "trainer_log.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    return [entry["loss"] for entry in map(json.loads, lines) if "loss" in entry]


def pretrain_tiny_model(
    *,
    corpus_file: str | Path,
    tiny_model: str | Path,
    out_dir: str | Path,
    workdir: str | Path,
    template: str,
    training: dict,
    budget: dict,
    seed: int,
    threads: int,
    log_path: str | Path,
) -> Path:
    """Train ``tiny_model`` on the corpus (full fine-tune, vision tower unfrozen) into ``out_dir``."""
    from vlmflow.model.train import train_model

    workdir = Path(workdir)
    train_model(
        prompts=corpus_prompts(corpus_file),
        dataset="pretrain_screens",
        workdir=workdir,
        model=str(tiny_model),
        fine_tuning={"template": template, "finetuning_type": "full"},
        hyperparameters=pretraining_hyperparameters(training, budget),
        deepspeed_config=None,
        processes=1,
        seed=seed,
        log_path=log_path,
        threads=threads,
    )
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    (workdir / "model").replace(out_dir)
    losses = training_losses(out_dir)
    if losses:
        log.info(
            "pretrained %s: loss %.3f at the first logged step, %.3f at the last (%d steps)",
            out_dir,
            losses[0],
            losses[-1],
            budget["max_steps"],
        )
    return out_dir
