"""The generated reasoning dataset: shipped file, determinism, checked working, labels."""

from __future__ import annotations

import importlib.util
import json
import re
from importlib import resources
from pathlib import Path

import pytest
from ila_data.instruct import write_jsonl
from ila_data.reasoning import CONSTANTS, KINDS, generate_ila_reasoning

from ila.data import load_examples, tokenize_examples
from ila.evaluation.metrics import extract_answer
from ila.model.loading import load_tokenizer

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "generate_data.py"
# One step of working: "label: a op b = c", or "label: a / b = q remainder r".
STEP = re.compile(r"[A-Za-z' ]+: (\d+) ([-+x/]) (\d+) = (\d+)(?: remainder (\d+))?")


@pytest.fixture(scope="module")
def shipped() -> str:
    return resources.files("ila").joinpath("resources", "ila_reasoning.jsonl").read_text("utf-8")


@pytest.fixture(scope="module")
def records(shipped) -> list[dict]:
    return [json.loads(line) for line in shipped.splitlines()]


def check_solution(question: str, response: str) -> tuple[list[str], str]:
    """Check every step's arithmetic and inputs; return (the ops in order, the final value)."""
    *steps, last = response.split("\n")
    known = {int(n) for n in re.findall(r"\d+", question)} | CONSTANTS
    ops, value = [], None
    for line in steps:
        match = STEP.fullmatch(line)
        assert match, f"not a step: {line!r}"
        a, op, b, c = int(match[1]), match[2], int(match[3]), int(match[4])
        remainder = None if match[5] is None else int(match[5])
        assert a in known and b in known, f"{line!r} uses a number from nowhere"
        if remainder is not None:
            assert op == "/" and a == b * c + remainder and 0 <= remainder < b, line
        else:
            assert c == {"+": a + b, "-": a - b, "x": a * b, "/": a // b}[op], line
            assert op != "/" or a % b == 0, line
        known |= {c} if remainder is None else {c, remainder}
        ops.append(op + ("r" if remainder is not None else ""))
        value = c if remainder is None else (c, remainder)
    assert last.startswith("Answer: ")
    return ops, value


def labelled_text(feature: dict, tokenizer) -> str:
    """The decoded labelled tokens, which must be one run equal to their input tokens."""
    at = [i for i, label in enumerate(feature["labels"]) if label != -100]
    assert at == list(range(at[0], at[-1] + 1))
    assert [feature["labels"][i] for i in at] == [feature["input_ids"][i] for i in at]
    return tokenizer.decode([feature["input_ids"][i] for i in at])


def test_shipped_file_equals_a_fresh_generation(shipped, records, tmp_path):
    fresh = generate_ila_reasoning(1000, seed=0)
    write_jsonl(fresh, tmp_path / "fresh.jsonl")
    assert (tmp_path / "fresh.jsonl").read_text("utf-8") == shipped
    assert records == fresh and len(records) == 1000


def test_generation_is_deterministic_per_seed():
    assert generate_ila_reasoning(40, seed=3) == generate_ila_reasoning(40, seed=3)
    assert generate_ila_reasoning(40, seed=3) != generate_ila_reasoning(40, seed=4)
    assert len(generate_ila_reasoning(2, seed=1)) == 2
    with pytest.raises(ValueError, match="num_examples"):
        generate_ila_reasoning(0)


def test_every_step_and_answer_is_correct(records):
    for record in records:
        assert set(record) == {"messages", "answer", "task"}
        roles = [m["role"] for m in record["messages"]]
        assert roles in (["user", "assistant"], ["system", "user", "assistant"])
        question, response = (m["content"] for m in record["messages"][-2:])
        ops, value = check_solution(question, response)
        assert 2 <= len(ops) <= 4, response
        answer = int(record["answer"])
        assert answer == value or (isinstance(value, tuple) and answer in value), response
        assert str(answer) == record["answer"] and answer >= 0
        assert extract_answer(response) == record["answer"]
        assert response.endswith(f"\nAnswer: {record['answer']}")


def test_check_solution_catches_wrong_working():
    question = "Ava buys 3 pens at 4 dollars each."
    assert check_solution(question, "Cost: 3 x 4 = 12\nTotal: 12 + 4 = 16\nAnswer: 16")[1] == 16
    for bad in ("Cost: 3 x 4 = 13", "Cost: 3 x 5 = 15", "Cost: 3 + 4 = 7 more", "3 x 4 = 12"):
        with pytest.raises(AssertionError):
            check_solution(question, f"{bad}\nAnswer: 1")


def test_dataset_is_varied(records):
    questions = [r["messages"][-2]["content"] for r in records]
    assert len(set(questions)) == len(questions)
    assert {r["task"] for r in records} == set(KINDS) and len(KINDS) >= 6
    shapes: dict[str, set[tuple[str, ...]]] = {kind: set() for kind in KINDS}
    for record in records:
        question, response = (m["content"] for m in record["messages"][-2:])
        shapes[record["task"]].add(tuple(check_solution(question, response)[0]))
    # Templates of a kind mostly differ in their chain of operations: count the chains.
    assert all(len(s) >= 2 for s in shapes.values()), shapes
    assert len(set().union(*shapes.values())) >= 14
    assert {len(shape) for s in shapes.values() for shape in s} == {2, 3, 4}
    counts = [sum(r["task"] == kind for r in records) for kind in KINDS]
    assert max(counts) - min(counts) <= 1
    assert 0.1 < sum(r["messages"][0]["role"] == "system" for r in records) / len(records) < 0.3
    assert len({r["answer"] for r in records}) > 300


def test_preset_loads_with_labels_on_the_responses(records, tiny_tokenizer):
    examples = load_examples("ila-reasoning")
    assert len(examples) == 1000 and examples[0].source == "preset:ila-reasoning:1"
    assert [e.answer for e in examples] == [r["answer"] for r in records]
    assert [list(e.messages) for e in examples] == [r["messages"] for r in records]
    data = tokenize_examples(examples[:30], tiny_tokenizer, max_length=1024)
    assert data.num_dropped == 0 and data.num_truncated == 0
    for example, feature in zip(examples[:30], data.features, strict=True):
        response = example.messages[-1]["content"]
        assert labelled_text(feature, tiny_tokenizer) == response + "<|im_end|>"


def test_script_writes_one_dataset_and_refuses_ambiguous_output(shipped, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("generate_data", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--dataset", "reasoning", "--output", str(tmp_path / "r.jsonl")])
    assert (tmp_path / "r.jsonl").read_text("utf-8") == shipped
    with pytest.raises(SystemExit):
        script.main(["--output", str(tmp_path / "both.jsonl")])
    assert not (tmp_path / "both.jsonl").exists()
    assert "need one --dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_every_example_fits_256_tokens_of_smollm2(records, embedded_cache):
    tokenizer = load_tokenizer("smollm2-135m", cache=embedded_cache)
    examples = load_examples("ila-reasoning")
    data = tokenize_examples(examples, tokenizer, max_length=256)
    assert data.num_truncated == 0 and data.num_dropped == 0
    lengths = [len(f["input_ids"]) for f in data.features]
    assert 60 < max(lengths) <= 256
    response = records[0]["messages"][-1]["content"]
    assert labelled_text(data.features[0], tokenizer) == response + "<|im_end|>"
