"""`ila finetune --init-from-stage1`: the selected units' LoRA starts from stage 1's."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import fails
from ila.cli import main
from ila.core.selection import Selection

TINY = ["--max-length", "64", "--limit", "40", "--batch-size", "4", "--device", "cpu"]
SCORE = ["--stage1-max-steps", "4", "--stage1-min-steps", "0", "--stage2-steps", "2"]
# The first optimizer step of a linear warm-up has learning rate 0: the saved adapter is
# the one training started from.
NO_STEP = ["--max-steps", "1", "--warmup-steps", "5", "--learning-rate", "1e-3"]
QUICK_RUN = [*SCORE, "--max-steps", "2", "--eval-generate-examples", "0"]


@pytest.fixture(scope="module")
def score_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("warm") / "scores"
    argv = ["-q", "score", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    assert main([*argv, *TINY, *SCORE]) == 0
    return out


def _finetune(model_dir, out, *extra) -> list[str]:
    return ["finetune", "--model", str(model_dir), "--output-dir", str(out), *TINY, *extra]


def test_selected_units_start_from_the_stage1_adapter(score_run, tiny_model_dir, tmp_path):
    stage1 = load_file(str(score_run / "stage1" / "adapter" / "adapter_model.safetensors"))
    warm, cold = tmp_path / "warm", tmp_path / "cold"
    rule = ["--scores", str(score_run), "--tune-top-fraction", "0.25", *NO_STEP]
    assert main(["-q", *_finetune(tiny_model_dir, warm, *rule, "--init-from-stage1")]) == 0
    assert main(["-q", *_finetune(tiny_model_dir, cold, *rule)]) == 0
    tuned = load_file(str(warm / "adapter" / "adapter_model.safetensors"))
    selected = Selection.load(warm / "selection.json").selected
    assert len(tuned) == 2 * len(selected)  # A and B of the selected units only
    for key, value in tuned.items():
        assert torch.equal(value, stage1[key]), key
    assert any("lora_B" in k and stage1[k].abs().sum() > 0 for k in tuned)  # stage 1 moved B
    # A cold start has LoRA's usual init: B is zero.
    coldly = load_file(str(cold / "adapter" / "adapter_model.safetensors"))
    assert all(not v.any() for k, v in coldly.items() if "lora_B" in k)
    summary = json.loads((warm / "finetune_summary.json").read_text())
    assert summary["init_from_stage1"] == str(score_run / "stage1" / "adapter")
    assert json.loads((cold / "finetune_summary.json").read_text())["init_from_stage1"] is None


def test_init_from_stage1_refusals(score_run, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "ft"
    rule = ["--scores", str(score_run), "--tune-top-fraction", "0.25", "--init-from-stage1"]
    fails(_finetune(tiny_model_dir, out, *rule, "--method", "full"), capsys, "--method lora")
    fails(
        _finetune(tiny_model_dir, out, *rule, "--lora-rank", "4"),
        capsys,
        "rank 8",
        "--lora-rank 8",
    )
    fails(
        _finetune(tiny_model_dir, out, "--all-units", "--init-from-stage1"),
        capsys,
        "pass --scores RUN",
    )
    random_run = tmp_path / "random"
    argv = ["-q", "score", "--scorer", "random", "--model", str(tiny_model_dir)]
    assert main([*argv, "--output-dir", str(random_run), *TINY]) == 0
    fails(
        _finetune(
            tiny_model_dir,
            out,
            "--scores",
            str(random_run),
            "--tune-top-fraction",
            "0.25",
            "--init-from-stage1",
        ),
        capsys,
        "holds no stage-1 adapter",
    )
    assert not out.exists()


def test_run_refuses_init_from_stage1_it_cannot_honour(tiny_model_dir, tmp_path, capsys):
    argv = ["run", "--model", str(tiny_model_dir), "--output-dir", str(tmp_path / "run"), *TINY]
    flag = "--init-from-stage1"
    fails([*argv, flag, "--method", "full"], capsys, flag, "--method lora")
    fails([*argv, flag, "--seeds", "2"], capsys, flag, "--seeds 2")
    assert not (tmp_path / "run").exists()


def test_run_starts_its_fine_tunes_from_stage1_by_default(tiny_model_dir, tmp_path):
    argv = ["-q", "run", "--model", str(tiny_model_dir), *TINY, *QUICK_RUN]
    assert main([*argv, "--output-dir", str(tmp_path / "warm")]) == 0
    for name in ("finetune", "finetune-all-units"):
        summary = json.loads((tmp_path / "warm" / name / "finetune_summary.json").read_text())
        assert summary["init_from_stage1"] == str(tmp_path / "warm" / "stage1" / "adapter")
    # --no-init-from-stage1 starts from LoRA's init; so does a full fine-tune, by default.
    # The cold run also selects within module type: 0.3 of each type's 4 units is 1.
    cold = [*argv, "--no-init-from-stage1", "--within-module-type"]
    assert main([*cold, "--output-dir", str(tmp_path / "cold")]) == 0
    assert main([*argv, "--method", "full", "--output-dir", str(tmp_path / "full")]) == 0
    for run in ("cold", "full"):
        summary = json.loads((tmp_path / run / "finetune" / "finetune_summary.json").read_text())
        assert summary["init_from_stage1"] is None
    chosen = json.loads((tmp_path / "cold" / "selection.json").read_text())
    assert chosen["within_module_type"] is True and chosen["value"] == 0.3
    counts = chosen["summary"]["by_module_type"].values()
    assert [c["selected"] for c in counts] == [1] * 7 and len(chosen["selected"]) == 7
