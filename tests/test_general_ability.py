"""General ability kept: held-out questions and their checks, exact-match accuracy, text-only generation on a
tiny model (batched as one at a time, and read back as llamafactory-cli trained it), and the workflow's jobs."""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from vlmflow.data.labels import baseline_prompt, load_labels
from vlmflow.evaluation.general_ability import (
    GeneralAbilityError,
    answer_questions,
    check_never_mixed,
    general_metrics,
    held_out_questions,
    normalized,
)
from vlmflow.model.encoding import ChatRequest
from vlmflow.model.families import FAMILIES
from vlmflow.model.scoring import load_scorer
from vlmflow.prompting.general_data import demo_general_records, read_general_records, split_held_out
from vlmflow.prompting.prompts import write_llamafactory_dataset
from vlmflow.runtime import plan

from conftest import REPO, run_snakemake, small_demo_config
from helpers.scoring_models import build_scoring_model, overfit_through_llamafactory

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def chat(question: str, answer: str, **extra) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], **extra}


def test_answers_are_compared_stripped_case_folded_and_nfkc_normalised():
    questions = held_out_questions(
        [chat("7+5?", "12"), chat("Yes or no?", "Yes"), chat("排序", "物流,订单"), chat("3+4?", "7")]
    )
    metrics = general_metrics(questions, ["  １２\n", "yes", "物流,订单", "8"])  # full-width digits and comma
    assert (metrics["n"], metrics["correct"], metrics["accuracy"]) == (4, 3, 0.75)
    assert [example["correct"] for example in metrics["examples"]] == [True, True, True, False]
    assert metrics["examples"][3] == {"question": "3+4?", "expected": "7", "answer": "8", "correct": False}
    assert normalized(" ＡＢＣ ") == "abc"
    with pytest.raises(GeneralAbilityError, match="1 answers to 4"):
        general_metrics(questions, ["12"])


def test_a_question_keeps_its_earlier_turns_and_system():
    earlier, last = chat("1+1?", "2"), chat("再加 1?", "3")
    record = {"messages": earlier["messages"] + last["messages"], "system": "你是助手"}
    [question] = held_out_questions([record])
    assert question.messages == tuple(record["messages"][:3]) and question.system == "你是助手"
    assert (question.question, question.answer, question.position) == ("再加 1?", "3", 0)


@pytest.mark.parametrize(
    ("answer", "why"),
    [("第一行\n第二行", "one non-empty line"), ("这是一段很长的自由回答," * 6, "at most 50 characters"), ("  ", "")],
)
def test_a_held_out_record_without_a_checkable_answer_fails_naming_it(answer, why):
    records = [chat("2+2?", "4"), chat("写一首关于物流的诗", answer)]
    with pytest.raises(GeneralAbilityError, match=f"held-out general record 1 \\('写一首关于物流的诗'\\).*{why}"):
        held_out_questions(records)
    with pytest.raises(GeneralAbilityError, match="no records"):
        held_out_questions([])


def test_a_held_out_question_also_mixed_into_training_fails_naming_it():
    questions = held_out_questions([chat("2+2?", "4"), chat("3+3?", "6")])
    check_never_mixed(questions, [chat("5+5?", "10")])  # disjoint: passes
    with pytest.raises(GeneralAbilityError, match=r"records \[1\] are also in the general data mixed"):
        check_never_mixed(questions, [chat("3+3?", "six")])  # the same question, whatever the answer


def test_every_demo_held_out_answer_is_checkable_and_no_held_out_question_is_mixed():
    mixed, held_out = split_held_out(demo_general_records(100, seed=3), 40, seed=3)
    questions = held_out_questions([alpaca_chat(record) for record in held_out])
    assert len(questions) == 40
    check_never_mixed(questions, [alpaca_chat(record) for record in mixed])


def alpaca_chat(record: dict) -> dict:
    question = f"{record['instruction']}\n{record['input']}" if record["input"] else record["instruction"]
    return chat(question, record["output"])


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return build_scoring_model(tmp_path_factory.mktemp("general") / "model", "qwen2_vl")


