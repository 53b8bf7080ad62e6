"""The embedded default dataset "ila-instruct": generated instruction tasks.

No instruction dataset can be downloaded where this project is built and tested, so the
default data is generated here, deterministically, and shipped as
``ila/resources/ila_instruct.jsonl`` by ``scripts/generate_data.py``; the generators live
here, beside it, because nothing in the package runs them.
It is small single-turn alignment data in the ILA sense (learning to follow instructions
in one consistent response style) with short answers that exact match can check.

Every response is one sentence of working, then a final line ``Answer: <answer>``;
:func:`ila.evaluation.metrics.extract_answer` reads the answer back from a response or a
generation.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ila.files import atomic_write_text

__all__ = ["TASKS", "generate_balanced", "generate_ila_instruct", "write_jsonl"]

# Common words of 5-6 letters, single tokens or two for most tokenizers.
_WORD_TEXT = (
    "apple garden planet river window yellow silver market pencil rocket butter forest "
    "candle dragon bridge orange summer winter travel number letter castle island basket "
    "guitar monkey jacket kitten ladder mirror needle pepper rabbit tunnel velvet wallet "
    "anchor bottle cactus dinner engine flower hammer insect jungle lemon magnet puzzle "
    "ribbon spider tomato violin walrus harbor cloud stone light music paper table chair "
    "house green water bread sugar horse tiger zebra piano ocean smile train glass"
)
_WORDS = tuple(_WORD_TEXT.split())
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
# (one unit, many of it, the smaller unit, factor): "How many {to} are in {n} {from}?"
_UNITS = (
    ("kilometer", "kilometers", "meters", 1000),
    ("meter", "meters", "centimeters", 100),
    ("kilogram", "kilograms", "grams", 1000),
    ("hour", "hours", "minutes", 60),
    ("minute", "minutes", "seconds", 60),
    ("day", "days", "hours", 24),
    ("week", "weeks", "days", 7),
    ("liter", "liters", "milliliters", 1000),
    ("foot", "feet", "inches", 12),
    ("year", "years", "months", 12),
)
_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "You are a careful assistant. Show one line of working, then the answer.",
    "Answer briefly and accurately.",
)
_SYSTEM_FRACTION = 0.2  # a fifth of the examples carry a system message, for variety

Task = Callable[[random.Random], tuple[str, str, str]]  # rng -> (question, working, answer)


def _numbers(rng: random.Random, most: int = 5) -> list[int]:
    return rng.sample(range(1, 100), rng.randint(3, most))


def _join(items: Iterable[Any]) -> str:
    return ", ".join(str(item) for item in items)


def _addition(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    q = rng.choice(
        ("What is {a} + {b}?", "Add {a} and {b}.", "Compute the sum of {a} and {b}.")
    ).format(a=a, b=b)
    return q, f"{a} plus {b} equals {a + b}.", str(a + b)


def _subtraction(rng: random.Random) -> tuple[str, str, str]:
    b = rng.randint(1, 60)
    a = b + rng.randint(1, 60)
    q = rng.choice(
        ("What is {a} - {b}?", "Subtract {b} from {a}.", "How much is {a} minus {b}?")
    ).format(a=a, b=b)
    return q, f"{a} minus {b} equals {a - b}.", str(a - b)


def _multiplication(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.randint(2, 12), rng.randint(2, 20)
    q = rng.choice(
        ("What is {a} x {b}?", "Multiply {a} by {b}.", "What is the product of {a} and {b}?")
    ).format(a=a, b=b)
    return q, f"{a} times {b} equals {a * b}.", str(a * b)


def _compare(rng: random.Random) -> tuple[str, str, str]:
    a, b = rng.sample(range(1, 1000), 2)
    big, small = max(a, b), min(a, b)
    if rng.random() < 0.5:
        q = rng.choice(("Which number is larger, {a} or {b}?", "Which is bigger: {a} or {b}?"))
        return q.format(a=a, b=b), f"{big} is greater than {small}.", str(big)
    q = rng.choice(("Which number is smaller, {a} or {b}?", "Which is less: {a} or {b}?"))
    return q.format(a=a, b=b), f"{small} is less than {big}.", str(small)


def _reverse_word(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(_WORDS)
    q = rng.choice(
        ("Reverse the word '{w}'.", "Write '{w}' backwards.", "Spell '{w}' in reverse order.")
    ).format(w=w)
    return q, f"Reading '{w}' from the last letter to the first gives '{w[::-1]}'.", w[::-1]


def _sort_numbers(rng: random.Random) -> tuple[str, str, str]:
    nums = _numbers(rng, most=4)  # the sorted list is written twice: keep it short
    if rng.random() < 0.7:
        q = rng.choice(
            ("Sort these numbers from smallest to largest: {l}.", "Put {l} in ascending order.")
        )
        ordered, how = sorted(nums), "ascending"
    else:
        q = rng.choice(
            ("Sort these numbers from largest to smallest: {l}.", "Put {l} in descending order.")
        )
        ordered, how = sorted(nums, reverse=True), "descending"
    return q.format(l=_join(nums)), f"In {how} order: {_join(ordered)}.", _join(ordered)


def _count_letters(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(_WORDS)
    q = rng.choice(
        ("How many letters are in the word '{w}'?", "Count the letters in '{w}'.")
    ).format(w=w)
    return q, f"'{w}' is spelled {'-'.join(w)}, which is {len(w)} letters.", str(len(w))


def _count_vowels(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(_WORDS)
    vowels = [c for c in w if c in "aeiou"]
    q = rng.choice(("How many vowels are in the word '{w}'?", "Count the vowels in '{w}'.")).format(
        w=w
    )
    return (
        q,
        f"The vowels in '{w}' are {_join(vowels)}, so there are {len(vowels)}.",
        str(len(vowels)),
    )


def _count_words(rng: random.Random) -> tuple[str, str, str]:
    words = rng.sample(_WORDS, rng.randint(3, 7))
    s = " ".join(words)
    q = rng.choice(("How many words are in '{s}'?", "Count the words in the phrase '{s}'."))
    return (
        q.format(s=s),
        f"The words are {_join(words)}, so there are {len(words)}.",
        str(len(words)),
    )


def _uppercase(rng: random.Random) -> tuple[str, str, str]:
    w = " ".join(rng.sample(_WORDS, rng.randint(1, 2)))
    q = rng.choice(("Write '{w}' in uppercase.", "Convert '{w}' to capital letters.")).format(w=w)
    return q, f"In uppercase, '{w}' becomes '{w.upper()}'.", w.upper()


def _lowercase(rng: random.Random) -> tuple[str, str, str]:
    w = " ".join(rng.sample(_WORDS, rng.randint(1, 2)))
    shown = w.upper() if rng.random() < 0.5 else w.title()
    q = rng.choice(("Write '{w}' in lowercase.", "Convert '{w}' to small letters.")).format(w=shown)
    return q, f"In lowercase, '{shown}' becomes '{w}'.", w


def _next_in_sequence(rng: random.Random) -> tuple[str, str, str]:
    if rng.random() < 0.75:
        start, step = rng.randint(1, 20), rng.randint(2, 9)
        seq = [start + step * i for i in range(5)]
        working = f"Each number is {step} more than the one before, so the next is {seq[-1]}."
    else:
        start, factor = rng.randint(1, 5), rng.choice((2, 3))
        seq = [start * factor**i for i in range(5)]
        working = f"Each number is {factor} times the one before, so the next is {seq[-1]}."
    q = rng.choice(
        ("What number comes next: {l}, ...?", "Continue the sequence {l} with one more number.")
    ).format(l=_join(seq[:4]))
    return q, working, str(seq[-1])


def _unit_conversion(rng: random.Random) -> tuple[str, str, str]:
    one, src, dst, factor = rng.choice(_UNITS)
    n = rng.randint(2, 20)
    q = rng.choice(("How many {d} are in {n} {s}?", "Convert {n} {s} to {d}.")).format(
        n=n, s=src, d=dst
    )
    return q, f"One {one} is {factor} {dst}, so {n} {src} is {n * factor} {dst}.", str(n * factor)


def _weekday(rng: random.Random) -> tuple[str, str, str]:
    day, k = rng.randrange(7), rng.randint(1, 20)
    if rng.random() < 0.7:
        q = rng.choice(
            (
                "If today is {d}, what day will it be in {k} days?",
                "What day of the week is {k} days after {d}?",
            )
        )
        result, direction = _DAYS[(day + k) % 7], "forward"
    else:
        q = rng.choice(("If today is {d}, what day was it {k} days ago?",))
        result, direction = _DAYS[(day - k) % 7], "back"
    working = f"Counting {k} days {direction} from {_DAYS[day]} lands on {result}."
    return q.format(d=_DAYS[day], k=k), working, result


def _acronym(rng: random.Random) -> tuple[str, str, str]:
    words = rng.sample(_WORDS, rng.randint(2, 4))
    phrase = " ".join(words)
    letters = "".join(w[0] for w in words).upper()
    q = rng.choice(
        ("Make an acronym from '{p}'.", "What acronym do the first letters of '{p}' form?")
    ).format(p=phrase)
    return q, f"The first letters of '{phrase}' are {_join(letters)}.", letters


def _parity(rng: random.Random) -> tuple[str, str, str]:
    n = rng.randint(1, 999)
    kind = "even" if n % 2 == 0 else "odd"
    q = rng.choice(("Is {n} odd or even?", "Tell me whether {n} is even or odd.")).format(n=n)
    return q, f"{n} divided by 2 leaves a remainder of {n % 2}, so it is {kind}.", kind


def _list_extreme(rng: random.Random) -> tuple[str, str, str]:
    nums = _numbers(rng)
    if rng.random() < 0.5:
        q = rng.choice(("What is the largest number in {l}?", "Find the maximum of {l}."))
        return (
            q.format(l=_join(nums)),
            f"Comparing them, the largest is {max(nums)}.",
            str(max(nums)),
        )
    q = rng.choice(("What is the smallest number in {l}?", "Find the minimum of {l}."))
    return q.format(l=_join(nums)), f"Comparing them, the smallest is {min(nums)}.", str(min(nums))


def _end_letter(rng: random.Random) -> tuple[str, str, str]:
    w = rng.choice(_WORDS)
    if rng.random() < 0.5:
        q = rng.choice(
            ("What is the first letter of '{w}'?", "Which letter does '{w}' start with?")
        )
        return q.format(w=w), f"'{w}' starts with '{w[0]}'.", w[0]
    q = rng.choice(("What is the last letter of '{w}'?", "Which letter does '{w}' end with?"))
    return q.format(w=w), f"'{w}' ends with '{w[-1]}'.", w[-1]


def _alphabetical(rng: random.Random) -> tuple[str, str, str]:
    words = rng.sample(_WORDS, rng.randint(3, 4))
    q = rng.choice(
        ("Sort these words alphabetically: {l}.", "Put these words in alphabetical order: {l}.")
    ).format(l=_join(words))
    ordered = _join(sorted(words))
    return q, f"In alphabetical order the words are {ordered}.", ordered


TASKS: dict[str, Task] = {
    "addition": _addition,
    "subtraction": _subtraction,
    "multiplication": _multiplication,
    "compare_numbers": _compare,
    "reverse_word": _reverse_word,
    "sort_numbers": _sort_numbers,
    "count_letters": _count_letters,
    "count_vowels": _count_vowels,
    "count_words": _count_words,
    "uppercase": _uppercase,
    "lowercase": _lowercase,
    "next_in_sequence": _next_in_sequence,
    "unit_conversion": _unit_conversion,
    "weekday": _weekday,
    "acronym": _acronym,
    "odd_even": _parity,
    "list_max_min": _list_extreme,
    "first_last_letter": _end_letter,
    "alphabetical_order": _alphabetical,
}


def generate_ila_instruct(num_examples: int = 1200, seed: int = 0) -> list[dict[str, Any]]:
    """Generate ``num_examples`` distinct records in "messages" format.

    Each record is ``{"messages": [...], "answer": str, "task": str}``; tasks take turns
    (so each of the :data:`TASKS` gets an equal share) and the records are then shuffled.
    Only ``random.Random(seed)`` is used, so the output depends on the arguments alone.
    """
    return generate_balanced(TASKS, num_examples, seed, system_prompts=_SYSTEM_PROMPTS)


def generate_balanced(
    tasks: Mapping[str, Task],
    num_examples: int,
    seed: int,
    *,
    system_prompts: Sequence[str],
    system_fraction: float = _SYSTEM_FRACTION,
) -> list[dict[str, Any]]:
    """Records from ``tasks`` taking turns, distinct questions, shuffled; the generation
    loop shared by the embedded datasets.

    Each task draws ``(question, working, answer)`` from the generator; the response is
    the working, then a final line ``Answer: <answer>``. A ``system_fraction`` of the
    records open with one of ``system_prompts``.
    """
    if num_examples < 1:
        raise ValueError(f"num_examples must be >= 1, got {num_examples}")
    rng = random.Random(seed)
    names = list(tasks)
    records: list[dict[str, Any]] = []
    seen: set[str] = set()
    attempts = 0
    while len(records) < num_examples:
        attempts += 1
        if attempts > 100 * num_examples:
            raise ValueError(f"cannot generate {num_examples} distinct examples")
        name = names[len(records) % len(names)]
        question, working, answer = tasks[name](rng)
        if question in seen:
            continue
        seen.add(question)
        messages = []
        if rng.random() < system_fraction:
            messages.append({"role": "system", "content": rng.choice(system_prompts)})
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": f"{working}\nAnswer: {answer}"})
        records.append({"messages": messages, "answer": answer, "task": name})
    rng.shuffle(records)
    return records


def write_jsonl(records: Iterable[dict[str, Any]], path: Path | str) -> None:
    """Write records one JSON object per line (sorted keys, UTF-8), atomically."""
    lines = [json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records]
    atomic_write_text(Path(path), "".join(lines))
