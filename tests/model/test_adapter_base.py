"""Adapters name their base model by an absolute path, so that one copied without
``ila_base_model.json`` (just peft's two files) is still checked from another directory;
where the check cannot be made, a WARNING says so (probe case M4)."""

from __future__ import annotations

import json
import logging
import shutil

from conftest import build_tiny_llama, fails
from ila.cli import main
from ila.model.adapters import check_adapter_base

QUICK = ["--data", "ila-instruct", "--limit", "20", "--max-length", "64", "--device", "cpu"]


def test_a_copied_peft_pair_is_checked_from_another_directory(
    tiny_tokenizer, tiny_model_dir, tmp_path, monkeypatch, capsys
):
    work = tmp_path / "work"
    build_tiny_llama(len(tiny_tokenizer), num_layers=2).save_pretrained(work / "models" / "two")
    tiny_tokenizer.save_pretrained(work / "models" / "two")
    monkeypatch.chdir(work)
    argv = ["-q", "finetune", "--model", "models/two", *QUICK, "--all-units", "--max-steps", "1"]
    assert main([*argv, "--output-dir", "ft_two"]) == 0
    settings = json.loads((work / "ft_two" / "adapter" / "adapter_config.json").read_text())
    assert settings["base_model_name_or_path"] == str((work / "models" / "two").resolve())
    copy = tmp_path / "foreign" / "ad2"
    copy.mkdir(parents=True)
    for name in ("adapter_config.json", "adapter_model.safetensors"):  # not ila_base_model.json
        shutil.copy(work / "ft_two" / "adapter" / name, copy / name)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = tmp_path / "eval"
    argv = ["eval", "--model", str(tiny_model_dir), *QUICK, "--adapter", str(copy)]
    fails([*argv, "--output-dir", str(out)], capsys, "was made with another model")
    assert not out.exists()


def test_an_unchecked_base_is_a_warning(tiny_model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    argv = ["-q", "finetune", "--model", str(tiny_model_dir), *QUICK, "--all-units"]
    assert main([*argv, "--max-steps", "1", "--output-dir", "ft"]) == 0
    adapter = tmp_path / "ft" / "adapter"
    (adapter / "ila_base_model.json").unlink()
    settings = json.loads((adapter / "adapter_config.json").read_text())
    settings["base_model_name_or_path"] = "/nowhere/on/this/machine/model"
    (adapter / "adapter_config.json").write_text(json.dumps(settings))
    with caplog.at_level(logging.INFO, logger="ila"):
        assert check_adapter_base(adapter, str(tiny_model_dir), allow=False) is None
    (record,) = [r for r in caplog.records if "not checked" in r.getMessage()]
    assert record.levelno == logging.WARNING and "/nowhere/on/this/machine/model" in record.message
