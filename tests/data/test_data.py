"""Alignment data: formats in every container, errors, assistant-only labels, splits."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest
import torch
from tokenizers import processors

from conftest import build_tiny_tokenizer
from ila.data import (
    FORMATS,
    PRESETS,
    Example,
    PaddingCollator,
    data_fingerprint,
    format_prompt,
    load_examples,
    prompt_token_ids,
    split_examples,
    tokenize_examples,
)
from ila.data.sources import iter_json_items
from ila.errors import IlaError

RECORDS = {
    "alpaca": [
        {"instruction": "Add 2 and 3.", "input": "", "output": "2 plus 3 is 5.", "answer": "5"},
        {"instruction": "Reverse it.", "input": "cat", "output": "tac", "system": "Be brief."},
    ],
    "sharegpt": [
        {
            "conversations": [
                {"from": "system", "value": "Be kind."},
                {"from": "human", "value": "hello"},
                {"from": "gpt", "value": "hi there"},
                {"from": "human", "value": "count to three"},
                {"from": "gpt", "value": "one two three"},
            ],
            "answer": "3",
        },
        {"conversations": [{"from": "human", "value": "yes?"}, {"from": "gpt", "value": "no"}]},
    ],
    "messages": [
        {
            "messages": [
                {"role": "user", "content": "what is 4 plus 4?"},
                {"role": "assistant", "content": "4 plus 4 is 8."},
            ],
            "answer": "8",
        },
        {
            "messages": [
                {"role": "system", "content": "You answer."},
                {"role": "user", "content": "first?"},
                {"role": "assistant", "content": "one"},
                {"role": "user", "content": "last?"},
                {"role": "assistant", "content": "ten"},
            ]
        },
    ],
    "prompt-completion": [
        {"prompt": "Say yes.", "completion": "yes", "answer": "yes"},
        {"prompt": "Say no.", "completion": "no"},
    ],
    "text": [{"text": "the first sentence."}, {"text": "a second sentence.", "answer": "x"}],
}
EXPECTED = {
    "alpaca": [
        (("user", "Add 2 and 3."), ("assistant", "2 plus 3 is 5.")),
        (("system", "Be brief."), ("user", "Reverse it.\n\ncat"), ("assistant", "tac")),
    ],
    "sharegpt": [
        (
            ("system", "Be kind."),
            ("user", "hello"),
            ("assistant", "hi there"),
            ("user", "count to three"),
            ("assistant", "one two three"),
        ),
        (("user", "yes?"), ("assistant", "no")),
    ],
    "messages": [
        (("user", "what is 4 plus 4?"), ("assistant", "4 plus 4 is 8.")),
        (
            ("system", "You answer."),
            ("user", "first?"),
            ("assistant", "one"),
            ("user", "last?"),
            ("assistant", "ten"),
        ),
    ],
    "prompt-completion": [
        (("user", "Say yes."), ("assistant", "yes")),
        (("user", "Say no."), ("assistant", "no")),
    ],
    "text": [(("text", "the first sentence."),), (("text", "a second sentence."),)],
}
ANSWERS = {
    "alpaca": ["5", None],
    "sharegpt": ["3", None],
    "messages": ["8", None],
    "prompt-completion": ["yes", None],
    "text": [None, "x"],
}
FLAT_FORMATS = ("alpaca", "prompt-completion", "text")  # the ones a CSV can hold


def write_data(path: Path, records: list[dict], container: str) -> Path:
    """Write ``records`` as a .jsonl/.json/.parquet/.csv file; ``json-data`` = {"data": [...]}."""
    if container == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif container == "json":
        path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    elif container == "json-data":
        path.write_text(json.dumps({"data": records}), encoding="utf-8")
    elif container == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        # from_pylist takes the columns from the first row: give every row every key.
        keys = list(dict.fromkeys(k for r in records for k in r))
        pq.write_table(pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in records]), path)
    elif container == "csv":
        fields = sorted({k for r in records for k in r})
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(records)
    return path


def data_file(tmp_path: Path, records: list[dict], container: str = "jsonl") -> Path:
    suffix = "json" if container == "json-data" else container
    return write_data(tmp_path / f"data.{suffix}", records, container)


def as_tuples(example: Example) -> tuple:
    return tuple((m["role"], m["content"]) for m in example.messages)


CASES = [
    (fmt, container)
    for fmt in RECORDS
    for container in ("jsonl", "json", "json-data", "parquet", "csv")
    if container != "csv" or fmt in FLAT_FORMATS
]


@pytest.mark.parametrize(("fmt", "container"), CASES)
def test_every_format_loads_from_every_container(tmp_path, fmt, container):
    path = data_file(tmp_path, RECORDS[fmt], container)
    for format_arg in ("auto", fmt):
        examples = load_examples(str(path), format=format_arg)
        assert [as_tuples(e) for e in examples] == EXPECTED[fmt]
        assert [e.answer for e in examples] == ANSWERS[fmt]
        assert all(e.source.startswith(str(path)) for e in examples)


def test_sources_name_lines_and_records(tmp_path):
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text(
        "\n" + json.dumps(RECORDS["text"][0]) + "\n\n" + json.dumps(RECORDS["text"][1])
    )
    assert [e.source for e in load_examples(str(jsonl))] == [f"{jsonl}:2", f"{jsonl}:4"]
    js = data_file(tmp_path, RECORDS["text"], "json")
    assert load_examples(str(js))[1].source == f"{js}:record 2"
    csv_path = data_file(tmp_path, RECORDS["alpaca"], "csv")
    assert [e.source for e in load_examples(str(csv_path))] == [f"{csv_path}:2", f"{csv_path}:3"]


def test_prompt_completion_as_message_lists(tmp_path):
    record = {
        "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        "completion": [{"role": "assistant", "content": "a"}],
    }
    (example,) = load_examples(str(data_file(tmp_path, [record])))
    assert as_tuples(example) == (("system", "s"), ("user", "u"), ("assistant", "a"))


def test_directory_with_one_data_file_loads(tmp_path):
    data_file(tmp_path, RECORDS["alpaca"], "jsonl")
    (tmp_path / "notes.txt").write_text("not data")
    assert len(load_examples(str(tmp_path))) == 2


def test_limit_keeps_the_first_examples(tmp_path):
    path = data_file(tmp_path, RECORDS["messages"] * 5)
    assert [e.source for e in load_examples(str(path), limit=3)] == [
        f"{path}:{i}" for i in (1, 2, 3)
    ]


def test_format_override_wins_over_detection(tmp_path):
    record = {"text": "plain words", "prompt": "p", "completion": "c"}
    path = data_file(tmp_path, [record])
    assert load_examples(str(path))[0].messages[0]["role"] == "user"  # prompt before text
    assert as_tuples(load_examples(str(path), format="text")[0]) == (("text", "plain words"),)


def error_of(tmp_path: Path, content: str, name: str = "data.jsonl", **kwargs) -> str:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(IlaError) as info:
        load_examples(str(path), **kwargs)
    message = info.value.render("flag")  # as the command line prints it
    assert "\n" not in message
    return message


def jsonl(*records) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def test_malformed_records_name_file_and_line(tmp_path):
    ok = RECORDS["alpaca"][0]
    msg = error_of(tmp_path, jsonl(ok, ok) + "\n" + jsonl({"instruction": "x", "input": ""}))
    assert msg == f"{tmp_path / 'data.jsonl'}:4: record has no 'output' field (format alpaca)"
    msg = error_of(tmp_path, jsonl(ok, {"instruction": "x", "output": 3}))
    assert msg.endswith(":2: 'output' is a int, not a string (format alpaca)")
    msg = error_of(tmp_path, jsonl(ok) + '{"instruction": "x",\n')
    assert msg.endswith(
        "data.jsonl:2: not valid JSON (Expecting property name enclosed in double quotes)"
    )
    bad_role = {
        "messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]
    }
    msg = error_of(tmp_path, jsonl(RECORDS["messages"][0], bad_role))
    assert ":2: messages[1] has unknown role 'bot'" in msg
    bad_speaker = {"conversations": [{"from": "bard", "value": "x"}]}
    assert "unknown speaker 'bard'" in error_of(tmp_path, jsonl(bad_speaker))
    no_answer = {"messages": [{"role": "user", "content": "x"}]}
    msg = error_of(tmp_path, jsonl(no_answer))
    assert msg.endswith(
        "data.jsonl:1: conversation has no assistant turn to train on (format messages)"
    )
    bad_content = {"messages": [{"role": "user", "content": ["x"]}]}
    assert "messages[1]: 'content' is a list, not a string" in error_of(
        tmp_path, jsonl(bad_content)
    )
    assert ":1: record is a list" in error_of(tmp_path, jsonl([1, 2]))


def test_records_must_all_match_the_detected_format(tmp_path):
    msg = error_of(tmp_path, jsonl(RECORDS["alpaca"][0], RECORDS["messages"][0]))
    assert msg.endswith(":2: record has no 'instruction' field (format alpaca)")
    msg = error_of(tmp_path, jsonl(RECORDS["alpaca"][0]), format="text")
    assert msg.endswith(":1: record has no 'text' field (format text)")


def test_file_level_errors(tmp_path):
    assert "holds no usable examples" in error_of(tmp_path, "")
    assert "holds no usable examples" in error_of(tmp_path, "[]", name="empty.json")
    msg = error_of(tmp_path, jsonl(*RECORDS["text"]), name="lines.json")
    assert "not valid JSON (Extra data)" in msg and "name the file .jsonl" in msg
    msg = error_of(tmp_path, '{"rows": []}', name="obj.json")
    assert "expected a JSON array of records or an object with a 'data' array" in msg
    msg = error_of(tmp_path, jsonl({"question": "q", "reply": "r"}))
    assert "cannot detect the data format from the record's keys ('question', 'reply')" in msg
    msg = error_of(tmp_path, jsonl(RECORDS["text"][0]), format="chatml")
    assert msg == f"unknown --data-format 'chatml'; pass one of {', '.join(FORMATS)}"
    assert "unsupported data file type '.txt'" in error_of(tmp_path, "x", name="data.txt")
    assert "--limit must be a positive integer" in error_of(
        tmp_path, jsonl(RECORDS["text"][0]), limit=0
    )
    with pytest.raises(IlaError, match="data is empty"):
        load_examples(" ")
    with pytest.raises(IlaError, match=r"missing\.jsonl: data file not found"):
        load_examples(str(tmp_path / "missing.jsonl"))


def test_directory_must_hold_exactly_one_data_file(tmp_path):
    with pytest.raises(IlaError, match=r"exactly one .* \(found: none\)"):
        load_examples(str(tmp_path))
    data_file(tmp_path, RECORDS["text"], "jsonl")
    data_file(tmp_path, RECORDS["text"], "csv")
    with pytest.raises(IlaError, match=r"found: data\.csv, data\.jsonl"):
        load_examples(str(tmp_path))


def test_unknown_name_fails_fast_offline():
    start = time.monotonic()
    with pytest.raises(IlaError) as info:
        load_examples("nobody/no-such-dataset")
    assert time.monotonic() - start < 10
    assert str(info.value) == (
        "data 'nobody/no-such-dataset' is not a preset, a local file, or an available dataset "
        "(offline mode: HF_DATASETS_OFFLINE=1); pass a local file or one of the presets: "
        f"{', '.join(PRESETS)}"
    )


def test_preset_refuses_other_formats():
    with pytest.raises(IlaError, match="leave data_format auto"):
        load_examples("ila-instruct", format="alpaca")


# --------------------------------------------------------------------- tokenization


@pytest.fixture(scope="module")
def plain_tokenizer():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = None
    return tokenizer


def ex(*turns: tuple[str, str], answer: str | None = None) -> Example:
    return Example(messages=tuple({"role": r, "content": c} for r, c in turns), answer=answer)


MULTI_TURN = ex(
    ("system", "You are brief."),
    ("user", "add one and two"),
    ("assistant", "one plus two is three."),
    ("user", "and times four?"),
    ("assistant", "Answer: 12"),
)


def labelled_runs(feature: dict, tokenizer) -> list[str]:
    """Decoded text of each run of consecutive labelled tokens."""
    runs, current = [], []
    for token, label in zip(feature["input_ids"], feature["labels"], strict=True):
        if label != -100:
            assert label == token
            current.append(token)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tokenizer.decode(run) for run in runs]


@pytest.mark.parametrize("example", [ex(("user", "hello"), ("assistant", "hi there")), MULTI_TURN])
def test_labels_are_exactly_the_assistant_turns_with_chat_template(tiny_tokenizer, example):
    data = tokenize_examples([example], tiny_tokenizer, max_length=512)
    (feature,) = data.features
    contents = [m["content"] for m in example.messages if m["role"] == "assistant"]
    assert labelled_runs(feature, tiny_tokenizer) == [c + "<|im_end|>" for c in contents]
    assert tiny_tokenizer.decode(feature["input_ids"]) == tiny_tokenizer.apply_chat_template(
        list(example.messages), tokenize=False
    )
    assert data.num_response_tokens == sum(label != -100 for label in feature["labels"])
    assert feature["attention_mask"] == [1] * len(feature["input_ids"])


def test_plain_template_is_the_documented_text(plain_tokenizer, tiny_tokenizer):
    (feature,) = tokenize_examples([MULTI_TURN], plain_tokenizer, max_length=512).features
    assert plain_tokenizer.decode(feature["input_ids"]) == (
        "### System:\nYou are brief.\n\n### User:\nadd one and two\n\n"
        "### Assistant:\none plus two is three.<|im_end|>\n\n### User:\nand times four?\n\n"
        "### Assistant:\nAnswer: 12<|im_end|>"
    )
    assert labelled_runs(feature, plain_tokenizer) == [
        "one plus two is three.<|im_end|>",
        "Answer: 12<|im_end|>",
    ]
    forced = tokenize_examples([MULTI_TURN], tiny_tokenizer, max_length=512, template="plain")
    assert forced.features == [feature]


def test_template_choice_is_validated(plain_tokenizer, tiny_tokenizer):
    with pytest.raises(IlaError, match="has no chat template; pass template plain"):
        tokenize_examples([MULTI_TURN], plain_tokenizer, max_length=64, template="chat")
    with pytest.raises(IlaError, match="unknown template 'jinja'; pass one of auto, chat, plain"):
        tokenize_examples([MULTI_TURN], tiny_tokenizer, max_length=64, template="jinja")


def test_plain_text_examples_are_labelled_everywhere(tiny_tokenizer):
    (feature,) = tokenize_examples(
        [ex(("text", "hello world"))], tiny_tokenizer, max_length=64
    ).features
    assert feature["labels"] == feature["input_ids"]
    assert tiny_tokenizer.decode(feature["input_ids"]) == "hello world<|im_end|>"


def test_truncation_and_drop_counts(tiny_tokenizer):
    short = ex(("user", "hi"), ("assistant", "a long answer with many words in it"))
    long_prompt = ex(("user", "please " * 40), ("assistant", "ok"))
    full = tokenize_examples([short], tiny_tokenizer, max_length=512).features[0]
    prompt_len = full["labels"].index(next(x for x in full["labels"] if x != -100))
    data = tokenize_examples([short, long_prompt, short], tiny_tokenizer, max_length=prompt_len + 2)
    assert (data.num_dropped, data.num_truncated, len(data.features)) == (1, 2, 2)
    assert all(len(f["input_ids"]) == prompt_len + 2 for f in data.features)
    assert data.num_response_tokens == 4
    assert data.features[0]["input_ids"] == full["input_ids"][: prompt_len + 2]
    with pytest.raises(IlaError, match=r"all 1 examples were dropped.*raise max_length"):
        tokenize_examples([long_prompt], tiny_tokenizer, max_length=8)


def test_empty_responses_and_all_truncated_are_said(tiny_tokenizer, caplog):
    answered = ex(("user", "hi"), ("assistant", "a long answer with many words in it"))
    blank = ex(("user", "hi"), ("assistant", "  "))
    data = tokenize_examples([answered, blank, blank], tiny_tokenizer, max_length=512)
    assert data.num_empty_responses == 2 and len(data.features) == 3
    assert data.warnings == [
        "2 of 3 examples have an empty assistant response (only its end-of-turn token is learned)"
    ]
    assert data.warnings[0] in caplog.text
    with pytest.raises(IlaError, match="every one of the 2 examples has an empty assistant"):
        tokenize_examples([blank, blank], tiny_tokenizer, max_length=512)
    full = tokenize_examples([answered], tiny_tokenizer, max_length=512).features[0]
    cut = tokenize_examples([answered], tiny_tokenizer, max_length=len(full["input_ids"]) - 2)
    assert cut.warnings == [
        f"every one of the 1 examples was cut at --max-length {len(full['input_ids']) - 2}: "
        "the ends of all responses are lost; raise --max-length if they matter"
    ]
    assert tokenize_examples([answered], tiny_tokenizer, max_length=512).warnings == []


def test_a_huge_text_is_cut_before_tokenizing_with_the_same_tokens(tiny_tokenizer, monkeypatch):
    from ila.data import tokenization

    answer = " ".join(f"w{i % 97}x{i}" for i in range(60_000))  # about 0.5 MB in one line
    example = ex(("user", "hi"), ("assistant", answer))
    text, spans = tokenization.render_conversation(example.messages, tiny_tokenizer, "auto")
    bos = tokenization._bos_ids(tiny_tokenizer)
    whole_ids, whole_labels = tokenization._encode(text, spans, tiny_tokenizer, bos)
    seen = []
    real = tokenization._encode
    monkeypatch.setattr(tokenization, "_encode", lambda t, *a: seen.append(len(t)) or real(t, *a))
    data = tokenize_examples([example], tiny_tokenizer, max_length=64)
    assert seen[0] < 10_000 < len(text)  # the tokenizer never saw the whole line
    (feature,) = data.features
    assert feature["input_ids"] == whole_ids[:64] and feature["labels"] == whole_labels[:64]
    assert data.num_truncated == 1


def test_prompt_matches_the_training_prefix(tiny_tokenizer, plain_tokenizer):
    single = ex(("user", "hello"), ("assistant", "hi there"))
    assert format_prompt(single.messages, tiny_tokenizer) == (
        "<|im_start|>user\nhello<|im_end|>\n<|im_start|>assistant\n"
    )
    assert format_prompt(MULTI_TURN.messages, plain_tokenizer).endswith(
        "three.<|im_end|>\n\n### User:\nand times four?\n\n### Assistant:\n"
    )
    for tokenizer in (tiny_tokenizer, plain_tokenizer):
        (feature,) = tokenize_examples([single], tokenizer, max_length=128).features
        prompt = prompt_token_ids(single.messages, tokenizer)
        assert feature["input_ids"][: len(prompt)] == prompt
        assert set(feature["labels"][: len(prompt)]) == {-100}
        assert feature["labels"][len(prompt)] != -100


def test_bos_is_added_once(tiny_tokenizer):
    tokenizer = build_tiny_tokenizer()
    bos_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", bos_id)]
    )
    tokenizer.bos_token = "<|endoftext|>"
    example = ex(("user", "hello"), ("assistant", "hi"))
    (feature,) = tokenize_examples([example], tokenizer, max_length=64).features
    assert feature["input_ids"].count(bos_id) == 1 and feature["input_ids"][0] == bos_id
    tokenizer.chat_template = "{{ bos_token }}" + tiny_tokenizer.chat_template
    (feature,) = tokenize_examples([example], tokenizer, max_length=64).features
    assert feature["input_ids"].count(bos_id) == 1 and feature["input_ids"][0] == bos_id
    assert labelled_runs(feature, tokenizer) == ["hi<|im_end|>"]
    first_label = next(i for i, label in enumerate(feature["labels"]) if label != -100)
    assert prompt_token_ids(example.messages, tokenizer) == feature["input_ids"][:first_label]


def test_collator_pads_right():
    features = [
        {"input_ids": [5, 6, 7], "attention_mask": [1, 1, 1], "labels": [-100, 6, 7]},
        {"input_ids": [8], "attention_mask": [1], "labels": [8]},
    ]
    batch = PaddingCollator(pad_token_id=0)(features)
    assert {k: v.dtype for k, v in batch.items()} == dict.fromkeys(batch, torch.long)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert PaddingCollator(pad_token_id=0, pad_to_multiple_of=8)(features)["labels"].shape == (2, 8)


# ------------------------------------------------------------- splits, fingerprints


def numbered(n: int) -> list[Example]:
    return [ex(("user", f"question {i}"), ("assistant", f"answer {i}")) for i in range(n)]


def test_split_is_deterministic_disjoint_and_sized():
    examples = numbered(200)
    train, evaluation = split_examples(examples, eval_fraction=0.1, seed=3)
    assert (len(train), len(evaluation)) == (180, 20)
    assert sorted(map(as_tuples, train + evaluation)) == sorted(map(as_tuples, examples))
    assert not set(map(as_tuples, train)) & set(map(as_tuples, evaluation))
    assert (train, evaluation) == split_examples(examples, eval_fraction=0.1, seed=3)
    assert evaluation != split_examples(examples, eval_fraction=0.1, seed=4)[1]
    # Membership depends on content, not position: reversing the input keeps the split.
    rev_eval = split_examples(examples[::-1], eval_fraction=0.1, seed=3)[1]
    assert sorted(map(as_tuples, rev_eval)) == sorted(map(as_tuples, evaluation))
    assert split_examples(examples, eval_fraction=0.0, seed=0) == (examples, [])
    assert len(split_examples(numbered(5), eval_fraction=0.01, seed=0)[1]) == 1


def test_split_errors():
    with pytest.raises(IlaError, match=r"eval_fraction must be in \[0, 1\)"):
        split_examples(numbered(4), eval_fraction=1.0, seed=0)
    with pytest.raises(IlaError, match="leaves no training example"):
        split_examples(numbered(1), eval_fraction=0.2, seed=0)


def test_fingerprint_is_stable_and_sensitive():
    examples = numbered(5)
    fp = data_fingerprint(examples)
    assert len(fp) == 16 and int(fp, 16) >= 0
    moved = [Example(e.messages, e.answer, source="elsewhere") for e in examples]
    assert data_fingerprint(moved) == fp
    changed = [*examples[:-1], ex(("user", "question 4"), ("assistant", "answer 5"))]
    assert data_fingerprint(changed) != fp
    assert data_fingerprint([*examples[:-1], Example(examples[-1].messages, "5")]) != fp
    assert data_fingerprint(examples[::-1]) != fp


# -------------------------------------------------------------------------- presets


@pytest.mark.parametrize("name", ["chitchat", "sharegpt"])
def test_package_presets_load_quickly_with_limit(name, tiny_tokenizer):
    start = time.monotonic()
    examples = load_examples(name, limit=20)
    assert time.monotonic() - start < 3
    assert len(examples) == 20
    for example in examples:
        roles = [m["role"] for m in example.messages]
        assert roles[-1] == "assistant" and "user" in roles
        turns = roles[roles.index("user") :]  # after an optional system message: alternating
        assert turns == ["user", "assistant"] * (len(turns) // 2)
        assert all(m["content"].strip() for m in example.messages)
        assert example.source.startswith(f"preset:{name}:")
    data = tokenize_examples(examples, tiny_tokenizer, max_length=64)
    assert data.num_response_tokens > 0


def test_default_preset_is_ila_instruct():
    examples = load_examples("default")
    assert len(examples) == 1200 and all(e.answer for e in examples)
    assert examples[0].source == "preset:ila-instruct:1"
    assert load_examples("ila-instruct", limit=2) == examples[:2]


def test_lenient_json_stream_reads_whole_items_across_chunks():
    items = [{"id": i, "text": "x" * i} for i in range(12)]
    text = json.dumps(items)
    assert list(iter_json_items(io.StringIO(text), chunk_chars=5)) == items
    truncated = text[: text.index('{"id": 9') + 10]
    assert list(iter_json_items(io.StringIO(truncated), chunk_chars=7)) == items[:9]
    obj = json.dumps({"a": {"v": 1}, "b": {"v": 2}, "c": {"v": 3}})
    assert list(iter_json_items(io.StringIO(obj[:-6]), chunk_chars=4)) == [
        ("a", {"v": 1}),
        ("b", {"v": 2}),
    ]
