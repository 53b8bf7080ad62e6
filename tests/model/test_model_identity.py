"""Model identity (ila.model.identity): fingerprints, and the checks that use them.

Two tiny Llamas with one layout and different weights stand for a base and its fine-tune:
shapes cannot tell them apart, so every check here is one that layout checks miss.
"""

import json
import shutil
from pathlib import Path

import pytest

from conftest import build_tiny_llama, fails
from ila.analysis.compare import compare_scores
from ila.cli import main
from ila.core.scores import LayerScores
from ila.errors import IlaError
from ila.model.identity import (
    BASE_MODEL_FILE,
    check_same_model,
    local_fingerprint,
    model_fingerprint,
)

TINY_RUN = ["--limit", "24", "--max-length", "64", "--batch-size", "4", "--device", "cpu"]
FINETUNE = ["--max-steps", "2", "--learning-rate", "1e-2", *TINY_RUN]


@pytest.fixture(scope="module")
def twin_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """The tiny model's layout with other weights (another seed)."""
    path = tmp_path_factory.mktemp("tiny-twin")
    build_tiny_llama(len(tiny_tokenizer), seed=1).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def scores_run(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("identity") / "scores"
    argv = ["-q", "score", "--scorer", "random", "--model", str(tiny_model_dir)]
    assert main([*argv, "--output-dir", str(out), *TINY_RUN]) == 0
    return out


# -- the fingerprint --------------------------------------------------------------------------


def test_a_copy_has_the_fingerprint_of_its_original(tiny_model_dir, tmp_path):
    copy = shutil.copytree(tiny_model_dir, tmp_path / "elsewhere")
    config = json.loads((copy / "config.json").read_text())
    config["_name_or_path"] = "/somewhere/else"
    config["transformers_version"] = "0.0.1"
    (copy / "config.json").write_text(json.dumps(config, indent=4))
    (copy / "optimizer.pt").write_bytes(b"trainer state, not the model")
    assert model_fingerprint(str(copy)) == model_fingerprint(str(tiny_model_dir))


def test_other_weights_or_config_change_the_fingerprint(tiny_model_dir, twin_model_dir, tmp_path):
    ours = model_fingerprint(str(tiny_model_dir))
    twin = model_fingerprint(str(twin_model_dir))
    assert ours.config == twin.config and ours.weights != twin.weights
    changed = shutil.copytree(tiny_model_dir, tmp_path / "rope")
    config = json.loads((changed / "config.json").read_text())
    config["rope_theta"] = 1234.0
    (changed / "config.json").write_text(json.dumps(config))
    other = model_fingerprint(str(changed))
    assert other.weights == ours.weights and other.config != ours.config
    assert other.id != ours.id


def test_large_files_are_sampled_and_a_sampled_change_is_seen(tmp_path):
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    data = bytearray(range(256)) * (8 * 1024)  # 2 MiB: sampled, not read whole
    (model / "model.safetensors").write_bytes(bytes(data))
    before = model_fingerprint(str(model))
    assert before.num_bytes == len(data) and before.num_files == 1
    data[64 * 1024 + 10] ^= 0xFF  # inside the first sampled chunk after the head
    (model / "model.safetensors").write_bytes(bytes(data))
    assert model_fingerprint(str(model)).weights != before.weights


def test_a_gguf_file_is_itself_whatever_its_name(tmp_path):
    (tmp_path / "a.gguf").write_bytes(b"GGUF" + bytes(range(256)) * 100)
    shutil.copy(tmp_path / "a.gguf", tmp_path / "b.gguf")
    a, b = model_fingerprint(str(tmp_path / "a.gguf")), model_fingerprint(str(tmp_path / "b.gguf"))
    assert a == b and a.kind == "gguf" and a.config is None


def test_local_fingerprint_is_none_for_models_not_on_this_machine(tmp_path, tiny_model_dir):
    assert local_fingerprint(str(tmp_path / "gone")) is None
    assert local_fingerprint("nobody-here/not-a-cached-model") is None
    assert local_fingerprint(str(tiny_model_dir)) == model_fingerprint(str(tiny_model_dir))


def test_check_same_model(tiny_model_dir, twin_model_dir):
    ours, twin = model_fingerprint(str(tiny_model_dir)), model_fingerprint(str(twin_model_dir))
    assert check_same_model(None, ours, what="x") is None  # recorded before fingerprints
    assert check_same_model(ours.to_dict(), ours, what="x") is None
    with pytest.raises(IlaError, match=r"x was made with another model.*allow_other_model"):
        check_same_model(twin.to_dict(), ours, what="x")
    note = check_same_model(twin, ours, what="x", allow=True)
    assert note is not None and "weights differ" in note and twin.id in note


# -- where runs are checked -------------------------------------------------------------------


def test_scores_and_runs_record_the_fingerprint(scores_run, tiny_model_dir):
    expected = model_fingerprint(str(tiny_model_dir)).to_dict()
    assert LayerScores.load(scores_run).meta["model_fingerprint"] == expected
    state = json.loads((scores_run / "run_state.json").read_text())
    assert state["model_fingerprint"] == expected


def test_finetune_refuses_a_ranking_of_another_model(scores_run, twin_model_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    argv = ["finetune", "--model", str(twin_model_dir), "--output-dir", str(out)]
    argv += ["--scores", str(scores_run), "--tune-top-fraction", "0.5", *FINETUNE]
    fails(argv, capsys, "layer_scores.json", "another model", "--allow-other-model")
    assert not out.exists()
    # A selection made from those scores carries the fingerprint too.
    assert main(["-q", "select", str(scores_run), "--tune-top-fraction", "0.5"]) == 0
    selection = scores_run / "selection.json"
    argv = ["finetune", "--model", str(twin_model_dir), "--output-dir", str(out)]
    fails([*argv, "--selection", str(selection), *FINETUNE], capsys, "another model")
    assert main(["-q", *argv, "--selection", str(selection), *FINETUNE, "--allow-other-model"]) == 0
    summary = json.loads((out / "finetune_summary.json").read_text())
    assert "another model" in summary["other_model"]
    assert "--allow-other-model" in summary["other_model"]


def test_eval_refuses_an_adapter_of_another_model(tiny_model_dir, twin_model_dir, tmp_path, capsys):
    for method in ("lora", "full"):
        ft = tmp_path / method
        argv = ["-q", "finetune", "--model", str(tiny_model_dir), "--output-dir", str(ft)]
        assert main([*argv, "--all-units", "--method", method, *FINETUNE]) == 0
        saved = ft / ("adapter" if method == "lora" else "changed_weights") / BASE_MODEL_FILE
        assert json.loads(saved.read_text())["id"] == model_fingerprint(str(tiny_model_dir)).id
        out = tmp_path / f"ev-{method}"
        argv = ["eval", "--model", str(twin_model_dir), "--output-dir", str(out)]
        argv += ["--adapter", str(ft), "--eval-generate-examples", "0", *TINY_RUN]
        fails(argv, capsys, "--adapter", "another model", "--allow-other-model")
        assert not out.exists()
        assert main(["-q", *argv, "--allow-other-model"]) == 0
        results = json.loads((out / "eval_results.json").read_text())
        assert "another model" in results["other_model"]
        # The base it was trained on passes, and records no note.
        argv[2] = str(tiny_model_dir)
        assert main(["-q", *argv, "--overwrite"]) == 0
        assert json.loads((out / "eval_results.json").read_text())["other_model"] is None


def test_eval_checks_a_foreign_adapter_against_its_recorded_base(
    tiny_model_dir, twin_model_dir, tmp_path, capsys
):
    ft = tmp_path / "lora"
    argv = ["-q", "finetune", "--model", str(tiny_model_dir), "--output-dir", str(ft)]
    assert main([*argv, "--all-units", "--method", "lora", *FINETUNE]) == 0
    foreign = shutil.copytree(ft / "adapter", tmp_path / "foreign")
    (foreign / BASE_MODEL_FILE).unlink()  # as written by another trainer
    config = json.loads((foreign / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tiny_model_dir)
    (foreign / "adapter_config.json").write_text(json.dumps(config))
    out = tmp_path / "ev"
    argv = ["eval", "--model", str(twin_model_dir), "--output-dir", str(out), "--adapter"]
    argv += [str(foreign), "--eval-generate-examples", "0", *TINY_RUN]
    fails(argv, capsys, "base", str(tiny_model_dir), "another model")
    # A recorded base that is not on this machine cannot be checked: the adapter is used.
    config["base_model_name_or_path"] = str(tmp_path / "deleted-model")
    (foreign / "adapter_config.json").write_text(json.dumps(config))
    assert main(["-q", *argv]) == 0


def test_resume_refuses_a_model_whose_files_changed(
    tiny_model_dir, twin_model_dir, tmp_path, capsys
):
    model = shutil.copytree(tiny_model_dir, tmp_path / "model")
    out = tmp_path / "run"
    argv = ["score", "--scorer", "random", "--model", str(model), "--output-dir", str(out)]
    assert main(["-q", *argv, *TINY_RUN]) == 0
    state_file = out / "run_state.json"
    state = json.loads(state_file.read_text())
    state["completed_stages"] = []  # as if it had been interrupted
    state_file.write_text(json.dumps(state))
    shutil.copy(twin_model_dir / "model.safetensors", model / "model.safetensors")
    fails([*argv, "--resume", *TINY_RUN], capsys, "--resume", "another model")


def _scores_with(fingerprint: dict | None, model_id: str) -> LayerScores:
    from conftest import make_scores

    scores = make_scores(range(8), model_id=model_id)
    if fingerprint is not None:
        scores.meta["model_fingerprint"] = fingerprint
    return scores


def test_compare_identifies_models_by_fingerprint(tiny_model_dir, twin_model_dir):
    ours = model_fingerprint(str(tiny_model_dir)).to_dict()
    twin = model_fingerprint(str(twin_model_dir)).to_dict()
    # One model under two paths (a copy, or a path typed relative to another directory).
    same = [_scores_with(ours, "./m"), _scores_with(ours, "/copy/of/m")]
    assert not compare_scores(same, ["a", "b"]).models_differ
    # Two models at one path (the files were replaced between the runs).
    differ = [_scores_with(ours, "m"), _scores_with(twin, "m")]
    with pytest.raises(IlaError, match=r"different models.*allow_other_model"):
        compare_scores(differ, ["a", "b"])
    assert compare_scores(differ, ["a", "b"], allow_other_model=True).models_differ
    # Runs that record no fingerprint are told apart by path, as before.
    with pytest.raises(IlaError, match="different models"):
        compare_scores([_scores_with(None, "m1"), _scores_with(None, "m2")], ["a", "b"])
