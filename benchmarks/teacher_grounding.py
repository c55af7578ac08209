"""Are the demo teacher's descriptions about the image? Facts they state, checked against what was drawn.

The demo's teacher is a tiny model served by LLaMA-Factory's API server (scripts/teacher_server.sh), asked
through the workflow's own client (vlmflow.prompting.teacher.ask_teacher). This serves each model given,
asks it about held-out generic screens whose facts are known (header colour, dialog, dark mode, ...: the
pretraining corpus's questions, vlmflow.demo.pretrain), once with the workflow's describe prompt and once
with the pretraining's own questions, and reads every ``key:answer`` the answer states. A fact counts as
about the image when it matches the screen it was asked about more often than it matches the other
screens (the "any screen" column: the same answers checked against every other screen of the set).

    .venv/bin/python benchmarks/teacher_grounding.py resources/demo/tiny-qwen2-vl resources/demo/pretrained-qwen2-vl

Build the two models first: .venv/bin/snakemake --cores all resources/demo/tiny-qwen2-vl
resources/demo/pretrained-qwen2-vl. About 2 minutes a model on 2 cores for 40 screens.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pandas as pd
import yaml

from vlmflow.demo.pretrain import PROMPT, QUESTIONS, ScreenFacts, generate_pretrain_corpus
from vlmflow.prompting.teacher import TeacherSettings, ask_teacher, format_prompt

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow/schemas/config.schema.yaml"
DESCRIBE_MAX_CHARS = 150


def describe_prompt() -> str:
    """The workflow's default describe prompt (its one home is the config schema)."""
    schema = yaml.safe_load(SCHEMA.read_text(encoding="utf-8"))
    template = schema["properties"]["teacher"]["properties"]["describe_prompt"]["default"]
    return format_prompt(template, max_chars=DESCRIBE_MAX_CHARS)


PROMPTS = {"describe": describe_prompt(), "pretraining questions": PROMPT.removeprefix("<image>\n")}


def stated_facts(text: str) -> dict[str, str]:
    """The ``answer_key:value`` pairs an answer states, by question (first statement of each wins)."""
    stated = {}
    for key, (_, answer_key) in QUESTIONS.items():
        # The pretraining writes ASCII colons; a full-width one (\uff1a) counts too.
        match = re.search(rf"{answer_key}\s*[:\uff1a]\s*([^\s:\uff1a]+)", text)
        if match:
            stated[key] = match.group(1)
    return stated


def grounding(answers: list[str], facts: list[ScreenFacts]) -> dict[str, tuple[int, float, float]]:
    """Per question: (answers stating it, share right about their own screen, share right about any other)."""
    table = {}
    for key in QUESTIONS:
        truth = [fact.answer(key) for fact in facts]
        stated = [(index, stated_facts(text).get(key)) for index, text in enumerate(answers)]
        stated = [(index, value) for index, value in stated if value is not None]
        if not stated:
            table[key] = (0, float("nan"), float("nan"))
            continue
        own = sum(value == truth[index] for index, value in stated) / len(stated)
        others = [
            sum(value == truth[other] for other in range(len(truth)) if other != index) / (len(truth) - 1)
            for index, value in stated
        ]
        table[key] = (len(stated), own, sum(others) / len(others))
    return table


def served_answers(model: str, images: list[Path], prompt: str, port: int, max_tokens: int) -> list[str]:
    """Start LLaMA-Factory's API server on ``model``, ask about every image through ask_teacher, stop it."""
    environment = os.environ | {"VLMFLOW_TEACHER_PORT": str(port), "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryFile() as server_log:
        server = subprocess.Popen(
            [str(REPO / "scripts/teacher_server.sh"), model], env=environment, stdout=server_log, stderr=server_log
        )
        try:
            base_url = f"http://127.0.0.1:{port}/v1"
            for _ in range(300):
                if server.poll() is not None:
                    server_log.seek(0)
                    raise RuntimeError(f"the teacher server on {model} exited: {server_log.read()[-2000:]!r}")
                try:
                    httpx.get(f"{base_url}/models", timeout=2).raise_for_status()
                    break
                except httpx.HTTPError:
                    time.sleep(1)
            settings = TeacherSettings(base_url=base_url, model=Path(model).name, concurrency=1, max_tokens=max_tokens)
            requests = pd.DataFrame(
                {
                    "image_sha256": [hashlib.sha256(path.read_bytes()).hexdigest() for path in images],
                    "image_path": [str(path) for path in images],
                    "label": None,
                    "prompt": prompt,
                }
            )
            with tempfile.TemporaryDirectory() as cache:
                answered, _ = ask_teacher(requests, settings, cache, max_chars=1000)
            return answered["text"].tolist()
        finally:
            server.terminate()
            server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="model folders to serve as the teacher")
    parser.add_argument("--screens", type=int, default=40)
    parser.add_argument("--seed", type=int, default=999, help="held out: not demo.pretrain.seed")
    parser.add_argument("--size", type=int, nargs=2, default=(180, 320), metavar=("WIDTH", "HEIGHT"))
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--port", type=int, default=8018)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        records = generate_pretrain_corpus(scratch, n_images=args.screens, seed=args.seed, image_size=tuple(args.size))
        images = [Path(scratch) / image for image in records["image"]]
        facts = [ScreenFacts(**drawn) for drawn in records["facts"]]
        for model in args.models:
            for name, prompt in PROMPTS.items():
                answers = served_answers(model, images, prompt, args.port, args.max_tokens)
                distinct = len(set(answers))
                print(f"\n`{model}`, {name} prompt: {distinct} distinct answers of {len(answers)}; first three:")
                for text in answers[:3]:
                    print(f"  - {text[:120]!r}")
                print("\n| question | answers stating it | right about its screen | right about any screen |")
                print("|---|---|---|---|")
                for key, (count, own, other) in grounding(answers, facts).items():
                    print(f"| {QUESTIONS[key][0]} | {count} | {own:.2f} | {other:.2f} |")


if __name__ == "__main__":
    main()
