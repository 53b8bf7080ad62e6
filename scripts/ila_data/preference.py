"""The embedded preference data, ``ila-preference``: ila-instruct tasks answered twice.

Each pair is one ila-instruct record (ila_data.instruct): the prompt, its correct response
(chosen), and the same response with a plausible wrong answer (rejected), so that an
evaluation can check which answer a model prefers. The wrong answer is a near miss for a
number (off by 1 to 3) and otherwise the answer of another record of the same task (the
right kind of answer, for another question); the working line states it too, so the
rejected response is wrong and consistent rather than self-contradictory. Generated from
``random.Random(seed)`` alone (``scripts/generate_data.py --dataset preference``).
"""

from __future__ import annotations

import random
import re
from collections import defaultdict
from typing import Any

from ila_data.instruct import generate_ila_instruct

__all__ = ["generate_ila_preference", "wrong_answer"]

_INTEGER = re.compile(r"-?\d+")


def generate_ila_preference(num_pairs: int = 1200, seed: int = 0) -> list[dict[str, Any]]:
    """``num_pairs`` records ``{"prompt", "chosen", "rejected", "answer", "task"}`` in TRL's
    conversational layout (prompt: messages; chosen/rejected: one assistant message)."""
    records = generate_ila_instruct(num_pairs, seed)
    rng = random.Random(seed + 1)
    answers_by_task: dict[str, list[str]] = defaultdict(list)
    for record in records:
        answers_by_task[record["task"]].append(record["answer"])
    pairs = []
    for record in records:
        *prompt, reply = record["messages"]
        answer = record["answer"]
        wrong = wrong_answer(answer, answers_by_task[record["task"]], rng)
        working, _, _ = reply["content"].rpartition("\nAnswer: ")
        head, found, tail = working.rpartition(answer)
        wrong_working = head + wrong + tail if found else working
        pairs.append(
            {
                "prompt": prompt,
                "chosen": [reply],
                "rejected": [{"role": "assistant", "content": f"{wrong_working}\nAnswer: {wrong}"}],
                "answer": answer,
                "task": record["task"],
            }
        )
    return pairs


def wrong_answer(answer: str, same_task: list[str], rng: random.Random) -> str:
    """A plausible wrong answer: a near miss for an integer, else another record's answer
    of the same task (never ``answer`` itself)."""
    if _INTEGER.fullmatch(answer):
        offset = rng.choice([-3, -2, -1, 1, 2, 3])
        value = int(answer) + offset
        if value < 0 <= int(answer):
            value = int(answer) + abs(offset)
        return str(value)
    others = sorted({a for a in same_task if a != answer})
    if not others:
        raise ValueError(f"no other answer of this task to use as a wrong one for {answer!r}")
    return rng.choice(others)
