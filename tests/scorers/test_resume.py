"""`ila score --resume` after a SIGKILL mid stage 1 and mid stage 2 equals an uninterrupted run.

Three `python -m ila score` processes start together on a tiny model with a checkpoint
every 4 steps: one runs through, one is killed (SIGKILL, no clean-up possible) once stage 1
has a complete checkpoint, one once stage 2 has one. The killed runs must not look
complete; resumed with `ila score --resume`, both must reproduce the uninterrupted run:
the same T (the stability test sees the restored loss history), the same loss curves and
gate scores (weights, Adam moments, RNG and data position come back from the checkpoint),
and one metrics row per step. Every run uses one thread, so the runs are deterministic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from ila.cli import main
from ila.core.scores import LayerScores
from ila.errors import IlaError

# Stage 1 cannot stop before step 30 (min-steps), so a kill at a checkpoint of step >= 8
# lands mid stage 1 with 20+ steps to spare; stage 2 runs 40 steps.
ARGS = [
    "--max-length", "64", "--limit", "80", "--batch-size", "4", "--device", "cpu",
    "--threads", "1", "--save-steps", "4", "--stage1-learning-rate", "0.01",
    "--stage1-max-steps", "60", "--stage1-min-steps", "30", "--stage1-window", "5",
    "--stage1-patience", "2", "--stage1-epsilon", "0.3", "--stage1-rank-epsilon", "0.5",
    "--stage2-steps", "40",
]  # fmt: skip
TOLERANCE = 1e-6  # resumed vs uninterrupted, on every loss and raw gate score


# Stage 1 as a full fine-tune resumes the same way (docs/method.md): the Trainer checkpoint
# holds the unit weights, the run keeps W(0) from the model files.
# So does a DPO objective (TRL's DPOTrainer checkpoints through the same Trainer code).
METHODS = {
    "lora": ("adapter", []),
    "full": ("deltas", ["--stage1-method", "full"]),
    "dpo": ("adapter", ["--objective", "dpo", "--data", "ila-preference"]),
}


def _launch(model_dir: Path, out: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = (out.parent / f"{out.name}.log").open("w")
    command = [sys.executable, "-m", "ila", "-q", "score", "--model", str(model_dir)]
    return subprocess.Popen(
        [*command, "--output-dir", str(out), *ARGS, *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )


def _finish(proc: subprocess.Popen, out: Path) -> None:
    assert proc.wait(timeout=300) == 0, (out.parent / f"{out.name}.log").read_text()[-3000:]


def _checkpoint_steps(folder: Path) -> list[int]:
    """Steps of the complete checkpoints (those holding ila_state.json) under ``folder``."""
    return sorted(
        int(p.parent.name.split("-")[1]) for p in folder.glob("checkpoint-*/ila_state.json")
    )


def _kill_when(proc: subprocess.Popen, ready: Callable[[], bool], out: Path) -> None:
    deadline = time.monotonic() + 300
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"run ended (rc {proc.returncode}) before the kill point:\n"
                        + (out.parent / f"{out.name}.log").read_text()[-3000:])  # fmt: skip
        assert time.monotonic() < deadline, "kill point not reached in 300 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


@pytest.fixture()
def started() -> Iterator[list[subprocess.Popen]]:
    """Processes a test starts; any still running when it ends (a failure) are killed."""
    procs: list[subprocess.Popen] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _completed(out: Path) -> list[str]:
    return json.loads((out / "run_state.json").read_text())["completed_stages"]


def _metric_steps(out: Path, stage: str) -> list[int]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [row["step"] for row in rows if row["stage"] == stage]


def _summary(out: Path, stage: str) -> dict:
    return json.loads((out / stage / "summary.json").read_text())


@pytest.mark.parametrize(
    "method",
    [
        "lora",
        pytest.param("full", marks=pytest.mark.slow),
        pytest.param("dpo", marks=pytest.mark.slow),
    ],
)
def test_resume_after_sigkill_in_stage1_and_stage2_equals_an_uninterrupted_run(
    tiny_model_dir, tmp_path, started, method
):
    folder, extra = METHODS[method]
    straight, cut1, cut2 = tmp_path / "straight", tmp_path / "cut1", tmp_path / "cut2"
    procs = {out: _launch(tiny_model_dir, out, *extra) for out in (straight, cut1, cut2)}
    started.extend(procs.values())
    _kill_when(
        procs[cut1], lambda: max(_checkpoint_steps(cut1 / "stage1/trainer"), default=0) >= 8, cut1
    )
    _kill_when(
        procs[cut2], lambda: max(_checkpoint_steps(cut2 / "stage2/trainer"), default=0) >= 8, cut2
    )

    # Nothing of an unfinished stage looks complete.
    assert _completed(cut1) == []
    assert _completed(cut2) == ["stage1"]
    for out, unfinished in ((cut1, "stage1"), (cut2, "stage2")):
        assert not (out / "layer_scores.json").exists() and not (out / "report").exists()
        assert not (out / unfinished / "summary.json").exists()
    assert not (cut1 / "stage1" / folder).exists() and not (cut1 / "stage2").exists()
    assert not (cut2 / "stage2" / "gate_trajectory.json").exists()
    # A kill is not a finished run: without --resume the directory is refused.
    argv = ["score", "--model", str(tiny_model_dir), "--output-dir", str(cut1), *ARGS, *extra]
    assert main(argv) == 2

    # Resumed in this process (saves two interpreter starts), on one thread like the others.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for out in (cut1, cut2):
            argv = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out)]
            assert main([*argv, *ARGS, *extra, "--resume"]) == 0
    finally:
        torch.set_num_threads(threads)
    _finish(procs[straight], straight)

    reference = LayerScores.load(straight)
    ref1, ref2 = _summary(straight, "stage1"), _summary(straight, "stage2")
    if method == "dpo":  # DPO's loss does not settle in 60 steps here: stage 1 runs to the cap
        assert not ref1["stable"] and ref1["T"] == ref1["steps"] == 60
    else:
        assert ref1["stable"] and ref1["T"] >= 30  # stopped by the stability test, after the kill
    for out in (cut1, cut2):
        assert _completed(out) == ["stage1", "stage2", "score"]
        s1, s2 = _summary(out, "stage1"), _summary(out, "stage2")
        assert s1["T"] == ref1["T"] and s1["steps"] == ref1["steps"]
        assert s1["loss_curve"] == pytest.approx(ref1["loss_curve"], abs=TOLERANCE)
        assert s2["loss_curve"] == pytest.approx(ref2["loss_curve"], abs=TOLERANCE)
        scores = LayerScores.load(out)
        assert scores.ranking() == reference.ranking()
        raw, ref_raw = [u.raw for u in scores.units], [u.raw for u in reference.units]
        assert raw == pytest.approx(ref_raw, abs=TOLERANCE)
        trajectory = json.loads((out / "stage2" / "gate_trajectory.json").read_text())["values"]
        assert len(trajectory) == ref2["steps"] + 1
        # One metrics row per step: the rows of steps redone after the checkpoint are gone.
        assert _metric_steps(out, "stage1") == list(range(1, ref1["steps"] + 1))
        assert _metric_steps(out, "stage2") == list(range(1, ref2["steps"] + 1))
    # The stage-1 run continued from its checkpoint; the stage-2 one did not redo stage 1.
    assert "stage1: resuming from" in (cut1 / "ila.log").read_text()
    log2 = (cut2 / "ila.log").read_text()
    assert "stage 1 finished before the interruption" in log2 and "stage2: resuming from" in log2


def test_resume_refuses_no_run_other_settings_and_a_finished_run(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["score", "--model", str(tiny_model_dir), "--output-dir", str(out)]
    fast = ["--max-length", "64", "--limit", "24", "--device", "cpu", "--stage1-max-steps", "2",
            "--stage1-min-steps", "1", "--stage2-steps", "2"]  # fmt: skip

    assert main([*base, *fast, "--resume"]) == 2
    assert "holds no run_state.json; nothing to resume" in capsys.readouterr().err
    assert not out.exists()

    assert main([*base, *fast]) == 0
    capsys.readouterr()
    assert main([*base, *fast, "--resume"]) == 2
    assert "has finished; nothing to resume" in capsys.readouterr().err

    state = json.loads((out / "run_state.json").read_text())
    state["completed_stages"] = ["stage1"]  # as if killed in stage 2
    (out / "run_state.json").write_text(json.dumps(state))
    assert main([*base, *fast, "--stage2-steps", "3", "--resume"]) == 2
    err = capsys.readouterr().err
    assert "--stage2-steps is 3 here but 2 in" in err and "config.yaml" in err
    assert main([*base, *fast, "--resume", "--overwrite"]) == 2
    assert "contradict" in capsys.readouterr().err
    assert _completed(out) == ["stage1"]  # refused commands changed nothing


def test_an_interrupted_save_is_never_resumed_from_and_redone_rows_are_dropped(tmp_path):
    from ila.train.checkpoints import (
        CHECKPOINT_STATE_FILE,
        discard_incomplete_checkpoints,
        last_complete_checkpoint,
        rewind_metrics,
    )

    trainer = tmp_path / "trainer"
    for step in (4, 8, 12):
        (trainer / f"checkpoint-{step}").mkdir(parents=True)
    for step in (4, 8):  # checkpoint-12: the Trainer was killed before ila marked it
        state = {"stage": "stage1", "step": step, "seconds": 1.0, "loss": [1.0] * step, "extra": {}}
        (trainer / f"checkpoint-{step}" / CHECKPOINT_STATE_FILE).write_text(json.dumps(state))
    found = last_complete_checkpoint(trainer, "stage1")
    assert found is not None and found.step == 8 and found.folder.name == "checkpoint-8"
    assert last_complete_checkpoint(tmp_path / "missing", "stage1") is None
    with pytest.raises(IlaError, match="not the run's checkpoint"):
        last_complete_checkpoint(trainer, "stage2")
    discard_incomplete_checkpoints(trainer, 8)
    assert sorted(p.name for p in trainer.iterdir()) == ["checkpoint-4", "checkpoint-8"]

    metrics = tmp_path / "metrics.jsonl"
    rows = [{"stage": "stage1", "step": s} for s in range(1, 11)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    metrics.write_text(text + '{"stage": "stage1", "st')  # a write torn by the kill
    rewind_metrics(metrics, "stage1", 8)
    assert [json.loads(line)["step"] for line in metrics.read_text().splitlines()] == list(
        range(1, 9)
    )
