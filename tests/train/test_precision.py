"""--precision: float32 or 16-bit autocast, chosen for the machine (ila.train.precision)."""

import json

import pytest
import torch

from conftest import fails
from ila.cli import main
from ila.config import TrainConfig
from ila.errors import IlaError
from ila.train import precision
from ila.train.precision import choose_precision, cpu_has_bf16
from ila.train.trainer import make_training_args

CPU = torch.device("cpu")


def _cpuinfo(tmp_path, flags: str):
    path = tmp_path / "cpuinfo"
    path.write_text(f"processor\t: 0\nmodel name\t: x\nflags\t\t: fpu sse2 {flags}\n\n")
    return path


def test_cpu_flags_decide_bf16(tmp_path):
    assert cpu_has_bf16(_cpuinfo(tmp_path, "avx2 avx512f avx512_bf16"))
    assert cpu_has_bf16(_cpuinfo(tmp_path, "avx2 amx_tile amx_bf16"))
    assert not cpu_has_bf16(_cpuinfo(tmp_path, "avx2 avx512f"))
    assert not cpu_has_bf16(tmp_path / "no-such-file")  # not Linux: unknown, so no


def test_auto_follows_the_cpu_and_forced_choices_are_kept(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    choice = choose_precision("auto", CPU)
    assert choice.precision == "fp32" and "no AVX512-BF16" in choice.reason
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert choose_precision("auto", CPU).precision == "bf16"
    for forced in ("fp32", "bf16"):
        assert choose_precision(forced, CPU).precision == forced
    with pytest.raises(IlaError, match="fp16 needs a CUDA device"):
        choose_precision("fp16", CPU)


def test_training_arguments_follow_the_choice(monkeypatch, tmp_path):
    def args(**train):
        return make_training_args(
            TrainConfig(**train), output_dir=tmp_path, learning_rate=1e-3, max_steps=1, device="cpu"
        )

    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert not args().bf16 and not args().fp16
    assert args(precision="bf16").bf16 and args(bf16=True).bf16  # the older flag
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert args().bf16
    assert not args(precision="fp32").bf16
    with pytest.raises(IlaError, match="bf16: contradicts precision fp32"):
        TrainConfig(bf16=True, precision="fp32")


def test_runs_record_the_choice_and_fp16_on_cpu_is_refused_first(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["score", "--scorer", "random", "--model", str(tiny_model_dir), "--device", "cpu"]
    argv += ["--limit", "24", "--max-length", "64", "--output-dir", str(out)]
    fails([*argv, "--precision", "fp16"], capsys, "--precision fp16 needs a CUDA device")
    assert not out.exists()
    assert main(["-q", *argv]) == 0
    recorded = json.loads((out / "environment.json").read_text())["precision"]
    assert recorded == choose_precision("auto", CPU).to_dict()
