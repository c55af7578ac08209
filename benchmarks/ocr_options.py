"""RapidOCR 3.x's options measured against the truth: the line-direction classifier and the detection side.

Renders seeded demo screenshots and scores each option set with ``benchmarks/ocr_accuracy.py``'s truth and
scoring (CER and words CER, micro-averaged), one engine thread, and prints a Markdown table. Needs rapidfuzz
besides the workflow's venv (``.venv/bin/pip install rapidfuzz``):

    PYTHONPATH=src:benchmarks .venv/bin/python benchmarks/ocr_options.py --images 60
"""

import argparse
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import ocr_accuracy

from vlmflow.data.ocr import RapidOcrEngine

DETECTION = {"det_limit_type": "max"}
OPTION_SETS = {
    "`det_limit_side_len: 736`, classifier on": DETECTION | {"det_limit_side_len": 736},
    "`det_limit_side_len: 736`, `use_cls: false`": DETECTION | {"det_limit_side_len": 736, "use_cls": False},
    "`det_limit_side_len: 480`, `use_cls: false`": DETECTION | {"det_limit_side_len": 480, "use_cls": False},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| options | CER | words CER | s/image |\n|---|---|---|---|")
    with TemporaryDirectory() as folder:
        samples = ocr_accuracy.render_samples(args.images, args.seed, Path(folder))
        for name, options in OPTION_SETS.items():
            engine = RapidOcrEngine(threads=1, **options)
            engine.read(samples[0].path)  # first-call costs, not timed
            started = time.perf_counter()
            lines = [engine.read(sample.path) for sample in samples]
            seconds = (time.perf_counter() - started) / len(samples)
            totals = ocr_accuracy.score(samples, lines)["totals"]
            words = ocr_accuracy.cer(totals, "words")
            print(f"| {name} | {ocr_accuracy.cer(totals, 'all')} | {words} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
