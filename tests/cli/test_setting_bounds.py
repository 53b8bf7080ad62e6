"""Settings a user types: every count has an upper bound named in its error (probe case S3:
``--seeds 1000000000000`` ran out of memory), values are shown through a bounded repr, YAML
anchors and aliases are refused (PA5), and a config file's wrong value is an error even
where a flag overrides it (3.14)."""

from __future__ import annotations

import time

import pytest

from conftest import fails
from ila.api import make_config
from ila.config import MAX_SEED, ScoreConfig
from ila.errors import IlaError, short_repr

BOUNDS = [
    ("score", ["--seeds", "1000000000000"], "--seeds: must be at most 1,000"),
    (
        "score",
        ["--stage1-max-steps", "100000000"],
        "--stage1-max-steps: must be at most 10,000,000",
    ),
    ("score", ["--stage2-steps", "100000000"], "--stage2-steps: must be at most 10,000,000"),
    ("score", ["--batch-size", "10000000"], "--batch-size: must be at most 1,000,000"),
    ("score", ["--limit", "10000000000"], "--limit: must be at most 1,000,000,000"),
    ("score", ["--max-length", "100000000"], "--max-length: must be at most 16,777,216"),
    ("score", ["--lora-rank", "1000000"], "--lora-rank: must be at most 65,536"),
    ("score", ["--seed", "-1"], f"--seed: must be in [0, {MAX_SEED}]"),
    ("score", ["--seed", str(MAX_SEED), "--seeds", "2"], f"reach seed {MAX_SEED + 1}"),
    ("finetune", ["--all-units", "--max-steps", "100000000"], "--max-steps: must be at most"),
    ("eval", ["--eval-max-new-tokens", "100000000"], "--eval-max-new-tokens: must be at most"),
    ("eval", ["--eval-generate-examples", "10000000000"], "--eval-generate-examples: must be"),
]


@pytest.mark.parametrize(("command", "flags", "words"), BOUNDS, ids=[b[1][-2] for b in BOUNDS])
def test_counts_above_their_bound_fail_at_once(command, flags, words, tmp_path, capsys):
    out = tmp_path / "out"
    start = time.perf_counter()
    fails([command, *flags, "--output-dir", str(out)], capsys, words)
    assert time.perf_counter() - start < 10 and not out.exists()


def test_plan_processes_are_bounded(capsys):
    fails(["plan", "--fsdp", "1000000"], capsys, "--fsdp: must be at most 65,536")


def test_values_in_messages_are_cut_short(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text("stage1:\n  max_steps: " + "x" * 100_000 + "\n")
    with pytest.raises(IlaError) as caught:
        make_config(ScoreConfig, config)
    assert "stage1.max_steps must be int" in str(caught.value) and len(str(caught.value)) < 300
    nested = [list(range(1000))] * 1000  # shared rows: a million items in full
    with pytest.raises(IlaError) as caught:
        make_config(ScoreConfig, stage1_max_steps=nested)
    assert len(str(caught.value)) < 300
    assert short_repr(10**5000) == "<int of about 5000 digits>"


def test_yaml_anchors_and_aliases_are_refused(tmp_path, capsys):
    small = tmp_path / "alias.yaml"
    small.write_text("stage1:\n  max_steps: &n 6\n  min_steps: *n\n")
    fails(["score", "--config", str(small), "--output-dir", str(tmp_path / "o")], capsys,
          f"{small}:2", "anchors and aliases")  # fmt: skip
    bomb = tmp_path / "laughs.yaml"
    lines = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    bomb.write_text("stage1:\n  max_steps: *a9\n" + "\n".join(lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(IlaError, match="anchors and aliases"):
        make_config(ScoreConfig, bomb)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("value", ["six", "6.7", "true"])
def test_a_wrong_value_in_a_file_is_an_error_also_under_a_flag(value, tmp_path, capsys):
    config = tmp_path / "wrong.yaml"
    config.write_text(f"stage1:\n  max_steps: {value}\n")
    argv = ["score", "--config", str(config), "--stage1-max-steps", "6"]
    fails([*argv, "--output-dir", str(tmp_path / "o")], capsys, "stage1.max_steps must be int")
    with pytest.raises(IlaError, match=r"stage1\.max_steps must be int"):
        make_config(ScoreConfig, config, stage1_max_steps=6)


def test_ranges_are_checked_on_the_merged_settings(tmp_path):
    config = tmp_path / "long.yaml"
    config.write_text("stage1:\n  min_steps: 500\n")
    merged = make_config(ScoreConfig, config, stage1_max_steps=1000)
    assert (merged.stage1.min_steps, merged.stage1.max_steps) == (500, 1000)
