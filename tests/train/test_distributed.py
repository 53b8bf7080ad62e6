"""Multi-process training on CPU (gloo): 2 processes equal 1 process with the same global batch.

`ila score` under torchrun and under `accelerate launch` with examples/accelerate/ddp.yaml,
and `ila finetune` under torchrun, each with 2 processes x 2 examples against 1 process x
4 examples and the same seed. The stage-2 gates live in the model, so DDP averages their
gradients; only rank 0 writes the run directory and prints. Sharded launches (FSDP,
DeepSpeed) are refused before anything is written (see ila.train.parallel).

LoRA dropout is off: each process draws its own dropout masks, which no single process
reproduces. Tolerances: the two runs add the same per-example gradients in a different order (an
all-reduce of two half-batch means instead of one full-batch mean), so they agree to
float32 rounding, which training then carries along. Measured here (12 + 12 score steps, 8
fine-tune steps): losses 1.6e-7 relative, raw gate scores 3.6e-7 and LoRA weights 1.9e-7
absolute; asserted: 1e-5 for each, and the same ranking up to swaps of units whose
importances differ by less than that. The single-process references run in this process.
"""

import itertools
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ila.cli import main
from ila.core.scores import LayerScores
from ila.errors import IlaError
from ila.train.parallel import requested_sharding

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SCORE_ARGS = [
    "--max-length", "96", "--limit", "80", "--stage1-max-steps", "12",
    "--stage1-min-steps", "5", "--stage2-steps", "12", "--device", "cpu", "--lora-dropout", "0",
    "--precision", "fp32",
]  # fmt: skip
FINETUNE_ARGS = [
    "--max-length", "96", "--limit", "80", "--device", "cpu", "--method", "lora",
    "--max-steps", "8", "--learning-rate", "0.01", "--blocks", "1,2", "--lora-dropout", "0",
    "--precision", "fp32",
]  # fmt: skip
# float32 throughout: `--precision auto` would pick bf16 autocast on CPUs with AVX512-BF16 or
# AMX, whose rounding differs between one process and two beyond these tolerances.
ZERO_STAGE = "ACCELERATE_DEEPSPEED_ZERO_STAGE"
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 1e-5

