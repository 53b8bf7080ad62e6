"""The generated reasoning dataset "ila-reasoning": multi-step arithmetic word problems.

The paper compares layer rankings learned on alignment data with rankings learned on
reasoning data (docs/method.md, "The idea", use 3: ~86% overlap between two reasoning
datasets). No reasoning dataset can be downloaded where this project is built, so a small
one is generated here, deterministically, and shipped as
``ila/resources/ila_reasoning.jsonl`` (regenerate it with ``scripts/generate_data.py``).

Each problem takes 2-4 arithmetic steps (shopping with change, rate times time, sharing
with remainders, percentages, ages, unit conversions with sums, savings). The response is
a worked solution, one step a line, each step showing its computation as ``a op b = c``
(``op`` one of ``+ - x /``; a division with a remainder reads ``a / b = q remainder r``),
then a final line ``Answer: <integer>`` that :func:`ila.evaluation.metrics.extract_answer`
reads back. Every intermediate value is a non-negative integer computed here in Python.
Records have the layout of ``ila_instruct.jsonl``: ``{"messages", "answer", "task"}``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any

from ila_data.instruct import generate_balanced

__all__ = ["CONSTANTS", "KINDS", "generate_ila_reasoning"]

_NAME_TEXT = (
    "Ava Ben Chloe Diego Emma Farid Grace Hana Ivan Julia Kofi Lena Mateo Nina Omar Priya "
    "Quinn Rosa Sam Tara Uma Victor Wen Yusuf Zoe"
)
_NAMES = tuple(_NAME_TEXT.split())
# (singular, plural) of things one buys, makes or shares.
_ITEMS = (
    ("notebook", "notebooks"),
    ("pen", "pens"),
    ("apple", "apples"),
    ("sandwich", "sandwiches"),
    ("ticket", "tickets"),
    ("candle", "candles"),
    ("mug", "mugs"),
    ("toy car", "toy cars"),
    ("plant", "plants"),
    ("scarf", "scarves"),
    ("book", "books"),
    ("puzzle", "puzzles"),
)
_SMALL_THINGS = ("marbles", "stickers", "cookies", "cards", "beads", "stamps", "muffins", "eggs")
_VEHICLES = ("train", "bus", "car", "truck", "boat")
_BILLS = (20, 50, 100, 200)
_PERCENTS = (10, 20, 25, 30, 40, 50, 60, 75, 80)
# Numbers a solution may use that its question does not state: conversion factors, the
# 100 of a percentage, and the 1 of "one more box".
CONSTANTS = frozenset({1, 60, 100, 1000})
_SYSTEM_PROMPTS = (
    "You are a helpful assistant.",
    "Solve the problem step by step, then give the answer.",
    "Show your working one step per line and end with the answer.",
)


class _Work:
    """The lines of a worked solution; each step computes and writes ``a op b = c``."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def step(self, label: str, a: int, op: str, b: int) -> int:
        if op == "+":
            c = a + b
        elif op == "-":
            c = a - b
        elif op == "x":
            c = a * b
        elif op == "/" and b > 0 and a % b == 0:
            c = a // b
        else:
            raise ValueError(f"bad step {a} {op} {b}")
        if c < 0:
            raise ValueError(f"negative step {a} {op} {b} = {c}")
        self.lines.append(f"{label}: {a} {op} {b} = {c}")
        return c

    def divide(self, label: str, a: int, b: int) -> tuple[int, int]:
        q, r = divmod(a, b)
        self.lines.append(f"{label}: {a} / {b} = {q} remainder {r}")
        return q, r


Problem = tuple[str, _Work, int]  # (question, worked solution, answer)
Template = Callable[[random.Random], Problem]


