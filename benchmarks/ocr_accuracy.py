"""OCR measured against the truth: character error rate and images/s of two RapidOCR generations.

Renders seeded demo screenshots (vlmflow.demo.dataset, the demo's 360x640 size and JPEG qualities), records
the exact strings the renderer draws on each (the truth), OCRs them with each engine using the workflow's
options (config/config.yaml ``ocr.options``) and ``--threads`` threads, and prints one Markdown table:

- ``rapidocr-onnxruntime`` 1.x (the workflow's engine until this comparison; ``RapidOcr1Engine`` below);
- ``rapidocr`` 3.x on onnxruntime (the workflow's engine now, ``vlmflow.data.ocr.RapidOcrEngine``).

CER is edit distance / truth characters, summed over all images (micro-average; characters read on an image
without text count as errors), after NFKC and with all whitespace removed (where an engine splits or joins words
is not an error for Chinese). Edit distances are rapidfuzz's Levenshtein. Three variants:

- ``CER``: truth and OCR lines both put into ``vlmflow.data.ocr.reading_order`` (the order the prompt gets),
  then concatenated; a box split or merged differently can still move a few characters;
- ``words CER``: the same without the renderer's icon stand-ins (``<``, ``···``) in the truth and without OCR
  lines made only of icon-like marks (those, and the battery outline read as 口): the text that carries meaning;
- ``bag CER``: order-free, ``max(missing, extra)`` over the character multisets: the fewest edits that turn
  the OCR characters into the truth's when order is free; a lower bound of ``CER``.

Truth is caught by patching PIL's ImageDraw.text while each image renders (every string the demo draws passes
through it), after the renderer's own cuts; glyphs past the right edge are cut too, and text a popup's box
paints over is left out. The engines take turns image by image. images/s and CPU s/image are over all images
but the first (which pays first-call costs); load s is building the engine with its models loaded.

Both engines live in one environment outside the repo (they coexist: rapidocr-onnxruntime pulls opencv-python,
rapidocr 3.x opencv-python-headless, same version, same cv2):

    python3.11 -m venv /tmp/ocr-venv
    /tmp/ocr-venv/bin/pip install rapidocr-onnxruntime==1.4.4 "rapidocr>=3" onnxruntime opencv-python \\
        pillow numpy pandas pyyaml rapidfuzz
    /tmp/ocr-venv/bin/python benchmarks/ocr_accuracy.py --images 80

The script imports vlmflow from this checkout's src/ (no install needed).
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
import time
import unicodedata
from collections import Counter, defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import version
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any
from unittest import mock

import yaml
from PIL import Image, ImageDraw
from rapidfuzz.distance import Levenshtein

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # measure this checkout's renderer and reading order

from vlmflow.data.labels import load_labels  # noqa: E402
from vlmflow.data.ocr import OcrLine, RapidOcrEngine, reading_order  # noqa: E402
from vlmflow.demo import dataset  # noqa: E402
from vlmflow.runtime.fonts import find_cjk_font  # noqa: E402

SIZE = (360, 640)  # generate_demo_dataset's default image_size


# ------------------------------------------------------------------------------------------- the truth


@dataclass
class Drawn:
    """One string as it lands on the image."""

    text: str  # after the renderer's own cut (Canvas.text) and after cutting what runs off the image
    box: tuple[float, float, float, float]  # left, top, right, bottom
    source: str  # the drawing function: _header, _rows, _misc, _popup, ...
    cropped: bool  # part of the string did not fit and is not on the image
    dimmed: bool = False  # under the shade a popup lays over the page (still readable, darker)
    covered: bool = False  # under the popup's box: drawn, then painted over, so not truth


@dataclass
class Sample:
    path: Path
    label: str
    softened: bool  # the renderer downscaled and upscaled it (blur)
    drawn: list[Drawn] = field(default_factory=list)

    @property
    def truth(self) -> list[Drawn]:
        return [d for d in self.drawn if not d.covered]


class TruthRecorder:
    """Patches PIL and the renderer while one image renders, collecting the strings actually drawn.

    Every string goes through ImageDraw.text (Canvas.text for screens, directly for _misc pictures), so that is
    where they are caught; Canvas.text is wrapped only to learn the caller and whether it cut the string.
    """

    def __init__(self) -> None:
        self.sample: Sample | None = None
        self.pending: tuple[str, str] | None = None  # (source, string asked for) from Canvas.text
        self.modal: tuple[float, ...] | None = None
        self.in_popup = False

    def patches(self) -> ExitStack:
        original_canvas_text, original_popup = dataset.Canvas.text, dataset._popup
        original_draw_text, original_rounded = ImageDraw.ImageDraw.text, ImageDraw.ImageDraw.rounded_rectangle
        original_resize = Image.Image.resize
        recorder = self

        def canvas_text(canvas, x, y, text, *args, **kwargs):
            recorder.pending = (sys._getframe(1).f_code.co_name, text)
            try:
                return original_canvas_text(canvas, x, y, text, *args, **kwargs)
            finally:
                recorder.pending = None

        def draw_text(draw, xy, text, *args, **kwargs):
            source, asked = recorder.pending or (sys._getframe(1).f_code.co_name, text)
            recorder.record(draw, xy, text, source, cropped=text != asked, **kwargs)
            return original_draw_text(draw, xy, text, *args, **kwargs)

        def rounded_rectangle(draw, xy, *args, **kwargs):
            if recorder.in_popup and recorder.modal is None:  # _popup's first box is the modal
                recorder.modal = tuple(xy)
            return original_rounded(draw, xy, *args, **kwargs)

        def popup(canvas):
            start, recorder.in_popup, recorder.modal = len(recorder.sample.drawn), True, None
            try:
                return original_popup(canvas)
            finally:
                recorder.in_popup = False
                left, top, right, bottom = recorder.modal
                for drawn in recorder.sample.drawn[:start]:
                    x, y = (drawn.box[0] + drawn.box[2]) / 2, (drawn.box[1] + drawn.box[3]) / 2
                    drawn.covered = left <= x <= right and top <= y <= bottom
                    drawn.dimmed = not drawn.covered

        def resize(image, *args, **kwargs):
            recorder.sample.softened = True  # only render_demo_image's blur step resizes
            return original_resize(image, *args, **kwargs)

        stack = ExitStack()
        for target, name, replacement in [
            (dataset.Canvas, "text", canvas_text),
            (dataset, "_popup", popup),
            (ImageDraw.ImageDraw, "text", draw_text),
            (ImageDraw.ImageDraw, "rounded_rectangle", rounded_rectangle),
            (Image.Image, "resize", resize),
        ]:
            stack.enter_context(mock.patch.object(target, name, replacement))
        return stack

    def record(self, draw, xy, text: str, source: str, cropped: bool, font=None, anchor=None, **_: Any) -> None:
        width, height = draw.im.size
        box = draw.textbbox(xy, text, font=font, anchor=anchor)
        while text and box[2] > width:  # _misc words can run off the right edge; those glyphs are not there
            text, cropped = text[:-1], True
            box = draw.textbbox(xy, text, font=font, anchor=anchor)
        if text.strip() and box[1] < height:
            self.sample.drawn.append(Drawn(text, box, source, cropped))


def render_samples(count: int, seed: int, folder: Path) -> list[Sample]:
    """``count`` demo images of mixed classes (plan_demo_records' class mix), saved as the demo saves them."""
    font = find_cjk_font()
    records = dataset.plan_demo_records(
        load_labels(REPO / "config" / "labels.yaml"), n_train=count, n_test=0, flip_fraction=0, seed=seed
    )
    recorder, samples = TruthRecorder(), []
    for record in records:
        recorder.sample = Sample(folder / f"{record.id}.jpg", record.label, softened=False)
        with recorder.patches():
            image = dataset.render_demo_image(record.label, record.seed, SIZE, font)
        image.save(recorder.sample.path, "JPEG", quality=55 + record.seed % 41)  # as generate_demo_dataset
        samples.append(recorder.sample)
    return samples


# ------------------------------------------------------------------------------------------- the engines


@cache
def _rapidocr1(threads: int, options: tuple[tuple[str, Any], ...]) -> Any:
    import cv2
    from rapidocr_onnxruntime import RapidOCR

    cv2.setNumThreads(threads)
    return RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1, **dict(options))


