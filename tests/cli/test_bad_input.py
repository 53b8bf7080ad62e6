"""Bad input, case by case, through the real CLI: a one-line error, exit 2, nothing written.

Every case runs ``ila.cli.main`` (a few also ``python -m ila`` in a subprocess) on the tiny
model and files made here. "Nothing written" means the --output-dir does not exist after
an error detected before the run starts; a run that fails while training (a NaN loss)
leaves its directory without ``layer_scores.json`` and with no completed stage, so it
never looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from conftest import build_tiny_llama, fails, tree
from ila.cli import main
from ila.core.layers import find_layers
from ila.core.scores import LayerScores, UnitScore

TINY_RUN = ["--limit", "24", "--max-length", "64", "--batch-size", "4", "--device", "cpu"]


# -- data files ---------------------------------------------------------------------------


DATA_CASES = {
    "empty.jsonl": ("", ["holds no usable examples", "check the file"]),
    "blank.json": ("  \n", ["blank.json:", "not valid JSON"]),
    "header-only.csv": ("instruction,output\n", ["holds no usable examples"]),
    "malformed.jsonl": (
        '{"instruction": "a", "output": "b"}\n{"instruction": "c", "output": \n',
        ["malformed.jsonl:2", "not valid JSON"],
    ),
    "not-utf8.jsonl": (b"\xff\xfe\x00", ["not UTF-8"]),
    "garbage.parquet": (b"PAR1 not really", ["not a readable Parquet file"]),
    "missing-output.jsonl": (
        '{"instruction": "a", "output": "b"}\n{"instruction": "c"}\n',
        ["missing-output.jsonl:2", "no 'output' field", "alpaca"],
    ),
    "no-assistant.jsonl": (
        '{"messages": [{"role": "user", "content": "hi"}]}\n',
        ["no assistant turn"],
    ),
    "unknown-keys.jsonl": (
        '{"foo": 1, "bar": 2}\n',
        ["cannot detect the data format", "--data-format"],
    ),
    "notes.txt": ("instruction: a\n", ["unsupported data file type '.txt'"]),
}


@pytest.mark.parametrize("name", list(DATA_CASES))
def test_bad_data_file(name, tiny_model_dir, tmp_path, capsys):
    content, words = DATA_CASES[name]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    out = tmp_path / "out"
    argv = ["score", "--model", str(tiny_model_dir), "--data", str(path), "--output-dir", str(out)]
    fails([*argv, *TINY_RUN], capsys, *words)
    assert not out.exists()


def test_missing_data_file_and_unknown_format(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out), *TINY_RUN]
    fails([*base, "--data", str(tmp_path / "nope.jsonl")], capsys, "data file not found")
    good = tmp_path / "good.jsonl"
    good.write_text('{"instruction": "a", "output": "b"}\n')
    # A declared format the records do not fit names the missing field.
    fails([*base, "--data", str(good), "--data-format", "sharegpt"], capsys, "'conversations'")
    with pytest.raises(SystemExit) as exc:  # not a format at all: argparse's usage error
        main([*base, "--data", str(good), "--data-format", "yaml"])
    assert exc.value.code == 2
    assert "invalid choice: 'yaml'" in capsys.readouterr().err
    assert not out.exists()


# -- config files -------------------------------------------------------------------------


def test_config_whose_top_level_is_not_a_mapping(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    config = tmp_path / "list.yaml"
    config.write_text("- model: smollm2-135m\n- data: ila-instruct\n")
    argv = ["score", "--config", str(config), "--model", str(tiny_model_dir)]
    fails(
        [*argv, "--output-dir", str(out)],
        capsys,
        f"--config {config}: the top level is a list, not a mapping of sections",
    )
    assert not out.exists()


def test_config_with_a_duplicate_key(tiny_model_dir, tmp_path, capsys):
    config = tmp_path / "twice.yaml"
    config.write_text("train:\n  batch_size: 4\n  seed: 1\n  batch_size: 8\n")
    words = [f"{config}:4: key 'batch_size' appears twice", "first on line 2"]
    fails(["plan", "--config", str(config), "--model", str(tiny_model_dir)], capsys, *words)
    config.write_text("train:\n  seed: 1\ntrain:\n  seed: 2\n")
    fails(["plan", "--config", str(config)], capsys, "key 'train' appears twice")


# -- prompts longer than --max-length -----------------------------------------------------


def _write_examples(path: Path, *, short: int, long: int) -> None:
    rows = [{"instruction": f"add {i} and one", "output": str(i + 1)} for i in range(short)]
    rows += [{"instruction": "count " * 120, "output": "many"} for _ in range(long)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_prompts_longer_than_max_length_all_dropped_is_an_error(tiny_model_dir, tmp_path, capsys):
    data, out = tmp_path / "long.jsonl", tmp_path / "out"
    _write_examples(data, short=0, long=5)
    argv = ["score", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out)]
    fails(
        [*argv, "--max-length", "32", "--eval-fraction", "0"],
        capsys,
        "all 5 examples were dropped",
        "raise --max-length",
    )
    assert not out.exists()


def test_prompts_longer_than_max_length_are_dropped_with_a_count(
    tiny_model_dir, tmp_path, capsys, caplog
):
    data, out = tmp_path / "some-long.jsonl", tmp_path / "out"
    _write_examples(data, short=10, long=3)
    argv = [
        "-q", "score", "--model", str(tiny_model_dir), "--data", str(data),
        "--output-dir", str(out), "--max-length", "32", "--eval-fraction", "0",
        "--batch-size", "4", "--device", "cpu", "--stage1-max-steps", "2",
        "--stage1-min-steps", "0", "--stage2-steps", "2",
    ]  # fmt: skip
    assert main(argv) == 0
    assert json.loads((out / "data.json").read_text())["num_dropped"] == 3
    assert "dropped 3 of 13 examples with no response token within 32 tokens" in caplog.text
    recorded = json.loads((out / "data.json").read_text())["warnings"]
    assert recorded == ["dropped 3 of 13 examples with no response token within 32 tokens"]


def test_data_whose_responses_are_all_empty_is_refused(tiny_model_dir, tmp_path, capsys):
    data, out = tmp_path / "empty.jsonl", tmp_path / "out"
    rows = [{"instruction": f"add {i} and one", "output": ""} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    argv = ["score", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out)]
    fails([*argv, "--eval-fraction", "0"], capsys, "empty assistant response", "response field")
    assert not out.exists()


# -- models -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["score", "finetune", "plan"])
@pytest.mark.parametrize(
    ("model", "words"),
    [
        ("./no/such/model", ["model path ./no/such/model does not exist"]),
        ("no-such-org/no-such-model", ["not in the Hugging Face cache", "HF_HUB_OFFLINE=1"]),
    ],
)
def test_model_that_does_not_exist(command, model, words, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    argv = {
        "score": ["score", "--output-dir", str(out)],
        "finetune": ["finetune", "--all-units", "--output-dir", str(out)],
        "plan": ["plan"],
    }[command]
    fails([*argv, "--model", model], capsys, *words)
    assert not out.exists()


def test_model_directory_that_is_not_a_model(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    empty = tmp_path / "empty-model"
    empty.mkdir()
    fails(["score", "--model", str(empty), "--output-dir", str(out)], capsys, "no config.json")
    corrupt = tmp_path / "corrupt-model"
    shutil.copytree(tiny_model_dir, corrupt)
    (corrupt / "config.json").write_text("{not json")
    for argv in (["score", "--output-dir", str(out)], ["plan"]):
        fails([*argv, "--model", str(corrupt)], capsys, "could not be loaded", "config.json")
    assert not out.exists()


def test_corrupt_weights_and_a_gguf_of_random_bytes(tiny_model_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("ILA_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    truncated = tmp_path / "truncated-model"
    shutil.copytree(tiny_model_dir, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    argv = ["score", "--output-dir", str(out), *TINY_RUN]
    fails([*argv, "--model", str(truncated)], capsys, "corrupt or truncated", "save the model")
    gguf = tmp_path / "random.gguf"
    gguf.write_bytes(bytes(range(256)) * 16)
    fails([*argv, "--model", str(gguf)], capsys, f"GGUF file {gguf} could not be read")
    assert not out.exists()
    models = tmp_path / "cache" / "models"
    assert not models.exists() or list(models.iterdir()) == []  # no half conversion left


@pytest.fixture(scope="module")
def encoder_model_dirs(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Config-only directories of a tiny BERT (encoder-only) and T5 (encoder-decoder)."""
    from transformers import BertConfig, T5Config

    dirs = {}
    configs = {
        "bert": BertConfig(
            vocab_size=400,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=64,
        ),
        "t5": T5Config(vocab_size=400, d_model=32, d_ff=64, num_layers=2, num_heads=4),
    }
    for name, config in configs.items():
        path = tmp_path_factory.mktemp(name)
        config.save_pretrained(path)
        for item in os.listdir(tiny_model_dir):  # a tokenizer, so only the config can fail
            if "token" in item or item.endswith(".jinja"):
                shutil.copy(tiny_model_dir / item, path / item)
        dirs[name] = path
    return dirs


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("bert", ["is an encoder-only model (bert)", "needs a causal (decoder-only)"]),
        ("t5", ["is an encoder-decoder model (t5)", "needs a causal (decoder-only)"]),
    ],
)
@pytest.mark.parametrize("command", ["score", "plan"])
def test_model_that_is_not_a_causal_decoder(
    command, name, words, encoder_model_dirs, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["score", "--output-dir", str(out), *TINY_RUN] if command == "score" else ["plan"]
    fails([*argv, "--model", str(encoder_model_dirs[name])], capsys, *words)
    assert not out.exists()


# -- architectures whose blocks cannot be found -------------------------------------------


@pytest.fixture(scope="module")
def blockless_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A Llama with no decoder layers: transformers loads it, but it has no blocks."""
    path = tmp_path_factory.mktemp("blockless")
    config = LlamaConfig.from_pretrained(tiny_model_dir)
    config.num_hidden_layers = 0
    LlamaForCausalLM(config).save_pretrained(path)
    for name in os.listdir(tiny_model_dir):
        if "token" in name or name.endswith(".jinja"):
            shutil.copy(tiny_model_dir / name, path / name)
    return path


@pytest.mark.parametrize("command", ["score", "finetune", "plan"])
def test_model_without_blocks(command, blockless_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = {
        "score": ["score", "--output-dir", str(out), *TINY_RUN],
        "finetune": ["finetune", "--all-units", "--output-dir", str(out), *TINY_RUN],
        "plan": ["plan"],
    }[command]
    fails(
        [*argv, "--model", str(blockless_model_dir)],
        capsys,
        "could not find the transformer blocks of LlamaForCausalLM",
        "pass --blocks-path",
    )
    assert not out.exists()


@pytest.mark.parametrize(
    ("blocks_path", "words"),
    [
        ("model.norm", ["'model.norm' is a LlamaRMSNorm, not an nn.ModuleList", "model.layers"]),
        ("model.decoder.layers", ["does not exist", "ModuleLists in this model: model.layers"]),
    ],
)
def test_blocks_path_that_is_not_a_module_list(
    blocks_path, words, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    for argv in (["score", "--output-dir", str(out), *TINY_RUN], ["plan"]):
        fails([*argv, "--model", str(tiny_model_dir), "--blocks-path", blocks_path], capsys, *words)
    assert not out.exists()


# -- scores and selections from a different model -----------------------------------------


def _scores_of(model: torch.nn.Module, path: Path) -> Path:
    layer_map = find_layers(model)
    units = [
        UnitScore(u.name, u.block, u.module_type, 1.0 - 0.01 * i, 0.0)
        for i, u in enumerate(layer_map.units)
    ]
    LayerScores("ila", "other", "module", units, layout=layer_map.to_dict()).save(path)
    return path


@pytest.fixture(scope="module")
def other_model_scores(tiny_tokenizer, tmp_path_factory) -> Path:
    """layer_scores.json of a 2-block model (the tiny model has 4)."""
    folder = tmp_path_factory.mktemp("other-scores")
    return _scores_of(
        build_tiny_llama(len(tiny_tokenizer), num_layers=2), folder / "layer_scores.json"
    )


def test_finetune_refuses_scores_of_another_model(
    other_model_scores, tiny_model_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(tiny_model_dir), "--output-dir", str(out), *TINY_RUN]
    words = ["made for a llama model with 2 blocks", "this is a llama model with 4 blocks"]
    fails(
        [*argv, "--scores", str(other_model_scores), "--tune-top-fraction", "0.3"], capsys, *words
    )
    assert not out.exists()
    # A selection made from those scores is refused the same way, by finetune and by plan.
    assert main(["select", str(other_model_scores), "--tune-top-fraction", "0.3"]) == 0
    selection = other_model_scores.parent / "selection.json"
    fails([*argv, "--selection", str(selection)], capsys, *words)
    fails(["plan", "--model", str(tiny_model_dir), "--selection", str(selection)], capsys, *words)
    assert not out.exists()


def test_select_refuses_scores_that_do_not_match_their_layout(tiny_llama, tmp_path, capsys):
    path = _scores_of(tiny_llama, tmp_path / "layer_scores.json")
    data = json.loads(path.read_text())
    data["units"] = data["units"][:-7]  # a file edited by hand: block 3's scores are gone
    path.write_text(json.dumps(data))
    fails(
        ["select", str(path), "--tune-top-fraction", "0.3"],
        capsys,
        "units differ from this model's",
        "7 of this model missing",
    )
    assert not (tmp_path / "selection.json").exists()
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    fails(["select", str(path), "--tune-top-fraction", "0.3"], capsys, "schema_version 99")


# -- out-of-range fractions ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "words"),
    [
        ("--tune-top-fraction", "0", ["--tune-top-fraction must be in (0, 1), got 0.0"]),
        ("--tune-top-fraction", "1.5", ["--tune-top-fraction must be in (0, 1), got 1.5"]),
        ("--tune-top-fraction", "-0.1", ["must be in (0, 1)"]),
        ("--tune-top-fraction", "nan", ["must be in (0, 1), got nan"]),
        ("--freeze-bottom-fraction", "1", ["--freeze-bottom-fraction must be in (0, 1)"]),
    ],
)
def test_select_and_finetune_refuse_fractions_out_of_range(
    flag, value, words, tiny_llama, tiny_model_dir, tmp_path, capsys
):
    scores = _scores_of(tiny_llama, tmp_path / "layer_scores.json")
    fails(["select", str(scores), flag, value], capsys, *words)
    assert not (tmp_path / "selection.json").exists()
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(tiny_model_dir), "--scores", str(scores)]
    fails([*argv, flag, value, "--output-dir", str(out), *TINY_RUN], capsys, *words)
    assert not out.exists()


@pytest.mark.parametrize(
    ("command", "flag", "value", "words"),
    [
        ("run", "--tune-top-fraction", "2", ["--tune-top-fraction: must be in (0, 1), got 2.0"]),
        ("plan", "--tune-top-fraction", "0", ["--tune-top-fraction: must be in (0, 1), got 0.0"]),
        ("score", "--eval-fraction", "1", ["--eval-fraction: must be in [0, 1), got 1.0"]),
        ("score", "--stage2-target-fraction", "0", ["--stage2-target-fraction: must be in (0, 1)"]),
        ("score", "--lora-dropout", "1", ["--lora-dropout: must be in [0, 1), got 1.0"]),
        ("plan", "--tokens-per-second", "-5", ["--tokens-per-second: must be a positive number"]),
    ],
)
def test_settings_out_of_range(command, flag, value, words, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [command, "--model", str(tiny_model_dir), flag, value]
    fails(argv if command == "plan" else [*argv, "--output-dir", str(out)], capsys, *words)
    assert not out.exists()


# -- a NaN or infinite loss ---------------------------------------------------------------


def _assert_unfinished(out: Path, command: str) -> None:
    state = json.loads((out / "run_state.json").read_text())
    assert state["command"] == command and state["completed_stages"] == []


def test_diverging_stage1_stops_with_the_step_and_a_hint(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out), *TINY_RUN]
    # A learning rate of 1e30 makes the LoRA update infinite after the first step.
    fails(
        [*argv, "--stage1-learning-rate", "1e30", "--stage1-warmup-steps", "0"],
        capsys,
        "stage1: the update norm became",
        "at step 1;",
        "lower the learning rate",
    )
    assert not (out / "layer_scores.json").exists()
    assert not (out / "stage1" / "summary.json").exists()
    assert not (out / "stage1" / "adapter").exists()
    _assert_unfinished(out, "score")


def test_nan_loss_from_infinite_weights_stops_with_the_step(tiny_model_dir, tmp_path, capsys):
    broken = tmp_path / "inf-model"
    shutil.copytree(tiny_model_dir, broken)
    model = AutoModelForCausalLM.from_pretrained(broken)
    with torch.no_grad():
        model.model.norm.weight[0] = float("inf")
    model.save_pretrained(broken)
    out = tmp_path / "out"
    argv = ["score", "--model", str(broken), "--output-dir", str(out), *TINY_RUN]
    fails(argv, capsys, "stage1: the training loss became nan at step 1", "lower the learning rate")
    assert not (out / "layer_scores.json").exists()
    rows = (out / "metrics.jsonl").read_text() if (out / "metrics.jsonl").exists() else ""
    assert "NaN" not in rows and "Infinity" not in rows  # no non-finite value was logged
    _assert_unfinished(out, "score")


def test_diverging_full_finetune_stops_with_the_step(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["finetune", "--model", str(tiny_model_dir), "--all-units", "--method", "full"]
    argv += ["--learning-rate", "1e30", "--warmup-steps", "0", "--max-steps", "6"]
    message = fails(
        [*argv, "--output-dir", str(out), *TINY_RUN],
        capsys,
        "finetune: the training loss became",
        "lower the learning rate",
    )
    step = int(message.split(" at step ")[1].split(";")[0])
    assert 2 <= step <= 6  # the first step's loss is finite; the update then diverges
    assert not (out / "finetune_summary.json").exists()
    assert not (out / "changed_weights").exists()
    _assert_unfinished(out, "finetune")


# -- an output dir that holds another run -------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    argv = ["-q", "finetune", "--model", str(tiny_model_dir), "--blocks", "3"]
    assert main([*argv, "--max-steps", "1", "--output-dir", str(out), *TINY_RUN]) == 0
    return out


@pytest.mark.parametrize("command", ["score", "finetune", "run"])
def test_output_dir_with_another_run_is_refused(command, finished_run, tiny_model_dir, capsys):
    before = tree(finished_run)
    argv = [command, "--model", str(tiny_model_dir), "--output-dir", str(finished_run)]
    if command == "finetune":
        argv.append("--all-units")
    fails([*argv, *TINY_RUN], capsys, "already holds files", "pass --overwrite")
    assert tree(finished_run) == before


def test_overwrite_replaces_the_other_run(finished_run, tiny_model_dir, tmp_path, capsys):
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    (copy / "notes.txt").write_text("not written by ila")
    before = tree(copy)
    argv = ["finetune", "--model", str(tiny_model_dir), "--blocks", "1", "--max-steps", "1"]
    argv += ["--output-dir", str(copy), "--overwrite", *TINY_RUN]
    fails(argv, capsys, "holds files ila did not write (notes.txt)", "move them out")
    assert tree(copy) == before
    (copy / "notes.txt").unlink()
    (copy / "adapter" / "stale.bin").write_text("not written by ila")  # inside an ila entry
    fails(argv, capsys, "holds files ila did not write (adapter/stale.bin)")
    (copy / "adapter" / "stale.bin").unlink()
    assert main(["-q", *argv]) == 0
    assert json.loads((copy / "selection.json").read_text())["value"] == [1]


def test_select_refuses_an_existing_selection_and_a_file_as_output_dir(
    tiny_llama, tmp_path, capsys
):
    scores = _scores_of(tiny_llama, tmp_path / "layer_scores.json")
    assert main(["select", str(scores), "--blocks", "2"]) == 0
    before = tree(tmp_path)
    fails(["select", str(scores), "--blocks", "1"], capsys, "selection.json exists", "--overwrite")
    assert tree(tmp_path) == before
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    fails(
        ["score", "--output-dir", str(a_file)],
        capsys,
        f"--output-dir {a_file} is a file; pass a directory",
    )


def test_export_of_a_scores_file_says_to_select_first(tiny_llama, tmp_path, capsys):
    scores = _scores_of(tiny_llama, tmp_path / "layer_scores.json")
    fails(["export", str(scores), "--format", "list"], capsys, "layer scores", "ila select")


def test_export_output_that_is_a_directory(tiny_llama, tmp_path, capsys):
    scores = _scores_of(tiny_llama, tmp_path / "layer_scores.json")
    assert main(["select", str(scores), "--blocks", "2"]) == 0
    target = tmp_path / "configs"
    target.mkdir()
    argv = ["export", str(tmp_path), "--format", "peft", "--output", str(target)]
    fails(argv, capsys, f"--output {target} is a directory", "pass a file path")
    assert list(target.iterdir()) == []


# -- exit codes seen from a shell ---------------------------------------------------------


def test_exit_code_and_message_from_a_shell(tmp_path):
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "ila", "-q", "score", "--model", "./no/such/model"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(
        [*argv, "--output-dir", str(out)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "ila: error: model path ./no/such/model does not exist"
    ]
    assert not out.exists()
