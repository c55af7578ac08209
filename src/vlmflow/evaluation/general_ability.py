"""General ability kept: a final model's exact-match accuracy on general records held out of every fit.

The recipe mixes general instruction data into the final fits so that the classifier keeps answering
ordinary requests. To see whether it did, each final model answers held-out general records (text only,
through its family's LLaMA-Factory template, greedily) whose answers are short enough to check exactly;
an answer counts when it equals the record's after NFKC normalisation, stripping and case-folding. The
retrained models train with the general data mixed in, the averaged fold model without it.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass

log = logging.getLogger(__name__)

# An answer longer than this, or of several lines, is free text that exact match cannot judge.
MAX_ANSWER_CHARS = 50
EXAMPLES = 5  # answers shown in general_metrics.json, to see what the model says
# New tokens beyond the longest expected answer: room to see what a wrong model says instead.
ANSWER_MARGIN_TOKENS = 8


class GeneralAbilityError(ValueError):
    """A held-out general record cannot measure general ability."""


@dataclass(frozen=True)
class HeldOutQuestion:
    """A held-out record as a question: its turns through the last user turn, and the answer to check."""

    position: int  # in the held-out file, to name it
    messages: tuple[dict, ...]
    system: str | None
    answer: str

    @property
    def question(self) -> str:
        return self.messages[-1]["content"]


def _shown(text: str) -> str:
    return repr(text if len(text) <= 60 else text[:57] + "...")


def held_out_questions(records: list[dict]) -> list[HeldOutQuestion]:
    """The held-out chat records (``general_data.read_general_records``) as questions; a record whose answer
    cannot be checked exactly (empty, several lines, longer than ``MAX_ANSWER_CHARS``) fails, named."""
    if not records:
        raise GeneralAbilityError("the held-out general file has no records: there is nothing to measure")
    questions = []
    for position, record in enumerate(records):
        *turns, last = record["messages"]
        answer = last["content"].strip()
        if not answer or "\n" in answer or len(answer) > MAX_ANSWER_CHARS:
            raise GeneralAbilityError(
                f"held-out general record {position} ({_shown(turns[-1]['content'])}): its answer "
                f"{_shown(last['content'])} cannot be checked exactly; held-out answers must be one non-empty line "
                f"of at most {MAX_ANSWER_CHARS} characters"
            )
        questions.append(HeldOutQuestion(position, tuple(turns), record.get("system"), answer))
    return questions


def check_never_mixed(questions: list[HeldOutQuestion], mixed_records: list[dict]) -> None:
    """Fail naming the held-out records whose question is also in the general data mixed into training."""
    trained = {tuple((turn["role"], turn["content"]) for turn in record["messages"][:-1]) for record in mixed_records}
    leaked = [q.position for q in questions if tuple((t["role"], t["content"]) for t in q.messages) in trained]
    if leaked:
        raise GeneralAbilityError(
            f"held-out general records {leaked} are also in the general data mixed into training "
            "(final.general_data.path): a held-out record must never be trained on"
        )


def normalized(text: str) -> str:
    """What exact match compares: NFKC (full-width digits and commas as ASCII), stripped, case-folded."""
    return unicodedata.normalize("NFKC", text).strip().casefold()


def general_metrics(questions: list[HeldOutQuestion], answers: list[str]) -> dict:
    """n, correct and exact-match accuracy of ``answers`` to ``questions``, with the first answers as examples."""
    if len(answers) != len(questions):
        raise GeneralAbilityError(f"{len(answers)} answers to {len(questions)} held-out questions")
    right = [normalized(answer) == normalized(q.answer) for q, answer in zip(questions, answers, strict=True)]
    return {
        "n": len(questions),
        "correct": sum(right),
        "accuracy": sum(right) / len(questions),
        "examples": [
            {"question": q.question, "expected": q.answer, "answer": answer, "correct": ok}
            for q, answer, ok in list(zip(questions, answers, right, strict=True))[:EXAMPLES]
        ],
    }


def answer_questions(
    model_dir: str,
    questions: list[HeldOutQuestion],
    *,
    batch_size: int | None,
    device: str = "cpu",
    threads: int | None = None,
) -> list[str]:
    """Greedy answers of the model in ``model_dir`` (a saved model, a LoRA adapter or a hub id), in batches of
    ``batch_size`` (score.batch_size; ``None``: what the card holds, ``Scorer.batch_size_for``)."""
    from vlmflow.model.encoding import ChatRequest, in_batches  # torch: only the jobs that generate load it
    from vlmflow.model.scoring import load_scorer

    scorer = load_scorer(model_dir, device=device, num_threads=threads)
    longest = max(len(scorer.encoder.text_ids(q.answer)) for q in questions)
    if batch_size is None:
        chat_tokens = max(
            len(scorer.encoder.chat_prompt_ids(ChatRequest(list(q.messages), q.system))) for q in questions
        )
        batch_size = scorer.batch_size_for(chat_tokens + longest + ANSWER_MARGIN_TOKENS, labels=0)
    return in_batches(
        questions,
        batch_size,
        lambda batch: scorer.generate_chats(
            [ChatRequest(list(q.messages), q.system) for q in batch], max_new_tokens=longest + ANSWER_MARGIN_TOKENS
        ),
        too_large=lambda question: (
            f"CUDA ran out of memory answering one held-out general question ({_shown(question.question)}): free the"
            " card of other processes or answer on a card with more memory"
        ),
        doing=("answering", "answered", "held-out general questions"),
        log_every=1,
    )