class RapidOcr1Engine:
    """RapidOCR 1.x (rapidocr-onnxruntime), as the workflow called it before it moved to 3.x."""

    name = "rapidocr"

    def __init__(self, threads: int = 1, **options: Any) -> None:
        self._ocr = _rapidocr1(threads, tuple(sorted(options.items())))

    def read(self, image_path: str | Path) -> list[OcrLine]:
        found, _elapsed = self._ocr(str(image_path))
        return [
            OcrLine(text, [[round(float(x), 1), round(float(y), 1)] for x, y in box], float(score))
            for box, text, score in found or []
        ]


def models_in(package: str) -> str:
    """The .onnx files a package ships, which name their PP-OCR generation."""
    folder = Path(importlib.import_module(package).__file__).parent
    return ", ".join(sorted(path.stem for path in folder.rglob("*.onnx")))


ENGINES = {  # table name: (distribution, module holding its models, engine class)
    "rapidocr-onnxruntime": ("rapidocr-onnxruntime", "rapidocr_onnxruntime", RapidOcr1Engine),
    "rapidocr 3.x (the workflow's)": ("rapidocr", "rapidocr", RapidOcrEngine),
}


# ------------------------------------------------------------------------------------------- scoring


# The renderer's stand-ins for a back arrow and a menu button: icons in a real screenshot, not words.
ICONS = {"<", "···"}
# What engines make of those icons and of the status bar's battery outline; an OCR line of only these is dropped
# for the "words" CER.
ICON_MARKS = set("<>.·…口□")


