"""How fast is all-label scoring? Prefix-shared scoring vs one greedy generation vs one forward per label.

Per image it times: scoring all labels with the prompt and image encoded once (``Scorer.score_labels``),
one greedy generation as long as the longest label plus <|im_end|> (the cost of simply asking the model),
and the naive one-full-forward-per-label scoring. The target is scoring <= 2x one generation.

    .venv/bin/python benchmarks/scoring_speed.py --images 20
    .venv/bin/python benchmarks/scoring_speed.py --model-dir resources/demo/tiny-qwen2-vl --image-dir DIR
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]


def render_images(count: int, width: int, height: int, seed: int) -> list[Image.Image]:
    """Screenshot-like pictures: a coloured header bar and blocks of 'text' lines."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        image = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(200, 256, 3)))
        draw = ImageDraw.Draw(image)
        draw.rectangle([0, 0, width, height // 10], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        for top in range(height // 8, height - 20, 24):
            right = int(rng.integers(width // 4, width - 10))
            draw.rectangle([10, top, right, top + 10], fill=tuple(int(v) for v in rng.integers(0, 160, 3)))
        images.append(image)
    return images


def build_demo_model(out_dir: Path, labels) -> Path:
    """The demo's tiny model at the config schema's default size, on the demo's tokenizer corpus."""
    from vlmflow.data.labels import baseline_prompt, described_prompt
    from vlmflow.demo.dataset import demo_vocabulary
    from vlmflow.demo.tiny_model import build_tiny_model

    corpus = [baseline_prompt(labels), described_prompt(labels), *demo_vocabulary()]
    return build_tiny_model(out_dir, corpus, seed=0)


def seconds(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="a Qwen2-VL directory; default: build the demo's tiny model")
    parser.add_argument("--image-dir", type=Path, help="take images from here; default: render them")
    parser.add_argument("--images", type=int, default=20, help="number of images timed (after one warm-up)")
    parser.add_argument("--labels", type=Path, default=REPO / "config" / "labels.yaml")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch threads; default: torch's own choice")
    parser.add_argument("--width", type=int, default=360, help="rendered image width (the demo's default)")
    parser.add_argument("--height", type=int, default=640, help="rendered image height (the demo's default)")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.WARNING)
    from vlmflow.data.labels import load_labels

    labels = load_labels(args.labels)
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model_dir or build_demo_model(Path(scratch) / "tiny-qwen2-vl", labels)
        run(args, labels, model_dir)


def run(args: argparse.Namespace, labels, model_dir: Path) -> None:
    import torch

    from vlmflow.data.labels import baseline_prompt, label_names
    from vlmflow.model.scoring import load_scorer

    names, prompt = label_names(labels), baseline_prompt(labels)
    scorer = load_scorer(model_dir, device=args.device, num_threads=args.threads)
    if args.image_dir:
        paths = sorted(p for p in args.image_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
        images = [Image.open(path).convert("RGB") for path in paths[: args.images + 1]]
    else:
        images = render_images(args.images + 1, args.width, args.height, seed=0)
    # Generation as long as the longest label plus <|im_end|>, forced to that length so that an early
    # <|im_end|> from an untrained model does not flatter it.
    new_tokens = max(len(answer) for answer in scorer.answer_ids(names))

    def time_image(image) -> tuple[float, float, float]:
        return (
            seconds(lambda: scorer.score_labels(image, prompt, names)),
            seconds(lambda: scorer.generate(image, prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens)),
            seconds(lambda: scorer.score_labels_naive(image, prompt, names)),
        )

    time_image(images[0])  # warm-up: first calls pay for allocation and kernel selection
    timings = [time_image(image) for image in images[1:]]

    print(f"command: {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"model: {model_dir}; device {args.device}, {torch.get_num_threads()} torch threads; "
        f"{len(names)} labels; generation of {new_tokens} tokens; {len(timings)} images after 1 warm-up\n"
    )
    print("| image | scoring (s) | generation (s) | naive (s) | scoring/generation | scoring/naive |")
    print("|---|---|---|---|---|---|")
    for index, (score, generate, naive) in enumerate(timings, start=1):
        print(
            f"| {index} | {score:.3f} | {generate:.3f} | {naive:.3f} | {score / generate:.2f} | {score / naive:.3f} |"
        )
    columns = list(zip(*timings, strict=True))
    median = [statistics.median(column) for column in columns]
    ratio_generation = statistics.median(score / generate for score, generate, _ in timings)
    ratio_naive = statistics.median(score / naive for score, _, naive in timings)
    print(
        f"| **median** | {median[0]:.3f} | {median[1]:.3f} | {median[2]:.3f} "
        f"| **{ratio_generation:.2f}** | **{ratio_naive:.3f}** |"
    )
    verdict = "met" if ratio_generation <= 2 else "NOT met"
    print(f"\ntarget scoring <= 2x one greedy generation: {verdict} (median ratio {ratio_generation:.2f})")


if __name__ == "__main__":
    main()
