"""The prepared GPU check: one command that tests ila on a bare CUDA machine in 8 minutes.

docs/distributed.md, "The prepared GPU check", says how to run it and what every key of
its summary means. On a machine with python3, torch, transformers, peft and accelerate
and no network, it runs these steps, each in a child process with a timeout, within one
time budget, and records each one's status, exit code and duration:

1. ``wheels``: install the wheels carried in ``.whl/`` (scripts/fetch_device_wheels.sh)
   into a private folder (skipped when there are none);
2. ``install``: install ila from the working tree (``pip install --no-deps``) there too;
3. ``environment``: record the GPU, CUDA and package versions (fails on a missing package,
   and on a GPU run without CUDA);
4. ``pytest``: every test that skips without CUDA (scripts/device_check_select.py);
5. ``model``: a randomly initialised Llama with Llama-3.2-1B's shapes, saved with a
   tokenizer, and long conversations of ila-instruct (scripts/device_check_model.py);
6. ``score``: ``ila score`` on it (stages 1 and 2, fixed lengths), in bf16;
7. ``finetune``: ``ila finetune`` of the top fraction of the ranking;
8. ``plan``: ``ila plan --json`` for the same settings and the fine-tune's selection.

It then writes ONE JSON summary: the steps, the pytest counts, the step times and the peak
memory (``torch.cuda.max_memory_allocated``) beside the plan's estimate, and their ratios.
A failed step does not stop the later ones that do not depend on it; the exit code is 1
when any step failed, 0 when all passed. ``--dry-run`` runs the same steps on the CPU with
the tiny model of tests/conftest.py in float32, to rehearse the check where there is no GPU.

    scripts/device_check.sh [--dry-run] [--work-dir runs/device_check] [--out FILE]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import sys
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from device_check_report import measurements, pytest_counts
from device_check_run import Budget, StepResult, run_step, skipped_step
from device_check_select import NEEDS_CUDA

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
SCHEMA_VERSION = 1
MARKER = ".device_check"  # marks a work dir as this check's, so a rerun may clear it


@dataclass(frozen=True)
class Settings:
    """The model and training settings of one mode (``gpu`` or ``dry-run``)."""

    mode: str
    size: str
    device: str
    dtype: str
    precision: str
    batch_size: int
    max_length: int
    examples: int
    stage1_steps: int
    stage2_steps: int
    stage2_grad_accum: int
    finetune_steps: int
    tune_top_fraction: float


GPU = Settings("gpu", "1b", "cuda", "bfloat16", "bf16", 8, 1024, 400, 40, 20, 2, 20, 0.3)
DRY_RUN = Settings("dry-run", "tiny", "cpu", "float32", "fp32", 2, 64, 40, 6, 4, 2, 4, 0.3)
# Each step's own limit in seconds; the whole check also stops at --budget-s.
TIMEOUTS = {
    "wheels": 90,
    "install": 120,
    "environment": 90,
    "pytest": 240,
    "model": 150,
    "score": 240,
    "finetune": 180,
    "plan": 90,
}
# A step runs only when these passed (or were skipped for having nothing to do).
# (A failed install is recorded and the steps go on with src/ on the path: the summary's
# environment.ila_path says which copy ran.)
NEEDS = {
    "pytest": ("environment",),
    "model": ("environment",),
    "score": ("model",),
    "finetune": ("score",),
    "plan": ("model",),
}


def cuda_test_files(tests: Path) -> list[Path]:
    """The test files that mention CUDA or a GPU: the only ones that can hold a test
    device_check_select keeps (collecting the others would cost time and find none)."""
    return sorted(p for p in tests.rglob("test_*.py") if NEEDS_CUDA.search(p.read_text()))


def ila_common(s: Settings, work: Path) -> list[str]:
    """The settings every ila command of the check shares (model, data, training)."""
    return [
        "--model", str(work / "model"), "--data", str(work / "data.jsonl"),
        "--device", s.device, "--dtype", s.dtype, "--precision", s.precision,
        "--batch-size", str(s.batch_size), "--max-length", str(s.max_length),
    ]  # fmt: skip


def ila_stages(s: Settings) -> list[str]:
    """Fixed stage lengths for ``ila score`` (and its plan): stage 1 runs exactly
    ``stage1_steps`` steps (docs/method.md, Stage 1: --stage1-min-steps = --stage1-max-steps)."""
    return [
        "--stage1-min-steps", str(s.stage1_steps), "--stage1-max-steps", str(s.stage1_steps),
        "--stage2-steps", str(s.stage2_steps), "--stage2-grad-accum", str(s.stage2_grad_accum),
    ]  # fmt: skip


def commands(s: Settings, work: Path, py: str) -> dict[str, list[str]]:
    """The command line of every step after ``environment`` (pytest's files included)."""
    common = ila_common(s, work)
    probe = [py, str(SCRIPTS / "device_check_probe.py"), "measure"]
    tests = [str(p.relative_to(REPO)) for p in cuda_test_files(REPO / "tests")]
    selection = work / "finetune" / "selection.json"
    units = (["--selection", str(selection)] if selection.is_file()
             else ["--tune-top-fraction", str(s.tune_top_fraction)])  # fmt: skip
    pytest = [py, "-m", "pytest", "-p", "device_check_select", "-p", "no:cacheprovider",
              "-q", "-rs", f"--junitxml={work / 'pytest.xml'}", *tests]  # fmt: skip
    model = [py, str(SCRIPTS / "device_check_model.py"), "--size", s.size, "--out", str(work),
             "--max-length", str(s.max_length), "--examples", str(s.examples),
             "--json", str(work / "model.json")]  # fmt: skip
    score = [*probe, "--json", str(work / "score_peak.json"), "--", "-q", "score", *common,
             *ila_stages(s), "--output-dir", str(work / "score")]  # fmt: skip
    finetune = [*probe, "--json", str(work / "finetune_peak.json"), "--", "-q", "finetune",
                *common, "--scores", str(work / "score"),
                "--tune-top-fraction", str(s.tune_top_fraction),
                "--max-steps", str(s.finetune_steps),
                "--output-dir", str(work / "finetune")]  # fmt: skip
    plan = [py, "-m", "ila", "plan", "--json", *common, *ila_stages(s),
            "--max-steps", str(s.finetune_steps), *units]  # fmt: skip
    return {"pytest": pytest, "model": model, "score": score, "finetune": finetune, "plan": plan}


def setup_commands(py: str, wheels: list[Path], site: Path, work: Path, gpu: bool) -> dict:
    """The command lines of ``wheels``, ``install`` and ``environment``."""
    pip = [py, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--upgrade", "--target", str(site)]  # fmt: skip
    probe = [py, str(SCRIPTS / "device_check_probe.py"), "environment"]
    return {
        "wheels": [*pip, *map(str, wheels)],
        "install": [*pip, "--no-build-isolation", str(REPO)],
        "environment": [*probe, "--json", str(work / "environment.json")]
        + (["--require-cuda"] if gpu else []),
    }


def child_env(site: Path) -> dict[str, str]:
    """The children's environment: the private site folder first (the wheels and the
    installed ila), then src/ and scripts/ (pytest's plugin); offline; no parallel
    tokenizers."""
    path = [str(site), str(REPO / "src"), str(SCRIPTS)]
    path += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "PATH": os.pathsep.join([str(site / "bin"), os.environ.get("PATH", "")]),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
    }


def work_dir_problem(work: Path) -> str | None:
    """Why ``work`` cannot be this check's work folder (None: new, empty, or an earlier
    check's, which is cleared)."""
    if work.is_symlink() or (work.exists() and not work.is_dir()):
        return f"--work-dir {work} is not a folder; pass a new folder"
    if work.is_dir() and any(work.iterdir()) and not (work / MARKER).is_file():
        return f"--work-dir {work} holds files of something else; pass a new or empty folder"
    return None


def prepare_work_dir(work: Path) -> None:
    """Clear an earlier check's ``work`` folder and mark it as this check's."""
    if work.is_dir():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text("the work folder of scripts/device_check.py\n")


def run_steps(s: Settings, args: argparse.Namespace, work: Path, budget: Budget) -> list:
    """Every step in order; a step whose dependency did not pass is recorded as not run."""
    py, site, logs = sys.executable, work / "site", work / "logs"
    logs.mkdir()
    wheels = sorted(args.wheels.glob("*.whl")) if args.wheels.is_dir() else []
    setup = setup_commands(py, wheels, site, work, s.mode == "gpu")
    env, results = child_env(site), {}
    for name in TIMEOUTS:
        # Built when the step starts: the plan reads the selection the fine-tune wrote.
        command = setup[name] if name in setup else commands(s, work, py)[name]
        missing = [d for d in NEEDS.get(name, ()) if results[d].status not in ("passed", "skipped")]
        if name == "wheels" and not wheels:
            result = skipped_step(name, f"no wheels in {args.wheels}: none installed", command)
        elif missing:
            result = skipped_step(name, f"needs {', '.join(missing)}", command, "not_run")
        else:
            stdout = work / "plan.json" if name == "plan" else None
            result = run_step(
                name, command, cwd=REPO, env=env, timeout=TIMEOUTS[name], budget=budget,
                log=logs / f"{name}.log", stdout=stdout,
            )  # fmt: skip
            result = check_step(result, work, s)
        results[name] = result
        print(result.line(), flush=True)
        write_summary(summary(s, work, list(results.values()), budget), args.out)
    return list(results.values())


def check_step(result: StepResult, work: Path, s: Settings) -> StepResult:
    """Fail a step whose process exited 0 without doing what it is for."""
    if result.status != "passed":
        return result
    if result.name == "pytest":
        counts = pytest_counts(work / "pytest.xml")
        if counts["failed"] or counts["errors"] or not counts["selected"]:
            return result.failed("pytest: a test failed, or no test needs CUDA")
    if result.name in ("score", "finetune") and s.mode == "gpu":
        peak = json.loads((work / f"{result.name}_peak.json").read_text())
        if peak["memory_kind"] != "cuda_max_memory_allocated" or not peak["peak_bytes"]:
            return result.failed(f"{result.name}: nothing was allocated on the GPU")
    return result


def summary(s: Settings, work: Path, steps: list, budget: Budget) -> dict[str, Any]:
    """The summary's content so far (``complete`` is false until every step ran)."""
    done = len(steps) == len(TIMEOUTS)
    ok = all(step.status in ("passed", "skipped") for step in steps)
    return {
        "schema_version": SCHEMA_VERSION,
        "complete": done,
        "passed": ok if done else None,
        "mode": s.mode,
        "started_at": budget.started_at,
        "finished_at": _now() if done else None,
        "seconds": round(budget.elapsed(), 2),
        "budget_seconds": budget.seconds,
        "settings": {k: v for k, v in asdict(s).items() if k != "mode"},
        "environment": environment(work),
        "steps": [step.to_dict() for step in steps],
        "pytest": pytest_counts(work / "pytest.xml"),
        **measurements(work, s.batch_size * s.max_length, s.stage2_grad_accum),
    }


def environment(work: Path) -> dict[str, Any]:
    """The environment step's record (every key, None where it did not run) and the commit."""
    keys = ("python", "platform", "torch", "cuda", "gpu_count", "gpu_name", "gpu_memory_bytes",
            "bf16_supported", "ila", "ila_path", "packages", "missing")  # fmt: skip
    path = work / "environment.json"
    found = json.loads(path.read_text()) if path.is_file() else {}
    head = REPO / ".git"
    commit = None
    if head.exists():
        import subprocess

        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"],
                              capture_output=True, text=True, check=False)  # fmt: skip
        commit = done.stdout.strip() or None
    return {**{k: found.get(k) for k in keys}, "git_commit": commit}


