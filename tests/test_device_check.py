"""The prepared GPU check (scripts/device_check.sh; docs/distributed.md, "The prepared GPU
check"): its CPU rehearsal writes the documented summary, its pytest plugin keeps exactly
the tests that need CUDA, a work folder of something else is refused; and, on a CUDA
machine only, training in bf16 and fp16 autocast on the GPU.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ila.cli import main

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
sys.path.insert(0, str(SCRIPTS))

from device_check_report import pytest_counts  # noqa: E402

SECTION = "## The prepared GPU check"


def documented_keys() -> set[str]:
    """The keys of the summary's schema table in docs/distributed.md (first column of the
    table under "The summary" in the section of the check)."""
    text = (REPO / "docs" / "distributed.md").read_text()
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    section = section.split("\n### The summary\n", 1)[1].split("\n### ", 1)[0]
    keys = set()
    for key in re.findall(r"^\| `([^`]+)` \|", section, flags=re.MULTILINE):
        # `a.{b,c}.d` stands for a.b.d and a.c.d
        head, brace, rest = key.partition("{")
        names, _, tail = rest.partition("}")
        keys |= {f"{head}{name}{tail}" for name in names.split(",")} if brace else {key}
    return keys


def summary_keys(value: object, documented: set[str], prefix: str = "") -> set[str]:
    """The key paths of ``value`` (``a.b``, ``a[].b`` inside lists), down to the documented
    leaves (a documented key with no documented key below it, e.g. a map of names)."""
    found: set[str] = set()
    if isinstance(value, list):
        for item in value:
            found |= summary_keys(item, documented, f"{prefix}[]")
        return found
    if not isinstance(value, dict):
        return found
    for key, item in value.items():
        path = f"{prefix}.{key}" if prefix else key
        found.add(path)
        below = any(d.startswith((f"{path}.", f"{path}[]")) for d in documented)
        if below or path not in documented:
            found |= summary_keys(item, documented, path)
    return found


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    return {**env, "PYTHON": sys.executable}


def test_the_plugin_keeps_the_tests_that_need_cuda_and_counts_them(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n\n"
        "@pytest.mark.skipif(True, reason='needs a CUDA GPU and bitsandbytes')\n"
        "def test_4bit():\n    pass\n\n"
        "@pytest.mark.skipif(True, reason='needs 2 CUDA GPUs')\n"
        "def test_two():\n    pass\n\n"
        "@pytest.mark.skipif(False, reason='needs a GPU')\n"
        "def test_runs_where_there_is_one():\n    assert 1 == 2\n\n"
        "@pytest.mark.skipif(False, reason='checks the CPU-only refusal')\n"
        "def test_cpu_refusal():\n    pass\n\n"
        "def test_plain():\n    pass\n"
    )
    junit = tmp_path / "junit.xml"
    command = [sys.executable, "-m", "pytest", "-p", "device_check_select", "-p",
               "no:cacheprovider", "-q", f"--junitxml={junit}", "test_sample.py"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SCRIPTS)}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 1, done.stdout  # the kept test that runs fails
    counts = pytest_counts(junit)
    assert counts["selected"] == 3 and counts["skipped"] == 2
    assert counts["failed"] == 1 and counts["passed"] == 0 and counts["errors"] == 0
    assert counts["failures"] == ["test_sample::test_runs_where_there_is_one"]
    assert counts["skip_reasons"] == {
        "needs a CUDA GPU and bitsandbytes": 1,
        "needs 2 CUDA GPUs": 1,
    }
    assert "2 deselected" in done.stdout


def test_a_work_dir_of_something_else_is_refused_and_left_alone(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    out = tmp_path / "summary.json"
    command = [str(SCRIPTS / "device_check.sh"), "--dry-run", "--work-dir", str(work),
               "--out", str(out)]  # fmt: skip
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("device_check: error: --work-dir")
    assert sorted(p.name for p in work.iterdir()) == ["notes.txt"]
    assert not out.exists()


@pytest.mark.slow
def test_the_dry_run_passes_and_writes_the_documented_summary(tmp_path):
    # A wheel to carry, as on the GPU machine: ila's own, built here without network.
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "--no-index", "-w", str(wheels), str(REPO)]  # fmt: skip
    subprocess.run(build, check=True, capture_output=True, timeout=300)
    work, out = tmp_path / "work", tmp_path / "out" / "summary.json"
    command = [str(SCRIPTS / "device_check.sh"), "--dry-run", "--work-dir", str(work),
               "--out", str(out), "--wheels", str(wheels)]  # fmt: skip
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(out.read_text())
    documented = documented_keys()
    assert summary_keys(summary, documented) == documented
    assert summary["complete"] and summary["passed"] and summary["mode"] == "dry-run"
    steps = {s["name"]: s for s in summary["steps"]}
    assert list(steps) == ["wheels", "install", "environment", "pytest", "model", "score",
                           "finetune", "plan"]  # fmt: skip
    assert all(s["status"] == "passed" and s["rc"] == 0 for s in steps.values()), steps
    assert summary["environment"]["torch"] == torch.__version__
    assert Path(summary["environment"]["ila_path"]) == (work / "site" / "ila").resolve()
    counts = summary["pytest"]
    assert counts["selected"] >= 3 and counts["failed"] == counts["errors"] == 0
    parts = counts["passed"] + counts["skipped"] + counts["failed"] + counts["errors"]
    assert parts == counts["selected"]
    assert summary["data"]["every_example_cut"] is True
    for stage, timing in summary["timing"].items():
        assert timing["steps"] >= 4 and timing["steady_seconds_per_step"] > 0, stage
        assert timing["tokens_per_second"] == pytest.approx(
            timing["tokens_per_step"] / timing["steady_seconds_per_step"]
        )
    assert summary["memory"]["kind"] == "peak_rss"
    for job in ("score", "finetune"):
        memory = summary["memory"][job]
        assert memory["ratio"] == pytest.approx(memory["measured_bytes"] / memory["plan_bytes"])
    assert [s["name"] for s in summary["plan"]["stages"]] == ["stage 1", "stage 2", "fine-tune"]
    assert "selected units" in summary["plan"]["stages"][2]["what"]  # the fine-tune's own
    assert (out.parent / "summary_logs.tar.gz").is_file()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("precision", "dtype"), [("bf16", "bfloat16"), ("fp16", "float32")])
def test_scoring_trains_on_the_gpu_in_16_bit_autocast(precision, dtype, tiny_model_dir, tmp_path):
    out = tmp_path / precision
    torch.cuda.reset_peak_memory_stats()
    argv = ["-q", "score", "--model", str(tiny_model_dir), "--data", "ila-instruct",
            "--limit", "64", "--max-length", "64", "--batch-size", "4", "--device", "cuda",
            "--precision", precision, "--dtype", dtype, "--stage1-min-steps", "10",
            "--stage1-max-steps", "10", "--stage2-steps", "6",
            "--output-dir", str(out)]  # fmt: skip
    assert main(argv) == 0
    assert torch.cuda.max_memory_allocated() > 0
    env = json.loads((out / "environment.json").read_text())
    assert env["cuda_available"] and env["precision"]["precision"] == precision
    stage1 = json.loads((out / "stage1" / "summary.json").read_text())
    assert stage1["steps"] == 10 and all(math.isfinite(x) for x in stage1["loss_curve"])
    importance = [
        u["importance"] for u in json.loads((out / "layer_scores.json").read_text())["units"]
    ]
    assert all(math.isfinite(x) for x in importance) and max(importance) > min(importance)
