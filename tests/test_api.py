"""The Python API (ila.api): every command as a function, called directly (no argv)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import ila
from ila.config import ScoreConfig
from ila.core.scores import LayerScores
from ila.core.selection import Selection
from ila.errors import IlaError

TINY = {"max_length": 64, "limit": 40, "batch_size": 4, "device": "cpu"}
QUICK_ILA = {"stage1_max_steps": 4, "stage1_min_steps": 0, "stage2_steps": 2}
REPO = Path(__file__).resolve().parents[1]


def test_import_is_cheap_and_lazy():
    code = "import sys, ila; print('torch' in sys.modules, callable(ila.score))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
    with pytest.raises(AttributeError, match="no attribute 'scores_of_everything'"):
        ila.scores_of_everything  # noqa: B018


def test_make_config_layers_defaults_config_and_keywords(tmp_path):
    from ila.api import make_config

    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text(
        "stage1:\n  max_steps: 7\n  min_steps: 5\nrun:\n  tune_top_fraction: 0.2\n"
    )
    config = make_config(ScoreConfig, yaml_file, stage1_max_steps=9, max_length=None)
    assert config.stage1.max_steps == 9 and config.stage1.min_steps == 5  # keyword wins
    assert config.data.max_length == ScoreConfig().data.max_length  # None is "not given"
    assert make_config(ScoreConfig, config).stage1.max_steps == 9  # a config object
    with pytest.raises(IlaError, match=r"unknown setting .stage1_max_step.*stage1_max_steps"):
        make_config(ScoreConfig, stage1_max_step=3)
    with pytest.raises(IlaError, match=r"^stage1_max_steps: must be >= 1"):
        make_config(ScoreConfig, stage1_max_steps=0)


def test_errors_name_keywords_in_python_and_flags_on_the_command_line(capsys, tmp_path):
    from ila.cli import main

    with pytest.raises(IlaError, match=r"^stage2_steps: must be >= 1") as caught:
        ila.score("smollm2-135m", output_dir=tmp_path / "s", stage2_steps=0)
    assert caught.value.render("flag").startswith("--stage2-steps: must be >= 1")
    assert main(["-q", "score", "--stage2-steps", "0", "--output-dir", str(tmp_path / "c")]) == 2
    assert "ila: error: --stage2-steps: must be >= 1" in capsys.readouterr().err


def test_score_select_finetune_evaluate_compare_export_plan(tiny_model_dir, tmp_path):
    model = str(tiny_model_dir)
    first = ila.score(model, output_dir=tmp_path / "ila", **TINY, **QUICK_ILA)
    second = ila.score(model, output_dir=tmp_path / "random", scorer="random", **TINY)
    assert isinstance(first.scores, LayerScores) and first.scores.method == "ila"
    frame = first.scores.to_dataframe()
    assert len(frame) == len(first.scores.units) == 28
    assert list(frame.sort_values("rank")["name"][:7]) == first.scores.top(0.25)

    selection = ila.select(tmp_path / "ila", tune_top_fraction=0.25, output=tmp_path / "sel")
    assert isinstance(selection, Selection) and len(selection.selected) == 7
    assert Selection.load(tmp_path / "sel").selected == selection.selected
    with pytest.raises(IlaError, match="exists; pass overwrite"):
        ila.select(first.scores, tune_top_fraction=0.5, output=tmp_path / "sel")

    tuned = ila.finetune(
        model,
        output_dir=tmp_path / "ft",
        scores=tmp_path / "ila",
        tune_top_fraction=0.25,
        max_steps=2,
        init_from_stage1=True,
        **TINY,
    )
    assert tuned.summary.num_selected == 7 and tuned.summary.init_from_stage1

    evaluated = ila.evaluate(
        model, output_dir=tmp_path / "ev", adapter=tmp_path / "ft", eval_generate_examples=0, **TINY
    )
    assert evaluated.result.metrics["loss"] > 0

    comparison = ila.compare([tmp_path / "ila", tmp_path / "random"], output_dir=tmp_path / "cmp")
    assert len(comparison.pairs) == 1 and (tmp_path / "cmp" / "comparison.json").is_file()

    text = ila.export(selection, format="json")
    assert set(json.loads(text)["selected"]) == set(selection.selected)

    page = ila.report(tmp_path / "ila", output_dir=tmp_path / "report")
    assert page.is_file()

    plan = ila.plan(model, selection=tmp_path / "sel", max_length=64)
    assert plan.to_dict()["stages"]
    assert second.scores.method == "random"


@pytest.mark.slow
def test_example_script_runs(tmp_path, embedded_cache):
    """examples/python_api.py, the "Python" example of docs/usage.md, at its --quick size."""
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "python_api.py"), "--quick", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**_env(embedded_cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "top 10% of units:" in out.stdout and "held-out loss" in out.stdout


def _env(cache: Path) -> dict[str, str]:
    import os

    src = str(REPO / "src")
    path = src + os.pathsep + os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": path, "ILA_CACHE_DIR": str(cache)}


def test_rows_in_memory_are_data(tiny_model_dir, tmp_path, monkeypatch):
    from datasets import Dataset

    from ila.api import data_source

    monkeypatch.setenv("ILA_CACHE_DIR", str(tmp_path / "cache"))
    rows = [{"instruction": f"add {i} and 2", "output": str(i + 2)} for i in range(30)]
    path = data_source(rows)
    assert path == data_source(Dataset.from_list(rows))  # named by content: one file
    assert Path(path).parent == tmp_path / "cache" / "data"
    run = ila.score(str(tiny_model_dir), rows, output_dir=tmp_path / "s", scorer="random", **TINY)
    recorded = json.loads((tmp_path / "s" / "data.json").read_text())
    assert recorded["source"] == path and recorded["num_examples"] == 30
    assert run.scores.method == "random"
    with pytest.raises(IlaError, match=r"data\[1\] is a str, not a record"):
        data_source([{"text": "a"}, "b"])
    with pytest.raises(IlaError, match="non-empty list of records"):
        data_source([])


def test_a_loaded_model_is_a_model(tiny_llama, tiny_tokenizer, tmp_path, monkeypatch):
    from ila.api import model_source

    monkeypatch.setenv("ILA_CACHE_DIR", str(tmp_path / "cache"))
    rows = [{"instruction": f"add {i} and 2", "output": str(i + 2)} for i in range(30)]
    run = ila.score(
        tiny_llama, rows, tokenizer=tiny_tokenizer, output_dir=tmp_path / "s", **TINY, **QUICK_ILA
    )
    recorded = yaml.safe_load((tmp_path / "s" / "config.yaml").read_text())["model"]["model"]
    assert Path(recorded).parent == tmp_path / "cache" / "models"
    assert len(run.scores.units) == 4 * 7
    # Named by content: the same weights are one directory, changed weights another.
    assert model_source(tiny_llama, tiny_tokenizer) == recorded
    with torch.no_grad():
        tiny_llama.model.layers[0].mlp.up_proj.weight.add_(1.0)
    assert model_source(tiny_llama, tiny_tokenizer) != recorded
    # The saved model is an ordinary model directory: a fine-tune can use the ranking on it.
    done = ila.finetune(
        recorded, rows, output_dir=tmp_path / "f", scores=tmp_path / "s",
        tune_top_fraction=0.25, max_steps=2, batch_size=2, max_length=32, device="cpu",
    )  # fmt: skip
    assert done.summary.steps == 2
    with pytest.raises(IlaError, match="needs its tokenizer"):
        model_source(tiny_llama)
    with pytest.raises(IlaError, match="goes with a loaded model"):
        model_source("smollm2-135m", tiny_tokenizer)
    with pytest.raises(IlaError, match="not a dict"):
        model_source({"weights": 1}, tiny_tokenizer)


@pytest.mark.slow
def test_existing_update_example_runs(tmp_path, embedded_cache):
    """examples/existing_update.py, docs/usage.md, "Rank the fine-tune you already have"."""
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "existing_update.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        env={**_env(embedded_cache), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    for line in ("1. ranked by the callback", "2. from the saved adapter", "3. from the base"):
        assert line in out.stdout
    for run in ("trainer/ila", "from-adapter", "from-model"):
        assert (tmp_path / run / "layer_scores.json").is_file()


def test_wrapping_with_peft_prints_no_transformers_deprecation(tiny_llama):
    """peft reads transformers' deprecated is_gradient_checkpointing when it wraps a model;
    ila filters that one FutureWarning where it wraps (and nothing else)."""
    import warnings

    from ila.config import LoraSettings
    from ila.core.layers import find_layers
    from ila.core.lora import add_lora

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        add_lora(tiny_llama, find_layers(tiny_llama).units, LoraSettings(), seed=0)
    assert not [w for w in caught if "is_gradient_checkpointing" in str(w.message)]