def normalise(text: str) -> str:
    return "".join(unicodedata.normalize("NFKC", text).split())


def compared(sample: Sample, lines: list[OcrLine], words_only: bool = False) -> tuple[str, str]:
    """The truth and the OCR text as compared: each side's lines in the workflow's reading order, normalised."""
    truth = [d for d in sample.truth if not (words_only and d.text in ICONS)]
    boxes = [
        OcrLine(d.text, [[d.box[0], d.box[1]], [d.box[2], d.box[1]], [d.box[2], d.box[3]], [d.box[0], d.box[3]]], 1)
        for d in truth
    ]
    if words_only:
        lines = [line for line in lines if not set(normalise(line.text)) <= ICON_MARKS]
    return normalise(reading_order(boxes)), normalise(reading_order(lines))


def bag_errors(truth: str, read: str) -> int:
    """Fewest edits from ``read`` to ``truth`` ignoring order: substitute, then insert or delete the rest."""
    missing, extra = Counter(truth) - Counter(read), Counter(read) - Counter(truth)
    return max(sum(missing.values()), sum(extra.values()))


def run_engines(samples: list[Sample], threads: int, options: dict) -> dict[str, dict]:
    """Each engine's lines per image, load time and speed. The engines take turns image by image, so both see
    the same load from whatever else shares the machine."""
    runs = {}
    for name, (_, _, engine_class) in ENGINES.items():
        started = time.perf_counter()
        engine = engine_class(threads=threads, **options)
        runs[name] = {"engine": engine, "load_s": time.perf_counter() - started, "wall_s": 0.0, "cpu_s": 0.0}
        runs[name]["lines"] = [engine.read(samples[0].path)]  # warm-up: scored, not timed
    load_before = os.getloadavg()[0]
    for sample in samples[1:]:
        for run in runs.values():
            wall, cpu = time.perf_counter(), time.process_time()
            run["lines"].append(run["engine"].read(sample.path))
            run["wall_s"] += time.perf_counter() - wall
            run["cpu_s"] += time.process_time() - cpu  # all threads of this process: ORT's and OpenCV's
    for run in runs.values():
        run["load_avg"] = (load_before, os.getloadavg()[0])
    return runs


