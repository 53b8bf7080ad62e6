"""Multiple-choice accuracy from local files in the MMLU layout.

The layout of the MMLU release (Hendrycks et al., 2021) is used because many local
benchmark copies follow it: one CSV file per subject, ``<subject>_test.csv``, without a
header, each row ``question, A, B, C, D, answer`` where ``answer`` is the letter of the
correct choice. Scoring is the usual zero-shot one: the question and its four choices are
shown in the MMLU prompt, and the model's next-token logits after ``Answer:`` are compared
for the four letters (each as `` A``, `` B``, ...); the highest one is the model's choice.
No hub access: the files are read from disk.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ila.config import setting
from ila.errors import IlaError
from ila.progress import Progress

__all__ = ["LETTERS", "MCQuestion", "load_mc_questions", "mc_accuracy", "mc_prompt"]

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class MCQuestion:
    """One four-choice question; ``answer`` is an index into ``choices``."""

    subject: str
    question: str
    choices: tuple[str, str, str, str]
    answer: int
    source: str


def load_mc_questions(path: Path, *, limit: int | None = None) -> list[MCQuestion]:
    """Read MMLU-layout questions from a CSV file or a directory of ``*_test.csv`` files
    (falling back to every ``*.csv`` when none is named so), in sorted file order."""
    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("*_test.csv")) or sorted(path.glob("*.csv"))
        if not files:
            raise IlaError(
                setting("eval", "mc_data"), f" {path} holds no .csv file; pass MMLU-layout CSVs"
            )
    elif path.is_file():
        files = [path]
    else:
        raise IlaError(
            setting("eval", "mc_data"), f" {path} does not exist; pass a CSV file or a directory"
        )
    questions: list[MCQuestion] = []
    for file in files:
        subject = file.stem.removesuffix("_test")
        with file.open(newline="", encoding="utf-8") as handle:
            for line, row in enumerate(csv.reader(handle), start=1):
                where = f"{file}:{line}"
                if len(row) != 6:
                    raise IlaError(
                        f"{where}: expected 6 columns (question, A, B, C, D, answer), got "
                        f"{len(row)}; fix the row or pass MMLU-layout files"
                    )
                letter = row[5].strip().upper()
                if letter not in LETTERS:
                    raise IlaError(f"{where}: answer must be one of A, B, C, D, got {row[5]!r}")
                choices = (row[1], row[2], row[3], row[4])
                questions.append(MCQuestion(subject, row[0], choices, LETTERS.index(letter), where))
                if limit is not None and len(questions) >= limit:
                    return questions
    if not questions:
        raise IlaError(setting("eval", "mc_data"), f" {path} holds no question")
    return questions


def mc_prompt(question: MCQuestion) -> str:
    """The zero-shot MMLU prompt, ending in ``Answer:``."""
    subject = question.subject.replace("_", " ")
    lines = [
        f"The following are multiple choice questions (with answers) about {subject}.",
        "",
        question.question,
        *(f"{letter}. {choice}" for letter, choice in zip(LETTERS, question.choices, strict=True)),
        "Answer:",
    ]
    return "\n".join(lines)


@torch.inference_mode()
def mc_accuracy(
    model: Any, tokenizer: Any, questions: Sequence[MCQuestion], *, batch_size: int = 8
) -> dict[str, Any]:
    """Accuracy over ``questions`` (and per subject): the model's choice is the letter
    whose continuation `` A`` ... `` D`` has the highest log-likelihood after the prompt
    (prompt and continuation tokenized separately; for a tokenizer with single-token
    letters this is the highest next-token logit)."""
    letters = [tokenizer(" " + x, add_special_tokens=False)["input_ids"] for x in LETTERS]
    if any(not ids for ids in letters) or len({tuple(ids) for ids in letters}) < len(LETTERS):
        raise IlaError("the tokenizer does not encode the answer letters apart; cannot score")
    correct: dict[str, list[bool]] = defaultdict(list)
    was_training = model.training
    model.eval()
    try:
        with Progress("multiple choice", len(questions), unit="question") as progress:
            for start in range(0, len(questions), batch_size):
                chunk = questions[start : start + batch_size]
                choices = _choices(model, tokenizer, chunk, letters)
                for q, choice in zip(chunk, choices, strict=True):
                    correct[q.subject].append(choice == q.answer)
                progress.advance(len(chunk))
    finally:
        model.train(was_training)
    flat = [hit for hits in correct.values() for hit in hits]
    return {
        "accuracy": sum(flat) / len(flat),
        "questions": len(flat),
        "by_subject": {s: sum(h) / len(h) for s, h in sorted(correct.items())},
    }


def _choices(
    model: Any, tokenizer: Any, chunk: Sequence[MCQuestion], letters: list[list[int]]
) -> list[int]:
    """The model's choice (an index into the choices) for each question of one batch."""
    device = next(model.parameters()).device
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    pad = tokenizer.pad_token_id
    rows: list[tuple[list[int], int]] = []  # (ids, continuation start)
    for q in chunk:
        prompt = bos + tokenizer(mc_prompt(q), add_special_tokens=False)["input_ids"]
        rows.extend((prompt + cont, len(prompt)) for cont in letters)
    width = max(len(ids) for ids, _ in rows)
    ids = torch.tensor([r + [pad] * (width - len(r)) for r, _ in rows], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r, _ in rows], device=device)
    logprobs = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
    scores = [
        sum(float(logprobs[i, pos - 1, r[pos]]) for pos in range(begin, len(r)))
        for i, (r, begin) in enumerate(rows)
    ]
    choices = []
    for j in range(len(chunk)):
        options = scores[j * len(LETTERS) : (j + 1) * len(LETTERS)]
        choices.append(options.index(max(options)))
    return choices
