"""`ila score` under torchrun with 2 CPU processes (gloo) equals the single-process run.

Same global batch (2 processes x 2 = 1 process x 4) and seed. The stage-2 gates live in
the model, so DDP averages their gradients; only rank 0 writes the run directory.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ila.scores import LayerScores

ARGS = [
    "--max-length", "96", "--limit", "80", "--stage1-max-steps", "12",
    "--stage1-min-steps", "5", "--stage2-steps", "12", "--device", "cpu",
]  # fmt: skip


def _run(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists(),
    reason="torchrun not installed",
)
def test_two_process_score_matches_single_process(tiny_model_dir, tmp_path):
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    two = tmp_path / "two"
    result = _run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "ila",
            "score",
            "--model",
            str(tiny_model_dir),
            "--output-dir",
            str(two),
            "--batch-size",
            "2",
            *ARGS,
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("ila score:") == 1  # only rank 0 prints
    one = tmp_path / "one"
    result = _run(
        [
            sys.executable,
            "-m",
            "ila",
            "score",
            "--model",
            str(tiny_model_dir),
            "--output-dir",
            str(one),
            "--batch-size",
            "4",
            *ARGS,
        ]
    )
    assert result.returncode == 0, result.stderr[-2000:]

    a, b = LayerScores.load(one), LayerScores.load(two)
    raw_a, raw_b = [u.raw for u in a.units], [u.raw for u in b.units]
    assert max(abs(x - y) for x, y in zip(raw_a, raw_b, strict=True)) < 1e-2
    assert len(set(a.top(0.25)) & set(b.top(0.25))) >= len(a.top(0.25)) - 1
    loss_a = json.loads((one / "stage1" / "summary.json").read_text())["loss_curve"]
    loss_b = json.loads((two / "stage1" / "summary.json").read_text())["loss_curve"]
    assert loss_a == pytest.approx(loss_b, rel=1e-3)
    assert not list(two.glob("**/*.tmp"))