def score(samples: list[Sample], lines_per_image: list[list[OcrLine]]) -> dict:
    """Edit counts (micro-averaged later), per-string recall by drawing function, and substitutions."""
    totals: Counter = Counter()
    found: dict[str, Counter] = defaultdict(Counter)  # truth strings found verbatim in the image's OCR text
    confusions: Counter = Counter()  # (truth char, read char)
    for sample, lines in zip(samples, lines_per_image, strict=True):
        truth, read = compared(sample, lines)
        edits = Levenshtein.distance(truth, read)
        kind = {"实物拍摄(含售后)": "photo", "其他类别图片": "misc"}.get(sample.label, "screen")
        for key in ["all", kind, "softened" if sample.softened else "sharp"]:
            totals[f"{key} chars"] += len(truth)
            totals[f"{key} edits"] += edits
            totals[f"{key} images"] += 1
        totals["all bag"] += bag_errors(truth, read)
        word_truth, word_read = compared(sample, lines, words_only=True)
        totals["words chars"] += len(word_truth)
        totals["words edits"] += Levenshtein.distance(word_truth, word_read)
        replaced = [op for op in Levenshtein.editops(word_truth, word_read) if op.tag == "replace"]
        confusions.update((word_truth[op.src_pos], word_read[op.dest_pos]) for op in replaced)
        for drawn in sample.truth:
            for key in [drawn.source] + ["(cropped)"] * drawn.cropped + ["(dimmed)"] * drawn.dimmed:
                found[key]["strings"] += 1
                found[key]["found"] += normalise(drawn.text) in read
    return {"totals": totals, "found": found, "confusions": confusions}


def cer(totals: Counter, key: str) -> str:
    chars = totals[f"{key} chars"]
    return f"{totals[f'{key} edits'] / chars:.3f}" if chars else "-"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=80)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text(encoding="utf-8"))
    options = config["ocr"].get("options") or {}

    with TemporaryDirectory() as folder:
        samples = render_samples(args.images, args.seed, Path(folder))
        runs = run_engines(samples, args.threads, options)
    scores = {name: score(samples, run["lines"]) for name, run in runs.items()}

    truth = [drawn for sample in samples for drawn in sample.truth]
    print(
        f"{len(samples)} demo images ({SIZE[0]}x{SIZE[1]}, seed {args.seed}, {len({s.label for s in samples})} "
        f"classes), options {options}, {args.threads} threads, {platform.machine()}, {os.cpu_count()} CPUs. "
        f"Truth: {len(truth)} strings, {sum(len(normalise(d.text)) for d in truth)} characters; "
        f"{sum(d.cropped for d in truth)} strings cropped, {sum(d.dimmed for d in truth)} dimmed by a popup, "
        f"{sum(d.covered for s in samples for d in s.drawn)} covered by one (left out); "
        f"{sum(s.softened for s in samples)} images softened.\n"
    )
    print("| engine | version | models | CER | words CER | bag CER | images/s | CPU s/image | load s | images |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, (distribution, package, _) in ENGINES.items():
        run, totals = runs[name], scores[name]["totals"]
        print(
            f"| {name} | {version(distribution)} | {models_in(package)} | {cer(totals, 'all')} "
            f"| {cer(totals, 'words')} | {totals['all bag'] / totals['all chars']:.3f} "
            f"| {(len(samples) - 1) / run['wall_s']:.2f} | {run['cpu_s'] / (len(samples) - 1):.2f} "
            f"| {run['load_s']:.2f} | {len(samples)} |"
        )
    load = next(iter(runs.values()))["load_avg"]
    print(f"\nLoad average (1 min) {load[0]:.1f} before the timed reads, {load[1]:.1f} after.")
    print("\nCER by kind of image (photos carry no text: their column counts the characters read on them):\n")
    print("| engine | screens | misc pictures | sharp images | softened images | characters read on photos |")
    print("|---|---|---|---|---|---|")
    for name, result in scores.items():
        totals = result["totals"]
        print(
            f"| {name} | {cer(totals, 'screen')} | {cer(totals, 'misc')} | {cer(totals, 'sharp')} "
            f"| {cer(totals, 'softened')} | {totals['photo edits']} on {totals['photo images']} |"
        )
    print("\nTruth strings found verbatim in the image's OCR text, by drawing function:\n")
    keys = sorted({key for result in scores.values() for key in result["found"]})
    print("| engine | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, result in scores.items():
        cells = [f"{c['found'] / c['strings']:.0%} of {c['strings']}" for c in map(result["found"].get, keys)]
        print(f"| {name} | " + " | ".join(cells) + " |")
    for name, result in scores.items():
        common = ", ".join(f"{a}→{b} {n}" for (a, b), n in result["confusions"].most_common(12))
        print(f"\n{name}: commonest substitutions in words (truth→read): {common}")


if __name__ == "__main__":
    main()
