"""What a model's config.json allows, checked before a run starts: a field of the wrong type
(probe case PL4) and a --max-length above the model's positions (M6) are one-line errors,
and no run directory is written."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig, GPT2Config, GPT2LMHeadModel

from conftest import fails
from ila.model.loading import require_positions

DATA = ["--data", "ila-instruct", "--limit", "20", "--device", "cpu"]


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory, tiny_tokenizer):
    """A 2-block GPT-2 with 32 learned positions and the tiny tokenizer."""
    path = tmp_path_factory.mktemp("gpt2-32")
    config = GPT2Config(
        vocab_size=len(tiny_tokenizer),
        n_positions=32,
        n_embd=32,
        n_layer=2,
        n_head=2,
        bos_token_id=tiny_tokenizer.eos_token_id,
        eos_token_id=tiny_tokenizer.eos_token_id,
    )
    GPT2LMHeadModel(config).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("command", ["score", "finetune", "eval"])
def test_max_length_above_learned_positions_is_refused_up_front(
    command, gpt2_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = [command, "--model", str(gpt2_dir), *DATA, "--max-length", "64"]
    argv += ["--all-units"] if command == "finetune" else []
    message = fails([*argv, "--output-dir", str(out)], capsys, "--max-length 64", "32 positions")
    assert "learned position embeddings" in message and "--max-length 32 or less" in message
    assert not out.exists()


def test_max_length_above_rotary_positions_is_refused(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["score", "--model", str(tiny_model_dir), *DATA, "--max-length", "512"]
    fails([*argv, "--output-dir", str(out)], capsys, "256 positions", "rotary positions")
    assert not out.exists()


def test_max_length_within_the_positions_passes(gpt2_dir, tiny_model_dir):
    require_positions(AutoConfig.from_pretrained(gpt2_dir), "gpt2", 32)
    require_positions(AutoConfig.from_pretrained(tiny_model_dir), "llama", 256)


@pytest.mark.parametrize("command", ["plan", "score"])
def test_config_field_of_the_wrong_type_is_one_line(command, tiny_model_dir, tmp_path, capsys):
    broken = tmp_path / "junk"
    broken.mkdir()
    for f in tiny_model_dir.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["hidden_size"] = "big"
    (broken / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out"
    argv = [command, "--model", str(broken)]
    argv += [*DATA, "--output-dir", str(out)] if command == "score" else []
    message = fails(argv, capsys, str(broken / "config.json"), "hidden_size", "fix it")
    assert "'big'" in message
    assert not out.exists()