def write_summary(data: dict[str, Any], out: Path) -> None:
    """Write the summary atomically (a temporary file renamed over it)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    tmp.replace(out)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true",
                        help="the same steps on the CPU, tiny model, float32")  # fmt: skip
    parser.add_argument("--work-dir", type=Path, default=REPO / "runs" / "device_check",
                        help="folder for the model, runs and logs (cleared if an earlier "
                        "check's)")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None,
                        help="summary file (default: $OUT/device_check.json if OUT is set, "
                        "else WORK_DIR/summary.json)")  # fmt: skip
    parser.add_argument("--wheels", type=Path, default=REPO / ".whl",
                        help="folder of wheels to install first (default: .whl)")  # fmt: skip
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="the whole check's time limit in seconds (default 480)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.budget_s <= 0:
        parser.error(f"--budget-s {args.budget_s}: pass a positive number of seconds")
    args.work_dir = args.work_dir.resolve()
    if args.out is None:
        base = Path(os.environ["OUT"]) if os.environ.get("OUT") else args.work_dir
        args.out = base / ("device_check.json" if os.environ.get("OUT") else "summary.json")
    return args


def pack_logs(work: Path, out: Path) -> Path:
    """The steps' logs and small JSON files as one archive beside the summary."""
    archive = out.with_name(out.stem + "_logs.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted([*work.glob("logs/*.log"), *work.glob("*.json"), *work.glob("*.xml")]):
            tar.add(path, arcname=str(path.relative_to(work)))
    return archive


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    s = DRY_RUN if args.dry_run else GPU
    problem = work_dir_problem(args.work_dir)
    if problem is not None:
        print(f"device_check: error: {problem}", file=sys.stderr)
        return 2
    prepare_work_dir(args.work_dir)
    budget = Budget(args.budget_s)
    print(f"device check ({s.mode}): work dir {args.work_dir}, budget {args.budget_s:.0f} s")
    steps = run_steps(s, args, args.work_dir, budget)
    data = summary(s, args.work_dir, steps, budget)
    write_summary(data, args.out)
    archive = pack_logs(args.work_dir, args.out)
    print(f"summary: {args.out}\nlogs: {archive}")
    print("PASSED" if data["passed"] else "FAILED: see the steps above and their logs")
    return 0 if data["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
