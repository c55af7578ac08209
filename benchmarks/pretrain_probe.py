"""Has the demo's pretrained base learned to see? Its answers about held-out generic screens, against chance.

For each closed question of the pretraining corpus (header colour, list layout, item count, dialog, bottom
button, picture, dark mode, title) it scores every possible answer on screens drawn with a seed the
pretraining never saw, after the drawn answers of the questions asked before it (teacher forcing), and
counts how often the likeliest answer is the drawn one; the majority answer of the same screens is the
bar to beat. Run it on the random-weight model too.

    .venv/bin/python benchmarks/pretrain_probe.py resources/demo/pretrained-qwen2-vl resources/demo/tiny-qwen2-vl
"""

from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from PIL import Image

from vlmflow.demo.pretrain import (
    GENERIC_TITLES,
    HEADER_COLOURS,
    LAYOUTS,
    NO,
    PROMPT,
    QUESTIONS,
    YES,
    ScreenFacts,
    answer_lines,
    generate_pretrain_corpus,
)
from vlmflow.model.encoding import ScoringRequest
from vlmflow.model.scoring import load_scorer

# Every possible answer of each question, in the order PROMPT asks them.
OPTIONS = {
    "title": list(GENERIC_TITLES),
    "header_colour": list(HEADER_COLOURS),
    "layout": list(LAYOUTS.values()),
    "items": [str(count) for count in range(1, 25)],
}
ANSWERS = {key: OPTIONS.get(key, [YES, NO]) for key in QUESTIONS}


def probe(model_dir: str, corpus: Path, records) -> dict[str, tuple[float, float]]:
    """Per question: (accuracy of the likeliest answer, share of the majority answer)."""
    scorer = load_scorer(model_dir, num_threads=2)
    images = [Image.open(corpus / image).convert("RGB") for image in records["image"]]
    facts = [ScreenFacts(**drawn) for drawn in records["facts"]]
    requests = [ScoringRequest(image, PROMPT) for image in images]
    results = {}
    for line, (key, options) in enumerate(ANSWERS.items()):
        truth = [fact.answer(key) for fact in facts]
        # Teacher forcing: the drawn answers of the earlier questions, then this question's key.
        answers = [
            ("".join(f"{text}\n" for text in answer_lines(fact)[:line]) + f"{QUESTIONS[key][1]}:", "\n")
            for fact in facts
        ]
        probabilities = scorer.score_many(requests, options, answers)
        right = sum(options[row.argmax()] == drawn for row, drawn in zip(probabilities, truth, strict=True))
        results[key] = (right / len(truth), Counter(truth).most_common(1)[0][1] / len(truth))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders to probe")
    parser.add_argument("--screens", type=int, default=60)
    parser.add_argument("--seed", type=int, default=999, help="held out: not demo.pretrain.seed")
    parser.add_argument("--size", type=int, nargs=2, default=(180, 320), metavar=("WIDTH", "HEIGHT"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        records = generate_pretrain_corpus(scratch, n_images=args.screens, seed=args.seed, image_size=tuple(args.size))
        table = {model: probe(model, Path(scratch), records) for model in args.models}
    print("| question | majority answer | " + " | ".join(f"`{model}`" for model in args.models) + " |")
    print("|---|---|" + "---|" * len(args.models))
    for key in ANSWERS:
        majority = table[args.models[0]][key][1]
        cells = " | ".join(f"{table[model][key][0]:.2f}" for model in args.models)
        print(f"| {QUESTIONS[key][0]} | {majority:.2f} | {cells} |")


if __name__ == "__main__":
    main()
