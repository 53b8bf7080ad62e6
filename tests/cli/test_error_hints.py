"""Messages that say what the input is and offer only what works (the probe's minor cases:
PA2, M1, M2, A1, A6, A7, A9, 3.8, 3.18b, 3.22). Each hint offered is followed here."""

from __future__ import annotations

import os

import pytest
from peft import LoraConfig, get_peft_model

import ila
from conftest import build_tiny_llama, fails
from ila.api import model_source
from ila.cli import main
from ila.core.layers import find_layers
from ila.core.scores import LayerScores, UnitScore
from ila.errors import IlaError
from ila.files import atomic_write_json
from ila.model.identity import model_fingerprint
from ila.rundir import RunDir


def test_a_pipe_or_a_device_as_data_is_named_for_what_it_is(tiny_model_dir, tmp_path, capsys):
    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    base = ["score", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "o")]
    fails([*base, "--data", str(fifo)], capsys, "not a regular file (a pipe")
    fails([*base, "--data", "/dev/zero"], capsys, "not a regular file (a character device)")


def test_commands_without_resume_do_not_offer_it(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["eval", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    message = fails(argv, capsys, "already holds files", "--overwrite")
    assert "--resume" not in message
    assert "--resume" in fails(["score", "--output-dir", str(out)], capsys, "already holds")


def test_resume_with_another_model_does_not_offer_a_flag_score_lacks(
    tiny_tokenizer, tiny_model_dir, tmp_path
):
    other = tmp_path / "other-model"
    build_tiny_llama(len(tiny_tokenizer), seed=1).save_pretrained(other)
    run = tmp_path / "run"
    record = {"completed_stages": [], "model_fingerprint": model_fingerprint(str(other)).to_dict()}
    atomic_write_json(run / "run_state.json", record)
    with pytest.raises(IlaError, match="was made with another model") as caught:
        RunDir(run).require_same_model(model_fingerprint(str(tiny_model_dir)))
    assert "--allow-other-model" not in str(caught.value)


def test_a_model_with_peft_layers_is_told_how_to_drop_them(
    tiny_llama, tiny_tokenizer, tmp_path, monkeypatch
):
    monkeypatch.setenv("ILA_CACHE_DIR", str(tmp_path / "cache"))
    wrapped = get_peft_model(tiny_llama, LoraConfig(target_modules=["q_proj"], r=2))
    for given in (wrapped, wrapped.get_base_model()):
        with pytest.raises(IlaError, match=r"model\.unload\(\)"):
            model_source(given, tiny_tokenizer)
    assert model_source(wrapped.unload(), tiny_tokenizer)  # the hint works


def test_api_misuse_is_named_by_keyword(tiny_model_dir, tmp_path):
    with pytest.raises(IlaError, match="did you mean tune_top_fraction"):
        ila.finetune(str(tiny_model_dir), output_dir=tmp_path / "f", tune_top_fractoin=0.3)
    with pytest.raises(IlaError, match=r"^output_dir must be a directory path .* not None"):
        ila.score(str(tiny_model_dir), output_dir=None)
    with pytest.raises(IlaError, match=r"^runs takes a list of run directories"):
        ila.compare(str(tmp_path))
    with pytest.raises(IlaError, match=r"^scorer: unknown scorer 'foo'"):
        ila.score(str(tiny_model_dir), output_dir=tmp_path / "s", scorer="foo")


def test_cli_names_the_scorer_flag(tmp_path, capsys):
    fails(["score", "--scorer", "foo", "--output-dir", str(tmp_path / "o")], capsys,
          "--scorer: unknown scorer 'foo'")  # fmt: skip


def _scores(layer_map, model_dir) -> LayerScores:
    units = [
        UnitScore(u.name, u.block, u.module_type, 0.1 + 0.01 * i, 0.0)
        for i, u in enumerate(layer_map.units)
    ]
    meta = {"model_fingerprint": model_fingerprint(str(model_dir)).to_dict()}
    return LayerScores("ila", "model", "module", units, layer_map.to_dict(), meta)


def test_export_of_a_run_without_a_selection_says_to_select(
    tiny_llama, tiny_model_dir, tmp_path, capsys
):
    run = tmp_path / "run"
    _scores(find_layers(tiny_llama), tiny_model_dir).save(run / "layer_scores.json")
    message = fails(["export", str(run), "--format", "list"], capsys, "holds no selection.json")
    assert "make one with 'ila select' and --tune-top-fraction F" in message
    assert main(["-q", "select", str(run), "--tune-top-fraction", "0.3"]) == 0  # as it says
    assert main(["-q", "export", str(run), "--format", "list"]) == 0


def test_compare_of_two_models_of_one_name_shows_their_fingerprints(
    tiny_tokenizer, tiny_llama, tiny_model_dir, tmp_path, capsys
):
    other = tmp_path / "other"
    build_tiny_llama(len(tiny_tokenizer), seed=1).save_pretrained(other)
    layer_map = find_layers(tiny_llama)
    _scores(layer_map, tiny_model_dir).save(tmp_path / "a" / "layer_scores.json")
    _scores(layer_map, other).save(tmp_path / "b" / "layer_scores.json")
    argv = [
        "compare",
        str(tmp_path / "a"),
        str(tmp_path / "b"),
        "--output-dir",
        str(tmp_path / "c"),
    ]
    message = fails(argv, capsys, "come from different models")
    ids = [model_fingerprint(str(p)).id for p in (tiny_model_dir, other)]
    assert f"(model, fingerprint {ids[0]} vs model, fingerprint {ids[1]})" in message