@pytest.fixture(scope="module")
def one_thread():
    # Two shared cores: a second torch thread spins against other processes and slows tiny forwards.
    before = torch.get_num_threads()
    yield 1
    torch.set_num_threads(before)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_text_only_prompts_follow_the_template_and_batches_answer_as_one_at_a_time(family, tmp_path, one_thread):
    scorer = load_scorer(build_scoring_model(tmp_path / "model", family), num_threads=one_thread)
    with torch.no_grad():  # a peaked output layer, so that padding errors would change the greedy tokens
        scorer.model.lm_head.weight.mul_(20.0)
    requests = [
        ChatRequest([{"role": "user", "content": "计算 3 + 4 等于多少?只回答数字。"}]),
        ChatRequest([{"role": "user", "content": "下面这段文字有几个字?\n订单订单"}], system="你是助手"),
        ChatRequest(
            [
                {"role": "user", "content": "1+1?"},
                {"role": "assistant", "content": "2"},
                {"role": "user", "content": "再加 1?"},
            ]
        ),
    ]
    prompt = scorer.tokenizer.decode(scorer.encoder.chat_prompt_ids(requests[2]))
    assert prompt.endswith("<|im_start|>user\n再加 1?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>assistant\n2<|im_end|>" in prompt and "<image>" not in prompt
    assert "你是助手" in scorer.tokenizer.decode(scorer.encoder.chat_prompt_ids(requests[1]))
    batched = scorer.generate_chats(requests, max_new_tokens=6)
    assert batched == [scorer.generate_chats([request], max_new_tokens=6)[0] for request in requests]
    assert all(isinstance(answer, str) and answer for answer in batched)
    with pytest.raises(ValueError, match="must end on a user turn"):
        scorer.encoder.chat_prompt_ids(ChatRequest([{"role": "assistant", "content": "x"}]))


def test_answers_of_a_random_model_are_scored_not_crashed(tiny_model, one_thread):
    questions = held_out_questions([chat("2+2?", "4"), chat("3+3?", "6"), chat("Yes?", "yes")])
    answers = answer_questions(str(tiny_model), questions, batch_size=2, threads=one_thread)
    assert len(answers) == 3 and all(isinstance(answer, str) for answer in answers)
    metrics = general_metrics(questions, answers)
    assert metrics["n"] == 3 and 0 <= metrics["accuracy"] <= 1 and len(metrics["examples"]) == 3


def test_out_of_memory_halves_the_answers_batch_and_leaves_the_answers_as_they_were(
    tiny_model, one_thread, monkeypatch, caplog
):
    """A card that holds one question at a time: the batch of 3 runs out of memory, then 1 at a time answers the
    same (greedy decoding does not depend on the batch); one question too many for the card says what to do."""
    from vlmflow.model import scoring

    questions = held_out_questions([chat("2+2?", "4"), chat("3+3?", "6"), chat("Yes?", "yes")])
    unhalved = answer_questions(str(tiny_model), questions, batch_size=3, threads=one_thread)
    load = scoring.load_scorer

    def small_card(*args, rows: int = 1, **kwargs):
        scorer = load(*args, **kwargs)
        generate = scorer.generate_chats

        def within(requests, **settings):
            if len(requests) > rows:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return generate(requests, **settings)

        scorer.generate_chats = within
        return scorer

    monkeypatch.setattr(scoring, "load_scorer", small_card)
    with caplog.at_level(logging.WARNING, logger="vlmflow.model.encoding"):
        halved = answer_questions(str(tiny_model), questions, batch_size=3, threads=one_thread)
    assert halved == unhalved
    assert [record.getMessage() for record in caplog.records if "out of memory" in record.getMessage()] == [
        "CUDA out of memory at 3 held-out general questions a batch: answering them again 1 at a time"
    ]
    monkeypatch.setattr(scoring, "load_scorer", lambda *args, **kwargs: small_card(*args, rows=0, **kwargs))
    with pytest.raises(
        torch.cuda.OutOfMemoryError, match=re.escape("answering one held-out general question ('2+2?')")
    ):
        answer_questions(str(tiny_model), questions[:1], batch_size=1, threads=one_thread)


@pytest.mark.slow
def test_general_answers_trained_through_llamafactory_are_read_back_exactly(tiny_model, tmp_path, one_thread):
    """Mixed in as the workflow mixes them (beside an image record), the general records are learned by
    llamafactory-cli train; the text-only path then reads back every answer: the same token layout."""
    records = [chat("计算 3 + 4 等于多少?只回答数字。", "7"), chat("把下面的词排列。\n物流,订单", "订单,物流")]
    records.append({**chat("下面这段文字有几个字?\n客服", "2"), "system": "你是助手"})
    image = tmp_path / "image.png"
    Image.new("RGB", (64, 112), (200, 30, 30)).save(image)
    labels = load_labels(REPO / "config" / "labels.yaml")
    prompt = baseline_prompt(labels)
    image_row = {"id": "0", "image_path": str(image), "prompt": prompt, "target": "退货页面", "system": None}
    write_llamafactory_dataset(pd.DataFrame([image_row]), tmp_path / "data", "mixed", records)
    trained = overfit_through_llamafactory(tiny_model, tmp_path / "data", "mixed", tmp_path / "out", batch_size=4)
    questions = held_out_questions(records)
    answers = answer_questions(str(trained), questions, batch_size=2, threads=one_thread)
    assert general_metrics(questions, answers)["accuracy"] == 1.0, answers


@pytest.mark.slow  # two rule jobs that load a model and generate (about 30 s): make test, not the daily loop
def test_the_rule_answers_the_demo_held_out_records_and_counts_the_split(tiny_model, tmp_path):
    """evaluate_general_ability on a stand-in final model (the tiny model), and on the untuned base model: no
    fold model trains."""
    # The tiny model is also the base model, named by its folder as a hub id would be: no file input, no build.
    config = small_demo_config(tmp_path, model={"name_or_path": str(tiny_model)})
    (tmp_path / "results/baseline/average_folds").mkdir(parents=True)
    (tmp_path / "results/baseline/average_folds/model").symlink_to(tiny_model)
    target = "results/baseline/average_folds/general_metrics.json"
    base = "results/base_model/general_metrics.json"  # the untuned base model
    rules = ["make_demo_general_data", "evaluate_general_ability", "evaluate_base_general_ability"]
    run_snakemake(tmp_path, config, "--cores", "1", target, base, "--allowed-rules", *rules)
    split = json.loads((tmp_path / "resources/demo/general_split.json").read_text(encoding="utf-8"))
    held_out = read_general_records(tmp_path / "resources/demo/general_held_out.json", "alpaca")
    mixed = read_general_records(tmp_path / "resources/demo/general.json", "alpaca")
    assert split == {"records": 100, "mixed": len(mixed), "held_out": len(held_out)} and len(held_out) == 40
    metrics = json.loads((tmp_path / target).read_text(encoding="utf-8"))
    assert metrics["n"] == 40 and metrics["correct"] == round(metrics["accuracy"] * 40)
    assert json.loads((tmp_path / base).read_text(encoding="utf-8"))["n"] == 40
    assert [example["expected"] for example in metrics["examples"]] == [
        record["messages"][-1]["content"] for record in held_out[:5]
    ]


def test_a_dry_run_plans_one_evaluation_per_final_model_read_by_the_summary(tmp_path):
    config = yaml.safe_load((REPO / "config" / "demo.yaml").read_text(encoding="utf-8"))
    config["labels"] = str(REPO / config["labels"])
    jobs = plan.planned_jobs(run_snakemake(tmp_path, config, "-n").stdout)
    evaluations = [job.wildcards for job in jobs if job.rule == "evaluate_general_ability"]
    evaluated = {(wildcards["variant"], wildcards["final_model"]) for wildcards in evaluations}
    # The demo's ablation's combinations, each measured on its first seed's fit (the one submitted), for the
    # variant final.ablation_variants names; the other variant submits its fold ensemble
    # (final.other_variants), so only its averaged folds are a model to measure.
    first_seed = config["final"]["seeds"][0]
    assert config["final"]["ablation_variants"] == ["baseline_ocr"]
    assert config["final"]["other_variants"] == "fold_ensemble"
    retrained = [f"retrain/{steps}/seed{first_seed}/round1" for steps in ("none", "correction_pseudo")]
    ablated = {"average_folds", *retrained}
    expected = {("baseline_ocr", model) for model in ablated} | {("baseline", "average_folds")}
    assert evaluated == expected
    assert {job.rule for job in jobs} >= {"evaluate_base_general_ability", "summarize_ablation"}
    # Without final.general_data.held_out nothing is measured.
    config["final"]["general_data"]["held_out"] = None
    jobs = plan.planned_jobs(run_snakemake(tmp_path, config, "-n").stdout)
    assert not {"evaluate_general_ability", "evaluate_base_general_ability"} & {job.rule for job in jobs}
    assert "summarize_ablation" in {job.rule for job in jobs}
