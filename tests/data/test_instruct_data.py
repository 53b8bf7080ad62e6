"""The embedded default dataset: shipped file, determinism, checkable answers."""

from __future__ import annotations

import json
from importlib import resources

import pytest
from ila_data.instruct import TASKS, generate_ila_instruct, write_jsonl

from ila.data import load_examples
from ila.evaluation.metrics import extract_answer


@pytest.fixture(scope="module")
def shipped() -> str:
    return resources.files("ila").joinpath("resources", "ila_instruct.jsonl").read_text("utf-8")


def test_shipped_file_equals_a_fresh_generation(shipped, tmp_path):
    records = generate_ila_instruct(1200, seed=0)
    write_jsonl(records, tmp_path / "fresh.jsonl")
    assert (tmp_path / "fresh.jsonl").read_text("utf-8") == shipped
    assert [json.loads(line) for line in shipped.splitlines()] == records


def test_dataset_is_large_diverse_and_checkable(shipped):
    records = [json.loads(line) for line in shipped.splitlines()]
    assert len(records) >= 1000
    assert len({r["task"] for r in records}) >= 10 and set(TASKS) == {r["task"] for r in records}
    questions = [r["messages"][-2]["content"] for r in records]
    assert len(set(questions)) == len(questions)
    for record in records:
        roles = [m["role"] for m in record["messages"]]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"])
        response = record["messages"][-1]["content"]
        assert extract_answer(response) == record["answer"]
        working, last_line = response.split("\n")
        assert last_line == f"Answer: {record['answer']}" and working.endswith(".")
    assert 0.1 < sum(r["messages"][0]["role"] == "system" for r in records) / len(records) < 0.3


def test_generation_is_deterministic_per_seed():
    assert generate_ila_instruct(50, seed=7) == generate_ila_instruct(50, seed=7)
    assert generate_ila_instruct(50, seed=7) != generate_ila_instruct(50, seed=8)
    assert len(generate_ila_instruct(3, seed=1)) == 3


def test_preset_examples_carry_the_answers(shipped):
    records = [json.loads(line) for line in shipped.splitlines()[:5]]
    examples = load_examples("ila-instruct", limit=5)
    assert [e.answer for e in examples] == [r["answer"] for r in records]
    assert [list(e.messages) for e in examples] == [r["messages"] for r in records]


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("3 plus 4 is 7.\nAnswer: 7", "7"),
        ("Answer: 1\nAnswer:  2 , 3 \nmore words", "2 , 3"),
        ("no marker here", None),
        ("Answer:   ", None),
    ],
)
def test_extract_answer(text, answer):
    assert extract_answer(text) == answer