def _a(noun: str) -> str:
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _percent_base(rng: random.Random, percent: int, low: int, high: int) -> int:
    """A number in [low, high] whose ``percent``% is a whole number."""
    step = 100 // math.gcd(percent, 100)
    return step * rng.randint(-(-low // step), high // step)


# --- shopping with change -------------------------------------------------------------


def _shop_two_items(rng: random.Random) -> Problem:
    name = rng.choice(_NAMES)
    (_, first), (_, second) = rng.sample(_ITEMS, 2)
    n1, p1, n2, p2 = rng.randint(2, 6), rng.randint(2, 15), rng.randint(2, 6), rng.randint(2, 15)
    bill = next(b for b in _BILLS if b > n1 * p1 + n2 * p2)
    q = (
        f"{name} buys {n1} {first} at {p1} dollars each and {n2} {second} at {p2} dollars "
        f"each, and pays with a {bill}-dollar bill. How much change does {name} get?"
    )
    w = _Work()
    c1 = w.step(f"Cost of the {first}", n1, "x", p1)
    c2 = w.step(f"Cost of the {second}", n2, "x", p2)
    total = w.step("Total cost", c1, "+", c2)
    return q, w, w.step("Change", bill, "-", total)


def _shop_one_extra(rng: random.Random) -> Problem:
    name = rng.choice(_NAMES)
    (_, many), (one, _) = rng.sample(_ITEMS, 2)
    n, price, extra = rng.randint(2, 9), rng.randint(3, 12), rng.randint(5, 30)
    paid = next(b for b in _BILLS if b > n * price + extra)
    q = (
        f"At the market, {name} picks up {n} {many} costing {price} dollars apiece and one "
        f"{one} for {extra} dollars. {name} hands over {paid} dollars. What change comes back?"
    )
    w = _Work()
    cost = w.step(f"The {many}", n, "x", price)
    total = w.step(f"Adding the {one}", cost, "+", extra)
    return q, w, w.step("Change", paid, "-", total)


def _shop_budget(rng: random.Random) -> Problem:
    name = rng.choice(_NAMES)
    _, many = rng.choice(_ITEMS)
    n, price = rng.randint(2, 12), rng.randint(2, 20)
    money = n * price + rng.randint(1, 60)
    q = (
        f"{name} has {money} dollars and buys {n} {many} for {price} dollars each. "
        f"How many dollars does {name} have left?"
    )
    w = _Work()
    cost = w.step("Spent", n, "x", price)
    return q, w, w.step("Left", money, "-", cost)


# --- rate x time ----------------------------------------------------------------------


def _two_legs(rng: random.Random) -> Problem:
    vehicle = rng.choice(_VEHICLES)
    s1, t1, s2, t2 = rng.randint(30, 90), rng.randint(2, 5), rng.randint(30, 90), rng.randint(1, 4)
    q = (
        f"A {vehicle} travels at {s1} kilometers per hour for {t1} hours, then at {s2} "
        f"kilometers per hour for {t2} hours. How many kilometers does it travel in total?"
    )
    w = _Work()
    d1 = w.step("First part", s1, "x", t1)
    d2 = w.step("Second part", s2, "x", t2)
    return q, w, w.step("Total distance", d1, "+", d2)


def _work_days(rng: random.Random) -> Problem:
    name, things = rng.choice(_NAMES), rng.choice(_SMALL_THINGS)
    rate, hours, days = rng.randint(3, 15), rng.randint(2, 8), rng.randint(2, 6)
    q = (
        f"{name} makes {rate} {things} an hour and works {hours} hours a day. "
        f"How many {things} does {name} make in {days} days?"
    )
    w = _Work()
    per_day = w.step("Per day", rate, "x", hours)
    return q, w, w.step("Over the days", per_day, "x", days)


def _pump(rng: random.Random) -> Problem:
    rate, hours, minutes = rng.randint(2, 12), rng.randint(1, 3), rng.randint(5, 55)
    q = (
        f"A pump moves {rate} liters of water per minute. How many liters does it move in "
        f"{_count(hours, 'hour', 'hours')} and {minutes} minutes?"
    )
    w = _Work()
    whole = w.step("Minutes in the hours", hours, "x", 60)
    total = w.step("All minutes", whole, "+", minutes)
    return q, w, w.step("Liters", total, "x", rate)


# --- sharing with remainders ----------------------------------------------------------


def _share_bags(rng: random.Random) -> Problem:
    name, things = rng.choice(_NAMES), rng.choice(_SMALL_THINGS)
    bags, per_bag = rng.randint(2, 9), rng.randint(6, 25)
    # A remainder is kept, so that "each" and "left over" differ.
    friends = rng.choice([f for f in range(3, 10) if bags * per_bag % f])
    ask_left = rng.random() < 0.5
    ending = (
        f"How many {things} are left over?"
        if ask_left
        else f"How many {things} does each friend get?"
    )
    q = (
        f"{name} has {bags} bags with {per_bag} {things} in each and shares them equally "
        f"among {friends} friends. {ending}"
    )
    w = _Work()
    total = w.step("All together", bags, "x", per_bag)
    each, left = w.divide("Shared out", total, friends)
    return q, w, left if ask_left else each


def _pack_boxes(rng: random.Random) -> Problem:
    things = rng.choice(_SMALL_THINGS)
    trays, per_tray = rng.randint(2, 8), rng.randint(8, 24)
    box = rng.choice([b for b in range(4, 13) if trays * per_tray % b])  # a part-full box
    q = (
        f"A bakery fills {trays} trays with {per_tray} {things} each and packs them in boxes "
        f"of {box}. How many boxes are needed to pack all the {things}?"
    )
    w = _Work()
    total = w.step("All together", trays, "x", per_tray)
    full, _ = w.divide("Full boxes", total, box)
    return q, w, w.step("One more box for the rest", full, "+", 1)


def _rows_after_gift(rng: random.Random) -> Problem:
    name, things = rng.choice(_NAMES), rng.choice(_SMALL_THINGS)
    have, given, row = rng.randint(40, 150), rng.randint(5, 30), rng.randint(4, 9)
    q = (
        f"{name} had {have} {things} and gave {given} to a neighbour. The rest are laid out "
        f"in rows of {row}. How many full rows are there?"
    )
    w = _Work()
    rest = w.step("Left", have, "-", given)
    rows, _ = w.divide("Rows", rest, row)
    return q, w, rows


# --- percentages ----------------------------------------------------------------------


def _sale_price(rng: random.Random) -> Problem:
    one, _ = rng.choice(_ITEMS)
    percent = rng.choice(_PERCENTS)
    price = _percent_base(rng, percent, 20, 400)
    q = (
        f"{_a(one).capitalize()} costs {price} dollars and is sold at {percent}% off. "
        f"What is the sale price in dollars?"
    )
    w = _Work()
    scaled = w.step("Price times percent", price, "x", percent)
    off = w.step("Discount", scaled, "/", 100)
    return q, w, w.step("Sale price", price, "-", off)


def _share_of_group(rng: random.Random) -> Problem:
    percent = rng.choice(_PERCENTS)
    people = _percent_base(rng, percent, 40, 800)
    q = (
        f"A school has {people} students and {percent}% of them walk to school. "
        f"How many students do not walk?"
    )
    w = _Work()
    scaled = w.step("Students times percent", people, "x", percent)
    walk = w.step("Walkers", scaled, "/", 100)
    return q, w, w.step("Not walking", people, "-", walk)


def _savings_rate(rng: random.Random) -> Problem:
    name, percent = rng.choice(_NAMES), rng.choice(_PERCENTS[:5])
    pay, months = _percent_base(rng, percent, 200, 3000), rng.randint(2, 12)
    q = (
        f"{name} earns {pay} dollars a month and saves {percent}% of it. "
        f"How many dollars does {name} save in {months} months?"
    )
    w = _Work()
    scaled = w.step("Pay times percent", pay, "x", percent)
    monthly = w.step("Saved each month", scaled, "/", 100)
    return q, w, w.step("Over the months", monthly, "x", months)


# --- ages -----------------------------------------------------------------------------


def _ages_sum(rng: random.Random) -> Problem:
    a, b, c = rng.sample(_NAMES, 3)
    age, times = rng.randint(3, 15), rng.randint(2, 4)
    younger = rng.randint(1, age * times - 1)
    q = (
        f"{a} is {age} years old. {b} is {times} times as old as {a}, and {c} is {younger} "
        f"years younger than {b}. What is the sum of their three ages?"
    )
    w = _Work()
    age_b = w.step(f"{b}'s age", age, "x", times)
    age_c = w.step(f"{c}'s age", age_b, "-", younger)
    two = w.step(f"{a} and {b}", age, "+", age_b)
    return q, w, w.step("All three", two, "+", age_c)


def _ages_future(rng: random.Random) -> Problem:
    a, b = rng.sample(_NAMES, 2)
    age, older, years = rng.randint(4, 30), rng.randint(2, 25), rng.randint(2, 15)
    q = (
        f"{a} is {age} years old and {b} is {older} years older. In {years} years, what "
        f"will the sum of their ages be?"
    )
    w = _Work()
    age_b = w.step(f"{b}'s age now", age, "+", older)
    later_a = w.step(f"{a} then", age, "+", years)
    later_b = w.step(f"{b} then", age_b, "+", years)
    return q, w, w.step("Sum then", later_a, "+", later_b)


def _ages_parent(rng: random.Random) -> Problem:
    a = rng.choice(_NAMES)
    age, years, times = rng.randint(4, 14), rng.randint(2, 9), rng.randint(3, 5)
    q = (
        f"In {years} years, {a} will be {age + years} years old. {a}'s mother is {times} "
        f"times as old as {a} is now. How old is the mother?"
    )
    w = _Work()
    now = w.step(f"{a}'s age now", age + years, "-", years)
    return q, w, w.step("Mother's age", now, "x", times)


# --- unit conversions with sums -------------------------------------------------------


def _walk_meters(rng: random.Random) -> Problem:
    name = rng.choice(_NAMES)
    km, m1, m2 = rng.randint(1, 9), rng.randint(50, 950), rng.randint(100, 2500)
    q = (
        f"{name} walks {_count(km, 'kilometer', 'kilometers')} and {m1} meters in the morning "
        f"and {m2} meters in the evening. How many meters does {name} walk in all?"
    )
    w = _Work()
    base = w.step("Kilometers in meters", km, "x", 1000)
    morning = w.step("Morning", base, "+", m1)
    return q, w, w.step("Whole day", morning, "+", m2)


def _movie_minutes(rng: random.Random) -> Problem:
    hours, minutes, extra = rng.randint(1, 3), rng.randint(5, 55), rng.randint(5, 30)
    q = (
        f"A film lasts {_count(hours, 'hour', 'hours')} and {minutes} minutes, and the adverts "
        f"before it take {extra} minutes. How many minutes is the whole showing?"
    )
    w = _Work()
    whole = w.step("Hours in minutes", hours, "x", 60)
    film = w.step("Film", whole, "+", minutes)
    return q, w, w.step("Whole showing", film, "+", extra)


def _flour_left(rng: random.Random) -> Problem:
    name, kilos = rng.choice(_NAMES), rng.randint(2, 9)
    per_loaf = rng.randint(15, 60) * 10
    loaves = rng.randint(1, kilos * 1000 // per_loaf)
    q = (
        f"{name} has {kilos} kilograms of flour and uses {per_loaf} grams for each loaf. "
        f"After baking {_count(loaves, 'loaf', 'loaves')}, how many grams of flour are left?"
    )
    w = _Work()
    grams = w.step("Flour in grams", kilos, "x", 1000)
    used = w.step("Used", loaves, "x", per_loaf)
    return q, w, w.step("Left", grams, "-", used)


# --- saving and spending --------------------------------------------------------------


def _weekly_savings(rng: random.Random) -> Problem:
    name, (one, _) = rng.choice(_NAMES), rng.choice(_ITEMS)
    start, weekly, weeks = rng.randint(5, 80), rng.randint(3, 25), rng.randint(2, 12)
    spend = rng.randint(1, start + weekly * weeks)
    q = (
        f"{name} has {start} dollars saved and adds {weekly} dollars every week. After "
        f"{weeks} weeks, {name} spends {spend} dollars on {_a(one)}. How many dollars are left?"
    )
    w = _Work()
    added = w.step("Added", weekly, "x", weeks)
    saved = w.step("Saved", start, "+", added)
    return q, w, w.step("Left", saved, "-", spend)


def _wages_bill(rng: random.Random) -> Problem:
    name = rng.choice(_NAMES)
    rate, hours, days = rng.randint(8, 30), rng.randint(2, 8), rng.randint(2, 6)
    bill = rng.randint(10, rate * hours * days - 1)
    q = (
        f"{name} earns {rate} dollars an hour and works {hours} hours on each of {days} days, "
        f"then pays a {bill}-dollar bill. How many dollars does {name} have left?"
    )
    w = _Work()
    daily = w.step("Each day", rate, "x", hours)
    earned = w.step("Earned", daily, "x", days)
    return q, w, w.step("Left", earned, "-", bill)


KINDS: dict[str, tuple[Template, ...]] = {
    "shopping_change": (_shop_two_items, _shop_one_extra, _shop_budget),
    "rate_time": (_two_legs, _work_days, _pump),
    "sharing_remainder": (_share_bags, _pack_boxes, _rows_after_gift),
    "percentage": (_sale_price, _share_of_group, _savings_rate),
    "ages": (_ages_sum, _ages_future, _ages_parent),
    "unit_conversion_sum": (_walk_meters, _movie_minutes, _flour_left),
    "saving_spending": (_weekly_savings, _wages_bill),
}


def generate_ila_reasoning(num_examples: int = 1000, seed: int = 0) -> list[dict[str, Any]]:
    """Generate ``num_examples`` records with distinct questions in "messages" format.

    Each record is ``{"messages": [...], "answer": str, "task": str}``, ``task`` being a
    key of :data:`KINDS`; kinds take turns (an equal share each), the template of a kind
    is drawn at random, and the records are then shuffled. Only ``random.Random(seed)``
    is used, so the output depends on the arguments alone.
    """

    def draw(kind: str) -> Callable[[random.Random], tuple[str, str, str]]:
        def one(rng: random.Random) -> tuple[str, str, str]:
            question, work, answer = rng.choice(KINDS[kind])(rng)
            return question, "\n".join(work.lines), str(answer)

        return one

    tasks = {kind: draw(kind) for kind in KINDS}
    return generate_balanced(tasks, num_examples, seed, system_prompts=_SYSTEM_PROMPTS)
