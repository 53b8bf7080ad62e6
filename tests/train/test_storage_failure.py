"""A full disk or a file-size limit inside ``torch.save`` (a Trainer checkpoint) is the same
one-line storage error as any other write (probe case 5.2), made real here with
``RLIMIT_FSIZE`` in a child process (Python ignores the SIGXFSZ the kernel then sends)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _limited(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (SRC, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def test_torch_save_past_the_file_size_limit_is_a_storage_failure(tmp_path):
    code = (
        "import sys, torch\n"
        "from ila.files import storage_failure\n"
        "try:\n"
        "    torch.save({'w': torch.zeros(100_000)}, sys.argv[1])\n"
        "except Exception as exc:\n"
        "    print(storage_failure(exc))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "big.pt")],
        preexec_fn=_limited(50_000),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("a write failed: a file could not be written in full")


def test_a_checkpoint_cut_short_is_one_line_and_the_run_resumes(tiny_model_dir, tmp_path):
    """The all-units LoRA of the tiny Llama is 72 kB and its optimizer.pt 177 kB: a 120 kB
    limit lets the adapter through and stops torch.save in the first checkpoint."""
    out = tmp_path / "ft"
    argv = [sys.executable, "-m", "ila", "-q", "finetune", "--model", str(tiny_model_dir)]
    argv += ["--data", "ila-instruct", "--limit", "40", "--max-length", "64", "--all-units"]
    argv += ["--max-steps", "2", "--save-steps", "1", "--device", "cpu", "--output-dir", str(out)]
    done = subprocess.run(
        argv, preexec_fn=_limited(120_000), capture_output=True, text=True, env=_env(), timeout=600
    )
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("ila: error:")]
    assert "could not be written in full (torch.save:" in line
    assert "free disk space or raise the file-size limit" in line and "--resume" in line
    resumed = subprocess.run(
        [*argv, "--resume"], capture_output=True, text=True, env=_env(), timeout=600
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((out / "finetune_summary.json").read_text())["steps"] == 2
