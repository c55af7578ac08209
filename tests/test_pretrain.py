"""The demo's pretrained base: the generic screen corpus, the pretraining rule, and fine-tunes starting from it."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmflow.data.labels import label_names, load_labels
from vlmflow.demo.dataset import ACCENTS, PAGES
from vlmflow.demo.pretrain import (
    DIALOG_BUTTONS,
    DIALOG_MESSAGES,
    DIALOG_TITLES,
    GENERIC_BUTTONS,
    GENERIC_TITLES,
    GENERIC_WORDS,
    HEADER_COLOURS,
    LAYOUTS,
    PROMPT,
    QUESTIONS,
    colour_name,
    generate_pretrain_corpus,
    pretraining_hyperparameters,
    render_generic_screen,
)
from vlmflow.model.encoding import ScoringRequest
from vlmflow.model.families import FAMILIES, base_model, demo_family
from vlmflow.model.scoring import load_scorer

from conftest import REPO, run_snakemake, small_demo_config

SIZE = (180, 320)
LABELS = load_labels(REPO / "config" / "labels.yaml")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, generate_pretrain_corpus(folder, n_images=60, seed=1, image_size=SIZE)


def test_the_corpus_is_the_same_for_a_seed_and_differs_for_another(corpus, tmp_path):
    folder, table = corpus
    again = generate_pretrain_corpus(tmp_path / "again", n_images=60, seed=1, image_size=SIZE)
    other = generate_pretrain_corpus(tmp_path / "other", n_images=60, seed=2, image_size=SIZE)
    assert (folder / "corpus.json").read_bytes() == (tmp_path / "again" / "corpus.json").read_bytes()
    first = table["image"].iloc[0]
    assert (folder / first).read_bytes() == (tmp_path / "again" / first).read_bytes()
    assert set(other["id"]).isdisjoint(table["id"]) and list(other["answer"]) != list(again["answer"])


def test_the_corpus_covers_every_layout_and_both_answers_of_each_yes_no_question(corpus):
    _, table = corpus
    facts = list(table["facts"])
    assert {fact["layout"] for fact in facts} == set(LAYOUTS.values())
    for key in ("dialog", "bottom_bar", "picture"):
        assert {fact[key] for fact in facts} == {True, False}, key
    assert len({fact["header_colour"] for fact in facts}) >= 3
    assert all(fact["items"] >= 1 for fact in facts)


def test_each_answer_line_answers_its_question_in_the_order_asked(corpus):
    _, table = corpus
    assert set(table["prompt"]) == {PROMPT}
    by_answer_key = {answer_key: key for key, (_, answer_key) in QUESTIONS.items()}
    for prompt, answer, facts in zip(table["prompt"], table["answer"], table["facts"], strict=True):
        asked = [line for line in prompt.splitlines() if line.endswith("?")]
        lines = answer.splitlines()
        assert len(asked) == len(lines) == len(QUESTIONS)
        for question, line in zip(asked, lines, strict=True):
            answer_key, value = line.split(":", 1)
            key = by_answer_key[answer_key]
            assert QUESTIONS[key][0] == question
            expected = facts[key]
            assert value == (("是" if expected else "否") if isinstance(expected, bool) else str(expected))


def test_the_header_colour_answered_is_the_colour_drawn_at_the_top_of_the_screen():
    checked = 0
    for seed in range(30):
        image, facts = render_generic_screen(seed, SIZE, _font())
        if facts.dialog:  # a dialog dims the whole screen, header included
            continue
        checked += 1
        top_row = np.asarray(image)[1, SIZE[0] // 3 : SIZE[0] // 2].reshape(-1, 3).mean(axis=0)
        assert colour_name(tuple(int(v) for v in top_row)) == facts.header_colour, seed
    assert checked >= 15


def test_every_accent_of_the_demo_has_a_colour_name_close_to_it():
    for accent in ACCENTS:
        name = colour_name(accent)
        assert sum((a - b) ** 2 for a, b in zip(HEADER_COLOURS[name], accent, strict=True)) < 40**2, accent


def test_a_dialog_answered_dims_the_screen_and_no_dialog_leaves_it_light():
    seen = set()
    for seed in range(60):
        image, facts = render_generic_screen(seed, SIZE, _font())
        if facts.dark:
            continue
        corner = np.asarray(image)[-3:, :3].mean()  # the bottom left, under any dialog's dimming
        assert (corner < 205) == facts.dialog, (seed, corner)
        seen.add(facts.dialog)
    assert seen == {True, False}


def test_no_task_label_and_no_word_of_a_task_page_is_in_the_corpus(corpus):
    folder, table = corpus
    text = (folder / "corpus.json").read_text(encoding="utf-8")
    assert not [name for name in label_names(LABELS) if name in text]
    task_words = {
        word
        for page in PAGES.values()
        for field in ("titles", "words", "headline", "buttons", "footer", "popup", "brands")
        for word in getattr(page, field)
    }
    generic = {*GENERIC_TITLES, *GENERIC_WORDS, *GENERIC_BUTTONS, *DIALOG_TITLES, *DIALOG_MESSAGES, *DIALOG_BUTTONS}
    generic |= {*LAYOUTS.values(), *HEADER_COLOURS}
    assert not generic & task_words
    assert {fact["title"] for fact in table["facts"]} <= set(GENERIC_TITLES)


def test_the_pretraining_keeps_the_cpu_settings_and_drops_model_selection():
    training = {
        "use_cpu": True,
        "bf16": False,
        "val_size": 0.1,
        "eval_steps": 10,
        "load_best_model_at_end": True,
        "num_train_epochs": 4,
        "freeze_vision_tower": True,
        "save_steps": 20,
    }
    settings = pretraining_hyperparameters(training, {"max_steps": 7, "batch_size": 4, "learning_rate": 2e-3})
    assert settings["use_cpu"] is True and settings["bf16"] is False
    assert settings["max_steps"] == 7 and settings["per_device_train_batch_size"] == 4
    assert settings["learning_rate"] == 2e-3 and settings["freeze_vision_tower"] is False
    assert settings["save_strategy"] == "no" and settings["load_best_model_at_end"] is False
    assert "val_size" not in settings and "eval_steps" not in settings
    with pytest.raises(ValueError, match="max_steps"):
        pretraining_hyperparameters(training, {"max_steps": 0, "batch_size": 4, "learning_rate": 1e-3})


def test_the_demo_base_is_the_pretrained_folder_when_pretraining_is_on():
    for model_type, family in FAMILIES.items():
        assert base_model(None, model_type, pretrained=True) == (family.demo_pretrained_dir, family)
        assert base_model(None, model_type, pretrained=False) == (family.demo_model_dir, family)
        assert demo_family(family.demo_pretrained_dir) is family
    # A model of one's own is the base whatever demo.pretrain says.
    assert base_model("resources/demo/tiny-qwen3-vl", "qwen2_vl", pretrained=True)[0] == "resources/demo/tiny-qwen3-vl"


def test_fold_training_starts_from_the_pretrained_base_and_off_from_the_random_one(tmp_path):
    def train_fold_inputs(enabled: bool) -> str:
        config = small_demo_config(
            tmp_path, demo={**small_demo_config(tmp_path)["demo"], "pretrain": {"enabled": enabled}}
        )
        dry_run = run_snakemake(tmp_path / str(enabled), config, "-n", "results/baseline/fold0/model").stdout
        block = next(block for block in re.split(r"\n(?=(?:local)?rule \w+:)", dry_run) if "rule train_fold:" in block)
        return re.search(r"input: (.*)", block)[1], dry_run

    inputs, dry_run = train_fold_inputs(True)
    assert "resources/demo/pretrained-qwen2-vl" in inputs and "pretrain_tiny_model" in dry_run
    inputs, dry_run = train_fold_inputs(False)
    assert "resources/demo/tiny-qwen2-vl" in inputs and "pretrain_tiny_model" not in dry_run


@pytest.mark.slow
def test_the_rule_trains_a_loadable_base_within_its_step_budget_and_caches_it(tmp_path, demo_models):
    demo = {**small_demo_config(tmp_path)["demo"], "pretrain": {"n_images": 8, "max_steps": 2, "batch_size": 4}}
    config = small_demo_config(tmp_path, demo=demo)
    target = "resources/demo/pretrained-qwen2-vl"
    demo_models.into(tmp_path, config)
    run_snakemake(tmp_path, config, "--cores", "2", target)
    model = tmp_path / target
    state = json.loads((model / "trainer_state.json").read_text())
    assert state["global_step"] == state["max_steps"] == 2
    # Full fine-tune, vision tower included: every module moved from the random-weight model.
    tiny, trained = (
        load_file(tmp_path / "resources/demo/tiny-qwen2-vl/model.safetensors"),
        load_file(model / "model.safetensors"),
    )
    assert tiny.keys() == trained.keys()
    for prefix in ("visual.patch_embed", "visual.blocks", "visual.merger", "lm_head"):
        changed = [key for key in tiny if prefix in key and not torch.equal(tiny[key], trained[key])]
        assert changed, prefix
    # The scorer loads it and scores as it scores a fold model.
    scorer = load_scorer(model, num_threads=1)
    image = Image.open(next((tmp_path / "resources/demo/pretrain_corpus/images").iterdir()))
    probabilities = scorer.score_many([ScoringRequest(image, "<image>\n有弹窗吗?")], ["是", "否"], [("弹窗:", "")])
    assert probabilities.shape == (1, 2) and np.isclose(probabilities.sum(), 1.0)
    # Cached: nothing reruns; a new budget reruns the pretraining only, not the tiny model's build.
    assert "Nothing to be done" in run_snakemake(tmp_path, config, "-n", target).stdout
    demo["pretrain"]["max_steps"] = 3
    rerun = run_snakemake(tmp_path, small_demo_config(tmp_path, demo=demo), "-n", target).stdout
    assert "rule pretrain_tiny_model:" in rerun and "rule build_tiny_model:" not in rerun


def _font():
    from vlmflow.runtime.fonts import find_cjk_font

    return find_cjk_font(None)