needs_launchers = pytest.mark.skipif(
    not (BIN / "torchrun").exists() or not (BIN / "accelerate").exists(),
    reason="torchrun / accelerate not installed in this environment",
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _torchrun() -> list[str]:
    return [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(_free_port())]


def _files(out: Path) -> set[str]:
    return {
        str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and "trainer" not in p.parts
    }


def _assert_same_scores(one: Path, two: Path) -> None:
    a, b = LayerScores.load(one), LayerScores.load(two)
    raw_a, raw_b = [u.raw for u in a.units], [u.raw for u in b.units]
    assert raw_b == pytest.approx(raw_a, abs=WEIGHT_ATOL)
    importance_b = {u.name: u.importance for u in b.units}
    in_a_order = [importance_b[name] for name in a.ranking()]
    assert all(x >= y - WEIGHT_ATOL for x, y in itertools.pairwise(in_a_order))
    for stage in ("stage1", "stage2"):
        loss_a = json.loads((one / stage / "summary.json").read_text())["loss_curve"]
        loss_b = json.loads((two / stage / "summary.json").read_text())["loss_curve"]
        assert loss_b == pytest.approx(loss_a, rel=LOSS_RTOL)
    # Only rank 0 wrote: the same files, and one metrics row per step (not one per process).
    assert _files(two) == _files(one)
    rows = (two / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == len((one / "metrics.jsonl").read_text().splitlines())


@pytest.fixture(scope="module")
def single_score(tiny_model_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "one"
    argv = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    assert main([*argv, "--batch-size", "4", *SCORE_ARGS]) == 0
    return out


@needs_launchers
def test_torchrun_two_process_score_matches_single_process(single_score, tiny_model_dir, tmp_path):
    two = tmp_path / "two"
    result = _run(
        [*_torchrun(), "-m", "ila", "score", "--model", str(tiny_model_dir),
         "--output-dir", str(two), "--batch-size", "2", *SCORE_ARGS]
    )  # fmt: skip
    assert result.stdout.count("ila score:") == 1  # only rank 0 prints
    _assert_same_scores(single_score, two)
    assert not list(two.glob("**/*.tmp"))


@needs_launchers
def test_accelerate_launch_with_the_ddp_example_matches_single_process(
    single_score, tiny_model_dir, tmp_path
):
    two = tmp_path / "acc"
    config = REPO / "examples" / "accelerate" / "ddp.yaml"
    result = _run(
        [str(BIN / "accelerate"), "launch", "--config_file", str(config), "--num_processes", "2",
         "--main_process_port", str(_free_port()), "-m", "ila", "score",
         "--model", str(tiny_model_dir), "--output-dir", str(two), "--batch-size", "2",
         *SCORE_ARGS]
    )  # fmt: skip
    assert result.stdout.count("ila score:") == 1
    assert "[rank1]" in result.stderr  # two processes really ran
    _assert_same_scores(single_score, two)


@needs_launchers
def test_torchrun_two_process_finetune_matches_single_process(tiny_model_dir, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    argv = ["finetune", "--model", str(tiny_model_dir)]
    assert main([*argv, "--output-dir", str(one), "--batch-size", "4", *FINETUNE_ARGS]) == 0
    result = _run([*_torchrun(), "-m", "ila", *argv, "--output-dir", str(two), "--batch-size", "2",
                   *FINETUNE_ARGS])  # fmt: skip
    assert result.stdout.count("ila finetune:") == 1
    a = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(two / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2  # A and B of 7 modules in 2 blocks
    for key in a:
        assert torch.allclose(a[key], b[key], atol=WEIGHT_ATOL, rtol=0), key
    assert any(not torch.equal(b[key], torch.zeros_like(b[key])) for key in b)  # it trained
    s1 = json.loads((one / "finetune_summary.json").read_text())
    s2 = json.loads((two / "finetune_summary.json").read_text())
    assert s2["steps"] == s1["steps"] == 8
    assert s2["final_train_loss"] == pytest.approx(s1["final_train_loss"], rel=LOSS_RTOL)
    assert s2["eval_loss"] == pytest.approx(s1["eval_loss"], rel=LOSS_RTOL)
    assert _files(two) == _files(one)
    assert len((two / "metrics.jsonl").read_text().splitlines()) == 8


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ACCELERATE_USE_FSDP": "true"}, ("FSDP", 0)),
        ({"ACCELERATE_USE_DEEPSPEED": "true", ZERO_STAGE: "3"}, ("DeepSpeed", 3)),
        ({"ACCELERATE_USE_DEEPSPEED": "true", ZERO_STAGE: "2"}, ("DeepSpeed", 2)),
        ({"ACCELERATE_USE_FSDP": "false"}, None),
    ],
)  # fmt: skip
def test_requested_sharding_reads_the_accelerate_launch_environment(monkeypatch, env, expected):
    for name in (
        "ACCELERATE_USE_FSDP",
        "ACCELERATE_USE_DEEPSPEED",
        "ACCELERATE_DEEPSPEED_CONFIG_FILE",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert requested_sharding() == expected


def test_deepspeed_stage_is_read_from_its_config_file(monkeypatch, tmp_path):
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(config))
    assert requested_sharding() == ("DeepSpeed", 3)
    config.write_text("{}")
    with pytest.raises(IlaError, match=r"zero_optimization\.stage"):
        requested_sharding()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
@pytest.mark.parametrize("command", ["score", "finetune"])
def test_sharded_launch_on_cpu_is_refused_before_anything_is_written(
    tiny_model_dir, tmp_path, monkeypatch, capsys, command
):
    # accelerate's FSDP plugin fails without a GPU: ila says so in one line, before any work.
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    out = tmp_path / "out"
    argv = [command, "--model", str(tiny_model_dir), "--output-dir", str(out), "--device", "cpu"]
    assert main([*argv, "--all-units"] if command == "finetune" else argv) == 2
    err = capsys.readouterr().err
    assert "FSDP, which needs CUDA devices" in err and "examples/accelerate/ddp.yaml" in err
    assert not out.exists()


def test_example_accelerate_configs_exist_and_name_their_backend():
    import yaml

    folder = REPO / "examples" / "accelerate"
    kinds = {
        name: yaml.safe_load((folder / name).read_text())["distributed_type"]
        for name in ("ddp.yaml", "fsdp.yaml", "deepspeed_zero2.yaml", "deepspeed_zero3.yaml")
    }
    assert kinds == {
        "ddp.yaml": "MULTI_GPU",
        "fsdp.yaml": "FSDP",
        "deepspeed_zero2.yaml": "DEEPSPEED",
        "deepspeed_zero3.yaml": "DEEPSPEED",
    }
    fsdp = yaml.safe_load((folder / "fsdp.yaml").read_text())["fsdp_config"]
    assert fsdp["fsdp_version"] == 2  # ila refuses FSDP1 (tests/train/test_fsdp.py)
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
